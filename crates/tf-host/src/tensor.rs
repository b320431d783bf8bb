//! Typed device tensors and strided views.
//!
//! A [`Tensor`] owns one contiguous buffer (device memory on CUDA, 256-byte
//! aligned host memory on the emulator) and a row-major shape. Kernels take
//! [`View`]s: a shape, element strides and an offset into a tensor, so a
//! column block or a head of a fused QKV buffer is passed without a copy.

use std::ptr::NonNull;
use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop, ValidAsZeroBits,
};

use crate::device::{Backend, Device};
use crate::dtype::DType;
use crate::error::{checked_product, Error, Result};

/// Host memory of the emulator backend, from the emulator's allocator: zeroed,
/// 256-byte aligned (as cudaMalloc is, so the kernels' 16-byte vector accesses are
/// legal), between redzones the emulator's memcheck recognises.
pub(crate) struct HostBuf<T> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: HostBuf owns its allocation exclusively, like Vec<T>.
unsafe impl<T: Send> Send for HostBuf<T> {}
// SAFETY: shared access only reads, like &[T].
unsafe impl<T: Sync> Sync for HostBuf<T> {}

impl<T: Copy + ValidAsZeroBits> HostBuf<T> {
    pub(crate) fn zeroed(len: usize) -> Result<Self> {
        Self::alloc(len, true)
    }

    /// Zero-filled too, but never written as far as the emulator's initcheck is
    /// concerned: for outputs and workspaces a kernel must write before it reads.
    pub(crate) fn unwritten(len: usize) -> Result<Self> {
        Self::alloc(len, false)
    }

    fn alloc(len: usize, written: bool) -> Result<Self> {
        let elem = std::mem::size_of::<T>();
        let oom = |bytes: usize| Error::OutOfMemory { bytes, what: format!("a host tensor of {len} elements") };
        // More bytes than usize holds can never be allocated: out of memory too.
        let bytes = len.checked_mul(elem).ok_or_else(|| oom(usize::MAX))?;
        // SAFETY: tf_emu_malloc has no preconditions; it returns null or `bytes`
        // zeroed bytes, 256-byte aligned (enough for any T here).
        let raw = unsafe { tf_kernels::sys::tf_emu_malloc(bytes, i32::from(written)) };
        let ptr = NonNull::new(raw.cast::<T>()).ok_or_else(|| oom(bytes))?;
        Ok(HostBuf { ptr, len })
    }

    pub(crate) fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: ptr is valid for len zero-initialised (valid: DType is
        // ValidAsZeroBits) elements, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // What the host writes through the slice counts as written for initcheck.
        // SAFETY: the range is this live emulator allocation.
        unsafe {
            tf_kernels::sys::tf_emu_mark_initialized(self.ptr.as_ptr().cast(), self.len * std::mem::size_of::<T>(), 1)
        };
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for HostBuf<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by tf_emu_malloc in `zeroed`, freed once.
        unsafe { tf_kernels::sys::tf_emu_free(self.ptr.as_ptr().cast()) }
    }
}

pub(crate) enum Buffer<T> {
    Cuda(CudaSlice<T>),
    Host(HostBuf<T>),
}

/// A device tensor of storage type `T` (f32, f16, bf16), contiguous, row-major.
/// Ops take [`View`]s of it (the whole tensor, a strided block, another shape)
/// and write [`ViewMut`]s.
///
/// ```
/// use tf_host::{bf16, Device, Tensor};
///
/// # fn main() -> tf_host::Result<()> {
/// let dev = Device::emulator();
/// let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
/// let t: Tensor<f32> = dev.upload(&data, &[3, 4])?;
/// assert_eq!((t.shape(), t.len()), (&[3, 4][..], 12));
/// assert_eq!(t.to_vec()?, data);
///
/// // Columns 1..3 of every row: a strided view, no copy.
/// let cols = t.strided(1, &[3, 2], &[4, 1])?;
/// assert_eq!(cols.to_vec()?, [1.0, 2.0, 5.0, 6.0, 9.0, 10.0]);
/// // The same elements seen as [2, 6], and a view past the end is an error.
/// assert_eq!(t.reshaped(&[2, 6])?.shape(), &[2, 6]);
/// assert!(t.strided(10, &[2, 2], &[4, 1]).is_err());
///
/// // 16-bit storage from and to f32 (round to nearest even).
/// let h: Tensor<bf16> = dev.upload_f32(&[1.0, 1.0 + 1.0 / 256.0, -2.5], &[3])?;
/// assert_eq!(h.to_f32_vec()?, [1.0, 1.0, -2.5]);
///
/// // Writing into a view of a larger tensor (here through a kernel: linear).
/// let w = dev.upload(&[1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], &[2, 4])?; // picks columns 0 and 1
/// let mut y = dev.zeros::<f32>(&[3, 3])?;
/// tf_host::linear_into(&dev, &t.view(), &w.view(), &mut y.strided_mut(1, &[3, 2], &[3, 1])?)?;
/// assert_eq!(y.to_vec()?, [0.0, 0.0, 1.0, 0.0, 4.0, 5.0, 0.0, 8.0, 9.0]);
/// # Ok(()) }
/// ```
pub struct Tensor<T: DType> {
    dev: Device,
    buf: Buffer<T>,
    shape: Vec<usize>,
}

impl<T: DType> std::fmt::Debug for Tensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor<{}>{:?} on {:?}", T::NAME, self.shape, self.dev)
    }
}

/// A device address held for one launch, and the cudarc guard that orders the
/// stream after earlier writes (dropped after the launch is queued).
pub(crate) struct DevPtr<'a> {
    pub(crate) addr: u64,
    pub(crate) _guard: Option<SyncOnDrop<'a>>,
}

