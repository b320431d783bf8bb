//! Pattention backward (kernels/pattention_backward.cu): given the forward's
//! inputs and `dy = ∂L/∂Y`, the gradients `dX`, `dK_P` and `dV_P` of
//! `Y = Θ(X·K_Pᵀ)·V_P`, for the three norms with the forward's options (pinned
//! `n_ref`, `eps`).
//!
//! It recomputes `A = X·K_Pᵀ`, or ([`pattention_backward_kept`], for
//! `l2_norm_gelu`) reads the scores the forward kept, runs the norm's
//! vector-Jacobian product in f32 arithmetic, and returns f32 gradients (they
//! feed f32 master weights: [`crate::AdamW`]). The five
//! products run
//! - for f16 / bf16 storage, on tensor cores (kernels/gemm_tc.cu): 16-bit
//!   operands, f32 accumulation, with S and dA rounded once to the storage type
//!   before the three products that use them, as mixed-precision training does;
//! - for f32 storage, on the SIMT gemm in f32 throughout (a correct path, not a
//!   fast one).
//!
//! [`plan`] does all validation and the workspace layout;
//! [`pattention_backward`] only launches.

use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{checked_product, to_i64, to_u32, Error, Result};
use crate::ops::gemm::{check_grid, gemm, Operand};
use crate::ops::pattention::{check_operand, norm_scale, KeptScores, Norm, PattentionArgs};
use crate::tensor::{Tensor, View};
use crate::workspace::Workspace;

const OP: &str = "pattention_backward";
/// Threads per block (one row) of the norm backward.
const NORM_THREADS: u32 = 256;
/// Alignment of each workspace region.
const WS_ALIGN: usize = sys::TF_PATTENTION_WS_ALIGN as usize;

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by the
// pattention_norm_backward_f32 kernel.
unsafe impl KernelParams for sys::tf_pnorm_backward_params {}

/// The gradients of one Pattention, f32.
#[derive(Debug)]
pub struct PattentionGrads {
    /// `dX`, `[t, d_in]`.
    pub dx: Tensor<f32>,
    /// `dK_P`, `[n, d_in]`.
    pub dk_p: Tensor<f32>,
    /// `dV_P`, `[n, d_out]`.
    pub dv_p: Tensor<f32>,
}

/// What [`plan`] decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackwardPlan {
    /// Tokens.
    pub t: usize,
    /// Parameter tokens.
    pub n: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// The kernels' norm scale (`sqrt(n_ref)` or `n_ref`).
    pub scale: f32,
    /// Bytes of one `[t, n]` f32 region of the workspace (A, S, dS/dA), aligned.
    pub region: usize,
    /// Row stride (elements) of the 16-bit S and dA: `n` rounded up to 8.
    pub ld16: usize,
}

/// Bytes of workspace [`pattention_backward`] needs for `t` tokens and `n`
/// parameter tokens: three `[t, n]` f32 matrices (A, S, dS then dA), each
/// sized for rows of `n` rounded up to 8 (the middle one holds the 16-bit S and
/// dA of f16 / bf16 storage, rows 16-byte aligned).
pub fn pattention_backward_workspace_bytes(t: usize, n: usize) -> Result<usize> {
    let bytes = checked_product(OP, &[t, n.next_multiple_of(8), 4])?;
    let region = bytes
        .checked_next_multiple_of(WS_ALIGN)
        .ok_or_else(|| Error::SizeOverflow { op: OP, msg: format!("[{t}, {n}] f32 workspace region") })?;
    region.checked_mul(3).ok_or_else(|| Error::SizeOverflow { op: OP, msg: "workspace size overflows".into() })
}

