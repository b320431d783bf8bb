//! The dense layer `y = x·wᵀ` (PyTorch `F.linear`, no bias): the baseline the
//! benchmarks compare Pattention with. cuBLAS on CUDA; on the emulator the SIMT
//! kernel of kernels/linear.cu.

use cudarc::cublas::result::gemm_ex;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i64, to_u32, Error, Result};
use crate::tensor::{check_disjoint, Tensor, View, ViewMut};

const OP: &str = "linear";
const TILE: usize = 16;

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by linear_*.
unsafe impl KernelParams for sys::tf_linear_params {}

/// Shapes of one linear call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows of x and y.
    pub t: usize,
    /// Reduction length.
    pub d_in: usize,
    /// Columns of y.
    pub d_out: usize,
}

/// Validation and geometry of the emulator kernel (cuBLAS needs none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearPlan {
    /// The shapes.
    pub shape: LinearShape,
    /// Launch geometry of the SIMT kernel.
    pub geometry: Geometry,
}

fn cuda_type<T: DType>() -> cudaDataType_t {
    match T::NAME {
        "f32" => cudaDataType_t::CUDA_R_32F,
        "f16" => cudaDataType_t::CUDA_R_16F,
        _ => cudaDataType_t::CUDA_R_16BF,
    }
}

fn kernel_name<T: DType>() -> &'static str {
    match T::NAME {
        "f32" => "linear_f32",
        "f16" => "linear_f16",
        _ => "linear_bf16",
    }
}

