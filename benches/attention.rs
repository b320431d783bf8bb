//! Flash-style attention forward on the GPU: causal and not, head dims 64, 80,
//! 96, 128, sequences 1k to 16k, batch × heads filling the device (16k tokens
//! per batch, 2048 / head_dim heads, as FlashAttention's benchmark does).
//! FLOPs `4·B·H·T_q·T_k·D`, halved when causal. The cases and the measurement
//! are `tf_host::bench_internals`'s (shared with `tokenformer bench`). Without a CUDA
//! device the bench prints why and measures nothing.

mod common;

use tf_host::bench_internals::{attention_cases, run_attention_case};

fn main() {
    common::run_cases("attention", attention_cases, run_attention_case);
}
