//! The backward of the block's small ops (kernels/block_backward.cu, and the
//! rotary kernel at −θ) against tf-ref's f64 gradients (checked there by finite
//! differences): layer norm with and without its affine parameters, partial
//! rotary, the embedding scatter-add, and the softmax cross-entropy; every dtype,
//! tails, numerical edges, determinism and bad input. Gradients are f32 computed
//! from the stored inputs, so the bounds are f32's, except where a gradient is
//! itself stored in a 16-bit type (rotary in place, the cross-entropy's dlogits).

mod common;

use common::{assert_close, backends, rand_vec, seed, tolerance};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tf_host::ops::block::{LayerNormArgs, RotaryArgs};
use tf_host::ops::block_backward::{
    cross_entropy_backward_into, embedding_backward, layer_norm_backward, rotary_backward_into,
};
use tf_host::{bf16, f16, DType, Device, Error};
use tf_ref::{Element, MatRef};

/// Relative Frobenius error allowed for f32 gradients against f64.
const RTOL: f64 = 2e-5;

fn rng(salt: u64) -> StdRng {
    StdRng::seed_from_u64(seed() ^ salt)
}

// ------------------------------------------------------------------ layer norm

fn check_layer_norm<T: DType + Element>(dev: &Device, backend: &str, t: usize, d: usize, affine: bool, r: &mut StdRng) {
    // a non-zero row mean, so that the mean's gradient matters; row 0 constant
    // (σ = 0 with eps = 0: dx = 0 there, as the forward's x̂ = 0)
    let mut x: Vec<T> = rand_vec(r, t * d, 2.0);
    for (i, v) in x.iter_mut().enumerate() {
        *v = T::from_f32(v.to_f32() + 0.5 + (i / d) as f32 * 0.1);
    }
    if t > 1 {
        x[..d].fill(T::from_f32(0.75));
    }
    let dy: Vec<T> = rand_vec(r, t * d, 1.0);
    let w: Vec<T> = rand_vec(r, d, 1.5);
    let b: Vec<T> = rand_vec(r, d, 0.5);
    let (w64, b64): (Vec<f64>, Vec<f64>) =
        (w.iter().map(|v| v.to_f64()).collect(), b.iter().map(|v| v.to_f64()).collect());
    for eps in [0.0f32, 1e-5] {
        let (xt, dyt) = (dev.upload(&x, &[t, d]).unwrap(), dev.upload(&dy, &[t, d]).unwrap());
        let (wt, bt) = (dev.upload(&w, &[d]).unwrap(), dev.upload(&b, &[d]).unwrap());
        let args =
            LayerNormArgs { x: xt.view(), weight: affine.then(|| wt.view()), bias: affine.then(|| bt.view()), eps };
        let g = layer_norm_backward(dev, &args, &dyt.view()).unwrap();
        let want = tf_ref::layer_norm_backward(
            MatRef::new(&x, t, d).unwrap(),
            affine.then_some(&w64[..]),
            affine.then_some(&b64[..]),
            MatRef::new(&dy, t, d).unwrap(),
            f64::from(eps),
        )
        .unwrap();
        let what = format!("{backend} layer_norm_backward<{}> [{t}x{d}] affine {affine} eps {eps}", <T as DType>::NAME);
        assert_close(&format!("{what} dx"), &g.dx.to_vec().unwrap(), &want.dx.data, RTOL);
        assert_eq!(g.dweight.is_some(), affine, "{what}");
        if let (Some(dw), Some(want_dw)) = (&g.dweight, &want.dweight) {
            assert_close(&format!("{what} dweight"), &dw.to_vec().unwrap(), want_dw, RTOL);
        }
        if let (Some(db), Some(want_db)) = (&g.dbias, &want.dbias) {
            assert_close(&format!("{what} dbias"), &db.to_vec().unwrap(), want_db, RTOL);
        }
    }
}

