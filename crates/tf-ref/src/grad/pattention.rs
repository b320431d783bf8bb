//! Backward of Pattention, `Y = S·V_P` with `S = Θ(A)`, `A = X·K_Pᵀ`, and of the
//! row normalisation Θ alone.
//!
//! Per row (dropping the row index), with `s = √n_ref`, `r` the L2 norm of the
//! normalised vector and `D = r + eps` (the forward's denominator):
//!
//! - `l2_norm_gelu`: `Â = (s/D)·A`, `S = gelu(Â)`. With `dÂ = dS ⊙ gelu'(Â)` and
//!   `∂r/∂A = A/r`: `dA = (s/D)·dÂ − (s/(D²·r))·(A·dÂ)·A`, which for `eps = 0` is
//!   `(s/r)·(dÂ − Â·(Â·dÂ)/s²)`.
//! - `gelu_l2_norm`: `G = gelu(A)`, `S = (s/D)·G`. `dG = (s/D)·dS − (s/(D²·r))·(G·dS)·G`
//!   (for `eps = 0`: `(s/r)·(dS − S·(S·dS)/s²)`), then `dA = dG ⊙ gelu'(A)`.
//! - `softmax`: `S = n_ref·softmax(A)`, so `∂S_j/∂A_k = S_j·(δ_jk − S_k/n_ref)` and
//!   `dA = S ⊙ (dS − (S·dS)/n_ref)` (the pinned `n_ref`, not the token count).
//!
//! Then `dV_P = Sᵀ·dY`, `dS = dY·V_Pᵀ`, `dX = dA·K_P`, `dK_P = dAᵀ·X`.
//! `gelu'(x) = Φ(x) + x·φ(x)` with `Φ(x) = erfc(−x/√2)/2` and `φ` the standard
//! normal density.
//!
//! A zero denominator (`D = 0`: an all-zero row with `eps = 0`), where the forward
//! returns an all-zero row, gets `dA = 0`; with `eps > 0` and `A = 0` the `1/r`
//! term is dropped (its factor `A` is 0 there).

use super::{mat_nn, mat_nt, mat_tn, to_mat};
use crate::pattention::l2_norm;
use crate::{erfc, gelu, linear, pattention_norm, Element, Error, Mat, MatRef, Norm, PattentionOpts, Result};
use std::f64::consts::{FRAC_1_SQRT_2, PI};

const OP: &str = "pattention_backward";
const NORM_OP: &str = "pattention_norm_backward";

