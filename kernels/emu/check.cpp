// check.cpp: racecheck, memcheck and initcheck for kernels on the emulator, and the
// __tsan_* hooks that feed them (see check.h for the mechanism).
//
// racecheck (shared memory): every byte of the block's shared-memory window has a
// shadow Cell: the last write and up to two reads since, each with the thread, the
// barrier epoch and the warp's collective count at the access. Two accesses of one
// byte by different threads, at least one a write, conflict unless a __syncthreads
// completed between them (the epoch changed) or both lanes of one warp took part in
// a warp collective between them (__syncwarp, a shuffle, mma, ...: with independent
// thread scheduling, lanes of a warp are otherwise unordered). A cp.async marks its
// destination in flight from issue until the wait_group that retires it; a read or
// another write of it meanwhile is a hazard, and the copy counts as the issuing
// thread's write when it retires.
//
// memcheck (global memory): an access of an emulator allocation (tf_emu_malloc) that
// leaves the caller's bytes (into a redzone), of a freed allocation, or misaligned for
// its size ends the launch at once, like a fault on a GPU. Shared-memory accesses
// outside the block's static + dynamic shared memory too.
//
// initcheck: a read of allocation bytes never written since tf_emu_malloc (without
// `initialized`), or of shared memory not written in this block.
//
// Findings other than memcheck's are recorded (deduplicated by kind and source
// locations, counted) and the launch fails at its end with all of them.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <tuple>

#include "check_state.h"
#include "tf_kernels.h"

