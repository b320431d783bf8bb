//! AdamW against steps computed here from the formula, global clipping, the
//! schedule, and a few steps of training on the small model.

use tf_ref::{
    adamw_step, adamw_step_model, loss_and_grads, AdamWConfig, AdamWState, ModelParams, Norm, TokenformerConfig,
};

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-15 * want.abs().max(1e-3), "{what}: got {got:e}, want {want:e}");
}

#[test]
fn defaults_are_the_official_settings() {
    let c = AdamWConfig::default();
    assert_eq!((c.lr, c.beta1, c.beta2, c.eps, c.weight_decay), (6e-4, 0.9, 0.95, 1e-8, 0.1));
    assert_eq!((c.max_grad_norm, c.warmup_frac, c.min_lr), (Some(1.0), 0.01, 6e-5));
    c.validate().unwrap();
    assert!(AdamWConfig { beta2: 1.0, ..c }.validate().is_err());
    assert!(AdamWConfig { max_grad_norm: Some(0.0), ..c }.validate().is_err());
}

#[test]
fn two_steps_match_the_formula() {
    let cfg = AdamWConfig { max_grad_norm: None, ..AdamWConfig::default() };
    let lr = 1e-3;
    let (mut a, mut b) = (vec![0.5, -1.0], vec![2.0]);
    let mut state = AdamWState::new(&[2, 1]);
    let g1: [&[f64]; 2] = [&[0.1, -0.2], &[0.3]];
    adamw_step(&cfg, lr, &mut state, &mut [&mut a, &mut b], &g1, &[true, false]).unwrap();
    // Step 1: m = 0.1·g, v = 0.05·g², m̂ = g, v̂ = g², so the update is g/(|g| + eps).
    let w1 = |p: f64, g: f64, decay: bool| {
        let p = if decay { p - lr * 0.1 * p } else { p };
        p - lr * g / (g.abs() + 1e-8)
    };
    let want_a = [w1(0.5, 0.1, true), w1(-1.0, -0.2, true)];
    let want_b = w1(2.0, 0.3, false);
    close(a[0], want_a[0], "a[0] after step 1");
    close(a[1], want_a[1], "a[1] after step 1");
    close(b[0], want_b, "b after step 1");
    assert_eq!(state.step, 1);

    // Step 2 with new gradients: written out with t = 2.
    let g2: [&[f64]; 2] = [&[-0.4, 0.05], &[0.3]];
    adamw_step(&cfg, lr, &mut state, &mut [&mut a, &mut b], &g2, &[true, false]).unwrap();
    let w2 = |p: f64, g_1: f64, g_2: f64, decay: bool| {
        let m = 0.9 * (0.1 * g_1) + 0.1 * g_2;
        let v = 0.95 * (0.05 * g_1 * g_1) + 0.05 * g_2 * g_2;
        let (m_hat, v_hat) = (m / (1.0 - 0.81), v / (1.0 - 0.9025));
        let p = if decay { p * (1.0 - lr * 0.1) } else { p };
        p - lr * m_hat / (v_hat.sqrt() + 1e-8)
    };
    close(a[0], w2(want_a[0], 0.1, -0.4, true), "a[0] after step 2");
    close(a[1], w2(want_a[1], -0.2, 0.05, true), "a[1] after step 2");
    close(b[0], w2(want_b, 0.3, 0.3, false), "b after step 2");
}

#[test]
fn clipping_uses_the_global_norm() {
    let cfg = AdamWConfig::default();
    let (mut a, mut b) = (vec![1.0], vec![1.0]);
    let mut state = AdamWState::new(&[1, 1]);
    // Norms 3 and 4 per tensor, 5 globally: both scaled by 1/(5 + 1e-6).
    let info = adamw_step(&cfg, 1e-3, &mut state, &mut [&mut a, &mut b], &[&[3.0], &[-4.0]], &[true, true]).unwrap();
    assert_eq!(info.grad_norm, 5.0);
    let c = 1.0 / (5.0 + 1e-6);
    close(info.clip_scale, c, "clip scale");
    close(state.m[0][0], 0.1 * 3.0 * c, "m of a");
    close(state.m[1][0], 0.1 * -4.0 * c, "m of b");
    close(state.v[1][0], 0.05 * 16.0 * c * c, "v of b");
    // Below the threshold nothing is scaled.
    let info = adamw_step(&cfg, 1e-3, &mut state, &mut [&mut a, &mut b], &[&[0.3], &[0.4]], &[true, true]).unwrap();
    assert_eq!(info.clip_scale, 1.0);
    // Mismatched lists are errors and update nothing.
    let before = (a.clone(), state.step);
    assert!(adamw_step(&cfg, 1e-3, &mut state, &mut [&mut a], &[&[1.0], &[1.0]], &[true]).is_err());
    assert!(adamw_step(&cfg, 1e-3, &mut state, &mut [&mut a, &mut b], &[&[f64::NAN], &[1.0]], &[true, true]).is_err());
    assert_eq!((a, state.step), before);
}

