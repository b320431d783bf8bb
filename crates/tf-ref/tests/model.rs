//! The whole-model reference: layer norm, rotary, configs, init, growth,
//! forward (shape, causality, function-preserving growth) and checkpoints.

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::path::PathBuf;
use tf_ref::{
    block_forward, layer_norm, model_forward, rotary, BlockParams, CheckpointInfo, Error, LoadOptions, Mat, MatRef,
    ModelParams, Norm, Slot, TokenformerConfig, CONFIG_NAMES,
};

/// A fresh file path under the system temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        TempFile(std::env::temp_dir().join(format!("tf-ref-model-{tag}-{}-{nanos}.safetensors", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64).
fn values(seed: u64, len: usize) -> Vec<f64> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn tiny() -> TokenformerConfig {
    TokenformerConfig::by_name("tiny").unwrap()
}

const TOKENS: [u32; 9] = [3, 511, 0, 42, 42, 7, 300, 1, 99];

// ---------------------------------------------------------------- layer norm

#[test]
fn layer_norm_rows_have_mean_0_variance_1_and_affine_applies() {
    let (rows, cols) = (5, 37);
    let mut x = values(1, rows * cols);
    // A row with a large offset and scale: the two-pass variance keeps it exact.
    for v in &mut x[2 * cols..3 * cols] {
        *v = 1e6 + 1e3 * *v;
    }
    let xm = MatRef::new(&x, rows, cols).unwrap();
    let y = layer_norm(xm, None, None, 0.0).unwrap();
    assert_eq!(y.shape(), [rows, cols]);
    for r in 0..rows {
        let row = y.row(r).unwrap();
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
        assert!(mean.abs() < 1e-12, "row {r}: mean {mean}");
        assert!((var - 1.0).abs() < 1e-12, "row {r}: variance {var}");
    }
    // eps enters as sqrt(var + eps): a row [−1, 1] has variance 1.
    let e = layer_norm(MatRef::new(&[-1.0, 1.0], 1, 2).unwrap(), None, None, 0.25).unwrap();
    assert!((e.data[1] - 1.0 / 1.25f64.sqrt()).abs() < 1e-15);

    let w = values(2, cols);
    let b = values(3, cols);
    let ya = layer_norm(xm, Some(&w), Some(&b), 0.0).unwrap();
    for r in 0..rows {
        for c in 0..cols {
            let want = y.get(r, c).unwrap() * w[c] + b[c];
            assert!((ya.get(r, c).unwrap() - want).abs() < 1e-14);
        }
    }
    // Affine really changes something.
    assert!(max_abs_diff(&ya.data, &y.data) > 0.1);

    // f32 input is widened exactly.
    let x32: Vec<f32> = x[..cols].iter().map(|&v| v as f32).collect();
    let x32w: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
    let a = layer_norm(MatRef::new(&x32, 1, cols).unwrap(), None, None, 1e-5).unwrap();
    let b2 = layer_norm(MatRef::new(&x32w, 1, cols).unwrap(), None, None, 1e-5).unwrap();
    assert_eq!(a, b2);
}

#[test]
fn layer_norm_rejects_bad_arguments() {
    let x = values(4, 6);
    let xm = MatRef::new(&x, 2, 3).unwrap();
    let err = layer_norm(xm, Some(&[1.0, 1.0]), None, 1e-5).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("weight holds 2"), "{err}");
    assert!(layer_norm(xm, None, Some(&[0.0; 4]), 1e-5).is_err());
    assert!(layer_norm(xm, None, None, -1.0).is_err());
    assert!(layer_norm(xm, None, None, f64::NAN).is_err());
    assert!(layer_norm(MatRef::<f64>::new(&[], 3, 0).unwrap(), None, None, 1e-5).is_err());
    // A constant row with eps = 0 gives zeros, not NaN.
    let c = layer_norm(MatRef::new(&[2.0; 4], 1, 4).unwrap(), None, None, 0.0).unwrap();
    assert_eq!(c.data, vec![0.0; 4]);
}

// ---------------------------------------------------------------- rotary

#[test]
fn rotary_at_position_0_is_identity() {
    let (heads, hd) = (3, 16);
    let x = values(5, heads * hd);
    let y = rotary(MatRef::new(&x, 1, heads * hd).unwrap(), heads, hd, 0.25, 1e4, 0).unwrap();
    assert_eq!(y.data, x);
}