namespace tf_emu {

__thread WorkerChecks* t_wc TF_EMU_TLS = nullptr;
__thread uint32_t t_chk_thread TF_EMU_TLS = 0;

namespace {

constexpr size_t kMaxFindings = 64;  // distinct findings kept per launch

uint3 tid3(const LaunchChecks* L, uint32_t t) {
    const dim3 b = L->block;
    return uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
}


std::string smem_where(const WorkerChecks* c, uintptr_t a) {
    char buf[160];
    if (a >= c->dyn_lo)
        snprintf(buf, sizeof buf, "shared memory: byte %llu of dynamic shared memory",
                 (unsigned long long)(a - c->dyn_lo));
    else
        snprintf(buf, sizeof buf, "shared memory: static __shared__ data, %llu bytes below dynamic shared memory",
                 (unsigned long long)(c->dyn_lo - a));
    return buf;
}

void record(WorkerChecks* c, int kind, Where cur, uint32_t tid_cur, Where prev, uint32_t tid_prev,
            std::string&& where) {
    LaunchChecks* L = c->L;
    std::lock_guard<std::mutex> g(L->mu);
    L->total++;
    auto key = std::make_tuple(kind, cur, prev);
    auto it = L->findings.find(key);
    if (it != L->findings.end()) {
        it->second.count++;
        return;
    }
    if (L->findings.size() >= kMaxFindings) return;
    Finding f;
    f.kind = kind;
    f.cur = cur;
    f.prev = prev;
    f.tid_cur = tid_cur;
    f.tid_prev = tid_prev;
    f.block = c->block;
    f.where = std::move(where);
    f.count = 1;
    L->findings.emplace(key, std::move(f));
}

// Whether `a` (an earlier access) happens before an access by thread `t` now.
inline bool ordered(const WorkerChecks* c, const Acc& a, uint32_t t) {
    if (a.epoch != c->epoch || a.tid == t) return true;
    const uint32_t w = t >> 5;
    if ((uint32_t)(a.tid >> 5) != w) return false;
    uint32_t last = c->full_last[w];
    const uint32_t pair = c->pair_last[(w * 32 + (a.tid & 31u)) * 32 + (t & 31u)];
    if (pair > last) last = pair;
    return last > a.wsync;
}

// Remembers a read, keeping readers of different warps where it can.
inline void add_reader(Cell& x, const Acc& cur, uint32_t epoch) {
    const uint32_t w = cur.tid >> 5;
    if (x.r1.epoch != epoch || x.r1.tid == cur.tid) x.r1 = cur;
    else if (x.r2.epoch != epoch || x.r2.tid == cur.tid) x.r2 = cur;
    else if ((uint32_t)(x.r1.tid >> 5) == w) x.r1 = cur;
    else x.r2 = cur;
}

const char* access_name(bool wr) { return wr ? "write" : "read"; }

}  // namespace

// "{pc:HEX}" for a code address (symbolised after the launch), "file:line" for a Site.
std::string where_str(Where w) {
    char buf[64];
    if (w.expl) {
        const Site* s = reinterpret_cast<const Site*>(w.at);
        const char* f = s->file ? s->file : "?";
        const char* k = strstr(f, "kernels/");
        return std::string(k ? k : f) + ":" + std::to_string(s->line);
    }
    snprintf(buf, sizeof buf, "{pc:%llx}", (unsigned long long)w.at);
    return buf;
}

const Site* intern_site(WorkerChecks* c, const char* file, int line) {
    auto key = std::make_pair(file, line);
    auto it = c->sites.find(key);
    if (it != c->sites.end()) return it->second;
    c->site_store.push_back(Site{file, line});
    const Site* s = &c->site_store.back();
    c->sites.emplace(key, s);
    return s;
}

void shared_access(WorkerChecks* c, uintptr_t a, uint32_t n, bool wr, Where at, uint32_t tid) {
    if (a < c->smem_lo || a + n > c->smem_hi) {
        if (!(c->bits & CHECK_MEM)) return;
        char msg[512];
        snprintf(msg, sizeof msg,
                 "memcheck: shared-memory %s of %u bytes at %p (at %s) lies outside the block's shared memory "
                 "[%p, %p) (static __shared__ data and %llu bytes of dynamic shared memory)",
                 access_name(wr), n, reinterpret_cast<void*>(a), where_str(at).c_str(),
                 reinterpret_cast<void*>(c->smem_lo), reinterpret_cast<void*>(c->smem_hi),
                 (unsigned long long)(c->smem_hi - c->dyn_lo));
        check_fail(msg);
    }
    if (!(c->bits & (CHECK_RACE | CHECK_INIT))) return;
    const bool race = c->bits & CHECK_RACE, init = c->bits & CHECK_INIT;
    Cell* cells = c->shadow + (a - c->win_lo);
    Acc cur;
    cur.at = at.at;
    cur.expl = at.expl;
    cur.epoch = c->epoch;
    cur.wsync = c->wcount[tid >> 5];
    cur.tid = (uint16_t)tid;
    bool hazard = false, uninit = false;
    for (uint32_t i = 0; i < n; ++i) {
        Cell& x = cells[i];
        if (x.inflight && race) {
            if (!hazard)
                record(c, wr ? F_CP_OVERWRITE : F_CP_READ, at, tid, Where{x.w.at, x.w.expl != 0}, x.w.tid,
                       smem_where(c, a + i));
            hazard = true;
            if (wr) {
                x.inflight = 0;
                x.w = cur;
                x.init = c->serial;
            }
            continue;
        }
        if (!wr) {
            if (init && x.init != c->serial && !uninit) {
                record(c, F_INIT_SHARED, at, tid, Where{}, tid, smem_where(c, a + i));
                uninit = true;
            }
            if (race) {
                if (!hazard && !ordered(c, x.w, tid)) {
                    record(c, F_RAW, at, tid, Where{x.w.at, x.w.expl != 0}, x.w.tid, smem_where(c, a + i));
                    hazard = true;
                }
                add_reader(x, cur, c->epoch);
            }
        } else {
            if (race) {
                if (!hazard) {
                    const Acc* bad = !ordered(c, x.r1, tid) ? &x.r1 : !ordered(c, x.r2, tid) ? &x.r2 : nullptr;
                    if (bad) {
                        record(c, F_WAR, at, tid, Where{bad->at, bad->expl != 0}, bad->tid, smem_where(c, a + i));
                        hazard = true;
                    } else if (!ordered(c, x.w, tid)) {
                        record(c, F_WAW, at, tid, Where{x.w.at, x.w.expl != 0}, x.w.tid, smem_where(c, a + i));
                        hazard = true;
                    }
                }
                x.w = cur;
                x.r1.epoch = x.r2.epoch = 0;
            }
            x.init = c->serial;
        }
    }
}

void global_access(WorkerChecks* c, uintptr_t a, uint32_t n, bool wr, Where at, uint32_t tid, bool aligned_hook,
                   int kind) {
    const AllocRec* r = alloc_find(*c->L->allocs, a);
    if (!r) return;
    const bool mem = c->bits & CHECK_MEM;
    if (mem) {
        char msg[640];
        if (r->freed) {
            snprintf(msg, sizeof msg,
                     "memcheck: global %s of %u bytes at %p (at %s): allocation #%llu (%llu bytes at %p) has been "
                     "freed",
                     access_name(wr), n, reinterpret_cast<void*>(a), where_str(at).c_str(),
                     (unsigned long long)r->id, (unsigned long long)(r->hi - r->lo), reinterpret_cast<void*>(r->lo));
            check_fail(msg);
        }
        if (a < r->lo || a + n > r->hi) {
            const long long off = (long long)(a - r->lo);  // negative: before the start
            snprintf(msg, sizeof msg,
                     "memcheck: global %s of %u bytes at %p (at %s) is out of bounds: bytes [%lld, %lld) of "
                     "allocation #%llu, which has %llu bytes (at %p)",
                     access_name(wr), n, reinterpret_cast<void*>(a), where_str(at).c_str(), off, off + (long long)n,
                     (unsigned long long)r->id, (unsigned long long)(r->hi - r->lo), reinterpret_cast<void*>(r->lo));
            check_fail(msg);
        }
        if (aligned_hook && (a & (n - 1))) {
            snprintf(msg, sizeof msg,
                     "memcheck: misaligned global %s of %u bytes at %p (at %s), offset %llu of allocation #%llu: a "
                     "GPU requires %u-byte alignment",
                     access_name(wr), n, reinterpret_cast<void*>(a), where_str(at).c_str(),
                     (unsigned long long)(a - r->lo), (unsigned long long)r->id, n);
            check_fail(msg);
        }
    }
    if (r->freed || a < r->lo || a + n > r->hi) return;
    const size_t off = a - r->lo;
    if (c->bits & CHECK_INIT) {
        if (wr) {
            set_init_bits(*r, off, off + n, true);
        } else {
            const uint8_t* bits = r->init.get();
            for (uint32_t i = 0; i < n; ++i) {
                const size_t k = off + i;
                if (!(__atomic_load_n(&bits[k >> 3], __ATOMIC_RELAXED) & (1u << (k & 7)))) {
                    char where[160];
                    snprintf(where, sizeof where, "global memory: byte %llu of allocation #%llu (%llu bytes)",
                             (unsigned long long)k, (unsigned long long)r->id, (unsigned long long)(r->hi - r->lo));
                    record(c, F_INIT_GLOBAL, at, tid, Where{}, tid, where);
                    break;
                }
            }
        }
    }
    if (c->bits & CHECK_PROFILE) profile_access(c, a, n, 0, kind, at, tid);
}

namespace {

// Every access of kernel code comes here (when the launch has checks).
inline void on_access(WorkerChecks* c, uintptr_t a, uint32_t n, bool wr, uintptr_t pc, bool aligned_hook,
                      int kind) {
    const uint32_t tid = t_chk_thread;
    if (a - c->win_lo < c->win_bytes) {
        shared_access(c, a, n, wr, Where{pc, false}, tid);
        if (c->bits & CHECK_PROFILE) profile_access(c, a, n, 1, kind, Where{pc, false}, tid);
        return;
    }
    if (a < c->L->alloc_min || a >= c->L->alloc_max) return;
    global_access(c, a, n, wr, Where{pc, false}, tid, aligned_hook, kind);
}

}  // namespace

// ------------------------------------------------------------------ runtime events

LaunchChecks* checks_begin(uint32_t bits, const char* kernel, dim3 block, dim3 grid) {
    if (const char* e = getenv("TF_EMU_CHECK")) {
        // "race,mem,init,profile" or "all" (checks only; the profile is asked for explicitly)
        if (strstr(e, "all")) bits |= CHECK_RACE | CHECK_MEM | CHECK_INIT;
        if (strstr(e, "race")) bits |= CHECK_RACE;
        if (strstr(e, "mem")) bits |= CHECK_MEM;
        if (strstr(e, "init")) bits |= CHECK_INIT;
        if (strstr(e, "profile")) bits |= CHECK_PROFILE;
    }
    if (!bits) return nullptr;
    // TF_EMU_CHECK_LOG=FILE: one line per checked launch, "<kernel> <bits>" (cargo xtask
    // test checks from it that every kernel family ran under the checks).
    if (const char* log = getenv("TF_EMU_CHECK_LOG")) {
        const int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            char line[256];
            const int n = snprintf(line, sizeof line, "%s %u\n", kernel, bits);
            if (n > 0) (void)!write(fd, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
            close(fd);
        }
    }
    LaunchChecks* L = new LaunchChecks();
    L->bits = bits;
    L->kernel = kernel;
    L->block = block;
    L->grid = grid;
    L->allocs = alloc_launch_enter(&L->alloc_seq);
    if (!L->allocs->empty()) {
        L->alloc_min = L->allocs->front().blo;
        for (const AllocRec& r : *L->allocs) L->alloc_max = std::max(L->alloc_max, r.bhi);
    }
    return L;
}

void checks_free(LaunchChecks* L) {
    if (!L) return;
    const uint64_t seq = L->alloc_seq;
    delete L;
    alloc_launch_exit(seq);
}

uint32_t checks_bits(const LaunchChecks* L) { return L->bits; }

void mark_params_written(const void* params, size_t bytes) {
    if (!params || bytes < sizeof(uintptr_t)) return;
    std::shared_ptr<const AllocTable> t = alloc_snapshot();
    if (t->empty()) return;
    auto scan = [&](const unsigned char* p, size_t n, int depth, auto& self) -> void {
        for (size_t o = 0; o + sizeof(uintptr_t) <= n; o += sizeof(uintptr_t)) {
            uintptr_t v;
            memcpy(&v, p + o, sizeof v);
            const AllocRec* r = alloc_find(*t, v);
            if (!r || r->freed || v < r->lo || v >= r->hi) continue;
            set_init_bits(*r, 0, r->hi - r->lo, true);
            if (depth == 0 && r->hi - r->lo <= 65536)
                self(reinterpret_cast<const unsigned char*>(r->lo), r->hi - r->lo, 1, self);
        }
    };
    scan(static_cast<const unsigned char*>(params), bytes, 0, scan);
}

WorkerChecks* worker_checks_new(char* win, size_t win_bytes) {
    WorkerChecks* c = new (std::nothrow) WorkerChecks();
    if (!c) return nullptr;
    c->win_lo = reinterpret_cast<uintptr_t>(win);
    c->win_bytes = win_bytes;
    void* s = mmap(nullptr, win_bytes * sizeof(Cell), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (s == MAP_FAILED) {
        delete c;
        return nullptr;
    }
    c->shadow = static_cast<Cell*>(s);
    c->pair_last.assign(32 * 32 * 32, 0);
    c->warps.resize(32);
    return c;
}

void checks_attach(WorkerChecks* c, LaunchChecks* L) {
    c->L = L;
    c->bits = L->bits;
    t_wc = c;
}

void checks_detach(WorkerChecks* c) {
    t_wc = nullptr;
    c->L = nullptr;
}

void checks_block_begin(WorkerChecks* c, uint3 block_idx, uint32_t nthreads, const char* lo, const char* hi) {
    c->block = block_idx;
    c->nthreads = nthreads;
    c->epoch++;
    c->serial++;
    c->smem_lo = reinterpret_cast<uintptr_t>(lo);
    c->dyn_lo = c->smem_lo;
    c->smem_hi = reinterpret_cast<uintptr_t>(hi);
    if (c->bits & CHECK_PROFILE) profile_block_begin(c);
}

void checks_smem_bounds(WorkerChecks* c, const char* lo, const char* hi) {
    c->smem_lo = reinterpret_cast<uintptr_t>(lo);
    c->smem_hi = reinterpret_cast<uintptr_t>(hi);
}

void checks_block_end(WorkerChecks* c) {
    if (c->bits & CHECK_PROFILE) profile_block_end(c);
}

void checks_barrier(WorkerChecks* c) {
    c->epoch++;
    if (c->bits & CHECK_PROFILE) {
        c->counts.barriers++;
        for (uint32_t w = 0; w < (c->nthreads + 31) / 32; ++w) profile_flush_warp(c, w);
    }
}

void checks_collective(WorkerChecks* c, uint32_t warp, uint32_t mask, uint32_t live, int op) {
    const uint32_t n = ++c->wcount[warp];
    const bool all = (mask & live) == live;
    if (all) {
        c->full_last[warp] = n;
    } else {
        for (uint32_t m = mask; m; m &= m - 1) {
            const uint32_t a = (uint32_t)__builtin_ctz(m);
            for (uint32_t k = mask; k; k &= k - 1) c->pair_last[(warp * 32 + a) * 32 + (uint32_t)__builtin_ctz(k)] = n;
        }
    }
    if (c->bits & CHECK_PROFILE) {
        if (op == OP_MMA_F16 || op == OP_MMA_BF16) c->counts.mma++;
        else if (op >= OP_LDSM_X1 && op <= OP_LDSM_X4_T) c->counts.ldmatrix++;
        else if (op >= OP_SHFL_IDX && op <= OP_SHFL_XOR) c->counts.shuffles++;
        else c->counts.other_collectives++;
        if (all) profile_flush_warp(c, warp);
    }
}

void checks_ldmatrix(WorkerChecks* c, uint32_t warp, const void* const* rows, int nmat, const char* file, int line) {
    const Where at{reinterpret_cast<uintptr_t>(intern_site(c, file, line)), true};
    for (int i = 0; i < 8 * nmat; ++i)
        shared_access(c, reinterpret_cast<uintptr_t>(rows[i]), 16, false, at, warp * 32 + (uint32_t)i);
    if (c->bits & CHECK_PROFILE) profile_ldmatrix(c, rows, nmat, at);
}

void checks_cp_issue(WorkerChecks* c, void* dst, const void* src, int size, int src_bytes, const char* file,
                     int line) {
    const uint32_t tid = t_chk_thread;
    const Where at{reinterpret_cast<uintptr_t>(intern_site(c, file, line)), true};
    const uintptr_t s = reinterpret_cast<uintptr_t>(src);
    if (src_bytes > 0 && s >= c->L->alloc_min && s < c->L->alloc_max)
        global_access(c, s, (uint32_t)src_bytes, false, at, tid, false, P_CP_READ);
    const uintptr_t d = reinterpret_cast<uintptr_t>(dst);
    if (c->bits & CHECK_RACE) {
        shared_access(c, d, (uint32_t)size, true, at, tid);  // hazards against earlier accesses
        Cell* cells = c->shadow + (d - c->win_lo);
        for (int i = 0; i < size; ++i) cells[i].inflight = 1;
    }
    if (c->bits & CHECK_PROFILE) profile_access(c, d, (uint32_t)size, 1, P_CP_WRITE, at, tid);
}

void checks_cp_retire(WorkerChecks* c, void* dst, int size, const char*, int) {
    Cell* cells = c->shadow + (reinterpret_cast<uintptr_t>(dst) - c->win_lo);
    const uint32_t tid = t_chk_thread;
    for (int i = 0; i < size; ++i) {
        Cell& x = cells[i];
        if (c->bits & CHECK_RACE) {
            if (!x.inflight) continue;  // overwritten meanwhile (reported then)
            x.inflight = 0;
            x.w.epoch = c->epoch;  // the copy lands now, as the issuing thread's write
            x.w.wsync = c->wcount[tid >> 5];
            x.w.tid = (uint16_t)tid;
            x.r1.epoch = x.r2.epoch = 0;
        }
        x.init = c->serial;
    }
}

// ------------------------------------------------------------------ the report

namespace {

const char* kind_text(int k) {
    switch (k) {
        case F_RAW: return "racecheck: read-after-write hazard";
        case F_WAR: return "racecheck: write-after-read hazard";
        case F_WAW: return "racecheck: write-after-write hazard";
        case F_CP_READ: return "racecheck: cp.async destination read before the cp.async.wait_group that retires it";
        case F_CP_OVERWRITE: return "racecheck: cp.async destination overwritten while the copy is in flight";
        case F_INIT_SHARED: return "initcheck: read of shared memory not written in this block";
        case F_INIT_GLOBAL: return "initcheck: read of global memory never written since allocation";
        default: return "?";
    }
}

}  // namespace

namespace {
// The kind and the source locations of a finding's text (what merging compares).
std::string sites_of(const std::string& t) {
    std::string k = t.substr(0, t.find(','));
    for (size_t p = t.find(" at "); p != std::string::npos; p = t.find(" at ", p + 4)) {
        size_t e = t.find_first_of(";,", p + 4);
        k += '|' + t.substr(p + 4, (e == std::string::npos ? t.size() : e) - p - 4);
    }
    return k;
}
}  // namespace

std::string checks_end(LaunchChecks* L) {
    if (L->bits & CHECK_PROFILE) profile_store_report(L);
    if (L->findings.empty()) return "";
    std::vector<const Finding*> fs;
    for (const auto& kv : L->findings) fs.push_back(&kv.second);
    std::sort(fs.begin(), fs.end(), [](const Finding* a, const Finding* b) {
        return a->kind != b->kind ? a->kind < b->kind : a->count > b->count;
    });
    // One line per finding (counts apart), symbolised together; findings whose code
    // addresses differ but name the same source lines are merged.
    std::string joined;
    std::vector<uint64_t> counts;
    for (const Finding* f : fs) {
        const uint3 a = tid3(L, f->tid_cur), b = tid3(L, f->tid_prev);
        char line[1024];
        if (f->kind == F_INIT_SHARED || f->kind == F_INIT_GLOBAL) {
            snprintf(line, sizeof line, "%s, %s: thread (%u,%u,%u) of block (%u,%u,%u) reads it at %s",
                     kind_text(f->kind), f->where.c_str(), a.x, a.y, a.z, f->block.x, f->block.y, f->block.z,
                     where_str(f->cur).c_str());
        } else {
            const bool cur_w = f->kind == F_WAR || f->kind == F_WAW || f->kind == F_CP_OVERWRITE;
            const bool prev_w = f->kind != F_WAR;
            const bool cp = f->kind == F_CP_READ || f->kind == F_CP_OVERWRITE;
            const char* prev_what = cp ? "issued the cp.async" : prev_w ? "wrote it" : "read it";
            snprintf(line, sizeof line,
                     "%s, %s, block (%u,%u,%u): thread (%u,%u,%u) %s at %s; thread (%u,%u,%u) %s at %s, with no %s "
                     "between",
                     kind_text(f->kind), f->where.c_str(), f->block.x, f->block.y, f->block.z, a.x, a.y, a.z,
                     cur_w ? "writes it" : "reads it", where_str(f->cur).c_str(), b.x, b.y, b.z, prev_what,
                     where_str(f->prev).c_str(),
                     cp ? "cp.async.wait_group" : "__syncthreads (or __syncwarp within a warp)");
        }
        joined += line;
        joined += '\x1f';
        counts.push_back(f->count);
    }
    joined = symbolize_markers(joined);
    std::vector<std::pair<std::string, uint64_t>> merged;
    size_t p = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
        size_t e = joined.find('\x1f', p);
        if (e == std::string::npos) e = joined.size();
        std::string text = joined.substr(p, e - p);
        p = e + 1;
        // Merge on everything but the memory byte and the threads named.
        auto it = std::find_if(merged.begin(), merged.end(), [&](const std::pair<std::string, uint64_t>& m) {
            return sites_of(m.first) == sites_of(text);
        });
        if (it != merged.end()) it->second += counts[i];
        else merged.emplace_back(std::move(text), counts[i]);
    }
    char head[256];
    snprintf(head, sizeof head, "kernel `%s`: the emulator's checks found %llu problem(s) at %zu source location(s)%s:",
             L->kernel, (unsigned long long)L->total, merged.size(),
             L->findings.size() >= kMaxFindings ? " (the first 64 distinct kept)" : "");
    std::string s = head;
    int i = 0;
    for (const auto& m : merged) {
        char num[64];
        snprintf(num, sizeof num, "\n  %d. ", ++i);
        s += num + m.first + " (" + std::to_string(m.second) + " time(s))";
    }
    return s;
}

// ------------------------------------------------------------------ source lines

namespace {

// Runs `argv` and returns its standard output (at most 1 MiB, 20 s), "" on failure.
std::string run_capture(const std::vector<std::string>& args) {
    int fd[2];
    if (pipe(fd) != 0) return "";
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        return "";
    }
    if (pid == 0) {
        dup2(fd[1], 1);
        const int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) dup2(nul, 2);
        close(fd[0]);
        execvp(argv[0], argv.data());
        _exit(127);
    }
    close(fd[1]);
    std::string out;
    char buf[4096];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        const long ms = 20000 - ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
        if (ms <= 0) break;
        struct pollfd p{fd[0], POLLIN, 0};
        const int r = poll(&p, 1, (int)ms);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        const ssize_t n = read(fd[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (out.size() < (1u << 20)) out.append(buf, (size_t)n);
    }
    close(fd[0]);
    kill(pid, SIGKILL);  // no-op if it has exited
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return out;
}

// file:line of code addresses (one object, offsets into it) via addr2line; "" where unknown.
std::vector<std::string> addr2line(const std::string& object, const std::vector<uintptr_t>& offs) {
    std::vector<std::string> args{"addr2line", "-e", object};
    for (uintptr_t o : offs) {
        char b[32];
        snprintf(b, sizeof b, "0x%llx", (unsigned long long)o);
        args.push_back(b);
    }
    const std::string out = run_capture(args);
    std::vector<std::string> res;
    size_t p = 0;
    while (p < out.size() && res.size() < offs.size()) {
        size_t e = out.find('\n', p);
        if (e == std::string::npos) e = out.size();
        std::string l = out.substr(p, e - p);
        p = e + 1;
        const size_t disc = l.find(" (discriminator");
        if (disc != std::string::npos) l.resize(disc);
        if (l.rfind("??", 0) == 0 || l.find(":?") != std::string::npos || l.empty()) l.clear();
        const size_t k = l.find("kernels/");
        if (k != std::string::npos) l = l.substr(k);
        res.push_back(l);
    }
    res.resize(offs.size());
    return res;
}

}  // namespace