impl Device {
    /// A zero-filled tensor.
    pub fn zeros<T: DType>(&self, shape: &[usize]) -> Result<Tensor<T>> {
        let len = checked_product("zeros", shape)?;
        self.count_allocation()?;
        let buf = match &self.0.backend {
            Backend::Cuda(c) => Buffer::Cuda(c.stream.alloc_zeros::<T>(len).map_err(|e| device_oom::<T>(e, len))?),
            Backend::Emulator(_) => Buffer::Host(HostBuf::zeroed(len)?),
        };
        Ok(Tensor { dev: self.clone(), buf, shape: shape.to_vec() })
    }

    /// An op's output, which the op's kernels write in full: uninitialised on CUDA
    /// (no fill the kernels would overwrite); on the emulator zero-filled but
    /// counted as never written, so that initcheck reports a kernel that reads its
    /// output before writing it.
    pub(crate) fn output<T: DType>(&self, shape: &[usize]) -> Result<Tensor<T>> {
        let len = checked_product("output", shape)?;
        self.count_allocation()?;
        let buf = match &self.0.backend {
            // SAFETY: every bit pattern is a valid f32/f16/bf16, and the callers'
            // kernels write every element before anything reads it.
            Backend::Cuda(c) => Buffer::Cuda(unsafe { c.stream.alloc::<T>(len) }.map_err(|e| device_oom::<T>(e, len))?),
            Backend::Emulator(_) => Buffer::Host(HostBuf::unwritten(len)?),
        };
        Ok(Tensor { dev: self.clone(), buf, shape: shape.to_vec() })
    }

    /// A tensor holding `data` (row-major) with the given shape.
    pub fn upload<T: DType>(&self, data: &[T], shape: &[usize]) -> Result<Tensor<T>> {
        let len = checked_product("upload", shape)?;
        if len != data.len() {
            return Err(Error::Shape {
                op: "upload",
                msg: format!("shape {shape:?} has {len} elements but {} were given", data.len()),
            });
        }
        self.count_allocation()?;
        let buf = match &self.0.backend {
            Backend::Cuda(c) => Buffer::Cuda(c.stream.clone_htod(data).map_err(|e| device_oom::<T>(e, len))?),
            Backend::Emulator(_) => {
                let mut b = HostBuf::zeroed(len)?;
                b.as_mut_slice().copy_from_slice(data);
                Buffer::Host(b)
            }
        };
        Ok(Tensor { dev: self.clone(), buf, shape: shape.to_vec() })
    }

    /// A tensor of storage type `T` holding `data` (row-major) rounded from f32
    /// to the nearest `T` (ties to even; exact for f32).
    pub fn upload_f32<T: DType>(&self, data: &[f32], shape: &[usize]) -> Result<Tensor<T>> {
        let len = checked_product("upload_f32", shape)?;
        if len != data.len() {
            return Err(Error::Shape {
                op: "upload_f32",
                msg: format!("shape {shape:?} has {len} elements but {} were given", data.len()),
            });
        }
        self.upload(&crate::dtype::from_f32_vec::<T>(data), shape)
    }

    /// A tensor filled with NaN: what tests give kernels as output, so an
    /// element the kernel fails to write is seen.
    pub fn poisoned<T: DType>(&self, shape: &[usize]) -> Result<Tensor<T>> {
        let len = checked_product("poisoned", shape)?;
        self.upload(&vec![T::NAN; len], shape)
    }
}

impl<T: DType> Tensor<T> {
    /// Takes a caller's CUDA buffer as a tensor of the given shape, without a
    /// copy (the buffer's elements, row-major). The slice must belong to the
    /// device's CUDA context ([`Error::DeviceMismatch`] otherwise; any cudarc
    /// context object on the same CUDA context will do) and hold exactly as many
    /// elements as the shape ([`Error::Shape`]); an emulator device refuses with
    /// [`Error::NotCuda`]. On error the slice is dropped (freed).
    /// [`into_cuda_slice`](Self::into_cuda_slice) gives it back.
    ///
    /// Ordering: the tensor's kernels and copies go to the device's stream. A
    /// slice that lives on another stream is ordered with it by cudarc's events
    /// only when its context tracks events and has several streams; otherwise
    /// the caller orders the two streams (see [`Device::from_stream`]).
    ///
    /// Needs a GPU, hence not run here:
    ///
    /// ```no_run
    /// use tf_host::{cudarc::driver::CudaContext, Device, Tensor};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let stream = CudaContext::new(0)?.default_stream(); // the program's own stream
    /// let dev = Device::from_stream(stream.clone())?;
    /// let buf = stream.clone_htod(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
    /// let t = Tensor::from_cuda_slice(&dev, buf, &[2, 3])?;
    /// assert_eq!(t.shape(), &[2, 3]);
    /// let buf = t.into_cuda_slice()?; // back to the program, still no copy
    /// assert_eq!(stream.clone_dtoh(&buf)?, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    /// # Ok(()) }
    /// ```
    pub fn from_cuda_slice(dev: &Device, slice: CudaSlice<T>, shape: &[usize]) -> Result<Tensor<T>> {
        const OP: &str = "from_cuda_slice";
        check_cuda_buffer(OP, dev, slice.stream())?;
        check_len(OP, shape, slice.len())?;
        Ok(Tensor { dev: dev.clone(), buf: Buffer::Cuda(slice), shape: shape.to_vec() })
    }

