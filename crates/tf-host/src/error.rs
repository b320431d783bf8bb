//! The one error type of tf-host.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

/// Everything a tf-host call can fail with. User input never panics: it comes
/// back as one of these, with the offending values in the message. New variants
/// may be added: match with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CUDA driver library (libcuda) could not be loaded.
    #[error("no CUDA driver: libcuda could not be loaded on this machine")]
    NoDriver,
    /// The driver is there but the requested device is not.
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// How many devices the driver reports.
        count: usize,
    },
    /// The crate was built without CUDA kernels (the `emulator-only` feature or
    /// `TF_NO_NVCC`), so there is no fatbin to load.
    #[error(
        "CUDA kernels not built: tf-kernels was compiled without them (the `emulator-only` feature or \
         TF_NO_NVCC), so only Device::emulator runs the kernels; for CUDA, build without that feature and \
         variable, with nvcc found through NVCC, CUDA_HOME or PATH (in the repository, `cargo xtask setup` \
         installs it)"
    )]
    KernelsNotBuilt,
    /// The fatbin could not be read from the file `TF_FATBIN` names, or the
    /// build embeds none (`TF_FATBIN_EXTERNAL`) and `TF_FATBIN` is unset.
    #[error("CUDA kernels: {0}")]
    FatbinFile(String),
    /// The fatbin does not contain the kernel (a build of a different version).
    #[error("kernel `{0}` is missing from the loaded module")]
    MissingKernel(String),
    /// Shapes that do not fit together.
    #[error("{op}: {msg}")]
    Shape {
        /// The operation that refused its arguments, e.g. `"pattention"`.
        op: &'static str,
        /// What does not fit, naming the shapes.
        msg: String,
    },
    /// A storage type the operation does not support. Reserved: every current
    /// operation takes f32, f16 and bf16, so none returns it.
    #[error("{op}: unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The operation.
        op: &'static str,
        /// The storage type's name (`"f32"`, `"f16"`, `"bf16"`).
        dtype: &'static str,
    },
    /// A pointer, stride or size that breaks an alignment rule of a kernel.
    #[error("{op}: {msg}")]
    Alignment {
        /// The operation.
        op: &'static str,
        /// Which pointer, stride or size, and the rule it breaks.
        msg: String,
    },
    /// A value out of its documented range (n_ref = 0, negative eps, ...).
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// The value and its allowed range.
        msg: String,
    },
    /// Sizes whose product overflows, or exceeds a launch limit.
    #[error("{op}: size overflow: {msg}")]
    SizeOverflow {
        /// The operation.
        op: &'static str,
        /// The sizes involved and the limit.
        msg: String,
    },
    /// An allocation the host or the device could not satisfy.
    #[error("out of memory: {bytes} bytes for {what}")]
    OutOfMemory {
        /// The size of the allocation that failed.
        bytes: usize,
        /// What it was for.
        what: String,
    },
    /// Tensors that live on different devices.
    #[error("{op}: tensors are on different devices")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
    },
    /// A CUDA-only function called with the emulator: wrapping a CUDA buffer
    /// on an emulator device, or taking the CUDA buffer of an emulator tensor.
    #[error("{op}: needs a CUDA device; this is the CPU emulator")]
    NotCuda {
        /// The operation, e.g. `"into_cuda_slice"`.
        op: &'static str,
    },
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

/// A tf-ref error (configs, checkpoints) as a tf-host error, so `?` works on
/// `TokenformerConfig::by_name` and the checkpoint readers in functions returning
/// [`Result`]. Shape and argument errors keep their operation and message; file
/// and format errors become `InvalidArgument` with the whole message.
impl From<tf_ref::Error> for Error {
    fn from(e: tf_ref::Error) -> Self {
        match e {
            tf_ref::Error::Shape { op, msg } => Error::Shape { op, msg },
            tf_ref::Error::InvalidArgument { op, msg } => Error::InvalidArgument { op, msg },
            other => Error::InvalidArgument { op: "tf_ref", msg: other.to_string() },
        }
    }
}

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

/// `i32::try_from` with an error naming the quantity.
pub(crate) fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::SizeOverflow { op, msg: format!("{what} = {v} does not fit in 32-bit signed") })
}

/// `i64::try_from` with an error naming the quantity.
pub(crate) fn to_i64(op: &'static str, what: &str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::SizeOverflow { op, msg: format!("{what} = {v} does not fit in 64-bit signed") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> Result<crate::TokenformerConfig> {
        Ok(crate::TokenformerConfig::by_name(name)?)
    }

    #[test]
    fn tf_ref_errors_convert_with_question_mark() {
        assert!(config("tiny").is_ok());
        let e = config("no-such-config").unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        assert!(e.to_string().contains("no-such-config"), "{e}");
    }
}
