//! Storage types of tensors: f32, f16, bf16.

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use tf_kernels::sys;

/// A storage type the kernels support. Sealed: exactly f32, f16 and bf16.
pub trait DType:
    Copy + Default + Send + Sync + std::fmt::Debug + PartialEq + DeviceRepr + ValidAsZeroBits + sealed::Sealed + 'static
{
    /// The kernels' code for this type (`tf_dtype`).
    const CODE: sys::tf_dtype;
    /// Name used in kernel names and messages: "f32", "f16", "bf16".
    const NAME: &'static str;
    /// A NaN of this type, used to poison outputs in tests.
    const NAN: Self;
    /// Conversion from f32 (round to nearest even).
    fn from_f32(v: f32) -> Self;
    /// Conversion to f32 (exact).
    fn to_f32(self) -> f32;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

impl DType for f32 {
    const CODE: sys::tf_dtype = sys::TF_DTYPE_F32;
    const NAME: &'static str = "f32";
    const NAN: Self = f32::NAN;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl DType for f16 {
    const CODE: sys::tf_dtype = sys::TF_DTYPE_F16;
    const NAME: &'static str = "f16";
    const NAN: Self = f16::NAN;
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl DType for bf16 {
    const CODE: sys::tf_dtype = sys::TF_DTYPE_BF16;
    const NAME: &'static str = "bf16";
    const NAN: Self = bf16::NAN;
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
