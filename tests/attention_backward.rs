//! Attention backward (kernels/attention_backward.cu through tf-host) against
//! tf-ref's f64 gradients (`tf_ref::attention_backward`, checked there by finite
//! differences): causal (bottom-right, T_q below, equal to and above T_k, so that
//! some rows see no key) and not, head dims 8 to 256, a pinned scale, strided
//! operands (q, k, v as parts of one fused buffer), huge scores, NaN, determinism
//! and bad input. f32 arithmetic from the stored inputs: the bound is f32's for
//! every storage type.

mod common;

use common::{assert_close, backends, rand_vec, seed, tolerance};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tf_host::ops::attention::{attention, AttnArgs, AttnOptions};
use tf_host::ops::attention_backward::{
    attention_backward, attention_backward_saved, attention_forward, AttnGrads, AttnSaved,
};
use tf_host::{bf16, f16, Checks, DType, Device, EmuOptions, Error, View};
use tf_ref::{Element, Tensor4Ref};

const RTOL: f64 = 2e-5;
/// Scale 0.7 makes scores of size 0.7·√D (about 11 at D = 256), so softmax rows are
/// nearly one-hot and dS = P ∘ (dP − D) is the difference of two nearly equal
/// numbers: dQ and dK come out small against the terms that formed them and carry
/// the f32 rounding of those terms, so their error relative to themselves has no
/// useful bound (1.4e-7 to 3.1e-5 over 100 seeds, with a long tail). They are held
/// to `PEAKED_RTOL` against the size of the terms instead (`term_sizes`); dV has no
/// such cancellation and keeps `RTOL`.
const PEAKED_RTOL: f64 = 1e-5;
struct Problem<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    d_o: Vec<T>,
    qs: [usize; 4],
    ks: [usize; 4],
}

fn problem<T: DType>(r: &mut StdRng, b: usize, t_q: usize, t_k: usize, h: usize, d: usize) -> Problem<T> {
    let (qs, ks) = ([b, t_q, h, d], [b, t_k, h, d]);
    Problem {
        q: rand_vec(r, b * t_q * h * d, 1.0),
        k: rand_vec(r, b * t_k * h * d, 1.0),
        v: rand_vec(r, b * t_k * h * d, 1.0),
        d_o: rand_vec(r, b * t_q * h * d, 1.0),
        qs,
        ks,
    }
}

fn reference<T: DType + Element>(p: &Problem<T>, causal: bool, scale: Option<f32>) -> [Vec<f64>; 3] {
    let g = tf_ref::attention_backward(
        Tensor4Ref::new(&p.q, p.qs).unwrap(),
        Tensor4Ref::new(&p.k, p.ks).unwrap(),
        Tensor4Ref::new(&p.v, p.ks).unwrap(),
        Tensor4Ref::new(&p.d_o, p.qs).unwrap(),
        causal,
        scale.map(f64::from),
    )
    .unwrap();
    [g.dq, g.dk, g.dv]
}

fn check<T: DType + Element>(dev: &Device, backend: &str, p: &Problem<T>, causal: bool, scale: Option<f32>) -> f64 {
    check_within(dev, backend, p, causal, scale, RTOL)
}

fn check_within<T: DType + Element>(
    dev: &Device,
    backend: &str,
    p: &Problem<T>,
    causal: bool,
    scale: Option<f32>,
    rtol: f64,
) -> f64 {
    let (q, k) = (dev.upload(&p.q, &p.qs).unwrap(), dev.upload(&p.k, &p.ks).unwrap());
    let (v, d_o) = (dev.upload(&p.v, &p.ks).unwrap(), dev.upload(&p.d_o, &p.qs).unwrap());
    let opts = AttnOptions { causal, scale, num_splits: None };
    let args = AttnArgs { q: q.view(), k: k.view(), v: v.view(), opts };
    let g = attention_backward(dev, &args, &d_o.view()).unwrap();
    let want = reference(p, causal, scale);
    let what = format!("{backend} {} q {:?} k {:?} causal {causal} scale {scale:?}", <T as DType>::NAME, p.qs, p.ks);
    let mut worst = 0f64;
    for (name, got, want) in [("dq", &g.dq, &want[0]), ("dk", &g.dk, &want[1]), ("dv", &g.dv, &want[2])] {
        worst = worst.max(assert_close(&format!("{what} {name}"), &got.to_vec().unwrap(), want, rtol).0);
    }
    worst
}

