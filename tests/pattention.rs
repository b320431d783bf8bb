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
use tf_host::ops::pattention::{plan, PattentionPlan};
use tf_host::{
    bf16, f16, pattention, pattention_into, pattention_workspace_bytes, DType, Device, EmuOptions, Error, LaneOrder,
    Norm, PattentionArgs, PattentionOptions, Tensor, Workspace,
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
    pattention_into(
        dev,
        &PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: *o },
        &mut y.view_mut(),
        ws,
    )
    .unwrap();
    y.to_vec().unwrap().into_iter().map(DType::to_f32).collect()
}

/// The relative error of a CPU computation at the storage precision, against
/// `want`: A and Θ in f64, S rounded to T (the kernels keep the [t, n]
/// intermediate in T), Y = S·V_P in f64, rounded to T. A 16-bit kernel cannot be
/// expected to beat the roundings its storage forces; with few outputs (t = 1,
/// d_out = 8) they alone can pass bf16's 1e-2.
fn same_precision_error<T: DType + Element>(p: &Problem<T>, o: &PattentionOptions, want: &[f64]) -> f64 {
    let round = |v: f64| f64::from(T::from_f32(v as f32).to_f32());
    let f = |v: &[T]| v.iter().map(|e| f64::from(e.to_f32())).collect::<Vec<f64>>();
    let (x, k, v) = (f(&p.x), f(&p.k), f(&p.v));
    let mut a = vec![0f64; p.t * p.n];
    for i in 0..p.t {
        for j in 0..p.n {
            a[i * p.n + j] = (0..p.d_in).map(|c| x[i * p.d_in + c] * k[j * p.d_in + c]).sum();
        }
    }
    let opts = tf_ref::PattentionOpts { norm: ref_norm(o.norm), n_ref: o.n_ref, eps: f64::from(o.eps) };
    let s = tf_ref::pattention_norm(MatRef::new(&a, p.t, p.n).unwrap(), &opts).unwrap().data;
    let s: Vec<f64> = s.into_iter().map(round).collect();
    let (mut num, mut den) = (0f64, 0f64);
    for i in 0..p.t {
        for c in 0..p.d_out {
            let y = round((0..p.n).map(|j| s[i * p.n + j] * v[j * p.d_out + c]).sum());
            let w = want[i * p.d_out + c];
            num += (y - w) * (y - w);
            den += w * w;
        }
    }
    if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    }
}

/// Kernel vs tf-ref: relative Frobenius error within the dtype's tolerance (for
/// 16-bit types: or within twice the error of the same-precision CPU computation,
/// whichever is larger), no NaN, every element written, and the largest element
/// error within 5·tol·max|ref|. Returns (relative error, max abs error).
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
    let tol = tolerance::<T>().max(2.0 * same_precision_error(p, o, &want));
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

/// The scores launch's (mma, shuffles) counts of one run on a profiling emulator,
/// and the run's output.
fn scores_counts<T: DType + Element>(p: &Problem<T>, norm: Norm) -> ((u64, u64), Vec<f32>) {
    let dev = Device::emulator_with(EmuOptions { checks: tf_host::Checks::PROFILE, ..Default::default() });
    let got = run(&dev, p, &PattentionOptions { norm, ..Default::default() }, None);
    let name = format!("pattention_scores_{}", <T as DType>::NAME);
    let prof = dev.take_profiles().into_iter().find(|q| q.kernel == name).expect("a profiled scores launch");
    ((prof.mma, prof.shuffles), got)
}

