//! The rest of the TokenFormer block (kernels/block.cu): layer norm, partial
//! rotary embedding (GPT-NeoX `rotate_half`), residual add, embedding gather.
//!
//! Each op has one `*_plan` that does ALL validation and the launch geometry,
//! the same for CUDA and the emulator; the `*_into` functions only gather
//! pointers and launch. Every tensor is 2-D `[rows, cols]` with contiguous rows
//! (any row stride, so a column block of a fused buffer can be passed).

use std::f64::consts::TAU;

use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i32, to_i64, to_u32, Error, Result};
use crate::graph::DevCounter;
use crate::tensor::{check_disjoint, View, ViewMut};

/// Threads per block of every kernel of block.cu (their `__launch_bounds__`).
const THREADS: u32 = 256;
/// Rows per block of the warp-per-row kernels (layer norm, add, embedding).
const ROWS_PER_BLOCK: usize = THREADS as usize / 32;
/// The grid is capped at this many blocks per SM; grid-stride loops do the rest.
const BLOCKS_PER_SM: u64 = 16;
/// Most rotated pairs per head (`TF_ROTARY_MAX_PAIRS`): the frequency tables
/// travel inside the params struct.
const MAX_PAIRS: usize = sys::TF_ROTARY_MAX_PAIRS as usize;
/// Positions must stay below 2^24 (`TF_ROTARY_MAX_POS`): exact integers in f32.
const MAX_POS: usize = sys::TF_ROTARY_MAX_POS as usize;

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by layer_norm_*.
unsafe impl KernelParams for sys::tf_layer_norm_params {}
// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by rotary_*.
unsafe impl KernelParams for sys::tf_rotary_params {}
// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by residual_add_*.
unsafe impl KernelParams for sys::tf_residual_add_params {}
// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by embedding_*.
unsafe impl KernelParams for sys::tf_embedding_params {}

/// The kernels of block.cu, one family per entry, indexed by `tf_dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    LayerNorm,
    Rotary,
    ResidualAdd,
    Embedding,
}

/// The one place kernel names are built: `<op>_<dtype>`.
fn kernel_name<T: DType>(k: Kernel) -> &'static str {
    let names: [&'static str; 3] = match k {
        Kernel::LayerNorm => ["layer_norm_f32", "layer_norm_f16", "layer_norm_bf16"],
        Kernel::Rotary => ["rotary_f32", "rotary_f16", "rotary_bf16"],
        Kernel::ResidualAdd => ["residual_add_f32", "residual_add_f16", "residual_add_bf16"],
        Kernel::Embedding => ["embedding_f32", "embedding_f16", "embedding_bf16"],
    };
    match T::CODE {
        sys::TF_DTYPE_F32 => names[0],
        sys::TF_DTYPE_F16 => names[1],
        _ => names[2],
    }
}

/// `[rows, cols]` of a 2-D view with contiguous rows, or an error naming it.
fn dims2(
    op: &'static str,
    what: &str,
    shape: &[usize],
    inner_contiguous: bool,
    strides: &[usize],
) -> Result<[usize; 2]> {
    let &[r, c] = shape else {
        return Err(Error::Shape { op, msg: format!("{what} must be 2-D, got shape {shape:?}") });
    };
    if !inner_contiguous {
        return Err(Error::Shape { op, msg: format!("{what} rows must be contiguous, strides {strides:?}") });
    }
    Ok([r, c])
}

fn dims_of<T: DType>(op: &'static str, what: &str, v: &View<'_, T>) -> Result<[usize; 2]> {
    dims2(op, what, v.shape(), v.inner_contiguous(), v.strides())
}

/// As [`dims_of`], for an output: also refused if it overlaps itself.
fn dims_of_mut<T: DType>(op: &'static str, what: &str, v: &ViewMut<'_, T>) -> Result<[usize; 2]> {
    let dims = dims2(op, what, v.shape(), v.inner_contiguous(), v.strides())?;
    check_disjoint(op, what, v)?;
    Ok(dims)
}

/// Row stride of a 2-D view, as the kernels' i64.
pub(crate) fn row_stride(op: &'static str, what: &str, strides: &[usize]) -> Result<i64> {
    to_i64(op, what, strides[0])
}

