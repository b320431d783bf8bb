// check.h: the emulator's memory checks (racecheck, memcheck, initcheck) and its
// memory profiler, as the scheduler (runtime.cpp) drives them.
//
// Kernel sources are compiled with gcc's -fsanitize=thread instrumentation, without
// the sanitizer's library: the compiler calls __tsan_read4(addr), __tsan_write16(addr),
// ... before every load and store that may touch memory outside the thread's own
// stack frame, and check.cpp defines those hooks. The runtime reports what kernel
// code does through it (ldmatrix rows, cp.async copies, barriers, warp collectives)
// with the calls below. Everything here is a no-op unless the launch asked for a
// check or a profile (tf_emu_launch_args.checks, or TF_EMU_CHECK).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <string>

#include "tf_emu_api.h"

namespace tf_emu {

// The check bits of a launch (the values of tf_emu_check in tf_kernels.h).
enum CheckBits : uint32_t {
    CHECK_RACE = 1,     // shared-memory hazards between threads with no barrier between
    CHECK_MEM = 2,      // out-of-bounds, freed and misaligned accesses of device allocations
    CHECK_INIT = 4,     // reads of memory never written
    CHECK_PROFILE = 8,  // per-source-line memory requests, sectors, bank conflicts
};

struct LaunchChecks;  // one per launch with checks (check.cpp)
struct WorkerChecks;  // one per worker, kept across launches (check.cpp)

// The worker running kernel code under checks (null otherwise: the hooks return at
// once), and the linear index of the thread it runs.
extern __thread WorkerChecks* t_wc TF_EMU_TLS;
extern __thread uint32_t t_chk_thread TF_EMU_TLS;

// Launch: `bits` from the launch arguments and TF_EMU_CHECK. Null when no check is on.
LaunchChecks* checks_begin(uint32_t bits, const char* kernel, dim3 block, dim3 grid);
// After every worker is done: the findings, as text for the launch's error ("" when
// none). The profile, if any, becomes the launching thread's last profile.
std::string checks_end(LaunchChecks* lc);
void checks_free(LaunchChecks* lc);
uint32_t checks_bits(const LaunchChecks* lc);
// After a launch without initcheck: every allocation a pointer of the params struct
// points into (and, one level down, pointers stored in small allocations it points
// to) counts as written, since the launch may have written it unobserved.
void mark_params_written(const void* params, size_t bytes);

// Workers: the shadow of `win` (the shared-memory window) is allocated on first use.
WorkerChecks* worker_checks_new(char* win, size_t win_bytes);
void checks_attach(WorkerChecks* wc, LaunchChecks* lc);  // sets t_wc for this thread
void checks_detach(WorkerChecks* wc);

// Blocks and scheduling events of the running block.
void checks_block_begin(WorkerChecks* wc, uint3 block_idx, uint32_t nthreads, const char* smem_lo,
                        const char* smem_hi);
void checks_smem_bounds(WorkerChecks* wc, const char* smem_lo, const char* smem_hi);
void checks_block_end(WorkerChecks* wc);
void checks_barrier(WorkerChecks* wc);
// A warp collective completed: `mask` lanes of `warp` synchronised (`live`: the warp's
// lanes that have not exited).
void checks_collective(WorkerChecks* wc, uint32_t warp, uint32_t mask, uint32_t live, int op);
// ldmatrix: rows[i] is the row address lane i gave (8 * nmat lanes).
void checks_ldmatrix(WorkerChecks* wc, uint32_t warp, const void* const* rows, int nmat, const char* file, int line);
// cp.async issued by the running thread, and retired (copied) by it at a wait_group.
void checks_cp_issue(WorkerChecks* wc, void* dst, const void* src, int size, int src_bytes, const char* file,
                     int line);
void checks_cp_retire(WorkerChecks* wc, void* dst, int size, const char* file, int line);

// Ends the block with an error raised by the running thread (runtime.cpp); the
// message may hold {pc:HEX} markers, replaced by source lines after the launch.
[[noreturn]] void check_fail(const char* msg);
// Replaces every {pc:HEX} marker of `s` by the source line of that code address.
std::string symbolize_markers(const std::string& s);

}  // namespace tf_emu

// ------------------------------------------------------------------ device allocations
// (alloc.cpp) Emulator device memory comes from tf_emu_malloc: zeroed, 256-byte
// aligned, with a 256-byte redzone either side, and a shadow bit per byte that says
// whether it was written (initcheck). Launches with checks take a snapshot of the
// table; freed allocations stay in it (marked) until their addresses are reused.

#include <memory>
#include <vector>

namespace tf_emu {

struct AllocRec {
    uintptr_t lo = 0, hi = 0;    // the caller's bytes [lo, hi)
    uintptr_t blo = 0, bhi = 0;  // with the redzones
    uint64_t id = 0;             // allocation number, from 1
    bool freed = false;
    std::shared_ptr<uint8_t[]> init;   // 1 bit per byte: written since allocation
    std::shared_ptr<uint8_t[]> touch;  // 1 bit per byte: touched by the profiled launch
};
using AllocTable = std::vector<AllocRec>;  // sorted by blo, ranges disjoint

// The current table (never modified after publication).
std::shared_ptr<const AllocTable> alloc_snapshot();
// The same for a launch with checks, which holds it until alloc_launch_exit(seq):
// meanwhile no allocation it may know of is returned to the system.
std::shared_ptr<const AllocTable> alloc_launch_enter(uint64_t* seq);
void alloc_launch_exit(uint64_t seq);
// The record whose [blo, bhi) holds `a`, or null.
const AllocRec* alloc_find(const AllocTable& t, uintptr_t a);
// Sets (v) or clears the written bits of bytes [from, to) of `r` (offsets from lo).
void set_init_bits(const AllocRec& r, size_t from, size_t to, bool v);

}  // namespace tf_emu
