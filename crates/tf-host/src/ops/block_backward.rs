//! The backward of the block's small ops (kernels/block_backward.cu, and the
//! rotary kernel at −θ): layer norm, partial rotary, the embedding gather, and the
//! softmax cross-entropy over the vocabulary. Gradients are f32 (they feed f32
//! master weights); the math is tf-ref's `layer_norm_backward`, `rotary_backward`,
//! `embedding_backward` and `cross_entropy`. Correct SIMT paths with every sum in
//! a fixed order, not tuned ones.

use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i64, to_u32, Error, Result};
use crate::ops::block::{layer_norm_check, rotary_apply, row_stride, rows_geometry, LayerNormArgs, RotaryArgs};
use crate::tensor::{Tensor, View, ViewMut};

// SAFETY: bindgen-generated repr(C) plain-data structs taken by value by the
// kernels of block_backward.cu.
unsafe impl KernelParams for sys::tf_layer_norm_backward_params {}
unsafe impl KernelParams for sys::tf_embedding_backward_params {}
unsafe impl KernelParams for sys::tf_cross_entropy_params {}
unsafe impl KernelParams for sys::tf_cast_params {}

const THREADS: u32 = 256;
/// The cast kernel: at most this many blocks per SM (grid-stride).
const BLOCKS_PER_SM: usize = 8;

fn name<T: DType>(family: &str) -> &'static str {
    match (family, T::NAME) {
        ("ln", "f32") => "layer_norm_backward_f32",
        ("ln", "f16") => "layer_norm_backward_f16",
        ("ln", _) => "layer_norm_backward_bf16",
        ("lnp", "f32") => "layer_norm_param_grads_f32",
        ("lnp", "f16") => "layer_norm_param_grads_f16",
        ("lnp", _) => "layer_norm_param_grads_bf16",
        ("emb", "f32") => "embedding_backward_f32",
        ("emb", "f16") => "embedding_backward_f16",
        ("emb", _) => "embedding_backward_bf16",
        ("ce", "f32") => "cross_entropy_f32",
        ("ce", "f16") => "cross_entropy_f16",
        ("cast", "f32") => "cast_f32_to_f32",
        ("cast", "f16") => "cast_f32_to_f16",
        ("cast", "bf16") => "cast_f32_to_bf16",
        (_, _) => "cross_entropy_bf16",
    }
}

// ------------------------------------------------------------------ layer norm

const LN: &str = "layer_norm_backward";

/// The gradients returned by [`layer_norm_backward`].
#[derive(Debug)]
pub struct LayerNormGrads {
    /// `dx`, `[t, d]`.
    pub dx: Tensor<f32>,
    /// `dweight` `[d]`, present iff the forward had a weight.
    pub dweight: Option<Tensor<f32>>,
    /// `dbias` `[d]`, present iff the forward had a bias.
    pub dbias: Option<Tensor<f32>>,
}