/// A warp per row, 8 rows per block, capped at BLOCKS_PER_SM blocks per SM.
pub(crate) fn rows_geometry(dev: &Device, op: &'static str, rows: usize) -> Result<Geometry> {
    let want = (rows.div_ceil(ROWS_PER_BLOCK) as u64).max(1);
    let cap = u64::from(dev.sm_count()).max(1) * BLOCKS_PER_SM;
    Ok(Geometry { grid: [to_u32(op, "blocks", want.min(cap) as usize)?, 1, 1], block: [THREADS, 1, 1], smem: 0 })
}

// ------------------------------------------------------------------ layer norm

const LN: &str = "layer_norm";

/// What [`layer_norm_plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerNormPlan {
    /// Rows.
    pub t: usize,
    /// Columns (normalised length).
    pub d: usize,
    /// Launch geometry: one warp per row.
    pub geometry: Geometry,
}

/// The input and parameters of one layer norm, by name.
#[derive(Clone, Debug)]
pub struct LayerNormArgs<'a, T: DType> {
    /// The rows to normalise, `[t, d]`.
    pub x: View<'a, T>,
    /// Per-column scale `[d]`, or none (1).
    pub weight: Option<View<'a, T>>,
    /// Per-column shift `[d]`, or none (0).
    pub bias: Option<View<'a, T>>,
    /// Added to the variance; finite and >= 0 (the model's is 1e-5).
    pub eps: f32,
}

/// Validates x and y `[t, d]` (same shape, d >= 1), weight and bias `[d]` when
/// given, eps finite and >= 0; returns the geometry.
pub fn layer_norm_plan<T: DType>(
    dev: &Device,
    args: &LayerNormArgs<'_, T>,
    y: &ViewMut<'_, T>,
) -> Result<LayerNormPlan> {
    if !y.device().same(dev) {
        return Err(Error::DeviceMismatch { op: LN });
    }
    let [t, d] = layer_norm_check(LN, dev, args)?;
    let [yt, yd] = dims_of_mut(LN, "y", y)?;
    if [yt, yd] != [t, d] {
        return Err(Error::Shape { op: LN, msg: format!("x is [{t}, {d}] but y is [{yt}, {yd}]") });
    }
    Ok(LayerNormPlan { t, d, geometry: rows_geometry(dev, LN, t)? })
}

/// The checks of a layer norm's input and parameters (shared with the backward):
/// x 2-D with contiguous rows and d >= 1 (below 2^24), weight and bias `[d]` and
/// contiguous when given, eps finite and >= 0, all on `dev`. Returns `[t, d]`.
pub(crate) fn layer_norm_check<T: DType>(
    op: &'static str,
    dev: &Device,
    args: &LayerNormArgs<'_, T>,
) -> Result<[usize; 2]> {
    let LayerNormArgs { x, weight, bias, eps } = args;
    let (weight, bias, eps) = (weight.as_ref(), bias.as_ref(), *eps);
    let devices = [Some(x.device()), weight.map(|w| w.device()), bias.map(|b| b.device())];
    if devices.into_iter().flatten().any(|d| !d.same(dev)) {
        return Err(Error::DeviceMismatch { op });
    }
    let [t, d] = dims_of(op, "x", x)?;
    if d == 0 {
        return Err(Error::Shape { op, msg: format!("x is [{t}, 0]: a row needs at least one element") });
    }
    for (what, v) in [("weight", weight), ("bias", bias)] {
        if let Some(v) = v {
            if v.shape() != [d] {
                return Err(Error::Shape {
                    op,
                    msg: format!("x is [{t}, {d}] but {what} is {:?} (expected [{d}])", v.shape()),
                });
            }
            if !v.inner_contiguous() {
                return Err(Error::Shape { op, msg: format!("{what} must be contiguous, strides {:?}", v.strides()) });
            }
        }
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidArgument { op, msg: format!("eps must be finite and >= 0, got {eps}") });
    }
    if d >= 1 << 24 {
        return Err(Error::SizeOverflow {
            op,
            msg: format!("d = {d}: rows of 2^24 elements or more are not supported (f32 count)"),
        });
    }
    Ok([t, d])
}