std::string symbolize_markers(const std::string& s) {
    std::vector<uintptr_t> pcs;
    for (size_t p = s.find("{pc:"); p != std::string::npos; p = s.find("{pc:", p + 1))
        pcs.push_back((uintptr_t)strtoull(s.c_str() + p + 4, nullptr, 16));
    if (pcs.empty()) return s;
    std::sort(pcs.begin(), pcs.end());
    pcs.erase(std::unique(pcs.begin(), pcs.end()), pcs.end());
    // Code addresses already looked up (addr2line reads the binary's line tables, a
    // large part of a second per run): only new ones are asked for.
    static std::mutex cache_mu;
    static std::map<uintptr_t, std::string>* cache = new std::map<uintptr_t, std::string>();
    std::map<uintptr_t, std::string> loc;
    {
        std::lock_guard<std::mutex> g(cache_mu);
        std::vector<uintptr_t> fresh;
        for (uintptr_t pc : pcs) {
            auto it = cache->find(pc);
            if (it != cache->end()) loc[pc] = it->second;
            else fresh.push_back(pc);
        }
        pcs.swap(fresh);
    }
    // Group by object; the return address minus one lies in the calling instruction.
    std::map<std::string, std::vector<uintptr_t>> by_obj;
    std::map<uintptr_t, std::string> names;
    std::map<uintptr_t, std::pair<std::string, uintptr_t>> obj_of;
    for (uintptr_t pc : pcs) {
        Dl_info di;
        memset(&di, 0, sizeof di);
        std::string obj = "/proc/self/exe";
        uintptr_t base = 0;
        if (dladdr(reinterpret_cast<void*>(pc), &di) && di.dli_fbase) {
            base = reinterpret_cast<uintptr_t>(di.dli_fbase);
            if (di.dli_fname && strchr(di.dli_fname, '/') && access(di.dli_fname, R_OK) == 0) obj = di.dli_fname;
            if (di.dli_sname) {
                char b[320];
                snprintf(b, sizeof b, "%s+0x%llx", di.dli_sname,
                         (unsigned long long)(pc - reinterpret_cast<uintptr_t>(di.dli_saddr)));
                names[pc] = b;
            }
        }
        obj_of[pc] = {obj, base};
        by_obj[obj].push_back(pc);
    }
    for (auto& kv : by_obj) {
        std::vector<uintptr_t> offs;
        for (uintptr_t pc : kv.second) offs.push_back(pc - 1 - obj_of[pc].second);
        std::vector<std::string> r = addr2line(kv.first, offs);
        std::vector<uintptr_t> retry, retry_pc;  // a non-PIE executable: absolute addresses
        for (size_t i = 0; i < r.size(); ++i) {
            if (!r[i].empty()) loc[kv.second[i]] = r[i];
            else {
                retry.push_back(kv.second[i] - 1);
                retry_pc.push_back(kv.second[i]);
            }
        }
        if (!retry.empty()) {
            std::vector<std::string> r2 = addr2line(kv.first, retry);
            for (size_t i = 0; i < r2.size(); ++i)
                if (!r2[i].empty()) loc[retry_pc[i]] = r2[i];
        }
    }
    {
        std::lock_guard<std::mutex> g(cache_mu);
        for (uintptr_t pc : pcs) {
            auto it = loc.find(pc);
            if (it != loc.end() && !it->second.empty()) (*cache)[pc] = it->second;
        }
    }
    std::string out;
    size_t p = 0;
    for (size_t q = s.find("{pc:"); q != std::string::npos; q = s.find("{pc:", p)) {
        out.append(s, p, q - p);
        const size_t e = s.find('}', q);
        if (e == std::string::npos) {
            p = q;
            break;
        }
        const uintptr_t pc = (uintptr_t)strtoull(s.c_str() + q + 4, nullptr, 16);
        auto it = loc.find(pc);
        if (it != loc.end() && !it->second.empty()) out += it->second;
        else {
            char b[48];
            snprintf(b, sizeof b, "pc %p", reinterpret_cast<void*>(pc));
            out += b;
            auto n = names.find(pc);
            if (n != names.end()) out += " (" + n->second + "; build with debug line info for the source line)";
        }
        p = e + 1;
    }
    out.append(s, p, std::string::npos);
    return out;
}

}  // namespace tf_emu

