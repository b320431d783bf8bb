//! The whole-model `loss_and_grads` on a small config with tails everywhere.

use crate::{check_grads, random, rng};
use rand::rngs::StdRng;
use tf_ref::{
    cross_entropy, loss_and_grads, model_forward, param_tensors, param_tensors_mut, ModelParams, Norm, Slot,
    TokenformerConfig,
};

/// Two layers, d = 10 with 2 heads of 5 (2 rotated dims), 5 / 7 / 9 tokens, vocab 11.
fn config(norm: Norm) -> TokenformerConfig {
    TokenformerConfig {
        name: "grad-test".to_string(),
        layers: 2,
        d: 10,
        heads: 2,
        qkv_slots: 5,
        proj_slots: 7,
        ffn_slots: 9,
        vocab: 11,
        seq: 8,
        norm,
        rotary_pct: 0.5,
        rotary_base: 10000.0,
        ln_eps: 1e-5,
    }
}

const TOKENS: [u32; 6] = [3, 10, 0, 3, 7, 3];
const TARGETS: [u32; 6] = [10, 0, 3, 7, 3, 1];

/// Parameters with every tensor random (the official init has a unit norm weight
/// and zero bias, which would leave their gradients' structure untested), two
/// pinned `n_ref`s.
fn params(cfg: &TokenformerConfig, r: &mut StdRng) -> ModelParams {
    let mut p = ModelParams::init(cfg, 1).unwrap();
    let n = param_tensors(&p).len();
    for (i, t) in param_tensors_mut(&mut p).into_iter().enumerate() {
        let v = random(r, t.len(), 0.8);
        let offset = if i == n - 2 { 1.0 } else { 0.0 }; // the norm weight around 1
        for (a, b) in t.iter_mut().zip(v) {
            *a = offset + b;
        }
    }
    p.blocks[0].n_ref[Slot::Query.index()] = Some(12);
    p.blocks[1].n_ref[Slot::Ffn.index()] = Some(4);
    p
}

/// `ModelParams` with its tensors replaced by `flat` (in `param_tensors` order).
fn with_tensors(template: &ModelParams, flat: &[Vec<f64>]) -> ModelParams {
    let mut p = template.clone();
    for (t, v) in param_tensors_mut(&mut p).into_iter().zip(flat) {
        t.copy_from_slice(v);
    }
    p
}

#[test]
fn loss_is_the_cross_entropy_of_model_forward() {
    for norm in Norm::ALL {
        let cfg = config(norm);
        let p = params(&cfg, &mut rng(1));
        let (loss, grads) = loss_and_grads(&p, &cfg, &TOKENS, &TARGETS).unwrap();
        let logits = model_forward(&cfg, &p, &TOKENS).unwrap();
        let (want, _) = cross_entropy(logits.view(), &TARGETS).unwrap();
        assert_eq!(loss, want, "{norm}: loss_and_grads must mirror model_forward exactly");
        grads.check(&cfg).unwrap();
        assert_eq!(grads.blocks[1].n_ref, p.blocks[1].n_ref);
    }
}

#[test]
fn model_gradients_match_finite_differences() {
    for (i, norm) in Norm::ALL.into_iter().enumerate() {
        let cfg = config(norm);
        let mut r = rng(10 + i as u64);
        let p = params(&cfg, &mut r);
        let (_, grads) = loss_and_grads(&p, &cfg, &TOKENS, &TARGETS).unwrap();
        let inputs: Vec<Vec<f64>> = param_tensors(&p).into_iter().map(<[f64]>::to_vec).collect();
        let g: Vec<Vec<f64>> = param_tensors(&grads).into_iter().map(<[f64]>::to_vec).collect();
        let loss = |flat: &[Vec<f64>]| {
            let m = with_tensors(&p, flat);
            let logits = model_forward(&cfg, &m, &TOKENS).unwrap();
            cross_entropy(logits.view(), &TARGETS).unwrap().0
        };
        // 23 tensors: one direction in each, two elements of each, three joint directions.
        let sig = check_grads(&format!("model {norm}"), &loss, &inputs, &g, &mut r, 3, 2);
        assert!(sig >= 40, "{norm}: only {sig} non-negligible checks");
    }
}

#[test]
fn unused_embedding_rows_get_only_the_unembedding_gradient() {
    // Token 5 never appears in the input, so its row's gradient is the logits part
    // only, Σ_i dlogits[i, 5]·h_i, and it is non-zero; a mis-sized target list is an error.
    let cfg = config(Norm::L2NormGelu);
    let p = params(&cfg, &mut rng(2));
    let (_, g) = loss_and_grads(&p, &cfg, &TOKENS, &TARGETS).unwrap();
    let row = &g.embedding[5 * cfg.d..6 * cfg.d];
    assert!(row.iter().any(|&v| v != 0.0));
    assert!(loss_and_grads(&p, &cfg, &TOKENS, &TARGETS[..5]).is_err());
    assert!(loss_and_grads(&p, &cfg, &[11], &[0]).is_err());
    assert!(loss_and_grads(&p, &cfg, &[], &[]).is_err());
}
