//! The device trainer (`tf_host::Trainer`, crates/tf-host/src/trainer.rs) against
//! tf-ref's f64 trainer on the same run (the tiny config, a fresh random corpus
//! with structure to learn): the step losses, gradient norms and parameters; a
//! preserving growth in the middle of the run (loss bitwise unchanged, the new
//! rows' optimizer state fresh); checkpoint and resume (bitwise an uninterrupted
//! run); bad input. On every backend (the emulator; CUDA where it works).

mod common;

use common::{on_backends, seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tf_host::{bf16, f16, DType, Device, LossScale, Trainer};
use tf_ref::{param_tensors, AdamWConfig, Corpus, GrowPlan, RunConfig, StepReport};

/// A corpus of `len` tokens drawn from 48 of tiny's 512 ids, each followed by a
/// fixed successor 70 % of the time: something to learn in a few steps, different
/// on every run (never constant).
fn corpus(r: &mut StdRng, len: usize) -> Corpus {
    let ids: Vec<u32> = (0..48).map(|_| r.random_range(0..512)).collect();
    let next: Vec<usize> = (0..48).map(|_| r.random_range(0..48)).collect();
    let mut cur = r.random_range(0..48);
    let mut tokens = Vec::with_capacity(len);
    for _ in 0..len {
        tokens.push(ids[cur]);
        cur = if r.random_bool(0.7) { next[cur] } else { r.random_range(0..48) };
    }
    Corpus::new(tokens, 512).unwrap()
}

fn run(seed: u64, steps: u64, grow: Option<GrowPlan>) -> RunConfig {
    RunConfig {
        base: "tiny".into(),
        steps,
        batch: 3,
        seq: 24,
        seed,
        adamw: AdamWConfig { lr: 3e-3, ..AdamWConfig::default() },
        grow,
    }
}

/// Relative Frobenius error of `got` against `want`.
fn rel(got: &[f64], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        num += (g - w) * (g - w);
        den += w * w;
    }
    (num / den.max(1e-300)).sqrt()
}

/// The f32 master weights of every tensor, as f64.
fn masters<T: DType>(t: &Trainer<T>) -> Vec<Vec<f64>> {
    let n = t.model().param_views().len();
    (0..n).map(|i| t.optimizer().master(i).unwrap().to_vec().unwrap().into_iter().map(f64::from).collect()).collect()
}

/// Every bit of a device run's state: master weights, moments, parameters.
fn state_bits<T: DType>(t: &Trainer<T>) -> Vec<u32> {
    let mut out = Vec::new();
    let opt = t.optimizer();
    for (i, p) in t.model().param_views().iter().enumerate() {
        let (m, v) = opt.moments(i).unwrap();
        for x in [opt.master(i).unwrap(), m, v] {
            out.extend(x.to_vec().unwrap().iter().map(|x| x.to_bits()));
        }
        out.extend(p.to_f32_vec().unwrap().iter().map(|x| x.to_bits()));
    }
    out
}

/// Each step's loss and gradient norm, and every parameter tensor after the
/// steps, against tf-ref. Measured (printed): losses within 1.3e-8 relative,
/// gradient norms 1.3e-7, parameters 4.2e-7 (relative Frobenius, per tensor).
/// Bounds: losses 1e-6, norms 1e-5 (f32 sums of squares), parameters 1e-4. The
/// parameters' bound is loose on purpose: AdamW's first updates are about
/// lr·g/|g| per element, so one element whose gradient lies within the f32
/// noise of the backward (about 2e-6 relative, tests/train_device.rs) can move
/// 2·lr the other way; an optimizer that skipped a tensor, or moved it by a
/// different lr, is off by far more (the check below that every tensor moved).
#[test]
fn device_run_follows_the_reference_run() {
    on_backends("device_run_follows_the_reference_run", device_run_follows_the_reference_run_on);
}

