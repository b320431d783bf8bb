//! Backward of layer norm and of the partial rotary embedding.
//!
//! Layer norm, per row of `n = cols` values: `x̂ = (x − μ)/σ` with `σ = sqrt(var + eps)`
//! (biased variance), `y = x̂ ⊙ w + b`. With `g = dy ⊙ w` (or `dy` without weight),
//! `∂μ/∂x = 1/n` and `∂σ/∂x = x̂/(n·σ)` give
//! `dx = (g − mean(g) − x̂·mean(g ⊙ x̂)) / σ`; `dw = Σ_rows dy ⊙ x̂`, `db = Σ_rows dy`.
//! A row with `σ = 0` (constant, `eps = 0`), which the forward maps to `x̂ = 0`, gets
//! `dx = 0`.
//!
//! Rotary: each rotated pair `(x1_j, x2_j)` of a head is multiplied by the rotation
//! `R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]]`, an orthogonal map, so the backward is
//! `Rᵀ = R(−θ)`: `dx1 = dy1·cos θ + dy2·sin θ`, `dx2 = −dy1·sin θ + dy2·cos θ`; the
//! unrotated dims pass `dy` through.

use super::to_mat;
use crate::{Element, Error, Mat, MatRef, Result};

/// The gradients returned by [`layer_norm_backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormGrads {
    /// `dx`, the shape of `x`.
    pub dx: Mat,
    /// `dweight` (`[cols]`), present iff the forward had a weight.
    pub dweight: Option<Vec<f64>>,
    /// `dbias` (`[cols]`), present iff the forward had a bias.
    pub dbias: Option<Vec<f64>>,
}

/// Backward of [`layer_norm`](crate::layer_norm): given the forward's arguments
/// (`x [rows, cols]`, optional `weight` and `bias` of `cols` values, `eps`) and
/// `dy = ∂L/∂y` (the shape of `x`), returns `dx` and, for each affine parameter the
/// forward had, its gradient (summed over rows). The bias values themselves are
/// not needed; passing the bias only asks for `dbias`.
///
/// Errors: the forward's (buffer lengths, `cols = 0`, weight or bias lengths, a bad
/// `eps`), and `dy` not of `x`'s shape.
pub fn layer_norm_backward<T: Element>(
    x: MatRef<'_, T>,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    dy: MatRef<'_, T>,
    eps: f64,
) -> Result<LayerNormGrads> {
    const OP: &str = "layer_norm_backward";
    // The forward validates x, weight, bias and eps.
    crate::layer_norm(x, weight, bias, eps)?;
    let x = to_mat(OP, "x", &x)?;
    let dy = to_mat(OP, "dy", &dy)?;
    if dy.shape() != x.shape() {
        return Err(Error::Shape {
            op: OP,
            msg: format!("dy is {:?} but x is {:?}: they must have the same shape", dy.shape(), x.shape()),
        });
    }
    let cols = x.cols;
    let n = cols as f64;
    let mut dx = vec![0.0; x.data.len()];
    let mut dw = vec![0.0; cols];
    let mut db = vec![0.0; cols];
    for ((xr, dyr), dxr) in x.data.chunks_exact(cols).zip(dy.data.chunks_exact(cols)).zip(dx.chunks_exact_mut(cols)) {
        let mean = xr.iter().sum::<f64>() / n;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let sigma = (var + eps).sqrt();
        let xhat: Vec<f64> = xr.iter().map(|v| if sigma == 0.0 { 0.0 } else { (v - mean) / sigma }).collect();
        for c in 0..cols {
            dw[c] += dyr[c] * xhat[c];
            db[c] += dyr[c];
        }
        if sigma == 0.0 {
            continue; // dx stays 0
        }
        let g: Vec<f64> = dyr.iter().enumerate().map(|(c, d)| d * weight.map_or(1.0, |w| w[c])).collect();
        let g_mean = g.iter().sum::<f64>() / n;
        let gx_mean = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / n;
        for ((o, gc), xh) in dxr.iter_mut().zip(&g).zip(&xhat) {
            *o = (gc - g_mean - xh * gx_mean) / sigma;
        }
    }
    let dx = Mat { data: dx, rows: x.rows, cols };
    Ok(LayerNormGrads { dx, dweight: weight.map(|_| dw), dbias: bias.map(|_| db) })
}

/// Backward of [`rotary`](crate::rotary) (the same arguments, with `dy = ∂L/∂out`
/// in place of `x`): the inverse rotation `R(−θ)` applied to each rotated pair of
/// `dy`, the other dims passed through. Returns `dx`, the shape of `dy`.
///
/// Errors: as for the forward.
pub fn rotary_backward<T: Element>(
    dy: MatRef<'_, T>,
    heads: usize,
    head_dim: usize,
    rotary_pct: f64,
    base: f64,
    pos_offset: usize,
) -> Result<Mat> {
    crate::model::rotate(dy, heads, head_dim, rotary_pct, base, pos_offset, true)
}
