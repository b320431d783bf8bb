//! Pattention backward (all three norms, pinned n_ref, eps), the norm backward
//! alone and gelu'.

use crate::{check_grads, dot, random, rng};
use tf_ref::{
    gelu, gelu_grad, pattention, pattention_backward, pattention_norm, pattention_norm_backward, Error, MatRef, Norm,
    PattentionOpts,
};

/// `Σ w ⊙ Y` for `Y = pattention(x, k_p, v_p)`; `inputs = [x, k_p, v_p]`.
fn weighted(inputs: &[Vec<f64>], w: &[f64], t: usize, n: usize, d_in: usize, d_out: usize, o: &PattentionOpts) -> f64 {
    let y = pattention(
        MatRef::new(&inputs[0], t, d_in).unwrap(),
        MatRef::new(&inputs[1], n, d_in).unwrap(),
        MatRef::new(&inputs[2], n, d_out).unwrap(),
        o,
    )
    .unwrap();
    dot(&y.data, w)
}

/// Checks the backward for one shape and option set; `seed` picks the inputs.
fn check_case(t: usize, n: usize, d_in: usize, d_out: usize, o: PattentionOpts, seed: u64) {
    let mut r = rng(seed);
    let inputs = vec![random(&mut r, t * d_in, 1.0), random(&mut r, n * d_in, 1.0), random(&mut r, n * d_out, 1.0)];
    let w = random(&mut r, t * d_out, 1.0);
    let g = pattention_backward(
        MatRef::new(&inputs[0], t, d_in).unwrap(),
        MatRef::new(&inputs[1], n, d_in).unwrap(),
        MatRef::new(&inputs[2], n, d_out).unwrap(),
        MatRef::new(&w, t, d_out).unwrap(),
        &o,
    )
    .unwrap();
    assert_eq!(g.dx.shape(), [t, d_in]);
    assert_eq!(g.dk_p.shape(), [n, d_in]);
    assert_eq!(g.dv_p.shape(), [n, d_out]);
    let what = format!("pattention {} t={t} n={n} d_in={d_in} d_out={d_out} n_ref={:?} eps={}", o.norm, o.n_ref, o.eps);
    let loss = |v: &[Vec<f64>]| weighted(v, &w, t, n, d_in, d_out, &o);
    let sig = check_grads(&what, &loss, &inputs, &[g.dx.data, g.dk_p.data, g.dv_p.data], &mut r, 3, 3);
    assert!(sig >= 6, "{what}: only {sig} non-negligible checks");
}

#[test]
fn pattention_backward_matches_finite_differences_for_every_norm() {
    for (i, norm) in Norm::ALL.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        check_case(5, 7, 3, 6, PattentionOpts { norm, ..Default::default() }, seed);
        check_case(5, 7, 6, 3, PattentionOpts { norm, ..Default::default() }, seed + 1);
        check_case(1, 1, 1, 1, PattentionOpts { norm, ..Default::default() }, seed + 2);
    }
}

#[test]
fn pattention_backward_respects_pinned_n_ref_and_eps() {
    for (i, norm) in Norm::ALL.into_iter().enumerate() {
        let seed = 200 + 10 * i as u64;
        // n_ref below and above the token count; eps as the JAX port's, and a large one.
        check_case(5, 7, 3, 6, PattentionOpts { norm, n_ref: Some(4), eps: 1e-5 }, seed);
        check_case(4, 9, 5, 2, PattentionOpts { norm, n_ref: Some(13), eps: 0.5 }, seed + 1);
    }
}

#[test]
fn norm_backward_matches_finite_differences() {
    let (t, n) = (5, 7);
    for (i, norm) in Norm::ALL.into_iter().enumerate() {
        let o = PattentionOpts { norm, n_ref: Some(3), eps: 1e-3 };
        let mut r = rng(300 + i as u64);
        let a = random(&mut r, t * n, 2.0);
        let w = random(&mut r, t * n, 1.0);
        let da = pattention_norm_backward(MatRef::new(&a, t, n).unwrap(), MatRef::new(&w, t, n).unwrap(), &o).unwrap();
        let loss = |v: &[Vec<f64>]| dot(&pattention_norm(MatRef::new(&v[0], t, n).unwrap(), &o).unwrap().data, &w);
        check_grads(&format!("pattention_norm {norm}"), &loss, &[a], &[da.data], &mut r, 2, 4);
    }
}

#[test]
fn zero_score_rows_get_zero_gradient() {
    // x has a zero row: A's row is 0, the forward gives S = 0 there (eps = 0) and
    // the backward passes nothing through it.
    let x = [0.0, 0.0, 1.0, -2.0];
    let k_p = [1.0, 2.0, -1.0, 0.5, 0.3, 0.3];
    let v_p = [1.0, 2.0, 3.0];
    let dy = [1.0, 1.0];
    for norm in [Norm::L2NormGelu, Norm::GeluL2Norm] {
        let o = PattentionOpts { norm, ..Default::default() };
        let g = pattention_backward(
            MatRef::new(&x, 2, 2).unwrap(),
            MatRef::new(&k_p, 3, 2).unwrap(),
            MatRef::new(&v_p, 3, 1).unwrap(),
            MatRef::new(&dy, 2, 1).unwrap(),
            &o,
        )
        .unwrap();
        assert_eq!(&g.dx.data[..2], &[0.0, 0.0], "{norm}");
        assert!(g.dx.data.iter().all(|v| v.is_finite()), "{norm}");
    }
}

#[test]
fn gelu_grad_matches_finite_differences_and_limits() {
    for &x in &[-9.0, -3.5, -1.0, -0.3, 0.0, 0.2, 1.0, 2.5, 7.0] {
        let h = 1e-4;
        let numeric = (-gelu(x + 2.0 * h) + 8.0 * gelu(x + h) - 8.0 * gelu(x - h) + gelu(x - 2.0 * h)) / (12.0 * h);
        crate::assert_close(&format!("gelu'({x})"), gelu_grad(x), numeric);
    }
    assert_eq!(gelu_grad(0.0), 0.5);
    assert_eq!(gelu_grad(f64::INFINITY), 1.0);
    assert_eq!(gelu_grad(f64::NEG_INFINITY), 0.0);
    assert!(gelu_grad(f64::NAN).is_nan());
}

#[test]
fn pattention_backward_rejects_bad_shapes() {
    let x = [1.0; 6];
    let k = [1.0; 6];
    let v = [1.0; 4];
    let bad_dy = [1.0; 5];
    let err = pattention_backward(
        MatRef::new(&x, 3, 2).unwrap(),
        MatRef::new(&k, 3, 2).unwrap(),
        MatRef::new(&v[..3], 3, 1).unwrap(),
        MatRef::new(&bad_dy, 5, 1).unwrap(),
        &PattentionOpts::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = pattention_backward(
        MatRef::new(&x, 3, 2).unwrap(),
        MatRef::new(&k, 3, 2).unwrap(),
        MatRef::new(&v, 2, 2).unwrap(),
        MatRef::new(&x, 3, 2).unwrap(),
        &PattentionOpts::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("n differs"), "{err}");
    let err = pattention_norm_backward(
        MatRef::new(&x, 3, 2).unwrap(),
        MatRef::new(&x, 2, 3).unwrap(),
        &PattentionOpts::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}