#[test]
fn rotary_preserves_the_norm_of_each_rotated_pair() {
    let (t, heads, hd, pct) = (7, 2, 16, 0.5);
    let x = values(6, t * heads * hd);
    let y = rotary(MatRef::new(&x, t, heads * hd).unwrap(), heads, hd, pct, 1e4, 5).unwrap();
    let half = 4; // rot_dim = 16 · 0.5 = 8
    let mut moved = 0.0_f64;
    for r in 0..t {
        for h in 0..heads {
            let o = r * heads * hd + h * hd;
            for j in 0..half {
                let before = x[o + j].hypot(x[o + half + j]);
                let after = y.data[o + j].hypot(y.data[o + half + j]);
                assert!((before - after).abs() < 1e-14, "row {r} head {h} pair {j}");
                moved = moved.max((y.data[o + j] - x[o + j]).abs());
            }
            // Dims past rot_dim pass through.
            assert_eq!(y.data[o + 2 * half..o + hd], x[o + 2 * half..o + hd]);
        }
    }
    assert!(moved > 1e-3, "positions 5.. must rotate something");
}

#[test]
fn rotary_matches_a_hand_computed_case() {
    let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    // Row 3 of a 4-row input is at position 3.
    let mut x4 = vec![0.0; 3 * 8];
    x4.extend_from_slice(&x);

    // rotary_pct 0.5: rot_dim 4, half 2, inv_freq = [1, 10000^(-2/4) = 0.01],
    // θ = [3, 0.03]; pairs (x0, x2) and (x1, x3).
    let (c0, s0) = (3.0f64.cos(), 3.0f64.sin());
    let (c1, s1) = (0.03f64.cos(), 0.03f64.sin());
    let want = [1.0 * c0 - 3.0 * s0, 2.0 * c1 - 4.0 * s1, 3.0 * c0 + 1.0 * s0, 4.0 * c1 + 2.0 * s1, 5.0, 6.0, 7.0, 8.0];
    let y = rotary(MatRef::new(&x4, 4, 8).unwrap(), 1, 8, 0.5, 1e4, 0).unwrap();
    let got = y.row(3).unwrap();
    assert!(max_abs_diff(got, &want) < 1e-15, "{got:?} vs {want:?}");

    // rotary_pct 0.25: rot_dim 2, one pair (x0, x1) at θ = 3.
    let want = [1.0 * c0 - 2.0 * s0, 2.0 * c0 + 1.0 * s0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    let y = rotary(MatRef::new(&x, 1, 8).unwrap(), 1, 8, 0.25, 1e4, 3).unwrap();
    assert!(max_abs_diff(&y.data, &want) < 1e-15, "{:?}", y.data);
}

#[test]
fn rotary_offset_shifts_positions() {
    let (heads, hd, k) = (4, 16, 6);
    let row = values(7, heads * hd);
    let rep: Vec<f64> = (0..=k).flat_map(|_| row.iter().copied()).collect();
    let full = rotary(MatRef::new(&rep, k + 1, heads * hd).unwrap(), heads, hd, 0.25, 1e4, 0).unwrap();
    let one = rotary(MatRef::new(&row, 1, heads * hd).unwrap(), heads, hd, 0.25, 1e4, k).unwrap();
    assert_eq!(one.row(0).unwrap(), full.row(k).unwrap());
    assert_ne!(one.row(0).unwrap(), full.row(k - 1).unwrap());
}

#[test]
fn rotary_rejects_bad_arguments() {
    let x = values(8, 2 * 16);
    let xm = MatRef::new(&x, 2, 16).unwrap();
    // cols ≠ heads · head_dim
    let err = rotary(xm, 3, 16, 0.25, 1e4, 0).unwrap_err();
    assert!(err.to_string().contains("[2, 16]"), "{err}");
    // 16 · 0.1875 = 3 rotated dims: odd.
    assert!(rotary(xm, 1, 16, 0.1875, 1e4, 0).is_err());
    assert!(rotary(xm, 1, 16, 1.5, 1e4, 0).is_err());
    assert!(rotary(xm, 1, 16, 0.25, 0.0, 0).is_err());
    assert!(rotary(xm, 0, 16, 0.25, 1e4, 0).is_err());
    assert!(rotary(xm, 1, 16, 0.25, 1e4, usize::MAX).is_err());
}

// ---------------------------------------------------------------- configs

#[test]
fn released_configs_validate_with_their_head_dims() {
    for (name, hd, rot) in [
        ("150m", 64, 16),
        ("450m", 64, 16),
        ("900m", 80, 20),
        ("1.5b", 96, 24),
        ("354m", 64, 16),
        ("757m", 64, 16),
        ("tiny", 16, 4),
    ] {
        let c = TokenformerConfig::by_name(name).unwrap();
        c.validate().unwrap();
        assert_eq!(c.head_dim(), hd, "{name}");
        assert_eq!(c.rot_dim().unwrap(), rot, "{name}");
        assert_eq!(c.norm, Norm::L2NormGelu);
        assert_eq!((c.rotary_pct, c.rotary_base, c.ln_eps), (0.25, 1e4, 1e-5));
    }
    for name in CONFIG_NAMES {
        assert_eq!(TokenformerConfig::by_name(name).unwrap().name, name);
    }
    assert_eq!(TokenformerConfig::by_name("1.5B").unwrap().layers, 40);
    let err = TokenformerConfig::by_name("7b").unwrap_err();
    assert!(err.to_string().contains("\"7b\""), "{err}");

    let mut bad = tiny();
    bad.heads = 5; // 64 % 5 ≠ 0
    assert!(bad.validate().unwrap_err().to_string().contains("heads"));
    let mut bad = tiny();
    bad.ffn_slots = 0;
    assert!(bad.validate().unwrap_err().to_string().contains("ffn_slots"));
    let mut bad = tiny();
    bad.rotary_pct = 0.3125; // 16 · 0.3125 = 5: odd
    assert!(bad.validate().is_err());
    let mut bad = tiny();
    bad.vocab = usize::MAX;
    assert!(bad.validate().is_err());
    assert_eq!(bad.param_count(), usize::MAX);
}

#[test]
fn param_counts_follow_the_formula() {
    for name in CONFIG_NAMES {
        let c = TokenformerConfig::by_name(name).unwrap();
        let per_block = 2 * c.d * (3 * c.qkv_slots + c.proj_slots + c.ffn_slots);
        let exact = c.vocab * c.d + c.layers * per_block + 2 * c.d;
        assert_eq!(c.param_count(), exact, "{name}");
        // And it is the sum of the checkpoint tensors' sizes.
        let total: usize = c.tensor_names().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(total, exact, "{name}");
    }
    // Released Pile configs (qkv = proj = d, ffn = 4d): 16·L·d² + V·d (+ 2d norm).
    for (name, nominal) in [("150m", 150e6), ("450m", 450e6), ("900m", 900e6), ("1.5b", 1.5e9)] {
        let c = TokenformerConfig::by_name(name).unwrap();
        let approx = 16 * c.layers * c.d * c.d + c.vocab * c.d;
        assert_eq!(c.param_count(), approx + 2 * c.d, "{name}");
        let rel = (c.param_count() as f64 - nominal).abs() / nominal;
        assert!(rel < 0.07, "{name}: {} params", c.param_count());
    }
    // The incremental-scaling pair is named after its size too.
    for (name, nominal) in [("354m", 354e6), ("757m", 757e6)] {
        let n = TokenformerConfig::by_name(name).unwrap().param_count() as f64;
        assert!((n - nominal).abs() / nominal < 0.01, "{name}: {n}");
    }
}

// ---------------------------------------------------------------- init

#[test]
fn init_follows_the_official_distributions() {
    let cfg = tiny();
    let p = ModelParams::init(&cfg, 7).unwrap();
    p.check(&cfg).unwrap();
    let std = |v: &[f64]| (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    let wang = 2.0 / (cfg.layers as f64 * (cfg.d as f64).sqrt());
    assert!((std(&p.embedding) / 0.02 - 1.0).abs() < 0.03);
    let keys: Vec<f64> = p.blocks.iter().flat_map(|b| b.ffn.0.clone()).collect();
    let vals: Vec<f64> = p.blocks.iter().flat_map(|b| b.ffn.1.clone()).collect();
    assert!((std(&keys) / 0.02 - 1.0).abs() < 0.05);
    assert!((std(&vals) / wang - 1.0).abs() < 0.05);
    assert_eq!(p.final_norm_weight, vec![1.0; cfg.d]);
    assert_eq!(p.final_norm_bias, vec![0.0; cfg.d]);
    // Every tensor has its own stream; the seed matters; init is deterministic.
    assert_ne!(p.blocks[0].q.0, p.blocks[0].k.0);
    assert_ne!(p.blocks[0].q.0, p.blocks[1].q.0);
    assert_ne!(p.blocks[0].q.0[..64], p.embedding[..64]);
    assert_eq!(p, ModelParams::init(&cfg, 7).unwrap());
    assert_ne!(p.embedding, ModelParams::init(&cfg, 8).unwrap().embedding);
}

// ---------------------------------------------------------------- forward

#[test]
fn tiny_forward_gives_finite_logits_of_shape_t_by_vocab() {
    let cfg = tiny();
    let p = ModelParams::init(&cfg, 1).unwrap();
    let logits = model_forward(&cfg, &p, &TOKENS).unwrap();
    assert_eq!(logits.shape(), [TOKENS.len(), cfg.vocab]);
    assert!(logits.data.iter().all(|v| v.is_finite()));
    assert!(logits.data.iter().any(|&v| v.abs() > 1e-3));
    // The same token at different positions gets different logits (rotary, context).
    assert_ne!(logits.row(3), logits.row(4));
    assert_eq!(model_forward(&cfg, &p, &[]).unwrap().shape(), [0, cfg.vocab]);
}

#[test]
fn forward_rejects_bad_input() {
    let cfg = tiny();
    let p = ModelParams::init(&cfg, 1).unwrap();
    let err = model_forward(&cfg, &p, &[1, 2, 512]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("512") && msg.contains("position 2"), "{msg}");

    let mut broken = p.clone();
    broken.blocks[1].proj.1.pop();
    let err = model_forward(&cfg, &broken, &[1]).unwrap_err();
    assert!(err.to_string().contains("sequential.3.attention.proj.value_param_tokens"), "{err}");
    let err = block_forward(&cfg, &broken.blocks[1], &Mat { data: vec![0.0; 64], rows: 1, cols: 64 }, 0).unwrap_err();
    assert!(err.to_string().contains("attention.proj.value_param_tokens"), "{err}");
    let err = block_forward(&cfg, &p.blocks[0], &Mat { data: vec![0.0; 63], rows: 1, cols: 63 }, 0).unwrap_err();
    assert!(err.to_string().contains("[1, 63]"), "{err}");
    let mut short = p.clone();
    short.blocks.pop();
    assert!(model_forward(&cfg, &short, &[1]).is_err());
}

#[test]
fn forward_is_causal() {
    let cfg = tiny();
    let p = ModelParams::init(&cfg, 2).unwrap();
    let base = model_forward(&cfg, &p, &TOKENS).unwrap();
    for j in [0, 4, TOKENS.len() - 1] {
        let mut changed = TOKENS;
        changed[j] = (changed[j] + 17) % cfg.vocab as u32;
        let out = model_forward(&cfg, &p, &changed).unwrap();
        for r in 0..j {
            assert_eq!(out.row(r), base.row(r), "changing token {j} moved row {r}");
        }
        for r in j..TOKENS.len() {
            assert!(
                max_abs_diff(out.row(r).unwrap(), base.row(r).unwrap()) > 1e-9,
                "changing token {j} left row {r} unchanged"
            );
        }
    }
}

/// The block written out from the spec with plain loops (only Pattention is
/// borrowed from the crate; it has its own tests).
fn naive_block(cfg: &TokenformerConfig, p: &BlockParams, x: &[f64], t: usize) -> Vec<f64> {
    let d = cfg.d;
    let ln = |v: &[f64]| -> Vec<f64> {
        v.chunks(d)
            .flat_map(|r| {
                let m = r.iter().sum::<f64>() / d as f64;
                let var = r.iter().map(|a| (a - m).powi(2)).sum::<f64>() / d as f64;
                r.iter().map(move |a| (a - m) / (var + 1e-5).sqrt()).collect::<Vec<_>>()
            })
            .collect()
    };
    let patt = |tok: &(Vec<f64>, Vec<f64>), n: usize, n_ref: Option<usize>, h: &[f64]| {
        tf_ref::pattention(
            MatRef::new(h, t, d).unwrap(),
            MatRef::new(&tok.0, n, d).unwrap(),
            MatRef::new(&tok.1, n, d).unwrap(),
            &tf_ref::PattentionOpts { norm: cfg.norm, n_ref, eps: 0.0 },
        )
        .unwrap()
        .data
    };
    let (heads, hd) = (cfg.heads, cfg.head_dim());
    let rot = (hd as f64 * cfg.rotary_pct) as usize;
    let rope = |v: &mut [f64]| {
        for i in 0..t {
            for h in 0..heads {
                let o = i * d + h * hd;
                let old = v[o..o + hd].to_vec();
                for j in 0..rot {
                    let f = j % (rot / 2);
                    let theta = i as f64 / cfg.rotary_base.powf(2.0 * f as f64 / rot as f64);
                    // rotate_half: [-x2, x1]
                    let rh = if j < rot / 2 { -old[j + rot / 2] } else { old[j - rot / 2] };
                    v[o + j] = old[j] * theta.cos() + rh * theta.sin();
                }
            }
        }
    };
    let h = ln(x);
    let mut q = patt(&p.q, cfg.qkv_slots, p.n_ref[0], &h);
    let mut k = patt(&p.k, cfg.qkv_slots, p.n_ref[1], &h);
    let v = patt(&p.v, cfg.qkv_slots, p.n_ref[2], &h);
    rope(&mut q);
    rope(&mut k);
    let mut ctx = vec![0.0; t * d];
    for h in 0..heads {
        for i in 0..t {
            let s: Vec<f64> = (0..=i)
                .map(|j| {
                    (0..hd).map(|c| q[i * d + h * hd + c] * k[j * d + h * hd + c]).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|a| (a - m).exp()).sum();
            for (j, a) in s.iter().enumerate() {
                for c in 0..hd {
                    ctx[i * d + h * hd + c] += (a - m).exp() / z * v[j * d + h * hd + c];
                }
            }
        }
    }
    let proj = patt(&p.proj, cfg.proj_slots, p.n_ref[3], &ctx);
    let x1: Vec<f64> = x.iter().zip(&proj).map(|(a, b)| a + b).collect();
    let ffn = patt(&p.ffn, cfg.ffn_slots, p.n_ref[4], &ln(&x1));
    x1.iter().zip(&ffn).map(|(a, b)| a + b).collect()
}

#[test]
fn block_forward_matches_a_naive_composition() {
    let cfg = tiny();
    let mut p = ModelParams::init(&cfg, 12).unwrap();
    // Pin one n_ref to check it reaches its Pattention.
    p.blocks[0].n_ref[Slot::Ffn.index()] = Some(100);
    let t = 6;
    let x = values(13, t * cfg.d);
    let want = naive_block(&cfg, &p.blocks[0], &x, t);
    let got = block_forward(&cfg, &p.blocks[0], &Mat { data: x, rows: t, cols: cfg.d }, 0).unwrap();
    let diff = max_abs_diff(&got.data, &want);
    assert!(diff < 1e-12, "block differs from the spec by {diff}");
}

#[test]
fn model_forward_matches_its_definition() {
    // Embedding gather → blocks → final LN with affine → h·Eᵀ, with a non-trivial
    // final norm so the affine step and the tied logits are both visible.
    let cfg = tiny();
    let mut p = ModelParams::init(&cfg, 14).unwrap();
    p.final_norm_weight = values(15, cfg.d).iter().map(|v| 1.0 + v).collect();
    p.final_norm_bias = values(16, cfg.d);
    let tokens = [5u32, 500, 5, 64];
    let d = cfg.d;
    let mut h = Mat {
        data: tokens.iter().flat_map(|&id| p.embedding[id as usize * d..(id as usize + 1) * d].to_vec()).collect(),
        rows: tokens.len(),
        cols: d,
    };
    for b in &p.blocks {
        h = block_forward(&cfg, b, &h, 0).unwrap();
    }
    let mut want = Vec::new();
    for i in 0..tokens.len() {
        let r = h.row(i).unwrap();
        let m = r.iter().sum::<f64>() / d as f64;
        let var = r.iter().map(|a| (a - m).powi(2)).sum::<f64>() / d as f64;
        let normed: Vec<f64> =
            (0..d).map(|c| (r[c] - m) / (var + 1e-5).sqrt() * p.final_norm_weight[c] + p.final_norm_bias[c]).collect();
        for e in p.embedding.chunks(d) {
            want.push(normed.iter().zip(e).map(|(a, b)| a * b).sum::<f64>());
        }
    }
    let got = model_forward(&cfg, &p, &tokens).unwrap();
    let diff = max_abs_diff(&got.data, &want);
    assert!(diff < 1e-12, "model differs from its definition by {diff}");
}

#[test]
fn block_forward_is_translation_invariant() {
    // Rotary makes q_i·k_j depend on i − j only, so without a cache the offset
    // changes nothing but rounding; an offset applied to q and k inconsistently
    // (or to v) would.
    let cfg = tiny();
    let p = ModelParams::init(&cfg, 3).unwrap();
    let x = Mat { data: values(9, 4 * cfg.d), rows: 4, cols: cfg.d };
    let a = block_forward(&cfg, &p.blocks[0], &x, 0).unwrap();
    let b = block_forward(&cfg, &p.blocks[0], &x, 1000).unwrap();
    assert_eq!(a.shape(), [4, cfg.d]);
    assert!(max_abs_diff(&a.data, &b.data) < 1e-12);
    // The residual path is there: the block is not the identity.
    assert!(max_abs_diff(&a.data, &x.data) > 1e-3);
}

// ---------------------------------------------------------------- growth

#[test]
fn preserving_growth_keeps_logits_and_plain_growth_changes_them() {
    let cfg = tiny();
    let p = ModelParams::init(&cfg, 4).unwrap();
    let before = model_forward(&cfg, &p, &TOKENS).unwrap();

    let mut kept = p.clone();
    let grown = kept.grow(&cfg, 96, 80, 200, true, 99).unwrap();
    assert_eq!((grown.qkv_slots, grown.proj_slots, grown.ffn_slots), (96, 80, 200));
    kept.check(&grown).unwrap();
    assert_eq!(kept.blocks[1].n_ref(Slot::Ffn), Some(128));
    assert_eq!(kept.blocks[0].n_ref(Slot::Query), Some(64));
    // Old rows are untouched; new key rows are zero, new value rows are not.
    assert_eq!(kept.blocks[0].ffn.0[..128 * 64], p.blocks[0].ffn.0[..]);
    assert!(kept.blocks[0].ffn.0[128 * 64..].iter().all(|&v| v == 0.0));
    assert!(kept.blocks[0].ffn.1[128 * 64..].iter().any(|&v| v != 0.0));
    let after = model_forward(&grown, &kept, &TOKENS).unwrap();
    let diff = max_abs_diff(&before.data, &after.data);
    assert!(diff < 1e-12, "preserving growth moved the logits by {diff}");

    // Growing again keeps the original pin.
    let grown2 = kept.grow(&grown, 128, 80, 256, true, 5).unwrap();
    assert_eq!(kept.blocks[0].n_ref(Slot::Query), Some(64));
    assert_eq!(kept.blocks[0].n_ref(Slot::Proj), Some(64));
    let again = model_forward(&grown2, &kept, &TOKENS).unwrap();
    assert!(max_abs_diff(&before.data, &again.data) < 1e-12);

    let mut plain = p.clone();
    let grown_plain = plain.grow(&cfg, 96, 80, 200, false, 99).unwrap();
    assert_eq!(plain.blocks[0].n_ref, [None; 5]);
    let changed = model_forward(&grown_plain, &plain, &TOKENS).unwrap();
    let diff = max_abs_diff(&before.data, &changed.data);
    assert!(diff > 1e-6, "plain growth left the logits unchanged ({diff})");
}

#[test]
fn plain_growth_continues_the_init_stream_and_bad_growth_is_refused() {
    // Plain growth with the init seed gives the bigger model's init exactly.
    let cfg = tiny();
    let mut p = ModelParams::init(&cfg, 11).unwrap();
    let grown = p.grow(&cfg, 80, 96, 160, false, 11).unwrap();
    assert_eq!(grown.name, "tiny-grown");
    assert_eq!(p, ModelParams::init(&grown, 11).unwrap());

    // Growth targets are named after the released config they match.
    let small = TokenformerConfig::by_name("354m").unwrap();
    let big = small.with_slots(1792, 1792, 7168).unwrap();
    assert_eq!(big, TokenformerConfig::by_name("757m").unwrap());
    assert_eq!(small.with_slots(768, 768, 3072).unwrap(), small);
    assert_eq!(small.with_slots(800, 768, 3072).unwrap().name, "354m-grown");
    assert!(small.with_slots(0, 768, 3072).is_err());

    let mut r = ModelParams::init(&cfg, 1).unwrap();
    let snapshot = r.clone();
    assert!(r.grow(&cfg, 32, 64, 128, false, 0).is_err()); // shrinking qkv
    let mut soft = cfg.clone();
    soft.norm = Norm::Softmax;
    assert!(r.grow(&soft, 64, 64, 256, true, 0).is_err());
    assert_eq!(r, snapshot, "a failed growth must leave the parameters alone");
}

// ---------------------------------------------------------------- checkpoints

#[test]
fn tensor_names_are_the_official_keys() {
    let cfg = tiny();
    let p = ModelParams::init(&cfg, 0).unwrap();
    let names = p.tensor_names(&cfg);
    assert_eq!(names.len(), 1 + 10 * cfg.layers + 2);
    assert_eq!(names[0], ("sequential.0.word_embeddings.weight".to_string(), vec![512, 64]));
    assert_eq!(names[1], ("sequential.2.attention.query.key_param_tokens".to_string(), vec![64, 64]));
    assert_eq!(names[8], ("sequential.2.attention.proj.value_param_tokens".to_string(), vec![64, 64]));
    assert_eq!(names[20], ("sequential.3.mlp.value_param_tokens".to_string(), vec![128, 64]));
    assert_eq!(names[21], ("sequential.5.norm.weight".to_string(), vec![64]));
    assert_eq!(names[22], ("sequential.5.norm.bias".to_string(), vec![64]));
}

#[test]
fn safetensors_round_trip() {
    let cfg = tiny();
    let mut p = ModelParams::init(&cfg, 5).unwrap();
    // Non-trivial norm weights, and pinned n_refs from a preserving growth.
    p.final_norm_weight = values(10, cfg.d).iter().map(|&v| f64::from(v as f32)).collect();
    p.final_norm_bias = values(11, cfg.d).iter().map(|&v| f64::from(v as f32)).collect();
    let grown = p.grow(&cfg, 72, 64, 136, true, 3).unwrap();
    let f = TempFile::new("roundtrip");
    p.save_safetensors(&grown, &f.0).unwrap();
    let q = ModelParams::load_safetensors(&grown, &f.0).unwrap();
    assert_eq!(p, q);
    assert_eq!(q.blocks[1].n_ref(Slot::Value), Some(64));
    assert_eq!(q.blocks[1].n_ref(Slot::Proj), None); // proj did not grow
                                                     // Loading with the wrong config is refused, naming a key.
    let err = ModelParams::load_safetensors(&cfg, &f.0).unwrap_err();
    assert!(err.to_string().contains("sequential.2.attention.query"), "{err}");
}

/// Saves `p`, then rewrites the file through `edit` of its (name, dtype, shape, bytes) list.
fn rewritten(
    tag: &str,
    cfg: &TokenformerConfig,
    p: &ModelParams,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>),
) -> TempFile {
    let f = TempFile::new(tag);
    p.save_safetensors(cfg, &f.0).unwrap();
    let buf = std::fs::read(&f.0).unwrap();
    let st = SafeTensors::deserialize(&buf).unwrap();
    let mut list: Vec<(String, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut list);
    let views: Vec<(String, TensorView<'_>)> =
        list.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(&f.0, bytes).unwrap();
    f
}

#[test]
fn bad_checkpoints_are_refused_naming_the_key() {
    let cfg = tiny();
    let p = ModelParams::init(&cfg, 6).unwrap();
    let key = "sequential.3.mlp.value_param_tokens";

    let f = rewritten("shape", &cfg, &p, |l| {
        let t = l.iter_mut().find(|t| t.0 == key).unwrap();
        t.1 = vec![127, 64];
        t.2.truncate(127 * 64 * 4);
    });
    let err = ModelParams::load_safetensors(&cfg, &f.0).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Shape { .. }), "{msg}");
    assert!(msg.contains(key) && msg.contains("[127, 64]") && msg.contains("[128, 64]"), "{msg}");

    let f = rewritten("missing", &cfg, &p, |l| l.retain(|t| t.0 != key));
    let msg = ModelParams::load_safetensors(&cfg, &f.0).unwrap_err().to_string();
    assert!(msg.contains("missing") && msg.contains(key), "{msg}");

    let extra = "sequential.4.mlp.key_param_tokens";
    let f = rewritten("extra", &cfg, &p, |l| {
        l.push((extra.to_string(), vec![2, 2], vec![0; 16]));
    });
    let msg = ModelParams::load_safetensors(&cfg, &f.0).unwrap_err().to_string();
    assert!(msg.contains("unexpected") && msg.contains(extra), "{msg}");

    // The unmodified rewrite loads (so the failures above are the edits' doing).
    let f = rewritten("same", &cfg, &p, |_| {});
    assert_eq!(ModelParams::load_safetensors(&cfg, &f.0).unwrap(), p);

    // Saving parameters that do not fit the config is refused too.
    let mut broken: ModelParams = p.clone();
    let b: &mut BlockParams = &mut broken.blocks[0];
    b.k.0.truncate(10);
    let err = broken.save_safetensors(&cfg, &TempFile::new("bad").0).unwrap_err();
    assert!(err.to_string().contains("sequential.2.attention.key.key_param_tokens"), "{err}");
    assert!(ModelParams::load_safetensors(&cfg, "/nonexistent/x.safetensors").is_err());
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor_and_index() {
    let cfg = tiny();
    let p = ModelParams::init(&cfg, 8).unwrap();
    let key = "sequential.2.attention.value.key_param_tokens";
    // Row 5, column 7 of a [64, 64] tensor: flat index 5·64 + 7 = 327.
    for (bad, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf"), (f32::NEG_INFINITY, "-inf")] {
        let f = rewritten("nonfinite", &cfg, &p, |l| {
            let t = l.iter_mut().find(|t| t.0 == key).unwrap();
            t.2[327 * 4..328 * 4].copy_from_slice(&bad.to_le_bytes());
        });
        let msg = ModelParams::load_safetensors(&cfg, &f.0).unwrap_err().to_string();
        assert!(msg.contains(key) && msg.contains("[5, 7]") && msg.contains(shown), "{msg}");
        assert!(msg.contains(&f.0.display().to_string()), "the file is named: {msg}");
        // The opt-out loads it, NaN and all.
        let q = ModelParams::load_safetensors_with(&cfg, &f.0, &LoadOptions { allow_non_finite: true }).unwrap();
        let v = q.blocks[0].v.0[327];
        assert!(!v.is_finite() && (v.is_nan() == bad.is_nan()), "{v}");
    }
}

#[test]
fn metadata_and_slots_are_read_from_the_header() {
    let cfg = tiny().with_slots(72, 64, 136).unwrap();
    let p = ModelParams::init(&cfg, 4).unwrap();
    let f = TempFile::new("meta");
    p.save_safetensors_with_metadata(&cfg, &f.0, &[("tokenformer.dtype", "bf16"), ("tokenformer.init_seed", "4")])
        .unwrap();
    let info = CheckpointInfo::read(&f.0).unwrap();
    assert_eq!(info.metadata.get("tokenformer.dtype").map(String::as_str), Some("bf16"));
    assert_eq!(info.metadata.get("tokenformer.init_seed").map(String::as_str), Some("4"));
    assert_eq!(info.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(info.slots(), Some((72, 64, 136)));
    assert_eq!(info.shapes.get("sequential.3.mlp.value_param_tokens"), Some(&vec![136, 64]));
    assert_eq!(ModelParams::load_safetensors(&cfg, &f.0).unwrap(), p);
    // The format's own keys cannot be overridden.
    assert!(p.save_safetensors_with_metadata(&cfg, &f.0, &[("format", "np")]).is_err());
    assert!(CheckpointInfo::read("/nonexistent/x.safetensors").is_err());
}

#[test]
fn a_truncated_checkpoint_is_refused_naming_the_file_and_tensor() {
    let cfg = tiny();
    let p = ModelParams::init(&cfg, 9).unwrap();
    let f = TempFile::new("truncated");
    p.save_safetensors(&cfg, &f.0).unwrap();
    let mut bytes = std::fs::read(&f.0).unwrap();
    // The last tensor in the data is the largest offset's: cut 10 bytes off it.
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&f.0, &bytes).unwrap();
    let info = CheckpointInfo::read(&f.0).unwrap();
    let msg = ModelParams::load_safetensors(&cfg, &f.0).unwrap_err().to_string();
    assert!(msg.contains(&f.0.display().to_string()), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    assert!(info.shapes.keys().any(|k| msg.contains(k.as_str())), "a tensor is named: {msg}");
    std::fs::write(&f.0, b"garbage").unwrap();
    let msg = ModelParams::load_safetensors(&cfg, &f.0).unwrap_err().to_string();
    assert!(msg.contains(&f.0.display().to_string()), "{msg}");
}
