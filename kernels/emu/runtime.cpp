// runtime.cpp: the SIMT emulator's scheduler: launches, blocks, fibers, barriers,
// warp collectives, the shared-memory window, cp.async, and error reporting.
//
// Model
// - A launch spreads its blocks over worker OS threads (the caller is one of them).
//   Each worker owns a Worker: stacks for up to 1024 fibers (guard page under each,
//   reused block after block) and one shared-memory window (guard pages around it).
// - A block runs entirely on one worker: one fiber per CUDA thread, cooperatively
//   scheduled. A fiber runs until it reaches a rendezvous (__syncthreads, a warp
//   collective), exits or fails; then the next fiber of the run queue runs (direct
//   fiber-to-fiber switch). The run queue is filled in the launch's lane order
//   (forward, reverse, or a seeded shuffle redrawn at every release), so code that
//   relies on implicit warp lockstep sees a different interleaving than it expects.
// - Between warps, the launch's warp order: round robin (a warp whose collective
//   completes goes to the back of the queue: warps advance one rendezvous at a time)
//   or warp-major (its lanes go to the front: the warp runs until all its live lanes
//   wait at __syncthreads or have exited, then the next warp), which exposes a
//   missing barrier between one warp's shared-memory reads and another's overwrite.
// - A rendezvous that can never complete ends the launch with an error: threads at
//   different barriers, a thread exiting while others wait (at a barrier, or in a warp
//   collective whose mask names it), lanes disagreeing on the mask or the op, a lane
//   calling a collective whose mask does not name it, and, when the run queue drains
//   with live threads, a deadlock listing where every thread waits. The failing
//   block's fibers are abandoned (never resumed; their stacks are reused), other
//   workers stop at their next block, and tf_emu_launch returns the message.
// - Shared memory: the window's top holds the dynamic shared memory (ending at a
//   guard page), static __shared__ variables are allocated downwards below it on first
//   use in the block. Everything is filled with 0xFF (a NaN in f32, f16 and bf16, -1
//   in integers) before use, so a read before a write shows up.
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "fiber.h"
#include "guard.h"
#include "tf_emu_api.h"
#include "tf_kernels.h"

extern "C" const tf_emu_kernel_entry* const tf_emu_registry[];
extern "C" const size_t tf_emu_registry_len;

namespace tf_emu {

__thread const uint3* t_thread_idx TF_EMU_TLS = nullptr;
__thread const BlockIds* t_block_ids TF_EMU_TLS = nullptr;

namespace {

constexpr uint32_t kMaxThreads = TF_EMU_MAX_THREADS_PER_BLOCK;
constexpr uint32_t kMaxWarps = kMaxThreads / 32;
constexpr size_t kMaxStatic = TF_EMU_MAX_STATIC_SMEM;
constexpr size_t kMaxDynamic = TF_EMU_MAX_DYNAMIC_SMEM;
constexpr size_t kMaxTotal = TF_EMU_MAX_DYNAMIC_SMEM;  // static + dynamic, per block
constexpr size_t kWindowBytes = 256 * 1024;
constexpr unsigned char kPoison = 0xFF;

enum class St : uint8_t { Ready, Running, Barrier, Warp, Exited };

struct CpOp {
    unsigned char* dst;
    const unsigned char* src;
    uint32_t size;
    uint32_t src_bytes;
    uint64_t group;
};

struct Fiber {
    Ctx ctx;
    uint3 tid;
    uint32_t linear = 0, warp = 0, lane = 0;
    St state = St::Ready;
    // Barrier: where it waits.
    const char* bar_file = nullptr;
    int bar_line = 0;
    int bar_result = 0;
    // Warp collective record: the current one while state == Warp, else the last one
    // this lane took part in (for error messages).
    const char* file = nullptr;
    int line = 0;
    int op = OP_NONE;
    uint32_t mask = 0;
    int arg = 0, width = 32;
    uint64_t value = 0, result = 0;
    const void* p0 = nullptr;
    const void* p1 = nullptr;
    void* out = nullptr;
    // cp.async: ops in issue order, [cp_head, size) still pending.
    std::vector<CpOp> cp;
    size_t cp_head = 0;
    uint64_t cp_committed = 0;
};

struct Group {
    uint32_t mask;
    uint32_t arrived;
    int op;
    const char* file;
    int line;
};

struct WarpState {
    uint32_t exist = 0;   // lanes that exist (a last partial warp has fewer)
    uint32_t exited = 0;  // lanes that have exited
    int ngroups = 0;      // pending collectives (disjoint masks)
    Group groups[32];
    uint8_t perm[32];     // run order of the lanes
};

struct Launch {
    const tf_emu_kernel_entry* kernel = nullptr;
    const void* params = nullptr;
    dim3 grid, block;
    uint32_t nthreads = 0;
    uint32_t dyn_bytes = 0;
    int order = 0;
    int warp_order = 0;  // tf_emu_warp_order
    uint64_t seed = 0;
    uint64_t nblocks = 0;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    uint64_t limit_ns = 0;  // the watchdog's limit without progress (0: unwatched)
    LaunchChecks* chk = nullptr;  // racecheck / memcheck / initcheck / profile (null: none)
    std::mutex err_mu;
    std::string err;