    /// The tensor's CUDA buffer, given to the caller without a copy (the
    /// elements row-major; the shape is dropped). The slice stays on the stream
    /// it was allocated on, normally the device's: work queued there before is
    /// ordered before what the caller queues there after. On the emulator it
    /// fails with [`Error::NotCuda`] and the tensor is dropped (call
    /// [`Device::is_cuda`] first to keep it).
    ///
    /// ```
    /// use tf_host::{Device, Error};
    ///
    /// # fn main() -> tf_host::Result<()> {
    /// let t = Device::emulator().upload(&[1.0f32, 2.0], &[2])?;
    /// assert!(t.as_cuda_slice().is_none());
    /// assert!(matches!(t.into_cuda_slice(), Err(Error::NotCuda { op: "into_cuda_slice" })));
    /// # Ok(()) }
    /// ```
    pub fn into_cuda_slice(self) -> Result<CudaSlice<T>> {
        match self.buf {
            Buffer::Cuda(s) => Ok(s),
            Buffer::Host(_) => Err(Error::NotCuda { op: "into_cuda_slice" }),
        }
    }

    /// The CUDA buffer (None on the emulator).
    pub fn as_cuda_slice(&self) -> Option<&CudaSlice<T>> {
        match &self.buf {
            Buffer::Cuda(s) => Some(s),
            Buffer::Host(_) => None,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.buf {
            Buffer::Cuda(s) => s.len(),
            Buffer::Host(h) => h.len,
        }
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device it lives on.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Copies the contents to the host (waits for queued work).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        self.dev.refuse_in_capture("to_vec")?;
        match (&self.buf, &self.dev.0.backend) {
            (Buffer::Cuda(s), Backend::Cuda(c)) => Ok(c.stream.clone_dtoh(s)?),
            (Buffer::Host(h), _) => Ok(h.as_slice().to_vec()),
            _ => Err(Error::DeviceMismatch { op: "to_vec" }),
        }
    }

    /// The contents as f32 (exact for every storage type), row-major.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(crate::dtype::to_f32_vec(&self.to_vec()?))
    }

    /// Overwrites the contents with `data` (same number of elements).
    pub fn write(&mut self, data: &[T]) -> Result<()> {
        if data.len() != self.len() {
            return Err(Error::Shape {
                op: "write",
                msg: format!("tensor {:?} has {} elements but {} were given", self.shape, self.len(), data.len()),
            });
        }
        self.dev.refuse_in_capture("write")?;
        match (&mut self.buf, &self.dev.0.backend) {
            (Buffer::Cuda(s), Backend::Cuda(c)) => Ok(c.stream.memcpy_htod(data, s)?),
            (Buffer::Host(h), _) => {
                h.as_mut_slice().copy_from_slice(data);
                Ok(())
            }
            _ => Err(Error::DeviceMismatch { op: "write" }),
        }
    }

    /// Copies `src` into this tensor (same element count) on the device: a
    /// device-to-device copy on CUDA (the bandwidth baseline of the benchmarks).
    pub fn copy_from(&mut self, src: &Tensor<T>) -> Result<()> {
        if src.len() != self.len() {
            return Err(Error::Shape {
                op: "copy_from",
                msg: format!("source {:?} and destination {:?} differ in size", src.shape, self.shape),
            });
        }
        if !src.dev.same(&self.dev) {
            return Err(Error::DeviceMismatch { op: "copy_from" });
        }
        self.dev.refuse_in_capture("copy_from")?;
        match (&mut self.buf, &src.buf, &self.dev.0.backend) {
            (Buffer::Cuda(d), Buffer::Cuda(s), Backend::Cuda(c)) => Ok(c.stream.memcpy_dtod(s, d)?),
            (Buffer::Host(d), Buffer::Host(s), _) => {
                d.as_mut_slice().copy_from_slice(s.as_slice());
                Ok(())
            }
            _ => Err(Error::DeviceMismatch { op: "copy_from" }),
        }
    }

