//! The Pattention backward on the GPU at training shapes (bf16, l2_norm_gelu),
//! beside the product it recomputes (`A = X·K_Pᵀ`) and a copy of the bytes a
//! kept `S` would cost instead. The cases and the measurement are
//! `tf_host::bench_internals`'s. Without a CUDA device the bench prints why and
//! measures nothing.

mod common;

use common::{criterion, gpu, hook, peaks, report};
use tf_host::bench_internals::{backward_cases, run_backward, BenchSet};

fn main() {
    let Some(dev) = gpu("pattention_backward") else { return };
    let peaks = peaks(&dev);
    let mut c = criterion();
    let mut rows = Vec::new();
    {
        let mut h = hook(&mut c, &dev);
        for case in backward_cases(BenchSet::from_env()) {
            rows.extend(run_backward(&dev, &case, &mut h).expect("backward case"));
        }
    }
    report(&rows, &peaks);
    c.final_summary();
}
