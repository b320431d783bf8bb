//! Multi-head scaled dot-product attention, forward (kernels/attention.cu):
//! `o = softmax(scale · q·kᵀ + mask) · v` per batch and head, plus the natural
//! log-sum-exp of every query row.
//!
//! Layouts: `q` `[B, T_q, H, D]`, `k` and `v` `[B, T_k, H, D]`, `o` `[B, T_q, H, D]`
//! (strided views; the head dimension contiguous), `lse` `[B, H, T_q]` f32 (any
//! strides). Causal masking is bottom-right aligned: query `i` sees key `j` iff
//! `j ≤ i + T_k − T_q`, so one query row against a KV cache sees every key; a row
//! that sees no key gets `o = 0` and `lse = +inf`.
//!
//! Kernels: f16/bf16 on tensor cores (FlashAttention-2 structure; calls of at
//! most 16 query rows, decode, on kernels with 16-row query tiles whose warps
//! split the keys, kernels/attention_decode.cu), f32 on a SIMT path; head dims
//! 64, 80, 96, 128. For f16/bf16, views start at a multiple of 8
//! elements (16 bytes) and every stride of an axis longer than 1 is a multiple of 8
//! elements (the kernels move 16-byte chunks with cp.async).
//!
//! Split-KV (Flash-Decoding): when the query blocks of all batches and heads cannot
//! fill the GPU (decode, T_q = 1, against a long KV cache), the f16/bf16 path splits
//! each query block's K range over several blocks, which write f32 partial results
//! to a scratch buffer, and `attn_combine_*` merges them. The number of splits is
//! FlashAttention-2's heuristic ([`num_splits_heuristic`]) unless the caller
//! forces one ([`AttnOptions::num_splits`]). The partial results live in a
//! caller's [`Workspace`] of [`attention_workspace_bytes`] (or one allocated for
//! the call).
//!
//! As for every op family, [`plan`] does all validation and the launch geometry,
//! identically for CUDA and the emulator; [`attention_into`] only fills pointers
//! and launches.

use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{checked_product, to_i64, to_u32, Error, Result};
use crate::graph::DevCounter;
use crate::tensor::{non_overlapping, Tensor, View, ViewMut};
use crate::workspace::Workspace;

const OP: &str = "attention";

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by attn_fwd_*.
unsafe impl KernelParams for sys::tf_attn_params {}

/// Head dimensions with a kernel.
pub const HEAD_DIMS: [usize; 4] = [64, 80, 96, 128];

/// Options of [`attention`]. The default: no mask, scale `1/sqrt(D)`, the
/// split-KV heuristic.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AttnOptions {
    /// Bottom-right-aligned causal mask.
    pub causal: bool,
    /// Softmax scale on `q·k`; `None` = `1/sqrt(D)`. Must be finite and > 0.
    pub scale: Option<f32>,
    /// Splits of each query block's K range (split-KV): `None` lets
    /// FlashAttention-2's heuristic choose; `Some(n)` forces `n` (1..=128; more
    /// than 1 only for f16 and bf16), for tests and benchmarks. With `n > 1` the
    /// partial results go through n·B·H·T_q·(D + 1) f32 of workspace
    /// ([`attention_workspace_bytes`]).
    pub num_splits: Option<usize>,
}

/// The inputs and options of one attention call, by name: `q`, `k` and `v` are
/// views of one type and often of one shape, so passing them by position would
/// let a swap go unnoticed.
#[derive(Clone, Debug)]
pub struct AttnArgs<'a, T: DType> {
    /// Queries `[B, T_q, H, D]`.
    pub q: View<'a, T>,
    /// Keys `[B, T_k, H, D]`.
    pub k: View<'a, T>,
    /// Values `[B, T_k, H, D]`.
    pub v: View<'a, T>,
    /// Mask, scale and split-KV.
    pub opts: AttnOptions,
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Batch B.
    pub batch: usize,
    /// Query length T_q.
    pub t_q: usize,
    /// Key/value length T_k.
    pub t_k: usize,
    /// Heads H.
    pub heads: usize,
    /// Head dimension D.
    pub head_dim: usize,
}