/// `y = (x - mean) / sqrt(var + eps) [* weight + bias]` per row of x `[t, d]`
/// (PyTorch `F.layer_norm`, biased variance, f32 statistics). Without weight and
/// bias: the block's LN; with both: the final LN. Either may be given alone.
pub fn layer_norm_into<T: DType>(dev: &Device, args: &LayerNormArgs<'_, T>, y: &mut ViewMut<'_, T>) -> Result<()> {
    let plan = layer_norm_plan(dev, args, y)?;
    if plan.t == 0 {
        return Ok(());
    }
    let LayerNormArgs { x, weight, bias, eps } = args;
    let eps = *eps;
    let (xp, wp, bp) = (x.ptr(), weight.as_ref().map(|w| w.ptr()), bias.as_ref().map(|b| b.ptr()));
    let params = sys::tf_layer_norm_params {
        x: xp.addr,
        y: 0,
        weight: wp.as_ref().map_or(0, |p| p.addr),
        bias: bp.as_ref().map_or(0, |p| p.addr),
        t: to_i64(LN, "t", plan.t)?,
        d: to_i64(LN, "d", plan.d)?,
        x_row_stride: row_stride(LN, "x row stride", x.strides())?,
        y_row_stride: row_stride(LN, "y row stride", y.strides())?,
        eps,
        reserved: 0,
    };
    let yp = y.ptr_mut();
    let params = sys::tf_layer_norm_params { y: yp.addr, ..params };
    // SAFETY: layer_norm_plan checked x and y [t, d] with contiguous rows at their
    // row strides and weight/bias [d] contiguous; warp r reads row r of x (and the
    // [d] vectors) and writes row r of y only; y is a distinct &mut borrow; all
    // borrows (and cudarc guards) outlive the launch.
    unsafe { dev.launch(LN, kernel_name::<T>(Kernel::LayerNorm), &plan.geometry, &params) }
}

// ------------------------------------------------------------------ rotary

const ROT: &str = "rotary";

/// What [`rotary_plan`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct RotaryPlan {
    /// Rows.
    pub t: usize,
    /// Rotated pairs per head (`rot_dim / 2`).
    pub half: usize,
    /// `inv_freq[j] / 2π` split into two floats (hi, lo), j < half.
    pub turns: Vec<(f32, f32)>,
    /// Launch geometry: one thread per rotated pair, grid-stride.
    pub geometry: Geometry,
}

/// Which dims of which rows [`rotary_into`] rotates, by name (five numbers that
/// positional arguments would let be swapped unnoticed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotaryArgs {
    /// Heads per row: a row of x is `[heads, head_dim]`.
    pub heads: usize,
    /// Dims per head.
    pub head_dim: usize,
    /// Rotated dims at the start of each head: even, <= `head_dim`, <= 256; 0
    /// leaves x unchanged.
    pub rot_dim: usize,
    /// The frequency base (GPT-NeoX: 10000), finite and > 0.
    pub base: f32,
    /// Position of row 0 (the number of positions before it, e.g. in a KV cache).
    pub pos_offset: usize,
}

/// Validates x `[t, heads·head_dim]`, `rot_dim` (even, <= head_dim, <= 256),
/// `base` (finite, > 0) and the positions (`pos_offset + t <= 2^24`); computes
/// the frequency table in f64 (`inv_freq[j] = base^(-2j/rot_dim)`, as tf-ref)
/// and the geometry.
pub fn rotary_plan<T: DType>(dev: &Device, x: &ViewMut<'_, T>, args: &RotaryArgs) -> Result<RotaryPlan> {
    rotary_plan_at(dev, x, args, 0)
}