/// Validates the operands, `dy` and the options (the forward's rules: same
/// device, 2-D with contiguous rows, 16-bit storage 16-byte aligned, matching
/// shapes, n >= 1, valid `n_ref` / `eps`) and a caller's workspace size.
pub fn plan<T: DType>(
    dev: &Device,
    args: &PattentionArgs<'_, T>,
    dy: &View<'_, T>,
    workspace: Option<usize>,
) -> Result<BackwardPlan> {
    let PattentionArgs { x, k_p, v_p, opts } = args;
    for d in [x.device(), k_p.device(), v_p.device(), dy.device()] {
        if !d.same(dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
    }
    let shape_err = |msg: String| Error::Shape { op: OP, msg };
    let (t, d_in, _) = check_operand::<T>("x", x.shape(), x.strides(), x.offset(), x.inner_contiguous())?;
    let (n, k_in, _) = check_operand::<T>("k_p", k_p.shape(), k_p.strides(), k_p.offset(), k_p.inner_contiguous())?;
    let (vn, d_out, _) = check_operand::<T>("v_p", v_p.shape(), v_p.strides(), v_p.offset(), v_p.inner_contiguous())?;
    let (yt, yo, _) = check_operand::<T>("dy", dy.shape(), dy.strides(), dy.offset(), dy.inner_contiguous())?;
    if k_in != d_in {
        return Err(shape_err(format!("x is [{t}, {d_in}] but k_p is [{n}, {k_in}]: d_in differs")));
    }
    if vn != n {
        return Err(shape_err(format!("k_p is [{n}, {k_in}] but v_p is [{vn}, {d_out}]: n differs")));
    }
    if yt != t || yo != d_out {
        return Err(shape_err(format!("dy is [{yt}, {yo}] but the output is [t, d_out] = [{t}, {d_out}]")));
    }
    if n == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("k_p is [0, {d_in}]: at least one parameter token is needed"),
        });
    }
    let scale = norm_scale(OP, opts, n)?;
    let need = pattention_backward_workspace_bytes(t, n)?;
    to_i64(OP, "workspace bytes", need)?;
    if let Some(have) = workspace {
        if have < need {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "workspace has {have} bytes; t = {t}, n = {n} need {need} (pattention_backward_workspace_bytes)"
                ),
            });
        }
    }
    for (what, rows, cols) in [("A", t, n), ("dV_P", n, d_out), ("dX", t, d_in), ("dK_P", n, d_in)] {
        check_grid(OP, what, rows, cols)?;
    }
    to_u32(OP, "rows", t)?;
    Ok(BackwardPlan { t, n, d_in, d_out, scale, region: need / 3, ld16: n.next_multiple_of(8) })
}

/// The three products after the norm backward, from S and dA (type `TS`, row
/// stride `ld`): `dV_P = Sᵀ·dY`, `dX = dA·K_P`, `dK_P = dAᵀ·X`, with `inputs`
/// the column-wise dY, K_P and X and `outputs` dV_P, dX and dK_P.
///
/// # Safety
/// As [`gemm`]: S and dA are `[t, n]` at row stride `ld`, dY `[t, d_out]`, K_P
/// `[n, d_in]`, X `[t, d_in]`, the outputs f32 `[n, d_out]`, `[t, d_in]`,
/// `[n, d_in]`, all live until the launches have run.
unsafe fn weight_products<TS: DType, T: DType>(
    dev: &Device,
    (t, n, d_in, d_out): (usize, usize, usize, usize),
    (s, da, ld): (u64, u64, usize),
    [dy, k_p, x]: [Operand; 3],
    [dv_p, dx, dk_p]: [u64; 3],
) -> Result<()> {
    // SAFETY: the caller's contract, operand by operand.
    unsafe {
        // dV_P [n, d_out] = Sᵀ·dY: A(j, i) = S[i, j], B(c, i) = dY[i, c]
        gemm::<TS, T>(OP, dev, (n, d_out, t), Operand::cols(s, ld), dy, dv_p)?;
        // dX [t, d_in] = dA·K_P: B(c, j) = K_P[j, c]
        gemm::<TS, T>(OP, dev, (t, d_in, n), Operand::rows(da, ld), k_p, dx)?;
        // dK_P [n, d_in] = dAᵀ·X: A(j, i) = dA[i, j], B(c, i) = X[i, c]
        gemm::<TS, T>(OP, dev, (n, d_in, t), Operand::cols(da, ld), x, dk_p)
    }
}