/// What [`plan`] decided.
#[derive(Debug, Clone)]
pub struct AttnPlan {
    /// The shapes.
    pub shape: AttnShape,
    /// The kernel to launch.
    pub kernel: &'static str,
    /// Its geometry; `None` when there is nothing to compute (B, H or T_q is 0).
    pub geometry: Option<Geometry>,
    /// Splits of each query block's K range (1: no split-KV).
    pub num_splits: usize,
    /// With split-KV: the combine kernel and its geometry.
    pub combine: Option<(&'static str, Geometry)>,
    /// With split-KV: f32 elements of the partial-o and partial-lse scratch buffers.
    pub scratch: (usize, usize),
    /// Workspace bytes the call needs: the partial-o buffer, then (at the next
    /// multiple of 256 bytes) the partial-lse buffer; 0 without split-KV.
    pub workspace_bytes: usize,
    /// The softmax scale used.
    pub scale: f32,
    /// The kernel's params with every size, stride and option filled; the
    /// pointers are 0 until [`attention_into`] fills them at launch. Crate-private:
    /// the generated binding type is not part of the API.
    pub(crate) params: sys::tf_attn_params,
}

/// The kernel for storage type `T` and head dimension `d` (the one place kernel
/// names are built).
pub fn kernel_name<T: DType>(d: usize) -> Result<&'static str> {
    Ok(match (T::NAME, d) {
        ("f16", 64) => "attn_fwd_f16_hd64",
        ("f16", 80) => "attn_fwd_f16_hd80",
        ("f16", 96) => "attn_fwd_f16_hd96",
        ("f16", 128) => "attn_fwd_f16_hd128",
        ("bf16", 64) => "attn_fwd_bf16_hd64",
        ("bf16", 80) => "attn_fwd_bf16_hd80",
        ("bf16", 96) => "attn_fwd_bf16_hd96",
        ("bf16", 128) => "attn_fwd_bf16_hd128",
        ("f32", 64) => "attn_fwd_f32_hd64",
        ("f32", 80) => "attn_fwd_f32_hd80",
        ("f32", 96) => "attn_fwd_f32_hd96",
        ("f32", 128) => "attn_fwd_f32_hd128",
        _ => {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("head dimension {d} is not supported: 64, 80, 96 or 128"),
            })
        }
    })
}

/// The split-KV forward kernel and the combine kernel for `T` and `d` (f16/bf16).
fn split_kernel_names<T: DType>(d: usize) -> Option<(&'static str, &'static str)> {
    Some(match (T::NAME, d) {
        ("f16", 64) => ("attn_fwd_split_f16_hd64", "attn_combine_f16"),
        ("f16", 80) => ("attn_fwd_split_f16_hd80", "attn_combine_f16"),
        ("f16", 96) => ("attn_fwd_split_f16_hd96", "attn_combine_f16"),
        ("f16", 128) => ("attn_fwd_split_f16_hd128", "attn_combine_f16"),
        ("bf16", 64) => ("attn_fwd_split_bf16_hd64", "attn_combine_bf16"),
        ("bf16", 80) => ("attn_fwd_split_bf16_hd80", "attn_combine_bf16"),
        ("bf16", 96) => ("attn_fwd_split_bf16_hd96", "attn_combine_bf16"),
        ("bf16", 128) => ("attn_fwd_split_bf16_hd128", "attn_combine_bf16"),
        _ => return None,
    })
}

/// Whether a call of `t_q` query rows runs the 16-row decode kernels
/// (kernels/attention_decode.cu): f16 / bf16 with `t_q <= 16`.
fn is_decode<T: DType>(t_q: usize) -> bool {
    std::mem::size_of::<T>() == 2 && t_q <= sys::TF_ATTN_DECODE_ROWS as usize
}

/// The decode kernels for `T` and `d` (f16/bf16, a head dim with kernels):
/// (whole K range, one split of it).
fn decode_kernel_names<T: DType>(d: usize) -> (&'static str, &'static str) {
    match (T::NAME, d) {
        ("f16", 64) => ("attn_decode_f16_hd64", "attn_decode_split_f16_hd64"),
        ("f16", 80) => ("attn_decode_f16_hd80", "attn_decode_split_f16_hd80"),
        ("f16", 96) => ("attn_decode_f16_hd96", "attn_decode_split_f16_hd96"),
        ("f16", _) => ("attn_decode_f16_hd128", "attn_decode_split_f16_hd128"),
        ("bf16", 64) => ("attn_decode_bf16_hd64", "attn_decode_split_bf16_hd64"),
        ("bf16", 80) => ("attn_decode_bf16_hd80", "attn_decode_split_bf16_hd80"),
        ("bf16", 96) => ("attn_decode_bf16_hd96", "attn_decode_split_bf16_hd96"),
        _ => ("attn_decode_bf16_hd128", "attn_decode_split_bf16_hd128"),
    }
}

/// Query rows per block, keys per K/V block and dynamic shared memory (bytes) of
/// the kernel a call of `t_q` query rows runs: the decode kernels' (16 rows, 64
/// keys, a ring of `TF_ATTN_DECODE_STAGES_HD*` K/V stages) or [`tiles`].
pub fn tiles_for<T: DType>(d: usize, t_q: usize) -> Result<(usize, usize, usize)> {
    let prefill = tiles::<T>(d)?;
    if !is_decode::<T>(t_q) {
        return Ok(prefill);
    }
    let stages = match d {
        64 => sys::TF_ATTN_DECODE_STAGES_HD64,
        80 => sys::TF_ATTN_DECODE_STAGES_HD80,
        96 => sys::TF_ATTN_DECODE_STAGES_HD96,
        _ => sys::TF_ATTN_DECODE_STAGES_HD128,
    } as usize;
    let bn = sys::TF_ATTN_DECODE_BLOCK_N as usize;
    Ok((sys::TF_ATTN_DECODE_ROWS as usize, bn, stages * 2 * bn * d * 2))
}