#[test]
fn layer_norm_backward_matches_tf_ref() {
    for (dev, backend) in backends() {
        let mut r = rng(0xbb_0001);
        for (t, d) in [(1, 8), (7, 37), (33, 264), (3, 1000)] {
            for affine in [false, true] {
                check_layer_norm::<f32>(&dev, backend, t, d, affine, &mut r);
                check_layer_norm::<f16>(&dev, backend, t, d, affine, &mut r);
                check_layer_norm::<bf16>(&dev, backend, t, d, affine, &mut r);
            }
        }
        // no rows: dx is empty, the parameter gradients are zeros
        let (x, dy) = (dev.upload::<f32>(&[], &[0, 5]).unwrap(), dev.upload::<f32>(&[], &[0, 5]).unwrap());
        let w = dev.upload(&[1.0f32; 5], &[5]).unwrap();
        let args = LayerNormArgs { x: x.view(), weight: Some(w.view()), bias: None, eps: 1e-5 };
        let g = layer_norm_backward(&dev, &args, &dy.view()).unwrap();
        assert_eq!(g.dx.shape(), &[0, 5]);
        assert_eq!(g.dweight.unwrap().to_vec().unwrap(), vec![0.0; 5], "{backend}");
        assert!(g.dbias.is_none());
    }
}

// ------------------------------------------------------------------ rotary

#[test]
fn rotary_backward_matches_tf_ref() {
    for (dev, backend) in backends() {
        let mut r = rng(0xbb_0002);
        for (t, heads, head_dim, pct, pos) in [(5, 2, 64, 0.25, 0), (9, 3, 80, 0.25, 15999), (2, 1, 8, 1.0, 7)] {
            let cols = heads * head_dim;
            let dy: Vec<f32> = rand_vec(&mut r, t * cols, 1.0);
            let rot = tf_ref::rotary_dims(head_dim, pct).unwrap();
            let mut dyt = dev.upload(&dy, &[t, cols]).unwrap();
            let args = RotaryArgs { heads, head_dim, rot_dim: rot, base: 10000.0, pos_offset: pos };
            rotary_backward_into(&dev, &mut dyt.view_mut(), &args).unwrap();
            let want = tf_ref::rotary_backward(MatRef::new(&dy, t, cols).unwrap(), heads, head_dim, pct, 10000.0, pos)
                .unwrap();
            assert_close(
                &format!("{backend} rotary_backward [{t}x{cols}] pos {pos}"),
                &dyt.to_vec().unwrap(),
                &want.data,
                RTOL,
            );
            // the backward undoes the forward (an orthogonal map): rotate, then back
            let mut x = dev.upload(&dy, &[t, cols]).unwrap();
            tf_host::ops::block::rotary_into(&dev, &mut x.view_mut(), &args).unwrap();
            rotary_backward_into(&dev, &mut x.view_mut(), &args).unwrap();
            assert_close(
                &format!("{backend} rotary then back"),
                &x.to_vec().unwrap(),
                &dy.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                1e-6,
            );
        }
        // 16-bit: the result is stored in the type, so the type's tolerance
        let dy: Vec<bf16> = rand_vec(&mut r, 4 * 128, 1.0);
        let mut dyt = dev.upload(&dy, &[4, 128]).unwrap();
        let args = RotaryArgs { heads: 2, head_dim: 64, rot_dim: 16, base: 10000.0, pos_offset: 3 };
        rotary_backward_into(&dev, &mut dyt.view_mut(), &args).unwrap();
        let want = tf_ref::rotary_backward(MatRef::new(&dy, 4, 128).unwrap(), 2, 64, 0.25, 10000.0, 3).unwrap();
        let got: Vec<f32> = dyt.to_vec().unwrap().iter().map(|v| v.to_f32()).collect();
        assert_close(&format!("{backend} rotary_backward bf16"), &got, &want.data, tolerance::<bf16>());
    }
}

// ------------------------------------------------------------------ embedding