/// l2_norm_gelu's scores epilogue stores ordinary tiles unscaled, with the rows' sums
/// of squares from the tensor cores (32 mma and no shuffle a warp; the general
/// epilogue reduces with shuffles and has no mma), and sends a CTA holding a row it
/// cannot take (all zero, or tiny) to the general epilogue. (Rows that overflow f16
/// or hold NaN / inf: adversarial_rows_on_both_paths and the non-finite tests.)
fn plain_and_general_scores<T: DType + Element>(rng: &mut StdRng, rows_scale: f32) {
    // 2 x 2 CTAs of 128 x 128, two of them of 2 rows. (An n-tile of few columns can
    // have a row sum under the bound by chance: whole n-tiles keep this test exact.)
    let p = problem::<T>(rng, 130, 256, 64, 40);
    let ((mma_l2, shfl_l2), got) = scores_counts(&p, Norm::L2NormGelu);
    let ((mma_g, shfl_g), _) = scores_counts(&p, Norm::GeluL2Norm);
    let o = PattentionOptions::default();
    assert_close("plain l2_norm_gelu", &got, &reference(&p, &o), tolerance::<T>());
    let warps = 4 * 4; // 4 CTAs of 4 warps
    assert_eq!((mma_l2, shfl_l2), (mma_g + 32 * warps, 0), "{}: every CTA plain", <T as DType>::NAME);
    assert!(shfl_g > 0, "the general epilogue reduces with shuffles");
    // Row 3 all zero or scaled by rows_scale: row block 0's two CTAs go general.
    for scale in [0.0, rows_scale] {
        let mut q = Problem { x: p.x.clone(), k: p.k.clone(), v: p.v.clone(), ..p };
        for c in 0..q.d_in {
            q.x[3 * q.d_in + c] = T::from_f32(q.x[3 * q.d_in + c].to_f32() * scale);
        }
        let ((mma, shfl), got) = scores_counts(&q, Norm::L2NormGelu);
        assert_eq!(mma, mma_g + 32 * warps, "{} x{scale}: the plain attempt runs everywhere", <T as DType>::NAME);
        assert_eq!(2 * shfl, shfl_g, "{} x{scale}: 2 of the 4 CTAs general", <T as DType>::NAME);
        assert_close(&format!("general l2_norm_gelu x{scale}"), &got, &reference(&q, &o), tolerance::<T>());
    }
}

#[test]
fn l2_norm_gelu_scores_are_plain_unless_a_row_forbids_it() {
    let mut rng = StdRng::seed_from_u64(seed() ^ 0x5eed_0011);
    plain_and_general_scores::<bf16>(&mut rng, 1e-35); // sum of squares under 2^-100
    plain_and_general_scores::<f16>(&mut rng, 1e-4); // sum of squares under 2^-15
}