/// FlashAttention-2's `num_splits_heuristic` (flash_api.cpp): no split when the
/// blocks already fill 80% of the SMs; otherwise the fewest splits whose wave
/// efficiency is within 85% of the best, among split counts that change the K
/// blocks per split.
pub fn num_splits_heuristic(blocks: usize, sm_count: usize, n_blocks: usize, max_splits: usize) -> usize {
    if blocks.saturating_mul(5) >= sm_count.saturating_mul(4) || sm_count == 0 {
        return 1;
    }
    let max_splits = max_splits.min(sm_count).min(n_blocks).max(1);
    let eligible = |s: usize| s == 1 || n_blocks.div_ceil(s) != n_blocks.div_ceil(s - 1);
    let efficiency = |s: usize| {
        let waves = (blocks * s) as f64 / sm_count as f64;
        waves / waves.ceil()
    };
    let best = (1..=max_splits).filter(|&s| eligible(s)).map(efficiency).fold(0.0f64, f64::max);
    (1..=max_splits).find(|&s| eligible(s) && efficiency(s) >= 0.85 * best).unwrap_or(1)
}

/// Query rows per block, keys per K/V tile and dynamic shared memory (bytes) of
/// the kernel for `T` and head dimension `d` (tiles from tf_kernels.h; the
/// formulas are the kernels' traits); for f16/bf16 calls of at most 16 query
/// rows the decode kernels run instead ([`tiles_for`]).
pub fn tiles<T: DType>(d: usize) -> Result<(usize, usize, usize)> {
    kernel_name::<T>(d)?;
    Ok(if T::NAME == "f32" {
        let (bm, bn) = (sys::TF_ATTN_F32_BLOCK_M as usize, sys::TF_ATTN_F32_BLOCK_N as usize);
        let floats = bm * (d + 1) + bn * (d + 1) + bn * d + bm * (bn + 1) + 3 * bm;
        (bm, bn, 4 * floats)
    } else {
        let bm = sys::TF_ATTN_BLOCK_M as usize;
        let bn = match d {
            64 => sys::TF_ATTN_BLOCK_N_HD64,
            80 => sys::TF_ATTN_BLOCK_N_HD80,
            96 => sys::TF_ATTN_BLOCK_N_HD96,
            _ => sys::TF_ATTN_BLOCK_N_HD128,
        } as usize;
        (bm, bn, (bm + 2 * bn) * d * 2)
    })
}

/// A 4-D 16-bit view's offset and the strides of its first three axes (those
/// longer than 1) are multiples of 8 elements: 16-byte chunks for cp.async (tensor
/// buffers are 256-byte aligned). The tensor-core attention kernels' rule, forward
/// and backward.
pub(crate) fn chunk_aligned(offset: usize, shape: &[usize], strides: &[usize]) -> bool {
    offset % 8 == 0 && shape.iter().zip(strides).take(3).all(|(&n, &s)| n <= 1 || s % 8 == 0)
}

/// For f16/bf16: [`chunk_aligned`], else an alignment error naming the view.
fn check_aligned<T: DType>(what: &str, offset: usize, shape: &[usize], strides: &[usize]) -> Result<()> {
    if std::mem::size_of::<T>() != 2 {
        return Ok(());
    }
    if !chunk_aligned(offset, shape, strides) {
        return Err(Error::Alignment {
            op: OP,
            msg: format!(
                "{what} ({}) starts at element offset {offset} with strides {strides:?} for shape {shape:?}: \
                 the {} kernels need the offset and the batch, sequence and head strides to be multiples \
                 of 8 elements (16 bytes)",
                T::NAME,
                T::NAME
            ),
        });
    }
    Ok(())
}