fn check_embedding<T: DType + Element>(
    dev: &Device,
    backend: &str,
    tokens: &[u32],
    vocab: usize,
    d: usize,
    r: &mut StdRng,
) {
    let dx: Vec<T> = rand_vec(r, tokens.len() * d, 1.0);
    let dxt = dev.upload(&dx, &[tokens.len(), d]).unwrap();
    let got = embedding_backward(dev, tokens, &dxt.view(), vocab).unwrap();
    let want = tf_ref::embedding_backward(tokens, MatRef::new(&dx, tokens.len(), d).unwrap(), vocab).unwrap();
    let what =
        format!("{backend} embedding_backward<{}> {} tokens vocab {vocab} d {d}", <T as DType>::NAME, tokens.len());
    assert_eq!(got.shape(), &[vocab, d], "{what}");
    assert_close(&what, &got.to_vec().unwrap(), &want.data, RTOL);
}

#[test]
fn embedding_backward_matches_tf_ref() {
    for (dev, backend) in backends() {
        let mut r = rng(0xbb_0003);
        // repeated ids (one 40 times), ids that never occur, the last id, t = 1
        let mut tokens: Vec<u32> = (0..200).map(|i| (i * 37 % 97) as u32).collect();
        tokens.extend(std::iter::repeat_n(5u32, 40));
        tokens.push(299);
        check_embedding::<f32>(&dev, backend, &tokens, 300, 40, &mut r);
        check_embedding::<f16>(&dev, backend, &tokens, 300, 37, &mut r);
        check_embedding::<bf16>(&dev, backend, &tokens, 300, 8, &mut r);
        check_embedding::<f32>(&dev, backend, &[3], 4, 33, &mut r);
        // no tokens: all zeros
        let dx = dev.upload::<f32>(&[], &[0, 6]).unwrap();
        let de = embedding_backward(&dev, &[], &dx.view(), 3).unwrap();
        assert_eq!(de.to_vec().unwrap(), vec![0.0; 18], "{backend}");
    }
}

// ------------------------------------------------------------------ cross-entropy

fn check_cross_entropy<T: DType + Element>(
    dev: &Device,
    backend: &str,
    t: usize,
    v: usize,
    scale: f32,
    r: &mut StdRng,
) {
    let z: Vec<T> = rand_vec(r, t * v, scale);
    let targets: Vec<u32> = (0..t).map(|i| ((i * 7919 + 3) % v) as u32).collect();
    let mut zt = dev.upload(&z, &[t, v]).unwrap();
    let loss = cross_entropy_backward_into(dev, &mut zt.view_mut(), &targets).unwrap();
    let (want_loss, want) = tf_ref::cross_entropy(MatRef::new(&z, t, v).unwrap(), &targets).unwrap();
    let what = format!("{backend} cross_entropy<{}> [{t}x{v}] logits x{scale}", <T as DType>::NAME);
    assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0), "{what}: loss {loss} want {want_loss}");
    let got: Vec<f32> = zt.to_vec().unwrap().iter().map(|x| x.to_f32()).collect();
    // dlogits are stored in T
    let tol = if <T as DType>::NAME == "f32" { RTOL } else { tolerance::<T>() };
    assert_close(&format!("{what} dlogits"), &got, &want.data, tol);
}

#[test]
fn cross_entropy_matches_tf_ref() {
    for (dev, backend) in backends() {
        let mut r = rng(0xbb_0004);
        for (t, v) in [(1, 2), (7, 300), (3, 1000), (9, 257)] {
            check_cross_entropy::<f32>(&dev, backend, t, v, 3.0, &mut r);
            check_cross_entropy::<f16>(&dev, backend, t, v, 3.0, &mut r);
            check_cross_entropy::<bf16>(&dev, backend, t, v, 3.0, &mut r);
        }
        // logits far past exp's range (the max is subtracted first)
        check_cross_entropy::<f32>(&dev, backend, 4, 50, 500.0, &mut r);
        check_cross_entropy::<bf16>(&dev, backend, 4, 50, 500.0, &mut r);
    }
}

