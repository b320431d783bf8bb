//! Attention backward: given the forward's inputs and `d_o = ∂L/∂o`, the
//! gradients `dq`, `dk`, `dv` of scaled dot-product attention with the forward's
//! options (bottom-right causal mask, scale), in f32. Rows that see no key pass
//! no gradient. Two paths:
//! - [`attention_backward`] (kernels/attention_backward.cu): SIMT, f32
//!   arithmetic from the stored inputs, any head dimension up to 256 and any
//!   strides; it recomputes the softmax from q and k. The exact path.
//! - [`attention_backward_saved`] (kernels/attention_backward_tc.cu): given also
//!   what the forward saved (`o` and `lse`), FlashAttention-2's backward on tensor
//!   cores for f16 / bf16 at head dims 64, 80, 96, 128 with every operand 16-byte
//!   aligned; P and dS are rounded to the storage type before their products, as
//!   in FA2. Any other call falls back to the SIMT path.

use tf_kernels::sys;

use crate::device::{Device, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i64, Error, Result};
use crate::ops::attention::AttnArgs;
use crate::ops::attention_backward_tc as tc;
use crate::ops::block::rows_geometry;
use crate::tensor::{Tensor, View};

const OP: &str = "attention_backward";
/// Largest head dimension (`TF_ATTN_BACKWARD_MAX_D`).
const MAX_D: usize = sys::TF_ATTN_BACKWARD_MAX_D as usize;

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by the
// attn_backward_* kernels.
unsafe impl KernelParams for sys::tf_attn_backward_params {}

/// The gradients of one attention call, f32, contiguous, in the inputs' shapes.
#[derive(Debug)]
pub struct AttnGrads {
    /// `dq`, `[B, T_q, H, D]`.
    pub dq: Tensor<f32>,
    /// `dk`, `[B, T_k, H, D]`.
    pub dk: Tensor<f32>,
    /// `dv`, `[B, T_k, H, D]`.
    pub dv: Tensor<f32>,
}

fn kernels<T: DType>() -> (&'static str, &'static str) {
    match T::NAME {
        "f32" => ("attn_backward_dq_f32", "attn_backward_dkv_f32"),
        "f16" => ("attn_backward_dq_f16", "attn_backward_dkv_f16"),
        _ => ("attn_backward_dq_bf16", "attn_backward_dkv_bf16"),
    }
}

/// Strides (b, t, h) of a 4-D view whose last dimension is contiguous.
fn strides3(what: &str, v: &View<'_, impl DType>) -> Result<[i64; 3]> {
    if !v.inner_contiguous() {
        return Err(Error::Shape { op: OP, msg: format!("{what}: the head dimension must be contiguous (stride 1)") });
    }
    let s = v.strides();
    Ok([to_i64(OP, what, s[0])?, to_i64(OP, what, s[1])?, to_i64(OP, what, s[2])?])
}

/// The checked shapes, strides and scale of one call.
struct Checked {
    b: usize,
    t_q: usize,
    t_k: usize,
    h: usize,
    d: usize,
    scale: f32,
    q: [i64; 3],
    k: [i64; 3],
    v: [i64; 3],
}

/// The forward's shape and option rules (and `d_o`, when given, of `q`'s shape).
fn check<T: DType>(dev: &Device, args: &AttnArgs<'_, T>, d_o: Option<&View<'_, T>>) -> Result<Checked> {
    let AttnArgs { q, k, v, opts } = args;
    let devices = [Some(q.device()), Some(k.device()), Some(v.device()), d_o.map(|x| x.device())];
    if devices.into_iter().flatten().any(|d| !d.same(dev)) {
        return Err(Error::DeviceMismatch { op: OP });
    }
    let shape_err = |msg: String| Error::Shape { op: OP, msg };
    let (&[b, t_q, h, d], &[kb, t_k, kh, kd]) = (q.shape(), k.shape()) else {
        return Err(shape_err(format!("q and k must be 4-D [B, T, H, D], got q {:?}, k {:?}", q.shape(), k.shape())));
    };
    if v.shape() != k.shape() {
        return Err(shape_err(format!("k is {:?} but v is {:?}: they must have the same shape", k.shape(), v.shape())));
    }
    if (kb, kh, kd) != (b, h, d) {
        return Err(shape_err(format!("q is {:?} but k is {:?}: B, H and D must agree", q.shape(), k.shape())));
    }
    if let Some(d_o) = d_o {
        if d_o.shape() != q.shape() {
            return Err(shape_err(format!("d_o is {:?} but q is {:?}: they must match", d_o.shape(), q.shape())));
        }
    }
    if d == 0 || d > MAX_D {
        return Err(Error::InvalidArgument { op: OP, msg: format!("head dim {d}: 1..={MAX_D} supported") });
    }
    let scale = match opts.scale {
        None => 1.0 / (d as f32).sqrt(),
        Some(s) if s.is_finite() && s > 0.0 => s,
        Some(s) => {
            return Err(Error::InvalidArgument { op: OP, msg: format!("scale must be finite and > 0, got {s}") })
        }
    };
    for (rows, what) in [(t_q, "q"), (t_k, "k")] {
        if b.checked_mul(h).and_then(|x| x.checked_mul(rows)).is_none() {
            return Err(Error::SizeOverflow { op: OP, msg: format!("B·H·T of {what} overflows") });
        }
    }
    Ok(Checked { b, t_q, t_k, h, d, scale, q: strides3("q", q)?, k: strides3("k", k)?, v: strides3("v", v)? })
}

