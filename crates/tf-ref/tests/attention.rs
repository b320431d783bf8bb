//! Multi-head attention against hand cases and an independent naive recomputation.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tf_ref::{attention, AttnOut, Error, Tensor4Ref};

fn random(rng: &mut StdRng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-2.0..2.0)).collect()
}

/// Independent recomputation: builds the full masked score matrix per (b, h) with
/// signed index arithmetic, then a two-pass softmax. Returns (o, lse).
fn naive(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    [b, tq, h, d]: [usize; 4],
    tk: usize,
    causal: bool,
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let at = |t: usize, bi: usize, ti: usize, hi: usize| ((bi * t + ti) * h + hi) * d;
    let mut o = vec![0.0; b * tq * h * d];
    let mut lse = vec![0.0; b * h * tq];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..tq {
                let allowed = |j: usize| !causal || (j as i64) <= i as i64 + tk as i64 - tq as i64;
                let s: Vec<Option<f64>> = (0..tk)
                    .map(|j| {
                        allowed(j).then(|| {
                            scale * (0..d).map(|c| q[at(tq, bi, i, hi) + c] * k[at(tk, bi, j, hi) + c]).sum::<f64>()
                        })
                    })
                    .collect();
                let vis: Vec<f64> = s.iter().flatten().copied().collect();
                let li = (bi * h + hi) * tq + i;
                if vis.is_empty() {
                    lse[li] = f64::INFINITY;
                    continue;
                }
                let m = vis.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = vis.iter().map(|x| (x - m).exp()).sum();
                lse[li] = m + z.ln();
                for (j, sj) in s.iter().enumerate() {
                    if let Some(sj) = sj {
                        let p = (sj - lse[li]).exp();
                        for c in 0..d {
                            o[at(tq, bi, i, hi) + c] += p * v[at(tk, bi, j, hi) + c];
                        }
                    }
                }
            }
        }
    }
    (o, lse)
}

fn run(q: &[f64], k: &[f64], v: &[f64], qs: [usize; 4], tk: usize, causal: bool, scale: Option<f64>) -> AttnOut {
    let ks = [qs[0], tk, qs[2], qs[3]];
    attention(
        Tensor4Ref::new(q, qs).unwrap(),
        Tensor4Ref::new(k, ks).unwrap(),
        Tensor4Ref::new(v, ks).unwrap(),
        causal,
        scale,
    )
    .unwrap()
}

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = g == w || (g - w).abs() <= tol * w.abs().max(1.0);
        assert!(ok, "{what}[{i}]: got {g:e}, want {w:e}");
    }
}

#[test]
fn matches_naive_on_random_shapes() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for case in 0..40 {
        let b = rng.random_range(1..=2);
        let h = rng.random_range(1..=3);
        let d = rng.random_range(1..=9);
        let tq = rng.random_range(1..=11);
        let tk = if case % 3 == 0 { tq } else { rng.random_range(1..=11) };
        let causal = case % 2 == 0;
        let scale = if case % 4 == 1 { Some(0.3) } else { None };
        let q = random(&mut rng, b * tq * h * d);
        let k = random(&mut rng, b * tk * h * d);
        let v = random(&mut rng, b * tk * h * d);
        let qs = [b, tq, h, d];
        let out = run(&q, &k, &v, qs, tk, causal, scale);
        let (o, lse) = naive(&q, &k, &v, qs, tk, causal, scale.unwrap_or(1.0 / (d as f64).sqrt()));
        let what = format!("case {case}: q {qs:?} tk {tk} causal {causal}");
        assert_eq!(out.shape_o, qs);
        close(&out.o, &o, 1e-13, &format!("{what} o"));
        close(&out.lse, &lse, 1e-13, &format!("{what} lse"));
    }
}

#[test]
fn first_causal_row_returns_v0_exactly() {
    let mut rng = StdRng::seed_from_u64(1);
    let (b, t, h, d) = (2, 6, 3, 5);
    let q = random(&mut rng, b * t * h * d);
    let k = random(&mut rng, b * t * h * d);
    let v = random(&mut rng, b * t * h * d);
    let out = run(&q, &k, &v, [b, t, h, d], t, true, None);
    for bi in 0..b {
        for hi in 0..h {
            let at = ((bi * t) * h + hi) * d; // row 0
            assert_eq!(&out.o[at..at + d], &v[at..at + d], "b {bi} h {hi}");
            // lse of one key is just its scaled score.
            let s: f64 = (0..d).map(|c| q[at + c] * k[at + c]).sum::<f64>() / (d as f64).sqrt();
            assert!((out.lse[(bi * h + hi) * t] - s).abs() < 1e-14);
        }
    }
}

#[test]
fn causal_with_one_query_equals_non_causal() {
    let mut rng = StdRng::seed_from_u64(2);
    let (b, h, d, tk) = (2, 2, 4, 13);
    let q = random(&mut rng, b * h * d);
    let k = random(&mut rng, b * tk * h * d);
    let v = random(&mut rng, b * tk * h * d);
    let c = run(&q, &k, &v, [b, 1, h, d], tk, true, None);
    let n = run(&q, &k, &v, [b, 1, h, d], tk, false, None);
    assert_eq!(c, n);
}