// ------------------------------------------------------------------ the hooks
// Called by kernel code compiled with -fsanitize=thread. They must stay cheap when no
// check is on: one thread-local load and a branch.

using tf_emu::P_ATOMIC;
using tf_emu::P_LOAD;
using tf_emu::P_STORE;
using tf_emu::t_wc;

#define TF_RA() reinterpret_cast<uintptr_t>(__builtin_return_address(0))
#define TF_HOOK(NAME, N, WR, ALIGNED)                                                               \
    extern "C" void NAME(void* a) {                                                                 \
        if (__builtin_expect(t_wc != nullptr, 0))                                                   \
            tf_emu::on_access(t_wc, reinterpret_cast<uintptr_t>(a), N, WR, TF_RA(), ALIGNED,        \
                              WR ? P_STORE : P_LOAD);                                               \
    }
TF_HOOK(__tsan_read1, 1, false, true)
TF_HOOK(__tsan_read2, 2, false, true)
TF_HOOK(__tsan_read4, 4, false, true)
TF_HOOK(__tsan_read8, 8, false, true)
TF_HOOK(__tsan_read16, 16, false, true)
TF_HOOK(__tsan_write1, 1, true, true)
TF_HOOK(__tsan_write2, 2, true, true)
TF_HOOK(__tsan_write4, 4, true, true)
TF_HOOK(__tsan_write8, 8, true, true)
TF_HOOK(__tsan_write16, 16, true, true)
TF_HOOK(__tsan_unaligned_read2, 2, false, false)
TF_HOOK(__tsan_unaligned_read4, 4, false, false)
TF_HOOK(__tsan_unaligned_read8, 8, false, false)
TF_HOOK(__tsan_unaligned_read16, 16, false, false)
TF_HOOK(__tsan_unaligned_write2, 2, true, false)
TF_HOOK(__tsan_unaligned_write4, 4, true, false)
TF_HOOK(__tsan_unaligned_write8, 8, true, false)
TF_HOOK(__tsan_unaligned_write16, 16, true, false)
TF_HOOK(__tsan_volatile_read1, 1, false, true)
TF_HOOK(__tsan_volatile_read2, 2, false, true)
TF_HOOK(__tsan_volatile_read4, 4, false, true)
TF_HOOK(__tsan_volatile_read8, 8, false, true)
TF_HOOK(__tsan_volatile_read16, 16, false, true)
TF_HOOK(__tsan_volatile_write1, 1, true, true)
TF_HOOK(__tsan_volatile_write2, 2, true, true)
TF_HOOK(__tsan_volatile_write4, 4, true, true)
TF_HOOK(__tsan_volatile_write8, 8, true, true)
TF_HOOK(__tsan_volatile_write16, 16, true, true)
#undef TF_HOOK

