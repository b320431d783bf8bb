//! The Pattention backward on the GPU at training shapes (bf16, l2_norm_gelu),
//! recomputing `A = X·K_Pᵀ` and from the scores the forward kept, beside the
//! product alone. The cases and the measurement are
//! `tf_host::bench_internals`'s. Without a CUDA device the bench prints why and
//! measures nothing.

mod common;

use tf_host::bench_internals::{backward_cases, run_backward};

fn main() {
    common::run_cases("pattention_backward", backward_cases, run_backward);
}
