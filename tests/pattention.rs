//! Pattention forward (kernels/pattention*.cu through tf-host) against tf-ref,
//! on the emulator always and on CUDA when a device is present: every norm ×
//! dtype, pinned n_ref and eps, tails in every dimension, the decode (t <= 64,
//! 16-bit) and tiled paths, adversarial rows, workspace reuse, and the errors of
//! bad input. Outputs are poisoned (NaN) first, so an element the kernels fail
//! to write fails the comparison.

mod common;

use common::{assert_close, backends, rand_vec, seed, tolerance};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tf_host::{
    bf16, f16, pattention, pattention_into, pattention_workspace_bytes, DType, Device, EmuOptions, Error, LaneOrder,
    Norm, PattentionOptions, Tensor, Workspace,
};
use tf_ref::{Element, MatRef};

/// Host copies of one problem.
struct Problem<T> {
    x: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    t: usize,
    n: usize,
    d_in: usize,
    d_out: usize,
}

/// Random x ∈ [-1, 1], keys ∈ [-2/√d_in, 2/√d_in] (scores of order 1), values ∈ [-1, 1].
fn problem<T: DType>(rng: &mut StdRng, t: usize, n: usize, d_in: usize, d_out: usize) -> Problem<T> {
    let ks = 2.0 / (d_in.max(1) as f32).sqrt();
    Problem {
        x: rand_vec::<T>(rng, t * d_in, 1.0),
        k: rand_vec::<T>(rng, n * d_in, ks),
        v: rand_vec::<T>(rng, n * d_out, 1.0),
        t,
        n,
        d_in,
        d_out,
    }
}

fn ref_norm(n: Norm) -> tf_ref::Norm {
    match n {
        Norm::L2NormGelu => tf_ref::Norm::L2NormGelu,
        Norm::GeluL2Norm => tf_ref::Norm::GeluL2Norm,
        Norm::Softmax => tf_ref::Norm::Softmax,
    }
}

fn reference<T: DType + Element>(p: &Problem<T>, o: &PattentionOptions) -> Vec<f64> {
    let opts = tf_ref::PattentionOpts { norm: ref_norm(o.norm), n_ref: o.n_ref, eps: f64::from(o.eps) };
    tf_ref::pattention(
        MatRef::new(&p.x, p.t, p.d_in).unwrap(),
        MatRef::new(&p.k, p.n, p.d_in).unwrap(),
        MatRef::new(&p.v, p.n, p.d_out).unwrap(),
        &opts,
    )
    .unwrap()
    .data
}

/// Runs the kernels into a NaN-poisoned output; returns it as f32.
fn run<T: DType>(dev: &Device, p: &Problem<T>, o: &PattentionOptions, ws: Option<&mut Workspace>) -> Vec<f32> {
    let x = dev.upload(&p.x, &[p.t, p.d_in]).unwrap();
    let k = dev.upload(&p.k, &[p.n, p.d_in]).unwrap();
    let v = dev.upload(&p.v, &[p.n, p.d_out]).unwrap();
    let mut y: Tensor<T> = dev.poisoned(&[p.t, p.d_out]).unwrap();
    pattention_into(dev, &x.view(), &k.view(), &v.view(), &mut y.view_mut(), o, ws).unwrap();
    y.to_vec().unwrap().into_iter().map(DType::to_f32).collect()
}

/// Kernel vs tf-ref: relative Frobenius error within the dtype's tolerance, no
/// NaN, every element written, and the largest element error within
/// 5·tol·max|ref|. Returns (relative error, max abs error).
fn check<T: DType + Element>(dev: &Device, backend: &str, p: &Problem<T>, o: &PattentionOptions) -> (f64, f64) {
    let got = run(dev, p, o, None);
    let want = reference(p, o);
    let what = format!(
        "{backend} {} {:?} n_ref {:?} eps {} [t {}, n {}, d_in {}, d_out {}]",
        <T as DType>::NAME,
        o.norm,
        o.n_ref,
        o.eps,
        p.t,
        p.n,
        p.d_in,
        p.d_out
    );
    let tol = tolerance::<T>();
    let (rel, max_abs) = assert_close(&what, &got, &want, tol);
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
    assert!(
        max_abs <= 5.0 * tol * scale.max(1e-30),
        "{what}: max abs error {max_abs:.3e} > 5·{tol:.0e}·max|ref| ({scale:.3e})"
    );
    (rel, max_abs)
}