/// [`rotary_plan`] for positions that may start up to `pos_dev_max` later (a
/// position read from device memory at run time).
fn rotary_plan_at<T: DType>(
    dev: &Device,
    x: &ViewMut<'_, T>,
    args: &RotaryArgs,
    pos_dev_max: usize,
) -> Result<RotaryPlan> {
    let RotaryArgs { heads, head_dim, rot_dim, base, pos_offset } = *args;
    if !x.device().same(dev) {
        return Err(Error::DeviceMismatch { op: ROT });
    }
    let [t, cols] = dims_of_mut(ROT, "x", x)?;
    if heads == 0 || head_dim == 0 {
        return Err(Error::InvalidArgument {
            op: ROT,
            msg: format!("heads ({heads}) and head_dim ({head_dim}) must be >= 1"),
        });
    }
    if heads.checked_mul(head_dim) != Some(cols) {
        return Err(Error::Shape {
            op: ROT,
            msg: format!("x is [{t}, {cols}] but heads x head_dim is {heads} x {head_dim}"),
        });
    }
    if rot_dim % 2 != 0 || rot_dim > head_dim {
        return Err(Error::InvalidArgument {
            op: ROT,
            msg: format!("rot_dim must be even and <= head_dim {head_dim}, got {rot_dim}"),
        });
    }
    let half = rot_dim / 2;
    if half > MAX_PAIRS {
        return Err(Error::InvalidArgument {
            op: ROT,
            msg: format!("rot_dim = {rot_dim}: at most {} rotated dims per head", 2 * MAX_PAIRS),
        });
    }
    if !(base.is_finite() && base > 0.0) {
        return Err(Error::InvalidArgument { op: ROT, msg: format!("base must be finite and > 0, got {base}") });
    }
    match pos_offset.checked_add(pos_dev_max).and_then(|p| p.checked_add(t)) {
        Some(end) if end <= MAX_POS => {}
        _ => {
            let first = pos_offset.saturating_add(pos_dev_max);
            return Err(Error::InvalidArgument {
                op: ROT,
                msg: format!("positions {first}..{first}+{t} reach past {MAX_POS} (2^24, exact in f32)"),
            });
        }
    }
    let base = f64::from(base);
    let turns = (0..half)
        .map(|j| {
            let inv_freq = base.powf(-((2 * j) as f64) / rot_dim as f64);
            let turns = inv_freq / TAU;
            let hi = turns as f32;
            (hi, (turns - f64::from(hi)) as f32)
        })
        .collect();
    let pairs = (t as u64).saturating_mul(heads as u64).saturating_mul(half as u64);
    let cap = u64::from(dev.sm_count()).max(1) * BLOCKS_PER_SM;
    let blocks = pairs.div_ceil(u64::from(THREADS)).clamp(1, cap);
    Ok(RotaryPlan {
        t,
        half,
        turns,
        geometry: Geometry { grid: [to_u32(ROT, "blocks", blocks as usize)?, 1, 1], block: [THREADS, 1, 1], smem: 0 },
    })
}

/// In place on x `[t, heads·head_dim]` seen as `[t, heads, head_dim]`: GPT-NeoX
/// `rotate_half` (non-interleaved) on the first `rot_dim` dims of each head, row
/// `i` at position `pos_offset + i`, `inv_freq[j] = base^(-2j/rot_dim)`.
/// `rot_dim = 0` leaves x unchanged.
pub fn rotary_into<T: DType>(dev: &Device, x: &mut ViewMut<'_, T>, args: &RotaryArgs) -> Result<()> {
    rotary_apply(dev, x, args, false)
}

/// The rotation of [`rotary_into`] by θ, or by −θ (`inverse`: the backward; the
/// angle table negated, which the kernel's reduction and `sincosf` turn into
/// exactly the negated angles).
pub(crate) fn rotary_apply<T: DType>(
    dev: &Device,
    x: &mut ViewMut<'_, T>,
    args: &RotaryArgs,
    inverse: bool,
) -> Result<()> {
    rotary_apply_at(dev, x, args, inverse, None)
}

