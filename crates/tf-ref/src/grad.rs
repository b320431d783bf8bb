//! Gradients (vector-Jacobian products) of every forward op, the whole-model loss
//! and gradients, and an AdamW step, all in f64: the oracle that training kernels
//! are checked against.
//!
//! Each backward takes the forward's inputs and the gradient of a scalar loss with
//! respect to the forward's output (`dY`, `dO`, …) and returns the gradients with
//! respect to the inputs. The forward values it needs are recomputed from the
//! inputs, so every function stands alone. Everything is verified against central
//! finite differences in `tests/grad/`.
//!
//! - [`pattention_backward`], [`pattention_norm_backward`], [`gelu_grad`];
//! - [`attention_backward`] (causal bottom-right aligned, or full);
//! - [`layer_norm_backward`], [`rotary_backward`];
//! - [`embedding_backward`], [`linear_backward`] (the tied unembedding is a
//!   linear map), [`cross_entropy`];
//! - [`loss_and_grads`]: the whole model, mirroring [`model_forward`](crate::model_forward);
//! - [`adamw_step`], [`AdamWConfig`] (with the official defaults and
//!   [`AdamWConfig::lr_at`]), [`AdamWState`].
//!
//! Where the forward is not differentiable (an all-zero row of an L2 norm with
//! `eps = 0`, a constant layer-norm row with `eps = 0`) the backward returns 0,
//! matching the forward's choice of 0 there.

mod adamw;
mod attention;
mod embedding;
mod model;
mod ops;
mod pattention;

pub use adamw::{adamw_step, adamw_step_model, AdamWConfig, AdamWState, StepInfo};
pub use attention::{attention_backward, AttnGrads};
pub use embedding::{cross_entropy, embedding_backward, linear_backward, LinearGrads};
pub use model::{loss_and_grads, param_tensors, param_tensors_mut};
pub use ops::{layer_norm_backward, rotary_backward, LayerNormGrads};
pub use pattention::{gelu_grad, pattention_backward, pattention_norm_backward, PattentionGrads};

use crate::{checked_mul, zeros, Element, Mat, MatRef, Result};

/// `m` converted to an owned f64 matrix (after checking its length invariant).
pub(crate) fn to_mat<T: Element>(op: &'static str, name: &str, m: &MatRef<'_, T>) -> Result<Mat> {
    m.check(op, name)?;
    Ok(Mat { data: m.data.iter().map(|v| v.to_f64()).collect(), rows: m.rows, cols: m.cols })
}

/// `aᵀ·b` for `a [r, p]` and `b [r, q]` (same row count, checked by the caller): `[p, q]`.
pub(crate) fn mat_tn(op: &'static str, a: &Mat, b: &Mat) -> Result<Mat> {
    let (p, q) = (a.cols, b.cols);
    let mut out = zeros(op, checked_mul(op, "aᵀ·b", p, q)?)?;
    for (ar, br) in a.data.chunks_exact(p.max(1)).zip(b.data.chunks_exact(q.max(1))) {
        for (&av, orow) in ar.iter().zip(out.chunks_exact_mut(q.max(1))) {
            for (o, &bv) in orow.iter_mut().zip(br) {
                *o += av * bv;
            }
        }
    }
    Ok(Mat { data: out, rows: p, cols: q })
}

/// `a·b` for `a [r, p]` and `b [p, q]` (checked by the caller): `[r, q]`.
pub(crate) fn mat_nn(op: &'static str, a: &Mat, b: &Mat) -> Result<Mat> {
    let (r, q) = (a.rows, b.cols);
    let mut out = zeros(op, checked_mul(op, "a·b", r, q)?)?;
    for (ar, orow) in a.data.chunks_exact(a.cols.max(1)).zip(out.chunks_exact_mut(q.max(1))) {
        for (&av, br) in ar.iter().zip(b.data.chunks_exact(q.max(1))) {
            for (o, &bv) in orow.iter_mut().zip(br) {
                *o += av * bv;
            }
        }
    }
    Ok(Mat { data: out, rows: r, cols: q })
}

/// `a·bᵀ` for `a [r, p]` and `b [q, p]` (checked by the caller): `[r, q]`.
pub(crate) fn mat_nt(op: &'static str, a: &Mat, b: &Mat) -> Result<Mat> {
    let (r, q) = (a.rows, b.rows);
    let mut out = zeros(op, checked_mul(op, "a·bᵀ", r, q)?)?;
    for (ar, orow) in a.data.chunks_exact(a.cols.max(1)).zip(out.chunks_exact_mut(q.max(1))) {
        for (o, br) in orow.iter_mut().zip(b.data.chunks_exact(b.cols.max(1))) {
            *o = ar.iter().zip(br).map(|(x, y)| x * y).sum();
        }
    }
    Ok(Mat { data: out, rows: r, cols: q })
}