// memcpy/memset expansions: one access per 16-byte piece.
static void tf_range(void* a, size_t n, bool wr, uintptr_t pc) {
    if (__builtin_expect(t_wc == nullptr, 1)) return;
    uintptr_t p = reinterpret_cast<uintptr_t>(a);
    for (size_t done = 0; done < n;) {
        const uint32_t k = (uint32_t)(n - done < 16 ? n - done : 16);
        tf_emu::on_access(t_wc, p + done, k, wr, pc, false, wr ? P_STORE : P_LOAD);
        done += k;
    }
}
extern "C" void __tsan_read_range(void* a, size_t n) { tf_range(a, n, false, TF_RA()); }
extern "C" void __tsan_write_range(void* a, size_t n) { tf_range(a, n, true, TF_RA()); }

// -fsanitize=alignment: a typed access through a pointer not aligned for its type
// (a 16-byte vector at an address that is not a multiple of 16) faults on a GPU, even
// where the CPU accepts it or the compiler split it. The layout is UBSan's.
namespace {
struct UbsanLoc {
    const char* file;
    uint32_t line, column;
};
struct UbsanType {
    uint16_t kind, info;
    char name[1];
};
struct UbsanMismatch {
    UbsanLoc loc;
    const UbsanType* type;
    unsigned char log_alignment;
    unsigned char check_kind;
};
}  // namespace