#[test]
fn decode_and_tiled_paths_at_their_boundary() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_0004);
        // t = 49: the decode loops' branch-free copies (all four m16 tiles hold rows)
        // with 15 rows of X repeated past t; bf16 streams 4 whole k-tiles of d_in.
        for t in [49, 64, 65] {
            let p = problem::<bf16>(&mut rng, t, 129, 136, 40);
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
            let dev =
                Device::emulator_with(EmuOptions { lane_order: order, seed: sd, os_threads: 0, ..Default::default() });
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
        let shapes = [(130, 129, 16, 264), (3, 129, 200, 40), (130, 5, 24, 8)];
        // one workspace of the largest size any of the calls needs
        let big = shapes.iter().map(|&(t, n, _, d_out)| pattention_workspace_bytes::<f16>(t, n, d_out).unwrap()).max();
        let mut ws = Workspace::new(&dev, big.unwrap()).unwrap();
        for &(t, n, d_in, d_out) in &shapes {
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
        let y = pattention(
            &dev,
            &PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: PattentionOptions::default() },
        )
        .unwrap();
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

    let e = pattention_into(
        &dev,
        &PattentionArgs { x: x.view(), k_p: k_bad.view(), v_p: v.view(), opts: o },
        &mut y.view_mut(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "d_in mismatch: {e}");
    let e = pattention_into(
        &dev,
        &PattentionArgs { x: x.view(), k_p: k.view(), v_p: v_bad.view(), opts: o },
        &mut y.view_mut(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "n mismatch: {e}");
    let e = pattention_into(
        &dev,
        &PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: o },
        &mut y_bad.view_mut(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "y shape: {e}");
    assert!(e.to_string().contains("[4, 16]"), "the message names the shapes: {e}");

    // 16-bit rows must be 16-byte aligned: a row stride of 12 elements, and a view
    // starting 4 elements in.
    let x12 = dev.upload(&[f16::from_f32(0.5); 4 * 12], &[4, 12]).unwrap();
    let k12 = dev.upload(&[f16::from_f32(0.5); 8 * 12], &[8, 12]).unwrap();
    let e = pattention_into(
        &dev,
        &PattentionArgs { x: x12.view(), k_p: k12.view(), v_p: v.view(), opts: o },
        &mut y.view_mut(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Alignment { .. }), "stride 12: {e}");
    let xo = x.strided(4, &[3, 8], &[16, 1]).unwrap();
    let ko = k.strided(0, &[8, 8], &[16, 1]).unwrap();
    let mut y3: Tensor<f16> = dev.poisoned(&[3, 24]).unwrap();
    let e = pattention_into(
        &dev,
        &PattentionArgs { x: xo.clone(), k_p: ko.clone(), v_p: v.view(), opts: o },
        &mut y3.view_mut(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Alignment { .. }), "offset 4: {e}");
    // ... while f32 has no such rule, and an aligned strided view works for f16.
    let xa = x.strided(8, &[3, 8], &[16, 1]).unwrap();
    pattention_into(
        &dev,
        &PattentionArgs { x: xa.clone(), k_p: ko.clone(), v_p: v.view(), opts: o },
        &mut y3.view_mut(),
        None,
    )
    .unwrap();
    let xf = dev.upload(&[0.5f32; 4 * 12], &[4, 12]).unwrap();
    let kf = dev.upload(&[0.25f32; 8 * 12], &[8, 12]).unwrap();
    let vf = dev.upload(&[1.0f32; 8 * 3], &[8, 3]).unwrap();
    let mut yf: Tensor<f32> = dev.poisoned(&[4, 3]).unwrap();
    pattention_into(
        &dev,
        &PattentionArgs { x: xf.view(), k_p: kf.view(), v_p: vf.view(), opts: o },
        &mut yf.view_mut(),
        None,
    )
    .unwrap();

    // workspace too small
    let need = pattention_workspace_bytes::<f16>(4, 8, 24).unwrap();
    let mut small = Workspace::new(&dev, need - 1).unwrap();
    let e = pattention_into(
        &dev,
        &PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: o },
        &mut y.view_mut(),
        Some(&mut small),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "small workspace: {e}");
    assert!(e.to_string().contains(&need.to_string()), "the message names the size needed: {e}");
    let mut exact = Workspace::new(&dev, need).unwrap();
    pattention_into(
        &dev,
        &PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: o },
        &mut y.view_mut(),
        Some(&mut exact),
    )
    .unwrap();

    // options
    for bad in [
        PattentionOptions { n_ref: Some(0), ..o },
        PattentionOptions { eps: -1.0, ..o },
        PattentionOptions { eps: f32::NAN, ..o },
    ] {
        let e = pattention_into(
            &dev,
            &PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: bad },
            &mut y.view_mut(),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{bad:?}: {e}");
    }
    // no parameter tokens
    let k0 = dev.zeros::<f16>(&[0, 16]).unwrap();
    let v0 = dev.zeros::<f16>(&[0, 24]).unwrap();
    let e = pattention_into(
        &dev,
        &PattentionArgs { x: x.view(), k_p: k0.view(), v_p: v0.view(), opts: o },
        &mut y.view_mut(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "n = 0: {e}");
    // another device's tensor
    let other = Device::emulator();
    let xo = other.upload(&[f16::from_f32(0.5); 4 * 16], &[4, 16]).unwrap();
    let e = pattention_into(
        &dev,
        &PattentionArgs { x: xo.view(), k_p: k.view(), v_p: v.view(), opts: o },
        &mut y.view_mut(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Error::DeviceMismatch { .. }), "device mismatch: {e}");
    // t = 0 is a no-op
    let xe = dev.zeros::<f16>(&[0, 16]).unwrap();
    let mut ye: Tensor<f16> = dev.zeros(&[0, 24]).unwrap();
    pattention_into(
        &dev,
        &PattentionArgs { x: xe.view(), k_p: k.view(), v_p: v.view(), opts: o },
        &mut ye.view_mut(),
        None,
    )
    .unwrap();
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
            pattention_into(
                dev,
                &PattentionArgs { x: x.clone(), k_p: k.clone(), v_p: v.clone(), opts: o },
                &mut y,
                None,
            )
            .unwrap();
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

/// The plan of one problem on `dev`.
fn plan_of<T: DType>(dev: &Device, p: &Problem<T>, o: &PattentionOptions) -> PattentionPlan {
    let x = dev.upload(&p.x, &[p.t, p.d_in]).unwrap();
    let k = dev.upload(&p.k, &[p.n, p.d_in]).unwrap();
    let v = dev.upload(&p.v, &[p.n, p.d_out]).unwrap();
    let mut y: Tensor<T> = dev.poisoned(&[p.t, p.d_out]).unwrap();
    let args = PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: *o };
    plan(dev, &args, &y.view_mut(), None).unwrap()
}

/// The tiled path's two tensor-core out kernels: 128-row CTAs, and the 64-row
/// ones the plan picks when 128-row CTAs would load the SMs unevenly. An emulator
/// reporting 2 SMs gets 128 rows at t = 130 with one column block (2 CTAs, one an
/// SM, against 3 of 64 rows: 2 on one SM) and at t = 250 with three (3 a SM either
/// way); the default 132 SMs get 64 rows at both. Row tails: the last row block
/// holds 2 rows (t = 130) or 122 / 58 (t = 250).
#[test]
fn out_kernel_row_tiles() {
    let s = seed();
    let two = Device::emulator_with(EmuOptions { sm_count: 2, seed: s, ..Default::default() });
    let wide = Device::emulator_with(EmuOptions { seed: s, ..Default::default() });
    let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_000c);
    let cases = [
        (&two, 130, 129, 48, 40, "pattention_out"),
        (&two, 250, 70, 136, 264, "pattention_out"),
        (&wide, 130, 129, 48, 40, "pattention_out64"),
        (&wide, 250, 300, 136, 264, "pattention_out64"),
    ];
    for (dev, t, n, d_in, d_out, kernel) in cases {
        let p = problem::<bf16>(&mut rng, t, n, d_in, d_out);
        let q = problem::<f16>(&mut rng, t, n, d_in, d_out);
        for norm in Norm::ALL {
            let o = PattentionOptions { norm, ..Default::default() };
            let plan = plan_of(dev, &p, &o);
            let out = plan.launches.last().map(|l| l.kernel);
            assert_eq!(out, Some(format!("{kernel}_bf16").as_str()), "t {t} d_out {d_out} on {} SMs", dev.sm_count());
            check(dev, "emulator", &p, &o);
            check(dev, "emulator", &q, &o);
        }
    }
}