    void set_error(const char* msg) {
        std::lock_guard<std::mutex> g(err_mu);
        if (err.empty()) err = msg;
        failed.store(true);
    }
};

struct Worker {
    // Resources, kept across launches.
    char* stacks = nullptr;  // kMaxThreads slots of [guard | stack]
    size_t slot = 0, stack_size = 0;
    uint32_t committed = 0;  // slots whose stack is mapped read-write
    char* win = nullptr;     // [win, win + kWindowBytes), guard pages either side
    Fiber* fibers = nullptr;
    WarpState warps[kMaxWarps];
    uint32_t rq[kMaxThreads];
    uint32_t rq_head = 0, rq_tail = 0;  // monotonic; index modulo kMaxThreads
    Ctx sched;
    // The launch and block being run.
    Launch* L = nullptr;
    BlockIds ids;
    uint64_t block_linear = 0;
    uint64_t rng = 0;
    uint32_t n = 0, nwarps = 0, n_exited = 0, n_at_bar = 0, bar_first = 0, first_exited = 0;
    const char* bar_file = nullptr;
    int bar_line = 0, bar_op = 0, bar_acc = 0;
    uint8_t warp_order[kMaxWarps];
    int warp_pol = 0;    // this block's tf_emu_warp_order (never MIXED)
    bool ahead = false;  // warp-major: a warp's released lanes go to the queue's front
    bool failed = false;
    Interrupt stop;          // set by the signal handler (guard.cpp) when it stopped a fiber
    uint32_t stop_fiber = 0;  // the fiber it stopped
    char errbuf[4096];
    Watch watch;             // progress, as the watchdog sees it
    SignalStack sigstack;    // the fault handler's stack while this worker runs
    // Shared memory of the block.
    char* dyn_start = nullptr;
    char* dyn_end = nullptr;
    char* static_low = nullptr;
    std::vector<std::pair<const void*, void*>> statics;
    // Memory checks: the worker's shadow state (created on first use), and `cw`, the
    // same while the current launch has checks (else null).
    WorkerChecks* chk_state = nullptr;
    WorkerChecks* cw = nullptr;
};

__thread Worker* t_worker TF_EMU_TLS = nullptr;
__thread Fiber* t_cur TF_EMU_TLS = nullptr;

// ------------------------------------------------------------------ utilities

uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

bool same_site(const char* f1, int l1, const char* f2, int l2) {
    return l1 == l2 && (f1 == f2 || (f1 && f2 && strcmp(f1, f2) == 0));
}

const char* short_file(const char* f) {
    if (!f) return "?";
    const char* k = strstr(f, "kernels/");
    return k ? k : f;
}

const char* op_name(int op) {
    switch (op) {
        case OP_SHFL_IDX: return "__shfl_sync";
        case OP_SHFL_UP: return "__shfl_up_sync";
        case OP_SHFL_DOWN: return "__shfl_down_sync";
        case OP_SHFL_XOR: return "__shfl_xor_sync";
        case OP_BALLOT: return "__ballot_sync";
        case OP_ANY: return "__any_sync";
        case OP_ALL: return "__all_sync";
        case OP_SYNCWARP: return "__syncwarp";
        case OP_REDUCE_ADD: return "__reduce_add_sync";
        case OP_REDUCE_MIN_U:
        case OP_REDUCE_MIN_I: return "__reduce_min_sync";
        case OP_REDUCE_MAX_U:
        case OP_REDUCE_MAX_I: return "__reduce_max_sync";
        case OP_REDUCE_AND: return "__reduce_and_sync";
        case OP_REDUCE_OR: return "__reduce_or_sync";
        case OP_REDUCE_XOR: return "__reduce_xor_sync";
        case OP_MATCH_ANY: return "__match_any_sync";
        case OP_MMA_F16: return "mma.sync.m16n8k16.f16";
        case OP_MMA_BF16: return "mma.sync.m16n8k16.bf16";
        case OP_LDSM_X1: return "ldmatrix.x1";
        case OP_LDSM_X1_T: return "ldmatrix.x1.trans";
        case OP_LDSM_X2: return "ldmatrix.x2";
        case OP_LDSM_X2_T: return "ldmatrix.x2.trans";
        case OP_LDSM_X4: return "ldmatrix.x4";
        case OP_LDSM_X4_T: return "ldmatrix.x4.trans";
        default: return "a warp collective";
    }
}

// "0-3,8,10-12" for the set bits of m.
void lanes_str(uint32_t m, char* buf, size_t len) {
    size_t p = 0;
    buf[0] = 0;
    for (int i = 0; i < 32 && p + 8 < len;) {
        if (!(m & (1u << i))) {
            ++i;
            continue;
        }
        int j = i;
        while (j + 1 < 32 && (m & (1u << (j + 1)))) ++j;
        int w = (i == j) ? snprintf(buf + p, len - p, "%s%d", p ? "," : "", i)
                         : snprintf(buf + p, len - p, "%s%d-%d", p ? "," : "", i, j);
        if (w < 0) break;
        p += (size_t)w;
        i = j + 1;
    }
    if (!p) snprintf(buf, len, "none");
}

size_t page_size() {
    static const size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    return ps;
}

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

size_t stack_bytes() {
    static const size_t s = [] {
        size_t kib = 256;
        if (const char* e = getenv("TF_EMU_STACK_KIB")) {
            long v = atol(e);
            if (v >= 64 && v <= 65536) kib = (size_t)v;
        }
        return round_up(kib * 1024, page_size());
    }();
    return s;
}

// ------------------------------------------------------------------ worker pool

// Workers are kept for reuse. Their number is capped (each maps up to 2048 memory
// areas of stacks and guard pages, and the kernel's vm.max_map_count is finite): a
// launch's extra worker threads go without one when none is free, the launching
// thread waits for one.
std::mutex g_pool_mu;
std::condition_variable g_pool_cv;
std::vector<Worker*> g_pool;
size_t g_workers = 0;

size_t max_workers() {
    static const size_t m = [] {
        size_t n = 2 * (size_t)std::thread::hardware_concurrency();
        if (const char* e = getenv("TF_EMU_MAX_WORKERS")) n = (size_t)atol(e);
        return n < 4 ? (size_t)4 : n;
    }();
    return m;
}

Worker* new_worker() {
    const size_t ps = page_size();
    Worker* W = new (std::nothrow) Worker();
    if (!W) return nullptr;
    W->stack_size = stack_bytes();
    W->slot = W->stack_size + ps;
    void* s = mmap(nullptr, W->slot * kMaxThreads, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void* w = mmap(nullptr, kWindowBytes + 2 * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    W->fibers = new (std::nothrow) Fiber[kMaxThreads];
    if (s == MAP_FAILED || w == MAP_FAILED || !W->fibers ||
        mprotect(static_cast<char*>(w) + ps, kWindowBytes, PROT_READ | PROT_WRITE) != 0) {
        if (s != MAP_FAILED) munmap(s, W->slot * kMaxThreads);
        if (w != MAP_FAILED) munmap(w, kWindowBytes + 2 * ps);
        delete[] W->fibers;
        delete W;
        return nullptr;
    }
    W->stacks = static_cast<char*>(s);
    W->win = static_cast<char*>(w) + ps;
    return W;
}

// A free Worker: a pooled one, a new one under the cap, else (wait) one returned by
// another thread, or nullptr if !wait.
Worker* checkout(bool wait) {
    std::unique_lock<std::mutex> g(g_pool_mu);
    for (;;) {
        if (!g_pool.empty()) {
            Worker* W = g_pool.back();
            g_pool.pop_back();
            return W;
        }
        if (g_workers < max_workers()) {
            g_workers++;
            g.unlock();
            Worker* W = new_worker();
            if (!W) {
                g.lock();
                g_workers--;
            }
            return W;
        }
        if (!wait) return nullptr;
        g_pool_cv.wait(g);
    }
}

void checkin(Worker* W) {
    {
        std::lock_guard<std::mutex> g(g_pool_mu);
        g_pool.push_back(W);
    }
    g_pool_cv.notify_one();
}

bool commit_stacks(Worker& W, uint32_t n) {
    const size_t ps = page_size();
    while (W.committed < n) {
        char* lo = W.stacks + (size_t)W.committed * W.slot + ps;  // the page below is the guard
        if (mprotect(lo, W.stack_size, PROT_READ | PROT_WRITE) != 0) return false;
        W.committed++;
    }
    return true;
}

char* stack_lo(Worker& W, uint32_t i) { return W.stacks + (size_t)i * W.slot + page_size(); }

// ------------------------------------------------------------------ scheduling

Worker& worker() {
    Worker* W = t_worker;
    if (!W || !t_cur) {
        fprintf(stderr, "tf_emu: a device function was called outside an emulator kernel launch\n");
        abort();
    }
    return *W;
}

inline void set_current(Fiber* f) {
    t_cur = f;
    t_thread_idx = &f->tid;
    t_chk_thread = f->linear;
    f->state = St::Running;
}

inline void rq_push(Worker& W, uint32_t i) { W.rq[W.rq_tail++ % kMaxThreads] = i; }

inline void rq_push_front(Worker& W, uint32_t i) { W.rq[--W.rq_head % kMaxThreads] = i; }

inline Fiber* rq_pop(Worker& W) {
    if (W.rq_head == W.rq_tail) return nullptr;
    return &W.fibers[W.rq[W.rq_head++ % kMaxThreads]];
}

void shuffle(uint8_t* p, uint32_t n, uint64_t& rng) {
    for (uint32_t i = n; i > 1; --i) {
        const uint32_t j = (uint32_t)(splitmix(rng) % i);
        const uint8_t t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
}

// Queues the lanes of `mask` of warp `w` in the warp's lane order: at the back of
// the run queue, or (`front`, warp-major) at its front, so they run next.
void release_lanes(Worker& W, uint32_t w, uint32_t mask, bool front = false) {
    Fiber* base = &W.fibers[w * 32];
    uint32_t lanes[32];
    uint32_t cnt = 0;
    switch (W.L->order) {
        case TF_EMU_ORDER_FORWARD:
            for (uint32_t m = mask; m; m &= m - 1) lanes[cnt++] = (uint32_t)__builtin_ctz(m);
            break;
        case TF_EMU_ORDER_REVERSE:
            for (uint32_t m = mask; m;) {
                const uint32_t l = 31u - (uint32_t)__builtin_clz(m);
                m &= ~(1u << l);
                lanes[cnt++] = l;
            }
            break;
        default: {
            WarpState& ws = W.warps[w];
            shuffle(ws.perm, 32, W.rng);  // a new order at every release
            for (int k = 0; k < 32; ++k)
                if (mask & (1u << ws.perm[k])) lanes[cnt++] = ws.perm[k];
        }
    }
    for (uint32_t k = 0; k < cnt; ++k) base[lanes[k]].state = St::Ready;
    if (front)
        for (uint32_t k = cnt; k-- > 0;) rq_push_front(W, w * 32 + lanes[k]);
    else
        for (uint32_t k = 0; k < cnt; ++k) rq_push(W, w * 32 + lanes[k]);
}

// Queues every live thread of the block: warps in the block's warp order.
void release_all(Worker& W) {
    if (W.warp_pol == TF_EMU_WARPS_AHEAD_SHUFFLED ||
        (W.warp_pol == TF_EMU_WARPS_ROUND_ROBIN && W.L->order == TF_EMU_ORDER_SHUFFLED))
        shuffle(W.warp_order, W.nwarps, W.rng);
    for (uint32_t k = 0; k < W.nwarps; ++k) {
        const uint32_t w = W.warp_order[k];
        release_lanes(W, w, W.warps[w].exist & ~W.warps[w].exited);
    }
}

// Switches from the current fiber `f` to the next ready one (or the scheduler);
// returns when `f` is resumed. `f` is resumed only if someone queued it.
void park(Worker& W, Fiber* f) {
    bump(W.watch);
    Fiber* next = rq_pop(W);
    if (next == f) {
        set_current(f);
        return;
    }
    if (next) {
        set_current(next);
        ctx_switch(&f->ctx, &next->ctx);
    } else {
        t_cur = nullptr;
        ctx_switch(&f->ctx, &W.sched);
    }
}

// Ends the block with an error raised by the current thread; never returns.
[[noreturn]] __attribute__((format(printf, 3, 4))) void fail(Worker& W, Fiber* f, const char* fmt, ...) {
    char msg[3072];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(W.errbuf, sizeof W.errbuf,
             "kernel `%s`, block (%u,%u,%u), thread (%u,%u,%u) (warp %u, lane %u): %s", W.L->kernel->name,
             W.ids.block_idx.x, W.ids.block_idx.y, W.ids.block_idx.z, f->tid.x, f->tid.y, f->tid.z, f->warp, f->lane,
             msg);
    W.failed = true;
    t_cur = nullptr;
    ctx_switch(&f->ctx, &W.sched);
    abort();  // unreachable: a failed block's fibers are never resumed
}

}  // namespace

// Called from the signal handler (guard.cpp): only stores and a context switch.
void interrupt_fiber(const Interrupt& why) {
    Worker* W = t_worker;
    Fiber* f = t_cur;
    if (!W || !f || !W->L || W->failed) return;
    W->stop = why;
    W->stop_fiber = f->linear;
    W->failed = true;
    t_cur = nullptr;
    ctx_switch(&f->ctx, &W->sched);
    abort();  // unreachable: a failed block's fibers are never resumed
}

namespace {

// If lane `dead` (exited) last completed a collective at the same call site as `g`
// but with another mask or op, says so ("" otherwise): that is why it is missing.
std::string disagreement(const Fiber& dead, int op, uint32_t mask, const char* file, int line) {
    if (dead.op == OP_NONE || !same_site(dead.file, dead.line, file, line)) return "";
    if (dead.mask == mask && dead.op == op) return "";
    char buf[512];
    snprintf(buf, sizeof buf,
             "lanes disagree on the %s: lane %u completed %s at %s:%d with mask 0x%08x (without the lanes waiting "
             "here) and then exited; ",
             dead.mask != mask ? "mask" : "operation", dead.lane, op_name(dead.op), short_file(dead.file), dead.line,
             dead.mask);
    return buf;
}

void thread_exit(Worker& W, Fiber* f) {
    f->state = St::Exited;
    if (W.n_exited++ == 0) W.first_exited = f->linear;
    WarpState& ws = W.warps[f->warp];
    const uint32_t bit = 1u << f->lane;
    ws.exited |= bit;
    if (W.n_at_bar > 0) {
        const Fiber& b = W.fibers[W.bar_first];
        fail(W, f,
             "thread exited while %u thread(s) wait at __syncthreads (%s:%d), e.g. thread (%u,%u,%u): the barrier "
             "can never complete (a barrier some threads skip?)",
             W.n_at_bar, short_file(W.bar_file), W.bar_line, b.tid.x, b.tid.y, b.tid.z);
    }
    for (int i = 0; i < ws.ngroups; ++i) {
        const Group& g = ws.groups[i];
        if (g.mask & bit) {
            char lanes[160];
            lanes_str(g.arrived, lanes, sizeof lanes);
            const std::string why = disagreement(*f, g.op, g.mask, g.file, g.line);
            fail(W, f, "%slane exited while lanes %s wait for it in %s (mask 0x%08x) at %s:%d", why.c_str(), lanes,
                 op_name(g.op), g.mask, short_file(g.file), g.line);
        }
    }
    park(W, f);
    abort();  // an exited fiber is never queued again
}

void fiber_entry() {
    Worker& W = *t_worker;
    Fiber* f = t_cur;
    W.L->kernel->run(W.L->params);
    thread_exit(W, f);
}

// Where every thread of the block stands, runs of equal states merged:
// "threads 0-31 wait at __syncthreads (kernels/x.cu:12); thread 32 is running; ...".
std::string thread_states(const Worker& W) {
    std::string s;
    int segments = 0;
    uint32_t i = 0;
    while (i < W.n && segments < 10) {
        const Fiber& a = W.fibers[i];
        uint32_t j = i;
        while (j + 1 < W.n) {
            const Fiber& b = W.fibers[j + 1];
            if (b.state != a.state) break;
            if (a.state == St::Barrier && !same_site(a.bar_file, a.bar_line, b.bar_file, b.bar_line)) break;
            if (a.state == St::Warp && (a.op != b.op || a.mask != b.mask || !same_site(a.file, a.line, b.file, b.line)))
                break;
            if (a.state == St::Running) break;
            ++j;
        }
        char seg[512];
        char range[48];
        if (i == j) snprintf(range, sizeof range, "thread %u", i);
        else snprintf(range, sizeof range, "threads %u-%u", i, j);
        switch (a.state) {
            case St::Barrier:
                snprintf(seg, sizeof seg, "%s wait at __syncthreads (%s:%d)", range, short_file(a.bar_file),
                         a.bar_line);
                break;
            case St::Warp:
                snprintf(seg, sizeof seg, "%s wait in %s (mask 0x%08x) at %s:%d", range, op_name(a.op), a.mask,
                         short_file(a.file), a.line);
                break;
            case St::Exited: snprintf(seg, sizeof seg, "%s have exited", range); break;
            case St::Running: snprintf(seg, sizeof seg, "%s is running", range); break;
            default: snprintf(seg, sizeof seg, "%s are runnable", range); break;
        }
        if (!s.empty()) s += "; ";
        s += seg;
        ++segments;
        i = j + 1;
    }
    if (i < W.n) s += "; ...";
    return s;
}

void describe_deadlock(Worker& W) {
    snprintf(W.errbuf, sizeof W.errbuf,
             "kernel `%s`, block (%u,%u,%u): deadlock: no thread can proceed (threads are numbered x-fastest): %s",
             W.L->kernel->name, W.ids.block_idx.x, W.ids.block_idx.y, W.ids.block_idx.z, thread_states(W).c_str());
    W.failed = true;
}

// The message for a fiber stopped by the signal handler (guard.cpp), formatted here,
// outside the handler.
void describe_stop(Worker& W) {
    const Interrupt& s = W.stop;
    const Fiber& f = W.fibers[W.stop_fiber];
    char what[2048];
    if (s.kind == Stop::Timeout) {
        snprintf(what, sizeof what,
                 "no progress for %.3g s (the emulator's watchdog; TF_EMU_TIMEOUT_S sets the limit): this thread ran "
                 "without reaching a barrier, a warp collective or its end (pc %p). A loop that waits for another "
                 "thread's write needs __syncwarp, __syncthreads or __nanosleep in it to let that thread run. Where "
                 "the threads stand (numbered x-fastest): %s",
                 (double)W.L->limit_ns / 1e9, reinterpret_cast<void*>(s.pc), thread_states(W).c_str());
    } else {
        const char* a = static_cast<const char*>(s.addr);
        const size_t ps = page_size();
        const char* stacks_end = W.stacks + W.slot * kMaxThreads;
        if (a >= W.stacks && a < stacks_end && (size_t)(a - W.stacks) % W.slot < ps) {
            const Fiber& o = W.fibers[(size_t)(a - W.stacks) / W.slot];
            snprintf(what, sizeof what,
                     "stack overflow: thread (%u,%u,%u) of the block exhausted its %zu KiB fiber stack (large local "
                     "arrays or deep recursion? TF_EMU_STACK_KIB raises it)",
                     o.tid.x, o.tid.y, o.tid.z, W.stack_size / 1024);
        } else if (a >= W.win + kWindowBytes && a < W.win + kWindowBytes + ps) {
            snprintf(what, sizeof what,
                     "invalid shared memory access at %p: %zu bytes past the end of the block's dynamic shared memory "
                     "(%u bytes requested)",
                     s.addr, (size_t)(a - (W.win + kWindowBytes)), W.L->dyn_bytes);
        } else if (a >= W.win - ps && a < W.win) {
            snprintf(what, sizeof what, "invalid shared memory access at %p: below the block's shared memory window",
                     s.addr);
        } else {
            snprintf(what, sizeof what, "invalid memory access (%s) at address %p (pc %p)",
                     s.sig == SIGBUS ? "SIGBUS" : "SIGSEGV", s.addr, reinterpret_cast<void*>(s.pc));
        }
    }
    snprintf(W.errbuf, sizeof W.errbuf, "kernel `%s`, block (%u,%u,%u), thread (%u,%u,%u) (warp %u, lane %u): %s",
             W.L->kernel->name, W.ids.block_idx.x, W.ids.block_idx.y, W.ids.block_idx.z, f.tid.x, f.tid.y, f.tid.z,
             f.warp, f.lane, what);
}

void run_block(Worker& W, Launch& L, uint64_t b) {
    const dim3 g = L.grid, bd = L.block;
    W.block_linear = b;
    W.ids.block_idx = uint3{(unsigned)(b % g.x), (unsigned)((b / g.x) % g.y), (unsigned)(b / ((uint64_t)g.x * g.y))};
    W.ids.block_dim = bd;
    W.ids.grid_dim = g;
    t_block_ids = &W.ids;
    W.rng = L.seed ^ (0xD1B54A32D192ED03ull * (b + 1));
    (void)splitmix(W.rng);

    W.warp_pol = L.warp_order == TF_EMU_WARPS_MIXED ? (int)(splitmix(W.rng) % 4) : L.warp_order;
    W.ahead = W.warp_pol != TF_EMU_WARPS_ROUND_ROBIN;
    const bool warps_reversed = W.warp_pol == TF_EMU_WARPS_AHEAD_REVERSE ||
                                (W.warp_pol == TF_EMU_WARPS_ROUND_ROBIN && L.order == TF_EMU_ORDER_REVERSE);

    W.n = L.nthreads;
    W.nwarps = (W.n + 31) / 32;
    for (uint32_t w = 0; w < W.nwarps; ++w) {
        WarpState& ws = W.warps[w];
        const uint32_t cnt = (w + 1 < W.nwarps || W.n % 32 == 0) ? 32 : W.n % 32;
        ws.exist = cnt == 32 ? 0xffffffffu : ((1u << cnt) - 1u);
        ws.exited = 0;
        ws.ngroups = 0;
        for (int k = 0; k < 32; ++k) ws.perm[k] = (uint8_t)(L.order == TF_EMU_ORDER_REVERSE ? 31 - k : k);
        W.warp_order[w] = (uint8_t)(warps_reversed ? W.nwarps - 1 - w : w);
    }

    // Shared memory: dynamic at the top of the window, statics allocated below it.
    W.dyn_end = W.win + kWindowBytes;
    W.dyn_start = W.dyn_end - round_up(L.dyn_bytes, 128);
    memset(W.dyn_start, kPoison, (size_t)(W.dyn_end - W.dyn_start));
    W.static_low = W.dyn_start;
    W.statics.clear();
    if (W.cw) checks_block_begin(W.cw, W.ids.block_idx, W.n, W.dyn_start, W.dyn_end);

    for (uint32_t i = 0; i < W.n; ++i) {
        Fiber& f = W.fibers[i];
        f.tid = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
        f.linear = i;
        f.warp = i / 32;
        f.lane = i % 32;
        f.state = St::Ready;
        f.op = OP_NONE;
        f.cp.clear();
        f.cp_head = 0;
        f.cp_committed = 0;
        ctx_init(&f.ctx, stack_lo(W, i), W.stack_size, fiber_entry);
    }
    W.rq_head = W.rq_tail = 0;
    W.n_exited = 0;
    W.n_at_bar = 0;
    W.failed = false;
    W.stop = Interrupt();
    release_all(W);

    for (;;) {
        Fiber* f = rq_pop(W);
        if (!f) {
            if (W.n_exited != W.n) describe_deadlock(W);
            break;
        }
        set_current(f);
        bump(W.watch);
        ctx_switch(&W.sched, &f->ctx);
        if (W.failed) break;
    }
    if (W.stop.kind != Stop::None) {
        left_handler();
        describe_stop(W);
    }
    if (W.cw && !W.failed) checks_block_end(W.cw);
    t_cur = nullptr;
    t_thread_idx = nullptr;
    if (W.failed) L.set_error(W.errbuf);
}

// Runs blocks of the launch until none is left. The launching thread (`first`) always
// gets a Worker (waiting if need be); extra threads give up when none is free.
void worker_main(Launch* L, bool first) {
    Worker* W = checkout(first);
    if (!W) {
        if (first) L->set_error("the emulator could not map fiber stacks and a shared-memory window (mmap failed)");
        return;
    }
    if (!commit_stacks(*W, L->nthreads)) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "the emulator could not map %u fiber stacks (mprotect: %s; too many memory maps? see "
                 "vm.max_map_count, or TF_EMU_MAX_WORKERS)",
                 L->nthreads, strerror(errno));
        L->set_error(msg);
        checkin(W);
        return;
    }
    SignalStackScope alt(W->sigstack);
    if (!alt.installed()) {
        L->set_error("the emulator could not map or install its signal stack (mmap or sigaltstack failed)");
        checkin(W);
        return;
    }
    if (L->chk && !W->chk_state) W->chk_state = worker_checks_new(W->win, kWindowBytes);
    if (L->chk && !W->chk_state) {
        L->set_error("the emulator could not map the shadow memory of its checks (mmap failed)");
        checkin(W);
        return;
    }
    W->cw = L->chk ? W->chk_state : nullptr;
    if (W->cw) checks_attach(W->cw, L->chk);
    t_worker = W;
    W->L = L;
    watch_begin(&W->watch, L->kernel->name, L->limit_ns);
    while (!L->failed.load(std::memory_order_relaxed)) {
        const uint64_t b = L->next.fetch_add(1);
        if (b >= L->nblocks) break;
        run_block(*W, *L, b);
    }
    watch_end(&W->watch);
    if (W->cw) checks_detach(W->cw);
    W->cw = nullptr;
    W->L = nullptr;
    t_worker = nullptr;
    t_block_ids = nullptr;
    checkin(W);
}

// ------------------------------------------------------------------ warp collectives

// 16-bit float bits -> f64 (exact).
template <bool BF16>
inline double half_bits_to_double(uint32_t bits) {
    uint32_t x;
    float f;
    if (BF16) {
        x = bits << 16;
        memcpy(&f, &x, 4);
        return f;
    }
    x = (bits & 0x7fffu) << 13;  // exponent and mantissa in f32 position, rebiased by 2^112
    if (__builtin_expect(x >= 0x0f800000u, 0)) {  // inf / NaN
        x |= 0x7f800000u;
        memcpy(&f, &x, 4);
    } else {
        memcpy(&f, &x, 4);
        f *= 5.192296858534828e33f;  // 2^112: exact, subnormal halves included
    }
    return (bits & 0x8000u) ? -(double)f : (double)f;
}

// D = A*B + C for the warp, from the lanes' fragments (docs/ptx-fragments.md). Products of
// two 16-bit values are exact in f64, as are partial sums of up to 16 of them for any
// sane magnitudes; the result is rounded to f32 once.
template <bool BF16>
void resolve_mma(Fiber* base) {
    typedef double v2d __attribute__((vector_size(16)));
    double A[16][16], C[16][8];
    alignas(16) double B[16][8];
    for (int l = 0; l < 32; ++l) {
        const Fiber& f = base[l];
        const uint32_t* a = static_cast<const uint32_t*>(f.p0);
        const uint32_t* b = static_cast<const uint32_t*>(f.p1);
        const float* d = static_cast<const float*>(f.out);
        const int g = l >> 2, c = (l & 3) * 2;  // groupID, 2 * threadID_in_group
        // A: a0,a1 (row g, cols c, c+1) in register 0, a2,a3 (row g+8) in 1, a4,a5
        // (row g, cols c+8, c+9) in 2, a6,a7 (row g+8, cols c+8, c+9) in 3; low half first.
        A[g][c] = half_bits_to_double<BF16>(a[0] & 0xffffu);
        A[g][c + 1] = half_bits_to_double<BF16>(a[0] >> 16);
        A[g + 8][c] = half_bits_to_double<BF16>(a[1] & 0xffffu);
        A[g + 8][c + 1] = half_bits_to_double<BF16>(a[1] >> 16);
        A[g][c + 8] = half_bits_to_double<BF16>(a[2] & 0xffffu);
        A[g][c + 9] = half_bits_to_double<BF16>(a[2] >> 16);
        A[g + 8][c + 8] = half_bits_to_double<BF16>(a[3] & 0xffffu);
        A[g + 8][c + 9] = half_bits_to_double<BF16>(a[3] >> 16);
        // B (k x n): b0,b1 (k = c, c+1; n = g) in register 0, b2,b3 (k = c+8, c+9) in 1.
        B[c][g] = half_bits_to_double<BF16>(b[0] & 0xffffu);
        B[c + 1][g] = half_bits_to_double<BF16>(b[0] >> 16);
        B[c + 8][g] = half_bits_to_double<BF16>(b[1] & 0xffffu);
        B[c + 9][g] = half_bits_to_double<BF16>(b[1] >> 16);
        // C/D: c0,c1 (row g, cols c, c+1), c2,c3 (row g+8).
        C[g][c] = d[0];
        C[g][c + 1] = d[1];
        C[g + 8][c] = d[2];
        C[g + 8][c + 1] = d[3];
    }
    for (int i = 0; i < 16; ++i) {
        v2d s0 = {C[i][0], C[i][1]}, s1 = {C[i][2], C[i][3]}, s2 = {C[i][4], C[i][5]}, s3 = {C[i][6], C[i][7]};
#pragma GCC unroll 16
        for (int k = 0; k < 16; ++k) {
            const v2d x = {A[i][k], A[i][k]};
            const v2d* bk = reinterpret_cast<const v2d*>(B[k]);
            s0 += x * bk[0];
            s1 += x * bk[1];
            s2 += x * bk[2];
            s3 += x * bk[3];
        }
        C[i][0] = s0[0], C[i][1] = s0[1], C[i][2] = s1[0], C[i][3] = s1[1];
        C[i][4] = s2[0], C[i][5] = s2[1], C[i][6] = s3[0], C[i][7] = s3[1];
    }
    for (int l = 0; l < 32; ++l) {
        float* d = static_cast<float*>(base[l].out);
        const int g = l >> 2, c = (l & 3) * 2;
        d[0] = (float)C[g][c];
        d[1] = (float)C[g][c + 1];
        d[2] = (float)C[g + 8][c];
        d[3] = (float)C[g + 8][c + 1];
    }
}

void resolve_ldmatrix(Worker& W, Fiber* f, Fiber* base, int nmat, bool trans) {
    uint16_t M[4][8][8];
    for (int m = 0; m < nmat; ++m) {
        for (int r = 0; r < 8; ++r) {
            const int lane = 8 * m + r;
            const char* p = static_cast<const char*>(base[lane].p0);
            const uintptr_t a = reinterpret_cast<uintptr_t>(p);
            if (a & 15u)
                fail(W, f,
                     "%s at %s:%d: lane %d gives row address %p (row %d of matrix %d), not 16-byte aligned",
                     op_name(base[lane].op), short_file(base[lane].file), base[lane].line, lane,
                     static_cast<const void*>(p), r, m);
            if (p < W.static_low || p + 16 > W.dyn_end)
                fail(W, f,
                     "%s at %s:%d: lane %d gives row address %p (row %d of matrix %d), outside the block's shared "
                     "memory [%p, %p)",
                     op_name(base[lane].op), short_file(base[lane].file), base[lane].line, lane,
                     static_cast<const void*>(p), r, m, static_cast<const void*>(W.static_low),
                     static_cast<const void*>(W.dyn_end));
            memcpy(M[m][r], p, 16);
        }
    }
    if (W.cw) {
        const void* rows[32];
        for (int i = 0; i < 8 * nmat; ++i) rows[i] = base[i].p0;
        checks_ldmatrix(W.cw, f->warp, rows, nmat, base[0].file, base[0].line);
    }
    for (int l = 0; l < 32; ++l) {
        uint32_t* out = static_cast<uint32_t*>(base[l].out);
        const int g = l >> 2, t = l & 3;
        for (int m = 0; m < nmat; ++m) {
            const uint32_t lo = trans ? M[m][2 * t][g] : M[m][g][2 * t];
            const uint32_t hi = trans ? M[m][2 * t + 1][g] : M[m][g][2 * t + 1];
            out[m] = lo | (hi << 16);
        }
    }
}

// Computes the results of a complete collective (all lanes of g.mask arrived). Runs
// on the last arriving lane `f`.
void resolve(Worker& W, Fiber* f, uint32_t warp, const Group& g) {
    Fiber* base = &W.fibers[warp * 32];
    const uint32_t mask = g.mask;
    switch (g.op) {
        case OP_SHFL_IDX:
        case OP_SHFL_UP:
        case OP_SHFL_DOWN:
        case OP_SHFL_XOR:
            for (uint32_t m = mask; m;) {
                const int l = __builtin_ctz(m);
                m &= m - 1;
                Fiber& x = base[l];
                const int w = x.width;
                const int seg = l & ~(w - 1), seg_end = seg + w - 1;
                const int bval = x.arg & 31;  // PTX: b[4:0]
                int j = l;
                switch (g.op) {
                    case OP_SHFL_IDX: j = seg | (bval & (w - 1)); break;
                    case OP_SHFL_UP: j = (l - bval >= seg) ? l - bval : l; break;
                    case OP_SHFL_DOWN: j = (l + bval <= seg_end) ? l + bval : l; break;
                    default: j = ((l ^ bval) <= seg_end) ? (l ^ bval) : l; break;
                }
                x.result = (mask & (1u << j)) ? base[j].value : ~0ull;
            }
            break;
        case OP_BALLOT:
        case OP_ANY:
        case OP_ALL: {
            uint32_t ballot = 0;
            for (uint32_t m = mask; m; m &= m - 1) {
                const int l = __builtin_ctz(m);
                if (base[l].value) ballot |= 1u << l;
            }
            const uint64_t r = g.op == OP_BALLOT ? ballot : g.op == OP_ANY ? (ballot != 0) : (ballot == mask);
            for (uint32_t m = mask; m; m &= m - 1) base[__builtin_ctz(m)].result = r;
            break;
        }
        case OP_SYNCWARP: break;
        case OP_REDUCE_ADD:
        case OP_REDUCE_MIN_U:
        case OP_REDUCE_MAX_U:
        case OP_REDUCE_MIN_I:
        case OP_REDUCE_MAX_I:
        case OP_REDUCE_AND:
        case OP_REDUCE_OR:
        case OP_REDUCE_XOR: {
            bool first = true;
            uint32_t acc = 0;
            for (uint32_t m = mask; m; m &= m - 1) {
                const uint32_t v = (uint32_t)base[__builtin_ctz(m)].value;
                if (first) {
                    acc = v;
                    first = false;
                    continue;
                }
                switch (g.op) {
                    case OP_REDUCE_ADD: acc += v; break;
                    case OP_REDUCE_MIN_U: acc = v < acc ? v : acc; break;
                    case OP_REDUCE_MAX_U: acc = v > acc ? v : acc; break;
                    case OP_REDUCE_MIN_I: acc = (int32_t)v < (int32_t)acc ? v : acc; break;
                    case OP_REDUCE_MAX_I: acc = (int32_t)v > (int32_t)acc ? v : acc; break;
                    case OP_REDUCE_AND: acc &= v; break;
                    case OP_REDUCE_OR: acc |= v; break;
                    default: acc ^= v; break;
                }
            }
            for (uint32_t m = mask; m; m &= m - 1) base[__builtin_ctz(m)].result = acc;
            break;
        }
        case OP_MATCH_ANY:
            for (uint32_t m = mask; m; m &= m - 1) {
                Fiber& x = base[__builtin_ctz(m)];
                uint32_t eq = 0;
                for (uint32_t k = mask; k; k &= k - 1)
                    if (base[__builtin_ctz(k)].value == x.value) eq |= 1u << __builtin_ctz(k);
                x.result = eq;
            }
            break;
        case OP_MMA_F16: resolve_mma<false>(base); break;
        case OP_MMA_BF16: resolve_mma<true>(base); break;
        case OP_LDSM_X1:
        case OP_LDSM_X1_T:
        case OP_LDSM_X2:
        case OP_LDSM_X2_T:
        case OP_LDSM_X4:
        case OP_LDSM_X4_T: {
            const int k = g.op - OP_LDSM_X1;
            resolve_ldmatrix(W, f, base, 1 << (k / 2), (k & 1) != 0);
            break;
        }
        default: fail(W, f, "unknown warp collective %d", g.op);
    }
}

// Explains why a lane cannot join a collective (the slow path of `collective`).
[[noreturn]] __attribute__((noinline)) void collective_error(Worker& W, Fiber* f, int op, uint32_t mask,
                                                              const char* file, int line) {
    const uint32_t bit = 1u << f->lane;
    if (!(mask & bit))
        fail(W, f, "%s at %s:%d with mask 0x%08x: the calling lane %u is not in the mask", op_name(op),
             short_file(file), line, mask, f->lane);
    WarpState& ws = W.warps[f->warp];
    const uint32_t dead = (~ws.exist | ws.exited) & mask;
    if (dead) {
        char lanes[160];
        lanes_str(dead, lanes, sizeof lanes);
        std::string why;
        for (uint32_t m = dead & ws.exist; m && why.empty(); m &= m - 1)
            why = disagreement(W.fibers[f->warp * 32 + __builtin_ctz(m)], op, mask, file, line);
        fail(W, f, "%s%s at %s:%d with mask 0x%08x: lane(s) %s of the mask %s", why.c_str(), op_name(op),
             short_file(file), line, mask, lanes, (dead & ~ws.exist) ? "do not exist (partial warp)" : "have exited");
    }
    for (int i = 0; i < ws.ngroups; ++i) {
        const Group& x = ws.groups[i];
        if ((x.mask & mask) && (x.mask != mask || x.op != op)) {
            char lanes[160];
            lanes_str(x.arrived, lanes, sizeof lanes);
            fail(W, f,
                 "%s at %s:%d with mask 0x%08x, while lane(s) %s of this warp wait in %s at %s:%d with mask 0x%08x: "
                 "lanes disagree on the %s",
                 op_name(op), short_file(file), line, mask, lanes, op_name(x.op), short_file(x.file), x.line, x.mask,
                 x.mask != mask ? "mask" : "operation");
        }
    }
    fail(W, f, "%s at %s:%d: inconsistent warp state", op_name(op), short_file(file), line);
}

// The rendezvous: records the lane's part, completes the collective when every lane
// of the mask is there, and returns once it is complete. The lane's record fields
// (value, arg, width, p0, p1, out) are set by the caller.
void collective(Worker& W, Fiber* f, int op, uint32_t mask, const char* file, int line) {
    const uint32_t bit = 1u << f->lane;
    WarpState& ws = W.warps[f->warp];
    if (__builtin_expect(!(mask & bit) || (mask & (~ws.exist | ws.exited)), 0))
        collective_error(W, f, op, mask, file, line);
    // Join the pending collective whose mask overlaps this one (it must be the same
    // mask and op), or open a new one.
    Group* g = nullptr;
    for (int i = 0; i < ws.ngroups; ++i) {
        Group& x = ws.groups[i];
        if (x.mask & mask) {
            if (__builtin_expect(x.mask != mask || x.op != op, 0)) collective_error(W, f, op, mask, file, line);
            g = &x;
            break;
        }
    }
    if (!g) {
        g = &ws.groups[ws.ngroups++];
        g->mask = mask;
        g->arrived = 0;
        g->op = op;
        g->file = file;
        g->line = line;
    }
    f->op = op;
    f->mask = mask;
    f->file = file;
    f->line = line;
    f->state = St::Warp;
    g->arrived |= bit;
    if (g->arrived == mask) {
        const Group done = *g;
        if (W.cw) checks_collective(W.cw, f->warp, mask, ws.exist & ~ws.exited, op);
        resolve(W, f, f->warp, done);
        *g = ws.groups[--ws.ngroups];
        release_lanes(W, f->warp, mask, W.ahead);
    }
    park(W, f);
}

}  // namespace

// ------------------------------------------------------------------ device API

uint64_t warp_op(int op, uint32_t mask, uint64_t value, int arg, int width, const char* file, int line) {
    Worker& W = worker();
    Fiber* f = t_cur;
    if (width <= 0 || width > 32 || (width & (width - 1)))
        fail(W, f, "%s at %s:%d: width %d is not a power of two in [1, 32]", op_name(op), short_file(file), line,
             width);
    f->value = value;
    f->arg = arg;
    f->width = width;
    collective(W, f, op, mask, file, line);
    return f->result;
}

int syncthreads(int op, int pred, const char* file, int line) {
    Worker& W = worker();
    Fiber* f = t_cur;
    if (W.n_exited > 0) {
        const Fiber& e = W.fibers[W.first_exited];
        fail(W, f,
             "__syncthreads at %s:%d can never complete: %u thread(s) of the block have exited, e.g. thread "
             "(%u,%u,%u)",
             short_file(file), line, W.n_exited, e.tid.x, e.tid.y, e.tid.z);
    }
    if (W.n_at_bar == 0) {
        W.bar_file = file;
        W.bar_line = line;
        W.bar_op = op;
        W.bar_first = f->linear;
        W.bar_acc = op == 2 ? 1 : 0;
    } else if (!same_site(file, line, W.bar_file, W.bar_line)) {
        const Fiber& b = W.fibers[W.bar_first];
        fail(W, f,
             "divergent barrier: this thread reached __syncthreads at %s:%d while %u thread(s) wait at __syncthreads "
             "at %s:%d, e.g. thread (%u,%u,%u)",
             short_file(file), line, W.n_at_bar, short_file(W.bar_file), W.bar_line, b.tid.x, b.tid.y, b.tid.z);
    }
    f->state = St::Barrier;
    f->bar_file = file;
    f->bar_line = line;
    switch (op) {
        case 1: W.bar_acc += pred != 0; break;
        case 2: W.bar_acc &= pred != 0; break;
        case 3: W.bar_acc |= pred != 0; break;
        default: break;
    }
    if (++W.n_at_bar == W.n) {
        W.n_at_bar = 0;
        if (W.cw) checks_barrier(W.cw);
        for (uint32_t i = 0; i < W.n; ++i) W.fibers[i].bar_result = W.bar_acc;
        release_all(W);
    }
    park(W, f);
    return f->bar_result;
}

void mma_m16n8k16(int dtype, float* d, const uint32_t* a, const uint32_t* b, const char* file, int line) {
    Worker& W = worker();
    Fiber* f = t_cur;
    if (dtype != TF_DTYPE_F16 && dtype != TF_DTYPE_BF16)
        fail(W, f, "mma.sync m16n8k16 at %s:%d: unsupported dtype %d", short_file(file), line, dtype);
    f->p0 = a;
    f->p1 = b;
    f->out = d;
    collective(W, f, dtype == TF_DTYPE_F16 ? OP_MMA_F16 : OP_MMA_BF16, 0xffffffffu, file, line);
}

void ldmatrix(int nmat, bool trans, uint32_t* r, const void* smem, const char* file, int line) {
    Worker& W = worker();
    Fiber* f = t_cur;
    int op;
    switch (nmat) {
        case 1: op = OP_LDSM_X1; break;
        case 2: op = OP_LDSM_X2; break;
        case 4: op = OP_LDSM_X4; break;
        default: fail(W, f, "ldmatrix at %s:%d: .x%d does not exist", short_file(file), line, nmat);
    }
    if (trans) op += 1;
    f->p0 = smem;
    f->out = r;
    collective(W, f, op, 0xffffffffu, file, line);
}

void cp_async(void* smem, const void* gmem, int cp_size, int src_bytes, const char* file, int line) {
    Worker& W = worker();
    Fiber* f = t_cur;
    if (cp_size != 4 && cp_size != 8 && cp_size != 16)
        fail(W, f, "cp.async at %s:%d: cp-size %d is not 4, 8 or 16", short_file(file), line, cp_size);
    if (src_bytes < 0 || src_bytes > cp_size)
        fail(W, f, "cp.async at %s:%d: src-size %d outside [0, %d]", short_file(file), line, src_bytes, cp_size);
    unsigned char* dst = static_cast<unsigned char*>(smem);
    const unsigned char* src = static_cast<const unsigned char*>(gmem);
    if (reinterpret_cast<uintptr_t>(dst) % (uintptr_t)cp_size)
        fail(W, f, "cp.async at %s:%d: shared destination %p is not %d-byte aligned", short_file(file), line, smem,
             cp_size);
    if (reinterpret_cast<char*>(dst) < W.static_low || reinterpret_cast<char*>(dst) + cp_size > W.dyn_end)
        fail(W, f, "cp.async at %s:%d: destination %p..+%d is outside the block's shared memory [%p, %p)",
             short_file(file), line, smem, cp_size, static_cast<void*>(W.static_low), static_cast<void*>(W.dyn_end));
    if (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % (uintptr_t)cp_size)
        fail(W, f, "cp.async at %s:%d: global source %p is not %d-byte aligned", short_file(file), line, gmem,
             cp_size);
    if (src_bytes > 0 && reinterpret_cast<const char*>(src) + cp_size > W.static_low &&
        reinterpret_cast<const char*>(src) < W.dyn_end)
        fail(W, f, "cp.async at %s:%d: source %p lies in shared memory (cp.async copies global to shared)",
             short_file(file), line, gmem);
    if (W.cw) checks_cp_issue(W.cw, dst, src, cp_size, src_bytes, file, line);
    memset(dst, kPoison, (size_t)cp_size);  // reading before the wait sees poison
    f->cp.push_back(CpOp{dst, src, (uint32_t)cp_size, (uint32_t)src_bytes, f->cp_committed});
}

void cp_async_commit() {
    worker();
    t_cur->cp_committed++;
}

void cp_async_wait(int n, const char* file, int line) {
    Worker& W = worker();
    Fiber* f = t_cur;
    if (n < 0) fail(W, f, "cp.async.wait_group %d at %s:%d: N must be >= 0", n, short_file(file), line);
    // Groups [0, committed - n) complete; the open (uncommitted) group never does.
    const uint64_t limit = f->cp_committed > (uint64_t)n ? f->cp_committed - (uint64_t)n : 0;
    while (f->cp_head < f->cp.size() && f->cp[f->cp_head].group < limit) {
        const CpOp& c = f->cp[f->cp_head++];
        if (W.cw) checks_cp_retire(W.cw, c.dst, (int)c.size, file, line);
        if (c.src_bytes) memcpy(c.dst, c.src, c.src_bytes);
        memset(c.dst + c.src_bytes, 0, c.size - c.src_bytes);
    }
    if (f->cp_head == f->cp.size()) {
        f->cp.clear();
        f->cp_head = 0;
    }
}

void* dynamic_smem() {
    Worker& W = worker();
    return W.dyn_start;
}

void* static_shared(const void* key, size_t bytes, size_t align, const char* file, int line) {
    Worker& W = worker();
    for (const auto& e : W.statics)
        if (e.first == key) return e.second;
    if (align < 16) align = 16;
    if (align & (align - 1) || align > 4096)
        trap("static __shared__ alignment is not a power of two <= 4096", file, line);
    const uintptr_t low = reinterpret_cast<uintptr_t>(W.static_low);
    const uintptr_t p = (low - bytes) & ~(uintptr_t)(align - 1);
    const size_t total = (size_t)(reinterpret_cast<uintptr_t>(W.dyn_start) - p);
    if (bytes > kMaxStatic || total > kMaxStatic)
        fail(W, t_cur,
             "static __shared__ memory of the block exceeds %zu bytes (48 KiB): the declaration at %s:%d needs %zu "
             "bytes, %zu in all (use dynamic shared memory beyond 48 KiB)",
             kMaxStatic, short_file(file), line, bytes, bytes > kMaxStatic ? bytes : total);
    if (total + round_up(W.L->dyn_bytes, 128) > kMaxTotal)
        fail(W, t_cur,
             "static (%zu) + dynamic (%u) shared memory of the block exceed %zu bytes (227 KiB), at the declaration at "
             "%s:%d",
             total, W.L->dyn_bytes, kMaxTotal, short_file(file), line);
    char* ptr = reinterpret_cast<char*>(p);
    memset(ptr, kPoison, (size_t)(W.static_low - ptr));
    W.static_low = ptr;
    W.statics.emplace_back(key, ptr);
    if (W.cw) checks_smem_bounds(W.cw, W.static_low, W.dyn_end);
    return ptr;
}

void check_fail(const char* msg) {
    Worker& W = worker();
    fail(W, t_cur, "%s", msg);
}

void trap(const char* what, const char* file, int line) {
    Worker& W = worker();
    fail(W, t_cur, "%s at %s:%d", what, short_file(file), line);
}

void yield() {
    Worker& W = worker();
    Fiber* f = t_cur;
    f->state = St::Ready;
    rq_push(W, f->linear);
    park(W, f);
}

uint32_t activemask() {
    Worker& W = worker();
    const WarpState& ws = W.warps[t_cur->warp];
    return ws.exist & ~ws.exited;
}

// ------------------------------------------------------------------ launch

namespace {

const tf_emu_kernel_entry* find_kernel(const char* name) {
    for (size_t i = 0; i < tf_emu_registry_len; ++i)
        if (strcmp(tf_emu_registry[i]->name, name) == 0) return tf_emu_registry[i];
    return nullptr;
}

void put_err(char* err, size_t err_len, const std::string& msg) {
    if (!err || err_len == 0) return;
    const size_t n = msg.size() < err_len - 1 ? msg.size() : err_len - 1;
    memcpy(err, msg.data(), n);
    err[n] = 0;
}

__attribute__((format(printf, 1, 2))) std::string fmt(const char* f, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

// The launch-time checks a GPU makes; "" when the configuration is valid.
std::string validate(const tf_emu_launch_args* a, const tf_emu_kernel_entry** kout) {
    if (!a) return "tf_emu_launch: null launch arguments";
    if (!a->kernel) return "tf_emu_launch: null kernel name";
    const tf_emu_kernel_entry* k = find_kernel(a->kernel);
    if (!k) {
        std::string known;
        for (size_t i = 0; i < tf_emu_registry_len && known.size() < 3000; ++i) {
            if (i) known += ", ";
            known += tf_emu_registry[i]->name;
        }
        return fmt("unknown kernel `%s` (the emulator has %zu: %s)", a->kernel, tf_emu_registry_len, known.c_str());
    }
    *kout = k;
    const char* name = a->kernel;
    if (a->params_bytes != k->params_size)
        return fmt("kernel `%s`: params of %zu bytes given, but its parameter `%s` has %zu bytes", name,
                   a->params_bytes, k->params_type, k->params_size);
    if (k->params_size && !a->params) return fmt("kernel `%s`: null params pointer", name);
    const uint32_t* g = a->grid;
    const uint32_t* b = a->block;
    if (!g[0] || !g[1] || !g[2])
        return fmt("kernel `%s`: invalid configuration: grid (%u,%u,%u) has a zero dimension", name, g[0], g[1], g[2]);
    if (g[0] > 0x7fffffffu || g[1] > 65535u || g[2] > 65535u)
        return fmt("kernel `%s`: invalid configuration: grid (%u,%u,%u) exceeds (2^31-1, 65535, 65535)", name, g[0],
                   g[1], g[2]);
    if (!b[0] || !b[1] || !b[2])
        return fmt("kernel `%s`: invalid configuration: block (%u,%u,%u) has a zero dimension", name, b[0], b[1],
                   b[2]);
    const uint64_t nt = (uint64_t)b[0] * b[1] * b[2];
    if (nt > kMaxThreads)
        return fmt("kernel `%s`: invalid configuration: too many threads per block: %llu (block (%u,%u,%u)), the "
                   "limit is %u",
                   name, (unsigned long long)nt, b[0], b[1], b[2], kMaxThreads);
    if (b[0] > 1024u || b[1] > 1024u || b[2] > 64u)
        return fmt("kernel `%s`: invalid configuration: block (%u,%u,%u) exceeds (1024, 1024, 64)", name, b[0], b[1],
                   b[2]);
    if (a->dynamic_smem_bytes > kMaxDynamic)
        return fmt("kernel `%s`: too much dynamic shared memory: %u bytes requested, the limit is %zu (227 KiB)", name,
                   a->dynamic_smem_bytes, kMaxDynamic);
    if (a->lane_order < TF_EMU_ORDER_FORWARD || a->lane_order > TF_EMU_ORDER_SHUFFLED)
        return fmt("kernel `%s`: unknown lane order %d", name, a->lane_order);
    if (a->warp_order < TF_EMU_WARPS_ROUND_ROBIN || a->warp_order > TF_EMU_WARPS_MIXED)
        return fmt("kernel `%s`: unknown warp order %d", name, a->warp_order);
    return "";
}

int launch(const tf_emu_launch_args* a, char* err, size_t err_len) {
    const tf_emu_kernel_entry* k = nullptr;
    std::string bad = validate(a, &k);
    if (!bad.empty()) {
        put_err(err, err_len, bad);
        return 1;
    }
    install_guard();
    Launch L;
    L.limit_ns = watchdog_limit_ns(a->timeout_ms);
    L.kernel = k;
    L.params = a->params;
    L.grid = dim3(a->grid[0], a->grid[1], a->grid[2]);
    L.block = dim3(a->block[0], a->block[1], a->block[2]);
    L.nthreads = a->block[0] * a->block[1] * a->block[2];
    L.dyn_bytes = a->dynamic_smem_bytes;
    L.order = a->lane_order;
    L.warp_order = a->warp_order;
    // TF_EMU_WARP_ORDER=0..4 overrides every launch's warp order (to run a whole test
    // suite under one schedule).
    if (const char* e = getenv("TF_EMU_WARP_ORDER")) {
        const int v = atoi(e);
        if (*e && v >= TF_EMU_WARPS_ROUND_ROBIN && v <= TF_EMU_WARPS_MIXED) L.warp_order = v;
    }
    L.seed = a->seed;
    L.nblocks = (uint64_t)a->grid[0] * a->grid[1] * a->grid[2];
    L.chk = checks_begin(a->checks, k->name, L.block, L.grid);

    uint64_t nw = a->os_threads ? a->os_threads : std::thread::hardware_concurrency();
    if (nw == 0) nw = 1;
    if (nw > 256) nw = 256;
    if (nw > L.nblocks) nw = L.nblocks;
    std::vector<std::thread> pool;
    for (uint64_t i = 1; i < nw; ++i) {
        try {
            pool.emplace_back(worker_main, &L, false);
        } catch (const std::exception&) {
            break;  // fewer workers: still correct
        }
    }
    worker_main(&L, true);
    for (auto& t : pool) t.join();
    std::string findings;
    const uint32_t bits = L.chk ? checks_bits(L.chk) : 0;
    if (L.chk) {
        findings = checks_end(L.chk);
        checks_free(L.chk);
    }
    // Without initcheck nothing recorded this launch's writes: count the allocations it
    // was given as written, so that a later launch with initcheck does not report them.
    if (!(bits & CHECK_INIT)) mark_params_written(a->params, a->params_bytes);
    if (L.failed.load() || !findings.empty()) {
        std::string msg = L.failed.load() ? L.err : std::string();
        if (!findings.empty()) msg += (msg.empty() ? "" : "\n") + findings;
        put_err(err, err_len, symbolize_markers(msg));
        return 2;
    }
    if (err && err_len) err[0] = 0;
    return 0;
}

}  // namespace
}  // namespace tf_emu

extern "C" int tf_emu_launch(const tf_emu_launch_args* args, char* err, size_t err_len) {
    try {
        return tf_emu::launch(args, err, err_len);
    } catch (const std::exception& e) {
        tf_emu::put_err(err, err_len, std::string("tf_emu_launch: internal error: ") + e.what());
    } catch (...) {
        tf_emu::put_err(err, err_len, "tf_emu_launch: internal error");
    }
    return 3;
}

extern "C" size_t tf_emu_kernel_count(void) { return tf_emu_registry_len; }

extern "C" const char* tf_emu_kernel_name(size_t i) {
    return i < tf_emu_registry_len ? tf_emu_registry[i]->name : nullptr;
}
