//! The CPU SIMT emulator: runs the kernels of `kernels/*.cu` (and the emulator's
//! test kernels of `kernels/test/*.cu`), compiled as C++ by g++, on the CPU.
//!
//! A launch names the kernel and passes its params struct (the `tf_*_params` of
//! [`crate::sys`]) by value, exactly as through cudarc; pointers in the params are
//! host addresses. The emulator checks what a GPU leaves undefined (barriers some
//! threads skip, warp collectives with inconsistent masks, misaligned or
//! out-of-window `ldmatrix`/`cp.async` addresses, reads of shared memory before a
//! write show 0xFF poison) and reports each as an [`EmuError`] naming the kernel,
//! block, thread and source line. See `kernels/emu/README.md`.
//!
//! ```no_run
//! use tf_kernels::emu::{launch, LaunchConfig};
//! # let params = tf_kernels::sys::tf_grow_params::default();
//! let cfg = LaunchConfig::new([4, 1, 1], [256, 1, 1]);
//! // SAFETY: every pointer in `params` is valid for what the kernel does with it.
//! unsafe { launch("grow_rows", &cfg, &params) }.expect("launch");
//! ```

use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt;

use crate::sys;

mod memory;
mod profile;
pub use memory::DeviceBuffer;
pub use profile::{last_profile, Profile, ProfileLine};

/// The emulator's memory checks and its profiler, per launch (`kernels/emu/README.md`).
///
/// Kernel code is compiled with every load and store instrumented; with a check on,
/// the emulator watches each access:
/// - `race`: shared-memory hazards (read/write, write/read, write/write by different
///   threads with no `__syncthreads` between, or no warp collective between two lanes
///   of one warp), and `cp.async` destinations read or overwritten before the
///   `cp.async.wait_group` that retires them;
/// - `memory`: accesses of [`DeviceBuffer`]s (and tf-host's emulator tensors) out of
///   bounds, after free or misaligned, and shared-memory accesses outside the block's
///   shared memory: the launch fails at once, like a fault on a GPU;
/// - `init`: reads of device memory never written, and of shared memory not written in
///   the block;
/// - `profile`: per source line, warp-level requests, sectors and bank-conflict
///   wavefronts, read with [`last_profile`].
///
/// Hazards and uninitialised reads are collected and fail the launch at its end, each
/// with both source lines. `TF_EMU_CHECK=all` (or `race,mem,init,profile`) in the
/// environment turns checks on for every launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checks {
    /// racecheck (shared memory).
    pub race: bool,
    /// memcheck (bounds, use after free, alignment).
    pub memory: bool,
    /// initcheck (reads of never-written memory).
    pub init: bool,
    /// The memory profiler.
    pub profile: bool,
}

impl Checks {
    /// No check (the default).
    pub const NONE: Checks = Checks { race: false, memory: false, init: false, profile: false };
    /// racecheck, memcheck and initcheck.
    pub const ALL: Checks = Checks { race: true, memory: true, init: true, profile: false };
    /// The profiler alone.
    pub const PROFILE: Checks = Checks { race: false, memory: false, init: false, profile: true };

    fn bits(self) -> u32 {
        // The values of `tf_emu_check` in kernels/tf_kernels.h.
        u32::from(self.race) | u32::from(self.memory) << 1 | u32::from(self.init) << 2 | u32::from(self.profile) << 3
    }
}

/// The order in which the lanes of a warp run between rendezvous points.
///
/// Code that relies on implicit warp lockstep (no `__syncwarp` between a write and
/// another lane's read) gives different results under different orders; correct
/// code gives the same results under all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LaneOrder {
    /// Lane 0 first, warp 0 first.
    #[default]
    Forward,
    /// Lane 31 first, the last warp first.
    Reverse,
    /// A permutation drawn from the launch's seed, redrawn at every rendezvous.
    Shuffled,
}

impl LaneOrder {
    fn raw(self) -> i32 {
        // The values of `tf_emu_lane_order` in kernels/tf_kernels.h.
        match self {
            LaneOrder::Forward => 0,
            LaneOrder::Reverse => 1,
            LaneOrder::Shuffled => 2,
        }
    }
}

/// How the warps of a block interleave between `__syncthreads`.
///
/// Code that is missing a `__syncthreads` between one warp's last read of a
/// shared-memory tile and another warp's overwrite of it (a store or a `cp.async`)
/// is a race on a GPU; the overwrite lands before the read only when the writing
/// warp runs ahead, which the warp-major orders do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WarpOrder {
    /// Warps take turns, one rendezvous (warp collective or barrier) each, in the
    /// lane order's warp order (forward: warp 0 first; reverse: last warp first;
    /// shuffled: drawn at every barrier).
    #[default]
    RoundRobin,
    /// Warp-major: warp 0 runs until all its live lanes wait at a `__syncthreads`
    /// or have exited, then warp 1, and so on (after every barrier).
    Ahead,
    /// Warp-major, the last warp first.
    AheadReverse,
    /// Warp-major, the warp order drawn from the seed at every barrier.
    AheadShuffled,
    /// One of the four above per block, drawn from the seed (so varying the seed
    /// varies the warp schedule too).
    Mixed,
}

impl WarpOrder {
    /// Every order, `Mixed` last.
    pub const ALL: [WarpOrder; 5] =
        [WarpOrder::RoundRobin, WarpOrder::Ahead, WarpOrder::AheadReverse, WarpOrder::AheadShuffled, WarpOrder::Mixed];

    fn raw(self) -> i32 {
        // The values of `tf_emu_warp_order` in kernels/tf_kernels.h.
        match self {
            WarpOrder::RoundRobin => 0,
            WarpOrder::Ahead => 1,
            WarpOrder::AheadReverse => 2,
            WarpOrder::AheadShuffled => 3,
            WarpOrder::Mixed => 4,
        }
    }
}

