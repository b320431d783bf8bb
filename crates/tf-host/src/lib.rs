//! `tf-host`: the API users link to run the TokenFormer kernels, on a CUDA GPU
//! (through cudarc) or on the CPU SIMT emulator that runs the same kernel source.
//!
//! - [`Device`]: a GPU or the emulator; [`Tensor`] and its strided [`View`]s.
//!   Zero-copy interop with a program's own cudarc stream and buffers:
//!   [`Device::from_stream`], [`Tensor::from_cuda_slice`] /
//!   [`Tensor::into_cuda_slice`], [`View::from_cuda`], [`ViewMut::from_cuda`].
//! - Ops: [`pattention`] (`Y = Θ(X·K_Pᵀ)·V_P`), [`attention`], [`linear`],
//!   [`grow_batch`]; layer norm, rotary, residual add and embedding in
//!   [`ops::block`]. Operands that could be swapped by position are passed by name
//!   ([`PattentionArgs`], [`AttnArgs`]).
//! - Backward ops: [`pattention_backward`] (or, from the scores the forward
//!   kept with [`pattention_keeping_into`], [`pattention_backward_kept`]),
//!   [`attention_backward`], and the block's in [`ops::block_backward`].
//! - [`AdamW`]: the fused optimizer step of training (f32 master weights and
//!   moments, f32 gradients, deterministic global-norm clipping).
//! - [`Trainer`]: training on the device: the model and its optimizer state,
//!   tf-ref's run contract (schedule, batches, growth mid-run, checkpoints).
//! - [`Pattention`]: a layer that owns its parameter tokens and grows.
//! - [`Tokenformer`]: the whole model: init, checkpoints, forward, KV-cache
//!   generation, growth of every Pattention at once; [`DecodeGraph`]: one decode
//!   step captured once (a CUDA graph) and replayed per token.
//! - [`Error`]: every failure, typed; bad input never panics.
//! - Steady state without allocation: the `*_into` forms take the output and a
//!   caller's [`Workspace`]; [`Tokenformer::forward_cached_into`] decodes from the
//!   [`KvCache`]'s scratch; [`Device::allocations`] counts what is allocated.
//!
//! ```
//! use tf_host::{Device, PattentionArgs, PattentionOptions, Tensor};
//!
//! # fn main() -> tf_host::Result<()> {
//! // A CUDA GPU when there is one (and the kernels were built), else the emulator.
//! let dev = Device::cuda(0).unwrap_or_else(|_| Device::emulator());
//! let x: Tensor<f32> = dev.upload(&[1.0, 2.0], &[1, 2])?; // one token, d_in = 2
//! let k_p = dev.upload(&[3.0, -1.0, -1.0, 0.0], &[2, 2])?; // two parameter tokens
//! let v_p = dev.upload(&[1.0, 0.0, 0.0, 1.0], &[2, 2])?;
//! let opts = PattentionOptions::default(); // l2_norm_gelu, n_ref = n
//! let y = tf_host::pattention(&dev, &PattentionArgs { x: x.view(), k_p: k_p.view(), v_p: v_p.view(), opts })?;
//! // A = x·K_Pᵀ = [1, −1] has norm √2 = √n, so y = [gelu(1), gelu(−1)]·V_P.
//! let want = [0.841_344_746, -0.158_655_254];
//! for (got, want) in y.to_vec()?.into_iter().zip(want) {
//!     assert!((got - want).abs() < 1e-5, "{got} vs {want}");
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

// Not part of the API (see the module's documentation): hidden, free to change.
#[doc(hidden)]
pub mod bench_internals;
pub mod device;
pub mod dtype;
pub mod error;
mod graph;
pub mod layer;
pub mod model;
pub mod ops;
pub mod tensor;
pub mod train;
pub mod trainer;
pub mod workspace;

/// The cudarc this crate is built with (same version and features), for programs
/// that pass their own streams and buffers (`Device::from_stream`,
/// `Tensor::from_cuda_slice`, `View::from_cuda`, `ViewMut::from_cuda`) or take
/// tf-host's (`Tensor::into_cuda_slice`) without matching cudarc's version by hand.
pub use cudarc;
pub use device::{Checks, Device, EmuOptions, Geometry, LaneOrder, Profile, ProfileLine};
pub use dtype::{from_f32_vec, to_f32_vec, DType};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use layer::{Init, Pattention, PattentionShape, RandomInit, ValueInit};
pub use model::{
    CheckpointInfo, DecodeGraph, KvCache, LoadOptions, ModelParams, Sampling, Slot, SlotCounts, Tokenformer,
    TokenformerConfig,
};
pub use ops::adamw::{AdamW, AdamWConfig, StepInfo};
pub use ops::attention::{attention, attention_into, attention_workspace_bytes, AttnArgs, AttnOptions};
pub use ops::attention_backward::{attention_backward, attention_backward_saved, AttnGrads, AttnSaved};
pub use ops::grow::{grow_batch, GrowInit, GrowItem};
pub use ops::linear::{linear, linear_into};
pub use ops::pattention::{
    pattention, pattention_into, pattention_keeping_into, pattention_workspace_bytes, KeptScores, Norm, PattentionArgs,
    PattentionOptions,
};
pub use ops::pattention_backward::{
    pattention_backward, pattention_backward_kept, pattention_backward_workspace_bytes, PattentionGrads,
};
pub use tensor::{IntoCudaView, IntoCudaViewMut, Tensor, View, ViewMut};
pub use train::{GradOptions, ModelGrads};
pub use trainer::{LossScale, Trainer};
pub use workspace::Workspace;

/// The kernels' fatbin was compiled: false only in a build without CUDA kernels
/// (the `emulator-only` feature or `TF_NO_NVCC`). A build with
/// `TF_FATBIN_EXTERNAL` compiled it but loads it from the file `TF_FATBIN` names.
pub fn cuda_kernels_built() -> bool {
    tf_kernels::FATBIN.is_some() || tf_kernels::FATBIN_EXTERNAL
}