/// Per element of dQ and dK, the sum of the magnitudes of the terms it is made of
/// (f64, from the stored inputs; causal, bottom-right): with S = scale·Q·Kᵀ, P its
/// softmax over the visible keys, dP = dO·Vᵀ and D_i = Σ_j P_ij·dP_ij,
/// |dQ_i| <= scale·Σ_j P_ij·(|dP_ij| + |D_i|)·|K_j| and
/// |dK_j| <= scale·Σ_i P_ij·(|dP_ij| + |D_i|)·|Q_i|.
fn term_sizes(p: &Problem<f32>, scale: f64) -> (Vec<f64>, Vec<f64>) {
    let [b, t_q, h, d] = p.qs;
    let t_k = p.ks[1];
    let at = |x: &[f32], t: usize, bi: usize, i: usize, hi: usize| -> Vec<f64> {
        let o = ((bi * t + i) * h + hi) * d;
        x[o..o + d].iter().map(|&v| f64::from(v)).collect()
    };
    let dot = |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(x, y)| x * y).sum::<f64>();
    let (mut mq, mut mk) = (vec![0.0; p.q.len()], vec![0.0; p.k.len()]);
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..t_q {
                let visible = (i + t_k).saturating_sub(t_q) + 1; // keys j <= i + t_k - t_q
                let visible = visible.min(t_k);
                if i + t_k < t_q {
                    continue; // the row sees no key
                }
                let qi = at(&p.q, t_q, bi, i, hi);
                let doi = at(&p.d_o, t_q, bi, i, hi);
                let s: Vec<f64> = (0..visible).map(|j| scale * dot(&qi, &at(&p.k, t_k, bi, j, hi))).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                let dp: Vec<f64> = (0..visible).map(|j| dot(&doi, &at(&p.v, t_k, bi, j, hi))).collect();
                let dd: f64 = (0..visible).map(|j| e[j] / z * dp[j]).sum();
                for j in 0..visible {
                    let w = scale * e[j] / z * (dp[j].abs() + dd.abs());
                    let kj = at(&p.k, t_k, bi, j, hi);
                    let (oq, ok) = (((bi * t_q + i) * h + hi) * d, ((bi * t_k + j) * h + hi) * d);
                    for c in 0..d {
                        mq[oq + c] += w * kj[c].abs();
                        mk[ok + c] += w * qi[c].abs();
                    }
                }
            }
        }
    }
    (mq, mk)
}

/// f32, causal, a scale that makes softmax rows nearly one-hot: dQ and dK within
/// `PEAKED_RTOL` of the size of their terms (Frobenius), dV within `RTOL`.
/// Returns the worst dQ / dK error against that size.
fn check_peaked(dev: &Device, backend: &str, p: &Problem<f32>, scale: f32) -> f64 {
    let (q, k) = (dev.upload(&p.q, &p.qs).unwrap(), dev.upload(&p.k, &p.ks).unwrap());
    let (v, d_o) = (dev.upload(&p.v, &p.ks).unwrap(), dev.upload(&p.d_o, &p.qs).unwrap());
    let opts = AttnOptions { causal: true, scale: Some(scale), num_splits: None };
    let g = attention_backward(dev, &AttnArgs { q: q.view(), k: k.view(), v: v.view(), opts }, &d_o.view()).unwrap();
    let want = reference(p, true, Some(scale));
    let what = format!("{backend} f32 q {:?} k {:?} causal, scale {scale}", p.qs, p.ks);
    assert_close(&format!("{what} dv"), &g.dv.to_vec().unwrap(), &want[2], RTOL);
    let (mq, mk) = term_sizes(p, f64::from(scale));
    let mut worst = 0f64;
    for (name, got, want, size) in [("dq", &g.dq, &want[0], &mq), ("dk", &g.dk, &want[1], &mk)] {
        let got = got.to_vec().unwrap();
        let err: f64 = got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = size.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(err.is_finite() && norm > 0.0, "{what} {name}: error {err}, term size {norm}");
        assert!(err <= PEAKED_RTOL * norm, "{what} {name}: error {err:.3e} > {PEAKED_RTOL:e} x term size {norm:.3e}");
        worst = worst.max(err / norm);
    }
    worst
}