    /// The same tensor with another shape of equal element count. It consumes the
    /// tensor, which an error drops: [`reshape_in_place`](Self::reshape_in_place)
    /// keeps it, and [`reshaped`](Self::reshaped) borrows it and returns a view.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor<T>> {
        self.reshape_in_place(shape)?;
        Ok(self)
    }

    /// Gives the tensor another shape of equal element count (no data moves); on
    /// error the tensor keeps its shape.
    pub fn reshape_in_place(&mut self, shape: &[usize]) -> Result<()> {
        self.check_reshape("reshape", shape)?;
        self.shape = shape.to_vec();
        Ok(())
    }

    /// A view of the whole tensor with another shape of equal element count
    /// (row-major, contiguous); the tensor keeps its own shape.
    ///
    /// ```
    /// # fn main() -> tf_host::Result<()> {
    /// let dev = tf_host::Device::emulator();
    /// let qkv = dev.upload(&(0..24).map(|i| i as f32).collect::<Vec<_>>(), &[2, 12])?;
    /// // [t, H·D] as attention's [B, T, H, D]
    /// let q4 = qkv.reshaped(&[1, 2, 3, 4])?;
    /// assert_eq!(q4.shape(), &[1, 2, 3, 4]);
    /// assert_eq!(q4.strides(), &[24, 12, 4, 1]);
    /// assert_eq!(qkv.shape(), &[2, 12]);
    /// assert!(qkv.reshaped(&[5, 5]).is_err());
    /// # Ok(()) }
    /// ```
    pub fn reshaped(&self, shape: &[usize]) -> Result<View<'_, T>> {
        self.check_reshape("reshaped", shape)?;
        Ok(View { src: Src::Tensor(self), offset: 0, shape: shape.to_vec(), strides: contiguous_strides(shape) })
    }

    /// A mutable view of the whole tensor with another shape of equal element
    /// count (see [`reshaped`](Self::reshaped)).
    pub fn reshaped_mut(&mut self, shape: &[usize]) -> Result<ViewMut<'_, T>> {
        self.check_reshape("reshaped_mut", shape)?;
        Ok(ViewMut { src: SrcMut::Tensor(self), offset: 0, shape: shape.to_vec(), strides: contiguous_strides(shape) })
    }

    /// A Shape error unless `shape` has as many elements as the tensor.
    fn check_reshape(&self, op: &'static str, shape: &[usize]) -> Result<()> {
        let len = checked_product(op, shape)?;
        if len != self.len() {
            return Err(Error::Shape {
                op,
                msg: format!("cannot reshape {:?} ({} elements) to {shape:?} ({len} elements)", self.shape, self.len()),
            });
        }
        Ok(())
    }

    /// A view of the whole tensor.
    pub fn view(&self) -> View<'_, T> {
        View { src: Src::Tensor(self), offset: 0, shape: self.shape.clone(), strides: contiguous_strides(&self.shape) }
    }

    /// A mutable view of the whole tensor.
    pub fn view_mut(&mut self) -> ViewMut<'_, T> {
        let shape = self.shape.clone();
        let strides = contiguous_strides(&shape);
        ViewMut { src: SrcMut::Tensor(self), offset: 0, shape, strides }
    }

    /// A strided view: element `[i0, i1, ..]` is at `offset + Σ i_k·strides[k]`.
    /// Errors if any element lies outside the tensor.
    pub fn strided(&self, offset: usize, shape: &[usize], strides: &[usize]) -> Result<View<'_, T>> {
        check_strided(self.len(), offset, shape, strides)?;
        Ok(View { src: Src::Tensor(self), offset, shape: shape.to_vec(), strides: strides.to_vec() })
    }

    /// A mutable strided view (see [`Tensor::strided`]). Overlapping elements
    /// (a zero stride) are rejected for outputs.
    pub fn strided_mut(&mut self, offset: usize, shape: &[usize], strides: &[usize]) -> Result<ViewMut<'_, T>> {
        check_strided_mut(self.len(), offset, shape, strides)?;
        Ok(ViewMut { src: SrcMut::Tensor(self), offset, shape: shape.to_vec(), strides: strides.to_vec() })
    }
}

/// [`check_strided`] for an output: a zero stride on an axis longer than 1
/// (two indices, one element) is refused too.
fn check_strided_mut(len: usize, offset: usize, shape: &[usize], strides: &[usize]) -> Result<()> {
    check_strided(len, offset, shape, strides)?;
    if shape.iter().zip(strides).any(|(&d, &s)| d > 1 && s == 0) {
        return Err(Error::Shape {
            op: "strided_mut",
            msg: format!("zero stride in {strides:?} for shape {shape:?}: outputs may not alias"),
        });
    }
    Ok(())
}

/// A Shape error unless `shape` has exactly `len` elements (a caller's buffer).
fn check_len(op: &'static str, shape: &[usize], len: usize) -> Result<()> {
    let n = checked_product(op, shape)?;
    if n != len {
        return Err(Error::Shape { op, msg: format!("shape {shape:?} has {n} elements but the buffer has {len}") });
    }
    Ok(())
}

/// Whether a caller's CUDA buffer on `stream` may be used by `dev`: `dev` is a
/// CUDA device on the same CUDA context (any cudarc object wrapping it).
fn check_cuda_buffer(op: &'static str, dev: &Device, stream: &Arc<CudaStream>) -> Result<()> {
    match &dev.0.backend {
        Backend::Cuda(c) if **stream.context() == *c.ctx => Ok(()),
        Backend::Cuda(_) => Err(Error::DeviceMismatch { op }),
        Backend::Emulator(_) => Err(Error::NotCuda { op }),
    }
}

/// [`check_cuda_buffer`], and an Alignment error unless the view starts at a
/// 16-byte aligned address. The ops check a view's alignment through its
/// element offset, on the premise that its memory starts as an allocation does
/// (256-byte aligned): 16 bytes is the most any kernel needs, so a caller's
/// buffer aligned to 16 keeps those checks exact.
fn check_cuda_view<T>(op: &'static str, dev: &Device, view: &CudaView<'_, T>) -> Result<()> {
    check_cuda_buffer(op, dev, view.stream())?;
    let Backend::Cuda(c) = &dev.0.backend else {
        return Err(Error::NotCuda { op });
    };
    // The address alone: with event tracking, this orders the device's stream
    // after the buffer's last write a little earlier than the op would.
    let (addr, _guard) = view.slice(..).view_ptr(&c.stream);
    if addr % 16 != 0 {
        return Err(Error::Alignment {
            op,
            msg: format!(
                "the buffer starts at address {addr:#x}, not 16-byte aligned as the kernels assume of an \
                 allocation; pass the allocation (or a sub-view at a multiple of 16 bytes) and the element \
                 offset through from_cuda_strided"
            ),
        });
    }
    Ok(())
}

/// A CUDA allocation failure as [`Error::OutOfMemory`]; other driver errors unchanged.
fn device_oom<T>(e: cudarc::driver::DriverError, len: usize) -> Error {
    if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        Error::OutOfMemory {
            bytes: len.saturating_mul(std::mem::size_of::<T>()),
            what: format!("a device tensor of {len} elements"),
        }
    } else {
        Error::Driver(e)
    }
}

/// Whether distinct indices of a view address distinct elements (axes of length
/// > 1 sorted by stride, each stride at least the span of the previous ones).
pub(crate) fn non_overlapping(shape: &[usize], strides: &[usize]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut axes: Vec<(usize, usize)> =
        shape.iter().zip(strides).filter(|(&n, _)| n > 1).map(|(&n, &s)| (s, n)).collect();
    axes.sort_unstable();
    let mut span = 1usize;
    for (s, n) in axes {
        if s < span {
            return false;
        }
        span = match s.checked_mul(n) {
            Some(x) => x,
            None => return true, // larger than any tensor: nothing further can overlap
        };
    }
    true
}