/// Validates every input and output and computes the launch: shapes (`q`
/// `[B, T_q, H, D]`, `k` = `v` `[B, T_k, H, D]`, `o` like `q`, `lse` `[B, H, T_q]`),
/// head dimension, contiguity and alignment, non-overlapping outputs, scale, grid
/// limits, shared memory, and the split-KV decision (forced by
/// [`AttnOptions::num_splits`], else the heuristic).
pub fn plan<T: DType>(
    dev: &Device,
    args: &AttnArgs<'_, T>,
    o: &ViewMut<'_, T>,
    lse: &ViewMut<'_, f32>,
) -> Result<AttnPlan> {
    let AttnArgs { q, k, v, opts } = args;
    for d in [q.device(), k.device(), v.device(), o.device(), lse.device()] {
        if !d.same(dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
    }
    let shape_err = |msg: String| Error::Shape { op: OP, msg };
    let (&[b, t_q, h, d], &[kb, t_k, kh, kd]) = (q.shape(), k.shape()) else {
        return Err(shape_err(format!("q and k must be 4-D [B, T, H, D], got q {:?}, k {:?}", q.shape(), k.shape())));
    };
    if v.shape() != k.shape() {
        return Err(shape_err(format!(
            "k is {:?} but v is {:?}: they must have the same shape [B, T_k, H, D]",
            k.shape(),
            v.shape()
        )));
    }
    if (kb, kh, kd) != (b, h, d) {
        return Err(shape_err(format!("q is {:?} but k is {:?}: B, H and D must agree", q.shape(), k.shape())));
    }
    if o.shape() != q.shape() {
        return Err(shape_err(format!("o is {:?} but q is {:?}: they must match", o.shape(), q.shape())));
    }
    if lse.shape() != [b, h, t_q] {
        return Err(shape_err(format!("lse is {:?} but [B, H, T_q] = [{b}, {h}, {t_q}]", lse.shape())));
    }
    let decode = is_decode::<T>(t_q);
    let prefill = kernel_name::<T>(d)?; // also refuses a head dimension without kernels
    let kernel = if decode { decode_kernel_names::<T>(d).0 } else { prefill };
    for (what, c) in [
        ("q", q.inner_contiguous()),
        ("k", k.inner_contiguous()),
        ("v", v.inner_contiguous()),
        ("o", o.inner_contiguous()),
    ] {
        if !c {
            return Err(shape_err(format!("{what}: the head dimension must be contiguous (stride 1)")));
        }
    }
    check_aligned::<T>("q", q.offset(), q.shape(), q.strides())?;
    check_aligned::<T>("k", k.offset(), k.shape(), k.strides())?;
    check_aligned::<T>("v", v.offset(), v.shape(), v.strides())?;
    check_aligned::<T>("o", o.offset(), o.shape(), o.strides())?;
    if !non_overlapping(o.shape(), o.strides()) || !non_overlapping(lse.shape(), lse.strides()) {
        return Err(shape_err(format!(
            "outputs may not overlap themselves: o strides {:?} for {:?}, lse strides {:?} for {:?}",
            o.strides(),
            o.shape(),
            lse.strides(),
            lse.shape()
        )));
    }
    let scale = match opts.scale {
        None => 1.0 / (d as f32).sqrt(),
        Some(s) if s.is_finite() && s > 0.0 => s,
        Some(s) => {
            return Err(Error::InvalidArgument { op: OP, msg: format!("scale must be finite and > 0, got {s}") })
        }
    };
    for (what, n) in [("B", b), ("H", h)] {
        if n > 65535 {
            return Err(Error::SizeOverflow { op: OP, msg: format!("{what} = {n} exceeds 65535 (a grid dimension)") });
        }
    }
    if t_k > i32::MAX as usize || t_q > i32::MAX as usize {
        return Err(Error::SizeOverflow {
            op: OP,
            msg: format!("T_q = {t_q}, T_k = {t_k}: sequence lengths are at most 2^31 - 1"),
        });
    }
    let (bm, _, smem) = tiles_for::<T>(d, t_q)?;
    let m_blocks = t_q.div_ceil(bm);
    let splits = choose_splits::<T>(dev, b, t_q, t_k, h, d, opts.num_splits)?;
    let i = |what: &str, x: usize| to_i64(OP, what, x);
    let (qs, ks, vs, os, ls) = (q.strides(), k.strides(), v.strides(), o.strides(), lse.strides());
    let params = sys::tf_attn_params {
        q: 0,
        k: 0,
        v: 0,
        o: 0,
        lse: 0,
        q_stride_b: i("q stride", qs[0])?,
        q_stride_t: i("q stride", qs[1])?,
        q_stride_h: i("q stride", qs[2])?,
        k_stride_b: i("k stride", ks[0])?,
        k_stride_t: i("k stride", ks[1])?,
        k_stride_h: i("k stride", ks[2])?,
        v_stride_b: i("v stride", vs[0])?,
        v_stride_t: i("v stride", vs[1])?,
        v_stride_h: i("v stride", vs[2])?,
        o_stride_b: i("o stride", os[0])?,
        o_stride_t: i("o stride", os[1])?,
        o_stride_h: i("o stride", os[2])?,
        lse_stride_b: i("lse stride", ls[0])?,
        lse_stride_h: i("lse stride", ls[1])?,
        lse_stride_t: i("lse stride", ls[2])?,
        t_q: i("T_q", t_q)?,
        t_k: i("T_k", t_k)?,
        batch: b as i32,
        heads: h as i32,
        head_dim: d as i32,
        causal: i32::from(opts.causal),
        scale,
        num_splits: splits as i32,
        o_accum: 0,
        lse_accum: 0,
        t_k_dev: 0,
    };
    let empty = b == 0 || h == 0 || t_q == 0;
    let split_names =
        split_kernel_names::<T>(d).map(|(fwd, comb)| (if decode { decode_kernel_names::<T>(d).1 } else { fwd }, comb));
    let (kernel, combine, scratch) = match split_names {
        Some((fwd, comb)) if splits > 1 && !empty => {
            let rows = checked_product(OP, &[b, h, t_q])?;
            let lse_n = checked_product(OP, &[splits, rows])?;
            let o_n = checked_product(OP, &[lse_n, d])?;
            to_i64(OP, "split-KV scratch elements", o_n)?;
            let g = Geometry {
                grid: [to_u32(OP, "combine blocks", rows.div_ceil(sys::TF_ATTN_COMBINE_ROWS as usize))?, 1, 1],
                block: [sys::TF_ATTN_THREADS, 1, 1],
                smem: 0,
            };
            dev.check_geometry(OP, &g)?;
            (fwd, Some((comb, g)), (o_n, lse_n))
        }
        _ => (kernel, None, (0, 0)),
    };
    let workspace_bytes = scratch_layout(scratch)?.1;
    let geometry = if empty {
        None
    } else {
        let blocks_x = m_blocks
            .checked_mul(splits)
            .ok_or_else(|| Error::SizeOverflow { op: OP, msg: format!("{m_blocks} query blocks x {splits} splits") })?;
        let g = Geometry {
            grid: [to_u32(OP, "query blocks x splits", blocks_x)?, b as u32, h as u32],
            block: [sys::TF_ATTN_THREADS, 1, 1],
            smem: to_u32(OP, "shared memory", smem)?,
        };
        dev.check_geometry(OP, &g)?;
        Some(g)
    };
    Ok(AttnPlan {
        shape: AttnShape { batch: b, t_q, t_k, heads: h, head_dim: d },
        kernel,
        geometry,
        num_splits: splits,
        combine,
        scratch,
        workspace_bytes,
        scale,
        params,
    })
}

/// The number of splits of each query block's K range: `forced` (checked), else
/// the heuristic for f16/bf16 and 1 for f32.
fn choose_splits<T: DType>(
    dev: &Device,
    b: usize,
    t_q: usize,
    t_k: usize,
    h: usize,
    d: usize,
    forced: Option<usize>,
) -> Result<usize> {
    let (bm, bn, _) = tiles_for::<T>(d, t_q)?;
    let max_splits = sys::TF_ATTN_MAX_SPLITS as usize;
    Ok(match (forced, split_kernel_names::<T>(d)) {
        (Some(n), _) if n == 0 || n > max_splits => {
            return Err(Error::InvalidArgument { op: OP, msg: format!("num_splits = {n}: between 1 and {max_splits}") })
        }
        (Some(n), None) if n > 1 => {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("num_splits = {n}: split-KV exists for f16 and bf16 only, not {}", T::NAME),
            })
        }
        (Some(n), _) => n,
        (None, None) => 1,
        (None, Some(_)) => num_splits_heuristic(
            t_q.div_ceil(bm).saturating_mul(b).saturating_mul(h),
            dev.sm_count() as usize,
            t_k.div_ceil(bn),
            max_splits,
        ),
    })
}