/// [`rotary_apply`] with rows starting at `pos_offset` plus the counter `pos`
/// read on the device at run time (a captured decode step).
pub(crate) fn rotary_apply_at<T: DType>(
    dev: &Device,
    x: &mut ViewMut<'_, T>,
    args: &RotaryArgs,
    inverse: bool,
    pos: Option<DevCounter>,
) -> Result<()> {
    let plan = rotary_plan_at(dev, x, args, pos.map_or(0, |c| c.max))?;
    let RotaryArgs { heads, head_dim, pos_offset, .. } = *args;
    if plan.t == 0 || plan.half == 0 {
        return Ok(());
    }
    let (mut turns_hi, mut turns_lo) = ([0f32; MAX_PAIRS], [0f32; MAX_PAIRS]);
    let sign = if inverse { -1.0 } else { 1.0 };
    for (j, &(hi, lo)) in plan.turns.iter().enumerate() {
        turns_hi[j] = sign * hi;
        turns_lo[j] = sign * lo;
    }
    let params = sys::tf_rotary_params {
        x: 0,
        pos_dev: pos.map_or(0, |c| c.addr),
        pos_dev_max: to_i64(ROT, "position counter", pos.map_or(0, |c| c.max))?,
        t: to_i64(ROT, "t", plan.t)?,
        row_stride: row_stride(ROT, "x row stride", x.strides())?,
        pos_offset: to_i64(ROT, "pos_offset", pos_offset)?,
        heads: to_i32(ROT, "heads", heads)?,
        head_dim: to_i32(ROT, "head_dim", head_dim)?,
        half: to_i32(ROT, "rot_dim / 2", plan.half)?,
        reserved: 0,
        turns_hi,
        turns_lo,
    };
    let xp = x.ptr_mut();
    let params = sys::tf_rotary_params { x: xp.addr, ..params };
    // SAFETY: rotary_plan checked x [t, heads·head_dim] with contiguous rows at its
    // row stride and 2·half <= head_dim; each thread reads and writes one pair
    // (j, j + half) inside one head of one row; the &mut borrow outlives the launch.
    // A position counter is one int32 on this device (DevCounter's contract),
    // only read, and clamped by the kernel to the pos_dev_max checked above.
    unsafe { dev.launch(ROT, kernel_name::<T>(Kernel::Rotary), &plan.geometry, &params) }
}

// ------------------------------------------------------------------ residual add

const ADD: &str = "add_assign";

/// Validates y and x `[t, d]` (same shape); returns `(t, d)` and the geometry.
pub fn add_plan<T: DType>(dev: &Device, y: &ViewMut<'_, T>, x: &View<'_, T>) -> Result<([usize; 2], Geometry)> {
    if !x.device().same(dev) || !y.device().same(dev) {
        return Err(Error::DeviceMismatch { op: ADD });
    }
    let [t, d] = dims_of_mut(ADD, "y", y)?;
    let xd = dims_of(ADD, "x", x)?;
    if xd != [t, d] {
        return Err(Error::Shape { op: ADD, msg: format!("y is [{t}, {d}] but x is [{}, {}]", xd[0], xd[1]) });
    }
    Ok(([t, d], rows_geometry(dev, ADD, t)?))
}

/// `y += x` (the residual add), both `[t, d]`; the sum is formed in f32 and
/// rounded once to the storage type.
pub fn add_assign<T: DType>(dev: &Device, y: &mut ViewMut<'_, T>, x: &View<'_, T>) -> Result<()> {
    let ([t, d], geometry) = add_plan(dev, y, x)?;
    if t == 0 || d == 0 {
        return Ok(());
    }
    let xp = x.ptr();
    let params = sys::tf_residual_add_params {
        y: 0,
        x: xp.addr,
        t: to_i64(ADD, "t", t)?,
        d: to_i64(ADD, "d", d)?,
        y_row_stride: row_stride(ADD, "y row stride", y.strides())?,
        x_row_stride: row_stride(ADD, "x row stride", x.strides())?,
    };
    let yp = y.ptr_mut();
    let params = sys::tf_residual_add_params { y: yp.addr, ..params };
    // SAFETY: add_plan checked y and x [t, d] with contiguous rows at their row
    // strides; warp r touches row r of each only; y is a distinct &mut borrow (x
    // cannot alias it); the borrows outlive the launch.
    unsafe { dev.launch(ADD, kernel_name::<T>(Kernel::ResidualAdd), &geometry, &params) }
}

// ------------------------------------------------------------------ embedding

const EMB: &str = "embedding";

/// Validates table `[vocab, d]`, y `[tokens.len(), d]` and every id `< vocab`
/// (an error names the first bad id and its position); returns `(vocab, d)`
/// and the geometry.
pub fn embedding_plan<T: DType>(
    dev: &Device,
    table: &View<'_, T>,
    tokens: &[u32],
    y: &ViewMut<'_, T>,
) -> Result<([usize; 2], Geometry)> {
    let ([vocab, d], geometry) = embedding_shapes(dev, table, tokens.len(), y)?;
    if let Some((i, &id)) = tokens.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::InvalidArgument {
            op: EMB,
            msg: format!("token id {id} at position {i} is out of range: the vocabulary has {vocab} rows"),
        });
    }
    Ok(([vocab, d], geometry))
}

