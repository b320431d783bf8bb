//! # tf-ref: the CPU reference for the TokenFormer kernels
//!
//! Readable, slow, f64-accumulating implementations of everything the CUDA
//! kernels compute (see `docs/tokenformer.md` and `docs/design.md`):
//!
//! - [`pattention`]: token-parameter attention `Y = Θ(X·K_Pᵀ)·V_P` with the three
//!   official normalisations ([`Norm`]), an optional pinned reference token count
//!   `n_ref` and an optional `eps`;
//! - [`attention`]: multi-head scaled dot-product attention over `[B, T, H, D]`
//!   tensors, causal (bottom-right aligned) or not, returning the log-sum-exp too;
//! - [`grow`]: the row-append growth of a parameter-token matrix, with the
//!   counter-based Philox4x32-10 normal initialiser ([`philox4x32_10`],
//!   [`philox_normal`]) that the GPU and the emulator reproduce;
//! - [`linear`]: the dense baseline `y = x·wᵀ`;
//! - [`golden`]: golden safetensors files for other implementations to check against;
//! - [`atomic`]: the one way files are written (temporary file, fsync, rename);
//! - the whole model ([`model_forward`], [`block_forward`], [`layer_norm`], [`rotary`],
//!   [`TokenformerConfig`], [`ModelParams`] with init, growth and safetensors checkpoints);
//! - gradients (the training oracle): the backward of every op above
//!   ([`pattention_backward`], [`attention_backward`], [`layer_norm_backward`],
//!   [`rotary_backward`], [`embedding_backward`], [`linear_backward`]), the
//!   cross-entropy loss ([`cross_entropy`]), the whole model ([`loss_and_grads`])
//!   and an AdamW step ([`adamw_step`], [`AdamWConfig`]);
//! - training ([`Trainer`]): batches from a [`Corpus`], AdamW with the cosine
//!   schedule, growth of the model and its optimizer state mid-run ([`GrowPlan`]),
//!   exact checkpoints with the optimizer state (see `docs/training.md`).
//!
//! Every input element is converted to f64 (exactly, for f32/f16/bf16) and all
//! arithmetic is done in f64; outputs are returned in f64 ([`Mat`], [`AttnOut`]).
//! Functions validate their arguments and return [`Error`] instead of panicking.
//!
//! ```
//! use tf_ref::{pattention, MatRef, Norm, PattentionOpts};
//!
//! // x [1, 2], two parameter tokens: A = x·K_Pᵀ = [1, −1], ‖A‖ = √2 = √n,
//! // so S = [gelu(1), gelu(−1)] and y = S·V_P.
//! let x = [1.0f32, 2.0];
//! let k_p = [3.0f32, -1.0, -1.0, 0.0];
//! let v_p = [1.0f32, 0.0, 0.0, 1.0];
//! let y = pattention(
//!     MatRef::new(&x, 1, 2)?,
//!     MatRef::new(&k_p, 2, 2)?,
//!     MatRef::new(&v_p, 2, 2)?,
//!     &PattentionOpts { norm: Norm::L2NormGelu, ..Default::default() },
//! )?;
//! assert!((y.data[0] - 0.8413447460685429).abs() < 1e-15);
//! assert!((y.data[1] + 0.15865525393145707).abs() < 1e-15);
//! # Ok::<(), tf_ref::Error>(())
//! ```

#![warn(missing_docs)]

pub mod atomic;
mod attention;
mod element;
mod error;
mod gelu;
pub mod golden;
mod grad;
mod grow;
mod model;
mod pattention;
mod philox;
mod train;

pub use attention::{attention, AttnOut, Tensor4Ref};
pub use element::{Element, Mat, MatRef};
pub use error::{Error, Result};
pub use gelu::{erf, erfc, gelu};
pub use grad::{
    adamw_step, adamw_step_model, attention_backward, cross_entropy, embedding_backward, gelu_grad,
    layer_norm_backward, linear_backward, loss_and_grads, param_tensors, param_tensors_mut, pattention_backward,
    pattention_norm_backward, rotary_backward, AdamWConfig, AdamWState, AttnGrads, LayerNormGrads, LinearGrads,
    PattentionGrads, StepInfo,
};
pub use grow::{grow, Init};
pub use model::{
    block_forward, layer_norm, model_forward, rotary, rotary_dims, tensor_seed, BlockParams, CheckpointInfo,
    LoadOptions, ModelParams, Slot, TokenformerConfig, CONFIG_NAMES, NEOX_VOCAB,
};
pub use pattention::{linear, pattention, pattention_norm, pattention_scores, Norm, PattentionOpts};
pub use philox::{philox4x32_10, philox_normal};
pub use train::{
    batch_mean, Backend, Corpus, Gradients, GrowPlan, RunConfig, StepReport, Trainer, DEVICE_PREFIX, EVAL_FRACTION,
};

/// Allocates a zero-filled f64 buffer of `len` elements, reporting an
/// allocation failure as an error instead of aborting.
pub(crate) fn zeros(op: &'static str, len: usize) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| Error::InvalidArgument { op, msg: format!("cannot allocate an output of {len} elements") })?;
    v.resize(len, 0.0);
    Ok(v)
}

/// `a * b`, or a shape error naming `what` if it overflows `usize`.
pub(crate) fn checked_mul(op: &'static str, what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| Error::Shape { op, msg: format!("{what}: {a} x {b} overflows usize") })
}
