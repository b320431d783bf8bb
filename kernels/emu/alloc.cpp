// alloc.cpp: the emulator's device allocations (tf_emu_malloc / tf_emu_free) and
// their table, which memcheck and initcheck consult (check.h).
//
// Layout of one allocation: [redzone 256 B | the caller's bytes, rounded up to 256 |
// redzone 256 B]. The redzones are filled with 0xFB; an access that lands in one is
// out of bounds by the distance to the caller's range, even where a plain host
// allocation would not fault. A freed allocation stays mapped in quarantine (the last
// 4096 frees, at most 256 MiB) so that no other memory can take its addresses while
// memcheck still reports accesses of it as use after free; leaving quarantine, it is
// forgotten, and returned to the system once no launch with checks that could hold
// its record in a snapshot is still running (so that memory the system hands out
// again, to a worker thread's stack say, is never mistaken for it). The table is
// copy-on-write: every change publishes a new sorted vector, so a launch reads its
// snapshot without locks.
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <new>

#include "check.h"
#include "tf_kernels.h"

namespace tf_emu {
namespace {

constexpr size_t kRedzone = 256;
constexpr size_t kMaxFreed = 4096;                  // allocations kept in quarantine
constexpr size_t kMaxFreedBytes = (size_t)256 << 20;  // ... and their bytes

std::mutex g_mu;
std::shared_ptr<const AllocTable> g_table = std::make_shared<const AllocTable>();
uint64_t g_next_id = 1;
size_t g_freed = 0, g_freed_bytes = 0;
std::atomic<uint64_t> g_alloc_count{0};              // tf_emu_malloc calls, for tf_emu_alloc_count
uint64_t g_seq = 0;                                   // table versions and checked launches
std::multiset<uint64_t> g_active;                     // the seq of each running checked launch
std::vector<std::pair<uint64_t, void*>> g_deferred;  // (seq when forgotten, block) not yet freed

// Blocks no running checked launch can know about (g_mu held): returned to be freed.
void take_releasable(std::vector<void*>& out) {
    const uint64_t min_active = g_active.empty() ? UINT64_MAX : *g_active.begin();
    auto keep = g_deferred.begin();
    for (auto& d : g_deferred) {
        if (d.first < min_active) out.push_back(d.second);
        else *keep++ = d;
    }
    g_deferred.erase(keep, g_deferred.end());
}

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Publishes `t` (sorted by blo) as the current table.
void publish(AllocTable&& t) {
    std::sort(t.begin(), t.end(), [](const AllocRec& a, const AllocRec& b) { return a.blo < b.blo; });
    g_table = std::make_shared<const AllocTable>(std::move(t));
}

}  // namespace

std::shared_ptr<const AllocTable> alloc_snapshot() {
    std::lock_guard<std::mutex> g(g_mu);
    return g_table;
}

std::shared_ptr<const AllocTable> alloc_launch_enter(uint64_t* seq) {
    std::lock_guard<std::mutex> g(g_mu);
    *seq = ++g_seq;
    g_active.insert(*seq);
    return g_table;
}

void alloc_launch_exit(uint64_t seq) {
    std::vector<void*> release;
    {
        std::lock_guard<std::mutex> g(g_mu);
        auto it = g_active.find(seq);
        if (it != g_active.end()) g_active.erase(it);
        take_releasable(release);
    }
    for (void* p : release) free(p);
}

const AllocRec* alloc_find(const AllocTable& t, uintptr_t a) {
    // The last record with blo <= a.
    size_t lo = 0, hi = t.size();
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (t[mid].blo <= a) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0) return nullptr;
    const AllocRec& r = t[lo - 1];
    return a < r.bhi ? &r : nullptr;
}

void set_init_bits(const AllocRec& r, size_t from, size_t to, bool v) {
    uint8_t* bits = r.init.get();
    size_t i = from;
    for (; i < to && (i & 7); ++i) {  // leading partial byte
        const uint8_t bit = (uint8_t)(1u << (i & 7));
        if (v) __atomic_fetch_or(&bits[i >> 3], bit, __ATOMIC_RELAXED);
        else __atomic_fetch_and(&bits[i >> 3], (uint8_t)~bit, __ATOMIC_RELAXED);
    }
    for (; i + 8 <= to; i += 8) __atomic_store_n(&bits[i >> 3], (uint8_t)(v ? 0xFF : 0), __ATOMIC_RELAXED);
    for (; i < to; ++i) {
        const uint8_t bit = (uint8_t)(1u << (i & 7));
        if (v) __atomic_fetch_or(&bits[i >> 3], bit, __ATOMIC_RELAXED);
        else __atomic_fetch_and(&bits[i >> 3], (uint8_t)~bit, __ATOMIC_RELAXED);
    }
}

}  // namespace tf_emu