/// Byte offset of the partial-lse buffer and total workspace bytes for scratch
/// of (o, lse) f32 elements.
fn scratch_layout((o_n, lse_n): (usize, usize)) -> Result<(usize, usize)> {
    if o_n == 0 && lse_n == 0 {
        return Ok((0, 0));
    }
    let overflow = || Error::SizeOverflow { op: OP, msg: format!("split-KV scratch of {o_n} + {lse_n} f32") };
    let lse_off = o_n.checked_mul(4).and_then(|x| x.checked_next_multiple_of(256)).ok_or_else(overflow)?;
    let total = lse_n.checked_mul(4).and_then(|x| x.checked_add(lse_off)).ok_or_else(overflow)?;
    to_i64(OP, "workspace bytes", total)?;
    Ok((lse_off, total))
}

/// Workspace bytes of one attention call of storage type `T` with `shape` and
/// `opts` on `dev` (0 unless it splits the K range: f16/bf16 with few query
/// blocks, see [`num_splits_heuristic`]); the size a [`Workspace`] passed to
/// [`attention_into`] needs. Errors as [`attention_into`] for a head dimension
/// without a kernel or a bad `num_splits`.
///
/// ```
/// use tf_host::ops::attention::{attention_workspace_bytes, AttnShape};
/// use tf_host::{attention_into, bf16, AttnArgs, AttnOptions, Device, Workspace};
///
/// # fn main() -> tf_host::Result<()> {
/// let dev = Device::emulator();
/// // Decode: one query row against 512 cached positions, 4 heads of 64.
/// let shape = AttnShape { batch: 1, t_q: 1, t_k: 512, heads: 4, head_dim: 64 };
/// let opts = AttnOptions { causal: true, ..Default::default() };
/// let bytes = attention_workspace_bytes::<bf16>(&dev, &shape, &opts)?;
/// assert!(bytes > 0, "few query blocks: the K range is split");
/// let mut ws = Workspace::new(&dev, bytes)?; // kept and reused by every call
///
/// let q = dev.upload_f32::<bf16>(&[0.5; 4 * 64], &[1, 1, 4, 64])?;
/// let kv = dev.upload_f32::<bf16>(&[0.25; 512 * 4 * 64], &[1, 512, 4, 64])?;
/// let mut o = dev.zeros::<bf16>(&[1, 1, 4, 64])?;
/// let mut lse = dev.zeros::<f32>(&[1, 4, 1])?;
/// let args = AttnArgs { q: q.view(), k: kv.view(), v: kv.view(), opts };
/// let before = dev.allocations();
/// attention_into(&dev, &args, &mut o.view_mut(), &mut lse.view_mut(), Some(&mut ws))?;
/// assert_eq!(dev.allocations(), before, "nothing allocated");
/// assert!(o.to_f32_vec()?.iter().all(|&x| x == 0.25)); // every key alike: o = v
///
/// // A workspace too small is refused, naming both sizes.
/// let mut small = Workspace::new(&dev, bytes - 1)?;
/// let e = attention_into(&dev, &args, &mut o.view_mut(), &mut lse.view_mut(), Some(&mut small)).unwrap_err();
/// assert!(e.to_string().contains(&format!("{} bytes", bytes - 1)), "{e}");
/// # Ok(()) }
/// ```
pub fn attention_workspace_bytes<T: DType>(dev: &Device, shape: &AttnShape, opts: &AttnOptions) -> Result<usize> {
    let AttnShape { batch: b, t_q, t_k, heads: h, head_dim: d } = *shape;
    kernel_name::<T>(d)?;
    let splits = choose_splits::<T>(dev, b, t_q, t_k, h, d, opts.num_splits)?;
    if splits <= 1 || b == 0 || h == 0 || t_q == 0 {
        return Ok(0);
    }
    let lse_n = checked_product(OP, &[splits, b, h, t_q])?;
    let o_n = checked_product(OP, &[lse_n, d])?;
    Ok(scratch_layout((o_n, lse_n))?.1)
}