/// Every combination of sizes with tails in every dimension: t = 1 and 17 take
/// the decode path for f16/bf16, t = 130 the tiled path (2 row blocks, the second
/// of 2 rows); n = 129 is one n-tile and 1 column; d_in and d_out leave partial
/// k-steps and column blocks.
const TS: [usize; 3] = [1, 17, 130];
const NS: [usize; 3] = [1, 70, 129];
const D_INS: [usize; 3] = [8, 48, 136];
const D_OUTS: [usize; 3] = [8, 40, 264];

fn sweep<T: DType + Element>(dev: &Device, backend: &str, s: u64) {
    let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_0001);
    let mut worst = [0f64; 3];
    for t in TS {
        for n in NS {
            for d_in in D_INS {
                for d_out in D_OUTS {
                    let p = problem::<T>(&mut rng, t, n, d_in, d_out);
                    for (i, norm) in Norm::ALL.into_iter().enumerate() {
                        let o = PattentionOptions { norm, ..Default::default() };
                        let (rel, _) = check(dev, backend, &p, &o);
                        worst[i] = worst[i].max(rel);
                    }
                }
            }
        }
    }
    eprintln!(
        "{backend} {:>4}: 81 shapes, worst relative error l2_norm_gelu {:.2e}, gelu_l2_norm {:.2e}, softmax {:.2e}",
        <T as DType>::NAME,
        worst[0],
        worst[1],
        worst[2]
    );
}

#[test]
fn every_norm_and_dtype_with_tails() {
    let s = seed();
    for (dev, backend) in backends() {
        let t0 = std::time::Instant::now();
        sweep::<f32>(&dev, backend, s);
        sweep::<f16>(&dev, backend, s);
        sweep::<bf16>(&dev, backend, s);
        eprintln!("{backend}: sweep took {:.1} s", t0.elapsed().as_secs_f64());
    }
}

#[test]
fn pinned_n_ref_and_eps() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_0002);
        for &(t, n, d_in, d_out) in &[(17, 129, 48, 40), (130, 70, 8, 264)] {
            let pf = problem::<f32>(&mut rng, t, n, d_in, d_out);
            let ph = problem::<f16>(&mut rng, t, n, d_in, d_out);
            let pb = problem::<bf16>(&mut rng, t, n, d_in, d_out);
            for norm in Norm::ALL {
                for (n_ref, eps) in [(Some(50), 0.0), (Some(1000), 1e-5), (None, 0.25)] {
                    let o = PattentionOptions { norm, n_ref, eps };
                    check(&dev, backend, &pf, &o);
                    check(&dev, backend, &ph, &o);
                    check(&dev, backend, &pb, &o);
                }
            }
        }
    }
}

/// Scales row `r` of x by `f` (in f32, then rounded to T).
fn scale_row<T: DType>(p: &mut Problem<T>, r: usize, f: f32) {
    for v in &mut p.x[r * p.d_in..(r + 1) * p.d_in] {
        *v = T::from_f32(v.to_f32() * f);
    }
}

fn adversarial<T: DType + Element>(dev: &Device, backend: &str, s: u64, t: usize) {
    let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_0003);
    let (n, d_in, d_out) = (70, 48, 40);
    let mut p = problem::<T>(&mut rng, t, n, d_in, d_out);
    // row 0 zero, row 1 huge, row 2 tiny, row 3 nearly orthogonal to the keys
    p.x[..d_in].fill(T::from_f32(0.0));
    let (huge, tiny) = if <T as DType>::NAME == "f16" { (500.0, 2e-3) } else { (1e4, 1e-4) };
    scale_row(&mut p, 1, huge);
    scale_row(&mut p, 2, tiny);
    // keys live in the first half of the coordinates; row 3 mostly in the second
    for j in 0..n {
        for c in d_in / 2..d_in {
            p.k[j * d_in + c] = T::from_f32(0.0);
        }
    }
    for c in 0..d_in / 2 {
        p.x[3 * d_in + c] = T::from_f32(p.x[3 * d_in + c].to_f32() * 1e-3);
    }
    for norm in Norm::ALL {
        // softmax is not scale-invariant: a huge row has a one-hot softmax whose f32
        // scores carry relative error ~1e-7 · |A|; keep its rows moderate there.
        let mut q = Problem { x: p.x.clone(), k: p.k.clone(), v: p.v.clone(), ..p };
        if norm == Norm::Softmax {
            scale_row(&mut q, 1, 8.0 / huge);
            scale_row(&mut q, 2, 1.0 / tiny);
        }
        let o = PattentionOptions { norm, ..Default::default() };
        check(dev, backend, &q, &o);
        if norm != Norm::Softmax {
            let got = run(dev, &q, &o, None);
            assert!(
                got[..d_out].iter().all(|&v| v == 0.0),
                "{backend} {} {norm:?}: a zero row of x must give a zero row of y, got {:?}",
                <T as DType>::NAME,
                &got[..d_out.min(8)]
            );
        }
    }
    // f16 scores past the f16 range (|A| > 65504): stored ĥ are scaled by 2^-e.
    if <T as DType>::NAME == "f16" {
        let mut q = problem::<T>(&mut rng, t, n, d_in, d_out);
        for v in &mut q.k {
            *v = T::from_f32(v.to_f32() * 1e3);
        }
        scale_row(&mut q, 1, 1e3);
        for norm in [Norm::L2NormGelu, Norm::GeluL2Norm] {
            check(dev, backend, &q, &PattentionOptions { norm, ..Default::default() });
        }
    }
}

