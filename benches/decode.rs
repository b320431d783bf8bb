//! One decode step of a bf16 model on the GPU at a fixed cache length:
//! uncaptured (`forward_cached_into`) against the replayed decode graph
//! (`Tokenformer::capture_decode`). The cases and the measurement are
//! `tf_host::bench_internals`'s. Without a CUDA device the bench prints why and
//! measures nothing.

mod common;

use tf_host::bench_internals::{decode_cases, run_decode};

fn main() {
    common::run_cases("decode", decode_cases, run_decode);
}