extern "C" void __ubsan_handle_type_mismatch_v1(void* data, uintptr_t ptr) {
    tf_emu::WorkerChecks* c = t_wc;
    if (!c || !(c->bits & tf_emu::CHECK_MEM) || !data || !ptr) return;
    const UbsanMismatch* d = static_cast<const UbsanMismatch*>(data);
    const uintptr_t align = (uintptr_t)1 << (d->log_alignment & 31);
    if (!(ptr & (align - 1))) return;
    const char* f = d->loc.file ? d->loc.file : "?";
    const char* k = strstr(f, "kernels/");
    char msg[512];
    snprintf(msg, sizeof msg,
             "memcheck: misaligned access of %s at %p (at %s:%u): its type needs %llu-byte alignment, which a GPU "
             "enforces",
             d->type ? d->type->name : "?", reinterpret_cast<void*>(ptr), k ? k : f, d->loc.line,
             (unsigned long long)align);
    tf_emu::check_fail(msg);
}
extern "C" void __ubsan_handle_type_mismatch_v1_abort(void* data, uintptr_t ptr) {
    __ubsan_handle_type_mismatch_v1(data, ptr);
}

extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_read(void**) {}
extern "C" void __tsan_vptr_update(void**, void*) {}

// Atomics: performed sequentially consistent (the memory order argument is ignored),
// checked by memcheck (bounds) and counted as initialising writes.
#define TF_ATOMIC_CHECK(a, N)                                                                        \
    if (__builtin_expect(t_wc != nullptr, 0))                                                         \
    tf_emu::on_atomic(t_wc, reinterpret_cast<uintptr_t>(a), N, TF_RA())