/// Params with the inputs' addresses and strides; every output address 0.
fn params(c: &Checked, causal: bool, (q, k, v): (u64, u64, u64)) -> Result<sys::tf_attn_backward_params> {
    let i = |what: &str, x: usize| to_i64(OP, what, x);
    Ok(sys::tf_attn_backward_params {
        q,
        k,
        v,
        d_o: 0,
        dq: 0,
        dk: 0,
        dv: 0,
        stats: 0,
        o: 0,
        batch: i("B", c.b)?,
        t_q: i("T_q", c.t_q)?,
        t_k: i("T_k", c.t_k)?,
        heads: i("H", c.h)?,
        head_dim: i("D", c.d)?,
        q_sb: c.q[0],
        q_st: c.q[1],
        q_sh: c.q[2],
        k_sb: c.k[0],
        k_st: c.k[1],
        k_sh: c.k[2],
        v_sb: c.v[0],
        v_st: c.v[1],
        v_sh: c.v[2],
        o_sb: 0,
        o_st: 0,
        o_sh: 0,
        scale: c.scale,
        causal: i32::from(causal),
    })
}

/// The attention forward of the training chain: `o [B, T_q, H, D]` in f32 from
/// the same arguments as [`crate::ops::attention::attention_into`] (split-KV
/// ignored), on the SIMT kernel `attn_forward_rows_*`: any head dimension up to
/// 256 and any strides with a contiguous head dimension, no padding. A row that
/// sees no key gives 0.
pub fn attention_forward<T: DType>(dev: &Device, args: &AttnArgs<'_, T>) -> Result<Tensor<f32>> {
    let c = check(dev, args, None)?;
    let mut o = dev.output::<f32>(&[c.b, c.t_q, c.h, c.d])?;
    let rows = c.b * c.h * c.t_q; // checked not to overflow
    if rows == 0 {
        return Ok(o);
    }
    let (qp, kp, vp) = (args.q.ptr(), args.k.ptr(), args.v.ptr());
    let mut ov = o.view_mut();
    let op = ov.ptr_mut();
    let p = sys::tf_attn_backward_params { o: op.addr, ..params(&c, args.opts.causal, (qp.addr, kp.addr, vp.addr))? };
    // SAFETY: q, k, v were checked [B, T, H, D] with a contiguous head dimension at
    // their strides; o is a fresh f32 [B, T_q, H, D] tensor, a warp writing one row
    // of it. Borrows outlive the launch.
    unsafe { dev.launch(OP, forward_kernel::<T>(), &rows_geometry(dev, OP, rows)?, &p) }?;
    drop((qp, kp, vp, op));
    Ok(o)
}

fn forward_kernel<T: DType>() -> &'static str {
    match T::NAME {
        "f32" => "attn_forward_rows_f32",
        "f16" => "attn_forward_rows_f16",
        _ => "attn_forward_rows_bf16",
    }
}