/// The workspace size of the heuristic's largest split count (no forced count)
/// over every `t_k <= t_k_max`, for `b`, `t_q`, `h`, `d`: enough for each such
/// call. The heuristic sees `t_k` only through its number of K blocks, so this
/// tries each block count once (a few thousand steps for long caches: callers
/// keep the result).
pub(crate) fn workspace_bytes_bound<T: DType>(
    dev: &Device,
    b: usize,
    t_q: usize,
    t_k_max: usize,
    h: usize,
    d: usize,
) -> Result<usize> {
    if split_kernel_names::<T>(d).is_none() || b == 0 || h == 0 || t_q == 0 {
        return Ok(0);
    }
    let (bm, bn, _) = tiles_for::<T>(d, t_q)?;
    let blocks = t_q.div_ceil(bm).saturating_mul(b).saturating_mul(h);
    let sm = dev.sm_count() as usize;
    let max_splits = sys::TF_ATTN_MAX_SPLITS as usize;
    let most = (1..=t_k_max.div_ceil(bn)).map(|n| num_splits_heuristic(blocks, sm, n, max_splits)).max().unwrap_or(1);
    if most <= 1 {
        return Ok(0);
    }
    let lse_n = checked_product(OP, &[most, b, h, t_q])?;
    let o_n = checked_product(OP, &[lse_n, d])?;
    Ok(scratch_layout((o_n, lse_n))?.1)
}

/// Attention into caller-given outputs: `o` `[B, T_q, H, D]` (storage type) and
/// `lse` `[B, H, T_q]` (f32, natural log; `+inf` for a row that sees no key).
/// The split-KV scratch comes from `workspace` (at least
/// [`attention_workspace_bytes`]; a smaller one is refused with
/// `Error::InvalidArgument` naming both sizes) or, without one, is allocated for
/// the call when the K range is split.
pub fn attention_into<T: DType>(
    dev: &Device,
    args: &AttnArgs<'_, T>,
    o: &mut ViewMut<'_, T>,
    lse: &mut ViewMut<'_, f32>,
    workspace: Option<&mut Workspace>,
) -> Result<()> {
    attention_into_at(dev, args, o, lse, workspace, None)
}

