//! Devices: a CUDA GPU (through cudarc) or the CPU SIMT emulator running the
//! same kernel source. Both backends launch a kernel with the same geometry,
//! computed by each op family's `plan`, and check the same launch limits
//! (threads per block, grid size, shared memory per block).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use tf_kernels::emu;

use crate::error::{Error, Result};

/// Order in which the emulator runs the lanes of a warp (see docs/design.md): tests
/// vary it so that code relying on implicit warp lockstep fails.
pub use tf_kernels::emu::LaneOrder;

/// Options of the emulator backend.
#[derive(Debug, Clone, Copy)]
pub struct EmuOptions {
    /// Lane order between warp rendezvous.
    pub lane_order: LaneOrder,
    /// Seed of the shuffled order; each launch uses `seed + launch index`.
    pub seed: u64,
    /// Worker OS threads running blocks; 0 = one per core.
    pub os_threads: u32,
    /// The emulator's memory checks on every launch (racecheck, memcheck, initcheck;
    /// off by default: they slow the emulator down). A finding fails the op with
    /// [`Error::Emulator`] naming both source lines.
    pub checks: Checks,
    /// Streaming multiprocessors the emulator reports ([`Device::sm_count`]), which
    /// only the launch geometry depends on (grid splits, tile choices); 0 = 132, an
    /// H100-class GPU. Lets a test run the geometry another GPU would get.
    pub sm_count: u32,
}

/// The emulator's memory checks (see [`EmuOptions::checks`]).
pub use tf_kernels::emu::Checks;
/// The emulator's memory profile of one launch (see [`Device::take_profiles`]).
pub use tf_kernels::emu::{Profile, ProfileLine};

impl Default for EmuOptions {
    fn default() -> Self {
        EmuOptions {
            lane_order: LaneOrder::Shuffled,
            seed: 0x7f4a_7c15,
            os_threads: 0,
            checks: Checks::NONE,
            sm_count: 0,
        }
    }
}

/// Shared memory per block the emulator allows (the H100/H200 opt-in limit).
const EMU_MAX_SMEM: u32 = tf_kernels::sys::TF_EMU_MAX_DYNAMIC_SMEM;
/// Streaming multiprocessors the emulator reports unless told otherwise
/// ([`EmuOptions::sm_count`]), so launch geometry matches a GPU of the H100
/// class (plans must not depend on it for correctness).
const EMU_SM_COUNT: u32 = 132;

/// A device the kernels run on: a CUDA GPU ([`Device::cuda`],
/// [`Device::from_stream`]) or the CPU SIMT emulator ([`Device::emulator`]),
/// which runs the same kernel source and the same validation. Cheap to clone
/// (a shared handle); tensors remember their device and ops refuse a mix.
///
/// Identity ([`Device::same`], also `==`): two CUDA handles are the same device
/// when they queue to the same stream of the same CUDA context (clones, or
/// [`Device::from_stream`] given that stream twice), since stream order is what
/// makes their tensors safe to mix. Two emulator handles are the same only when
/// one is a clone of the other: each emulator has its own options (lane order,
/// seed, checks) and profiles, so its tensors stay with it.
///
/// ```
/// use tf_host::{Device, Error};
///
/// # fn main() -> tf_host::Result<()> {
/// let dev = Device::emulator();
/// assert!(!dev.is_cuda() && dev.cuda_stream().is_none());
/// assert_eq!(dev.sm_count(), 132); // H100-like launch geometry
///
/// // Clones are the same device; another emulator is another device.
/// let x = dev.upload(&[1.0f32, 2.0, 3.0], &[3])?;
/// assert!(x.device().same(&dev.clone()));
/// assert_eq!(x.device(), &dev);
/// let other = Device::emulator();
/// assert!(!other.same(&dev) && other != dev);
/// let y = other.zeros::<f32>(&[3])?;
/// let mut z = dev.zeros::<f32>(&[3])?;
/// assert!(matches!(z.copy_from(&y), Err(Error::DeviceMismatch { .. })));
/// z.copy_from(&x)?;
/// assert_eq!(z.to_vec()?, [1.0, 2.0, 3.0]);
///
/// // The emulator refuses to time: its timings say nothing about a GPU.
/// assert!(matches!(dev.time_iters(1, || Ok(())), Err(Error::InvalidArgument { .. })));
///
/// // A GPU when there is one; otherwise a typed error says why not.
/// match Device::cuda(0) {
///     Ok(gpu) => assert!(gpu.is_cuda()),
///     Err(e) => assert!(matches!(
///         e,
///         Error::NoDriver | Error::NoDevice { .. } | Error::KernelsNotBuilt | Error::FatbinFile(_) | Error::Driver(_)
///     )),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Device(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) backend: Backend,
    /// The reused buffer of small argument tables (`Device::with_table`).
    pub(crate) tables: crate::workspace::TableBuf,
    /// Whether launches are being captured (`Device::capture`), and how many so far.
    pub(crate) capturing: AtomicBool,
    pub(crate) captured: AtomicU64,
}