/// A Shape error if output `what` of `op` addresses one element through two
/// indices (e.g. a row stride smaller than the row): the threads writing it
/// would race.
pub(crate) fn check_disjoint<T: DType>(op: &'static str, what: &str, v: &ViewMut<'_, T>) -> Result<()> {
    if non_overlapping(v.shape(), v.strides()) {
        return Ok(());
    }
    Err(Error::Shape {
        op,
        msg: format!(
            "output {what} overlaps itself: strides {:?} for shape {:?} (a row stride must be at least the row length)",
            v.strides(),
            v.shape()
        ),
    })
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(shape[i + 1]);
    }
    s
}

fn check_strided(len: usize, offset: usize, shape: &[usize], strides: &[usize]) -> Result<()> {
    if shape.len() != strides.len() {
        return Err(Error::Shape {
            op: "strided",
            msg: format!("shape {shape:?} and strides {strides:?} differ in rank"),
        });
    }
    if shape.contains(&0) {
        return if offset <= len {
            Ok(())
        } else {
            Err(Error::Shape { op: "strided", msg: format!("offset {offset} past the tensor's {len} elements") })
        };
    }
    let mut last = offset;
    for (&d, &s) in shape.iter().zip(strides) {
        last = (d - 1).checked_mul(s).and_then(|x| x.checked_add(last)).ok_or_else(|| Error::SizeOverflow {
            op: "strided",
            msg: format!("shape {shape:?} with strides {strides:?} overflows"),
        })?;
    }
    if last >= len {
        return Err(Error::Shape {
            op: "strided",
            msg: format!(
                "view offset {offset}, shape {shape:?}, strides {strides:?} reaches element {last} of a tensor of {len}"
            ),
        });
    }
    Ok(())
}

/// A read-only strided view of a tensor (what kernels take as input), or of a
/// caller's CUDA buffer ([`View::from_cuda`]).
#[derive(Clone)]
pub struct View<'a, T: DType> {
    src: Src<'a, T>,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// A writable strided view of a tensor (what kernels take as output), or of a
/// caller's CUDA buffer ([`ViewMut::from_cuda`]).
pub struct ViewMut<'a, T: DType> {
    src: SrcMut<'a, T>,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// The memory a [`View`] reads.
enum Src<'a, T: DType> {
    Tensor(&'a Tensor<T>),
    /// A caller's buffer, borrowed, and the CUDA device it was checked against.
    Cuda {
        dev: &'a Device,
        view: CudaView<'a, T>,
    },
}

impl<T: DType> Clone for Src<'_, T> {
    fn clone(&self) -> Self {
        match self {
            Src::Tensor(t) => Src::Tensor(t),
            Src::Cuda { dev, view } => Src::Cuda { dev, view: view.slice(..) },
        }
    }
}

/// The memory a [`ViewMut`] writes.
enum SrcMut<'a, T: DType> {
    Tensor(&'a mut Tensor<T>),
    /// A caller's buffer, borrowed mutably, and the CUDA device it was checked against.
    Cuda {
        dev: &'a Device,
        view: CudaViewMut<'a, T>,
    },
}

impl<T: DType> std::fmt::Debug for Src<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Src::Tensor(t) => t.fmt(f),
            Src::Cuda { dev, view } => write!(f, "caller's CUDA buffer of {} elements on {dev:?}", view.len()),
        }
    }
}

impl<T: DType> std::fmt::Debug for SrcMut<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_src().fmt(f)
    }
}

impl<T: DType> Src<'_, T> {
    fn device(&self) -> &Device {
        match self {
            Src::Tensor(t) => &t.dev,
            Src::Cuda { dev, .. } => dev,
        }
    }
}

impl<T: DType> SrcMut<'_, T> {
    fn device(&self) -> &Device {
        match self {
            SrcMut::Tensor(t) => &t.dev,
            SrcMut::Cuda { dev, .. } => dev,
        }
    }

    fn as_src(&self) -> Src<'_, T> {
        match self {
            SrcMut::Tensor(t) => Src::Tensor(t),
            SrcMut::Cuda { dev, view } => Src::Cuda { dev, view: view.as_view() },
        }
    }
}

/// A caller's CUDA memory a [`View`] can read without a copy
/// ([`View::from_cuda`]): `&CudaSlice<T>`, `CudaView<T>` (e.g. from
/// `slice.slice(a..b)`), `&CudaView<T>` or `&CudaViewMut<T>`, borrowed for `'a`.
pub trait IntoCudaView<'a, T> {
    /// The memory as a cudarc view.
    fn into_cuda_view(self) -> CudaView<'a, T>;
}

impl<'a, T> IntoCudaView<'a, T> for &'a CudaSlice<T> {
    fn into_cuda_view(self) -> CudaView<'a, T> {
        self.as_view()
    }
}

impl<'a, T> IntoCudaView<'a, T> for CudaView<'a, T> {
    fn into_cuda_view(self) -> CudaView<'a, T> {
        self
    }
}

impl<'a, T> IntoCudaView<'a, T> for &'a CudaView<'_, T> {
    fn into_cuda_view(self) -> CudaView<'a, T> {
        self.slice(..)
    }
}

impl<'a, T> IntoCudaView<'a, T> for &'a CudaViewMut<'_, T> {
    fn into_cuda_view(self) -> CudaView<'a, T> {
        self.as_view()
    }
}

