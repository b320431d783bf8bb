//! The tensor-core attention backward (kernels/attention_backward_tc.cu): f16 /
//! bf16 storage, head dims 64, 80, 96, 128, FlashAttention-2's structure with a
//! separate, deterministic dq pass. [`plan`] says whether a call can take it (the
//! type, head dimension, 16-byte alignment of every operand and a contiguous
//! lse) and fills the geometry; [`run`] launches the three kernels.
//! `attention_backward_saved` (ops/attention_backward.rs) is the public entry.

use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i64, to_u32, Result};
use crate::ops::attention::{chunk_aligned, HEAD_DIMS};
use crate::ops::block::rows_geometry;
use crate::tensor::{Tensor, View};

const OP: &str = "attention_backward";

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by the
// attn_bwd_* kernels.
unsafe impl KernelParams for sys::tf_attn_bwd_params {}

/// Rows a CTA owns (`TF_ATTN_BWD_BLOCK`).
const BLOCK: usize = sys::TF_ATTN_BWD_BLOCK as usize;

/// Rows streamed per step for head dimension `d` (`TF_ATTN_BWD_STEP_HD*`).
fn step(d: usize) -> usize {
    (match d {
        64 => sys::TF_ATTN_BWD_STEP_HD64,
        80 => sys::TF_ATTN_BWD_STEP_HD80,
        96 => sys::TF_ATTN_BWD_STEP_HD96,
        _ => sys::TF_ATTN_BWD_STEP_HD128,
    }) as usize
}

/// Dynamic shared memory of the dkv and dq kernels (tf_kernels.h states it).
pub(crate) fn smem_bytes(d: usize) -> usize {
    let s = step(d);
    4 * BLOCK * d + 8 * s * d + 16 * s
}

/// Kernel names: (delta, dkv, dq).
fn kernels<T: DType>(d: usize) -> (&'static str, &'static str, &'static str) {
    let bf = T::NAME == "bf16";
    let (dkv, dq) = match (bf, d) {
        (false, 64) => ("attn_bwd_dkv_f16_hd64", "attn_bwd_dq_f16_hd64"),
        (false, 80) => ("attn_bwd_dkv_f16_hd80", "attn_bwd_dq_f16_hd80"),
        (false, 96) => ("attn_bwd_dkv_f16_hd96", "attn_bwd_dq_f16_hd96"),
        (false, _) => ("attn_bwd_dkv_f16_hd128", "attn_bwd_dq_f16_hd128"),
        (true, 64) => ("attn_bwd_dkv_bf16_hd64", "attn_bwd_dq_bf16_hd64"),
        (true, 80) => ("attn_bwd_dkv_bf16_hd80", "attn_bwd_dq_bf16_hd80"),
        (true, 96) => ("attn_bwd_dkv_bf16_hd96", "attn_bwd_dq_bf16_hd96"),
        (true, _) => ("attn_bwd_dkv_bf16_hd128", "attn_bwd_dq_bf16_hd128"),
    };
    (if bf { "attn_bwd_delta_bf16" } else { "attn_bwd_delta_f16" }, dkv, dq)
}

/// The forward's alignment rule ([`chunk_aligned`]), for the backward's operands.
fn aligned<T: DType>(v: &View<'_, T>) -> bool {
    chunk_aligned(v.offset(), v.shape(), v.strides())
}

/// `lse` `[B, H, T_q]` laid out contiguously (axes of length 1 may have any stride).
fn contiguous(v: &View<'_, f32>) -> bool {
    let mut want = 1;
    for (&n, &s) in v.shape().iter().zip(v.strides()).rev() {
        if n > 1 && s != want {
            return false;
        }
        want *= n;
    }
    true
}

/// The operands of one call, all of checked shapes.
pub(crate) struct Operands<'v, 'a, T: DType> {
    pub q: &'v View<'a, T>,
    pub k: &'v View<'a, T>,
    pub v: &'v View<'a, T>,
    pub o: &'v View<'a, T>,
    pub d_o: &'v View<'a, T>,
    pub lse: &'v View<'a, f32>,
}

