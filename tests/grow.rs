//! The row-append growth kernel (kernels/grow.cu) against tf-ref, on the
//! emulator always and on CUDA when a device is present.

mod common;

use common::{backends, rand_vec, seed};
use rand::{Rng, SeedableRng};
use tf_host::{bf16, f16, grow_batch, DType, Device, Error, GrowInit, GrowItem, Tensor};
use tf_ref::{Element, MatRef};

/// Old rows [rows_old, cols] grown to rows_new through the kernel, and the same
/// through tf-ref; bit-for-bit for copies and zeros, within one f32 rounding for
/// Philox normals (the GPU's libm and the host's may differ in the last bit).
fn check_one<T: DType + Element>(dev: &Device, rows_old: usize, rows_new: usize, cols: usize, init: &str, s: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s);
    let old: Vec<T> = rand_vec::<T>(&mut rng, rows_old * cols, 1.0);
    let src = dev.upload(&old, &[rows_old, cols]).unwrap();
    let mut dst: Tensor<T> = dev.poisoned(&[rows_new, cols]).unwrap();
    let extra: Vec<T> = rand_vec::<T>(&mut rng, (rows_new - rows_old) * cols, 1.0);
    let extra_t = dev.upload(&extra, &[rows_new - rows_old, cols]).unwrap();
    let (std, pseed) = (0.02f32, rng.random::<u64>());
    let ginit = match init {
        "zeros" => GrowInit::Zeros,
        "rows" => GrowInit::Rows(extra_t.view()),
        _ => GrowInit::Normal { std, seed: pseed },
    };
    grow_batch(dev, vec![GrowItem { src: Some(src.view()), dst: dst.view_mut(), rows_old, init: ginit }]).unwrap();
    let got = dst.to_vec().unwrap();
    let extra64: Vec<f64> = extra.iter().map(|v| v.to_f64()).collect();
    let rinit = match init {
        "zeros" => tf_ref::Init::Zeros,
        "rows" => tf_ref::Init::Rows(&extra64),
        _ => tf_ref::Init::Normal { std, seed: pseed },
    };
    let want = tf_ref::grow(MatRef::new(&old, rows_old, cols).unwrap(), rows_new, &rinit).unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (g, w) = (DType::to_f32(*g), Element::to_f64(*w) as f32);
        let exact = i < rows_old * cols || init != "normal";
        let ok = if exact {
            g.to_bits() == w.to_bits()
        } else {
            // one rounding step of T at |w| (f32 needs a few ulps of libm slack)
            let ulp = (w.abs() * if <T as DType>::NAME == "f32" { 1e-6 } else { 1e-2 }).max(1e-30);
            (g - w).abs() <= ulp
        };
        assert!(
            ok,
            "{} {init} [{rows_old}->{rows_new}, {cols}] element {i} (row {}): got {g}, want {w} (seed {s})",
            <T as DType>::NAME,
            i / cols
        );
    }
}

#[test]
fn growth_matches_tf_ref_with_tails() {
    let s = seed();
    for (dev, _name) in backends() {
        for &(ro, rn, c) in &[(5, 9, 24), (0, 3, 8), (7, 7, 16), (33, 70, 40), (1, 2, 1), (3, 17, 13)] {
            for init in ["zeros", "rows", "normal"] {
                check_one::<f32>(&dev, ro, rn, c, init, s);
                check_one::<bf16>(&dev, ro, rn, c, init, s);
                check_one::<f16>(&dev, ro, rn, c, init, s);
            }
        }
    }
}