/// A caller's CUDA memory a [`ViewMut`] can write without a copy
/// ([`ViewMut::from_cuda`]): `&mut CudaSlice<T>`, `CudaViewMut<T>` (e.g. from
/// `slice.slice_mut(a..b)`) or `&mut CudaViewMut<T>`, borrowed mutably for `'a`.
pub trait IntoCudaViewMut<'a, T> {
    /// The memory as a cudarc mutable view.
    fn into_cuda_view_mut(self) -> CudaViewMut<'a, T>;
}

impl<'a, T> IntoCudaViewMut<'a, T> for &'a mut CudaSlice<T> {
    fn into_cuda_view_mut(self) -> CudaViewMut<'a, T> {
        self.as_view_mut()
    }
}

impl<'a, T> IntoCudaViewMut<'a, T> for CudaViewMut<'a, T> {
    fn into_cuda_view_mut(self) -> CudaViewMut<'a, T> {
        self
    }
}

impl<'a, T> IntoCudaViewMut<'a, T> for &'a mut CudaViewMut<'_, T> {
    fn into_cuda_view_mut(self) -> CudaViewMut<'a, T> {
        self.slice_mut(..)
    }
}

macro_rules! view_common {
    ($ty:ident) => {
        impl<'a, T: DType> $ty<'a, T> {
            /// The shape.
            pub fn shape(&self) -> &[usize] {
                &self.shape
            }
            /// Element strides, one per axis.
            pub fn strides(&self) -> &[usize] {
                &self.strides
            }
            /// Element offset into the tensor (or the caller's buffer).
            pub fn offset(&self) -> usize {
                self.offset
            }
            /// The device.
            pub fn device(&self) -> &Device {
                self.src.device()
            }
            /// Whether the last axis is contiguous (stride 1, or length <= 1).
            pub fn inner_contiguous(&self) -> bool {
                match (self.shape.last(), self.strides.last()) {
                    (Some(&d), Some(&s)) => s == 1 || d <= 1,
                    _ => true,
                }
            }
        }
    };
}
view_common!(View);
view_common!(ViewMut);

macro_rules! view_debug {
    ($ty:ident) => {
        impl<T: DType> std::fmt::Debug for $ty<'_, T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("dtype", &T::NAME)
                    .field("shape", &self.shape)
                    .field("strides", &self.strides)
                    .field("offset", &self.offset)
                    .field("memory", &self.src)
                    .finish()
            }
        }
    };
}
view_debug!(View);
view_debug!(ViewMut);

impl<'a, T: DType> View<'a, T> {
    /// A view of a caller's CUDA buffer (`&CudaSlice`, `CudaView`, `&CudaView`
    /// or `&CudaViewMut`: see [`IntoCudaView`]), borrowed for the view's
    /// lifetime, without a copy: its elements row-major with the given shape.
    /// The buffer must hold exactly as many elements as the shape ([`Error::Shape`]), belong to the device's
    /// CUDA context ([`Error::DeviceMismatch`]) and start at a 16-byte aligned
    /// address, as allocations do ([`Error::Alignment`]: for a sub-view at
    /// another element, pass the allocation and the element offset to
    /// [`from_cuda_strided`](Self::from_cuda_strided), where the ops check it as
    /// they check a tensor view's); an emulator device refuses with
    /// [`Error::NotCuda`]. Ops take it like a tensor's view.
    ///
    /// Ordering: the ops run on the device's stream. A buffer on another stream
    /// is ordered with it by cudarc's events only when its context tracks
    /// events and has several streams; otherwise the caller orders the two
    /// streams (see [`Device::from_stream`]).
    ///
    /// Needs a GPU, hence not run here:
    ///
    /// ```no_run
    /// use tf_host::{cudarc::driver::CudaContext, Device, View, ViewMut};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let stream = CudaContext::new(0)?.default_stream(); // the program's own
    /// let dev = Device::from_stream(stream.clone())?;
    /// let x = stream.clone_htod(&[1.0f32, 2.0, 3.0, 4.0])?; // [2, 2]
    /// let w = stream.clone_htod(&[0.0f32, 1.0, 1.0, 0.0])?; // swaps the columns
    /// let mut y = stream.alloc_zeros::<f32>(2 * 2)?;
    /// {
    ///     let xv = View::from_cuda(&dev, &x, &[2, 2])?; // a CudaSlice
    ///     let wv = View::from_cuda(&dev, w.slice(..), &[2, 2])?; // a CudaView
    ///     let mut yv = ViewMut::from_cuda(&dev, &mut y, &[2, 2])?;
    ///     tf_host::linear_into(&dev, &xv, &wv, &mut yv)?; // y = x·wᵀ, in place
    /// }
    /// assert_eq!(stream.clone_dtoh(&y)?, [2.0, 1.0, 4.0, 3.0]);
    /// # Ok(()) }
    /// ```
    pub fn from_cuda(dev: &'a Device, buf: impl IntoCudaView<'a, T>, shape: &[usize]) -> Result<View<'a, T>> {
        const OP: &str = "View::from_cuda";
        let view = buf.into_cuda_view();
        check_cuda_view(OP, dev, &view)?;
        check_len(OP, shape, view.len())?;
        let src = Src::Cuda { dev, view };
        Ok(View { src, offset: 0, shape: shape.to_vec(), strides: contiguous_strides(shape) })
    }

    /// A strided view of a caller's CUDA buffer (see [`from_cuda`](Self::from_cuda)
    /// and [`Tensor::strided`]): element `[i0, i1, ..]` is buffer element
    /// `offset + Σ i_k·strides[k]`; an element past the buffer is an error.
    pub fn from_cuda_strided(
        dev: &'a Device,
        buf: impl IntoCudaView<'a, T>,
        offset: usize,
        shape: &[usize],
        strides: &[usize],
    ) -> Result<View<'a, T>> {
        let view = buf.into_cuda_view();
        check_cuda_view("View::from_cuda_strided", dev, &view)?;
        check_strided(view.len(), offset, shape, strides)?;
        let src = Src::Cuda { dev, view };
        Ok(View { src, offset, shape: shape.to_vec(), strides: strides.to_vec() })
    }

    /// Copies the view's elements to the host, in row-major order of its shape
    /// (waits for queued work). Reads the whole underlying tensor once.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let all = match &self.src {
            Src::Tensor(t) => t.to_vec()?,
            Src::Cuda { dev, view } => match &dev.0.backend {
                Backend::Cuda(c) => {
                    dev.refuse_in_capture("View::to_vec")?;
                    c.stream.clone_dtoh(view)?
                }
                Backend::Emulator(_) => return Err(Error::NotCuda { op: "View::to_vec" }),
            },
        };
        let n = checked_product("View::to_vec", &self.shape)?;
        let mut out = Vec::new();
        out.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
            bytes: n.saturating_mul(std::mem::size_of::<T>()),
            what: format!("View::to_vec of a view {:?}", self.shape),
        })?;
        let mut idx = vec![0usize; self.shape.len()];
        for _ in 0..n {
            let at = self.offset + idx.iter().zip(&self.strides).map(|(i, s)| i * s).sum::<usize>();
            out.push(all[at]);
            // the next index, last axis fastest
            for ax in (0..idx.len()).rev() {
                idx[ax] += 1;
                if idx[ax] < self.shape[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        Ok(out)
    }

    /// [`to_vec`](Self::to_vec) converted to f32 (exact for every storage type).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(crate::dtype::to_f32_vec(&self.to_vec()?))
    }

    /// The device address of the view's first element, for one launch.
    pub(crate) fn ptr(&self) -> DevPtr<'a> {
        let off = (self.offset * std::mem::size_of::<T>()) as u64;
        match self.src {
            Src::Tensor(t) => match (&t.buf, &t.dev.0.backend) {
                (Buffer::Cuda(s), Backend::Cuda(c)) => {
                    let (p, g) = s.device_ptr(&c.stream);
                    DevPtr { addr: p + off, _guard: Some(g) }
                }
                (Buffer::Host(h), _) => DevPtr { addr: h.ptr.as_ptr() as u64 + off, _guard: None },
                (Buffer::Cuda(_), Backend::Emulator(_)) => DevPtr { addr: 0, _guard: None },
            },
            Src::Cuda { dev, ref view } => {
                match &dev.0.backend {
                    Backend::Cuda(c) => {
                        // A copy of the view with the same borrow, so that the
                        // guard lives as long as the memory ('a), not `self`.
                        let (p, g) = view.slice(..).view_ptr(&c.stream);
                        DevPtr { addr: p + off, _guard: Some(g) }
                    }
                    // Never: an emulator device refuses CUDA memory when wrapping it.
                    Backend::Emulator(_) => DevPtr { addr: 0, _guard: None },
                }
            }
        }
    }
}

