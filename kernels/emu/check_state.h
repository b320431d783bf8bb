// check_state.h: the state behind check.h, shared by check.cpp (racecheck, memcheck,
// initcheck, the __tsan_* hooks) and profile.cpp (the memory profiler). Internal to
// the emulator's runtime.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "check.h"

namespace tf_emu {

// A source location the runtime reports explicitly (ldmatrix, cp.async).
struct Site {
    const char* file;
    int line;
};

// Where an access came from: a code address in kernel code (the return address of a
// hook), or a Site (explicit).
struct Where {
    uintptr_t at = 0;
    bool expl = false;
    bool operator<(const Where& o) const { return at != o.at ? at < o.at : expl < o.expl; }
    bool operator==(const Where& o) const { return at == o.at && expl == o.expl; }
};

// One access of a shared-memory byte, as racecheck remembers it.
struct Acc {
    uintptr_t at = 0;
    uint32_t epoch = 0;  // the worker's barrier epoch at the access (0: none)
    uint32_t wsync = 0;  // the warp's collective count at the access
    uint16_t tid = 0;    // linear thread index in the block
    uint8_t expl = 0;
};

// The shadow of one byte of the shared-memory window.
struct Cell {
    Acc w;         // the last write (or the pending cp.async that will write it)
    Acc r1, r2;    // reads since the last write (two, from different warps where possible)
    uint32_t init = 0;     // the block serial that last wrote it (initcheck)
    uint8_t inflight = 0;  // a cp.async destination not yet retired
};

enum FindingKind : int {
    F_RAW,
    F_WAR,
    F_WAW,
    F_CP_READ,
    F_CP_OVERWRITE,
    F_INIT_SHARED,
    F_INIT_GLOBAL,
};

struct Finding {
    int kind = 0;
    Where cur, prev;  // the access that found it, and the earlier one (hazards)
    uint32_t tid_cur = 0, tid_prev = 0;
    uint3 block{0, 0, 0};
    std::string where;  // the memory, described
    uint64_t count = 0;
};

// Per source location of the profile.
struct LineStats {
    int space = 0;  // 0 global, 1 shared
    int kind = 0;   // ProfKind
    uint64_t requests = 0, bytes = 0, sectors = 0, lines = 0, ideal_sectors = 0;
    uint64_t wavefronts = 0, ideal_wavefronts = 0;
};

enum ProfKind : int { P_LOAD, P_STORE, P_ATOMIC, P_LDSM, P_CP_READ, P_CP_WRITE, P_KINDS };

struct ProfileCounts {
    uint64_t mma = 0, ldmatrix = 0, cp_async = 0, barriers = 0, shuffles = 0, other_collectives = 0, warps = 0;
};

struct LaunchChecks {
    uint32_t bits = 0;
    const char* kernel = "";
    dim3 block, grid;
    std::shared_ptr<const AllocTable> allocs;
    uint64_t alloc_seq = 0;  // for alloc_launch_exit
    uintptr_t alloc_min = 0, alloc_max = 0;
    std::mutex mu;
    std::map<std::tuple<int, Where, Where>, Finding> findings;
    uint64_t total = 0;
    // Profile, merged from the workers at block end.
    std::map<std::pair<Where, int>, LineStats> lines;
    ProfileCounts counts;
};

// One lane's access waiting to be grouped into a warp-level request.
struct LaneAccess {
    uintptr_t addr = 0;
    Where at;
    uint32_t size = 0;
    int space = -1;  // -1: none pending
    int kind = 0;
};

struct ReqKey {
    Where at;
    uint32_t occ;
    int kind;
    bool operator==(const ReqKey& o) const { return at == o.at && occ == o.occ && kind == o.kind; }
};
struct ReqKeyHash {
    size_t operator()(const ReqKey& k) const {
        return std::hash<uintptr_t>()(k.at.at * 31 + k.occ * 1000003u + (size_t)k.kind * 7 + k.at.expl);
    }
};
struct LaneReq {
    uintptr_t addr;
    uint32_t size;
    uint32_t lane;
};
struct Req {
    int space = 0;
    std::vector<LaneReq> acc;
};

struct WarpProfile {
    LaneAccess pending[32];
    std::unordered_map<uintptr_t, uint32_t> occ[32];  // occurrences per site since the last flush
    std::unordered_map<ReqKey, Req, ReqKeyHash> reqs;
};

struct WorkerChecks {
    LaunchChecks* L = nullptr;
    uint32_t bits = 0;
    uintptr_t win_lo = 0;
    size_t win_bytes = 0;
    Cell* shadow = nullptr;  // one per byte of the window, mapped on first use
    uintptr_t smem_lo = 0, dyn_lo = 0, smem_hi = 0;
    uint32_t epoch = 0;   // barrier intervals, monotonic across blocks
    uint32_t serial = 0;  // blocks run by this worker, monotonic
    uint3 block{0, 0, 0};
    uint32_t nthreads = 0;
    uint32_t wcount[32] = {};     // completed collectives per warp
    uint32_t full_last[32] = {};  // the last one that all live lanes took part in
    std::vector<uint32_t> pair_last;  // [warp][lane][lane]: the last one both lanes took part in
    std::deque<Site> site_store;
    std::map<std::pair<const char*, int>, const Site*> sites;
    // Profile state of the running block.
    std::vector<WarpProfile> warps;
    std::map<std::pair<Where, int>, LineStats> lines;
    ProfileCounts counts;
};

// check.cpp
// "{pc:HEX}" for a code address (symbolised after the launch), "file:line" for a Site.
std::string where_str(Where w);
const Site* intern_site(WorkerChecks* c, const char* file, int line);
void shared_access(WorkerChecks* c, uintptr_t a, uint32_t n, bool wr, Where at, uint32_t tid);
void global_access(WorkerChecks* c, uintptr_t a, uint32_t n, bool wr, Where at, uint32_t tid, bool aligned_hook,
                   int kind);

// profile.cpp
void profile_access(WorkerChecks* c, uintptr_t a, uint32_t n, int space, int kind, Where at, uint32_t tid);
void profile_flush_warp(WorkerChecks* c, uint32_t warp);
void profile_block_begin(WorkerChecks* c);
void profile_block_end(WorkerChecks* c);
void profile_ldmatrix(WorkerChecks* c, const void* const* rows, int nmat, Where at);
void profile_store_report(LaunchChecks* lc);

}  // namespace tf_emu
