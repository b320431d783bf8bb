//! Storage types of tensors: f32, f16, bf16.

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use tf_kernels::sys;

/// A storage type the kernels support. Sealed: exactly f32, f16 and bf16.
pub trait DType:
    Copy + Default + Send + Sync + std::fmt::Debug + PartialEq + DeviceRepr + ValidAsZeroBits + sealed::Sealed + 'static
{
    /// The kernels' code for this type (`tf_dtype` of `kernels/tf_kernels.h`).
    /// Not part of the API: a generated binding type, used by the ops.
    #[doc(hidden)]
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

/// `v` converted to f32 element by element (exact for every storage type).
pub fn to_f32_vec<T: DType>(v: &[T]) -> Vec<f32> {
    v.iter().map(|&x| x.to_f32()).collect()
}

/// `v` converted from f32 to `T` element by element (round to nearest even; NaN
/// stays NaN, values past the type's range become ±inf).
pub fn from_f32_vec<T: DType>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_conversions_round_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values (1 and 1 + 2^-7): ties to even.
        let x = [1.0f32 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5, f32::NAN, f32::MAX];
        let b: Vec<bf16> = from_f32_vec(&x);
        assert_eq!(b[0].to_bits(), 0x3f80);
        assert_eq!(b[1].to_bits(), 0x3f82);
        assert_eq!(to_f32_vec(&b)[2], -2.5);
        assert!(to_f32_vec(&b)[3].is_nan());
        let h: Vec<f16> = from_f32_vec(&x);
        assert!(to_f32_vec(&h)[4].is_infinite(), "f32::MAX is past f16's range");
        assert_eq!(to_f32_vec(&from_f32_vec::<f32>(&x))[..3], x[..3]);
    }
}
