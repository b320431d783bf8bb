//! Pattention, its scores and the dense linear baseline.

use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tf_ref::{
    linear, pattention, pattention_norm, pattention_scores, Element, Error, Mat, MatRef, Norm, PattentionOpts,
};

// gelu(±1), gelu(±2) from the standard table (0.5·x·(1 + erf(x/√2))).
const GELU_1: f64 = 0.8413447460685429;
const GELU_M1: f64 = -0.15865525393145707;
const GELU_2: f64 = 1.9544997361036416;
const GELU_M2: f64 = -0.04550026389635842;
const TANH_1: f64 = 0.7615941559557649;

fn opts(norm: Norm) -> PattentionOpts {
    PattentionOpts { norm, ..Default::default() }
}

fn close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * w.abs().max(1.0), "element {i}: got {g:e}, want {w:e}");
    }
}

fn random(rng: &mut StdRng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

// The 1x2 hand case: x = [1, 2], K_P = [[3, -1], [-1, 0]] so A = [1, -1],
// ‖A‖ = √2 and with n = 2 the scale √n/‖A‖ is exactly 1. V_P = [[2, 1], [4, -3]].
const X: [f64; 2] = [1.0, 2.0];
const KP: [f64; 4] = [3.0, -1.0, -1.0, 0.0];
const VP: [f64; 4] = [2.0, 1.0, 4.0, -3.0];

fn hand(o: &PattentionOpts) -> (Mat, Mat) {
    let x = MatRef::new(&X, 1, 2).unwrap();
    let k = MatRef::new(&KP, 2, 2).unwrap();
    let v = MatRef::new(&VP, 2, 2).unwrap();
    (pattention_scores(x, k, o).unwrap(), pattention(x, k, v, o).unwrap())
}

#[test]
fn hand_case_l2_norm_gelu() {
    let (s, y) = hand(&opts(Norm::L2NormGelu));
    close(&s.data, &[GELU_1, GELU_M1], 1e-15);
    // y = gelu(1)·[2, 1] + gelu(−1)·[4, −3]
    close(&y.data, &[2.0 * GELU_1 + 4.0 * GELU_M1, GELU_1 - 3.0 * GELU_M1], 1e-15);
    assert_eq!(y.shape(), [1, 2]);
}

#[test]
fn hand_case_pinned_n_ref_doubles_the_argument() {
    // n_ref = 8: scale √8/√2 = 2, so S = [gelu(2), gelu(−2)].
    let o = PattentionOpts { n_ref: Some(8), ..Default::default() };
    let (s, _) = hand(&o);
    close(&s.data, &[GELU_2, GELU_M2], 1e-15);
}

#[test]
fn hand_case_eps_enters_the_denominator() {
    // eps = √2: scale √2/(√2 + √2) = 1/2, S = [gelu(0.5), gelu(−0.5)].
    let o = PattentionOpts { eps: std::f64::consts::SQRT_2, ..Default::default() };
    let (s, _) = hand(&o);
    close(&s.data, &[0.34573123063700656, -0.15426876936299344], 1e-15);
}

#[test]
fn hand_case_gelu_l2_norm() {
    let (s, y) = hand(&opts(Norm::GeluL2Norm));
    let norm = (GELU_1 * GELU_1 + GELU_M1 * GELU_M1).sqrt();
    let f = 2f64.sqrt() / norm;
    let (s0, s1) = (GELU_1 * f, GELU_M1 * f);
    close(&s.data, &[s0, s1], 1e-15);
    close(&y.data, &[2.0 * s0 + 4.0 * s1, s0 - 3.0 * s1], 1e-15);
}

#[test]
fn hand_case_softmax() {
    // 2·softmax([1, −1]) = [1 + tanh 1, 1 − tanh 1]
    let (s, y) = hand(&opts(Norm::Softmax));
    let (s0, s1) = (1.0 + TANH_1, 1.0 - TANH_1);
    close(&s.data, &[s0, s1], 1e-15);
    close(&y.data, &[2.0 * s0 + 4.0 * s1, s0 - 3.0 * s1], 1e-15);
}

#[test]
fn softmax_rows_sum_to_n_ref_and_are_stable() {
    let mut rng = StdRng::seed_from_u64(7);
    let (t, d, n) = (9, 13, 21);
    // Large entries: a naive exp would overflow to inf.
    let x: Vec<f64> = random(&mut rng, t * d).iter().map(|v| v * 400.0).collect();
    let k = random(&mut rng, n * d);
    for n_ref in [None, Some(5), Some(1000)] {
        let o = PattentionOpts { norm: Norm::Softmax, n_ref, eps: 0.0 };
        let s = pattention_scores(MatRef::new(&x, t, d).unwrap(), MatRef::new(&k, n, d).unwrap(), &o).unwrap();
        let want = n_ref.unwrap_or(n) as f64;
        for i in 0..t {
            let row = s.row(i).unwrap();
            assert!(row.iter().all(|v| v.is_finite() && *v >= 0.0));
            let sum: f64 = row.iter().sum();
            assert!((sum - want).abs() < 1e-12 * want, "row {i} sums to {sum}, want {want}");
        }
    }
}

#[test]
fn l2_norm_gelu_is_invariant_to_scaling_x() {
    let mut rng = StdRng::seed_from_u64(11);
    let (t, d, n, d_out) = (6, 10, 17, 5);
    let x = random(&mut rng, t * d);
    let k = random(&mut rng, n * d);
    let v = random(&mut rng, n * d_out);
    let run = |x: &[f64]| {
        pattention(
            MatRef::new(x, t, d).unwrap(),
            MatRef::new(&k, n, d).unwrap(),
            MatRef::new(&v, n, d_out).unwrap(),
            &PattentionOpts::default(),
        )
        .unwrap()
    };
    let base = run(&x);
    for c in [3.7, 1e-3] {
        let xc: Vec<f64> = x.iter().map(|a| a * c).collect();
        close(&run(&xc).data, &base.data, 1e-13);
    }
    // …while gelu_l2_norm is not (the non-linearity comes first).
    let run2 = |x: &[f64]| {
        pattention(
            MatRef::new(x, t, d).unwrap(),
            MatRef::new(&k, n, d).unwrap(),
            MatRef::new(&v, n, d_out).unwrap(),
            &opts(Norm::GeluL2Norm),
        )
        .unwrap()
    };
    let xc: Vec<f64> = x.iter().map(|a| a * 3.7).collect();
    let diff: f64 = run2(&x).data.iter().zip(&run2(&xc).data).map(|(a, b)| (a - b).abs()).sum();
    assert!(diff > 1e-3);
}

#[test]
fn zero_row_of_x_gives_zero_row_of_y_for_l2_norms() {
    let mut rng = StdRng::seed_from_u64(3);
    let (t, d, n, d_out) = (4, 6, 9, 7);
    let mut x = random(&mut rng, t * d);
    x[2 * d..3 * d].fill(0.0);
    let k = random(&mut rng, n * d);
    let v = random(&mut rng, n * d_out);
    let (xm, km, vm) =
        (MatRef::new(&x, t, d).unwrap(), MatRef::new(&k, n, d).unwrap(), MatRef::new(&v, n, d_out).unwrap());
    for norm in [Norm::L2NormGelu, Norm::GeluL2Norm] {
        let y = pattention(xm, km, vm, &opts(norm)).unwrap();
        assert!(y.data.iter().all(|v| !v.is_nan()), "{norm}: NaN in y");
        assert!(y.row(2).unwrap().iter().all(|&v| v == 0.0), "{norm}: row 2 not zero");
        assert!(y.row(1).unwrap().iter().any(|&v| v != 0.0));
    }
    // Softmax of a zero row is uniform: S = n_ref/n each, so with n_ref = n, y = Σ_j v_j.
    let y = pattention(xm, km, vm, &opts(Norm::Softmax)).unwrap();
    let colsum: Vec<f64> = (0..d_out).map(|c| (0..n).map(|j| v[j * d_out + c]).sum()).collect();
    close(y.row(2).unwrap(), &colsum, 1e-14);
}

#[test]
fn n_ref_equal_to_n_is_the_default() {
    let mut rng = StdRng::seed_from_u64(5);
    let (t, d, n, d_out) = (5, 8, 12, 3);
    let x = random(&mut rng, t * d);
    let k = random(&mut rng, n * d);
    let v = random(&mut rng, n * d_out);
    let (xm, km, vm) =
        (MatRef::new(&x, t, d).unwrap(), MatRef::new(&k, n, d).unwrap(), MatRef::new(&v, n, d_out).unwrap());
    for norm in Norm::ALL {
        let a = pattention(xm, km, vm, &opts(norm)).unwrap();
        let pinned = PattentionOpts { norm, n_ref: Some(n), eps: 0.0 };
        let b = pattention(xm, km, vm, &pinned).unwrap();
        assert_eq!(a, b, "{norm}");
        let other = PattentionOpts { n_ref: Some(n + 1), ..pinned };
        assert_ne!(a, pattention(xm, km, vm, &other).unwrap(), "{norm}");
    }
}

#[test]
fn pattention_matches_an_explicit_three_step_computation() {
    // y = scores · V_P, with the scores computed row by row from A and the formulas.
    let mut rng = StdRng::seed_from_u64(17);
    let (t, d, n, d_out) = (7, 5, 11, 4);
    let x = random(&mut rng, t * d);
    let k = random(&mut rng, n * d);
    let v = random(&mut rng, n * d_out);
    for norm in Norm::ALL {
        let y = pattention(
            MatRef::new(&x, t, d).unwrap(),
            MatRef::new(&k, n, d).unwrap(),
            MatRef::new(&v, n, d_out).unwrap(),
            &PattentionOpts { norm, n_ref: Some(3), eps: 0.25 },
        )
        .unwrap();
        for i in 0..t {
            let a: Vec<f64> = (0..n).map(|j| (0..d).map(|c| x[i * d + c] * k[j * d + c]).sum()).collect();
            let s: Vec<f64> = match norm {
                Norm::L2NormGelu => {
                    let nrm = a.iter().map(|v| v * v).sum::<f64>().sqrt() + 0.25;
                    a.iter().map(|v| tf_ref::gelu(v * 3f64.sqrt() / nrm)).collect()
                }
                Norm::GeluL2Norm => {
                    let g: Vec<f64> = a.iter().map(|&v| tf_ref::gelu(v)).collect();
                    let nrm = g.iter().map(|v| v * v).sum::<f64>().sqrt() + 0.25;
                    g.iter().map(|v| v * 3f64.sqrt() / nrm).collect()
                }
                Norm::Softmax => {
                    let z: f64 = a.iter().map(|v| v.exp()).sum();
                    a.iter().map(|v| 3.0 * v.exp() / z).collect()
                }
            };
            let want: Vec<f64> = (0..d_out).map(|c| (0..n).map(|j| s[j] * v[j * d_out + c]).sum()).collect();
            close(y.row(i).unwrap(), &want, 1e-13);
        }
    }
}

#[test]
fn half_precision_inputs_are_widened_exactly() {
    let mut rng = StdRng::seed_from_u64(23);
    let (t, d, n, d_out) = (3, 4, 5, 2);
    let x = random(&mut rng, t * d);
    let k = random(&mut rng, n * d);
    let v = random(&mut rng, n * d_out);
    fn conv<T: Element>(v: &[f64]) -> (Vec<T>, Vec<f64>) {
        let t: Vec<T> = v.iter().map(|&a| T::from_f64(a)).collect();
        let back = t.iter().map(|a| a.to_f64()).collect();
        (t, back)
    }
    fn check<T: Element>(x: &[f64], k: &[f64], v: &[f64], dims: (usize, usize, usize, usize)) {
        let (t, d, n, d_out) = dims;
        let ((xt, xb), (kt, kb), (vt, vb)) = (conv::<T>(x), conv::<T>(k), conv::<T>(v));
        let o = PattentionOpts::default();
        let a = pattention(
            MatRef::new(&xt, t, d).unwrap(),
            MatRef::new(&kt, n, d).unwrap(),
            MatRef::new(&vt, n, d_out).unwrap(),
            &o,
        )
        .unwrap();
        let b = pattention(
            MatRef::new(&xb, t, d).unwrap(),
            MatRef::new(&kb, n, d).unwrap(),
            MatRef::new(&vb, n, d_out).unwrap(),
            &o,
        )
        .unwrap();
        assert_eq!(a, b, "{}", T::NAME);
    }
    check::<f32>(&x, &k, &v, (t, d, n, d_out));
    check::<f16>(&x, &k, &v, (t, d, n, d_out));
    check::<bf16>(&x, &k, &v, (t, d, n, d_out));
}

#[test]
fn empty_token_batch_gives_empty_output() {
    let k = [1.0f32; 6];
    let v = [1.0f32; 4];
    let y = pattention(
        MatRef::new(&[], 0, 3).unwrap(),
        MatRef::new(&k, 2, 3).unwrap(),
        MatRef::new(&v, 2, 2).unwrap(),
        &PattentionOpts::default(),
    )
    .unwrap();
    assert_eq!((y.rows, y.cols, y.data.len()), (0, 2, 0));
}

fn err_msg(r: tf_ref::Result<Mat>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn shape_errors_name_the_shapes() {
    let x = vec![0.5f32; 37 * 48];
    let k_bad = vec![0.5f32; 70 * 47];
    let k = vec![0.5f32; 70 * 48];
    let v_bad = vec![0.5f32; 69 * 40];
    let v = vec![0.5f32; 70 * 40];
    let xm = MatRef::new(&x, 37, 48).unwrap();
    let o = PattentionOpts::default();

    let m = err_msg(pattention(xm, MatRef::new(&k_bad, 70, 47).unwrap(), MatRef::new(&v, 70, 40).unwrap(), &o));
    assert!(m.contains("[37, 48]") && m.contains("[70, 47]") && m.contains("d_in"), "{m}");
    assert!(m.starts_with("pattention: "), "{m}");

    let m = err_msg(pattention(xm, MatRef::new(&k, 70, 48).unwrap(), MatRef::new(&v_bad, 69, 40).unwrap(), &o));
    assert!(m.contains("[70, 48]") && m.contains("[69, 40]"), "{m}");

    let m = err_msg(pattention_scores(xm, MatRef::new(&k_bad, 70, 47).unwrap(), &o));
    assert!(m.contains("[37, 48]") && m.contains("[70, 47]"), "{m}");

    // A hand-built view whose buffer does not match its shape.
    let lying = MatRef { data: &x[..10], rows: 37, cols: 48 };
    let m = err_msg(pattention(lying, MatRef::new(&k, 70, 48).unwrap(), MatRef::new(&v, 70, 40).unwrap(), &o));
    assert!(m.contains("[37, 48]") && m.contains("1776") && m.contains("10"), "{m}");

    match MatRef::new(&x, 36, 48) {
        Err(Error::Shape { msg, .. }) => {
            assert!(msg.contains("[36, 48]") && msg.contains("1776"), "{msg}")
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    assert!(MatRef::new(&x[..0], usize::MAX, 2).is_err()); // overflow, no panic

    let m = err_msg(linear(xm, MatRef::new(&k_bad, 70, 47).unwrap()));
    assert!(m.contains("[37, 48]") && m.contains("[70, 47]") && m.starts_with("linear"), "{m}");
}

#[test]
fn invalid_arguments_are_errors() {
    let x = [1.0f64, 2.0];
    let k = [1.0f64, 2.0];
    let v = [3.0f64];
    let (xm, km, vm) = (MatRef::new(&x, 1, 2).unwrap(), MatRef::new(&k, 1, 2).unwrap(), MatRef::new(&v, 1, 1).unwrap());
    let with = |n_ref, eps| PattentionOpts { norm: Norm::L2NormGelu, n_ref, eps };
    for (o, needle) in [
        (with(Some(0), 0.0), "n_ref"),
        (with(None, -1e-5), "-0.00001"),
        (with(None, f64::NAN), "NaN"),
        (with(None, f64::INFINITY), "inf"),
    ] {
        match pattention(xm, km, vm, &o) {
            Err(Error::InvalidArgument { op, msg }) => {
                assert_eq!(op, "pattention");
                assert!(msg.contains(needle), "{msg}");
            }
            other => panic!("{o:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    // No parameter tokens at all.
    let m = err_msg(pattention(
        xm,
        MatRef::new(&[], 0, 2).unwrap(),
        MatRef::new(&[], 0, 1).unwrap(),
        &PattentionOpts::default(),
    ));
    assert!(m.contains("[0, 2]"), "{m}");
    // Huge empty operands must not overflow or allocate absurdly.
    let big = MatRef::<f64> { data: &[], rows: usize::MAX, cols: 0 };
    assert!(pattention_scores(big, MatRef::new(&[], 3, 0).unwrap(), &PattentionOpts::default()).is_err());
}

#[test]
fn norm_names_round_trip() {
    for n in Norm::ALL {
        assert_eq!(n.name().parse::<Norm>().unwrap(), n);
        assert_eq!(n.to_string(), n.name());
    }
    assert_eq!(Norm::default(), Norm::L2NormGelu);
    assert_eq!(Norm::L2NormGelu.name(), "l2_norm_gelu");
    assert_eq!(Norm::GeluL2Norm.name(), "gelu_l2_norm");
    assert_eq!(Norm::Softmax.name(), "softmax");
    let e = "l2norm".parse::<Norm>().unwrap_err().to_string();
    assert!(e.contains("\"l2norm\""), "{e}");
    let d = PattentionOpts::default();
    assert_eq!((d.norm, d.n_ref, d.eps), (Norm::L2NormGelu, None, 0.0));
}

#[test]
fn linear_matches_hand_values() {
    // x = [[1, 2, 3]], w = [[1, 0, -1], [2, 2, 2]] → y = [[-2, 12]]
    let x = [1.0f32, 2.0, 3.0];
    let w = [1.0f32, 0.0, -1.0, 2.0, 2.0, 2.0];
    let y = linear(MatRef::new(&x, 1, 3).unwrap(), MatRef::new(&w, 2, 3).unwrap()).unwrap();
    assert_eq!(y.shape(), [1, 2]);
    assert_eq!(y.data, vec![-2.0, 12.0]);
    assert_eq!(y.to_vec::<f32>(), vec![-2.0f32, 12.0]);
}

#[test]
fn element_rounding_is_nearest_even_from_f64() {
    // f16 around 1: spacing 2^-10. A tie goes to even; just above a tie goes up
    // (a conversion that drops low f64 bits first would get this wrong).
    let tie = 1.0 + 2f64.powi(-11);
    assert_eq!(f16::from_f64(tie).to_f64(), 1.0);
    assert_eq!(<f16 as Element>::from_f64(tie).to_f64(), 1.0);
    let above = tie + 2f64.powi(-40);
    assert_eq!(<f16 as Element>::from_f64(above).to_f64(), 1.0 + 2f64.powi(-10));
    let tie_odd = 1.0 + 3.0 * 2f64.powi(-11); // between 1+2^-10 (odd) and 1+2^-9 (even)
    assert_eq!(<f16 as Element>::from_f64(tie_odd).to_f64(), 1.0 + 2f64.powi(-9));
    // bf16 around 1: spacing 2^-7.
    let tie = 1.0 + 2f64.powi(-8);
    assert_eq!(<bf16 as Element>::from_f64(tie).to_f64(), 1.0);
    assert_eq!(<bf16 as Element>::from_f64(tie + 2f64.powi(-45)).to_f64(), 1.0 + 2f64.powi(-7));
    assert_eq!(<bf16 as Element>::from_f64(-tie - 2f64.powi(-45)).to_f64(), -(1.0 + 2f64.powi(-7)));
    // Overflow, underflow, NaN.
    assert!(<f16 as Element>::from_f64(1e6).to_f64().is_infinite());
    assert_eq!(<f16 as Element>::from_f64(1e-30).to_f64(), 0.0);
    assert!(<bf16 as Element>::from_f64(f64::NAN).to_f64().is_nan());
    assert_eq!(<f32 as Element>::from_f64(0.1), 0.1f32);
    assert_eq!((f32::NAME, f64::NAME, f16::NAME, bf16::NAME), ("f32", "f64", "f16", "bf16"));
    // Exhaustive-ish: every f16 midpoint ± a tiny offset in [1, 2) rounds correctly.
    for m in 0..1024u32 {
        let lo = 1.0 + f64::from(m) * 2f64.powi(-10);
        let mid = lo + 2f64.powi(-11);
        let up = <f16 as Element>::from_f64(mid + 2f64.powi(-30)).to_f64();
        let down = <f16 as Element>::from_f64(mid - 2f64.powi(-30)).to_f64();
        assert_eq!(down, lo);
        assert_eq!(up, lo + 2f64.powi(-10));
    }
}

#[test]
fn zero_key_growth_with_pinned_n_ref_preserves_l2_outputs() {
    // docs/tokenformer.md: new zero KEY rows + n_ref pinned to the old count leave
    // l2_norm_gelu and gelu_l2_norm unchanged whatever the new VALUE rows hold;
    // softmax is not preserved.
    let mut rng = StdRng::seed_from_u64(29);
    let (t, d, n, d_out, n_new) = (6, 7, 10, 5, 16);
    let x = random(&mut rng, t * d);
    let k = random(&mut rng, n * d);
    let v = random(&mut rng, n * d_out);
    let k2 = tf_ref::grow(MatRef::new(&k, n, d).unwrap(), n_new, &tf_ref::Init::Zeros).unwrap();
    let v2 =
        tf_ref::grow(MatRef::new(&v, n, d_out).unwrap(), n_new, &tf_ref::Init::Normal { std: 1.0, seed: 3 }).unwrap();
    for norm in Norm::ALL {
        let before = pattention(
            MatRef::new(&x, t, d).unwrap(),
            MatRef::new(&k, n, d).unwrap(),
            MatRef::new(&v, n, d_out).unwrap(),
            &opts(norm),
        )
        .unwrap();
        let after = |n_ref| {
            pattention(
                MatRef::new(&x, t, d).unwrap(),
                MatRef::new(&k2, n_new, d).unwrap(),
                MatRef::new(&v2, n_new, d_out).unwrap(),
                &PattentionOpts { norm, n_ref, eps: 0.0 },
            )
            .unwrap()
        };
        let diff = |m: &Mat| m.data.iter().zip(&before.data).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        if norm == Norm::Softmax {
            assert!(diff(&after(Some(n))) > 1e-3);
        } else {
            assert!(diff(&after(Some(n))) < 1e-14, "{norm}");
            assert!(diff(&after(None)) > 1e-3, "{norm}: unpinned n_ref must change y");
        }
    }
}

// ------------------------------------------------------------ non-finite inputs
//
// The expected non-finite masks below are derived by hand from the official
// formulas in IEEE arithmetic (see `Norm`), never from the code under test:
// - a NaN in x row i makes row i of A NaN, so every norm of row i is NaN: Y row i NaN;
// - ±∞ in x[i, k] makes A[i, j] = ±∞·K[j, k] infinite for every j: the L2 norms of
//   row i are ∞ (or NaN), ∞/∞ = NaN reaches Y row i; softmax sees +∞ in row i (K
//   has both signs) and is NaN there;
// - a NaN in K row j makes column j of A NaN: every row of Y is NaN;
// - ±∞ in K[j, k] makes A[i, j] = sign(x[i, k])·(±∞): the L2 norms are NaN in every
//   row; softmax is NaN in the rows where that is +∞ and finite where it is −∞
//   (S[i, j] = 0 there);
// - NaN or ±∞ in V[j, c] makes column c of Y non-finite in every row, nothing else.

#[derive(Clone, Copy, Debug)]
enum Target {
    X,
    K,
    V,
}

struct Case {
    t: usize,
    d: usize,
    n: usize,
    d_out: usize,
    x: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
}

impl Case {
    fn new(seed: u64) -> Case {
        let mut rng = StdRng::seed_from_u64(seed);
        let (t, d, n, d_out) = (7, 5, 9, 6);
        // entries bounded away from 0, so every product with ±∞ is ±∞ (never ∞·0)
        let mut away = |len: usize| -> Vec<f64> {
            (0..len)
                .map(|_| {
                    let m: f64 = rng.random_range(0.1..1.0);
                    if rng.random_bool(0.5) {
                        m
                    } else {
                        -m
                    }
                })
                .collect()
        };
        let (x, k, v) = (away(t * d), away(n * d), away(n * d_out));
        Case { t, d, n, d_out, x, k, v }
    }

    fn y(&self, x: &[f64], k: &[f64], v: &[f64], o: &PattentionOpts) -> Mat {
        pattention(
            MatRef::new(x, self.t, self.d).unwrap(),
            MatRef::new(k, self.n, self.d).unwrap(),
            MatRef::new(v, self.n, self.d_out).unwrap(),
            o,
        )
        .unwrap()
    }
}

/// The expected non-finite mask of Y ([t, d_out]) after `val` (NaN or ±∞) was put
/// at (r, c) of `target`, from the rules above.
fn expected_mask(cs: &Case, norm: Norm, target: Target, r: usize, c: usize, val: f64) -> Vec<bool> {
    let (t, d_out) = (cs.t, cs.d_out);
    let mut bad = vec![false; t * d_out];
    for i in 0..t {
        for col in 0..d_out {
            bad[i * d_out + col] = match target {
                Target::X => i == r,
                Target::K => {
                    if val.is_nan() || norm != Norm::Softmax {
                        true
                    } else {
                        // A[i, r] = x[i, c]·val: +∞ poisons the softmax row, −∞ drops the entry
                        cs.x[i * cs.d + c] * val > 0.0
                    }
                }
                Target::V => col == c,
            };
        }
    }
    bad
}

#[test]
fn non_finite_inputs_poison_exactly_what_they_reach() {
    let cs = Case::new(5);
    let mut checked_finite = 0;
    for norm in Norm::ALL {
        let o = opts(norm);
        let clean = cs.y(&cs.x, &cs.k, &cs.v, &o);
        assert!(clean.data.iter().all(|v| v.is_finite()));
        for target in [Target::X, Target::K, Target::V] {
            // a middle row and the last row, a middle column and the last one
            let (rows, cols) = match target {
                Target::X => (cs.t, cs.d),
                Target::K => (cs.n, cs.d),
                Target::V => (cs.n, cs.d_out),
            };
            for (r, c) in [(rows / 2, cols / 2), (rows - 1, cols - 1)] {
                for val in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    let (mut x, mut k, mut v) = (cs.x.clone(), cs.k.clone(), cs.v.clone());
                    match target {
                        Target::X => x[r * cs.d + c] = val,
                        Target::K => k[r * cs.d + c] = val,
                        Target::V => v[r * cs.d_out + c] = val,
                    }
                    let y = cs.y(&x, &k, &v, &o);
                    let want = expected_mask(&cs, norm, target, r, c, val);
                    let what = format!("{norm}: {val} in {target:?}[{r}, {c}]");
                    assert!(want.iter().any(|&b| b), "{what}: the case poisons nothing");
                    for (e, (&g, &b)) in y.data.iter().zip(&want).enumerate() {
                        assert_eq!(!g.is_finite(), b, "{what}: element {e} = {g}");
                        if val.is_nan() && b {
                            assert!(g.is_nan(), "{what}: element {e} = {g}, want NaN");
                        }
                    }
                    // the finite part is what it would be without the bad value
                    let (ref_y, ref_cols): (Mat, Vec<usize>) = match target {
                        // other rows / columns do not depend on the bad element at all
                        Target::X | Target::V => (clean.clone(), (0..cs.d_out).collect()),
                        // softmax rows that saw −∞ in column r of A: token r is dropped,
                        // n_ref stays n
                        Target::K => {
                            let keep = |m: &[f64], w: usize| -> Vec<f64> {
                                (0..cs.n).filter(|&j| j != r).flat_map(|j| m[j * w..(j + 1) * w].to_vec()).collect()
                            };
                            let (k2, v2) = (keep(&cs.k, cs.d), keep(&cs.v, cs.d_out));
                            let o2 = PattentionOpts { n_ref: Some(cs.n), ..o };
                            let y2 = pattention(
                                MatRef::new(&cs.x, cs.t, cs.d).unwrap(),
                                MatRef::new(&k2, cs.n - 1, cs.d).unwrap(),
                                MatRef::new(&v2, cs.n - 1, cs.d_out).unwrap(),
                                &o2,
                            )
                            .unwrap();
                            (y2, (0..cs.d_out).collect())
                        }
                    };
                    for i in 0..cs.t {
                        for &col in &ref_cols {
                            let at = i * cs.d_out + col;
                            if !want[at] {
                                let (g, w) = (y.data[at], ref_y.data[at]);
                                assert!(
                                    (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                                    "{what}: y[{i}, {col}] = {g}, want {w}"
                                );
                                checked_finite += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    // softmax with −∞ in K leaves finite rows: those were compared too
    assert!(checked_finite > 1000, "{checked_finite}");
}

#[test]
fn infinite_scores_give_nan_exactly_where_inf_over_inf_occurs() {
    // Θ of given rows (pattention_norm), n = 4, n_ref = 4 (sqrt 2).
    let s =
        |row: &[f64], norm: Norm| pattention_norm(MatRef::new(row, 1, row.len()).unwrap(), &opts(norm)).unwrap().data;
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    // l2_norm_gelu: ‖A‖ = ∞, so ∞/∞ = NaN at the infinite entries and gelu(0) = 0 elsewhere
    let got = s(&[1.0, -inf, 2.0, inf], Norm::L2NormGelu);
    assert!(got[1].is_nan() && got[3].is_nan(), "{got:?}");
    assert!(got[0] == 0.0 && got[2] == 0.0, "{got:?}");
    // gelu_l2_norm: gelu(+∞) = ∞ → NaN there, 0 elsewhere; gelu(−∞) = NaN → all NaN
    let got = s(&[1.0, inf, 2.0, -3.0], Norm::GeluL2Norm);
    assert!(got[1].is_nan() && got[0] == 0.0 && got[2] == 0.0 && got[3] == 0.0, "{got:?}");
    assert!(s(&[1.0, -inf, 2.0, -3.0], Norm::GeluL2Norm).iter().all(|v| v.is_nan()));
    // a NaN anywhere: the whole row, every norm
    for norm in Norm::ALL {
        assert!(s(&[1.0, nan, 2.0, -3.0], norm).iter().all(|v| v.is_nan()), "{norm}");
    }
    // softmax: +∞ → all NaN; −∞ → that entry 0, the rest softmax of the others (·n_ref = 4);
    // all −∞ → 0/0 = NaN
    assert!(s(&[1.0, inf, 2.0, -3.0], Norm::Softmax).iter().all(|v| v.is_nan()));
    let got = s(&[0.0, -inf, 0.0, 0.0], Norm::Softmax);
    close(&got, &[4.0 / 3.0, 0.0, 4.0 / 3.0, 4.0 / 3.0], 1e-15);
    assert!(s(&[-inf, -inf, -inf, -inf], Norm::Softmax).iter().all(|v| v.is_nan()));
}

#[test]
fn extreme_finite_rows_stay_finite_and_exact() {
    let s =
        |row: &[f64], norm: Norm| pattention_norm(MatRef::new(row, 1, row.len()).unwrap(), &opts(norm)).unwrap().data;
    // A = c·[1, −1]: ‖A‖ = c·√2 = c·√n, S = [gelu(1), gelu(−1)] for every scale c, even
    // where c² over- or underflows f64
    for c in [1e300, 1e-300] {
        close(&s(&[c, -c], Norm::L2NormGelu), &[GELU_1, GELU_M1], 1e-15);
    }
    // softmax of huge scores: exp(A − max) = [1, exp(−2e300) = 0], so S = [2, 0]
    close(&s(&[1e300, -1e300], Norm::Softmax), &[2.0, 0.0], 1e-15);
    // gelu_l2_norm of huge scores: G = [c, −0] (gelu(−c) underflows) so S = [√2, −0]
    close(&s(&[1e300, -1e300], Norm::GeluL2Norm), &[2f64.sqrt(), 0.0], 1e-15);
    // an all-zero row stays the documented all-zero row (not 0/0)
    for norm in [Norm::L2NormGelu, Norm::GeluL2Norm] {
        assert_eq!(s(&[0.0, 0.0, 0.0], norm), vec![0.0; 3]);
    }
}

#[test]
fn pattention_norm_is_the_middle_step_of_pattention() {
    let mut rng = StdRng::seed_from_u64(21);
    let (t, d, n) = (5, 7, 11);
    let x = random(&mut rng, t * d);
    let k = random(&mut rng, n * d);
    let (xm, km) = (MatRef::new(&x, t, d).unwrap(), MatRef::new(&k, n, d).unwrap());
    let a = linear(xm, km).unwrap();
    for norm in Norm::ALL {
        let o = PattentionOpts { norm, n_ref: Some(40), eps: 1e-3 };
        let s = pattention_norm(MatRef::new(&a.data, t, n).unwrap(), &o).unwrap();
        close(&s.data, &pattention_scores(xm, km, &o).unwrap().data, 1e-13);
    }
    let e = pattention_norm(MatRef::new(&[] as &[f64], 3, 0).unwrap(), &PattentionOpts::default());
    assert!(matches!(e, Err(Error::InvalidArgument { .. })));
}