namespace tf_emu {
static void on_atomic(WorkerChecks* c, uintptr_t a, uint32_t n, uintptr_t pc) {
    if (a - c->win_lo < c->win_bytes) {
        const uint32_t bits = c->bits;
        c->bits &= ~(uint32_t)CHECK_RACE;  // atomics do not race with each other
        shared_access(c, a, n, true, Where{pc, false}, t_chk_thread);
        c->bits = bits;
        return;
    }
    if (a < c->L->alloc_min || a >= c->L->alloc_max) return;
    global_access(c, a, n, true, Where{pc, false}, t_chk_thread, true, P_ATOMIC);
}
}  // namespace tf_emu

#define TF_ATOMICS(BITS, T)                                                                                  \
    extern "C" T __tsan_atomic##BITS##_load(const volatile T* a, int) {                                     \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                         \
    }                                                                                                        \
    extern "C" void __tsan_atomic##BITS##_store(volatile T* a, T v, int) {                                  \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                            \
    }                                                                                                        \
    extern "C" T __tsan_atomic##BITS##_exchange(volatile T* a, T v, int) {                                  \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                  \
    }                                                                                                        \
    extern "C" T __tsan_atomic##BITS##_fetch_add(volatile T* a, T v, int) {                                 \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                   \
    }                                                                                                        \
    extern "C" T __tsan_atomic##BITS##_fetch_sub(volatile T* a, T v, int) {                                 \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                   \
    }                                                                                                        \
    extern "C" T __tsan_atomic##BITS##_fetch_and(volatile T* a, T v, int) {                                 \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                   \
    }                                                                                                        \
    extern "C" T __tsan_atomic##BITS##_fetch_or(volatile T* a, T v, int) {                                  \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                    \
    }                                                                                                        \
    extern "C" T __tsan_atomic##BITS##_fetch_xor(volatile T* a, T v, int) {                                 \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                   \
    }                                                                                                        \
    extern "C" T __tsan_atomic##BITS##_fetch_nand(volatile T* a, T v, int) {                                \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                  \
    }                                                                                                        \
    extern "C" int __tsan_atomic##BITS##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {      \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);              \
    }                                                                                                        \
    extern "C" int __tsan_atomic##BITS##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {        \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);               \
    }                                                                                                        \
    extern "C" T __tsan_atomic##BITS##_compare_exchange_val(volatile T* a, T c, T v, int, int) {            \
        TF_ATOMIC_CHECK(a, sizeof(T));                                                                       \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                    \
        return c;                                                                                            \
    }
TF_ATOMICS(8, uint8_t)
TF_ATOMICS(16, uint16_t)
TF_ATOMICS(32, uint32_t)
TF_ATOMICS(64, uint64_t)
#undef TF_ATOMICS
#undef TF_ATOMIC_CHECK

extern "C" void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