#[test]
fn gradients_match_tf_ref() {
    for (dev, backend) in backends() {
        let mut r = StdRng::seed_from_u64(seed() ^ 0xa7_0001);
        let (mut worst, mut peaked) = (0f64, 0f64);
        // (B, T_q, T_k, H, D): T_q = T_k, T_q < T_k (decode-like), T_q > T_k (causal
        // rows that see no key), D from 8 to 256 with tails of the 32-lane split
        for (b, t_q, t_k, h, d) in
            [(1, 5, 5, 2, 16), (2, 3, 7, 1, 40), (1, 7, 3, 2, 8), (1, 1, 9, 3, 64), (1, 4, 4, 1, 256)]
        {
            let pf = problem::<f32>(&mut r, b, t_q, t_k, h, d);
            let ph = problem::<f16>(&mut r, b, t_q, t_k, h, d);
            let pb = problem::<bf16>(&mut r, b, t_q, t_k, h, d);
            for causal in [false, true] {
                worst = worst.max(check(&dev, backend, &pf, causal, None));
                worst = worst.max(check(&dev, backend, &ph, causal, None));
                worst = worst.max(check(&dev, backend, &pb, causal, None));
            }
            peaked = peaked.max(check_peaked(&dev, backend, &pf, 0.7));
        }
        eprintln!("{backend}: worst relative error {worst:.2e}, peaked softmax {peaked:.2e}");
    }
}

/// The training chain's attention forward (`attention_forward`, SIMT, any head
/// dimension) against tf-ref's `attention`: causal and not, T_q above and below
/// T_k (rows that see no key give 0), D = 8 to 256, every dtype.
#[test]
fn training_forward_matches_tf_ref() {
    for (dev, backend) in backends() {
        let mut r = StdRng::seed_from_u64(seed() ^ 0xa7_0005);
        for (b, t_q, t_k, h, d) in [(1, 5, 5, 2, 16), (2, 3, 7, 1, 40), (1, 7, 3, 2, 8), (1, 4, 4, 1, 256)] {
            for causal in [false, true] {
                let pf = problem::<f32>(&mut r, b, t_q, t_k, h, d);
                let pb = problem::<bf16>(&mut r, b, t_q, t_k, h, d);
                let run = |p: &Problem<f32>| {
                    let (q, k, v) = (
                        dev.upload(&p.q, &p.qs).unwrap(),
                        dev.upload(&p.k, &p.ks).unwrap(),
                        dev.upload(&p.v, &p.ks).unwrap(),
                    );
                    let opts = AttnOptions { causal, scale: None, num_splits: None };
                    attention_forward(&dev, &AttnArgs { q: q.view(), k: k.view(), v: v.view(), opts }).unwrap()
                };
                let got = run(&pf).to_vec().unwrap();
                let want = tf_ref::attention(
                    Tensor4Ref::new(&pf.q, pf.qs).unwrap(),
                    Tensor4Ref::new(&pf.k, pf.ks).unwrap(),
                    Tensor4Ref::new(&pf.v, pf.ks).unwrap(),
                    causal,
                    None,
                )
                .unwrap();
                assert_close(&format!("{backend} forward f32 {:?} causal {causal}", pf.qs), &got, &want.o, RTOL);
                let (q, k, v) = (
                    dev.upload(&pb.q, &pb.qs).unwrap(),
                    dev.upload(&pb.k, &pb.ks).unwrap(),
                    dev.upload(&pb.v, &pb.ks).unwrap(),
                );
                let opts = AttnOptions { causal, scale: Some(0.3), num_splits: None };
                let got = attention_forward(&dev, &AttnArgs { q: q.view(), k: k.view(), v: v.view(), opts }).unwrap();
                let want = tf_ref::attention(
                    Tensor4Ref::new(&pb.q, pb.qs).unwrap(),
                    Tensor4Ref::new(&pb.k, pb.ks).unwrap(),
                    Tensor4Ref::new(&pb.v, pb.ks).unwrap(),
                    causal,
                    Some(0.3),
                )
                .unwrap();
                assert_close(
                    &format!("{backend} forward bf16 {:?} causal {causal}", pb.qs),
                    &got.to_vec().unwrap(),
                    &want.o,
                    RTOL,
                );
            }
        }
    }
}