#[test]
fn results_repeat_bit_for_bit() {
    let dev = Device::emulator();
    let mut r = rng(0xbb_0005);
    let tokens: Vec<u32> = (0..64).map(|i| (i % 5) as u32).collect();
    let dx: Vec<f32> = rand_vec(&mut r, 64 * 16, 1.0);
    let dxt = dev.upload(&dx, &[64, 16]).unwrap();
    let a = embedding_backward(&dev, &tokens, &dxt.view(), 5).unwrap().to_vec().unwrap();
    let b = embedding_backward(&dev, &tokens, &dxt.view(), 5).unwrap().to_vec().unwrap();
    assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    let x: Vec<f32> = rand_vec(&mut r, 64 * 16, 1.0);
    let (xt, w) = (dev.upload(&x, &[64, 16]).unwrap(), dev.upload(&[1.5f32; 16], &[16]).unwrap());
    let args = LayerNormArgs { x: xt.view(), weight: Some(w.view()), bias: None, eps: 1e-5 };
    let g1 = layer_norm_backward(&dev, &args, &dxt.view()).unwrap();
    let g2 = layer_norm_backward(&dev, &args, &dxt.view()).unwrap();
    assert_eq!(g1.dweight.unwrap().to_vec().unwrap(), g2.dweight.unwrap().to_vec().unwrap());
}

#[test]
fn bad_inputs_return_errors() {
    let dev = Device::emulator();
    let dx = dev.upload(&[0.5f32; 12], &[3, 4]).unwrap();
    let e = embedding_backward(&dev, &[0, 1], &dx.view(), 5).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = embedding_backward(&dev, &[0, 9, 1], &dx.view(), 5).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("9"), "{e}");
    let mut z = dev.upload(&[0.5f32; 12], &[3, 4]).unwrap();
    let e = cross_entropy_backward_into(&dev, &mut z.view_mut(), &[0, 4, 1]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("position 1"), "{e}");
    let e = cross_entropy_backward_into(&dev, &mut z.view_mut(), &[0, 1]).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let mut empty = dev.upload::<f32>(&[], &[0, 4]).unwrap();
    assert!(matches!(
        cross_entropy_backward_into(&dev, &mut empty.view_mut(), &[]),
        Err(Error::InvalidArgument { .. })
    ));
    let x = dev.upload(&[0.5f32; 12], &[3, 4]).unwrap();
    let dy = dev.upload(&[0.5f32; 8], &[2, 4]).unwrap();
    let args = LayerNormArgs { x: x.view(), weight: None, bias: None, eps: 1e-5 };
    assert!(matches!(layer_norm_backward(&dev, &args, &dy.view()), Err(Error::Shape { .. })));
    let bad = LayerNormArgs { eps: -1.0, ..args.clone() };
    assert!(matches!(layer_norm_backward(&dev, &bad, &x.view()), Err(Error::InvalidArgument { .. })));
    let other = Device::emulator();
    let dy_other = other.upload(&[0.5f32; 12], &[3, 4]).unwrap();
    assert!(matches!(layer_norm_backward(&dev, &args, &dy_other.view()), Err(Error::DeviceMismatch { .. })));
}