/// The geometry and scheduling of one emulator launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    /// gridDim (x, y, z).
    pub grid: [u32; 3],
    /// blockDim (x, y, z): at most 1024 threads.
    pub block: [u32; 3],
    /// Dynamic shared memory per block in bytes (at most 227 KiB).
    pub dynamic_smem_bytes: u32,
    /// The lane order of every warp.
    pub lane_order: LaneOrder,
    /// Seed of the shuffled lane order (and of the shuffled / mixed warp orders).
    pub seed: u64,
    /// Worker OS threads running blocks; 0 = one per core.
    pub os_threads: u32,
    /// How the warps of a block interleave.
    pub warp_order: WarpOrder,
    /// The watchdog's limit in milliseconds: a worker whose threads make no progress
    /// (no barrier, warp collective or exit) for this long stops the launch with an
    /// error naming the kernel and where each thread stands. 0 = `TF_EMU_TIMEOUT_S`
    /// seconds from the environment (0 there turns the watchdog off), else 60 s.
    pub timeout_ms: u32,
    /// Memory checks and the profiler (off by default).
    pub checks: Checks,
}

impl LaunchConfig {
    /// `grid` blocks of `block` threads, no dynamic shared memory, forward lane
    /// order, round-robin warps, one worker per core.
    pub fn new(grid: [u32; 3], block: [u32; 3]) -> Self {
        LaunchConfig {
            grid,
            block,
            dynamic_smem_bytes: 0,
            lane_order: LaneOrder::Forward,
            seed: 0,
            os_threads: 0,
            warp_order: WarpOrder::RoundRobin,
            timeout_ms: 0,
            checks: Checks::NONE,
        }
    }
}

impl Default for LaunchConfig {
    fn default() -> Self {
        LaunchConfig::new([1, 1, 1], [1, 1, 1])
    }
}

/// A launch the emulator refused or a kernel that failed while running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmuError {
    /// `tf_emu_launch`'s code: 1 invalid launch, 2 the kernel failed, 3 internal;
    /// -1 when the launch was not attempted (e.g. a NUL in the kernel name).
    pub code: i32,
    /// What went wrong, naming the kernel, block, thread and source line where known.
    pub message: String,
}

impl fmt::Display for EmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EmuError {}

/// Runs `kernel` to completion on the emulator with `params` passed by value.
///
/// Fails, without running anything, on an unknown kernel, a params size that is
/// not the kernel's, or a configuration a GPU rejects (more than 1024 threads,
/// too much dynamic shared memory, a zero dimension); fails after running on a
/// kernel error (divergent barrier, deadlock, misaligned `ldmatrix`, ...).
///
/// # Safety
///
/// The kernel dereferences the host addresses in `params` as it would device
/// addresses on a GPU: every pointer it reads must be valid for reads, and every
/// pointer it writes valid for writes, of everything the kernel touches for this
/// configuration, for the duration of the call, with no other Rust reference to the
/// written memory alive meanwhile. Several blocks run at once on different OS
/// threads, so memory written by one block and accessed by another must be
/// accessed atomically by the kernel (as on a GPU).
pub unsafe fn launch<P: Copy>(kernel: &str, cfg: &LaunchConfig, params: &P) -> Result<(), EmuError> {
    let name = CString::new(kernel)
        .map_err(|_| EmuError { code: -1, message: format!("kernel name {kernel:?} contains a NUL byte") })?;
    let args = sys::tf_emu_launch_args {
        kernel: name.as_ptr(),
        grid: cfg.grid,
        block: cfg.block,
        dynamic_smem_bytes: cfg.dynamic_smem_bytes,
        params: (params as *const P).cast::<c_void>(),
        params_bytes: std::mem::size_of::<P>(),
        lane_order: cfg.lane_order.raw(),
        seed: cfg.seed,
        os_threads: cfg.os_threads,
        warp_order: cfg.warp_order.raw(),
        timeout_ms: cfg.timeout_ms,
        checks: cfg.checks.bits(),
    };
    // SAFETY: `args` points at live data (the name and params outlive the call) and
    // `err` is a writable buffer of the length passed; what the kernel does with the
    // params is the caller's contract (see # Safety).
    unsafe { launch_raw(&args) }
}

/// [`launch`] from already-built arguments.
///
/// # Safety
///
/// As [`launch`]; in addition `args.kernel` is null or a NUL-terminated string and
/// `args.params` points at `args.params_bytes` readable bytes.
pub unsafe fn launch_raw(args: &sys::tf_emu_launch_args) -> Result<(), EmuError> {
    let mut err = vec![0u8; 65536];
    // SAFETY: per this function's contract; `err` is writable for its length.
    let code = unsafe { sys::tf_emu_launch(args, err.as_mut_ptr().cast::<c_char>(), err.len()) };
    if code == 0 {
        return Ok(());
    }
    let message = CStr::from_bytes_until_nul(&err)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&err).into_owned());
    Err(EmuError { code, message })
}

/// The names of every kernel the emulator can launch, in registry order.
pub fn kernel_names() -> Vec<String> {
    // SAFETY: plain queries of a static table; names are static NUL-terminated strings.
    let n = unsafe { sys::tf_emu_kernel_count() };
    (0..n)
        .filter_map(|i| {
            // SAFETY: i < count, so the pointer is a valid static C string (or null).
            let p = unsafe { sys::tf_emu_kernel_name(i) };
            (!p.is_null()).then(|| {
                // SAFETY: non-null, NUL-terminated, 'static.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            })
        })
        .collect()
}