/// q, k and v as the three parts of one fused [B, T, 3, H, D] buffer (strided
/// views), d_o contiguous.
#[test]
fn strided_operands() {
    for (dev, backend) in backends() {
        let mut r = StdRng::seed_from_u64(seed() ^ 0xa7_0002);
        let (b, t, h, d) = (2, 6, 2, 24);
        let fused: Vec<f32> = rand_vec(&mut r, b * t * 3 * h * d, 1.0);
        let d_o: Vec<f32> = rand_vec(&mut r, b * t * h * d, 1.0);
        let part = |which: usize| -> Vec<f32> {
            let mut v = Vec::with_capacity(b * t * h * d);
            for bi in 0..b {
                for ti in 0..t {
                    let at = ((bi * t + ti) * 3 + which) * h * d;
                    v.extend_from_slice(&fused[at..at + h * d]);
                }
            }
            v
        };
        let p = Problem { q: part(0), k: part(1), v: part(2), d_o: d_o.clone(), qs: [b, t, h, d], ks: [b, t, h, d] };
        let ft = dev.upload(&fused, &[b * t * 3 * h * d]).unwrap();
        let st = [t * 3 * h * d, 3 * h * d, d, 1];
        let (q, k, v) = (
            ft.strided(0, &[b, t, h, d], &st).unwrap(),
            ft.strided(h * d, &[b, t, h, d], &st).unwrap(),
            ft.strided(2 * h * d, &[b, t, h, d], &st).unwrap(),
        );
        let dot = dev.upload(&d_o, &[b, t, h, d]).unwrap();
        let args = AttnArgs { q, k, v, opts: AttnOptions { causal: true, scale: None, num_splits: None } };
        let g = attention_backward(&dev, &args, &dot.view()).unwrap();
        let want = reference(&p, true, None);
        assert_close(&format!("{backend} strided dq"), &g.dq.to_vec().unwrap(), &want[0], RTOL);
        assert_close(&format!("{backend} strided dk"), &g.dk.to_vec().unwrap(), &want[1], RTOL);
        assert_close(&format!("{backend} strided dv"), &g.dv.to_vec().unwrap(), &want[2], RTOL);
    }
}

/// Scores near 100 (q and k share a component of 10; exp overflows f32 past 88, so
/// the max must be subtracted) with O(1) differences between keys, so the softmax
/// is not saturated (a saturated one's gradients are cancellations to about 0,
/// where a relative bound means nothing). An f32 score of 100 is only known to
/// about 100·2^-24 = 6e-6 absolute, which every p inherits through exp: the bound
/// here is 2e-4. And a NaN in one query row: that row's
/// dq is NaN, and so is every dk and dv row it reaches; the non-finite patterns
/// equal tf-ref's.
#[test]
fn huge_scores_and_nan() {
    for (dev, backend) in backends() {
        let mut r = StdRng::seed_from_u64(seed() ^ 0xa7_0003);
        let d = 16;
        let mut p = problem::<f32>(&mut r, 1, 5, 5, 1, d);
        for (i, x) in p.q.iter_mut().enumerate() {
            *x = if i % d == 0 { 10.0 } else { *x * 0.5 };
        }
        for (i, x) in p.k.iter_mut().enumerate() {
            *x = if i % d == 0 { 10.0 } else { *x * 0.5 };
        }
        check_within(&dev, &format!("{backend} huge"), &p, false, Some(1.0), 2e-4);
        let mut p = problem::<f32>(&mut r, 1, 5, 5, 1, d);
        p.q[2 * d + 3] = f32::NAN;
        check(&dev, &format!("{backend} NaN"), &p, true, None);
    }
}

#[test]
fn results_repeat_bit_for_bit() {
    let dev = Device::emulator();
    let mut r = StdRng::seed_from_u64(seed() ^ 0xa7_0004);
    let p = problem::<bf16>(&mut r, 1, 6, 6, 2, 40);
    let run = || {
        let (q, k) = (dev.upload(&p.q, &p.qs).unwrap(), dev.upload(&p.k, &p.ks).unwrap());
        let (v, d_o) = (dev.upload(&p.v, &p.ks).unwrap(), dev.upload(&p.d_o, &p.qs).unwrap());
        let args = AttnArgs {
            q: q.view(),
            k: k.view(),
            v: v.view(),
            opts: AttnOptions { causal: true, ..Default::default() },
        };
        let g = attention_backward(&dev, &args, &d_o.view()).unwrap();
        [g.dq, g.dk, g.dv].map(|t| t.to_vec().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<u32>>())
    };
    assert_eq!(run(), run());
}

