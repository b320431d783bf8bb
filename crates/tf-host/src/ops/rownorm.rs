//! Θ alone, in place on a score matrix (kernels/rownorm.cu): the middle step of
//! the unfused Pattention pipeline the benchmarks compare the fused kernels with.

use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i64, to_u32, Error, Result};
use crate::ops::pattention::{norm_scale, PattentionOptions};
use crate::tensor::{check_disjoint, ViewMut};

const OP: &str = "pattention_norm";
const THREADS: u32 = 256;

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by rownorm_*.
unsafe impl KernelParams for sys::tf_rownorm_params {}

fn kernel_name<T: DType>() -> &'static str {
    match T::NAME {
        "f32" => "rownorm_f32",
        "f16" => "rownorm_f16",
        _ => "rownorm_bf16",
    }
}

/// Validates `a` [t, n] (contiguous rows) and the options; returns the geometry
/// (one block per row) and the kernel's scale.
pub fn plan<T: DType>(dev: &Device, a: &ViewMut<'_, T>, opts: &PattentionOptions) -> Result<(Geometry, f32)> {
    if !a.device().same(dev) {
        return Err(Error::DeviceMismatch { op: OP });
    }
    let &[t, n] = a.shape() else {
        return Err(Error::Shape { op: OP, msg: format!("scores must be 2-D [t, n], got {:?}", a.shape()) });
    };
    if !a.inner_contiguous() {
        return Err(Error::Shape { op: OP, msg: format!("score rows must be contiguous, strides {:?}", a.strides()) });
    }
    check_disjoint(OP, "scores", a)?;
    let scale = norm_scale(OP, opts, n)?;
    let rows = to_u32(OP, "rows", t.max(1))?;
    Ok((Geometry { grid: [rows, 1, 1], block: [THREADS, 1, 1], smem: 0 }, scale))
}

/// `a ← Θ(a)` row by row (the three norms of docs/tokenformer.md).
pub fn pattention_norm_into<T: DType>(dev: &Device, a: &mut ViewMut<'_, T>, opts: &PattentionOptions) -> Result<()> {
    let (geometry, scale) = plan(dev, a, opts)?;
    let (t, n) = (a.shape()[0], a.shape()[1]);
    if t == 0 || n == 0 {
        return Ok(());
    }
    let params = sys::tf_rownorm_params {
        a: 0,
        t: to_i64(OP, "t", t)?,
        n: to_i64(OP, "n", n)?,
        row_stride: to_i64(OP, "row stride", a.strides()[0])?,
        scale,
        eps: opts.eps,
        norm: opts.norm.code() as i32,
        reserved: 0,
    };
    let ap = a.ptr_mut();
    let params = sys::tf_rownorm_params { a: ap.addr, ..params };
    // SAFETY: plan() checked a [t, n] with contiguous rows at its row stride;
    // block r touches only row r; the borrow (and guard) outlives the launch.
    unsafe { dev.launch(OP, kernel_name::<T>(), &geometry, &params) }
}