/// Backward of [`crate::ops::block::layer_norm_into`]: given the forward's
/// arguments and `dy = ∂L/∂y` (`x`'s shape, contiguous rows), returns `dx` and,
/// for each affine parameter the forward had, its gradient summed over the rows.
/// Validation is the forward's (and `dy` must match `x`).
pub fn layer_norm_backward<T: DType>(
    dev: &Device,
    args: &LayerNormArgs<'_, T>,
    dy: &View<'_, T>,
) -> Result<LayerNormGrads> {
    if !dy.device().same(dev) {
        return Err(Error::DeviceMismatch { op: LN });
    }
    let [t, d] = match dy.shape() {
        &[t, d] => [t, d],
        s => return Err(Error::Shape { op: LN, msg: format!("dy must be 2-D, got {s:?}") }),
    };
    if !dy.inner_contiguous() {
        return Err(Error::Shape { op: LN, msg: format!("dy rows must be contiguous, strides {:?}", dy.strides()) });
    }
    let [xt, xd] = layer_norm_check(LN, dev, args)?;
    if [xt, xd] != [t, d] {
        return Err(Error::Shape { op: LN, msg: format!("x is [{xt}, {xd}] but dy is [{t}, {d}]") });
    }
    let mut dx = dev.output::<f32>(&[t, d])?;
    let mut stats = dev.output::<f32>(&[t, 2])?;
    let mut dw = dev.output::<f32>(&[d])?;
    let mut db = dev.output::<f32>(&[d])?;
    let LayerNormArgs { x, weight, bias, eps } = args;
    if t > 0 {
        let (xp, dyp, wp) = (x.ptr(), dy.ptr(), weight.as_ref().map(|w| w.ptr()));
        let (mut dxv, mut sv, mut dwv, mut dbv) = (dx.view_mut(), stats.view_mut(), dw.view_mut(), db.view_mut());
        let (dxp, sp, dwp, dbp) = (dxv.ptr_mut(), sv.ptr_mut(), dwv.ptr_mut(), dbv.ptr_mut());
        let params = sys::tf_layer_norm_backward_params {
            x: xp.addr,
            dy: dyp.addr,
            weight: wp.as_ref().map_or(0, |p| p.addr),
            dx: dxp.addr,
            stats: sp.addr,
            dweight: dwp.addr,
            dbias: dbp.addr,
            t: to_i64(LN, "t", t)?,
            d: to_i64(LN, "d", d)?,
            x_row_stride: row_stride(LN, "x row stride", x.strides())?,
            dy_row_stride: row_stride(LN, "dy row stride", dy.strides())?,
            eps: *eps,
            reserved: 0,
        };
        let cols = Geometry {
            grid: [to_u32(LN, "blocks", d.div_ceil(THREADS as usize))?, 1, 1],
            block: [THREADS, 1, 1],
            smem: 0,
        };
        // SAFETY: layer_norm_plan checked x [t, d] (contiguous rows at its stride)
        // and weight [d]; dy was checked [t, d] with contiguous rows above; dx
        // [t, d], stats [t, 2], dweight and dbias [d] are fresh f32 tensors. Warp r
        // touches row r of x, dy, dx and stats; thread c of the second kernel column
        // c of x and dy, stats, and element c of dweight / dbias. The borrows and
        // guards outlive the stream-ordered (CUDA) or synchronous launches.
        unsafe {
            dev.launch(LN, name::<T>("ln"), &rows_geometry(dev, LN, t)?, &params)?;
            dev.launch(LN, name::<T>("lnp"), &cols, &params)?;
        }
        drop((xp, dyp, wp, dxp, sp, dwp, dbp));
    } else {
        // no rows: the parameter gradients are zero sums
        dw = dev.zeros::<f32>(&[d])?;
        db = dev.zeros::<f32>(&[d])?;
    }
    Ok(LayerNormGrads { dx, dweight: weight.as_ref().map(|_| dw), dbias: bias.as_ref().map(|_| db) })
}

// ------------------------------------------------------------------ rotary

/// Backward of [`crate::ops::block::rotary_into`], in place on `dy`: the rotation
/// is orthogonal, so its backward is the rotation by −θ (the same kernel with the
/// angle table negated: exactly the negated angles). The same arguments and
/// validation as the forward.
pub fn rotary_backward_into<T: DType>(dev: &Device, dy: &mut ViewMut<'_, T>, args: &RotaryArgs) -> Result<()> {
    rotary_apply(dev, dy, args, true)
}

// ------------------------------------------------------------------ embedding

const EMB: &str = "embedding_backward";

