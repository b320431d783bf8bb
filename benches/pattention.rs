//! Pattention against dense linear layers (docs/tokenformer.md shapes), on the GPU.
//!
//! Per case (d, n, T, dtype, norm) three variants, in one criterion group:
//! - `fused`: this project's kernels (`pattention_into`, one reused workspace);
//! - `unfused`: what a PyTorch user runs today: cuBLAS `X·K_Pᵀ` → the norm as its
//!   own kernel over the `[T, n]` scores in global memory → cuBLAS `S·V_P`;
//! - `dense`: a `d → d` linear layer through cuBLAS (equal parameters and FLOPs
//!   at n = d/2).
//!
//! The cases and the measurement are `tf_host::bench_internals`'s (shared with
//! `tokenformer bench`). FLOPs as docs/tokenformer.md counts them: `2·T·d·n + 2·T·n·d`
//! (Θ not counted); dense `2·T·d·d`. Criterion's throughput is in elements =
//! FLOPs, so its "Gelem/s" reads as GFLOP/s. Inputs rotate over 4 buffers so
//! caches do not flatter. Without a CUDA device the bench prints why and
//! measures nothing.

mod common;

use tf_host::bench_internals::{pattention_cases, run_pattention_case};

fn main() {
    common::run_cases("pattention", pattention_cases, run_pattention_case);
}