pub(crate) enum Backend {
    Cuda(CudaBackend),
    Emulator(EmuBackend),
}

pub(crate) struct CudaBackend {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    /// Loaded kernels, each with the dynamic shared memory it has been allowed
    /// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`, set once per function
    /// and raised only when a launch needs more: a driver call per launch costs
    /// about as much as a decode-sized kernel).
    functions: Mutex<HashMap<&'static str, (CudaFunction, u32)>>,
    blas: OnceLock<std::result::Result<Arc<CudaBlas>, String>>,
    sm_count: u32,
    max_smem_optin: u32,
    name: String,
    /// Device allocations tf-host made on this device (see [`Device::allocations`]).
    allocations: AtomicU64,
}

pub(crate) struct EmuBackend {
    opts: EmuOptions,
    launches: AtomicU64,
    /// The memory profiles of launches with `checks.profile`, oldest first.
    profiles: Mutex<Vec<Profile>>,
    /// The launches recorded while capturing (`Device::capture`).
    pub(crate) recorded: Mutex<Vec<crate::graph::Recorded>>,
}

/// Grid, block and dynamic shared memory of one launch, as a plan computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory per block, bytes.
    pub smem: u32,
}

/// A kernel's params struct, passed by value. Implemented only for the
/// bindgen-generated `tf_*_params` structs of `tf_kernels.h`.
///
/// # Safety
/// The type must be `repr(C)`, `Copy`, and exactly the struct the kernel takes.
pub(crate) unsafe trait KernelParams: Copy + Send + Sync + 'static {}

/// cudarc's `DeviceRepr` for a params struct (the struct is foreign to both
/// crates, hence the transparent wrapper).
#[repr(transparent)]
#[derive(Clone, Copy)]
struct ParamsArg<P>(P);
// SAFETY: ParamsArg is repr(transparent) over a repr(C) plain-data struct
// (KernelParams' contract), which is what the kernel reads by value.
unsafe impl<P: KernelParams> DeviceRepr for ParamsArg<P> {}

/// One module per CUDA context, shared by every `Device` on that context.
fn module_cache() -> &'static Mutex<HashMap<usize, Weak<CudaModule>>> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Weak<CudaModule>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The kernels' fatbin: the file `TF_FATBIN` names when it is set, else the one
/// embedded in this build. A build made with `TF_FATBIN_EXTERNAL` (the GPU run
/// kit, whose many binaries would otherwise each carry a copy) embeds none and
/// needs `TF_FATBIN`.
fn fatbin_bytes() -> Result<Vec<u8>> {
    fatbin_from(std::env::var_os("TF_FATBIN"))
}