#[test]
fn bad_inputs_return_errors() {
    let dev = Device::emulator();
    let q = dev.upload(&[0.5f32; 2 * 3 * 8], &[1, 2, 3, 8]).unwrap();
    let k = dev.upload(&[0.5f32; 4 * 3 * 8], &[1, 4, 3, 8]).unwrap();
    let args = AttnArgs { q: q.view(), k: k.view(), v: k.view(), opts: AttnOptions::default() };
    let wrong = dev.upload(&[0.5f32; 4 * 3 * 8], &[1, 4, 3, 8]).unwrap();
    let e = attention_backward(&dev, &args, &wrong.view()).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("d_o"), "{e}");
    let bad = AttnArgs { opts: AttnOptions { scale: Some(f32::NAN), ..Default::default() }, ..args.clone() };
    assert!(matches!(attention_backward(&dev, &bad, &q.view()), Err(Error::InvalidArgument { .. })));
    let big = dev.upload(&vec![0.5f32; 2 * 264], &[1, 2, 1, 264]).unwrap();
    let a2 = AttnArgs { q: big.view(), k: big.view(), v: big.view(), opts: AttnOptions::default() };
    let e = attention_backward(&dev, &a2, &big.view()).unwrap_err();
    assert!(e.to_string().contains("256"), "{e}");
    let other = Device::emulator();
    let qo = other.upload(&[0.5f32; 2 * 3 * 8], &[1, 2, 3, 8]).unwrap();
    assert!(matches!(attention_backward(&dev, &args, &qo.view()), Err(Error::DeviceMismatch { .. })));
}

// ------------------------------------------------------- tensor-core path

/// An f64 model of the tensor-core backward's roundings, on the stored inputs:
/// o rounded to T (the forward's output, which delta reads), P rounded to T before
/// dv = Pᵀ·dO, and dS rounded to T before dk and dq; everything else exact. Its
/// error against tf-ref is what the storage type costs; the kernels are held to
/// twice it (measured: 0.97 to 1.41 times it) and to the type's tolerance.
fn rounded_model<T: DType + Element>(p: &Problem<T>, causal: bool, scale: f64) -> [Vec<f64>; 3] {
    let [b, t_q, h, d] = p.qs;
    let t_k = p.ks[1];
    let r = |x: f64| f64::from(T::from_f32(x as f32).to_f32());
    let f = |x: &[T], t: usize, bi: usize, i: usize, hi: usize| -> Vec<f64> {
        let o = ((bi * t + i) * h + hi) * d;
        x[o..o + d].iter().map(|v| f64::from(v.to_f32())).collect()
    };
    let dot = |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(x, y)| x * y).sum::<f64>();
    let (mut dq, mut dk, mut dv) = (vec![0.0; b * t_q * h * d], vec![0.0; b * t_k * h * d], vec![0.0; b * t_k * h * d]);
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..t_q {
                let seen = if causal { (i + t_k).saturating_sub(t_q - 1).min(t_k) } else { t_k };
                if causal && i + t_k < t_q {
                    continue;
                }
                let (q, d_o) = (f(&p.q, t_q, bi, i, hi), f(&p.d_o, t_q, bi, i, hi));
                let s: Vec<f64> = (0..seen).map(|j| scale * dot(&q, &f(&p.k, t_k, bi, j, hi))).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
                let pr: Vec<f64> = s.iter().map(|x| (x - m).exp() / l).collect();
                let mut o = vec![0.0; d];
                for (j, &pj) in pr.iter().enumerate() {
                    for (oc, vc) in o.iter_mut().zip(f(&p.v, t_k, bi, j, hi)) {
                        *oc += pj * vc;
                    }
                }
                let delta: f64 = o.iter().zip(&d_o).map(|(oc, gc)| r(*oc) * gc).sum();
                let qrow = ((bi * t_q + i) * h + hi) * d;
                for (j, &pj) in pr.iter().enumerate() {
                    let (kj, vj) = (f(&p.k, t_k, bi, j, hi), f(&p.v, t_k, bi, j, hi));
                    let ds = r(pj * (dot(&d_o, &vj) - delta));
                    let (pr_t, krow) = (r(pj), ((bi * t_k + j) * h + hi) * d);
                    for c in 0..d {
                        dv[krow + c] += pr_t * d_o[c];
                        dk[krow + c] += scale * ds * q[c];
                        dq[qrow + c] += scale * ds * kj[c];
                    }
                }
            }
        }
    }
    [dq, dk, dv]
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Runs the forward (`attention`, tensor cores), then `attention_backward_saved`,
/// and checks dq, dk, dv against tf-ref within the type's tolerance and within 2×
/// the rounded model's error (docs/design.md's rule for attention). Returns the
/// worst error relative to its bound.
fn check_saved<T: DType + Element>(dev: &Device, what: &str, p: &Problem<T>, causal: bool) -> f64 {
    let (q, k) = (dev.upload(&p.q, &p.qs).unwrap(), dev.upload(&p.k, &p.ks).unwrap());
    let (v, d_o) = (dev.upload(&p.v, &p.ks).unwrap(), dev.upload(&p.d_o, &p.qs).unwrap());
    let opts = AttnOptions { causal, scale: None, num_splits: Some(1) };
    let args = AttnArgs { q: q.view(), k: k.view(), v: v.view(), opts };
    let (o, lse) = attention(dev, &args).unwrap();
    let g = attention_backward_saved(dev, &args, &AttnSaved { o: o.view(), lse: lse.view() }, &d_o.view()).unwrap();
    let scale = 1.0 / (p.qs[3] as f64).sqrt();
    let (want, model) = (reference(p, causal, None), rounded_model(p, causal, scale));
    let what = format!("{what} {} q {:?} k {:?} causal {causal}", <T as DType>::NAME, p.qs, p.ks);
    let mut worst = 0f64;
    for (i, (name, got)) in [("dq", &g.dq), ("dk", &g.dk), ("dv", &g.dv)].into_iter().enumerate() {
        let bound = tolerance::<T>().min(2.0 * rel_err(&model[i], &want[i]));
        let (err, _) = assert_close(&format!("{what} {name}"), &got.to_vec().unwrap(), &want[i], bound);
        worst = worst.max(err / bound);
    }
    worst
}