fn device_run_follows_the_reference_run_on(dev: &Device) {
    let s = seed();
    let mut r = StdRng::seed_from_u64(s ^ 0x7a_7a11);
    let data = corpus(&mut r, 4000);
    let cfg = run(r.random::<u64>() % 1000, 5, None);
    let mut want = tf_ref::Trainer::new(cfg.clone()).unwrap();
    let mut got = Trainer::<f32>::new(dev, cfg).unwrap();
    let (mut worst_loss, mut worst_norm) = (0f64, 0f64);
    let mut losses = Vec::new();
    while !want.done() {
        let (w, g) = (want.step(&data).unwrap(), got.step(&data).unwrap());
        assert_eq!((g.step, g.lr.to_bits(), g.grown), (w.step, w.lr.to_bits(), w.grown), "step {}", w.step);
        let (el, en) = ((g.loss - w.loss).abs() / w.loss, (g.grad_norm - w.grad_norm).abs() / w.grad_norm);
        assert!(el <= 1e-6, "step {}: loss {} vs tf-ref {}", w.step, g.loss, w.loss);
        assert!(en <= 1e-5, "step {}: gradient norm {} vs tf-ref {}", w.step, g.grad_norm, w.grad_norm);
        (worst_loss, worst_norm) = (worst_loss.max(el), worst_norm.max(en));
        losses.push(w.loss);
    }
    assert_eq!(got.step_count(), 5);
    assert!(got.done());
    let names = want.cfg.tensor_names();
    let mut worst = 0f64;
    for ((name, _), (g, w)) in names.iter().zip(masters(&got).iter().zip(param_tensors(&want.params))) {
        let e = rel(g, w);
        assert!(e <= 1e-4, "{name}: relative error {e:.2e} after 5 steps");
        worst = worst.max(e);
    }
    // Every tensor moved by more than 10x the bound: an optimizer that skipped a
    // tensor would fail above.
    let init = tf_ref::ModelParams::init(&want.cfg, want.run.seed).unwrap();
    for ((name, _), (a, b)) in names.iter().zip(param_tensors(&init).iter().zip(param_tensors(&want.params))) {
        assert!(rel(b, a) > 1e-3, "{name} did not move in the reference run: {:.2e}", rel(b, a));
    }
    eprintln!(
        "losses {losses:.4?}; worst relative error: loss {worst_loss:.2e}, gradient norm {worst_norm:.2e}, \
         parameters {worst:.2e}"
    );
    assert!(losses[4] < losses[0], "the loss fell: {losses:?}");
    // Evaluation agrees as well.
    let (e_got, e_want) = (got.eval_loss(&data).unwrap(), want.eval_loss(&data).unwrap());
    assert!((e_got - e_want).abs() <= 1e-6 * e_want, "eval loss {e_got} vs {e_want}");
}

