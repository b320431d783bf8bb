//! Emulator device memory ([`DeviceBuffer`]): what memcheck and initcheck know about.

use std::ffi::c_void;
use std::ptr::NonNull;

use crate::sys;

/// Device memory of the emulator: zeroed host memory, 256-byte aligned (as
/// `cudaMalloc` is), between two 256-byte redzones. Launches with
/// [`Checks::memory`](super::Checks) report any access of the redzones (out of
/// bounds by even one element, which plain host memory would not fault on) and any
/// access after the buffer is dropped; with [`Checks::init`](super::Checks), reads of
/// bytes never written since [`DeviceBuffer::uninit`]. Pass [`addr`](Self::addr) in
/// a params struct as a kernel's pointer.
pub struct DeviceBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for DeviceBuffer {}
// SAFETY: shared access only reads, like &[u8].
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    fn alloc(len: usize, initialized: bool) -> Option<Self> {
        // SAFETY: tf_emu_malloc has no preconditions; it returns null or `len` bytes.
        let p = unsafe { sys::tf_emu_malloc(len, i32::from(initialized)) };
        NonNull::new(p.cast::<u8>()).map(|ptr| DeviceBuffer { ptr, len })
    }

    /// `len` zero bytes that count as written (initcheck accepts reads). `None` when
    /// out of memory.
    pub fn zeroed(len: usize) -> Option<Self> {
        Self::alloc(len, true)
    }

    /// `len` bytes (zero) that count as never written: initcheck reports a kernel's
    /// read of any byte before something writes it (a kernel, or
    /// [`as_mut_slice`](Self::as_mut_slice), which counts the whole buffer as written).
    pub fn uninit(len: usize) -> Option<Self> {
        Self::alloc(len, false)
    }

    /// A buffer holding `data`.
    pub fn from_slice<T: Copy>(data: &[T]) -> Option<Self> {
        let bytes = std::mem::size_of_val(data);
        let mut b = Self::zeroed(bytes)?;
        // SAFETY: T is Copy (plain data) and the slices cover the same `bytes` bytes.
        let src = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), bytes) };
        b.as_mut_slice().copy_from_slice(src);
        Some(b)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address a kernel's params struct takes.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed at allocation) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable; counts every byte as written for initcheck.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.mark_initialized(true);
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Counts every byte as written (`true`) or as never written (`false`).
    pub fn mark_initialized(&mut self, initialized: bool) {
        // SAFETY: the range is this live allocation.
        unsafe { sys::tf_emu_mark_initialized(self.ptr.as_ptr().cast::<c_void>(), self.len, i32::from(initialized)) }
    }

    /// The contents as `T`s (a tail shorter than one `T` is ignored).
    pub fn to_vec<T: Plain>(&self) -> Vec<T> {
        let n = self.len / std::mem::size_of::<T>().max(1);
        let mut v = vec![T::default(); n];
        let bytes = n * std::mem::size_of::<T>();
        // SAFETY: v has room for `bytes` bytes; the source holds at least as many; every
        // bit pattern is a valid T (Plain's contract).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes) };
        v
    }
}

/// Numbers for which every bit pattern is a valid value (what [`DeviceBuffer::to_vec`]
/// may return).
///
/// # Safety
/// Implement only for `Copy` types without padding or invalid bit patterns.
pub unsafe trait Plain: Copy + Default {}
macro_rules! plain {
    ($($t:ty),*) => { $(
        // SAFETY: a primitive number: no padding, every bit pattern valid.
        unsafe impl Plain for $t {}
    )* };
}
plain!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: ptr came from tf_emu_malloc and is freed once.
        unsafe { sys::tf_emu_free(self.ptr.as_ptr().cast::<c_void>()) }
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({} bytes at {:#x})", self.len, self.addr())
    }
}