/// The kernels of the launches since the last call (emulator with profiles).
fn launched(dev: &Device) -> Vec<String> {
    dev.take_profiles().into_iter().map(|p| p.kernel).collect()
}

/// f16 and bf16 at every head dim with a kernel: T_q = T_k, T_q < T_k and
/// T_q > T_k (causal rows that see no key), lengths with every residue of the
/// 64-row blocks and of the 32- and 64-row steps that matter (1, 7, 31, 33, 63,
/// 65, 70, 100), two batches and heads. The tensor-core kernels must run (checked
/// by the emulator's launch profiles).
#[test]
fn tensor_core_path_matches_tf_ref() {
    let dev = Device::emulator_with(EmuOptions { checks: Checks::PROFILE, ..Default::default() });
    let mut r = StdRng::seed_from_u64(seed() ^ 0xa7_0010);
    let mut worst = 0f64;
    // (B, T_q, T_k, H, D)
    let cases = [
        (1, 70, 70, 1, 64),
        (2, 7, 100, 2, 64),
        (1, 100, 33, 1, 80),
        (1, 65, 65, 2, 96),
        (1, 31, 63, 1, 128),
        (1, 1, 65, 1, 128),
    ];
    for (b, t_q, t_k, h, d) in cases {
        for causal in [true, false] {
            let pf = problem::<f16>(&mut r, b, t_q, t_k, h, d);
            let pb = problem::<bf16>(&mut r, b, t_q, t_k, h, d);
            worst = worst.max(check_saved(&dev, "tc", &pf, causal));
            worst = worst.max(check_saved(&dev, "tc", &pb, causal));
            let k = launched(&dev);
            for (t, name) in [("f16", "dkv"), ("f16", "dq"), ("bf16", "dkv"), ("bf16", "dq")] {
                let want = format!("attn_bwd_{name}_{t}_hd{d}");
                assert!(k.contains(&want), "{want} did not run: {k:?}");
            }
        }
    }
    eprintln!("tensor-core backward: worst error / bound {worst:.2}");
}