/// [`attention_into`] with the key length read at run time from `t_k`
/// (a captured decode step: k and v are the whole cache, `[B, capacity, H, D]`,
/// and the counter holds how many of its positions are filled, at most
/// `capacity`). Split-KV, when chosen, is chosen for the capacity. Only the
/// kernels that read the counter take one: f32, and f16/bf16 with at most 16
/// query rows.
pub(crate) fn attention_into_at<T: DType>(
    dev: &Device,
    args: &AttnArgs<'_, T>,
    o: &mut ViewMut<'_, T>,
    lse: &mut ViewMut<'_, f32>,
    workspace: Option<&mut Workspace>,
    t_k: Option<DevCounter>,
) -> Result<()> {
    let mut plan = plan(dev, args, o, lse)?;
    if let Some(c) = t_k {
        if c.max != plan.shape.t_k || !(T::CODE == sys::TF_DTYPE_F32 || is_decode::<T>(plan.shape.t_q)) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "a key length read at run time needs k and v of its capacity ({} positions, got {}) and a \
                     kernel that reads it (f32, or at most 16 query rows; {} has {})",
                    c.max,
                    plan.shape.t_k,
                    T::NAME,
                    plan.shape.t_q
                ),
            });
        }
        plan.params.t_k_dev = c.addr;
    }
    if let Some(ws) = &workspace {
        if !ws.device().same(dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
        if ws.bytes() < plan.workspace_bytes {
            let AttnShape { batch, t_q, t_k, heads, head_dim } = plan.shape;
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "workspace has {} bytes; B = {batch}, T_q = {t_q}, T_k = {t_k}, H = {heads}, D = {head_dim} in {} \
                     with {} splits need {} (attention_workspace_bytes)",
                    ws.bytes(),
                    T::NAME,
                    plan.num_splits,
                    plan.workspace_bytes
                ),
            });
        }
    }
    let Some(geom) = plan.geometry else {
        return Ok(());
    };
    let AttnArgs { q, k, v, .. } = args;
    let (qp, kp, vp) = (q.ptr(), k.ptr(), v.ptr());
    let op = o.ptr_mut();
    let lp = lse.ptr_mut();
    if std::mem::size_of::<T>() == 2 {
        // Tensor buffers are 256-byte aligned, so plan's offset check implies this;
        // kept as a guard for buffers that came from elsewhere (interop).
        for (what, a) in [("q", qp.addr), ("k", kp.addr), ("v", vp.addr), ("o", op.addr)] {
            if a % 16 != 0 {
                return Err(Error::Alignment {
                    op: OP,
                    msg: format!("{what} starts at address {a:#x}, which is not 16-byte aligned"),
                });
            }
        }
    }
    let mut owned;
    let ws: Option<&mut Workspace> = match (plan.combine, workspace) {
        (None, _) => None,
        (Some(_), Some(w)) => Some(w),
        (Some(_), None) => {
            owned = Workspace::new(dev, plan.workspace_bytes)?;
            Some(&mut owned)
        }
    };
    let lse_off = scratch_layout(plan.scratch)?.0 as u64;
    let wp = ws.map(|w| w.ptr_mut());
    let params = sys::tf_attn_params {
        q: qp.addr,
        k: kp.addr,
        v: vp.addr,
        o: op.addr,
        lse: lp.addr,
        o_accum: wp.as_ref().map_or(0, |p| p.addr),
        lse_accum: wp.as_ref().map_or(0, |p| p.addr + lse_off),
        ..plan.params
    };
    // SAFETY: plan() checked that q, k, v, o and lse are views of this device with
    // the shapes [B,T_q,H,D], [B,T_k,H,D] x2, [B,T_q,H,D], [B,H,T_q], so every
    // element the kernel addresses through the pointers and strides in `params`
    // lies inside its tensor; the head dimension is contiguous, the 16-bit views
    // are 16-byte aligned with strides of 8 elements, the outputs do not overlap
    // themselves (and cannot alias the inputs: they are borrowed mutably);
    // the grid and shared memory match the kernel's traits. A key-length counter
    // is one int32 on this device (DevCounter's contract), clamped by the kernel
    // to [0, T_k], the capacity of k and v. With split-KV the
    // workspace (checked above to hold plan.workspace_bytes, 256-byte aligned)
    // holds num_splits·B·H·T_q·D f32 at o_accum and, from the 256-byte boundary
    // after them, num_splits·B·H·T_q f32 at lse_accum: the extents plan()
    // computed and the kernels index. The views, the workspace and the pointer
    // guards outlive both launch calls.
    unsafe { dev.launch(OP, plan.kernel, &geom, &params) }?;
    if let Some((combine, cg)) = plan.combine {
        // SAFETY: as above; the combine kernel reads the scratch buffers written by
        // the launch before it on the same stream, and writes o and lse.
        unsafe { dev.launch(OP, combine, &cg, &params) }?;
    }
    drop((qp, kp, vp, op, lp, wp));
    Ok(())
}