/// The gradients of `Y = Θ(X·K_Pᵀ)·V_P` with respect to `X`, `K_P` and `V_P`,
/// given `dy = ∂L/∂Y [t, d_out]`, in f32 (new tensors). The scratch (three
/// `[t, n]` f32 matrices) comes from `workspace` (at least
/// [`pattention_backward_workspace_bytes`]) or is allocated for the call.
pub fn pattention_backward<T: DType>(
    dev: &Device,
    args: &PattentionArgs<'_, T>,
    dy: &View<'_, T>,
    workspace: Option<&mut Workspace>,
) -> Result<PattentionGrads> {
    run(dev, args, dy, workspace, None)
}

/// [`pattention_backward`] from the scores the forward kept
/// ([`crate::pattention_keeping_into`], `l2_norm_gelu`): A is read from them
/// (rounded once to the storage type, as the forward's S was computed from
/// them) instead of recomputed, so four products run instead of five. `args`
/// must be the forward's. The gradients are the recomputing backward's within
/// the storage type's rounding of A (the same tolerances against tf-ref).
///
/// Errors: those of `pattention_backward`; `kept` from another device, or for
/// another `(t, n)`; a norm other than `l2_norm_gelu`.
pub fn pattention_backward_kept<T: DType>(
    dev: &Device,
    args: &PattentionArgs<'_, T>,
    kept: &KeptScores<T>,
    dy: &View<'_, T>,
    workspace: Option<&mut Workspace>,
) -> Result<PattentionGrads> {
    run(dev, args, dy, workspace, Some(kept))
}