/// The decode path's product 1 split over d_in (l2_norm_gelu): many slices, a
/// d_in with no residue, a last slice shorter than the others and holding the
/// partial k-tile, partial m16 and n-tiles. The plan's slice counts are worked out
/// by hand from the rule (132 SMs on the emulator: slices = min(ceil(132 / n_tiles),
/// 16, k_tiles / 2, d_in / 2t), then k-tiles per slice = ceil(k_tiles / slices)),
/// so a change of the rule shows here as well as in the accuracy.
#[test]
fn decode_product_one_split_over_d_in() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_000b);
        // (t, n, d_in, d_out, slices, k-tiles per slice)
        let cases = [
            (8, 129, 1000, 40, 16, 2), // 32 k-tiles, the last 8 columns wide
            (64, 129, 1000, 40, 7, 5), // 1000 / 128 = 7 slices; the last has 2 k-tiles
            (33, 300, 256, 24, 3, 3),  // no d_in residue; slices of 3, 3 and 2 k-tiles
            (5, 1000, 520, 136, 6, 3), // 17 k-tiles: the last slice has 2, one partial
            (1, 70, 104, 8, 2, 2),     // 4 k-tiles, t = 1
        ];
        for (t, n, d_in, d_out, slices, per) in cases {
            let p = problem::<bf16>(&mut rng, t, n, d_in, d_out);
            let q = problem::<f16>(&mut rng, t, n, d_in, d_out);
            if backend == "emulator" {
                let plan = plan_of(&dev, &p, &PattentionOptions::default());
                assert_eq!((plan.k_splits, plan.split_k_tiles), (slices, per), "t {t} n {n} d_in {d_in}");
                assert!(plan.launches.iter().any(|l| l.kernel == "pattention_scores_reduce_bf16"));
            }
            check(&dev, backend, &p, &PattentionOptions::default());
            check(&dev, backend, &q, &PattentionOptions::default());
        }
    }
}

// ------------------------------------------------------------ non-finite inputs

/// Runs the kernels into an output pre-filled with a finite sentinel (an element
/// the kernels fail to write then shows up even where the reference is NaN).
fn run_sentinel<T: DType>(dev: &Device, p: &Problem<T>, o: &PattentionOptions) -> Vec<f32> {
    let x = dev.upload(&p.x, &[p.t, p.d_in]).unwrap();
    let k = dev.upload(&p.k, &[p.n, p.d_in]).unwrap();
    let v = dev.upload(&p.v, &[p.n, p.d_out]).unwrap();
    let mut y: Tensor<T> = dev.upload(&vec![T::from_f32(7777.0); p.t * p.d_out], &[p.t, p.d_out]).unwrap();
    pattention_into(
        dev,
        &PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: *o },
        &mut y.view_mut(),
        None,
    )
    .unwrap();
    y.to_vec().unwrap().into_iter().map(DType::to_f32).collect()
}

