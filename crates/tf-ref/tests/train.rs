//! The trainer: growth keeps the loss bitwise (preserving) and grows the optimizer
//! state with zero rows; a saved and resumed run is bitwise the uninterrupted one.

use tf_ref::{param_tensors, AdamWConfig, Corpus, GrowPlan, RunConfig, Slot, Trainer};

fn corpus() -> Corpus {
    let text = "the parameter tokens grow and the model keeps training; ".repeat(40);
    Corpus::new(text.bytes().map(u32::from).collect(), 512).unwrap()
}

fn run(steps: u64, grow: Option<GrowPlan>) -> RunConfig {
    RunConfig {
        base: "tiny".into(),
        steps,
        batch: 2,
        seq: 12,
        seed: 3,
        adamw: AdamWConfig { lr: 3e-3, ..AdamWConfig::default() },
        grow,
    }
}

fn plan(at: u64, preserving: bool) -> GrowPlan {
    GrowPlan { at, qkv: 80, proj: 72, ffn: 160, preserving }
}

#[test]
fn preserving_growth_keeps_the_batch_loss_bitwise_and_grows_zero_moments() {
    let data = corpus();
    let mut t = Trainer::new(run(6, Some(plan(3, true)))).unwrap();
    for _ in 0..3 {
        assert!(t.step(&data).unwrap().grown.is_none());
    }
    let old = t.clone();
    let before = t.batch_loss(&data, 3).unwrap();
    let rep = t.step(&data).unwrap();
    let (b, a) = rep.grown.expect("the growth happens before step 3");
    assert_eq!(b.to_bits(), before.to_bits());
    assert_eq!(a.to_bits(), b.to_bits(), "preserving growth changed the loss: {b} -> {a}");
    // The step's reported loss is the grown model's on the same batch.
    assert_eq!(rep.loss.to_bits(), a.to_bits());
    assert_eq!((t.cfg.qkv_slots, t.cfg.proj_slots, t.cfg.ffn_slots), (80, 72, 160));

    // Optimizer state: grown by zero rows, so `grow` alone (no step) shows it.
    let mut g = old.clone();
    g.grow(80, 72, 160, true).unwrap();
    let d = g.cfg.d;
    let (old_p, new_p) = (param_tensors(&old.params), param_tensors(&g.params));
    for (i, (op, np)) in old_p.iter().zip(&new_p).enumerate() {
        assert_eq!(g.opt.m[i].len(), np.len(), "tensor {i}: moment length");
        assert_eq!(&np[..op.len()], *op, "tensor {i}: old rows changed");
        for mom in [&g.opt.m[i], &g.opt.v[i]] {
            assert!(mom[op.len()..].iter().all(|&x| x.to_bits() == 0), "tensor {i}: new moment rows not zero");
        }
        assert_eq!(g.opt.m[i][..op.len()], old.opt.m[i][..]);
        assert_eq!(g.opt.v[i][..op.len()], old.opt.v[i][..]);
    }
    // Some moments of the old rows are non-zero (three steps were taken).
    assert!(g.opt.m[1].iter().any(|&x| x != 0.0));
    // New key rows are zero and the pins are the old counts.
    let b0 = &g.params.blocks[0];
    assert!(b0.tokens(Slot::Ffn).0[128 * d..].iter().all(|&x| x == 0.0));
    assert_eq!(b0.n_ref(Slot::Ffn), Some(128));
    assert_eq!(b0.n_ref(Slot::Query), Some(64));
}

#[test]
fn random_growth_changes_the_loss_and_training_continues() {
    let data = corpus();
    let mut t = Trainer::new(run(4, Some(plan(2, false)))).unwrap();
    let reports: Vec<_> = (0..4).map(|_| t.step(&data).unwrap()).collect();
    let (b, a) = reports[2].grown.unwrap();
    assert_ne!(b.to_bits(), a.to_bits());
    assert!(reports.iter().all(|r| r.loss.is_finite()));
    assert_eq!(t.params.blocks[1].n_ref, [None; 5]);
}

#[test]
fn a_resumed_run_is_bitwise_the_uninterrupted_one() {
    let data = corpus();
    let dir = std::env::temp_dir().join(format!("tf-ref-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.safetensors");
    let mut straight = Trainer::new(run(6, Some(plan(2, true)))).unwrap();
    let fresh = straight.clone();
    // Threads do not change the result.
    straight.threads = 2;
    for _ in 0..6 {
        straight.step(&data).unwrap();
    }
    // Stopped after the growth (3 steps) and before it (1 step).
    for stop in [3, 1] {
        let mut half = fresh.clone();
        for _ in 0..stop {
            half.step(&data).unwrap();
        }
        half.save(&path, data.fingerprint()).unwrap();
        let (mut resumed, fp) = Trainer::load(&path).unwrap();
        assert_eq!(fp, data.fingerprint());
        assert_eq!(resumed, half, "the checkpoint does not round-trip exactly");
        while !resumed.done() {
            resumed.step(&data).unwrap();
        }
        let bits = |t: &Trainer| {
            param_tensors(&t.params).iter().flat_map(|x| x.iter().map(|v| v.to_bits())).collect::<Vec<_>>()
        };
        assert_eq!(bits(&resumed), bits(&straight), "stopped at {stop}");
        assert_eq!(resumed.opt, straight.opt);
        assert_eq!(resumed.params, straight.params);
        assert_eq!(resumed.cfg, straight.cfg);
    }
    assert!(Trainer::load(&dir.join("missing")).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_runs_are_refused() {
    let bad = |r: RunConfig| Trainer::new(r).unwrap_err().to_string();
    assert!(bad(RunConfig { steps: 0, ..run(1, None) }).contains("steps"));
    assert!(bad(RunConfig { batch: 0, ..run(1, None) }).contains("batch"));
    assert!(bad(RunConfig { seq: 129, ..run(1, None) }).contains("context length"));
    assert!(bad(RunConfig { base: "huge".into(), ..run(1, None) }).contains("unknown config"));
    assert!(bad(run(3, Some(plan(3, true)))).contains("not before the last step"));
    assert!(bad(run(3, Some(GrowPlan { qkv: 32, ..plan(1, true) }))).contains("already has 64"));
}

#[test]
fn a_training_checkpoint_loads_as_the_model_it_trained() {
    let data = corpus();
    let dir = std::env::temp_dir().join(format!("tf-ref-train-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.safetensors");
    // a preserving growth pins n_ref: the pins must come back too
    let mut t = Trainer::new(run(4, Some(plan(1, true)))).unwrap();
    for _ in 0..3 {
        t.step(&data).unwrap();
    }
    t.save(&path, data.fingerprint()).unwrap();
    let loaded = tf_ref::ModelParams::load_safetensors(&t.cfg, &path).unwrap();
    assert_eq!(loaded, t.params, "the parameters of a training checkpoint, loaded as a model");
    // the moments are skipped only in a training checkpoint: the same tensors in a
    // file without `tokenformer.kind = train` are unexpected keys
    let buf = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    assert_eq!(st.names().len(), 3 * param_tensors(&t.params).len());
    let plain = dir.join("plain.safetensors");
    std::fs::write(&plain, safetensors::serialize(st.tensors(), None).unwrap()).unwrap();
    let e = tf_ref::ModelParams::load_safetensors(&t.cfg, &plain).unwrap_err().to_string();
    assert!(e.contains("unexpected tensor \"optimizer."), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
