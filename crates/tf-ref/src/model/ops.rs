//! Layer norm and the partial GPT-NeoX rotary embedding.

use crate::{zeros, Element, Error, Mat, MatRef, Result};

/// Layer norm of each row of `x` (`[rows, cols]`), PyTorch `F.layer_norm` semantics:
/// `y = (x − mean) / sqrt(var + eps) · weight + bias` with the biased variance
/// (divided by `cols`), both computed in f64 (two passes). Without `weight` /
/// `bias` the affine step is skipped (the block's `layernorm_nonparam`).
///
/// A row whose `var + eps` is 0 (a constant row with `eps = 0`) is normalised to
/// all zeros (then the bias is added) instead of 0/0.
///
/// Errors: `x`'s buffer not matching its shape, `cols = 0`, `weight` or `bias`
/// not holding `cols` values, `eps` negative or not finite.
pub fn layer_norm<T: Element>(x: MatRef<'_, T>, weight: Option<&[f64]>, bias: Option<&[f64]>, eps: f64) -> Result<Mat> {
    const OP: &str = "layer_norm";
    x.check(OP, "x")?;
    let (rows, cols) = (x.rows, x.cols);
    if cols == 0 {
        return Err(Error::Shape { op: OP, msg: format!("x is [{rows}, 0]: a row needs at least one element") });
    }
    for (what, v) in [("weight", weight), ("bias", bias)] {
        if let Some(v) = v {
            if v.len() != cols {
                return Err(Error::Shape {
                    op: OP,
                    msg: format!("x is [{rows}, {cols}] but {what} holds {} values (expected {cols})", v.len()),
                });
            }
        }
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidArgument { op: OP, msg: format!("eps must be finite and >= 0, got {eps}") });
    }
    let mut out = zeros(OP, x.data.len())?;
    let n = cols as f64;
    for (r, yr) in out.chunks_exact_mut(cols).enumerate() {
        let xr = x.row_f64(r);
        let mean = xr.iter().sum::<f64>() / n;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let denom = (var + eps).sqrt();
        for (c, (y, v)) in yr.iter_mut().zip(&xr).enumerate() {
            let normed = if denom == 0.0 { 0.0 } else { (v - mean) / denom };
            let w = weight.map_or(1.0, |w| w[c]);
            let b = bias.map_or(0.0, |b| b[c]);
            *y = normed * w + b;
        }
    }
    Ok(Mat { data: out, rows, cols })
}

/// The number of rotated dimensions of each head: `floor(head_dim · rotary_pct)`
/// (GPT-NeoX `int(head_dim * rotary_pct)`), e.g. 16 / 16 / 20 / 24 for head dims
/// 64 / 64 / 80 / 96 at 25 %. Errors: `rotary_pct` outside `[0, 1]` or not
/// finite, or an odd result (rotate_half needs pairs).
pub fn rotary_dims(head_dim: usize, rotary_pct: f64) -> Result<usize> {
    const OP: &str = "rotary_dims";
    if !(rotary_pct.is_finite() && (0.0..=1.0).contains(&rotary_pct)) {
        return Err(Error::InvalidArgument { op: OP, msg: format!("rotary_pct must be in [0, 1], got {rotary_pct}") });
    }
    // head_dim · pct ≤ head_dim, so the cast neither saturates nor wraps.
    let rot = (head_dim as f64 * rotary_pct) as usize;
    if rot % 2 != 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!(
                "head_dim {head_dim} x rotary_pct {rotary_pct} gives {rot} rotated dims: \
                 rotate_half needs an even number"
            ),
        });
    }
    Ok(rot)
}

/// Partial rotary position embedding, GPT-NeoX layout (`rotate_half`,
/// non-interleaved), applied to `x [t, heads·head_dim]` (row `i` at position
/// `pos_offset + i`).
///
/// With `rot_dim = `[`rotary_dims`]`(head_dim, rotary_pct)` and `half = rot_dim/2`,
/// for each head, `inv_freq[j] = base^(−2j/rot_dim)` and `θ_j = pos · inv_freq[j]`
/// (`j < half`); the head's first `rot_dim` dims split into `x1 = [0, half)` and
/// `x2 = [half, rot_dim)`, and
/// `out = [x1·cos θ − x2·sin θ, x2·cos θ + x1·sin θ, x[rot_dim..]]`. All in f64.
///
/// Errors: `x`'s buffer not matching its shape, `heads` or `head_dim` 0,
/// `cols ≠ heads·head_dim`, a bad `rotary_pct` (see [`rotary_dims`]), `base` not
/// finite and > 0, or `pos_offset + t` overflowing.
pub fn rotary<T: Element>(
    x: MatRef<'_, T>,
    heads: usize,
    head_dim: usize,
    rotary_pct: f64,
    base: f64,
    pos_offset: usize,
) -> Result<Mat> {
    rotate(x, heads, head_dim, rotary_pct, base, pos_offset, false)
}

/// [`rotary`], or with `inverse` its inverse rotation `R(−θ)` (the backward of
/// `rotary`, `crate::rotary_backward`): the same checks and the same frequencies,
/// with the sign of sin θ flipped (exact, so both are bit for bit the rotation by
/// ±θ).
pub(crate) fn rotate<T: Element>(
    x: MatRef<'_, T>,
    heads: usize,
    head_dim: usize,
    rotary_pct: f64,
    base: f64,
    pos_offset: usize,
    inverse: bool,
) -> Result<Mat> {
    const OP: &str = "rotary";
    x.check(OP, "x")?;
    if heads == 0 || head_dim == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("heads ({heads}) and head_dim ({head_dim}) must be >= 1"),
        });
    }
    if heads.checked_mul(head_dim) != Some(x.cols) {
        return Err(Error::Shape {
            op: OP,
            msg: format!("x is [{}, {}] but heads x head_dim is {heads} x {head_dim}", x.rows, x.cols),
        });
    }
    let rot = rotary_dims(head_dim, rotary_pct)?;
    if !(base.is_finite() && base > 0.0) {
        return Err(Error::InvalidArgument { op: OP, msg: format!("base must be finite and > 0, got {base}") });
    }
    if pos_offset.checked_add(x.rows).is_none() {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("pos_offset {pos_offset} + {} rows overflows usize", x.rows),
        });
    }
    let half = rot / 2;
    let inv_freq: Vec<f64> = (0..half).map(|j| base.powf(-((2 * j) as f64) / rot as f64)).collect();
    let mut out = zeros(OP, x.data.len())?;
    out.iter_mut().zip(x.data).for_each(|(o, v)| *o = v.to_f64());
    if half == 0 {
        return Ok(Mat { data: out, rows: x.rows, cols: x.cols });
    }
    for (i, row) in out.chunks_exact_mut(x.cols).enumerate() {
        let pos = (pos_offset + i) as f64;
        let (sin, cos): (Vec<f64>, Vec<f64>) =
            inv_freq.iter().map(|f| (pos * f).sin_cos()).map(|(s, c)| (if inverse { -s } else { s }, c)).unzip();
        for head in row.chunks_exact_mut(head_dim) {
            let (x1, rest) = head.split_at_mut(half);
            let x2 = &mut rest[..half];
            for j in 0..half {
                let (a, b) = (x1[j], x2[j]);
                x1[j] = a * cos[j] - b * sin[j];
                x2[j] = b * cos[j] + a * sin[j];
            }
        }
    }
    Ok(Mat { data: out, rows: x.rows, cols: x.cols })
}