/// Kernel vs tf-ref when inputs hold NaN or ±inf: the same elements are non-finite
/// (NaN and ±inf are not told apart: where V_P holds ±inf, the exact zero scores of
/// f32 arithmetic that f64 keeps tiny turn ±inf into NaN), and the finite elements
/// agree within the dtype's tolerance (relative Frobenius). Returns (the number of
/// non-finite elements, the relative error of the finite part).
fn check_masked<T: DType + Element>(dev: &Device, what: &str, p: &Problem<T>, o: &PattentionOptions) -> (usize, f64) {
    let got = run_sentinel(dev, p, o);
    let want = reference(p, o);
    let mut wrong = Vec::new();
    let (mut num, mut den, mut bad) = (0f64, 0f64, 0);
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        if g.is_finite() != w.is_finite() {
            wrong.push(format!("[{}, {}] got {g}, want {w}", i / p.d_out, i % p.d_out));
        } else if w.is_finite() {
            num += (g as f64 - w) * (g as f64 - w);
            den += w * w;
        } else {
            bad += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "{what}: {} elements differ in finiteness, first {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(6)]
    );
    let rel = if den > 0.0 { (num / den).sqrt() } else { 0.0 };
    assert!(rel <= tolerance::<T>(), "{what}: finite part off by {rel:.3e}");
    (bad, rel)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Input {
    X,
    K,
    V,
}

/// One NaN, +inf or -inf in x, K_P or V_P at the given positions (in tails of the
/// tiles: last row / column, partial k-steps), every norm: the mask and the finite
/// part against tf-ref. The rules that tf-ref implements say which elements must be
/// non-finite; the counts are checked against them here too, so a reference that
/// poisons nothing (or everything) fails: x row r -> output row r; K_P row j -> every
/// row (L2 norms, NaN) or the rows whose score is +inf (softmax); V_P column c ->
/// output column c.
fn non_finite<T: DType + Element>(dev: &Device, backend: &str, s: u64, t: usize, at: [(Input, usize, usize); 3]) {
    let (n, d_in, d_out) = (129, 136, 40);
    let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_0009);
    let base = problem::<T>(&mut rng, t, n, d_in, d_out);
    let mut worst = 0f64;
    for norm in Norm::ALL {
        let o = PattentionOptions { norm, ..Default::default() };
        for (input, r, c) in at {
            for val in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut p = Problem { x: base.x.clone(), k: base.k.clone(), v: base.v.clone(), ..base };
                match input {
                    Input::X => p.x[r * d_in + c] = T::from_f32(val),
                    Input::K => p.k[r * d_in + c] = T::from_f32(val),
                    Input::V => p.v[r * d_out + c] = T::from_f32(val),
                }
                let what = format!("{backend} {} {norm:?} t {t}: {val} in {input:?}[{r}, {c}]", <T as DType>::NAME);
                let (bad, rel) = check_masked(dev, &what, &p, &o);
                worst = worst.max(rel);
                let want_bad = match input {
                    Input::X => d_out,
                    Input::V => t,
                    Input::K if norm != Norm::Softmax || val.is_nan() => t * d_out,
                    // A[i, r] = x[i, c]·val: +inf where the signs agree
                    Input::K => d_out * (0..t).filter(|&i| f64::from(val) * p.x[i * d_in + c].to_f64() >= 0.0).count(),
                };
                assert_eq!(bad, want_bad, "{what}: non-finite outputs");
            }
        }
    }
    eprintln!("{backend} {:>4} t {t}: non-finite inputs, worst finite-part error {worst:.2e}", <T as DType>::NAME);
}

#[test]
fn nan_and_inf_inputs_poison_what_they_reach() {
    let s = seed();
    for (dev, backend) in backends() {
        // t = 17: decode path (16-bit); t = 67: tiled, a partial row block (f32 is
        // tiled at both). Columns 128..135 of d_in are the partial last k-step; on the
        // decode path l2_norm_gelu splits d_in into the slices [0, 96) and [96, 136).
        // K_P row 127 ends the first n-tile, row 128 is the only column of the second
        // (for softmax with -inf there, an n-tile of only -inf).
        let decode = [(Input::X, 16, 135), (Input::K, 128, 40), (Input::V, 128, 39)];
        let tiled = [(Input::X, 66, 128), (Input::K, 127, 64), (Input::V, 128, 32)];
        for (t, at) in [(17, decode), (67, tiled)] {
            non_finite::<f32>(&dev, backend, s, t, at);
            non_finite::<f16>(&dev, backend, s, t, at);
            non_finite::<bf16>(&dev, backend, s, t, at);
        }
    }
}

