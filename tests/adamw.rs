//! The fused AdamW step (kernels/adamw.cu, tf_host::AdamW) against tf-ref's f64
//! `adamw_step`, on the emulator always and on CUDA when a device is present.
//!
//! Tolerances: the f32 master weights within 1e-6 of the f64 reference, element
//! by element and relative (parameters are kept away from 0); the moments within
//! 1e-6 relative Frobenius error; the parameter copy is the master rounded to its
//! storage type, bit for bit. Gradients are f32 for every parameter type; the
//! reference takes the same f32 values (times the step's scale, in f64).

mod common;

use common::{assert_close, backends, rand_vec, seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tf_host::{
    bf16, f16, grow_batch, AdamW, AdamWConfig, DType, Device, EmuOptions, GrowInit, GrowItem, LaneOrder, Tensor, View,
    ViewMut,
};
use tf_ref::AdamWState;

/// Every residue of the element count mod 8, one tensor spanning three chunks.
const SHAPES: &[&[usize]] = &[&[4, 8], &[3, 3], &[2, 9], &[3], &[4, 5], &[3, 7], &[2, 15], &[5, 11], &[130, 257]];

/// Random parameter values with |x| in [0.05, 1], either sign, as T.
fn rand_params<T: DType>(rng: &mut StdRng, n: usize) -> Vec<T> {
    (0..n)
        .map(|_| {
            let a: f32 = rng.random_range(0.05..=1.0);
            T::from_f32(if rng.random::<bool>() { a } else { -a })
        })
        .collect()
}

/// Parameters on the device, the optimizer, and the f64 reference of both.
struct Case<T: DType> {
    params: Vec<Tensor<T>>,
    opt: AdamW<T>,
    cfg: AdamWConfig,
    ref_p: Vec<Vec<f64>>,
    state: AdamWState,
    decay: Vec<bool>,
}

impl<T: DType> Case<T> {
    fn new(dev: &Device, shapes: &[&[usize]], cfg: AdamWConfig, rng: &mut StdRng) -> Self {
        let mut params = Vec::new();
        for s in shapes {
            params.push(dev.upload(&rand_params::<T>(rng, s.iter().product()), s).unwrap());
        }
        let decay: Vec<bool> = (0..shapes.len()).map(|i| i % 3 != 1).collect();
        let views: Vec<View<'_, T>> = params.iter().map(|p| p.view()).collect();
        let opt = AdamW::new(dev, &views, &decay, cfg).unwrap();
        let ref_p = params.iter().map(|p| to_f64(&p.to_vec().unwrap())).collect::<Vec<_>>();
        let state = AdamWState::new(&ref_p.iter().map(|p| p.len()).collect::<Vec<_>>());
        // The parameter copies are outputs of every step: poison them.
        for p in &mut params {
            p.write(&vec![T::NAN; p.len()]).unwrap();
        }
        Case { params, opt, cfg, ref_p, state, decay }
    }

    /// One step on both sides with these gradients; the two results.
    fn step(
        &mut self,
        grads: &[Vec<f32>],
        lr: f64,
    ) -> (tf_host::Result<tf_host::StepInfo>, tf_ref::Result<tf_ref::StepInfo>) {
        self.step_scaled(grads, lr, 1.0)
    }

    /// One step of the gradients times `scale` (the device multiplies in f32, the
    /// reference takes the f64 products).
    fn step_scaled(
        &mut self,
        grads: &[Vec<f32>],
        lr: f64,
        scale: f32,
    ) -> (tf_host::Result<tf_host::StepInfo>, tf_ref::Result<tf_ref::StepInfo>) {
        let dev = self.params[0].device().clone();
        let g: Vec<Tensor<f32>> =
            grads.iter().zip(&self.params).map(|(g, p)| dev.upload(g, p.shape()).unwrap()).collect();
        let gv: Vec<View<'_, f32>> = g.iter().map(|t| t.view()).collect();
        let mut pv: Vec<ViewMut<'_, T>> = self.params.iter_mut().map(|p| p.view_mut()).collect();
        let got = self.opt.step_scaled(&mut pv, &gv, lr, scale);
        let g64: Vec<Vec<f64>> =
            grads.iter().map(|g| g.iter().map(|&x| f64::from(x) * f64::from(scale)).collect()).collect();
        let gs: Vec<&[f64]> = g64.iter().map(|g| g.as_slice()).collect();
        let mut ps: Vec<&mut [f64]> = self.ref_p.iter_mut().map(|p| p.as_mut_slice()).collect();
        let want = tf_ref::adamw_step(&self.cfg, lr, &mut self.state, &mut ps, &gs, &self.decay);
        (got, want)
    }

    fn grads(&self, rng: &mut StdRng, scale: f32) -> Vec<Vec<f32>> {
        self.params.iter().map(|p| rand_vec::<f32>(rng, p.len(), scale)).collect()
    }

    /// Master, moments and parameter copies against the reference.
    fn check(&self, what: &str) {
        for i in 0..self.params.len() {
            let master = self.opt.master(i).unwrap().to_vec().unwrap();
            let want = &self.ref_p[i];
            for (j, (&g, &w)) in master.iter().zip(want).enumerate() {
                let err = (g as f64 - w).abs();
                assert!(
                    err <= 1e-6 * w.abs(),
                    "{what}: tensor {i} element {j}: master {g}, want {w} (error {err:.2e})"
                );
            }
            let (m, v) = self.opt.moments(i).unwrap();
            assert_close(&format!("{what}: m of tensor {i}"), &m.to_vec().unwrap(), &self.state.m[i], 1e-6);
            assert_close(&format!("{what}: v of tensor {i}"), &v.to_vec().unwrap(), &self.state.v[i], 1e-6);
            let copy = self.params[i].to_vec().unwrap();
            for (j, (&c, &g)) in copy.iter().zip(&master).enumerate() {
                assert_eq!(
                    c.to_f32().to_bits(),
                    T::from_f32(g).to_f32().to_bits(),
                    "{what}: tensor {i} element {j}: copy {c:?} is not master {g} rounded"
                );
            }
        }
    }

    /// Every bit of the device state: master, moments, copies.
    fn bits(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for i in 0..self.params.len() {
            let (m, v) = self.opt.moments(i).unwrap();
            for t in [self.opt.master(i).unwrap(), m, v] {
                out.extend(t.to_vec().unwrap().iter().map(|x| x.to_bits()));
            }
            out.extend(self.params[i].to_vec().unwrap().iter().map(|x| x.to_f32().to_bits()));
        }
        out
    }
}

fn to_f64<T: DType>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

/// Three steps; `grad_scale` decides whether clipping is active.
fn three_steps<T: DType>(dev: &Device, cfg: AdamWConfig, grad_scale: f32, s: u64) {
    let mut rng = StdRng::seed_from_u64(s);
    let mut case = Case::<T>::new(dev, SHAPES, cfg, &mut rng);
    for (k, lr) in [2e-3, 1e-3, 5e-4].into_iter().enumerate() {
        let grads = case.grads(&mut rng, grad_scale);
        let (got, want) = case.step(&grads, lr);
        let (got, want) = (got.unwrap(), want.unwrap());
        let what = format!("{} scale {grad_scale} clip {:?} step {}", T::NAME, cfg.max_grad_norm, k + 1);
        assert_eq!(got.step, k as u64 + 1, "{what}");
        let (n, c) = (got.grad_norm.unwrap() as f64, got.clip_scale.unwrap() as f64);
        assert!((n - want.grad_norm).abs() <= 1e-5 * want.grad_norm, "{what}: norm {n} vs {}", want.grad_norm);
        assert!((c - want.clip_scale).abs() <= 1e-5 * want.clip_scale, "{what}: clip {c} vs {}", want.clip_scale);
        let clipped = want.clip_scale < 1.0;
        assert_eq!(clipped, grad_scale >= 0.5 && cfg.max_grad_norm.is_some(), "{what}: clipping as planned");
        case.check(&what);
    }
}

#[test]
fn three_steps_match_tf_ref_with_tails_and_clipping() {
    let s = seed();
    for (dev, _) in backends() {
        for cfg in [AdamWConfig::default(), AdamWConfig { max_grad_norm: None, ..Default::default() }] {
            for scale in [1.0, 1e-3] {
                three_steps::<f32>(&dev, cfg, scale, s);
                three_steps::<bf16>(&dev, cfg, scale, s);
                three_steps::<f16>(&dev, cfg, scale, s);
            }
        }
    }
}

/// Two bf16 steps with clipping: the norms' bits and every bit of the state.
fn bits_of_two_steps(dev: &Device, s: u64) -> (Vec<(u32, u32)>, Vec<u32>) {
    let mut rng = StdRng::seed_from_u64(s);
    let mut case = Case::<bf16>::new(dev, SHAPES, AdamWConfig::default(), &mut rng);
    let mut norms = Vec::new();
    for lr in [2e-3, 1e-3] {
        let grads = case.grads(&mut rng, 1.0);
        let info = case.step(&grads, lr).0.unwrap();
        norms.push((info.grad_norm.unwrap().to_bits(), info.clip_scale.unwrap().to_bits()));
    }
    (norms, case.bits())
}

#[test]
fn two_runs_give_identical_bits() {
    let s = seed();
    for (dev, name) in backends() {
        let first = bits_of_two_steps(&dev, s);
        assert!(first == bits_of_two_steps(&dev, s), "{name}: two identical runs differ");
        if name == "emulator" {
            // Another lane order and one worker thread: the same bits (no atomics,
            // no order that depends on scheduling).
            let other = Device::emulator_with(EmuOptions {
                lane_order: LaneOrder::Reverse,
                os_threads: 1,
                ..Default::default()
            });
            assert!(first == bits_of_two_steps(&other, s), "the lane order changed the result");
        }
    }
}

#[test]
fn nan_gradient_skips_the_step_as_tf_ref_refuses_it() {
    let s = seed();
    for (dev, _) in backends() {
        let mut rng = StdRng::seed_from_u64(s);
        let mut case = Case::<f16>::new(&dev, SHAPES, AdamWConfig::default(), &mut rng);
        let grads = case.grads(&mut rng, 1.0);
        let (got, want) = case.step(&grads, 2e-3);
        got.unwrap();
        want.unwrap();
        let before = case.bits();
        let mut bad = case.grads(&mut rng, 1.0);
        bad[4][7] = f32::NAN;
        let (got, want) = case.step(&bad, 2e-3);
        assert!(want.is_err(), "tf-ref refuses a NaN gradient");
        let msg = got.expect_err("the step must be refused").to_string();
        assert!(msg.contains("NaN"), "{msg}");
        assert_eq!(case.opt.steps(), 1, "the refused step is not counted");
        assert!(case.bits() == before, "a refused step changed the state");
        // Not reading the norm: the step is queued, skipped on the device all the same.
        case.opt.set_read_norm(false);
        let mut pv: Vec<ViewMut<'_, f16>> = case.params.iter_mut().map(|p| p.view_mut()).collect();
        let g: Vec<Tensor<f32>> = bad.iter().zip(SHAPES).map(|(g, shape)| dev.upload(g, shape).unwrap()).collect();
        let gv: Vec<View<'_, f32>> = g.iter().map(|t| t.view()).collect();
        let info = case.opt.step(&mut pv, &gv, 2e-3).unwrap();
        assert_eq!((info.grad_norm, info.clip_scale), (None, None));
        drop(pv);
        assert!(case.opt.last_norm().unwrap().0.is_nan());
        assert!(case.bits() == before, "a skipped step changed the state");
        assert_eq!(case.opt.steps(), 2, "unread, a skipped step still counts (documented)");
    }
}

/// One parameter and its gradient as views at element offset 1 of larger buffers
/// (not 16-byte aligned: the scalar path), two steps against tf-ref.
fn unaligned<T: DType>(dev: &Device, s: u64) {
    let mut rng = StdRng::seed_from_u64(s);
    let n = 45;
    let init: Vec<T> = rand_params(&mut rng, n + 1);
    let mut buf = dev.upload(&init, &[n + 1]).unwrap();
    let cfg = AdamWConfig::default();
    let mut opt = AdamW::new(dev, &[buf.strided(1, &[n], &[1]).unwrap()], &[true], cfg).unwrap();
    buf.write(&vec![T::NAN; n + 1]).unwrap();
    let mut want: Vec<f64> = to_f64(&init[1..]);
    let mut state = AdamWState::new(&[n]);
    for lr in [2e-3, 1e-3] {
        let gbuf_data: Vec<f32> = rand_vec(&mut rng, n + 1, 1.0);
        let gbuf = dev.upload(&gbuf_data, &[n + 1]).unwrap();
        let g = gbuf.strided(1, &[n], &[1]).unwrap();
        let mut p = buf.strided_mut(1, &[n], &[1]).unwrap();
        opt.step(std::slice::from_mut(&mut p), &[g], lr).unwrap();
        let g64: Vec<f64> = gbuf_data[1..].iter().map(|&x| f64::from(x)).collect();
        tf_ref::adamw_step(&cfg, lr, &mut state, &mut [want.as_mut_slice()], &[g64.as_slice()], &[true]).unwrap();
    }
    let master = opt.master(0).unwrap().to_vec().unwrap();
    for (j, (&g, &w)) in master.iter().zip(&want).enumerate() {
        assert!((g as f64 - w).abs() <= 1e-6 * w.abs(), "{} element {j}: {g} vs {w}", T::NAME);
    }
    let all = buf.to_vec().unwrap();
    assert!(all[0].to_f32().is_nan(), "{}: the element before the view was written", T::NAME);
    for (c, g) in all[1..].iter().zip(&master) {
        assert_eq!(*c, T::from_f32(*g), "{}", T::NAME);
    }
}

#[test]
fn unaligned_views_take_the_scalar_path() {
    let s = seed();
    for (dev, _) in backends() {
        unaligned::<f32>(&dev, s);
        unaligned::<bf16>(&dev, s);
        unaligned::<f16>(&dev, s);
    }
}

#[test]
fn grow_rows_keeps_state_and_starts_new_rows_fresh() {
    let s = seed();
    for (dev, _) in backends() {
        let mut rng = StdRng::seed_from_u64(s);
        let shapes: &[&[usize]] = &[&[5, 6], &[7]];
        let mut case = Case::<f32>::new(&dev, shapes, AdamWConfig::default(), &mut rng);
        let grads = case.grads(&mut rng, 1.0);
        let (got, want) = case.step(&grads, 2e-3);
        got.unwrap();
        want.unwrap();
        // Tensor 0 grows from 5 to 9 rows: the kept rows as they are, new rows random.
        let extra: Vec<f32> = rand_params(&mut rng, 4 * 6);
        let mut all = case.params[0].to_vec().unwrap();
        all.extend(&extra);
        case.params[0] = dev.upload(&all, &[9, 6]).unwrap();
        case.opt.grow_rows(0, &case.params[0].view()).unwrap();
        case.ref_p[0].extend(extra.iter().map(|&x| x as f64));
        case.state.m[0].resize(9 * 6, 0.0);
        case.state.v[0].resize(9 * 6, 0.0);
        for lr in [1e-3, 5e-4] {
            let grads = case.grads(&mut rng, 1.0);
            let (got, want) = case.step(&grads, lr);
            got.unwrap();
            want.unwrap();
            case.check(&format!("after growth, lr {lr}"));
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let dev = Device::emulator();
    let other = Device::emulator();
    let p = dev.upload(&[0.5f32; 12], &[3, 4]).unwrap();
    let cfg = AdamWConfig::default();
    assert!(AdamW::new(&dev, &[p.view()], &[true, false], cfg).is_err(), "decay flags");
    let bad_cfg = AdamWConfig { beta1: 1.0, ..cfg };
    assert!(AdamW::new(&dev, &[p.view()], &[true], bad_cfg).is_err(), "beta1 = 1");
    assert!(AdamW::new(&other, &[p.view()], &[true], cfg).is_err(), "other device");
    let big = dev.upload(&[0.5f32; 24], &[3, 8]).unwrap();
    let cols = big.strided(0, &[3, 4], &[8, 1]).unwrap();
    assert!(AdamW::new(&dev, &[cols], &[true], cfg).is_err(), "not contiguous");

    let mut opt = AdamW::new(&dev, &[p.view()], &[true], cfg).unwrap();
    let mut q = dev.upload(&[0.5f32; 12], &[3, 4]).unwrap();
    let g = dev.upload(&[0.1f32; 12], &[3, 4]).unwrap();
    assert!(opt.step_scaled(&mut [q.view_mut()], &[g.view()], 1e-3, 0.0).is_err(), "grad_scale 0");
    assert!(opt.step_scaled(&mut [q.view_mut()], &[g.view()], 1e-3, f32::NAN).is_err(), "grad_scale NaN");
    assert!(opt.step_scaled(&mut [q.view_mut()], &[g.view()], 1e-3, f32::INFINITY).is_err(), "grad_scale inf");
    let g_wrong = dev.upload(&[0.1f32; 12], &[4, 3]).unwrap();
    let g_other = other.upload(&[0.1f32; 12], &[3, 4]).unwrap();
    let mut q_wrong = dev.upload(&[0.5f32; 12], &[2, 6]).unwrap();
    assert!(opt.step(&mut [q.view_mut()], &[g_wrong.view()], 1e-3).is_err(), "gradient shape");
    assert!(opt.step(&mut [q_wrong.view_mut()], &[g.view()], 1e-3).is_err(), "parameter shape");
    assert!(opt.step(&mut [q.view_mut()], &[g_other.view()], 1e-3).is_err(), "gradient device");
    assert!(opt.step(&mut [q.view_mut()], &[], 1e-3).is_err(), "gradient count");
    assert!(opt.step(&mut [], &[], 1e-3).is_err(), "tensor count");
    assert!(opt.step(&mut [q.view_mut()], &[g.view()], f64::NAN).is_err(), "lr NaN");
    assert!(opt.step(&mut [q.view_mut()], &[g.view()], -1.0).is_err(), "lr < 0");
    assert_eq!(opt.steps(), 0, "refused steps are not counted");
    assert!(q.to_vec().unwrap().iter().all(|&x| x == 0.5), "a refused step wrote");
    assert!(opt.grow_rows(1, &p.view()).is_err(), "index");
    assert!(opt.grow_rows(0, &dev.upload(&[0.5f32; 10], &[2, 5]).unwrap().view()).is_err(), "fewer rows, other cols");
    assert!(opt.grow_rows(0, &other.upload(&[0.5f32; 16], &[4, 4]).unwrap().view()).is_err(), "other device");
    assert!(opt.grow_rows_init(0, &[2, 4], GrowInit::Zeros).is_err(), "fewer rows");
    assert!(opt.grow_rows_init(0, &[5, 3], GrowInit::Zeros).is_err(), "other inner size");
    assert!(opt.grow_rows_init(0, &[], GrowInit::Zeros).is_err(), "0-D");
    assert!(opt.grow_rows_init(3, &[5, 4], GrowInit::Zeros).is_err(), "index");
    let wrong_rows = dev.upload(&[0.5f32; 12], &[3, 4]).unwrap();
    assert!(opt.grow_rows_init(0, &[5, 4], GrowInit::Rows(wrong_rows.view())).is_err(), "3 init rows for 2 new");
    let far_rows = other.upload(&[0.5f32; 8], &[2, 4]).unwrap();
    assert!(opt.grow_rows_init(0, &[5, 4], GrowInit::Rows(far_rows.view())).is_err(), "init rows elsewhere");
    assert_eq!(opt.master(0).unwrap().shape(), &[3, 4], "a refused growth changed the state");
    opt.step(&mut [q.view_mut()], &[g.view()], 1e-3).unwrap();
    assert_eq!(opt.steps(), 1);
}

/// The gradients are f32 for a 16-bit model: gradients around 1e-7, which f16
/// would flush to zero or to a few subnormal steps (its smallest subnormal is
/// 6e-8), still train as tf-ref says (Adam's update hardly depends on the
/// gradients' scale while they exceed eps = 1e-8).
#[test]
fn tiny_f32_gradients_train_a_16_bit_model() {
    let s = seed();
    for (dev, _) in backends() {
        let mut rng = StdRng::seed_from_u64(s);
        let cfg = AdamWConfig { max_grad_norm: None, ..Default::default() };
        let mut case = Case::<f16>::new(&dev, SHAPES, cfg, &mut rng);
        let grads = case.grads(&mut rng, 2e-7);
        let lost = grads.iter().flatten().filter(|&&g| f16::from_f32(g).to_f32() != g).count();
        assert!(lost * 2 > grads.iter().map(Vec::len).sum::<usize>(), "most of these gradients are not f16 values");
        for lr in [2e-3, 1e-3] {
            let (got, want) = case.step(&grads, lr);
            got.unwrap();
            want.unwrap();
            case.check(&format!("gradients near 1e-7, lr {lr}"));
        }
    }
}

/// `step_scaled`: the step of the gradients times the scale (the mean of summed
/// windows), norm and clipping included, for a scale that is a power of two and
/// one that is not.
#[test]
fn scaled_gradients_match_tf_ref() {
    let s = seed();
    for (dev, _) in backends() {
        for scale in [0.125f32, 1.0 / 3.0] {
            let mut rng = StdRng::seed_from_u64(s);
            let mut case = Case::<bf16>::new(&dev, SHAPES, AdamWConfig::default(), &mut rng);
            for (k, lr) in [2e-3, 1e-3].into_iter().enumerate() {
                let grads = case.grads(&mut rng, 4.0);
                let (got, want) = case.step_scaled(&grads, lr, scale);
                let (got, want) = (got.unwrap(), want.unwrap());
                let what = format!("scale {scale} step {}", k + 1);
                let n = got.grad_norm.unwrap() as f64;
                assert!((n - want.grad_norm).abs() <= 1e-5 * want.grad_norm, "{what}: norm {n} vs {}", want.grad_norm);
                assert!(want.clip_scale < 1.0, "{what}: the scaled gradients are still clipped");
                case.check(&what);
            }
        }
    }
}

/// `grow_rows_init` with the growth kernel's normal init gives the master rows
/// that a parameter grown with the same init was rounded from (f32: the same
/// bits), zero moments for the new rows, and the old rows' state unchanged.
fn grow_init_matches_the_parameter<T: DType>(dev: &Device, s: u64) {
    let mut rng = StdRng::seed_from_u64(s);
    let shapes: &[&[usize]] = &[&[5, 16], &[16]];
    let mut case = Case::<T>::new(dev, shapes, AdamWConfig::default(), &mut rng);
    let grads = case.grads(&mut rng, 1.0);
    case.step(&grads, 2e-3).0.unwrap();
    let (m_old, v_old) = case.opt.moments(0).map(|(m, v)| (m.to_vec().unwrap(), v.to_vec().unwrap())).unwrap();
    let master_old = case.opt.master(0).unwrap().to_vec().unwrap();
    let (std, seed) = (0.02, s ^ 0x5eed);
    let mut grown = dev.zeros::<T>(&[12, 16]).unwrap();
    let item = GrowItem {
        src: Some(case.params[0].view()),
        dst: grown.view_mut(),
        rows_old: 5,
        init: GrowInit::Normal { std, seed },
    };
    grow_batch(dev, vec![item]).unwrap();
    case.opt.grow_rows_init(0, &[12, 16], GrowInit::Normal { std, seed }).unwrap();
    let master = case.opt.master(0).unwrap().to_vec().unwrap();
    let (m, v) = case.opt.moments(0).map(|(m, v)| (m.to_vec().unwrap(), v.to_vec().unwrap())).unwrap();
    assert_eq!(&master[..80], &master_old[..], "{}: kept master rows", T::NAME);
    assert_eq!((&m[..80], &v[..80]), (&m_old[..], &v_old[..]), "{}: kept moments", T::NAME);
    assert!(m[80..].iter().chain(&v[80..]).all(|&x| x == 0.0), "{}: new moments are zero", T::NAME);
    let p = grown.to_vec().unwrap();
    assert!(master[80..].iter().any(|&x| x != 0.0), "{}: the new rows are random", T::NAME);
    for (j, (&g, &w)) in p[80..].iter().zip(&master[80..]).enumerate() {
        assert_eq!(g.to_f32().to_bits(), T::from_f32(w).to_f32().to_bits(), "{} new element {j}", T::NAME);
    }
    case.params[0] = grown;
    for lr in [1e-3, 5e-4] {
        let grads = case.grads(&mut rng, 1.0);
        case.step(&grads, lr).0.unwrap();
    }
    assert_eq!(case.opt.steps(), 3);
}

#[test]
fn grow_rows_init_matches_the_grown_parameter() {
    let s = seed();
    for (dev, _) in backends() {
        grow_init_matches_the_parameter::<f32>(&dev, s);
        grow_init_matches_the_parameter::<bf16>(&dev, s);
        grow_init_matches_the_parameter::<f16>(&dev, s);
    }
}