/// A preserving growth in the middle of a run: the step reports the batch loss
/// before and after the growth bitwise equal (f32 and bf16 models); right after
/// a growth, the new rows' moments are zero, the kept rows' state is unchanged,
/// the new master rows are tf-ref's grown rows (zero keys, the value init in
/// f32) and the model holds them rounded; the run then follows the reference.
fn growth_mid_run<T: DType>(dev: &Device, s: u64) {
    let mut r = StdRng::seed_from_u64(s ^ 0x7a_9e0);
    let data = corpus(&mut r, 4000);
    let plan = GrowPlan { at: 2, qkv: 80, proj: 72, ffn: 160, preserving: true };
    let cfg = run(r.random::<u64>() % 1000, 4, Some(plan));
    let mut want = tf_ref::Trainer::new(cfg.clone()).unwrap();
    let mut got = Trainer::<T>::new(dev, cfg.clone()).unwrap();
    let before_slots = (got.config().qkv_slots, got.config().proj_slots, got.config().ffn_slots);
    for _ in 0..2 {
        want.step(&data).unwrap();
        got.step(&data).unwrap();
    }
    // The growth by hand on a copy of the state (through a checkpoint), to look
    // at the optimizer between growth and update.
    let dir = tempdir();
    let ck = dir.join("mid.safetensors");
    got.save(&ck, data.fingerprint()).unwrap();
    let (mut probe, _) = Trainer::<T>::load(dev, &ck).unwrap();
    let old_bits = state_bits(&probe);
    let old_shapes: Vec<Vec<usize>> = probe.model().param_views().iter().map(|v| v.shape().to_vec()).collect();
    probe.grow(plan.qkv, plan.proj, plan.ffn, plan.preserving).unwrap();
    let mut ref_grown = want.clone();
    ref_grown.grow(plan.qkv, plan.proj, plan.ffn, plan.preserving).unwrap();
    let views = probe.model().param_views();
    let mut kept = Vec::new();
    for (i, (p, old)) in views.iter().zip(&old_shapes).enumerate() {
        let opt = probe.optimizer();
        let (m, v) = opt.moments(i).unwrap();
        let (master, m, v) = (opt.master(i).unwrap().to_vec().unwrap(), m.to_vec().unwrap(), v.to_vec().unwrap());
        let old_len: usize = old.iter().product();
        assert_eq!(master.len(), p.shape().iter().product::<usize>(), "tensor {i}: master grown with the model");
        assert!(m[old_len..].iter().chain(&v[old_len..]).all(|&x| x == 0.0), "tensor {i}: new moments are zero");
        let want_new = &param_tensors(&ref_grown.params)[i][old_len..];
        for (j, (&g, &w)) in master[old_len..].iter().zip(want_new).enumerate() {
            assert_eq!(g, w as f32, "tensor {i} new element {j}: master {g}, tf-ref {w}");
        }
        let pv = p.to_f32_vec().unwrap();
        for (j, (&c, &g)) in pv.iter().zip(&master).enumerate() {
            assert_eq!(c.to_bits(), T::from_f32(g).to_f32().to_bits(), "tensor {i} element {j}: not the master");
        }
        for x in [&master[..old_len], &m[..old_len], &v[..old_len]] {
            kept.extend(x.iter().map(|x| x.to_bits()));
        }
        kept.extend(pv[..old_len].iter().map(|x| x.to_bits()));
    }
    assert!(kept == old_bits, "the kept rows' state changed in the growth");
    assert!(old_shapes.iter().zip(&views).any(|(o, p)| o.as_slice() != p.shape()), "something grew");

    // The run itself: growth at step 2 inside `step`.
    let (w, g): (StepReport, StepReport) = (want.step(&data).unwrap(), got.step(&data).unwrap());
    let (b, a) = g.grown.expect("the device run grew at step 2");
    assert_eq!(b.to_bits(), a.to_bits(), "{}: loss {b} before the growth, {a} after", T::NAME);
    let (wb, wa) = w.grown.unwrap();
    assert_eq!(wb.to_bits(), wa.to_bits(), "tf-ref: loss {wb} before the growth, {wa} after");
    assert_eq!(b.to_bits(), g.loss.to_bits(), "the reported step loss is the batch loss after the growth");
    let c = got.config();
    assert_ne!((c.qkv_slots, c.proj_slots, c.ffn_slots), before_slots);
    assert_eq!((c.qkv_slots, c.proj_slots, c.ffn_slots), (plan.qkv, plan.proj, plan.ffn));
    let g3 = got.step(&data).unwrap();
    let w3 = want.step(&data).unwrap();
    // f32: as device_run_follows_the_reference_run. bf16: the parameters are the
    // master weights rounded to 8 bits of mantissa (measured 2e-5 to 2e-4 relative).
    let tol = if T::NAME == "f32" { 1e-6 } else { 2e-3 };
    for (g, w) in [(g.loss, w.loss), (g3.loss, w3.loss)] {
        assert!((g - w).abs() <= tol * w, "{}: loss {g} vs tf-ref {w}", T::NAME);
    }
    eprintln!("{}: grown at step 2 with loss {b} (tf-ref {wb}); step 3 loss {} (tf-ref {})", T::NAME, g3.loss, w3.loss);
}

#[test]
fn preserving_growth_mid_run_keeps_the_loss_and_starts_fresh_moments() {
    on_backends(
        "preserving_growth_mid_run_keeps_the_loss_and_starts_fresh_moments",
        preserving_growth_mid_run_keeps_the_loss_and_starts_fresh_moments_on,
    );
}

fn preserving_growth_mid_run_keeps_the_loss_and_starts_fresh_moments_on(dev: &Device) {
    let s = seed();
    growth_mid_run::<f32>(dev, s);
    growth_mid_run::<bf16>(dev, s);
}