#[test]
fn adversarial_rows_on_both_paths() {
    let s = seed();
    for (dev, backend) in backends() {
        for t in [5, 70] {
            adversarial::<f32>(&dev, backend, s, t);
            adversarial::<f16>(&dev, backend, s, t);
            adversarial::<bf16>(&dev, backend, s, t);
        }
    }
}

#[test]
fn decode_and_tiled_paths_at_their_boundary() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_0004);
        for t in [64, 65] {
            let p = problem::<bf16>(&mut rng, t, 129, 40, 136);
            let q = problem::<f16>(&mut rng, t, 129, 40, 136);
            for norm in Norm::ALL {
                let o = PattentionOptions { norm, ..Default::default() };
                check(&dev, backend, &p, &o);
                check(&dev, backend, &q, &o);
            }
        }
    }
}

#[test]
fn results_are_deterministic_across_lane_orders() {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_0005);
    let p = problem::<bf16>(&mut rng, 17, 129, 48, 40);
    let q = problem::<f16>(&mut rng, 130, 129, 48, 40);
    for norm in Norm::ALL {
        let o = PattentionOptions { norm, ..Default::default() };
        let mut outs = Vec::new();
        for (order, sd) in [(LaneOrder::Forward, 1), (LaneOrder::Reverse, 2), (LaneOrder::Shuffled, s)] {
            let dev = Device::emulator_with(EmuOptions { lane_order: order, seed: sd, os_threads: 0 });
            let a: Vec<u32> = run(&dev, &p, &o, None).iter().map(|v| v.to_bits()).collect();
            let b: Vec<u32> = run(&dev, &q, &o, None).iter().map(|v| v.to_bits()).collect();
            outs.push((a, b));
        }
        assert!(outs.windows(2).all(|w| w[0] == w[1]), "{norm:?}: results differ between lane orders");
    }
}

#[test]
fn one_workspace_serves_many_calls() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_0006);
        let big = pattention_workspace_bytes::<f16>(130, 129, 264).unwrap();
        let mut ws = Workspace::new(&dev, big).unwrap();
        for &(t, n, d_in, d_out) in &[(130, 129, 16, 264), (3, 129, 16, 40), (130, 5, 24, 8)] {
            assert!(pattention_workspace_bytes::<f16>(t, n, d_out).unwrap() <= big);
            let p = problem::<f16>(&mut rng, t, n, d_in, d_out);
            for norm in Norm::ALL {
                let o = PattentionOptions { norm, ..Default::default() };
                let got = run(&dev, &p, &o, Some(&mut ws));
                assert_close(&format!("{backend} reused workspace {norm:?} t {t}"), &got, &reference(&p, &o), 2e-3);
            }
        }
        // the allocating form agrees with the workspace form
        let p = problem::<bf16>(&mut rng, 9, 33, 16, 24);
        let (x, k, v) = (
            dev.upload(&p.x, &[9, 16]).unwrap(),
            dev.upload(&p.k, &[33, 16]).unwrap(),
            dev.upload(&p.v, &[33, 24]).unwrap(),
        );
        let y = pattention(&dev, &x, &k, &v, &PattentionOptions::default()).unwrap();
        let got: Vec<f32> = y.to_vec().unwrap().into_iter().map(DType::to_f32).collect();
        assert_close("allocating pattention", &got, &reference(&p, &PattentionOptions::default()), 1e-2);
    }
}