#[test]
fn causal_mask_is_bottom_right_aligned() {
    // One head, D = 1, q = 0 so every visible key has weight equal; v_j = j.
    // Tq = 2, Tk = 4: query 0 sees keys 0..=2, query 1 sees 0..=3.
    let q = [0.0; 2];
    let k = [1.0; 4];
    let v = [0.0, 1.0, 2.0, 3.0];
    let out = run(&q, &k, &v, [1, 2, 1, 1], 4, true, None);
    assert_eq!(out.o, vec![1.0, 1.5]);
    close(&out.lse, &[3f64.ln(), 4f64.ln()], 1e-15, "lse");
}

#[test]
fn rows_seeing_no_key_are_zero_with_infinite_lse() {
    // Tq = 4 > Tk = 2 under causal: query i sees j <= i - 2, so rows 0 and 1 see nothing.
    let mut rng = StdRng::seed_from_u64(4);
    let (h, d) = (2, 3);
    let q = random(&mut rng, 4 * h * d);
    let k = random(&mut rng, 2 * h * d);
    let v = random(&mut rng, 2 * h * d);
    let out = run(&q, &k, &v, [1, 4, h, d], 2, true, None);
    for hi in 0..h {
        for i in 0..4 {
            let at = (i * h + hi) * d;
            let row = &out.o[at..at + d];
            let lse = out.lse[hi * 4 + i];
            if i < 2 {
                assert!(row.iter().all(|&x| x == 0.0) && lse == f64::INFINITY);
            } else {
                assert!(row.iter().all(|x| x.is_finite()) && lse.is_finite());
            }
        }
        // Row 2 sees key 0 only: o = v[0].
        let at = (2 * h + hi) * d;
        assert_eq!(&out.o[at..at + d], &v[hi * d..hi * d + d]);
    }
    // No keys at all.
    let out = run(&q, &[], &[], [1, 4, h, d], 0, false, None);
    assert!(out.o.iter().all(|&x| x == 0.0));
    assert!(out.lse.iter().all(|&x| x == f64::INFINITY));
}

#[test]
fn large_scores_do_not_overflow() {
    let q = [100.0f32, 100.0];
    let k = [100.0f32, 100.0, -100.0, 100.0];
    let v = [1.0f32, 2.0];
    let out = attention(
        Tensor4Ref::new(&q, [1, 1, 1, 2]).unwrap(),
        Tensor4Ref::new(&k, [1, 2, 1, 2]).unwrap(),
        Tensor4Ref::new(&v, [1, 2, 1, 1]).unwrap(),
        false,
        Some(1.0),
    );
    // k and v shapes differ (D): an error, not a panic.
    assert!(out.is_err());
    let v = [1.0f32, 0.0, 2.0, 0.0];
    let out = attention(
        Tensor4Ref::new(&q, [1, 1, 1, 2]).unwrap(),
        Tensor4Ref::new(&k, [1, 2, 1, 2]).unwrap(),
        Tensor4Ref::new(&v, [1, 2, 1, 2]).unwrap(),
        false,
        Some(1.0),
    )
    .unwrap();
    // Scores 20000 and 0: lse = 20000 + ln(1 + e^-20000) = 20000, o = v0.
    assert_eq!(out.lse, vec![20000.0]);
    assert_eq!(out.o, vec![1.0, 0.0]);
}