/// The derivative of the exact GELU: `gelu'(x) = Φ(x) + x·φ(x)`, with
/// `Φ(x) = erfc(−x/√2)/2` (no cancellation for negative `x`) and
/// `φ(x) = e^(−x²/2)/√(2π)`. `gelu'(+∞) = 1`, `gelu'(−∞) = 0`, NaN stays NaN.
pub fn gelu_grad(x: f64) -> f64 {
    let cdf = 0.5 * erfc(-x * FRAC_1_SQRT_2);
    let pdf = (-0.5 * x * x).exp() / (2.0 * PI).sqrt();
    if pdf == 0.0 {
        // |x| so large that x·φ(x) underflows (and ±∞·0 would be NaN).
        cdf
    } else {
        cdf + x * pdf
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v / r`, the unit vector of a row of norm `r` (zeros for `r = 0`). The norm
/// backward is written with it, `dv = c·(g − (r/D)·(u·g)·u)`, rather than with
/// `c/(D·r)·(v·g)·v`: every factor stays O(1) (or c) for rows of any scale, and
/// a one-element row gives exactly 0 (`u = ±1`).
fn unit(v: &[f64], r: f64) -> Vec<f64> {
    if r == 0.0 {
        return vec![0.0; v.len()];
    }
    v.iter().map(|x| x / r).collect()
}

/// Writes `dA` for one row: `a` the scores, `ds` the gradient of the normalised
/// row, `s_row` the forward's normalised row (used by softmax only).
fn norm_row_backward(a: &[f64], s_row: &[f64], ds: &[f64], opts: &PattentionOpts, n_ref: f64, da: &mut [f64]) {
    let s = n_ref.sqrt();
    match opts.norm {
        Norm::L2NormGelu => {
            let r = l2_norm(a);
            let denom = r + opts.eps;
            if denom == 0.0 {
                da.fill(0.0);
                return;
            }
            let c = s / denom;
            let dh: Vec<f64> = a.iter().zip(ds).map(|(&av, &d)| d * gelu_grad(c * av)).collect();
            let u = unit(a, r);
            let coef = r / denom * dot(&u, &dh);
            for ((o, &uv), &d) in da.iter_mut().zip(&u).zip(&dh) {
                *o = c * (d - coef * uv);
            }
        }
        Norm::GeluL2Norm => {
            let g: Vec<f64> = a.iter().map(|&v| gelu(v)).collect();
            let r = l2_norm(&g);
            let denom = r + opts.eps;
            if denom == 0.0 {
                da.fill(0.0);
                return;
            }
            let c = s / denom;
            let u = unit(&g, r);
            let coef = r / denom * dot(&u, ds);
            for (((o, &av), &uv), &d) in da.iter_mut().zip(a).zip(&u).zip(ds) {
                *o = c * (d - coef * uv) * gelu_grad(av);
            }
        }
        Norm::Softmax => {
            let mean = dot(s_row, ds) / n_ref;
            for ((o, &sv), &d) in da.iter_mut().zip(s_row).zip(ds) {
                *o = sv * (d - mean);
            }
        }
    }
}

/// `n_ref` as f64 for `n` tokens (the options were validated by `pattention_norm`).
fn n_ref_of(n: usize, opts: &PattentionOpts) -> f64 {
    // usize -> f64 is exact below 2^53.
    opts.n_ref.unwrap_or(n) as f64
}

/// `dA` for all rows, given the scores `a`, their normalisation `s` and `dS`.
fn norm_backward(a: &Mat, s: &Mat, ds: &Mat, opts: &PattentionOpts) -> Mat {
    let n = a.cols;
    let n_ref = n_ref_of(n, opts);
    let mut da = vec![0.0; a.data.len()];
    if n > 0 {
        for (((ar, sr), dsr), dar) in
            a.data.chunks_exact(n).zip(s.data.chunks_exact(n)).zip(ds.data.chunks_exact(n)).zip(da.chunks_exact_mut(n))
        {
            norm_row_backward(ar, sr, dsr, opts, n_ref, dar);
        }
    }
    Mat { data: da, rows: a.rows, cols: n }
}

/// Backward of Θ alone ([`pattention_norm`]): given the scores `a [T, n]` and the
/// gradient `ds [T, n]` of the loss with respect to `S = Θ(a)`, returns `dA [T, n]`.
/// Uses `opts` exactly as the forward does (norm, pinned `n_ref`, `eps`).
///
/// Errors: a buffer not matching its shape, `ds` not of `a`'s shape, and the
/// forward's errors (`n = 0`, `n_ref = Some(0)`, a bad `eps`).
pub fn pattention_norm_backward<T: Element>(a: MatRef<'_, T>, ds: MatRef<'_, T>, opts: &PattentionOpts) -> Result<Mat> {
    let a = to_mat(NORM_OP, "a", &a)?;
    let ds = to_mat(NORM_OP, "ds", &ds)?;
    if a.shape() != ds.shape() {
        return Err(Error::Shape {
            op: NORM_OP,
            msg: format!("a is {:?} but ds is {:?}: they must have the same shape", a.shape(), ds.shape()),
        });
    }
    let s = pattention_norm(a.view(), opts)?;
    Ok(norm_backward(&a, &s, &ds, opts))
}

/// The gradients returned by [`pattention_backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct PattentionGrads {
    /// `dX`, `[T, d_in]`.
    pub dx: Mat,
    /// `dK_P`, `[n, d_in]`.
    pub dk_p: Mat,
    /// `dV_P`, `[n, d_out]`.
    pub dv_p: Mat,
}

/// Backward of [`pattention`](crate::pattention) `Y = Θ(X·K_Pᵀ)·V_P`: given the
/// forward's inputs and `dy = ∂L/∂Y [T, d_out]`, returns `dX`, `dK_P` and `dV_P`.
/// The options are used exactly as by the forward: `norm`, the pinned `n_ref`
/// (else the token count `n`) and `eps` (added to the L2 norm of the two L2 variants).
///
/// With `A = X·K_Pᵀ`, `S = Θ(A)`: `dV_P = Sᵀ·dY`, `dS = dY·V_Pᵀ`, `dX = dA·K_P`,
/// `dK_P = dAᵀ·X`, and per row, with `s = √n_ref`, `r` the norm and `D = r + eps`:
///
/// - `l2_norm_gelu` (`Â = (s/D)·A`): `dÂ = dS ⊙ gelu'(Â)`,
///   `dA = (s/D)·dÂ − (s/(D²·r))·(A·dÂ)·A` (for `eps = 0`: `(s/r)·(dÂ − Â·(Â·dÂ)/s²)`);
/// - `gelu_l2_norm` (`G = gelu(A)`, `S = (s/D)·G`): `dG = (s/D)·dS − (s/(D²·r))·(G·dS)·G`,
///   `dA = dG ⊙ gelu'(A)`;
/// - `softmax`: `dA = S ⊙ (dS − (S·dS)/n_ref)`.
///
/// A row the forward maps to zeros for a zero denominator gets `dA = 0`.
///
/// Errors: the forward's (mismatched shapes, `n = 0`, `n_ref = Some(0)`, a bad
/// `eps`), and `dy` not `[T, d_out]`.
pub fn pattention_backward<T: Element>(
    x: MatRef<'_, T>,
    k_p: MatRef<'_, T>,
    v_p: MatRef<'_, T>,
    dy: MatRef<'_, T>,
    opts: &PattentionOpts,
) -> Result<PattentionGrads> {
    let x = to_mat(OP, "x", &x)?;
    let k_p = to_mat(OP, "k_p", &k_p)?;
    let v_p = to_mat(OP, "v_p", &v_p)?;
    let dy = to_mat(OP, "dy", &dy)?;
    let shape_err = |msg: String| Err(Error::Shape { op: OP, msg });
    if x.cols != k_p.cols {
        return shape_err(format!("x is {:?} but k_p is {:?}: d_in differs", x.shape(), k_p.shape()));
    }
    if k_p.rows != v_p.rows {
        return shape_err(format!("k_p is {:?} but v_p is {:?}: n differs", k_p.shape(), v_p.shape()));
    }
    if dy.shape() != [x.rows, v_p.cols] {
        return shape_err(format!(
            "dy is {:?} but the output is [{}, {}] (x is {:?}, v_p is {:?})",
            dy.shape(),
            x.rows,
            v_p.cols,
            x.shape(),
            v_p.shape()
        ));
    }
    let a = linear(x.view(), k_p.view())?;
    let s = pattention_norm(a.view(), opts)?;
    let dv_p = mat_tn(OP, &s, &dy)?;
    let ds = mat_nt(OP, &dy, &v_p)?;
    let da = norm_backward(&a, &s, &ds, opts);
    let dx = mat_nn(OP, &da, &k_p)?;
    let dk_p = mat_tn(OP, &da, &x)?;
    Ok(PattentionGrads { dx, dk_p, dv_p })
}