#[test]
fn schedule_warms_up_linearly_then_decays_by_cosine() {
    let c = AdamWConfig::default();
    let total = 1000; // 10 warm-up steps
    assert_eq!(c.lr_at(0, total), 0.0);
    close(c.lr_at(5, total), 3e-4, "mid warm-up");
    close(c.lr_at(10, total), 6e-4, "end of warm-up");
    close(c.lr_at(505, total), (6e-4 + 6e-5) / 2.0, "half-way through the decay");
    // Step 257 is 247 of the 990 decay steps in.
    let at_257 = 6e-5 + (6e-4 - 6e-5) * 0.5 * (1.0 + (std::f64::consts::PI * 247.0 / 990.0).cos());
    close(c.lr_at(257, total), at_257, "a quarter through the decay");
    close(c.lr_at(total, total), 6e-5, "end");
    assert_eq!(c.lr_at(total + 7, total), 6e-5);
    let mut prev = f64::INFINITY;
    for s in 10..=total {
        let lr = c.lr_at(s, total);
        assert!(lr <= prev && lr >= 6e-5, "step {s}: {lr}");
        prev = lr;
    }
    // No warm-up: the peak at step 0.
    close(AdamWConfig { warmup_frac: 0.0, ..c }.lr_at(0, 100), 6e-4, "no warm-up");
}

fn small() -> TokenformerConfig {
    TokenformerConfig {
        name: "adamw-test".to_string(),
        layers: 1,
        d: 8,
        heads: 2,
        qkv_slots: 5,
        proj_slots: 6,
        ffn_slots: 7,
        vocab: 9,
        seq: 8,
        norm: Norm::L2NormGelu,
        rotary_pct: 0.5,
        rotary_base: 10000.0,
        ln_eps: 1e-5,
    }
}

#[test]
fn model_step_decays_all_but_the_final_norm() {
    let cfg = small();
    let p0 = ModelParams::init(&cfg, 3).unwrap();
    let mut p = p0.clone();
    let mut zero = p0.clone();
    tf_ref::param_tensors_mut(&mut zero).into_iter().for_each(|t| t.fill(0.0));
    let mut state = AdamWState::for_model(&p);
    let (lr, c) = (0.01, AdamWConfig::default());
    adamw_step_model(&c, lr, &mut state, &mut p, &zero).unwrap();
    // Zero gradients: only the decay acts, p·(1 − lr·wd).
    let k = 1.0 - lr * 0.1;
    for (got, want) in p.embedding.iter().zip(&p0.embedding) {
        close(*got, want - lr * 0.1 * want, "embedding");
        close(*got, want * k, "embedding");
    }
    for (got, want) in p.blocks[0].ffn.1.iter().zip(&p0.blocks[0].ffn.1) {
        close(*got, want * k, "ffn value tokens");
    }
    assert_eq!(p.final_norm_weight, p0.final_norm_weight);
    assert_eq!(p.final_norm_bias, p0.final_norm_bias);
}

#[test]
fn a_few_steps_reduce_the_loss() {
    let cfg = small();
    let mut p = ModelParams::init(&cfg, 5).unwrap();
    let (tokens, targets) = ([1u32, 4, 4, 7, 2, 8], [4u32, 4, 7, 2, 8, 1]);
    let c = AdamWConfig::default();
    let mut state = AdamWState::for_model(&p);
    let (first, _) = loss_and_grads(&p, &cfg, &tokens, &targets).unwrap();
    let mut last = first;
    for _ in 0..30 {
        let (loss, g) = loss_and_grads(&p, &cfg, &tokens, &targets).unwrap();
        last = loss;
        adamw_step_model(&c, 0.02, &mut state, &mut p, &g).unwrap();
    }
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}