/// Checks x [t, d_in], w [d_out, d_in], y [t, d_out] (rows contiguous, y not
/// overlapping itself) and computes the launch geometry.
pub fn plan<T: DType>(dev: &Device, x: &View<'_, T>, w: &View<'_, T>, y: &ViewMut<'_, T>) -> Result<LinearPlan> {
    for d in [x.device(), w.device(), y.device()] {
        if !d.same(dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
    }
    let (&[t, d_in], &[d_out, w_in], &[yt, yo]) = (x.shape(), w.shape(), y.shape()) else {
        return Err(Error::Shape {
            op: OP,
            msg: format!("x, w, y must be 2-D: x {:?}, w {:?}, y {:?}", x.shape(), w.shape(), y.shape()),
        });
    };
    if w_in != d_in || yt != t || yo != d_out {
        return Err(Error::Shape {
            op: OP,
            msg: format!(
                "x [{t}, {d_in}] · w [{d_out}, {w_in}]ᵀ needs w's columns = {d_in} and y [{t}, {d_out}], got y {:?}",
                y.shape()
            ),
        });
    }
    if !(x.inner_contiguous() && w.inner_contiguous() && y.inner_contiguous()) {
        return Err(Error::Shape {
            op: OP,
            msg: format!(
                "rows must be contiguous: strides x {:?}, w {:?}, y {:?}",
                x.strides(),
                w.strides(),
                y.strides()
            ),
        });
    }
    check_disjoint(OP, "y", y)?;
    let gx = to_u32(OP, "d_out tiles", d_out.div_ceil(TILE).max(1))?;
    let gy = to_u32(OP, "t tiles", t.div_ceil(TILE).max(1))?;
    if gy > 65535 {
        return Err(Error::SizeOverflow { op: OP, msg: format!("t = {t} needs {gy} row tiles; at most 65535") });
    }
    Ok(LinearPlan {
        shape: LinearShape { t, d_in, d_out },
        geometry: Geometry { grid: [gx, gy, 1], block: [TILE as u32, TILE as u32, 1], smem: 0 },
    })
}

/// `y = x·wᵀ` into a caller-given output.
pub fn linear_into<T: DType>(dev: &Device, x: &View<'_, T>, w: &View<'_, T>, y: &mut ViewMut<'_, T>) -> Result<()> {
    let p = plan(dev, x, w, y)?;
    let LinearShape { t, d_in, d_out } = p.shape;
    if t == 0 || d_out == 0 {
        return Ok(());
    }
    let row_stride = |s: &[usize]| s[0];
    if let Some(blas) = dev.blas()? {
        if d_in == 0 {
            return Err(Error::Shape { op: OP, msg: "d_in = 0 is not supported on cuBLAS".into() });
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (lda, ldb) = (row_stride(w.strides()).max(d_in), row_stride(x.strides()).max(d_in));
        let ldc = row_stride(y.strides()).max(d_out);
        let (xs, ws) = (x.ptr(), w.ptr());
        let ys = y.ptr_mut();
        // Column-major view: yᵀ [d_out, t] = (w as [d_in, d_out])ᵀ · (x as [d_in, t]).
        // SAFETY: plan() checked the shapes and contiguous rows; the leading
        // dimensions are the views' row strides, which cover every row read or
        // written; the pointers come from borrows held until after the call,
        // which is queued on this device's stream (cuBLAS' handle stream).
        unsafe {
            gemm_ex(
                *blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                i32_of(d_out)?,
                i32_of(t)?,
                i32_of(d_in)?,
                (&alpha as *const f32).cast(),
                ws.addr as *const _,
                cuda_type::<T>(),
                i32_of(lda)?,
                xs.addr as *const _,
                cuda_type::<T>(),
                i32_of(ldb)?,
                (&beta as *const f32).cast(),
                ys.addr as *mut _,
                cuda_type::<T>(),
                i32_of(ldc)?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        return Ok(());
    }
    let (xs, ws) = (x.ptr(), w.ptr());
    let params = sys::tf_linear_params {
        x: xs.addr,
        w: ws.addr,
        y: 0,
        t: to_i64(OP, "t", t)?,
        d_in: to_i64(OP, "d_in", d_in)?,
        d_out: to_i64(OP, "d_out", d_out)?,
        x_row_stride: to_i64(OP, "x row stride", row_stride(x.strides()))?,
        w_row_stride: to_i64(OP, "w row stride", row_stride(w.strides()))?,
        y_row_stride: to_i64(OP, "y row stride", row_stride(y.strides()))?,
    };
    let ys = y.ptr_mut();
    let params = sys::tf_linear_params { y: ys.addr, ..params };
    // SAFETY: plan() checked x [t, d_in], w [d_out, d_in], y [t, d_out] with
    // contiguous rows at the given strides; the kernel reads and writes only
    // inside those; the borrows outlive the (synchronous or stream-ordered) launch.
    unsafe { dev.launch(OP, kernel_name::<T>(), &p.geometry, &params) }
}

/// `y = x·wᵀ`, allocating y.
pub fn linear<T: DType>(dev: &Device, x: &Tensor<T>, w: &Tensor<T>) -> Result<Tensor<T>> {
    let t = x.shape().first().copied().unwrap_or(0);
    let d_out = w.shape().first().copied().unwrap_or(0);
    let mut y = dev.output::<T>(&[t, d_out])?;
    linear_into(dev, &x.view(), &w.view(), &mut y.view_mut())?;
    Ok(y)
}

fn i32_of(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::SizeOverflow { op: OP, msg: format!("{v} does not fit cuBLAS' 32-bit sizes") })
}

/// Backward of [`linear`] `y = x·wᵀ` (x `[t, d_in]`, w `[d_out, d_in]`), given
/// `dy [t, d_out]`: `(dx, dw) = (dy·w, dyᵀ·x)` as new f32 tensors (the strided
/// gemm of the backward ops, f32 accumulation in a fixed order; SIMT, also on
/// CUDA). With `w` the tied embedding this is the unembedding's backward.
/// Errors: as [`plan`] (with `dy` in the place of y), and `dy` not `[t, d_out]`.
pub fn linear_backward<T: DType>(
    dev: &Device,
    x: &View<'_, T>,
    w: &View<'_, T>,
    dy: &View<'_, T>,
) -> Result<(Tensor<f32>, Tensor<f32>)> {
    const OP_B: &str = "linear_backward";
    for v in [x.device(), w.device(), dy.device()] {
        if !v.same(dev) {
            return Err(Error::DeviceMismatch { op: OP_B });
        }
    }
    let dims = |what: &str, v: &View<'_, T>| -> Result<(usize, usize, usize)> {
        match (v.shape(), v.inner_contiguous()) {
            (&[r, c], true) => Ok((r, c, v.strides()[0])),
            _ => Err(Error::Shape {
                op: OP_B,
                msg: format!(
                    "{what} must be 2-D with contiguous rows, got shape {:?} strides {:?}",
                    v.shape(),
                    v.strides()
                ),
            }),
        }
    };
    let (t, d_in, xs) = dims("x", x)?;
    let (d_out, w_in, ws) = dims("w", w)?;
    let (yt, yo, ys) = dims("dy", dy)?;
    if w_in != d_in || [yt, yo] != [t, d_out] {
        return Err(Error::Shape {
            op: OP_B,
            msg: format!("x [{t}, {d_in}], w [{d_out}, {w_in}] and dy [{yt}, {yo}] do not fit y = x·wᵀ"),
        });
    }
    crate::ops::gemm::check_grid(OP_B, "dx", t, d_in)?;
    crate::ops::gemm::check_grid(OP_B, "dw", d_out, d_in)?;
    let mut dx = dev.output::<f32>(&[t, d_in])?;
    let mut dw = dev.output::<f32>(&[d_out, d_in])?;
    let (xp, wp, yp) = (x.ptr(), w.ptr(), dy.ptr());
    let (mut dxv, mut dwv) = (dx.view_mut(), dw.view_mut());
    let (dxp, dwp) = (dxv.ptr_mut(), dwv.ptr_mut());
    use crate::ops::gemm::{gemm, Operand};
    // SAFETY: x [t, d_in], w [d_out, d_in] and dy [t, d_out] were checked 2-D with
    // contiguous rows at their strides; dx and dw are fresh f32 tensors of
    // [t, d_in] and [d_out, d_in]. dx = dy·w: A = dy rows, B(c, j) = w[j, c];
    // dw = dyᵀ·x: A(j, i) = dy[i, j], B(c, i) = x[i, c]. Borrows outlive the launches.
    unsafe {
        gemm::<T, T>(OP_B, dev, (t, d_in, d_out), Operand::rows(yp.addr, ys), Operand::cols(wp.addr, ws), dxp.addr)?;
        gemm::<T, T>(OP_B, dev, (d_out, d_in, t), Operand::cols(yp.addr, ys), Operand::cols(xp.addr, xs), dwp.addr)?;
    }
    drop((xp, wp, yp, dxp, dwp));
    Ok((dx, dw))
}
