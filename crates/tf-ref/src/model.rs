//! The whole TokenFormer (official `ParallelTokenformerLayer` stack), as the
//! reference for the GPU model: the two remaining elementwise ops ([`layer_norm`],
//! [`rotary`]), the configurations ([`TokenformerConfig`]), the parameters with
//! their official initialisation and growth ([`ModelParams`]), GPT-NeoX checkpoint
//! key names and safetensors files, and the forward pass ([`block_forward`],
//! [`model_forward`]).
//!
//! The block, for `x [t, d]` (one sequence):
//!
//! ```text
//! h     = LN(x)                                   no affine, eps = cfg.ln_eps
//! q,k,v = Pattention_{q,k,v}(h)                   d → d, qkv_slots tokens each
//! q,k   = rotary(q), rotary(k)                    first rot_dim dims of each head
//! ctx   = causal_attention(q, k, v)               heads = cfg.heads, scale 1/sqrt(head_dim)
//! x1    = x + Pattention_proj(ctx)                proj_slots tokens
//! out   = x1 + Pattention_ffn(LN(x1))             ffn_slots tokens
//! ```
//!
//! The model: embedding gather → `L` blocks → final LayerNorm with affine weights
//! → logits `h·Eᵀ` through the tied embedding (no bias). Every Pattention uses
//! `cfg.norm`, no epsilon, and its own pinned `n_ref` if it has one
//! ([`BlockParams::n_ref`]), else its current token count.

mod checkpoint;
mod config;
mod forward;
mod ops;
mod params;

pub use checkpoint::{CheckpointInfo, LoadOptions};
pub use config::{TokenformerConfig, CONFIG_NAMES, NEOX_VOCAB};
pub use forward::{block_forward, model_forward};
pub(crate) use ops::rotate;
pub use ops::{layer_norm, rotary, rotary_dims};
pub use params::{tensor_seed, BlockParams, ModelParams, Slot};