/// A run saved after 2 of 4 steps (with a random growth at step 1) and resumed
/// is bitwise the run that never stopped: every step's report and all state.
#[test]
fn resumed_run_is_bitwise_the_uninterrupted_one() {
    on_backends("resumed_run_is_bitwise_the_uninterrupted_one", resumed_run_is_bitwise_the_uninterrupted_one_on);
}

fn resumed_run_is_bitwise_the_uninterrupted_one_on(dev: &Device) {
    let s = seed();
    let mut r = StdRng::seed_from_u64(s ^ 0x7a_5e5);
    let data = corpus(&mut r, 3000);
    let plan = GrowPlan { at: 1, qkv: 72, proj: 72, ffn: 136, preserving: false };
    let cfg = run(r.random::<u64>() % 1000, 4, Some(plan));
    let mut whole = Trainer::<f32>::new(dev, cfg.clone()).unwrap();
    let reports: Vec<StepReport> = (0..4).map(|_| whole.step(&data).unwrap()).collect();
    assert!(reports[1].grown.is_some_and(|(b, a)| b != a), "a random growth changes the loss");

    let mut first = Trainer::<f32>::new(dev, cfg).unwrap();
    for rep in &reports[..2] {
        assert_eq!(&first.step(&data).unwrap(), rep);
    }
    let dir = tempdir();
    let ck = dir.join("half.safetensors");
    first.save(&ck, data.fingerprint()).unwrap();
    drop(first);
    let (mut resumed, fp) = Trainer::<f32>::load(dev, &ck).unwrap();
    assert_eq!(fp, data.fingerprint());
    assert_eq!(resumed.step_count(), 2);
    for rep in &reports[2..] {
        let got = resumed.step(&data).unwrap();
        assert_eq!(
            (got.loss.to_bits(), got.grad_norm.to_bits()),
            (rep.loss.to_bits(), rep.grad_norm.to_bits()),
            "step {}",
            rep.step
        );
    }
    assert!(state_bits(&resumed) == state_bits(&whole), "the resumed run's state differs");
    assert!(resumed.step(&data).is_err(), "every step was taken");
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "only the checkpoint is left, no temporary file: {names:?}");
}

/// `steps` steps of a fresh run under `rule`; the state's bits and the reports.
fn scaled_run<T: DType>(
    dev: &Device,
    s: u64,
    data: &Corpus,
    steps: u64,
    rule: LossScale,
) -> (Trainer<T>, Vec<StepReport>) {
    let mut t = Trainer::<T>::new(dev, run(s, 4, None)).unwrap();
    t.set_loss_scale(rule).unwrap();
    let reports = (0..steps).map(|_| t.step(data).unwrap()).collect();
    (t, reports)
}

fn loss_scaling_is_exact<T: DType>(dev: &Device, s: u64, data: &Corpus) {
    // powers of two with nothing overflowing: every bit as the unscaled run
    let (plain, want) = scaled_run::<T>(dev, s, data, 2, LossScale::Off);
    let (fixed, got) = scaled_run::<T>(dev, s, data, 2, LossScale::Static(1024.0));
    assert_eq!(state_bits(&fixed), state_bits(&plain), "{}: a static scale of 2^10", T::NAME);
    assert_eq!(got, want);
    // growth every finite step: 2^4 -> 2^6 after two, still the same bits
    let (grown, got) = scaled_run::<T>(dev, s, data, 2, LossScale::Dynamic { init: 16.0, growth_interval: 1 });
    assert_eq!(grown.loss_scale(), 64.0);
    assert_eq!(state_bits(&grown), state_bits(&plain), "{}: a dynamic scale that grows", T::NAME);
    assert_eq!(got, want);
}

/// The seed and corpus of the loss-scaling tests.
fn scaling_run_data() -> (u64, Corpus) {
    let s = seed();
    (s, corpus(&mut StdRng::seed_from_u64(s ^ 0x5ca1e), 4000))
}