fn err(r: tf_ref::Result<AttnOut>) -> Error {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn shape_errors_name_the_shapes() {
    let q = vec![0.1f32; 2 * 5 * 3 * 16];
    let k = vec![0.1f32; 2 * 7 * 3 * 16];
    let k_h = vec![0.1f32; 2 * 7 * 4 * 16];
    let k_d = vec![0.1f32; 2 * 7 * 3 * 8];
    let k_b = vec![0.1f32; 7 * 3 * 16];
    let qt = Tensor4Ref::new(&q, [2, 5, 3, 16]).unwrap();
    let kt = Tensor4Ref::new(&k, [2, 7, 3, 16]).unwrap();
    for (kk, shape, dim) in [(&k_h, [2, 7, 4, 16], "H"), (&k_d, [2, 7, 3, 8], "D"), (&k_b, [1, 7, 3, 16], "B")] {
        let kx = Tensor4Ref::new(kk, shape).unwrap();
        let m = err(attention(qt, kx, kx, true, None)).to_string();
        assert!(m.contains("[2, 5, 3, 16]") && m.contains(&format!("{shape:?}")), "{m}");
        assert!(m.contains(&format!("{dim} differs")), "{m}");
    }
    let kd = Tensor4Ref::new(&k_d, [2, 7, 3, 8]).unwrap();
    let m = err(attention(qt, kt, kd, false, None)).to_string();
    assert!(m.contains("[2, 7, 3, 16]") && m.contains("[2, 7, 3, 8]"), "{m}");
    // A buffer that does not match its shape.
    let m = err(attention(Tensor4Ref { data: &q[1..], shape: [2, 5, 3, 16] }, kt, kt, false, None)).to_string();
    assert!(m.contains("[2, 5, 3, 16]") && m.contains("480") && m.contains("479"), "{m}");
    assert!(Tensor4Ref::new(&q, [2, 5, 3, 15]).is_err());
    assert!(Tensor4Ref::new(&q[..0], [usize::MAX, 2, 1, 1]).is_err());
}

#[test]
fn invalid_arguments_are_errors() {
    let q = [0.5f64; 4];
    let qt = Tensor4Ref::new(&q, [1, 2, 2, 1]).unwrap();
    for s in [f64::NAN, f64::INFINITY] {
        assert!(matches!(err(attention(qt, qt, qt, false, Some(s))), Error::InvalidArgument { .. }));
    }
    let z = Tensor4Ref::new(&q[..0], [1, 2, 2, 0]).unwrap();
    assert!(matches!(err(attention(z, z, z, true, None)), Error::InvalidArgument { .. }));
    // Empty batch: an empty result, even with absurd other sizes.
    let e = Tensor4Ref::<f64>::new(&[], [0, usize::MAX, 3, 4]).unwrap();
    let out = attention(e, e, e, true, None).unwrap();
    assert!(out.o.is_empty() && out.lse.is_empty());
}

/// NaN / ±inf inputs, with the expected non-finite outputs derived from the rules
/// (the causal mask removes key j from rows i < j − (T_k − T_q) before anything is
/// computed from it): q row i → o row i and lse_i; k row j or a −∞·+∞ score → the rows
/// that see key j; v[j, c] → column c of the rows that see key j.
#[test]
fn non_finite_inputs_reach_only_the_rows_that_see_them() {
    let mut rng = StdRng::seed_from_u64(17);
    let (t, d) = (6, 4);
    // entries bounded away from 0 (no ∞·0)
    let mut away = |n: usize| -> Vec<f64> {
        (0..n).map(|_| rng.random_range(0.2..1.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 }).collect()
    };
    let (q, k, v) = (away(t * d), away(t * d), away(t * d));
    let run = |q: &[f64], k: &[f64], v: &[f64], causal: bool| {
        let sh = [1, t, 1, d];
        attention(
            Tensor4Ref::new(q, sh).unwrap(),
            Tensor4Ref::new(k, sh).unwrap(),
            Tensor4Ref::new(v, sh).unwrap(),
            causal,
            None,
        )
        .unwrap()
    };
    let clean = run(&q, &k, &v, true);
    let (j, c) = (3, 2);
    for causal in [true, false] {
        let sees = |i: usize| !causal || i >= j;
        // NaN in k row j: exactly the rows that see key j are NaN, o and lse
        let mut kn = k.clone();
        kn[j * d + 1] = f64::NAN;
        let r = run(&q, &kn, &v, causal);
        for i in 0..t {
            assert_eq!(r.lse[i].is_nan(), sees(i), "k NaN, causal {causal}: lse[{i}]");
            assert!(r.o[i * d..(i + 1) * d].iter().all(|x| x.is_nan() == sees(i)), "k NaN, causal {causal}: o row {i}");
        }
        // NaN / ±∞ in v[j, c]: column c of the rows that see key j, nothing else
        for val in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut vn = v.clone();
            vn[j * d + c] = val;
            let r = run(&q, &k, &vn, causal);
            for i in 0..t {
                for x in 0..d {
                    assert_eq!(!r.o[i * d + x].is_finite(), sees(i) && x == c, "v {val}, causal {causal}: o[{i}, {x}]");
                }
                assert!(r.lse[i].is_finite());
            }
        }
    }
    // NaN in q row 1: o row 1 and lse_1 only
    let mut qn = q.clone();
    qn[d] = f64::NAN;
    let r = run(&qn, &k, &v, true);
    for i in 0..t {
        assert_eq!(r.lse[i].is_nan(), i == 1);
        if i != 1 {
            assert_eq!(&r.o[i * d..(i + 1) * d], &clean.o[i * d..(i + 1) * d], "row {i} untouched");
        }
    }
    // q row 0 sees only key 0 (causal): −∞ there makes its only score −∞: 0/0 = NaN,
    // unlike a row that sees no key (o = 0, lse = +∞)
    let mut q0 = q.clone();
    q0[0] = f64::NEG_INFINITY * k[0].signum();
    let r = run(&q0, &k, &v, true);
    assert!(r.lse[0].is_nan() && r.o[..d].iter().all(|x| x.is_nan()));
    assert!(r.lse[1..].iter().all(|x| x.is_finite()));
    // +∞ score in a row: NaN row
    let mut qi = q.clone();
    qi[0] = f64::INFINITY * k[0].signum();
    assert!(run(&qi, &k, &v, true).lse[0].is_nan());
}