#[test]
fn bad_inputs_return_errors() {
    let dev = Device::emulator();
    let o = PattentionOptions::default();
    let x = dev.upload(&[f16::from_f32(0.5); 4 * 16], &[4, 16]).unwrap();
    let k = dev.upload(&[f16::from_f32(0.5); 8 * 16], &[8, 16]).unwrap();
    let v = dev.upload(&[f16::from_f32(0.5); 8 * 24], &[8, 24]).unwrap();
    let k_bad = dev.upload(&[f16::from_f32(0.5); 8 * 24], &[8, 24]).unwrap();
    let v_bad = dev.upload(&[f16::from_f32(0.5); 9 * 24], &[9, 24]).unwrap();
    let mut y: Tensor<f16> = dev.poisoned(&[4, 24]).unwrap();
    let mut y_bad: Tensor<f16> = dev.poisoned(&[4, 16]).unwrap();

    let e = pattention_into(&dev, &x.view(), &k_bad.view(), &v.view(), &mut y.view_mut(), &o, None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "d_in mismatch: {e}");
    let e = pattention_into(&dev, &x.view(), &k.view(), &v_bad.view(), &mut y.view_mut(), &o, None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "n mismatch: {e}");
    let e = pattention_into(&dev, &x.view(), &k.view(), &v.view(), &mut y_bad.view_mut(), &o, None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "y shape: {e}");
    assert!(e.to_string().contains("[4, 16]"), "the message names the shapes: {e}");

    // 16-bit rows must be 16-byte aligned: a row stride of 12 elements, and a view
    // starting 4 elements in.
    let x12 = dev.upload(&[f16::from_f32(0.5); 4 * 12], &[4, 12]).unwrap();
    let k12 = dev.upload(&[f16::from_f32(0.5); 8 * 12], &[8, 12]).unwrap();
    let e = pattention_into(&dev, &x12.view(), &k12.view(), &v.view(), &mut y.view_mut(), &o, None).unwrap_err();
    assert!(matches!(e, Error::Alignment { .. }), "stride 12: {e}");
    let xo = x.strided(4, &[3, 8], &[16, 1]).unwrap();
    let ko = k.strided(0, &[8, 8], &[16, 1]).unwrap();
    let mut y3: Tensor<f16> = dev.poisoned(&[3, 24]).unwrap();
    let e = pattention_into(&dev, &xo, &ko, &v.view(), &mut y3.view_mut(), &o, None).unwrap_err();
    assert!(matches!(e, Error::Alignment { .. }), "offset 4: {e}");
    // ... while f32 has no such rule, and an aligned strided view works for f16.
    let xa = x.strided(8, &[3, 8], &[16, 1]).unwrap();
    pattention_into(&dev, &xa, &ko, &v.view(), &mut y3.view_mut(), &o, None).unwrap();
    let xf = dev.upload(&[0.5f32; 4 * 12], &[4, 12]).unwrap();
    let kf = dev.upload(&[0.25f32; 8 * 12], &[8, 12]).unwrap();
    let vf = dev.upload(&[1.0f32; 8 * 3], &[8, 3]).unwrap();
    let mut yf: Tensor<f32> = dev.poisoned(&[4, 3]).unwrap();
    pattention_into(&dev, &xf.view(), &kf.view(), &vf.view(), &mut yf.view_mut(), &o, None).unwrap();

    // workspace too small
    let need = pattention_workspace_bytes::<f16>(4, 8, 24).unwrap();
    let mut small = Workspace::new(&dev, need - 1).unwrap();
    let e =
        pattention_into(&dev, &x.view(), &k.view(), &v.view(), &mut y.view_mut(), &o, Some(&mut small)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "small workspace: {e}");
    assert!(e.to_string().contains(&need.to_string()), "the message names the size needed: {e}");
    let mut exact = Workspace::new(&dev, need).unwrap();
    pattention_into(&dev, &x.view(), &k.view(), &v.view(), &mut y.view_mut(), &o, Some(&mut exact)).unwrap();

    // options
    for bad in [
        PattentionOptions { n_ref: Some(0), ..o },
        PattentionOptions { eps: -1.0, ..o },
        PattentionOptions { eps: f32::NAN, ..o },
    ] {
        let e = pattention_into(&dev, &x.view(), &k.view(), &v.view(), &mut y.view_mut(), &bad, None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{bad:?}: {e}");
    }
    // no parameter tokens
    let k0 = dev.zeros::<f16>(&[0, 16]).unwrap();
    let v0 = dev.zeros::<f16>(&[0, 24]).unwrap();
    let e = pattention_into(&dev, &x.view(), &k0.view(), &v0.view(), &mut y.view_mut(), &o, None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "n = 0: {e}");
    // another device's tensor
    let other = Device::emulator();
    let xo = other.upload(&[f16::from_f32(0.5); 4 * 16], &[4, 16]).unwrap();
    let e = pattention_into(&dev, &xo.view(), &k.view(), &v.view(), &mut y.view_mut(), &o, None).unwrap_err();
    assert!(matches!(e, Error::DeviceMismatch { .. }), "device mismatch: {e}");
    // t = 0 is a no-op
    let xe = dev.zeros::<f16>(&[0, 16]).unwrap();
    let mut ye: Tensor<f16> = dev.zeros(&[0, 24]).unwrap();
    pattention_into(&dev, &xe.view(), &k.view(), &v.view(), &mut ye.view_mut(), &o, None).unwrap();
}

/// Operands as views with padded row strides (and an offset x view): d_in = 13
/// and d_out = 21 leave partial 16-byte chunks in every row; the output's padding
/// columns must stay untouched (NaN).
fn strided<T: DType + Element>(dev: &Device, backend: &str, s: u64, t: usize, n: usize) {
    let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_0007);
    let (d_in, d_out) = (13, 21);
    let (xs, ks, vs, ys, x_off) = (24, 16, 32, 24, 8);
    let p = problem::<T>(&mut rng, t, n, d_in, d_out);
    let pad = |data: &[T], rows: usize, cols: usize, stride: usize, off: usize| {
        let mut out: Vec<T> = rand_vec::<T>(&mut rng.clone(), off + rows * stride, 1e3);
        for r in 0..rows {
            out[off + r * stride..off + r * stride + cols].copy_from_slice(&data[r * cols..(r + 1) * cols]);
        }
        out
    };
    let xb = dev.upload(&pad(&p.x, t, d_in, xs, x_off), &[x_off + t * xs]).unwrap();
    let kb = dev.upload(&pad(&p.k, n, d_in, ks, 0), &[n * ks]).unwrap();
    let vb = dev.upload(&pad(&p.v, n, d_out, vs, 0), &[n * vs]).unwrap();
    let mut yb: Tensor<T> = dev.poisoned(&[t * ys]).unwrap();
    let x = xb.strided(x_off, &[t, d_in], &[xs, 1]).unwrap();
    let k = kb.strided(0, &[n, d_in], &[ks, 1]).unwrap();
    let v = vb.strided(0, &[n, d_out], &[vs, 1]).unwrap();
    for norm in Norm::ALL {
        let o = PattentionOptions { norm, ..Default::default() };
        {
            let mut y = yb.strided_mut(0, &[t, d_out], &[ys, 1]).unwrap();
            pattention_into(dev, &x, &k, &v, &mut y, &o, None).unwrap();
        }
        let all: Vec<f32> = yb.to_vec().unwrap().into_iter().map(DType::to_f32).collect();
        let got: Vec<f32> = (0..t).flat_map(|r| all[r * ys..r * ys + d_out].to_vec()).collect();
        let what = format!("{backend} {} {norm:?} strided t {t} n {n}", <T as DType>::NAME);
        assert_close(&what, &got, &reference(&p, &o), tolerance::<T>());
        for r in 0..t {
            assert!(all[r * ys + d_out..(r + 1) * ys].iter().all(|v| v.is_nan()), "{what}: row {r} padding written");
        }
    }
}

#[test]
fn strided_views_with_partial_chunks() {
    let s = seed();
    for (dev, backend) in backends() {
        for (t, n) in [(5, 70), (70, 129)] {
            strided::<f32>(&dev, backend, s, t, n);
            strided::<f16>(&dev, backend, s, t, n);
            strided::<bf16>(&dev, backend, s, t, n);
        }
    }
}

/// Many n-tiles: the decode kernel's CTAs then cover several 128-column blocks
/// each (its V ring runs across blocks), and the tiled kernels run long k loops.
#[test]
fn many_parameter_tokens() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_0008);
        let p = problem::<bf16>(&mut rng, 2, 12000, 8, 400);
        let q = problem::<f16>(&mut rng, 66, 1500, 16, 136);
        for norm in Norm::ALL {
            let o = PattentionOptions { norm, ..Default::default() };
            check(&dev, backend, &p, &o);
            check(&dev, backend, &q, &o);
        }
    }
}