/// [`fatbin_bytes`] with the value of `TF_FATBIN` given.
fn fatbin_from(env: Option<std::ffi::OsString>) -> Result<Vec<u8>> {
    if let Some(path) = env {
        let shown = std::path::Path::new(&path).display().to_string();
        return std::fs::read(&path).map_err(|e| Error::FatbinFile(format!("TF_FATBIN={shown}: {e}")));
    }
    match tf_kernels::FATBIN {
        Some(f) => Ok(f.to_vec()),
        None if tf_kernels::FATBIN_EXTERNAL => Err(Error::FatbinFile(
            "this build keeps the fatbin outside the binary (TF_FATBIN_EXTERNAL): set TF_FATBIN to its \
             tf_kernels.fatbin"
                .into(),
        )),
        None => Err(Error::KernelsNotBuilt),
    }
}

impl Device {
    /// The CUDA GPU `ordinal`, on its primary context and a new stream of its
    /// own (non-blocking: it does not wait for the legacy default stream, nor
    /// the default stream for it). Each call gives another stream, hence
    /// another device in the sense of [`same`](Self::same).
    ///
    /// The device holds its own cudarc context object, with cudarc's event
    /// tracking off: every tf-host launch and copy goes to the one stream, whose
    /// order already sequences them, so no event is recorded or waited on per
    /// launch. The ordering contract that follows: memory allocated through
    /// this context object (tf-host's tensors and whatever the caller allocates
    /// through [`cuda_stream`](Self::cuda_stream)`().context()`) carries no
    /// events, so a caller who uses it on another stream orders the two: the
    /// other stream waits for this one before that use (`other.join(dev_stream)`),
    /// and this one waits for the other after it (`dev_stream.join(other)`)
    /// before tf-host uses or frees the memory again. A program that wants its
    /// own stream or cudarc's tracking uses [`from_stream`](Self::from_stream).
    pub fn cuda(ordinal: usize) -> Result<Device> {
        check_driver()?;
        let count = CudaContext::device_count()?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(Error::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: cudarc's conditions: memory used on several streams must be
        // ordered by its user. This context object is new and private to the
        // device; everything tf-host does with it runs on the one stream made
        // below, and the caller who reaches it through `cuda_stream` takes on
        // the ordering contract documented above.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        Self::from_stream(stream)
    }

    /// A device on a stream the caller owns (a program that already has a CUDA
    /// context): every launch and copy of this `Device` goes to that stream.
    /// Handles made from the same stream are the same device.
    ///
    /// Ordering contract: tf-host queues everything on `stream` and leaves
    /// cudarc's event tracking as the caller set it on the stream's context. A
    /// buffer the caller passes in ([`Tensor::from_cuda_slice`],
    /// [`View::from_cuda`](crate::View::from_cuda)) that is used on this stream
    /// only, or on streams cudarc orders by its events (tracking on, several
    /// streams in the context, the buffer allocated while tracking was on), needs
    /// nothing more. Otherwise the caller orders the streams: this one waits for
    /// the buffer's earlier writes before the op is queued (`stream.join(other)`),
    /// and the other stream waits for this one (`other.join(stream)`, or
    /// [`synchronize`](Self::synchronize)) before it reads, writes or frees what
    /// tf-host used.
    ///
    /// [`Tensor::from_cuda_slice`]: crate::Tensor::from_cuda_slice
    ///
    /// Needs a GPU, hence not run here:
    ///
    /// ```no_run
    /// use tf_host::{cudarc::driver::CudaContext, Device};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ctx = CudaContext::new(0)?;
    /// let stream = ctx.new_stream()?;
    /// let a = Device::from_stream(stream.clone())?;
    /// let b = Device::from_stream(stream)?;
    /// assert!(a.same(&b)); // one stream: tensors of a and b mix freely
    /// assert!(!a.same(&Device::from_stream(ctx.new_stream()?)?));
    /// # Ok(()) }
    /// ```
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Device> {
        check_driver()?;
        let ctx = stream.context().clone();
        let key = ctx.cu_ctx() as usize;
        let module = {
            let mut cache = module_cache().lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = ctx.load_module(Ptx::from_binary(fatbin_bytes()?))?;
                    cache.insert(key, Arc::downgrade(&m));
                    m
                }
            }
        };
        let attr = |a| ctx.attribute(a).map(|v| u32::try_from(v).unwrap_or(0));
        let sm_count = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let max_smem_optin = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let name = ctx.name()?;
        Ok(Device(Arc::new(Inner {
            backend: Backend::Cuda(CudaBackend {
                ctx,
                stream,
                module,
                functions: Mutex::new(HashMap::new()),
                blas: OnceLock::new(),
                sm_count,
                max_smem_optin,
                name,
                allocations: AtomicU64::new(0),
            }),
            tables: Default::default(),
            capturing: AtomicBool::new(false),
            captured: AtomicU64::new(0),
        })))
    }

    /// The CPU SIMT emulator with default options (shuffled lane order).
    pub fn emulator() -> Device {
        Self::emulator_with(EmuOptions::default())
    }

    /// The CPU SIMT emulator with the given options.
    pub fn emulator_with(opts: EmuOptions) -> Device {
        Device(Arc::new(Inner {
            backend: Backend::Emulator(EmuBackend {
                opts,
                launches: AtomicU64::new(0),
                profiles: Mutex::new(Vec::new()),
                recorded: Mutex::new(Vec::new()),
            }),
            tables: Default::default(),
            capturing: AtomicBool::new(false),
            captured: AtomicU64::new(0),
        }))
    }

    /// The memory profiles of this device's launches since the last call, oldest
    /// first (one per kernel launch; emulator devices with
    /// [`EmuOptions::checks`]`.profile` only, empty otherwise).
    pub fn take_profiles(&self) -> Vec<Profile> {
        match &self.0.backend {
            Backend::Emulator(e) => std::mem::take(&mut *e.profiles.lock().unwrap_or_else(|p| p.into_inner())),
            Backend::Cuda(_) => Vec::new(),
        }
    }

    /// Device allocations so far, to check that a loop of calls allocates nothing
    /// (read it before and after). On the emulator: every allocation of emulator
    /// device memory in the process (`tf_emu_alloc_count`: tensors and workspaces
    /// of every emulator device, from any thread). On CUDA: the allocations tf-host
    /// made on this device (tensors, workspaces, argument tables; not cuBLAS'
    /// internal ones, nor buffers a caller wraps with `Tensor::from_cuda_slice`).
    ///
    /// ```
    /// # fn main() -> tf_host::Result<()> {
    /// let dev = tf_host::Device::emulator();
    /// let before = dev.allocations();
    /// let _t = dev.zeros::<f32>(&[4])?;
    /// assert!(dev.allocations() > before);
    /// # Ok(()) }
    /// ```
    pub fn allocations(&self) -> u64 {
        match &self.0.backend {
            Backend::Cuda(c) => c.allocations.load(Ordering::Relaxed),
            // SAFETY: reads an atomic counter; no preconditions.
            Backend::Emulator(_) => unsafe { tf_kernels::sys::tf_emu_alloc_count() },
        }
    }

    /// Counts one device allocation tf-host makes on a CUDA device (the emulator
    /// counts its own, in its allocator).
    /// Refused while the device captures a graph.
    pub(crate) fn count_allocation(&self) -> Result<()> {
        self.refuse_in_capture("device allocation")?;
        if let Backend::Cuda(c) = &self.0.backend {
            c.allocations.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether this is a CUDA device (as opposed to the emulator).
    pub fn is_cuda(&self) -> bool {
        matches!(self.0.backend, Backend::Cuda(_))
    }

    /// A human-readable name: the GPU's, or "SIMT emulator".
    pub fn name(&self) -> String {
        match &self.0.backend {
            Backend::Cuda(c) => c.name.clone(),
            Backend::Emulator(_) => "SIMT emulator (CPU)".to_string(),
        }
    }

    /// Streaming multiprocessors (read from the device; a fixed H100-like
    /// number on the emulator).
    pub fn sm_count(&self) -> u32 {
        match &self.0.backend {
            Backend::Cuda(c) => c.sm_count,
            Backend::Emulator(e) if e.opts.sm_count > 0 => e.opts.sm_count,
            Backend::Emulator(_) => EMU_SM_COUNT,
        }
    }

    /// Largest dynamic shared memory a block may opt in to, bytes.
    pub fn max_smem_per_block(&self) -> u32 {
        match &self.0.backend {
            Backend::Cuda(c) => c.max_smem_optin,
            Backend::Emulator(_) => EMU_MAX_SMEM,
        }
    }

    /// The CUDA stream, for interop (None on the emulator). A device made by
    /// [`cuda`](Self::cuda) has event tracking off on this stream's context
    /// object: see the ordering contract there.
    pub fn cuda_stream(&self) -> Option<&Arc<CudaStream>> {
        match &self.0.backend {
            Backend::Cuda(c) => Some(&c.stream),
            Backend::Emulator(_) => None,
        }
    }

    /// Waits for all work queued on this device (a no-op on the emulator,
    /// whose launches are synchronous).
    pub fn synchronize(&self) -> Result<()> {
        self.refuse_in_capture("synchronize")?;
        if let Backend::Cuda(c) = &self.0.backend {
            c.stream.synchronize()?;
        }
        Ok(())
    }

    /// GPU time of `iters` calls of `f`, measured with CUDA events on this
    /// device's stream (the calls are queued back to back; the host waits once
    /// at the end). The emulator refuses: its timings are not performance.
    pub fn time_iters<F: FnMut() -> Result<()>>(&self, iters: u64, mut f: F) -> Result<std::time::Duration> {
        let Backend::Cuda(c) = &self.0.backend else {
            return Err(Error::InvalidArgument {
                op: "time_iters",
                msg: "the emulator has no meaningful timings; benchmark on a CUDA device".into(),
            });
        };
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = c.ctx.new_event(flags)?;
        let end = c.ctx.new_event(flags)?;
        start.record(&c.stream)?;
        for _ in 0..iters {
            f()?;
        }
        end.record(&c.stream)?;
        let ms = start.elapsed_ms(&end)?;
        Ok(std::time::Duration::from_secs_f64(f64::from(ms) / 1e3))
    }

    /// Whether two handles are the same device: for CUDA, the same stream of
    /// the same CUDA context (whatever cudarc objects wrap them); for the
    /// emulator, clones of one handle. Also `==`. (Devices on cudarc's
    /// per-thread default stream compare equal: its handle is one value,
    /// although each thread queues to its own stream through it.)
    pub fn same(&self, other: &Device) -> bool {
        if Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        match (&self.0.backend, &other.0.backend) {
            (Backend::Cuda(a), Backend::Cuda(b)) => *a.stream == *b.stream,
            _ => false,
        }
    }

    /// cuBLAS on this device's stream, created on first use.
    pub(crate) fn blas(&self) -> Result<Option<Arc<CudaBlas>>> {
        let Backend::Cuda(c) = &self.0.backend else {
            return Ok(None);
        };
        let b = c.blas.get_or_init(|| CudaBlas::new(c.stream.clone()).map(Arc::new).map_err(|e| e.to_string()));
        match b {
            Ok(b) => Ok(Some(b.clone())),
            Err(e) => {
                Err(Error::InvalidArgument { op: "cublas", msg: format!("cuBLAS could not be initialised: {e}") })
            }
        }
    }

    /// Checks a geometry against the device's limits (the same limits a GPU
    /// would enforce, so an emulator run fails where a GPU launch would).
    pub(crate) fn check_geometry(&self, op: &'static str, g: &Geometry) -> Result<()> {
        let threads = u64::from(g.block[0]) * u64::from(g.block[1]) * u64::from(g.block[2]);
        if threads == 0 || threads > 1024 {
            return Err(Error::InvalidArgument {
                op,
                msg: format!("block {:?} has {threads} threads; 1..=1024 allowed", g.block),
            });
        }
        if g.grid.contains(&0) || g.grid[1] > 65535 || g.grid[2] > 65535 || g.grid[0] > i32::MAX as u32 {
            return Err(Error::SizeOverflow {
                op,
                msg: format!("grid {:?} outside the CUDA limits (x < 2^31, y and z <= 65535, none 0)", g.grid),
            });
        }
        if g.smem > self.max_smem_per_block() {
            return Err(Error::InvalidArgument {
                op,
                msg: format!(
                    "needs {} bytes of shared memory per block; this device allows {}",
                    g.smem,
                    self.max_smem_per_block()
                ),
            });
        }
        Ok(())
    }

    /// Launches `kernel` with `params` on this device.
    ///
    /// # Safety
    /// Every pointer inside `params` must be valid for the accesses the kernel
    /// makes with the sizes and strides inside `params` (the family's `plan`
    /// checks this), on this device, and stay alive until the launch completes
    /// (the caller holds the borrows; the emulator is synchronous, and CUDA
    /// stream order protects later frees through cudarc's events).
    pub(crate) unsafe fn launch<P: KernelParams>(
        &self,
        op: &'static str,
        kernel: &'static str,
        g: &Geometry,
        params: &P,
    ) -> Result<()> {
        self.check_geometry(op, g)?;
        if self.0.capturing.load(Ordering::Acquire) {
            self.0.captured.fetch_add(1, Ordering::Relaxed);
            if let Backend::Emulator(e) = &self.0.backend {
                let (dev, g, params) = (self.clone(), *g, *params);
                // SAFETY (of the replay): Graph::launch's contract keeps every
                // buffer the params address alive and as the kernel expects.
                let replay: crate::graph::Recorded = Box::new(move || unsafe { dev.emulate(kernel, &g, &params) });
                e.recorded.lock().unwrap_or_else(|p| p.into_inner()).push(replay);
                return Ok(());
            }
        }
        match &self.0.backend {
            Backend::Cuda(c) => {
                let f = c.function(kernel, g.smem)?;
                let cfg = LaunchConfig {
                    grid_dim: (g.grid[0], g.grid[1], g.grid[2]),
                    block_dim: (g.block[0], g.block[1], g.block[2]),
                    shared_mem_bytes: g.smem,
                };
                let arg = ParamsArg(*params);
                let mut b = c.stream.launch_builder(&f);
                b.arg(&arg);
                // SAFETY: the caller guarantees the pointers in `params`; the
                // argument list is exactly the one params struct the kernel takes.
                unsafe { b.launch(cfg) }?;
                Ok(())
            }
            // SAFETY: the caller's guarantee, passed on.
            Backend::Emulator(_) => unsafe { self.emulate(kernel, g, params) },
        }
    }

    /// Runs one launch on the emulator (the launch is synchronous).
    ///
    /// # Safety
    /// As [`launch`](Self::launch).
    unsafe fn emulate<P: KernelParams>(&self, kernel: &'static str, g: &Geometry, params: &P) -> Result<()> {
        match &self.0.backend {
            Backend::Cuda(_) => Err(Error::InvalidArgument { op: "emulate", msg: "not an emulator device".into() }),
            Backend::Emulator(e) => {
                let n = e.launches.fetch_add(1, Ordering::Relaxed);
                let cfg = emu::LaunchConfig {
                    grid: g.grid,
                    block: g.block,
                    dynamic_smem_bytes: g.smem,
                    lane_order: e.opts.lane_order,
                    seed: e.opts.seed.wrapping_add(n),
                    os_threads: e.opts.os_threads,
                    // a warp schedule per block drawn from the seed (round robin
                    // or warp-major): the seed varies per launch
                    warp_order: emu::WarpOrder::Mixed,
                    // the watchdog's limit from TF_EMU_TIMEOUT_S, else its default
                    timeout_ms: 0,
                    checks: e.opts.checks,
                };
                // SAFETY: the caller guarantees the pointers in `params` are host
                // addresses valid for the kernel's accesses (emulator tensors
                // live in host memory).
                let r = unsafe { emu::launch(kernel, &cfg, params) }.map_err(|e| Error::Emulator(e.to_string()));
                if r.is_ok() && e.opts.checks.profile {
                    // The launch ran on this thread, which holds its profile.
                    if let Some(p) = emu::last_profile() {
                        e.profiles.lock().unwrap_or_else(|p| p.into_inner()).push(p);
                    }
                }
                r
            }
        }
    }
}

impl CudaBackend {
    /// `kernel`, loaded once, allowed at least `smem` bytes of dynamic shared
    /// memory (the attribute is set only when `smem` is above the 48 KB default
    /// and above what this function was already allowed).
    fn function(&self, kernel: &'static str, smem: u32) -> Result<CudaFunction> {
        let mut fns = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let (f, allowed) = match fns.get(kernel) {
            Some(entry) => entry.clone(),
            None => {
                let f = self.module.load_function(kernel).map_err(|_| Error::MissingKernel(kernel.to_string()))?;
                (f, 48 * 1024)
            }
        };
        let allowed = if smem > allowed {
            let bytes = i32::try_from(smem).unwrap_or(i32::MAX);
            f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes)?;
            smem
        } else {
            allowed
        };
        fns.insert(kernel, (f.clone(), allowed));
        Ok(f)
    }
}