/// The shape half of [`embedding_plan`]: table `[vocab, d]` and y `[t, d]`.
fn embedding_shapes<T: DType>(
    dev: &Device,
    table: &View<'_, T>,
    t: usize,
    y: &ViewMut<'_, T>,
) -> Result<([usize; 2], Geometry)> {
    if !table.device().same(dev) || !y.device().same(dev) {
        return Err(Error::DeviceMismatch { op: EMB });
    }
    let [vocab, d] = dims_of(EMB, "table", table)?;
    let [yt, yd] = dims_of_mut(EMB, "y", y)?;
    if [yt, yd] != [t, d] {
        return Err(Error::Shape {
            op: EMB,
            msg: format!("{t} tokens from a [{vocab}, {d}] table need y [{t}, {d}], got [{yt}, {yd}]"),
        });
    }
    Ok(([vocab, d], rows_geometry(dev, EMB, t)?))
}

/// `y[i, :] = table[tokens[i], :]`: the token embedding (a bit-exact gather).
/// An id `>= vocab` is an error naming the id and its position, checked before
/// anything is launched. The ids go through the device's reused table buffer: no
/// allocation once that buffer holds as many.
pub fn embedding_into<T: DType>(
    dev: &Device,
    table: &View<'_, T>,
    tokens: &[u32],
    y: &mut ViewMut<'_, T>,
) -> Result<()> {
    let ([vocab, d], geometry) = embedding_plan(dev, table, tokens, y)?;
    if tokens.is_empty() || d == 0 {
        return Ok(());
    }
    dev.with_table(tokens, |ids| {
        // SAFETY: embedding_plan checked every id < vocab; the id table holds t
        // u32s and stays in the device's table buffer, locked, until the launch is
        // done (emulator) or queued ahead of any later upload into it (CUDA).
        unsafe { embedding_launch(dev, table, [vocab, d], ids, tokens.len(), y, geometry) }
    })
}

/// The embedding of one token whose id is the u32 at device address `id`,
/// written before the launch runs (a captured decode step); an id `>= vocab`
/// leaves y unwritten (the caller checks ids before it writes them).
///
/// # Safety
/// `id` must address a u32 on this device, alive until the launch is done.
pub(crate) unsafe fn embedding_at<T: DType>(
    dev: &Device,
    table: &View<'_, T>,
    id: u64,
    y: &mut ViewMut<'_, T>,
) -> Result<()> {
    let ([vocab, d], geometry) = embedding_shapes(dev, table, 1, y)?;
    if d == 0 {
        return Ok(());
    }
    // SAFETY: the caller's contract for `id`; the kernel skips ids >= vocab.
    unsafe { embedding_launch(dev, table, [vocab, d], id, 1, y, geometry) }
}

/// Launches the gather of `t` rows with the ids at device address `ids`.
///
/// # Safety
/// `ids` must address `t` u32s on this device, alive until the launch is done;
/// table and y as [`embedding_shapes`] checked them.
unsafe fn embedding_launch<T: DType>(
    dev: &Device,
    table: &View<'_, T>,
    [vocab, d]: [usize; 2],
    ids: u64,
    t: usize,
    y: &mut ViewMut<'_, T>,
    geometry: Geometry,
) -> Result<()> {
    let tp = table.ptr();
    let params = sys::tf_embedding_params {
        table: tp.addr,
        tokens: 0,
        y: 0,
        t: to_i64(EMB, "t", t)?,
        d: to_i64(EMB, "d", d)?,
        vocab: to_i64(EMB, "vocab", vocab)?,
        table_row_stride: row_stride(EMB, "table row stride", table.strides())?,
        y_row_stride: row_stride(EMB, "y row stride", y.strides())?,
    };
    let yp = y.ptr_mut();
    let params = sys::tf_embedding_params { y: yp.addr, tokens: ids, ..params };
    // SAFETY: embedding_shapes checked table [vocab, d] and y [t, d] with
    // contiguous rows at their row strides; the caller guarantees the t ids;
    // warp r reads row tokens[r] of the table (skipped when >= vocab) and writes
    // row r of y only; the borrows outlive the launch.
    unsafe { dev.launch(EMB, kernel_name::<T>(Kernel::Embedding), &geometry, &params) }
}
