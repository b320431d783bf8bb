//! The one error type of tf-host.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

/// Everything a tf-host call can fail with. User input never panics: it comes
/// back as one of these, with the offending values in the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CUDA driver library (libcuda) could not be loaded.
    #[error("no CUDA driver: libcuda could not be loaded on this machine")]
    NoDriver,
    /// The driver is there but the requested device is not.
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice { ordinal: usize, count: usize },
    /// The crate was built without nvcc, so there is no fatbin to load.
    #[error("CUDA kernels not built: nvcc was not found when tf-kernels was compiled (run `cargo xtask setup`)")]
    KernelsNotBuilt,
    /// The fatbin does not contain the kernel (a build of a different version).
    #[error("kernel `{0}` is missing from the loaded module")]
    MissingKernel(String),
    /// Shapes that do not fit together.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A storage type the operation does not support.
    #[error("{op}: unsupported dtype {dtype}")]
    UnsupportedDtype { op: &'static str, dtype: &'static str },
    /// A pointer, stride or size that breaks an alignment rule of a kernel.
    #[error("{op}: {msg}")]
    Alignment { op: &'static str, msg: String },
    /// A value out of its documented range (n_ref = 0, negative eps, ...).
    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
    /// Sizes whose product overflows, or exceeds a launch limit.
    #[error("{op}: size overflow: {msg}")]
    SizeOverflow { op: &'static str, msg: String },
    /// An allocation the host or the device could not satisfy.
    #[error("out of memory: {bytes} bytes for {what}")]
    OutOfMemory { bytes: usize, what: String },
    /// Tensors that live on different devices.
    #[error("{op}: tensors are on different devices")]
    DeviceMismatch { op: &'static str },
    /// An error from the CUDA driver.
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    /// An error from cuBLAS.
    #[error("cuBLAS: {0}")]
    Cublas(#[from] CublasError),
    /// The CPU emulator rejected or aborted a launch (barrier divergence, bad
    /// ldmatrix address, ...), with its message.
    #[error("emulator: {0}")]
    Emulator(String),
}

/// tf-host's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// `a * b * ...` in usize, or a `SizeOverflow` error naming the factors.
pub(crate) fn checked_product(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::SizeOverflow { op, msg: format!("product of {dims:?} overflows usize") })
}

/// `u32::try_from` with an error naming the quantity.
pub(crate) fn to_u32(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::SizeOverflow { op, msg: format!("{what} = {v} does not fit in 32 bits") })
}

/// `i64::try_from` with an error naming the quantity.
pub(crate) fn to_i64(op: &'static str, what: &str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::SizeOverflow { op, msg: format!("{what} = {v} does not fit in 64-bit signed") })
}