/// Backward of the embedding gather `x_i = E[tokens_i]`: `dE [vocab, d]` (f32),
/// the rows of `dx [t, d]` summed per id in increasing position (repeated ids
/// accumulate; ids that do not occur get zero rows). Errors: `dx` not one
/// contiguous-row `[tokens.len(), d]` matrix, an id `>= vocab` (naming it and its
/// position).
pub fn embedding_backward<T: DType>(
    dev: &Device,
    tokens: &[u32],
    dx: &View<'_, T>,
    vocab: usize,
) -> Result<Tensor<f32>> {
    if !dx.device().same(dev) {
        return Err(Error::DeviceMismatch { op: EMB });
    }
    let d = match dx.shape() {
        &[t, d] if t == tokens.len() => d,
        s => {
            return Err(Error::Shape {
                op: EMB,
                msg: format!("dx is {s:?} but there are {} tokens: [{}, d] expected", tokens.len(), tokens.len()),
            })
        }
    };
    if !dx.inner_contiguous() {
        return Err(Error::Shape { op: EMB, msg: format!("dx rows must be contiguous, strides {:?}", dx.strides()) });
    }
    if let Some((i, &id)) = tokens.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::InvalidArgument {
            op: EMB,
            msg: format!("token id {id} at position {i} is out of range: the vocabulary has {vocab} rows"),
        });
    }
    let len = vocab.checked_add(1).and_then(|v| v.checked_add(tokens.len()));
    let len = len.filter(|&l| l <= u32::MAX as usize).ok_or_else(|| Error::SizeOverflow {
        op: EMB,
        msg: format!("vocab {vocab} + {} tokens: the position table needs 32-bit offsets", tokens.len()),
    })?;
    let mut de = dev.output::<f32>(&[vocab, d])?;
    if vocab == 0 || d == 0 {
        return Ok(de);
    }
    // Counting sort of the positions by id: starts[v]..starts[v + 1] indexes the
    // positions of id v in `order`, increasing.
    let mut table = vec![0u32; len];
    for &id in tokens {
        table[id as usize + 1] += 1;
    }
    for v in 0..vocab {
        table[v + 1] += table[v];
    }
    let mut next: Vec<u32> = table[..vocab].to_vec();
    for (pos, &id) in tokens.iter().enumerate() {
        let slot = &mut next[id as usize];
        table[vocab + 1 + *slot as usize] = pos as u32; // pos < len <= u32::MAX
        *slot += 1;
    }
    let dxp = dx.ptr();
    let mut dev_view = de.view_mut();
    let dep = dev_view.ptr_mut();
    let params = sys::tf_embedding_backward_params {
        dx: dxp.addr,
        table: 0,
        de: dep.addr,
        t: to_i64(EMB, "t", tokens.len())?,
        d: to_i64(EMB, "d", d)?,
        vocab: to_i64(EMB, "vocab", vocab)?,
        dx_row_stride: row_stride(EMB, "dx row stride", dx.strides())?,
    };
    let geometry = rows_geometry(dev, EMB, vocab)?;
    dev.with_table(&table, |addr| {
        let params = sys::tf_embedding_backward_params { table: addr, ..params };
        // SAFETY: dx was checked [t, d] with contiguous rows at its stride; de is a
        // fresh [vocab, d] f32 tensor; the table holds vocab + 1 offsets then t
        // positions (< t), locked in the device's table buffer until the launch is
        // done or queued; warp v writes row v of de only; borrows outlive the launch.
        unsafe { dev.launch(EMB, name::<T>("emb"), &geometry, &params) }
    })?;
    drop((dxp, dep));
    Ok(de)
}

// -------------------------------------------------------------- cross-entropy

const CE: &str = "cross_entropy";

/// Softmax cross-entropy over the vocabulary, averaged over the `t` rows of
/// `logits [t, V]`, and its gradient IN PLACE: returns
/// `L = (1/t)·Σ_i (lse(z_i) − z_i[targets_i])` and overwrites the logits with
/// `∂L/∂z = (softmax(z_i) − onehot(targets_i)) / t` in their storage type. Only a
/// `[t]` f32 vector of row losses is allocated (summed on the host in row order,
/// in f64): no `[t, V]` f32 buffer. Errors: `t = 0` or `V = 0`, `targets` not `t`
/// ids, an id `>= V` (naming it and its position), rows not contiguous.
pub fn cross_entropy_backward_into<T: DType>(
    dev: &Device,
    logits: &mut ViewMut<'_, T>,
    targets: &[u32],
) -> Result<f64> {
    cross_entropy_backward_scaled_into(dev, logits, targets, 1.0)
}