fn run<T: DType>(
    dev: &Device,
    args: &PattentionArgs<'_, T>,
    dy: &View<'_, T>,
    workspace: Option<&mut Workspace>,
    kept: Option<&KeptScores<T>>,
) -> Result<PattentionGrads> {
    if let Some(ws) = &workspace {
        if !ws.device().same(dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
    }
    let p = plan(dev, args, dy, workspace.as_ref().map(|w| w.bytes()))?;
    if let Some(k) = kept {
        if !k.device().same(dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
        if args.opts.norm != Norm::L2NormGelu {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("kept scores belong to l2_norm_gelu; the options say {}", args.opts.norm.name()),
            });
        }
        if k.shape() != (p.t, p.n) {
            return Err(Error::Shape {
                op: OP,
                msg: format!("the kept scores are for (t, n) = {:?}; x and k_p give ({}, {})", k.shape(), p.t, p.n),
            });
        }
    }
    let PattentionArgs { x, k_p, v_p, opts } = args;
    let (t, n, d_in, d_out) = (p.t, p.n, p.d_in, p.d_out);
    let mut dx = dev.output::<f32>(&[t, d_in])?;
    let mut dk_p = dev.output::<f32>(&[n, d_in])?;
    let mut dv_p = dev.output::<f32>(&[n, d_out])?;
    let mut owned;
    let ws: &mut Workspace = match workspace {
        Some(w) => w,
        None => {
            owned = Workspace::new(dev, 3 * p.region)?;
            &mut owned
        }
    };
    let (xp, kp, vp, dyp) = (x.ptr(), k_p.ptr(), v_p.ptr(), dy.ptr());
    let (mut dxv, mut dkv, mut dvv) = (dx.view_mut(), dk_p.view_mut(), dv_p.view_mut());
    let (dxp, dkp, dvp) = (dxv.ptr_mut(), dkv.ptr_mut(), dvv.ptr_mut());
    let wp = ws.ptr_mut();
    let (a, s, d) = (wp.addr, wp.addr + p.region as u64, wp.addr + 2 * p.region as u64);
    let (xs, ks, vs, dys) = (x.strides()[0], k_p.strides()[0], v_p.strides()[0], dy.strides()[0]);
    let (rows, cols) = (Operand::rows, Operand::cols);
    let sixteen = std::mem::size_of::<T>() == 2;
    // Where the norm backward leaves S and dA for the last three products.
    // 16-bit: S [t, ld16] at s, dA [t, ld16] right after it (t·ld16·2 bytes, a
    // multiple of 16), both inside region s (t·ld16·4 bytes). f32: S at s, dA
    // over dS at d, row stride n.
    let (da, ld_out) = if sixteen { (s + (t * p.ld16 * 2) as u64, p.ld16) } else { (d, n) };
    // SAFETY: plan() checked x [t, d_in], k_p [n, d_in], v_p [n, d_out] and
    // dy [t, d_out] (contiguous rows at the given strides, 16-bit ones 16-byte
    // aligned with strides that are multiples of 8, i64-safe sizes) and the
    // workspace's size: three regions a, s, d of t·ld16·4 bytes (f32 [t, n] of row
    // stride n; or, in s, the 16-bit S and dA of row stride ld16). Each gemm's
    // operands address exactly these matrices (a transposed one through swapped
    // strides) and its C is one of the [.., ..] f32 outputs or a region; the norm
    // backward touches rows [0, t) of a, s and d (and da), or of the kept scores
    // ([t, round_up(n, 8)]) and statistics ([t, ceil(n / 128)] float2) in a's
    // place, their shape checked above. The borrows and guards outlive the
    // launches, which are stream-ordered (CUDA) or synchronous.
    let kept_ptrs = kept.map(|k| (k.h.view().ptr(), k.stats.view().ptr()));
    unsafe {
        if kept_ptrs.is_none() {
            gemm::<T, T>(OP, dev, (t, n, d_in), rows(xp.addr, xs), rows(kp.addr, ks), a)?;
        }
        gemm::<T, T>(OP, dev, (t, n, d_out), rows(dyp.addr, dys), rows(vp.addr, vs), d)?;
        if t > 0 {
            let (kh, kst) = kept_ptrs.as_ref().map_or((0, 0), |(h, s)| (h.addr, s.addr));
            let params = sys::tf_pnorm_backward_params {
                a,
                s,
                d,
                da: if sixteen { da } else { 0 },
                t: to_i64(OP, "t", t)?,
                n: to_i64(OP, "n", n)?,
                ld: to_i64(OP, "n", n)?,
                ld_out: to_i64(OP, "n", ld_out)?,
                scale: p.scale,
                eps: opts.eps,
                norm: opts.norm.code() as i32,
                reserved: 0,
                kept: kh,
                kept_stats: kst,
                ld_kept: to_i64(OP, "kept row stride", n.next_multiple_of(8))?,
            };
            let kernel = match T::NAME {
                "f16" => "pattention_norm_backward_f16",
                "bf16" => "pattention_norm_backward_bf16",
                _ => "pattention_norm_backward_f32",
            };
            let geometry = Geometry { grid: [to_u32(OP, "rows", t)?, 1, 1], block: [NORM_THREADS, 1, 1], smem: 0 };
            dev.launch(OP, kernel, &geometry, &params)?;
        }
        let inputs = [cols(dyp.addr, dys), cols(kp.addr, ks), cols(xp.addr, xs)];
        let outputs = [dvp.addr, dxp.addr, dkp.addr];
        if sixteen {
            // from the 16-bit S and dA, on tensor cores
            weight_products::<T, T>(dev, (t, n, d_in, d_out), (s, da, ld_out), inputs, outputs)?;
        } else {
            weight_products::<f32, T>(dev, (t, n, d_in, d_out), (s, da, ld_out), inputs, outputs)?;
        }
    }
    drop((xp, kp, vp, dyp, dxp, dkp, dvp, wp, kept_ptrs));
    Ok(PattentionGrads { dx, dk_p, dv_p })
}