/// The same bits on every run (no atomics), and the fallbacks: f32, a head dim
/// without a kernel, and a misaligned operand run the SIMT backward, whose result
/// they equal bit for bit.
#[test]
fn tensor_core_path_repeats_and_falls_back() {
    let dev = Device::emulator_with(EmuOptions { checks: Checks::PROFILE, ..Default::default() });
    let mut r = StdRng::seed_from_u64(seed() ^ 0xa7_0011);
    let bits =
        |g: AttnGrads| [g.dq, g.dk, g.dv].map(|t| t.to_vec().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    let p = problem::<bf16>(&mut r, 1, 90, 90, 2, 64);
    let (q, k) = (dev.upload(&p.q, &p.qs).unwrap(), dev.upload(&p.k, &p.ks).unwrap());
    let (v, d_o) = (dev.upload(&p.v, &p.ks).unwrap(), dev.upload(&p.d_o, &p.qs).unwrap());
    let args =
        AttnArgs { q: q.view(), k: k.view(), v: v.view(), opts: AttnOptions { causal: true, ..Default::default() } };
    let (o, lse) = attention(&dev, &args).unwrap();
    let saved = AttnSaved { o: o.view(), lse: lse.view() };
    let first = bits(attention_backward_saved(&dev, &args, &saved, &d_o.view()).unwrap());
    assert_eq!(first, bits(attention_backward_saved(&dev, &args, &saved, &d_o.view()).unwrap()));
    assert!(launched(&dev).iter().any(|k| k.starts_with("attn_bwd_dkv")));
    // The same q one element into its buffer (misaligned): the SIMT path.
    let mut shifted = vec![bf16::from_f32(0.0); p.q.len() + 1];
    shifted[1..].copy_from_slice(&p.q);
    let qbuf = dev.upload(&shifted, &[shifted.len()]).unwrap();
    let [_, t, hh, dd] = p.qs;
    let moved = AttnArgs { q: qbuf.strided(1, &p.qs, &[t * hh * dd, hh * dd, dd, 1]).unwrap(), ..args.clone() };
    let got = bits(attention_backward_saved(&dev, &moved, &saved, &d_o.view()).unwrap());
    assert!(!launched(&dev).iter().any(|k| k.starts_with("attn_bwd_d")), "a misaligned q took the tensor cores");
    assert_eq!(got, bits(attention_backward(&dev, &args, &d_o.view()).unwrap()));
    assert_ne!(got, first, "the two paths round differently");

    // f32, and head dim 40 (no forward either: o and lse only need their shapes)
    let pf = problem::<f32>(&mut r, 1, 9, 9, 1, 64);
    let ph = problem::<f16>(&mut r, 1, 9, 9, 1, 40);
    let fallback = |q: View<'_, f32>, k: View<'_, f32>, v: View<'_, f32>, d_o: View<'_, f32>| {
        let args = AttnArgs { q, k, v, opts: AttnOptions { causal: true, ..Default::default() } };
        let (o, lse) = attention(&dev, &args).unwrap();
        let got =
            bits(attention_backward_saved(&dev, &args, &AttnSaved { o: o.view(), lse: lse.view() }, &d_o).unwrap());
        assert_eq!(got, bits(attention_backward(&dev, &args, &d_o).unwrap()));
    };
    let up = |x: &[f32], s: &[usize]| dev.upload(x, s).unwrap();
    let (q, k, v, g) = (up(&pf.q, &pf.qs), up(&pf.k, &pf.ks), up(&pf.v, &pf.ks), up(&pf.d_o, &pf.qs));
    fallback(q.view(), k.view(), v.view(), g.view());
    assert!(!launched(&dev).iter().any(|k| k.starts_with("attn_bwd_d")), "f32 has no tensor-core kernel");
    let (q, k) = (dev.upload(&ph.q, &ph.qs).unwrap(), dev.upload(&ph.k, &ph.ks).unwrap());
    let (v, g) = (dev.upload(&ph.v, &ph.ks).unwrap(), dev.upload(&ph.d_o, &ph.qs).unwrap());
    let args = AttnArgs { q: q.view(), k: k.view(), v: v.view(), opts: AttnOptions::default() };
    let o = dev.upload(&ph.d_o, &ph.qs).unwrap();
    let lse = dev.upload(&[1.0f32; 9], &[1, 1, 9]).unwrap();
    let got =
        bits(attention_backward_saved(&dev, &args, &AttnSaved { o: o.view(), lse: lse.view() }, &g.view()).unwrap());
    assert_eq!(got, bits(attention_backward(&dev, &args, &g.view()).unwrap()));
    assert!(!launched(&dev).iter().any(|k| k.starts_with("attn_bwd_d")), "hd 40 has no tensor-core kernel");
}
