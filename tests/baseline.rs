//! The benchmarks' baselines against tf-ref: the dense layer `linear` and the
//! stand-alone norm `pattention_norm_into` (the middle step of the unfused
//! pipeline), on the emulator always and on CUDA when present.

mod common;

use common::{assert_close, backends, rand_vec, seed, tolerance};
use rand::SeedableRng;
use tf_host::ops::rownorm::pattention_norm_into;
use tf_host::{bf16, f16, linear, linear_into, DType, Device, Norm, PattentionOptions, Tensor};
use tf_ref::{Element, MatRef};

fn check_linear<T: DType + Element>(dev: &Device, name: &str, t: usize, d_in: usize, d_out: usize, s: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    let x: Vec<T> = rand_vec(&mut rng, t * d_in, 1.0);
    let w: Vec<T> = rand_vec(&mut rng, d_out * d_in, 1.0);
    let xt = dev.upload(&x, &[t, d_in]).unwrap();
    let wt = dev.upload(&w, &[d_out, d_in]).unwrap();
    let mut y: Tensor<T> = dev.poisoned(&[t, d_out]).unwrap();
    linear_into(dev, &xt.view(), &wt.view(), &mut y.view_mut()).unwrap();
    let want = tf_ref::linear(MatRef::new(&x, t, d_in).unwrap(), MatRef::new(&w, d_out, d_in).unwrap()).unwrap();
    let got: Vec<f32> = y.to_vec().unwrap().iter().map(|v| DType::to_f32(*v)).collect();
    // 16-bit outputs are rounded once: the storage rounding dominates.
    assert_close(
        &format!("{name} linear<{}> [{t}x{d_in}]·[{d_out}x{d_in}]ᵀ", <T as DType>::NAME),
        &got,
        &want.data,
        tolerance::<T>(),
    );
}

