//! One decode step of a bf16 model on the GPU at a fixed cache length:
//! uncaptured (`forward_cached_into`) against the replayed decode graph
//! (`Tokenformer::capture_decode`). The cases and the measurement are
//! `tf_host::bench_internals`'s. Without a CUDA device the bench prints why and
//! measures nothing.

mod common;

use common::{criterion, gpu, hook, peaks, report};
use tf_host::bench_internals::{decode_cases, run_decode, BenchSet};

fn main() {
    let Some(dev) = gpu("decode") else { return };
    let peaks = peaks(&dev);
    let mut c = criterion();
    let mut rows = Vec::new();
    {
        let mut h = hook(&mut c, &dev);
        for case in decode_cases(BenchSet::from_env()) {
            rows.extend(run_decode(&dev, &case, &mut h).expect("decode case"));
        }
    }
    report(&rows, &peaks);
    c.final_summary();
}