#[test]
fn batched_growth_of_several_tensors_in_one_call() {
    let s = seed();
    for (dev, _) in backends() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(s);
        let shapes = [(10usize, 20usize, 48usize), (3, 4, 8), (0, 5, 16), (17, 64, 24)];
        let olds: Vec<Vec<bf16>> = shapes.iter().map(|&(ro, _, c)| rand_vec(&mut rng, ro * c, 1.0)).collect();
        let srcs: Vec<Tensor<bf16>> =
            shapes.iter().zip(&olds).map(|(&(ro, _, c), o)| dev.upload(o, &[ro, c]).unwrap()).collect();
        let mut dsts: Vec<Tensor<bf16>> = shapes.iter().map(|&(_, rn, c)| dev.poisoned(&[rn, c]).unwrap()).collect();
        let items: Vec<GrowItem<'_, bf16>> = srcs
            .iter()
            .zip(dsts.iter_mut())
            .zip(&shapes)
            .enumerate()
            .map(|(i, ((src, dst), &(ro, _, _)))| GrowItem {
                src: Some(src.view()),
                dst: dst.view_mut(),
                rows_old: ro,
                init: GrowInit::Normal { std: 0.5, seed: 1000 + i as u64 },
            })
            .collect();
        grow_batch(&dev, items).unwrap();
        for (i, ((&(ro, rn, c), old), dst)) in shapes.iter().zip(&olds).zip(&dsts).enumerate() {
            let want = tf_ref::grow(
                MatRef::new(old, ro, c).unwrap(),
                rn,
                &tf_ref::Init::Normal { std: 0.5, seed: 1000 + i as u64 },
            )
            .unwrap();
            let got = dst.to_vec().unwrap();
            assert_eq!(&got[..ro * c], &old[..], "tensor {i}: old rows changed");
            for (j, (g, w)) in got.iter().zip(&want).enumerate().skip(ro * c) {
                assert!((g.to_f32() - w.to_f32()).abs() <= w.to_f32().abs() * 1e-2, "tensor {i} el {j}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn in_place_growth_inside_spare_capacity_keeps_old_rows() {
    for (dev, _) in backends() {
        let cols = 24;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
        let all: Vec<f16> = rand_vec(&mut rng, 40 * cols, 1.0);
        let mut buf = dev.upload(&all, &[40, cols]).unwrap();
        // rows [0, 25) are the layer's; grow to 31 inside the capacity of 40
        let dst = buf.strided_mut(0, &[31, cols], &[cols, 1]).unwrap();
        grow_batch(&dev, vec![GrowItem { src: None, dst, rows_old: 25, init: GrowInit::Zeros }]).unwrap();
        let got = buf.to_vec().unwrap();
        assert_eq!(&got[..25 * cols], &all[..25 * cols], "kept rows changed");
        assert!(got[25 * cols..31 * cols].iter().all(|v| v.to_f32() == 0.0), "new rows not zeroed");
        assert_eq!(&got[31 * cols..], &all[31 * cols..], "rows past the growth were touched");
    }
}

#[test]
fn unaligned_pitches_take_the_scalar_path() {
    // cols = 5 (10-byte bf16 rows): no 16-byte chunking possible; strided source.
    for (dev, _) in backends() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
        let wide: Vec<bf16> = rand_vec(&mut rng, 6 * 7, 1.0);
        let src_t = dev.upload(&wide, &[6, 7]).unwrap();
        let src = src_t.strided(1, &[6, 5], &[7, 1]).unwrap();
        let mut dst: Tensor<bf16> = dev.poisoned(&[9, 5]).unwrap();
        grow_batch(&dev, vec![GrowItem { src: Some(src), dst: dst.view_mut(), rows_old: 6, init: GrowInit::Zeros }])
            .unwrap();
        let got = dst.to_vec().unwrap();
        for r in 0..6 {
            assert_eq!(&got[r * 5..r * 5 + 5], &wide[r * 7 + 1..r * 7 + 6], "row {r}");
        }
        assert!(got[30..].iter().all(|v| v.to_f32() == 0.0));
    }
}

#[test]
fn bad_growth_input_is_an_error_not_a_panic() {
    let dev = Device::emulator();
    let src: Tensor<f32> = dev.zeros(&[4, 8]).unwrap();
    let mut dst: Tensor<f32> = dev.zeros(&[6, 8]).unwrap();
    let mut small: Tensor<f32> = dev.zeros(&[3, 8]).unwrap();
    let other: Tensor<f32> = dev.zeros(&[4, 9]).unwrap();
    let rows: Tensor<f32> = dev.zeros(&[1, 8]).unwrap();
    let cases: Vec<(&str, Result<(), Error>)> = vec![
        (
            "rows_old > rows_new",
            grow_batch(
                &dev,
                vec![GrowItem { src: Some(src.view()), dst: small.view_mut(), rows_old: 4, init: GrowInit::Zeros }],
            ),
        ),
        (
            "cols differ",
            grow_batch(
                &dev,
                vec![GrowItem { src: Some(other.view()), dst: dst.view_mut(), rows_old: 4, init: GrowInit::Zeros }],
            ),
        ),
        (
            "init rows wrong count",
            grow_batch(
                &dev,
                vec![GrowItem {
                    src: Some(src.view()),
                    dst: dst.view_mut(),
                    rows_old: 4,
                    init: GrowInit::Rows(rows.view()),
                }],
            ),
        ),
        (
            "negative std",
            grow_batch(
                &dev,
                vec![GrowItem {
                    src: Some(src.view()),
                    dst: dst.view_mut(),
                    rows_old: 4,
                    init: GrowInit::Normal { std: -1.0, seed: 0 },
                }],
            ),
        ),
    ];
    for (what, r) in cases {
        let e = r.expect_err(what);
        let msg = e.to_string();
        assert!(msg.starts_with("grow"), "{what}: {msg}");
        assert!(msg.chars().any(|c| c.is_ascii_digit()), "{what}: message names no value: {msg}");
    }
    let other_dev = Device::emulator();
    let foreign: Tensor<f32> = other_dev.zeros(&[4, 8]).unwrap();
    let r = grow_batch(
        &dev,
        vec![GrowItem { src: Some(foreign.view()), dst: dst.view_mut(), rows_old: 4, init: GrowInit::Zeros }],
    );
    assert!(matches!(r, Err(Error::DeviceMismatch { .. })), "{r:?}");
}

mod layer {
    use super::common::{backends, rand_vec, seed};
    use rand::SeedableRng;
    use tf_host::{bf16, Device, Init, Norm, Pattention, PattentionOptions, Tensor, ValueInit};

    fn layer(
        dev: &Device,
        n: usize,
        d_in: usize,
        d_out: usize,
        norm: Norm,
        s: u64,
    ) -> (Pattention<bf16>, Vec<bf16>, Vec<bf16>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(s);
        let k: Vec<bf16> = rand_vec(&mut rng, n * d_in, 0.5);
        let v: Vec<bf16> = rand_vec(&mut rng, n * d_out, 0.5);
        let kt = dev.upload(&k, &[n, d_in]).unwrap();
        let vt = dev.upload(&v, &[n, d_out]).unwrap();
        let opts = PattentionOptions { norm, ..Default::default() };
        (Pattention::new(dev, kt, vt, opts).unwrap(), k, v)
    }

    #[test]
    fn growth_keeps_old_rows_and_matches_tf_ref_philox() {
        let s = seed();
        for (dev, _) in backends() {
            let (d_in, d_out) = (16, 24);
            let (mut l, k, v) = layer(&dev, 10, d_in, d_out, Norm::L2NormGelu, s);
            // inside no capacity: reallocates; then in place inside the 1.5x capacity
            l.grow(13, Init::Normal { key_std: 0.02, value_std: 0.5, seed: 9 }).unwrap();
            assert!(l.capacity() >= 15, "capacity {} after growing past it", l.capacity());
            let cap = l.capacity();
            l.grow(14, Init::Zeros).unwrap();
            assert_eq!(l.capacity(), cap, "growth inside the capacity reallocated");
            let keys = tensor_rows(&l.keys());
            let values = tensor_rows(&l.values());
            assert_eq!(&keys[..10 * d_in], &k[..], "old key rows changed");
            assert_eq!(&values[..10 * d_out], &v[..], "old value rows changed");
            let want_k = tf_ref::grow(
                tf_ref::MatRef::new(&k, 10, d_in).unwrap(),
                13,
                &tf_ref::Init::Normal { std: 0.02, seed: 9 },
            )
            .unwrap();
            let want_v = tf_ref::grow(
                tf_ref::MatRef::new(&v, 10, d_out).unwrap(),
                13,
                &tf_ref::Init::Normal { std: 0.5, seed: 9 ^ tf_host::layer::VALUE_SEED_XOR },
            )
            .unwrap();
            for (g, w) in keys[..13 * d_in].iter().zip(&want_k).chain(values[..13 * d_out].iter().zip(&want_v)) {
                assert!((g.to_f32() - w.to_f32()).abs() <= w.to_f32().abs() * 1e-2, "{g} vs {w}");
            }
            assert!(keys[13 * d_in..].iter().chain(&values[13 * d_out..]).all(|x| x.to_f32() == 0.0));
        }
    }

    fn tensor_rows(v: &tf_host::View<'_, bf16>) -> Vec<bf16> {
        // copy the view's rows out through a fresh tensor
        let dev = v.device().clone();
        let (rows, cols) = (v.shape()[0], v.shape()[1]);
        let mut out: Tensor<bf16> = dev.poisoned(&[rows, cols]).unwrap();
        tf_host::grow_batch(
            &dev,
            vec![tf_host::GrowItem {
                src: Some(v.clone()),
                dst: out.view_mut(),
                rows_old: rows,
                init: tf_host::GrowInit::Zeros,
            }],
        )
        .unwrap();
        out.to_vec().unwrap()
    }

    #[test]
    fn grow_preserving_leaves_outputs_unchanged_and_grow_changes_them() {
        let s = seed();
        for (dev, _) in backends() {
            for norm in [Norm::L2NormGelu, Norm::GeluL2Norm] {
                let (d_in, d_out, t) = (16, 24, 9);
                let mut rng = rand::rngs::StdRng::seed_from_u64(s ^ 1);
                let x: Vec<bf16> = rand_vec(&mut rng, t * d_in, 1.0);
                let xt = dev.upload(&x, &[t, d_in]).unwrap();
                let (mut l, _, _) = layer(&dev, 12, d_in, d_out, norm, s);
                let before = l.forward(&xt).unwrap().to_vec().unwrap();
                l.grow_preserving(40, ValueInit::Normal { std: 0.5, seed: 3 }).unwrap();
                assert_eq!(l.n(), 40);
                assert_eq!(l.options().n_ref, Some(12));
                let after = l.forward(&xt).unwrap().to_vec().unwrap();
                assert_eq!(before, after, "{norm:?}: grow_preserving changed the outputs");
                // a plain growth (random keys) must change them
                let (mut l2, _, _) = layer(&dev, 12, d_in, d_out, norm, s);
                l2.grow(40, Init::Normal { key_std: 0.5, value_std: 0.5, seed: 3 }).unwrap();
                let changed = l2.forward(&xt).unwrap().to_vec().unwrap();
                assert_ne!(before, changed, "{norm:?}: a random growth left the outputs unchanged");
            }
            let (mut sm, _, _) = layer(&dev, 12, 16, 24, Norm::Softmax, s);
            assert!(sm.grow_preserving(20, ValueInit::Zeros).is_err(), "softmax growth cannot preserve");
            assert!(sm.grow(5, Init::Zeros).is_err(), "shrinking must be refused");
        }
    }
}