#[test]
fn linear_matches_tf_ref_with_tails() {
    let s = seed();
    for (dev, name) in backends() {
        for &(t, d_in, d_out) in &[(1, 1, 1), (17, 33, 15), (40, 64, 48), (3, 100, 7)] {
            check_linear::<f32>(&dev, name, t, d_in, d_out, s);
            check_linear::<f16>(&dev, name, t, d_in, d_out, s);
            check_linear::<bf16>(&dev, name, t, d_in, d_out, s);
        }
        // the allocating form
        let x: Tensor<f32> = dev.upload(&[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let w: Tensor<f32> = dev.upload(&[1.0, 0.0, 1.0, 1.0, 0.5, -1.0], &[3, 2]).unwrap();
        let y = linear(&dev, &x, &w).unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(y.to_vec().unwrap(), vec![1.0, 3.0, -1.5, 3.0, 7.0, -2.5]);
    }
}

#[test]
fn linear_rejects_bad_shapes() {
    let dev = Device::emulator();
    let x: Tensor<f32> = dev.zeros(&[4, 8]).unwrap();
    let w: Tensor<f32> = dev.zeros(&[5, 7]).unwrap();
    let e = linear(&dev, &x, &w).unwrap_err().to_string();
    assert!(e.contains('8') && e.contains('7'), "{e}");
    let mut y: Tensor<f32> = dev.zeros(&[4, 6]).unwrap();
    let w_ok: Tensor<f32> = dev.zeros(&[5, 8]).unwrap();
    let e = linear_into(&dev, &x.view(), &w_ok.view(), &mut y.view_mut()).unwrap_err().to_string();
    assert!(e.contains("[4, 5]") || e.contains('6'), "{e}");
}

/// Θ alone against tf-ref: A is given as x with k_p = I, so tf-ref's scores of
/// (x, I) are Θ(x).
fn check_norm<T: DType + Element>(dev: &Device, name: &str, t: usize, n: usize, opts: PattentionOptions, s: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    let mut a: Vec<T> = rand_vec(&mut rng, t * n, 2.0);
    // a zero row must give a zero row (L2 norms), never NaN
    for v in a.iter_mut().take(n) {
        *v = T::from_f32(0.0);
    }
    let eye: Vec<T> = (0..n * n).map(|i| T::from_f32(if i % (n + 1) == 0 { 1.0 } else { 0.0 })).collect();
    let mut at = dev.upload(&a, &[t, n]).unwrap();
    pattention_norm_into(dev, &mut at.view_mut(), &opts).unwrap();
    let norm = match opts.norm {
        Norm::L2NormGelu => tf_ref::Norm::L2NormGelu,
        Norm::GeluL2Norm => tf_ref::Norm::GeluL2Norm,
        Norm::Softmax => tf_ref::Norm::Softmax,
    };
    let ropts = tf_ref::PattentionOpts { norm, n_ref: opts.n_ref, eps: opts.eps as f64 };
    let want =
        tf_ref::pattention_scores(MatRef::new(&a, t, n).unwrap(), MatRef::new(&eye, n, n).unwrap(), &ropts).unwrap();
    let got: Vec<f32> = at.to_vec().unwrap().iter().map(|v| DType::to_f32(*v)).collect();
    assert_close(
        &format!("{name} norm {:?}<{}> [{t}x{n}]", opts.norm, <T as DType>::NAME),
        &got,
        &want.data,
        tolerance::<T>(),
    );
    if opts.norm != Norm::Softmax {
        assert!(got[..n].iter().all(|&v| v == 0.0), "zero row did not stay zero");
    }
}

#[test]
fn standalone_norm_matches_tf_ref() {
    let s = seed();
    for (dev, name) in backends() {
        for norm in Norm::ALL {
            for &(t, n) in &[(1, 1), (5, 70), (3, 300), (9, 513)] {
                let o = PattentionOptions { norm, ..Default::default() };
                check_norm::<f32>(&dev, name, t, n, o, s);
                check_norm::<bf16>(&dev, name, t, n, o, s);
                check_norm::<f16>(&dev, name, t, n, o, s);
            }
            let pinned = PattentionOptions { norm, n_ref: Some(64), eps: 1e-3 };
            check_norm::<f32>(&dev, name, 4, 100, pinned, s);
        }
    }
}

/// The stand-alone norm with a NaN, +inf or -inf in one score (a middle row, the
/// last column), plus, for softmax, a row of only -inf: the same elements as
/// tf-ref's `pattention_norm` (IEEE semantics of the official formulas) are
/// non-finite, the rest agree within the dtype's tolerance. The counts are also
/// checked against the rules: a NaN poisons its whole row; +inf gives NaN at that
/// entry only for l2_norm_gelu and gelu_l2_norm (∞/∞; the finite entries become 0),
/// the whole row for softmax; -inf the entry only for l2_norm_gelu, the whole row for
/// gelu_l2_norm (gelu(-∞) = NaN), nothing for softmax (weight 0).
fn check_norm_non_finite<T: DType + Element>(dev: &Device, name: &str, norm: Norm, s: u64) {
    let (t, n) = (6, 300);
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    let base: Vec<T> = rand_vec(&mut rng, t * n, 2.0);
    let opts = PattentionOptions { norm, ..Default::default() };
    let ropts = tf_ref::PattentionOpts { norm: ref_norm(norm), n_ref: None, eps: 0.0 };
    for val in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut a = base.clone();
        let (r, c) = (2, n - 1);
        a[r * n + c] = T::from_f32(val);
        if norm == Norm::Softmax {
            a[4 * n..5 * n].fill(T::from_f32(f32::NEG_INFINITY));
        }
        let mut at = dev.upload(&a, &[t, n]).unwrap();
        pattention_norm_into(dev, &mut at.view_mut(), &opts).unwrap();
        let got: Vec<f32> = at.to_vec().unwrap().iter().map(|v| DType::to_f32(*v)).collect();
        let want = tf_ref::pattention_norm(MatRef::new(&a, t, n).unwrap(), &ropts).unwrap().data;
        let what = format!("{name} norm {norm:?}<{}>: {val} at [{r}, {c}]", <T as DType>::NAME);
        let (mut num, mut den, mut bad) = (0f64, 0f64, 0);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.is_nan(), w.is_nan(), "{what}: [{}, {}] got {g}, want {w}", i / n, i % n);
            if w.is_nan() {
                bad += 1;
            } else {
                num += (f64::from(g) - w).powi(2);
                den += w * w;
            }
        }
        let row_of = |v: f32| match (norm, v) {
            (_, v) if v.is_nan() => n,
            (Norm::Softmax, v) if v > 0.0 => n,
            (Norm::Softmax, _) => 0,
            (Norm::GeluL2Norm, v) if v < 0.0 => n,
            _ => 1,
        };
        let want_bad = row_of(val) + if norm == Norm::Softmax { n } else { 0 };
        assert_eq!(bad, want_bad, "{what}: NaN count");
        let rel = (num / den).sqrt();
        assert!(rel <= tolerance::<T>(), "{what}: finite part off by {rel:.3e}");
    }
}

fn ref_norm(n: Norm) -> tf_ref::Norm {
    match n {
        Norm::L2NormGelu => tf_ref::Norm::L2NormGelu,
        Norm::GeluL2Norm => tf_ref::Norm::GeluL2Norm,
        Norm::Softmax => tf_ref::Norm::Softmax,
    }
}

#[test]
fn standalone_norm_propagates_nan_and_inf() {
    let s = seed();
    for (dev, name) in backends() {
        for norm in Norm::ALL {
            check_norm_non_finite::<f32>(&dev, name, norm, s);
            check_norm_non_finite::<f16>(&dev, name, norm, s);
            check_norm_non_finite::<bf16>(&dev, name, norm, s);
        }
    }
}