/// [`cross_entropy_backward_into`] with the gradient multiplied by `grad_scale`
/// before it is rounded to the storage type (a loss scale: it keeps small
/// gradients above f16's underflow through the backward). The factor is applied
/// as one f32 product with `1/t`; a power of two changes no bit beyond the scaling
/// itself while nothing overflows or underflows. The returned loss is unscaled.
/// Errors: as `cross_entropy_backward_into`, and a `grad_scale` that is not finite
/// and > 0.
pub fn cross_entropy_backward_scaled_into<T: DType>(
    dev: &Device,
    logits: &mut ViewMut<'_, T>,
    targets: &[u32],
    grad_scale: f32,
) -> Result<f64> {
    if !(grad_scale.is_finite() && grad_scale > 0.0) {
        return Err(Error::InvalidArgument {
            op: CE,
            msg: format!("grad_scale must be finite and > 0, got {grad_scale}"),
        });
    }
    if !logits.device().same(dev) {
        return Err(Error::DeviceMismatch { op: CE });
    }
    let [t, v] = match logits.shape() {
        &[t, v] => [t, v],
        s => return Err(Error::Shape { op: CE, msg: format!("logits must be 2-D [t, V], got {s:?}") }),
    };
    if t == 0 || v == 0 {
        return Err(Error::InvalidArgument {
            op: CE,
            msg: format!("logits are [{t}, {v}]: at least one token and one class are needed"),
        });
    }
    if targets.len() != t {
        return Err(Error::Shape {
            op: CE,
            msg: format!("logits are [{t}, {v}] but there are {} targets", targets.len()),
        });
    }
    if let Some((i, &id)) = targets.iter().enumerate().find(|(_, &id)| id as usize >= v) {
        return Err(Error::InvalidArgument {
            op: CE,
            msg: format!("target id {id} at position {i} is out of range: vocab is {v}"),
        });
    }
    if !logits.inner_contiguous() {
        return Err(Error::Shape {
            op: CE,
            msg: format!("logits rows must be contiguous, strides {:?}", logits.strides()),
        });
    }
    let mut loss = dev.output::<f32>(&[t])?;
    {
        let mut lv = loss.view_mut();
        let lp = lv.ptr_mut();
        let params = sys::tf_cross_entropy_params {
            logits: 0,
            targets: 0,
            loss: lp.addr,
            t: to_i64(CE, "t", t)?,
            vocab: to_i64(CE, "vocab", v)?,
            row_stride: row_stride(CE, "logits row stride", logits.strides())?,
            inv_t: (1.0 / t as f64) as f32 * grad_scale,
            reserved: 0,
        };
        let zp = logits.ptr_mut();
        let params = sys::tf_cross_entropy_params { logits: zp.addr, ..params };
        let geometry = Geometry { grid: [to_u32(CE, "rows", t)?, 1, 1], block: [THREADS, 1, 1], smem: 0 };
        dev.with_table(targets, |addr| {
            let params = sys::tf_cross_entropy_params { targets: addr, ..params };
            // SAFETY: logits [t, V] with contiguous rows at its stride (checked),
            // a distinct &mut borrow; loss is a fresh [t] f32 tensor; the targets
            // (t ids < V, checked) stay locked in the device's table buffer until
            // the launch is done or queued; block r touches row r and loss[r] only.
            unsafe { dev.launch(CE, name::<T>("ce"), &geometry, &params) }
        })?;
        drop((lp, zp));
    }
    let rows = loss.to_vec()?;
    Ok(rows.iter().map(|&l| f64::from(l)).sum::<f64>() / t as f64)
}

// ------------------------------------------------------------------ cast

const CAST: &str = "cast";

/// `src` (f32, any shape) rounded to the storage type `T` (round to nearest
/// even), as a new tensor of the same shape: how the training chain hands its
/// f32 gradients to ops that take `T`. For `T = f32` a copy.
pub fn cast_from_f32<T: DType>(dev: &Device, src: &Tensor<f32>) -> Result<Tensor<T>> {
    if !src.device().same(dev) {
        return Err(Error::DeviceMismatch { op: CAST });
    }
    let mut dst = dev.output::<T>(src.shape())?;
    let n = src.len();
    if n == 0 {
        return Ok(dst);
    }
    let sp = src.view().ptr();
    let mut dv = dst.view_mut();
    let dp = dv.ptr_mut();
    let params = sys::tf_cast_params { src: sp.addr, dst: dp.addr, n: to_i64(CAST, "n", n)? };
    let blocks = n.div_ceil(THREADS as usize).min((dev.sm_count() as usize).max(1) * BLOCKS_PER_SM);
    let geometry = Geometry { grid: [to_u32(CAST, "blocks", blocks)?, 1, 1], block: [THREADS, 1, 1], smem: 0 };
    // SAFETY: src and dst are contiguous tensors of n elements (dst fresh, so
    // distinct); thread i touches element i (grid-stride); borrows outlive the launch.
    unsafe { dev.launch(CAST, name::<T>("cast"), &geometry, &params) }?;
    drop((sp, dp));
    Ok(dst)
}
