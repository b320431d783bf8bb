//! Shared by the integration tests: the backends to run on, seeds, random data,
//! and the comparison with tf-ref by the tolerances of docs/design.md.
#![allow(dead_code)]

use rand::Rng;
use tf_host::{DType, Device, EmuOptions, LaneOrder};

/// The seed of this test run: `TF_TEST_SEED` if set, else fresh; printed so a
/// failure can be replayed.
pub fn seed() -> u64 {
    let s = std::env::var("TF_TEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (std::process::id() as u64).rotate_left(32)
    });
    eprintln!("seed {s} (replay with TF_TEST_SEED={s})");
    s
}

/// The devices every kernel test runs on: the emulator always (shuffled lanes;
/// the seed varies the order), and CUDA device 0 when one is usable; otherwise
/// the reason it is skipped is printed. `TF_TEST_BACKENDS=cuda` (the GPU run
/// kit) keeps only CUDA, `=emulator` only the emulator.
pub fn backends() -> Vec<(Device, &'static str)> {
    let only = std::env::var("TF_TEST_BACKENDS").unwrap_or_default();
    let mut v = Vec::new();
    if only != "cuda" {
        v.push((
            Device::emulator_with(EmuOptions {
                lane_order: LaneOrder::Shuffled,
                seed: seed(),
                os_threads: 0,
                ..Default::default()
            }),
            "emulator",
        ));
    }
    if only != "emulator" {
        match Device::cuda(0) {
            Ok(d) => v.push((d, "cuda")),
            Err(e) if only == "cuda" => panic!("TF_TEST_BACKENDS=cuda but CUDA is unusable: {e}"),
            Err(e) => eprintln!("CUDA skipped: {e}"),
        }
    }
    v
}

/// Runs `f` on every backend of [`backends`], naming the test and the backend
/// first (so a failure's output says where it happened).
pub fn on_backends(test: &str, f: impl Fn(&Device)) {
    for (dev, backend) in backends() {
        eprintln!("{test}: {backend}");
        f(&dev);
    }
}

/// `n` values uniform in [-scale, scale] (never all zero), as T.
pub fn rand_vec<T: DType>(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<T> {
    (0..n).map(|_| T::from_f32(rng.random_range(-scale..=scale))).collect()
}

/// Tolerance of docs/design.md for a storage type (relative Frobenius error).
pub fn tolerance<T: DType>() -> f64 {
    match T::NAME {
        "f32" => 1e-5,
        "f16" => 2e-3,
        _ => 1e-2,
    }
}

/// Relative Frobenius error and max abs error of `got` against `want`; panics
/// (naming `what` and the first mismatches) when the relative error exceeds
/// `rtol`, when a value is NaN or infinite where the reference is finite, or
/// when the lengths differ.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs reference {}", got.len(), want.len());
    let (mut num, mut den, mut max_abs) = (0f64, 0f64, 0f64);
    let mut bad = Vec::new();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        if !g.is_finite() && w.is_finite() || (g.is_nan() != w.is_nan()) {
            bad.push(format!("[{i}] got {g}, want {w}"));
            continue;
        }
        if !w.is_finite() {
            if g != w && !(g.is_nan() && w.is_nan()) {
                bad.push(format!("[{i}] got {g}, want {w}"));
            }
            continue;
        }
        let d = g - w;
        num += d * d;
        den += w * w;
        max_abs = max_abs.max(d.abs());
    }
    assert!(bad.is_empty(), "{what}: {} non-finite mismatches, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
    let rel = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
    if rel > rtol {
        let mut worst: Vec<(usize, f64)> =
            got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).enumerate().collect();
        worst.sort_by(|a, b| b.1.total_cmp(&a.1));
        let first: Vec<String> =
            worst.iter().take(5).map(|&(i, _)| format!("[{i}] got {} want {}", got[i], want[i])).collect();
        panic!("{what}: relative error {rel:.3e} > {rtol:.1e} (max abs {max_abs:.3e}); worst: {first:?}");
    }
    (rel, max_abs)
}

/// The `tiny` config: 2 layers, d 64, 4 heads of 16 (the attention runs padded
/// to head dim 64).
pub fn tiny() -> tf_host::TokenformerConfig {
    tf_host::TokenformerConfig::by_name("tiny").unwrap()
}

/// A config whose head dim (64) the attention kernels run directly: 1 layer,
/// d 128, 2 heads.
pub fn tiny64() -> tf_host::TokenformerConfig {
    tf_host::TokenformerConfig {
        name: "tiny64".into(),
        layers: 1,
        d: 128,
        heads: 2,
        qkv_slots: 72,
        proj_slots: 64,
        ffn_slots: 136,
        vocab: 320,
        ..tiny()
    }
}