/// The gradients of attention with respect to `q`, `k` and `v`, given
/// `d_o [B, T_q, H, D]` (`q`'s shape and type; any strides with a contiguous
/// head dimension, as the inputs). `args.opts.num_splits` is ignored (the
/// forward's split-KV does not change the result). Errors: the forward's shape
/// and option rules, `d_o` not of `q`'s shape, `D` above 256.
pub fn attention_backward<T: DType>(dev: &Device, args: &AttnArgs<'_, T>, d_o: &View<'_, T>) -> Result<AttnGrads> {
    let c = check(dev, args, Some(d_o))?;
    let (b, t_q, t_k, h, d) = (c.b, c.t_q, c.t_k, c.h, c.d);
    let [o_sb, o_st, o_sh] = strides3("d_o", d_o)?;
    let mut dq = dev.output::<f32>(&[b, t_q, h, d])?;
    let mut dk = dev.output::<f32>(&[b, t_k, h, d])?;
    let mut dv = dev.output::<f32>(&[b, t_k, h, d])?;
    let mut stats = dev.output::<f32>(&[b, h, t_q, 2])?;
    let (q_rows, k_rows) = (b * h * t_q, b * h * t_k); // checked not to overflow
    let (qp, kp, vp, op) = (args.q.ptr(), args.k.ptr(), args.v.ptr(), d_o.ptr());
    let (mut dqv, mut dkv, mut dvv, mut sv) = (dq.view_mut(), dk.view_mut(), dv.view_mut(), stats.view_mut());
    let (dqp, dkp, dvp, sp) = (dqv.ptr_mut(), dkv.ptr_mut(), dvv.ptr_mut(), sv.ptr_mut());
    let params = sys::tf_attn_backward_params {
        d_o: op.addr,
        dq: dqp.addr,
        dk: dkp.addr,
        dv: dvp.addr,
        stats: sp.addr,
        o_sb,
        o_st,
        o_sh,
        ..params(&c, args.opts.causal, (qp.addr, kp.addr, vp.addr))?
    };
    let (dq_kernel, dkv_kernel) = kernels::<T>();
    // SAFETY: the four operands were checked [B, T, H, D] with a contiguous head
    // dimension at their strides (views: every element in bounds); dq, dk, dv and
    // stats are fresh f32 tensors of [B, T_q, H, D], [B, T_k, H, D] (two) and
    // [B, H, T_q, 2]. A warp of the first kernel writes one row of dq and one
    // stats entry, of the second one row of dk and of dv; the second reads stats
    // after the first (stream order / synchronous). Borrows outlive the launches.
    unsafe {
        if q_rows > 0 {
            dev.launch(OP, dq_kernel, &rows_geometry(dev, OP, q_rows)?, &params)?;
        }
        if k_rows > 0 {
            dev.launch(OP, dkv_kernel, &rows_geometry(dev, OP, k_rows)?, &params)?;
        }
    }
    drop((qp, kp, vp, op, dqp, dkp, dvp, sp));
    Ok(AttnGrads { dq, dk, dv })
}

/// What the attention forward saved for the backward: its output `o`
/// `[B, T_q, H, D]` (the storage type) and the natural log-sum-exp `lse`
/// `[B, H, T_q]` (f32, `+inf` for a row that sees no key), as
/// [`crate::ops::attention::attention`] returns them.
#[derive(Clone, Debug)]
pub struct AttnSaved<'a, T: DType> {
    /// The forward's output.
    pub o: View<'a, T>,
    /// The forward's log-sum-exp.
    pub lse: View<'a, f32>,
}

/// The gradients of attention from `d_o` and what the forward saved:
/// FlashAttention-2's backward on tensor cores (`attn_bwd_*`: delta = rowsum(d_o ∘
/// o), then dk and dv per key block, then dq per query block; no atomics, the same
/// bits on every run) for f16 / bf16 at head dims 64, 80, 96, 128 when q, k, v, o
/// and d_o start at multiples of 8 elements with strides (of axes longer than 1)
/// multiples of 8, and lse is contiguous. P and dS are rounded to the storage type
/// before their products, so the error is the storage type's, not f32's. Any other
/// call runs [`attention_backward`] (SIMT, exact f32 arithmetic; `saved` unused
/// beyond its shape checks).
///
/// `saved` must come from the forward of the same `args`: the kernels take lse and
/// o as given. A NaN or infinite input may make gradients non-finite that the exact
/// chain keeps finite (masked pairs still multiply 0 by it); finite inputs are
/// unaffected. Errors: those of [`attention_backward`], `o` not of `q`'s shape, `lse`
/// not `[B, H, T_q]`, an operand on another device.
pub fn attention_backward_saved<T: DType>(
    dev: &Device,
    args: &AttnArgs<'_, T>,
    saved: &AttnSaved<'_, T>,
    d_o: &View<'_, T>,
) -> Result<AttnGrads> {
    let c = check(dev, args, Some(d_o))?;
    if !saved.o.device().same(dev) || !saved.lse.device().same(dev) {
        return Err(Error::DeviceMismatch { op: OP });
    }
    if saved.o.shape() != args.q.shape() {
        return Err(Error::Shape {
            op: OP,
            msg: format!("o is {:?} but q is {:?}: they must match", saved.o.shape(), args.q.shape()),
        });
    }
    if saved.lse.shape() != [c.b, c.h, c.t_q] {
        return Err(Error::Shape {
            op: OP,
            msg: format!("lse is {:?}; [B, H, T_q] = {:?} expected", saved.lse.shape(), [c.b, c.h, c.t_q]),
        });
    }
    let x = tc::Operands { q: &args.q, k: &args.k, v: &args.v, o: &saved.o, d_o, lse: &saved.lse };
    match tc::plan(dev, [c.b, c.t_q, c.t_k, c.h, c.d], &x, c.scale, args.opts.causal)? {
        Some(plan) => {
            let (dq, dk, dv) = tc::run(dev, &plan, &x)?;
            Ok(AttnGrads { dq, dk, dv })
        }
        None => attention_backward(dev, args, d_o),
    }
}