/// [`Device::same`].
impl PartialEq for Device {
    fn eq(&self, other: &Device) -> bool {
        self.same(other)
    }
}

impl Eq for Device {}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.name())
    }
}

/// cudarc panics when libcuda is absent (with run-time loading), so look for it
/// first, with dlopen, the names cudarc tries. Independent of cudarc's linking
/// mode: with `dynamic-linking` the library is already mapped and dlopen finds it.
fn check_driver() -> Result<()> {
    if driver_library_present() {
        Ok(())
    } else {
        Err(Error::NoDriver)
    }
}

#[cfg(unix)]
fn driver_library_present() -> bool {
    [c"libcuda.so", c"libcuda.so.1"].iter().any(|name| {
        // SAFETY: dlopen with a NUL-terminated name and RTLD_LAZY has no other
        // precondition; a handle it returns is closed again (the library stays
        // mapped while cudarc holds its own handle).
        unsafe {
            let h = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY);
            if h.is_null() {
                false
            } else {
                libc::dlclose(h);
                true
            }
        }
    })
}

#[cfg(not(unix))]
fn driver_library_present() -> bool {
    // SAFETY: only probes whether the dynamic library can be loaded.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_fatbin_names_the_file_to_load() {
        let file = std::env::temp_dir().join(format!("tf_fatbin_test_{}", std::process::id()));
        std::fs::write(&file, b"fatbin bytes").unwrap();
        assert_eq!(fatbin_from(Some(file.clone().into_os_string())).unwrap(), b"fatbin bytes");
        std::fs::remove_file(&file).unwrap();
        let e = fatbin_from(Some(file.clone().into_os_string())).unwrap_err();
        assert!(matches!(&e, Error::FatbinFile(m) if m.contains(&file.display().to_string())), "{e}");
        // unset: the embedded fatbin, or the reason there is none
        match (fatbin_from(None), tf_kernels::FATBIN) {
            (Ok(b), Some(f)) => assert_eq!(b, f),
            (Err(Error::KernelsNotBuilt), None) => assert!(!tf_kernels::FATBIN_EXTERNAL),
            (Err(Error::FatbinFile(_)), None) => assert!(tf_kernels::FATBIN_EXTERNAL),
            (r, f) => panic!("{:?} with an embedded fatbin: {}", r.map(|b| b.len()), f.is_some()),
        }
    }
}