/// Static and dynamic scales by powers of two change no bit of an f32 or a bf16
/// run. (The longest checks of this file: the f16 back-off is a test of its own,
/// so that the two run side by side.)
#[test]
fn loss_scaling_changes_no_bit() {
    on_backends("loss_scaling_changes_no_bit", loss_scaling_changes_no_bit_on);
}

fn loss_scaling_changes_no_bit_on(dev: &Device) {
    let (s, data) = scaling_run_data();
    loss_scaling_is_exact::<f32>(dev, s, &data);
    loss_scaling_is_exact::<bf16>(dev, s, &data);
}

#[test]
fn loss_scaling_backs_off_on_overflow() {
    on_backends("loss_scaling_backs_off_on_overflow", loss_scaling_backs_off_on_overflow_on);
}

fn loss_scaling_backs_off_on_overflow_on(dev: &Device) {
    let (s, data) = scaling_run_data();
    // f16 at 2^24: the scaled gradients overflow f16, the step is taken again with
    // half the factor until they are finite, and the step that counts is the one a
    // static run at the final factor takes (the failed tries updated nothing)
    let init = 2f32.powi(24);
    let (backed, got) = scaled_run::<f16>(dev, s, &data, 1, LossScale::Dynamic { init, growth_interval: 100 });
    let f = backed.loss_scale();
    assert!(f < init && f >= 1.0, "the scale backed off to {f}");
    assert!(got[0].grad_norm.is_finite() && backed.step_count() == 1, "{:?}", got[0]);
    let (fixed, want) = scaled_run::<f16>(dev, s, &data, 1, LossScale::Static(f));
    assert_eq!(state_bits(&backed), state_bits(&fixed), "f16: backed off to {f}");
    assert_eq!(got, want);
    eprintln!("f16: a loss scale of 2^24 backed off to 2^{}", f.log2());
    // bad rules
    let mut t = Trainer::<f32>::new(dev, run(s, 4, None)).unwrap();
    for bad in [LossScale::Static(0.0), LossScale::Static(f32::NAN), LossScale::Static(f32::INFINITY)] {
        assert!(t.set_loss_scale(bad).unwrap_err().to_string().contains("finite and > 0"), "{bad:?}");
    }
    let e = t.set_loss_scale(LossScale::Dynamic { init: 8.0, growth_interval: 0 }).unwrap_err().to_string();
    assert!(e.contains("growth interval"), "{e}");
}

/// A dynamic f16 run saved after one step and resumed keeps its loss scaling:
/// the rule, the next factor and the count of finite steps towards doubling,
/// so the rest of the run is bitwise the uninterrupted one's. A reference run's
/// file (no such metadata) loads with scaling off; malformed metadata is an
/// error that leaves the trainer as it was.
#[test]
fn a_resumed_run_keeps_its_loss_scale() {
    on_backends("a_resumed_run_keeps_its_loss_scale", a_resumed_run_keeps_its_loss_scale_on);
}