impl<'a, T: DType> ViewMut<'a, T> {
    /// A writable view of a caller's CUDA buffer (`&mut CudaSlice`,
    /// `CudaViewMut` or `&mut CudaViewMut`: see [`IntoCudaViewMut`]), borrowed
    /// mutably for the view's lifetime, without a copy: ops write the
    /// buffer in place. Checks as [`View::from_cuda`] (the example there writes
    /// one).
    pub fn from_cuda(dev: &'a Device, buf: impl IntoCudaViewMut<'a, T>, shape: &[usize]) -> Result<ViewMut<'a, T>> {
        const OP: &str = "ViewMut::from_cuda";
        let view = buf.into_cuda_view_mut();
        check_cuda_view(OP, dev, &view.as_view())?;
        check_len(OP, shape, view.len())?;
        let src = SrcMut::Cuda { dev, view };
        Ok(ViewMut { src, offset: 0, shape: shape.to_vec(), strides: contiguous_strides(shape) })
    }

    /// A writable strided view of a caller's CUDA buffer (see
    /// [`from_cuda`](Self::from_cuda) and [`Tensor::strided_mut`]): elements
    /// past the buffer, and a zero stride on an axis longer than 1, are errors.
    pub fn from_cuda_strided(
        dev: &'a Device,
        buf: impl IntoCudaViewMut<'a, T>,
        offset: usize,
        shape: &[usize],
        strides: &[usize],
    ) -> Result<ViewMut<'a, T>> {
        let view = buf.into_cuda_view_mut();
        check_cuda_view("ViewMut::from_cuda_strided", dev, &view.as_view())?;
        check_strided_mut(view.len(), offset, shape, strides)?;
        let src = SrcMut::Cuda { dev, view };
        Ok(ViewMut { src, offset, shape: shape.to_vec(), strides: strides.to_vec() })
    }

    /// A read-only view of the same elements, e.g. to read an output back with
    /// [`View::to_vec`] or pass it on as the next op's input.
    pub fn as_view(&self) -> View<'_, T> {
        View { src: self.src.as_src(), offset: self.offset, shape: self.shape.clone(), strides: self.strides.clone() }
    }

    /// The device address of the view's first element, for one launch.
    pub(crate) fn ptr_mut(&mut self) -> DevPtr<'_> {
        let off = (self.offset * std::mem::size_of::<T>()) as u64;
        match &mut self.src {
            SrcMut::Tensor(t) => {
                let t = &mut **t;
                match (&mut t.buf, &t.dev.0.backend) {
                    (Buffer::Cuda(s), Backend::Cuda(c)) => {
                        let (p, g) = s.device_ptr_mut(&c.stream);
                        DevPtr { addr: p + off, _guard: Some(g) }
                    }
                    (Buffer::Host(h), _) => DevPtr { addr: h.ptr.as_ptr() as u64 + off, _guard: None },
                    (Buffer::Cuda(_), Backend::Emulator(_)) => DevPtr { addr: 0, _guard: None },
                }
            }
            SrcMut::Cuda { dev, view } => match &dev.0.backend {
                Backend::Cuda(c) => {
                    let (p, g) = view.device_ptr_mut(&c.stream);
                    DevPtr { addr: p + off, _guard: Some(g) }
                }
                // Never: an emulator device refuses CUDA memory when wrapping it.
                Backend::Emulator(_) => DevPtr { addr: 0, _guard: None },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::driver::sys::CUresult;
    use cudarc::driver::DriverError;

    #[test]
    fn a_strided_view_reads_back_its_own_elements() {
        let dev = Device::emulator();
        let data: Vec<f32> = (0..5 * 7).map(|i| i as f32 * 0.5 - 3.0).collect();
        let t = dev.upload(&data, &[5, 7]).unwrap();
        // rows 1, 3 (stride 14), columns 2..6 (stride 1), from offset 1*7 + 2
        let v = t.strided(9, &[2, 4], &[14, 1]).unwrap();
        let d = &data;
        let want: Vec<f32> = [1usize, 3].iter().flat_map(|&r| (2..6).map(move |c| d[r * 7 + c])).collect();
        assert_eq!(v.to_vec().unwrap(), want);
        // a transposed view: columns as rows
        let tv = t.strided(0, &[7, 5], &[1, 7]).unwrap();
        let want_t: Vec<f32> = (0..7).flat_map(|c| (0..5).map(move |r| d[r * 7 + c])).collect();
        assert_eq!(tv.to_vec().unwrap(), want_t);
        assert_eq!(t.view().to_vec().unwrap(), data);
    }

    #[test]
    fn reshapes_keep_the_data_and_refuse_other_sizes() {
        let dev = Device::emulator();
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut t = dev.upload(&data, &[3, 4]).unwrap();
        {
            let v = t.reshaped(&[2, 3, 2]).unwrap();
            assert_eq!((v.shape(), v.strides(), v.offset()), (&[2, 3, 2][..], &[6, 2, 1][..], 0));
            assert_eq!(v.to_vec().unwrap(), data);
        }
        assert_eq!(t.shape(), &[3, 4], "reshaped borrows: the tensor keeps its shape");
        {
            let m = t.reshaped_mut(&[12]).unwrap();
            assert_eq!(m.strides(), &[1]);
        }
        let e = t.reshape_in_place(&[5, 2]).unwrap_err();
        assert!(matches!(e, Error::Shape { op: "reshape", .. }), "{e:?}");
        assert!(e.to_string().contains("[3, 4] (12 elements) to [5, 2] (10 elements)"), "{e}");
        assert_eq!(t.shape(), &[3, 4], "a refused reshape leaves the shape");
        assert!(t.reshaped(&[usize::MAX, 2]).is_err(), "an overflowing shape is an error");
        assert!(t.reshaped_mut(&[13]).is_err());
        t.reshape_in_place(&[4, 3]).unwrap();
        assert_eq!(t.shape(), &[4, 3]);
        let t = t.reshape(&[2, 6]).unwrap();
        assert_eq!((t.shape(), t.to_vec().unwrap()), (&[2, 6][..], data));
        let empty = dev.zeros::<f32>(&[0, 4]).unwrap();
        assert_eq!(empty.reshaped(&[4, 0]).unwrap().shape(), &[4, 0]);
    }

    #[test]
    fn f32_round_trips_and_output_views_read_back() {
        let dev = Device::emulator();
        let x = [1.0f32, 1.0 + 1.0 / 256.0, -2.5, 3.0e38, f32::NAN, 0.1];
        let b = dev.upload_f32::<half::bf16>(&x, &[2, 3]).unwrap();
        let bits = |v: Vec<half::bf16>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(b.to_vec().unwrap()), bits(crate::dtype::from_f32_vec(&x)));
        let back = b.to_f32_vec().unwrap();
        assert_eq!(back[..3], [1.0, 1.0, -2.5], "bf16 ties round to even");
        assert!(back[3].is_finite() && back[4].is_nan());
        let f = dev.upload_f32::<f32>(&x, &[6]).unwrap();
        assert_eq!(f.to_f32_vec().unwrap()[..4], x[..4], "f32 is exact");
        assert!(matches!(dev.upload_f32::<f32>(&x, &[4]), Err(Error::Shape { op: "upload_f32", .. })));

        let mut y = dev.upload_f32::<half::f16>(&[0.0; 12], &[3, 4]).unwrap();
        y.write(&crate::dtype::from_f32_vec(&(0..12).map(|i| i as f32).collect::<Vec<_>>())).unwrap();
        let col = y.strided_mut(1, &[3, 2], &[4, 1]).unwrap();
        assert_eq!(col.as_view().to_f32_vec().unwrap(), [1.0, 2.0, 5.0, 6.0, 9.0, 10.0]);
        assert_eq!(col.as_view().strides(), col.strides());
    }

    #[test]
    fn a_cuda_allocation_failure_is_out_of_memory() {
        match device_oom::<f32>(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY), 1000) {
            Error::OutOfMemory { bytes: 4000, what } => assert!(what.contains("1000 elements"), "{what}"),
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        assert!(matches!(device_oom::<f32>(DriverError(CUresult::CUDA_ERROR_INVALID_VALUE), 1), Error::Driver(_)));
    }
}