/// NaN and inf: a NaN in a row of x poisons that row of dx and every dweight (the
/// row's x̂ enters each column's sum), not dbias; a NaN or +inf logit poisons its
/// row of dlogits and the loss. The non-finite patterns equal tf-ref's.
#[test]
fn non_finite_inputs_poison_what_they_reach() {
    for (dev, backend) in backends() {
        let mut r = rng(0xbb_0006);
        let (t, d) = (4, 24);
        let mut x: Vec<f32> = rand_vec(&mut r, t * d, 1.0);
        x[2 * d + 5] = f32::NAN;
        let dy: Vec<f32> = rand_vec(&mut r, t * d, 1.0);
        let w: Vec<f32> = rand_vec(&mut r, d, 1.0);
        let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
        let (xt, dyt, wt, bt) = (
            dev.upload(&x, &[t, d]).unwrap(),
            dev.upload(&dy, &[t, d]).unwrap(),
            dev.upload(&w, &[d]).unwrap(),
            dev.upload(&w, &[d]).unwrap(),
        );
        let args = LayerNormArgs { x: xt.view(), weight: Some(wt.view()), bias: Some(bt.view()), eps: 1e-5 };
        let g = layer_norm_backward(&dev, &args, &dyt.view()).unwrap();
        let want = tf_ref::layer_norm_backward(
            MatRef::new(&x, t, d).unwrap(),
            Some(&w64),
            Some(&w64),
            MatRef::new(&dy, t, d).unwrap(),
            1e-5,
        )
        .unwrap();
        let dx = g.dx.to_vec().unwrap();
        assert!(dx[2 * d..3 * d].iter().all(|v| v.is_nan()) && dx[..2 * d].iter().all(|v| v.is_finite()), "{backend}");
        assert_close(&format!("{backend} layer_norm NaN dx"), &dx, &want.dx.data, RTOL);
        let dw = g.dweight.unwrap().to_vec().unwrap();
        assert!(dw.iter().all(|v| v.is_nan()), "{backend}: dweight {dw:?}");
        assert_close(&format!("{backend} layer_norm NaN dweight"), &dw, want.dweight.as_ref().unwrap(), RTOL);
        assert_close(
            &format!("{backend} layer_norm NaN dbias"),
            &g.dbias.unwrap().to_vec().unwrap(),
            want.dbias.as_ref().unwrap(),
            RTOL,
        );
        for val in [f32::NAN, f32::INFINITY] {
            let (t, v) = (3, 40);
            let mut z: Vec<f32> = rand_vec(&mut r, t * v, 2.0);
            z[v + 7] = val;
            let targets = [1u32, 2, 3];
            let mut zt = dev.upload(&z, &[t, v]).unwrap();
            let loss = cross_entropy_backward_into(&dev, &mut zt.view_mut(), &targets).unwrap();
            let (want_loss, want) = tf_ref::cross_entropy(MatRef::new(&z, t, v).unwrap(), &targets).unwrap();
            assert!(loss.is_nan() && want_loss.is_nan(), "{backend} {val}: loss {loss}, tf-ref {want_loss}");
            let got = zt.to_vec().unwrap();
            assert!(got[v..2 * v].iter().all(|x| x.is_nan()), "{backend} {val}: row 1 {:?}", &got[v..2 * v]);
            assert_close(&format!("{backend} cross_entropy {val} dlogits"), &got, &want.data, RTOL);
        }
    }
}

/// The training chain's cast of f32 gradients to the storage type: round to
/// nearest even, as the half crate's conversion (inf, NaN and values past the
/// type's range included).
#[test]
fn cast_rounds_like_the_host() {
    use tf_host::ops::block_backward::cast_from_f32;
    for (dev, backend) in backends() {
        let mut r = rng(0xbb_0007);
        let mut v: Vec<f32> = rand_vec(&mut r, 1000, 3.0);
        v.extend([f32::NAN, f32::INFINITY, -f32::INFINITY, 1e6, -7e4, 1e-30, 0.0, -0.0]);
        let src = dev.upload(&v, &[v.len()]).unwrap();
        let h: Vec<f16> = cast_from_f32::<f16>(&dev, &src).unwrap().to_vec().unwrap();
        let b: Vec<bf16> = cast_from_f32::<bf16>(&dev, &src).unwrap().to_vec().unwrap();
        for (i, &x) in v.iter().enumerate() {
            let (wh, wb) = (f16::from_f32(x), bf16::from_f32(x));
            assert!(
                h[i].to_bits() == wh.to_bits() || (x.is_nan() && h[i].is_nan()),
                "{backend} f16 {x}: {} vs {}",
                h[i],
                wh
            );
            assert!(
                b[i].to_bits() == wb.to_bits() || (x.is_nan() && b[i].is_nan()),
                "{backend} bf16 {x}: {} vs {}",
                b[i],
                wb
            );
        }
    }
}