fn a_resumed_run_keeps_its_loss_scale_on(dev: &Device) {
    let s = seed();
    let data = corpus(&mut StdRng::seed_from_u64(s ^ 0x5ca_1e2), 4000);
    let rule = LossScale::Dynamic { init: 2f32.powi(20), growth_interval: 2 };
    let fresh = || {
        let mut t = Trainer::<f16>::new(dev, run(s, 4, None)).unwrap();
        t.set_loss_scale(rule).unwrap();
        t
    };
    let mut whole = fresh();
    let reports: Vec<StepReport> = (0..3).map(|_| whole.step(&data).unwrap()).collect();
    let mut first = fresh();
    assert_eq!(first.step(&data).unwrap(), reports[0]);
    let saved = first.loss_scale_metadata();
    assert_eq!(saved["tokenformer.device.loss_scale.good_steps"], "1", "{saved:?}");
    let dir = tempdir();
    let ck = dir.join("scaled.safetensors");
    first.save(&ck, data.fingerprint()).unwrap();
    let (mut resumed, _) = Trainer::<f16>::load(dev, &ck).unwrap();
    assert_eq!(resumed.loss_scale_metadata(), saved);
    assert_eq!(resumed.loss_scale(), first.loss_scale());
    for rep in &reports[1..] {
        assert_eq!(&resumed.step(&data).unwrap(), rep);
    }
    assert_eq!(resumed.loss_scale_metadata(), whole.loss_scale_metadata());
    assert!(state_bits(&resumed) == state_bits(&whole), "the resumed run's state differs");

    // a reference run's checkpoint: no scaling state, loads with scaling off
    let (reference, fp) = tf_ref::Trainer::load(&ck).unwrap();
    let plain = dir.join("reference.safetensors");
    reference.save(&plain, fp).unwrap();
    let stray = std::collections::BTreeMap::from([("tokenformer.step".to_string(), "9".to_string())]);
    let e = reference.save_with(&dir.join("x.safetensors"), fp, &stray).unwrap_err().to_string();
    assert!(e.contains("tokenformer.device."), "device metadata outside its prefix: {e}");
    let (off, _) = Trainer::<f16>::load(dev, &plain).unwrap();
    assert_eq!(off.loss_scale(), 1.0);
    assert_eq!(off.loss_scale_metadata()["tokenformer.device.loss_scale"], "off");
    // malformed metadata: an error, the trainer unchanged
    let mut t = fresh();
    for (k, v) in [
        ("tokenformer.device.loss_scale", "dynamic:8"),
        ("tokenformer.device.loss_scale.factor", "0"),
        ("tokenformer.device.loss_scale.factor", "inf"),
        ("tokenformer.device.loss_scale.good_steps", "-1"),
    ] {
        let mut bad = saved.clone();
        bad.insert(k.to_string(), v.to_string());
        let e = t.restore_loss_scale(&bad).unwrap_err().to_string();
        assert!(e.contains(k) && e.contains("malformed"), "{k} = {v}: {e}");
        assert_eq!(t.loss_scale(), 2f32.powi(20), "{k} = {v}: the trainer changed");
    }
    assert!(!t.restore_loss_scale(&Default::default()).unwrap(), "no metadata: nothing restored");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    on_backends("bad_input_is_an_error_not_a_panic", bad_input_is_an_error_not_a_panic_on);
}

fn bad_input_is_an_error_not_a_panic_on(dev: &Device) {
    let good = run(1, 4, None);
    let bad = |what: &str, c: RunConfig| {
        let e = Trainer::<f32>::new(dev, c).expect_err(what);
        eprintln!("{what}: {e}");
    };
    bad("unknown config", RunConfig { base: "nope".into(), ..good.clone() });
    bad("batch 0", RunConfig { batch: 0, ..good.clone() });
    bad("steps 0", RunConfig { steps: 0, ..good.clone() });
    bad("seq above the context", RunConfig { seq: 129, ..good.clone() });
    bad("lr NaN", RunConfig { adamw: AdamWConfig { lr: f64::NAN, ..good.adamw }, ..good.clone() });
    let g = GrowPlan { at: 4, qkv: 64, proj: 64, ffn: 256, preserving: true };
    bad("growth at the last step", RunConfig { grow: Some(g), ..good.clone() });
    bad("growth that shrinks", RunConfig { grow: Some(GrowPlan { at: 1, qkv: 8, ..g }), ..good.clone() });

    let mut t = Trainer::<f32>::new(dev, good).unwrap();
    let short = Corpus::new((0..20).map(|i| i * 7 % 512).collect(), 512).unwrap();
    assert!(t.step(&short).is_err(), "a corpus shorter than seq + 1");
    assert!(t.eval_loss(&short).is_err(), "no held-out window");
    assert!(t.grow(1, 1, 1, true).is_err(), "growth to fewer slots");
    assert_eq!(t.step_count(), 0, "nothing was taken");
    let dir = tempdir();
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    assert!(Trainer::<f32>::load(dev, &junk).is_err(), "a file that is not a checkpoint");
    assert!(Trainer::<f32>::load(dev, &dir.join("missing")).is_err(), "a missing file");
    assert!(t.save(&dir.join("no-such-dir").join("x.safetensors"), 0).is_err(), "an unwritable path");
}

/// A fresh directory under the system's temporary directory.
fn tempdir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("tf-trainer-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