/// Attention with freshly allocated outputs: `(o [B, T_q, H, D], lse [B, H, T_q])`
/// (and, with split-KV, a workspace for the call).
///
/// ```
/// use tf_host::{attention, AttnArgs, AttnOptions, Device};
///
/// # fn main() -> tf_host::Result<()> {
/// let dev = Device::emulator();
/// let shape = [1, 5, 2, 64]; // [B, T, H, D]
/// let n: usize = shape.iter().product();
/// let host = |s: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7 + s) % 23) as f32 / 11.0 - 1.0).collect() };
/// let (q, k, v) = (host(1), host(2), host(3));
/// let (qt, kt, vt) = (dev.upload(&q, &shape)?, dev.upload(&k, &shape)?, dev.upload(&v, &shape)?);
/// let opts = AttnOptions { causal: true, ..Default::default() };
/// let (o, lse) = attention(&dev, &AttnArgs { q: qt.view(), k: kt.view(), v: vt.view(), opts })?;
/// assert_eq!((o.shape(), lse.shape()), (&shape[..], &[1, 2, 5][..]));
///
/// // tf-ref computes the same in f64.
/// let four = |x| tf_ref::Tensor4Ref::new(x, shape);
/// let want = tf_ref::attention(four(&q)?, four(&k)?, four(&v)?, true, None)?;
/// let max_err = |a: Vec<f32>, b: &[f64]| a.iter().zip(b).map(|(x, y)| (f64::from(*x) - y).abs()).fold(0.0, f64::max);
/// assert!(max_err(o.to_vec()?, &want.o) < 1e-5);
/// assert!(max_err(lse.to_vec()?, &want.lse) < 1e-5);
/// // Causal: the first query sees only the first key, so it gets v's first row.
/// assert!(max_err(o.to_vec()?[..64].to_vec(), &v[..64].iter().map(|&x| f64::from(x)).collect::<Vec<_>>()) < 1e-6);
/// # Ok(()) }
/// ```
pub fn attention<T: DType>(dev: &Device, args: &AttnArgs<'_, T>) -> Result<(Tensor<T>, Tensor<f32>)> {
    let &[b, t_q, h, d] = args.q.shape() else {
        return Err(Error::Shape { op: OP, msg: format!("q must be 4-D [B, T_q, H, D], got {:?}", args.q.shape()) });
    };
    kernel_name::<T>(d)?;
    let mut o: Tensor<T> = dev.output(&[b, t_q, h, d])?;
    let mut lse: Tensor<f32> = dev.output(&[b, h, t_q])?;
    attention_into(dev, args, &mut o.view_mut(), &mut lse.view_mut(), None)?;
    Ok((o, lse))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_count_from_memory_only_where_a_kernel_reads_it() {
        // Refused before anything launches: k and v shorter than the counter's
        // range, and a 16-bit call of 17 query rows (the 128-row kernel does not
        // read the counter). The counter's address is never read here.
        let dev = Device::emulator();
        let c = |max| Some(DevCounter { addr: 64, max });
        let run = |t_q: usize, t_k: usize, counter| {
            let q = dev.zeros::<half::bf16>(&[1, t_q, 1, 64]).unwrap();
            let k = dev.zeros::<half::bf16>(&[1, t_k, 1, 64]).unwrap();
            let mut o = dev.zeros::<half::bf16>(&[1, t_q, 1, 64]).unwrap();
            let mut lse = dev.zeros::<f32>(&[1, 1, t_q]).unwrap();
            let args = AttnArgs { q: q.view(), k: k.view(), v: k.view(), opts: AttnOptions::default() };
            attention_into_at(&dev, &args, &mut o.view_mut(), &mut lse.view_mut(), None, counter)
        };
        for (t_q, t_k, max) in [(1, 8, 9), (17, 8, 8)] {
            let e = run(t_q, t_k, c(max)).unwrap_err().to_string();
            assert!(e.contains("read at run time"), "{e}");
        }
        run(17, 8, None).unwrap();
    }

    #[test]
    fn overlap_detection() {
        assert!(non_overlapping(&[2, 3, 4, 64], &[768, 256, 64, 1]));
        assert!(non_overlapping(&[2, 3, 4, 64], &[768, 64, 192, 1]));
        assert!(!non_overlapping(&[2, 3, 4, 64], &[768, 256, 32, 1]));
        assert!(non_overlapping(&[1, 5, 1, 64], &[0, 64, 7, 1]));
        assert!(non_overlapping(&[1, 0, 2, 64], &[0, 128, 64, 1]));
    }

    #[test]
    fn the_workspace_bound_covers_every_cache_length() {
        let dev = Device::emulator();
        for (h, t_q) in [(2, 1), (2, 3), (4, 70), (64, 1), (200, 1)] {
            let bound = workspace_bytes_bound::<half::bf16>(&dev, 1, t_q, 600, h, 64).unwrap();
            let mut most = 0;
            for t_k in 1..=600 {
                let shape = AttnShape { batch: 1, t_q, t_k, heads: h, head_dim: 64 };
                let need = attention_workspace_bytes::<half::bf16>(&dev, &shape, &AttnOptions::default()).unwrap();
                assert!(need <= bound, "h {h}, t_q {t_q}, t_k {t_k}: {need} > {bound}");
                most = most.max(need);
            }
            assert_eq!(most, bound, "h {h}, t_q {t_q}: the bound is a size some call needs");
        }
        assert_eq!(workspace_bytes_bound::<f32>(&dev, 1, 1, 600, 2, 64).unwrap(), 0, "no split-KV in f32");
    }

    #[test]
    fn decode_tiles_fit_two_ctas_an_sm_on_h100() {
        for d in HEAD_DIMS {
            let (bm, bn, smem) = tiles_for::<half::bf16>(d, 16).unwrap();
            assert_eq!((bm, bn), (16, 64));
            assert!(smem <= 113 * 1024, "hd {d}: {smem} B");
            assert_eq!(tiles_for::<half::bf16>(d, 17).unwrap(), tiles::<half::bf16>(d).unwrap());
            assert_eq!(tiles_for::<f32>(d, 1).unwrap(), tiles::<f32>(d).unwrap());
        }
    }

    #[test]
    fn tiles_fit_48_kb() {
        for d in HEAD_DIMS {
            assert!(tiles::<f32>(d).unwrap().2 <= 48 * 1024);
            assert!(tiles::<half::f16>(d).unwrap().2 <= 48 * 1024);
        }
        assert!(kernel_name::<f32>(72).is_err());
    }
}