/// What [`plan`] decided for a call that takes the tensor-core path.
pub(crate) struct Plan {
    kernels: (&'static str, &'static str, &'static str),
    /// Delta (a warp per query row), dkv (a CTA per key block), dq (per query block).
    geometry: (Geometry, Geometry, Geometry),
    params: sys::tf_attn_bwd_params,
    dims: [usize; 5],
}

/// The plan of a call with shapes `[B, T_q, T_k, H, D]` (checked by the caller),
/// or `None` when the tensor-core kernels cannot take it (f32, another head
/// dimension, an operand not 16-byte aligned, a strided lse, an empty problem).
pub(crate) fn plan<T: DType>(
    dev: &Device,
    [b, t_q, t_k, h, d]: [usize; 5],
    x: &Operands<'_, '_, T>,
    scale: f32,
    causal: bool,
) -> Result<Option<Plan>> {
    let fits = std::mem::size_of::<T>() == 2
        && HEAD_DIMS.contains(&d)
        && [x.q, x.k, x.v, x.o, x.d_o].iter().all(|v| aligned(v))
        && contiguous(x.lse)
        && b * h * t_q > 0
        && t_k > 0
        && smem_bytes(d) <= dev.max_smem_per_block() as usize;
    if !fits {
        return Ok(None);
    }
    let s = |what: &str, v: &View<'_, T>| -> Result<[i64; 3]> {
        let st = v.strides();
        Ok([to_i64(OP, what, st[0])?, to_i64(OP, what, st[1])?, to_i64(OP, what, st[2])?])
    };
    let (q, k, v, o, d_o) = (s("q", x.q)?, s("k", x.k)?, s("v", x.v)?, s("o", x.o)?, s("d_o", x.d_o)?);
    let i = |what: &str, n: usize| to_i64(OP, what, n);
    let params = sys::tf_attn_bwd_params {
        q: 0,
        k: 0,
        v: 0,
        o: 0,
        d_o: 0,
        lse: 0,
        delta: 0,
        dq: 0,
        dk: 0,
        dv: 0,
        batch: i("B", b)?,
        t_q: i("T_q", t_q)?,
        t_k: i("T_k", t_k)?,
        heads: i("H", h)?,
        head_dim: i("D", d)?,
        q_sb: q[0],
        q_st: q[1],
        q_sh: q[2],
        k_sb: k[0],
        k_st: k[1],
        k_sh: k[2],
        v_sb: v[0],
        v_st: v[1],
        v_sh: v[2],
        o_sb: o[0],
        o_st: o[1],
        o_sh: o[2],
        do_sb: d_o[0],
        do_st: d_o[1],
        do_sh: d_o[2],
        scale,
        causal: i32::from(causal),
    };
    let smem = to_u32(OP, "shared memory", smem_bytes(d))?;
    let blocks = |what: &str, rows: usize| -> Result<Geometry> {
        let g = Geometry {
            grid: [to_u32(OP, what, rows.div_ceil(BLOCK))?, to_u32(OP, "B", b)?, to_u32(OP, "H", h)?],
            block: [sys::TF_ATTN_THREADS, 1, 1],
            smem,
        };
        dev.check_geometry(OP, &g)?;
        Ok(g)
    };
    let geometry = (rows_geometry(dev, OP, b * h * t_q)?, blocks("key blocks", t_k)?, blocks("query blocks", t_q)?);
    Ok(Some(Plan { kernels: kernels::<T>(d), geometry, params, dims: [b, t_q, t_k, h, d] }))
}

/// Runs a [`plan`]: dq `[B, T_q, H, D]`, dk and dv `[B, T_k, H, D]`, f32.
pub(crate) fn run<T: DType>(
    dev: &Device,
    plan: &Plan,
    x: &Operands<'_, '_, T>,
) -> Result<(Tensor<f32>, Tensor<f32>, Tensor<f32>)> {
    let [b, t_q, t_k, h, d] = plan.dims;
    let mut dq = dev.output::<f32>(&[b, t_q, h, d])?;
    let mut dk = dev.output::<f32>(&[b, t_k, h, d])?;
    let mut dv = dev.output::<f32>(&[b, t_k, h, d])?;
    let mut delta = dev.output::<f32>(&[b, h, t_q])?;
    let (qp, kp, vp, op, dop, lp) = (x.q.ptr(), x.k.ptr(), x.v.ptr(), x.o.ptr(), x.d_o.ptr(), x.lse.ptr());
    let (mut dqv, mut dkv, mut dvv, mut delv) = (dq.view_mut(), dk.view_mut(), dv.view_mut(), delta.view_mut());
    let (dqp, dkp, dvp, delp) = (dqv.ptr_mut(), dkv.ptr_mut(), dvv.ptr_mut(), delv.ptr_mut());
    let params = sys::tf_attn_bwd_params {
        q: qp.addr,
        k: kp.addr,
        v: vp.addr,
        o: op.addr,
        d_o: dop.addr,
        lse: lp.addr,
        delta: delp.addr,
        dq: dqp.addr,
        dk: dkp.addr,
        dv: dvp.addr,
        ..plan.params
    };
    let (k_delta, k_dkv, k_dq) = plan.kernels;
    let (g_delta, g_dkv, g_dq) = &plan.geometry;
    // SAFETY: plan checked q, k, v, o, d_o as [B, T, H, D] views (every element in
    // bounds) whose offsets and strides are multiples of 8 elements, lse as a
    // contiguous [B, H, T_q] f32 view, and the shared memory against the device.
    // delta, dq, dk and dv are fresh contiguous f32 tensors of the shapes the
    // kernels write: a warp of the first launch writes one delta entry, a CTA of
    // the second the dk and dv rows of its key block, of the third the dq rows of
    // its query block; the later launches read delta after the first (stream
    // order). Borrows outlive the launches.
    unsafe {
        dev.launch(OP, k_delta, g_delta, &params)?;
        dev.launch(OP, k_dkv, g_dkv, &params)?;
        dev.launch(OP, k_dq, g_dq, &params)?;
    }
    drop((qp, kp, vp, op, dop, lp, dqp, dkp, dvp, delp));
    Ok((dq, dk, dv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_matches_the_header_formula_and_fits_hopper_and_ampere() {
        for d in HEAD_DIMS {
            let s = step(d);
            assert_eq!(smem_bytes(d), 2 * BLOCK * d * 2 + 2 * (2 * s * d * 2 + 2 * s * 4));
            assert!(smem_bytes(d) <= 163 * 1024, "hd {d}: {} B above A100's opt-in limit", smem_bytes(d));
        }
    }
}