using namespace tf_emu;

extern "C" void* tf_emu_malloc(size_t bytes, int initialized) {
    g_alloc_count.fetch_add(1, std::memory_order_relaxed);
    if (bytes > ((size_t)1 << 46)) return nullptr;
    const size_t body = round_up(bytes ? bytes : 1, kRedzone);
    void* base = nullptr;
    if (posix_memalign(&base, kRedzone, body + 2 * kRedzone) != 0 || !base) return nullptr;
    const size_t nbits = (body + 7) / 8;
    AllocRec r;
    r.init = std::shared_ptr<uint8_t[]>(new (std::nothrow) uint8_t[nbits]);
    r.touch = std::shared_ptr<uint8_t[]>(new (std::nothrow) uint8_t[nbits]);
    if (!r.init || !r.touch) {
        free(base);
        return nullptr;
    }
    memset(r.init.get(), initialized ? 0xFF : 0x00, nbits);
    memset(r.touch.get(), 0, nbits);
    char* p = static_cast<char*>(base);
    memset(p, 0xFB, kRedzone);
    memset(p + kRedzone, 0, body);
    memset(p + kRedzone + body, 0xFB, kRedzone);
    r.blo = reinterpret_cast<uintptr_t>(p);
    r.lo = r.blo + kRedzone;
    r.hi = r.lo + bytes;
    r.bhi = r.lo + body + kRedzone;
    std::lock_guard<std::mutex> g(g_mu);
    r.id = g_next_id++;
    AllocTable t;
    t.reserve(g_table->size() + 1);
    for (const AllocRec& x : *g_table) {
        if (x.freed && x.blo < r.bhi && r.blo < x.bhi) {  // cannot happen while quarantined
            g_freed--;
            g_freed_bytes -= x.bhi - x.blo;
            continue;
        }
        t.push_back(x);
    }
    t.push_back(std::move(r));
    publish(std::move(t));
    return p + kRedzone;
}

extern "C" void tf_emu_free(void* ptr) {
    if (!ptr) return;
    const uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
    std::vector<void*> release;
    {
        std::lock_guard<std::mutex> g(g_mu);
        AllocTable t = *g_table;
        auto it = std::find_if(t.begin(), t.end(), [a](const AllocRec& r) { return r.lo == a && !r.freed; });
        if (it == t.end()) return;  // not ours (or freed twice): never hand libc a bad pointer
        it->freed = true;
        g_freed++;
        g_freed_bytes += it->bhi - it->blo;
        while (g_freed > kMaxFreed || g_freed_bytes > kMaxFreedBytes) {  // the oldest leaves quarantine
            auto oldest = t.end();
            for (auto j = t.begin(); j != t.end(); ++j)
                if (j->freed && (oldest == t.end() || j->id < oldest->id)) oldest = j;
            if (oldest == t.end()) break;
            g_deferred.emplace_back(g_seq, reinterpret_cast<void*>(oldest->blo));
            g_freed--;
            g_freed_bytes -= oldest->bhi - oldest->blo;
            t.erase(oldest);
        }
        publish(std::move(t));
        take_releasable(release);
    }
    for (void* p : release) free(p);
}

extern "C" uint64_t tf_emu_alloc_count(void) { return g_alloc_count.load(std::memory_order_relaxed); }

extern "C" void tf_emu_mark_initialized(const void* ptr, size_t bytes, int initialized) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
    std::shared_ptr<const AllocTable> t = alloc_snapshot();
    const AllocRec* r = alloc_find(*t, a);
    if (!r || r->freed || a < r->lo || a >= r->hi) return;
    set_init_bits(*r, a - r->lo, std::min<uintptr_t>(a + bytes, r->hi) - r->lo, initialized != 0);
}
