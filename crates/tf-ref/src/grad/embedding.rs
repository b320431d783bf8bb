//! Backward of the tied embedding (gather of rows, and the logits product
//! `h·Eᵀ` as a linear map) and the softmax cross-entropy loss with its gradient.
//!
//! - Gather `x_i = E[id_i]`: `dE[v] = Σ_{i: id_i = v} dx_i` (a scatter-add; repeated
//!   ids accumulate).
//! - Linear `y = x·wᵀ`: `dx = dy·w`, `dw = dyᵀ·x`. With `w = E` this is the
//!   unembedding; the tied `E` receives the sum of both contributions.
//! - Cross-entropy, mean over `T` tokens:
//!   `L = (1/T)·Σ_i (lse(z_i) − z_i[t_i])` with `lse(z) = m + ln Σ_v e^(z_v − m)`,
//!   `m = max_v z_v`, so `∂L/∂z_i = (softmax(z_i) − onehot(t_i)) / T`.

use super::{mat_nn, mat_tn, to_mat};
use crate::{zeros, Element, Error, Mat, MatRef, Result};

/// Backward of the embedding gather `x_i = E[tokens_i]`: scatter-adds the rows of
/// `dx [t, d]` into a zero `[vocab, d]` gradient of `E` (repeated ids accumulate).
///
/// Errors: `dx`'s buffer not matching its shape, `dx` not having one row per
/// token, a token id ≥ `vocab` (naming the id and its position).
pub fn embedding_backward<T: Element>(tokens: &[u32], dx: MatRef<'_, T>, vocab: usize) -> Result<Mat> {
    const OP: &str = "embedding_backward";
    let dx = to_mat(OP, "dx", &dx)?;
    if dx.rows != tokens.len() {
        return Err(Error::Shape {
            op: OP,
            msg: format!("dx is {:?} but there are {} tokens: one row per token expected", dx.shape(), tokens.len()),
        });
    }
    let d = dx.cols;
    let mut de = zeros(OP, crate::checked_mul(OP, "gradient [vocab, d]", vocab, d)?)?;
    for (pos, &id) in tokens.iter().enumerate() {
        // u32 -> usize is lossless on every supported target.
        let id = id as usize;
        if id >= vocab {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("token id {id} at position {pos} is out of range: vocab is {vocab}"),
            });
        }
        for (e, g) in de[id * d..(id + 1) * d].iter_mut().zip(&dx.data[pos * d..(pos + 1) * d]) {
            *e += g;
        }
    }
    Ok(Mat { data: de, rows: vocab, cols: d })
}

/// The gradients returned by [`linear_backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGrads {
    /// `dx`, `[T, d_in]`.
    pub dx: Mat,
    /// `dw`, `[d_out, d_in]`.
    pub dw: Mat,
}

/// Backward of [`linear`](crate::linear) `y = x·wᵀ` (`x [T, d_in]`, `w [d_out, d_in]`),
/// given `dy [T, d_out]`: `dx = dy·w`, `dw = dyᵀ·x`. The model's logits are
/// `linear(h, E)`, so this is also the tied unembedding's backward.
///
/// Errors: the forward's (buffer lengths, `d_in` differing), and `dy` not `[T, d_out]`.
pub fn linear_backward<T: Element>(x: MatRef<'_, T>, w: MatRef<'_, T>, dy: MatRef<'_, T>) -> Result<LinearGrads> {
    const OP: &str = "linear_backward";
    let x = to_mat(OP, "x", &x)?;
    let w = to_mat(OP, "w", &w)?;
    let dy = to_mat(OP, "dy", &dy)?;
    if x.cols != w.cols {
        return Err(Error::Shape {
            op: OP,
            msg: format!("x is {:?} but w is {:?}: d_in differs (w is [d_out, d_in])", x.shape(), w.shape()),
        });
    }
    if dy.shape() != [x.rows, w.rows] {
        return Err(Error::Shape {
            op: OP,
            msg: format!("dy is {:?} but the output is [{}, {}]", dy.shape(), x.rows, w.rows),
        });
    }
    Ok(LinearGrads { dx: mat_nn(OP, &dy, &w)?, dw: mat_tn(OP, &dy, &x)? })
}

/// Softmax cross-entropy over the vocabulary, averaged over the tokens: for
/// `logits [T, V]` and `targets` (`T` ids < `V`) returns
/// `(L, ∂L/∂logits)` with `L = (1/T)·Σ_i (lse(z_i) − z_i[targets_i])` (natural log,
/// max-shifted) and `∂L/∂z_i = (softmax(z_i) − onehot(targets_i)) / T`.
///
/// Errors: `logits`' buffer not matching its shape, `V = 0`, `T = 0` (the mean is
/// undefined), `targets` not holding `T` ids, an id ≥ `V` (naming it and its position).
pub fn cross_entropy<T: Element>(logits: MatRef<'_, T>, targets: &[u32]) -> Result<(f64, Mat)> {
    const OP: &str = "cross_entropy";
    let z = to_mat(OP, "logits", &logits)?;
    let (t, v) = (z.rows, z.cols);
    let bad = |msg: String| Err(Error::InvalidArgument { op: OP, msg });
    if v == 0 || t == 0 {
        return bad(format!("logits are [{t}, {v}]: at least one token and one class are needed"));
    }
    if targets.len() != t {
        return Err(Error::Shape {
            op: OP,
            msg: format!("logits are [{t}, {v}] but there are {} targets", targets.len()),
        });
    }
    let mut dz = zeros(OP, z.data.len())?;
    let mut total = 0.0;
    let inv_t = 1.0 / t as f64;
    for (pos, ((zr, dr), &id)) in z.data.chunks_exact(v).zip(dz.chunks_exact_mut(v)).zip(targets).enumerate() {
        let id = id as usize;
        if id >= v {
            return bad(format!("target id {id} at position {pos} is out of range: vocab is {v}"));
        }
        let m = zr.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = zr.iter().map(|&x| (x - m).exp()).sum();
        let lse = m + sum.ln();
        total += lse - zr[id];
        for (d, &x) in dr.iter_mut().zip(zr) {
            *d = (x - m).exp() / sum * inv_t;
        }
        dr[id] -= inv_t;
    }
    Ok((total * inv_t, Mat { data: dz, rows: t, cols: v }))
}