/// Rows whose scores are huge (|A| ~ 1e30: their squares overflow f32) or tiny
/// (|A| ~ 1e-30: their squares underflow) stay finite and accurate, next to an
/// ordinary row, on both paths (f32 and bf16 hold such values; f16 cannot).
fn extreme_rows<T: DType + Element>(dev: &Device, backend: &str, s: u64, t: usize) {
    let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_000a);
    // d_in = 136: two d_in slices of product 1 on the decode path
    let mut p = problem::<T>(&mut rng, t, 129, 136, 24);
    scale_row(&mut p, 1, 1e30);
    scale_row(&mut p, t - 1, 1e-30);
    for norm in Norm::ALL {
        let o = PattentionOptions { norm, ..Default::default() };
        let what = format!("{backend} {} {norm:?} t {t}: rows x 1e30 and x 1e-30", <T as DType>::NAME);
        check_rows(dev, &what, &p, &o, [1, t - 1]);
    }
}

/// The whole output within tolerance with the finite mask of tf-ref, then `rows`
/// on their own (a few extreme rows weigh little in the Frobenius norm of all).
fn check_rows<T: DType + Element>(dev: &Device, what: &str, p: &Problem<T>, o: &PattentionOptions, rows: [usize; 2]) {
    let (bad, _) = check_masked(dev, what, p, o);
    assert_eq!(bad, 0, "{what}");
    let got = run_sentinel(dev, p, o);
    let want = reference(p, o);
    for r in rows {
        let row = r * p.d_out..(r + 1) * p.d_out;
        assert_close(&format!("{what}, row {r}"), &got[row.clone()], &want[row], tolerance::<T>());
    }
}

/// Rows whose largest score sits at the ends of the f32 exponent range: just below
/// 2^128 (the stored scale 2^-e is then a subnormal 2^-128) and just above 2^-126.
/// x's row holds one nonzero coordinate, so every score is one rounded product (no
/// partial sum can overflow) and the row's maximum is known.
fn exponent_extremes<T: DType + Element>(dev: &Device, backend: &str, s: u64, t: usize) {
    let mut rng = StdRng::seed_from_u64(s ^ 0x5eed_000b);
    let mut p = problem::<T>(&mut rng, t, 129, 136, 24);
    // key coordinate 0 scaled up (|k| ~ 8) for the huge row, coordinate 1 as it is
    // (|k| < 1) for the tiny one: both x values stay normal numbers
    for j in 0..p.n {
        p.k[j * p.d_in] = T::from_f32(p.k[j * p.d_in].to_f32() * 16.0);
    }
    for (row, c, target) in [(1, 0, 2f64.powf(127.5)), (t - 1, 1, 2f64.powf(-125.5))] {
        let max_k = (0..p.n).map(|j| f64::from(p.k[j * p.d_in + c].to_f32()).abs()).fold(0.0, f64::max);
        let xc = T::from_f32((target / max_k) as f32);
        assert!(xc.to_f32().abs() >= f32::MIN_POSITIVE, "row {row}: x must stay a normal number");
        p.x[row * p.d_in..(row + 1) * p.d_in].fill(T::from_f32(0.0));
        p.x[row * p.d_in + c] = xc;
        let m = f64::from(xc.to_f32()) * max_k;
        let (lo, hi) = if target > 1.0 { (2f64.powi(127), 2f64.powi(128)) } else { (2f64.powi(-126), 2f64.powi(-125)) };
        assert!(lo <= m && m < hi, "row {row}: max |A| = {m:e} is outside [{lo:e}, {hi:e})");
    }
    // softmax and gelu_l2_norm are out: A·log2e and gelu's arithmetic overflow near 2^128.
    let o = PattentionOptions { norm: Norm::L2NormGelu, ..Default::default() };
    let what = format!("{backend} {} t {t}: rows with max |A| near 2^128 and 2^-126", <T as DType>::NAME);
    check_rows(dev, &what, &p, &o, [1, t - 1]);
}

#[test]
fn scores_at_the_ends_of_the_exponent_range() {
    let s = seed();
    for (dev, backend) in backends() {
        for t in [5, 70] {
            exponent_extremes::<f32>(&dev, backend, s, t);
            exponent_extremes::<bf16>(&dev, backend, s, t);
        }
    }
}

#[test]
fn huge_and_tiny_rows_stay_finite_and_accurate() {
    let s = seed();
    for (dev, backend) in backends() {
        for t in [5, 70] {
            extreme_rows::<f32>(&dev, backend, s, t);
            extreme_rows::<bf16>(&dev, backend, s, t);
        }
    }
}
