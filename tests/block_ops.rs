//! The small kernels of the rest of the block (kernels/block.cu): layer norm and
//! partial rotary against tf-ref, residual add and embedding against plain Rust,
//! on the emulator always and on CUDA when present; then the errors.
//!
//! Shapes with tails: t ∈ {1, 7, 130}, d ∈ {8, 40, 264} (16-byte path) plus 37 and
//! column blocks at an odd offset (element path); head dims 64 / 80 / 96 with
//! 25 % rotary (16 / 20 / 24 dims), positions from 0 and from 15999.

mod common;

use common::{assert_close, backends, rand_vec, seed, tolerance};
use rand::{Rng, SeedableRng};
use tf_host::ops::block::{add_assign, embedding_into, layer_norm_into, rotary_into, LayerNormArgs, RotaryArgs};
use tf_host::{bf16, f16, DType, Device, Tensor};
use tf_ref::{Element, MatRef};

const TS: [usize; 3] = [1, 7, 130];
const DS: [usize; 4] = [8, 40, 264, 37];

fn f32s<T: DType>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| DType::to_f32(*x)).collect()
}

fn rng(s: u64, salt: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(s ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A `[t, d]` block at column `c0` of a `[t, w]` tensor whose other columns hold
/// `fill`; returns the tensor (write through `strided_mut(c0, [t, d], [w, 1])`).
fn embedded<T: DType>(dev: &Device, data: &[T], t: usize, d: usize, c0: usize, w: usize, fill: T) -> Tensor<T> {
    let mut all = vec![fill; t * w];
    for r in 0..t {
        all[r * w + c0..r * w + c0 + d].copy_from_slice(&data[r * d..(r + 1) * d]);
    }
    dev.upload(&all, &[t, w]).unwrap()
}

/// Columns `[c0, c0 + d)` of a `[t, w]` buffer, and whether every other column is
/// still `fill` (bit-for-bit).
fn extract<T: DType>(all: &[T], t: usize, d: usize, c0: usize, w: usize, fill: T) -> (Vec<T>, bool) {
    let mut v = Vec::with_capacity(t * d);
    let mut intact = true;
    for r in 0..t {
        for c in 0..w {
            let x = all[r * w + c];
            if (c0..c0 + d).contains(&c) {
                v.push(x);
            } else {
                intact &= DType::to_f32(x).to_bits() == DType::to_f32(fill).to_bits();
            }
        }
    }
    (v, intact)
}

// ------------------------------------------------------------------ layer norm

/// `offset`: the input and output are column blocks at column 1 of wider
/// tensors (misaligned: the element path).
fn check_layer_norm<T: DType + Element>(
    dev: &Device,
    name: &str,
    t: usize,
    d: usize,
    affine: bool,
    offset: bool,
    s: u64,
) {
    let mut r = rng(s, (t * 1000 + d) as u64);
    // a non-zero mean per row, so the mean subtraction matters
    let x: Vec<T> =
        (0..t * d).map(|i| T::from_f32(r.random_range(-1.0f32..1.0) * 2.0 + (i / d) as f32 * 0.1 + 0.5)).collect();
    let w: Vec<T> = rand_vec(&mut r, d, 1.5);
    let b: Vec<T> = rand_vec(&mut r, d, 0.5);
    let (wt, bt) = (dev.upload(&w, &[d]).unwrap(), dev.upload(&b, &[d]).unwrap());
    let (wv, bv) = (wt.view(), bt.view());
    let (wo, bo) = if affine { (Some(&wv), Some(&bv)) } else { (None, None) };
    let eps = 1e-5f32;
    let got = if offset {
        let xt = embedded(dev, &x, t, d, 1, d + 3, T::from_f32(7.0));
        let mut yt: Tensor<T> = dev.poisoned(&[t, d + 3]).unwrap();
        {
            let xv = xt.strided(1, &[t, d], &[d + 3, 1]).unwrap();
            let mut yv = yt.strided_mut(1, &[t, d], &[d + 3, 1]).unwrap();
            layer_norm_into(
                dev,
                &LayerNormArgs { x: xv.clone(), weight: wo.cloned(), bias: bo.cloned(), eps },
                &mut yv,
            )
            .unwrap();
        }
        let all = yt.to_vec().unwrap();
        let (v, _) = extract(&all, t, d, 1, d + 3, T::NAN);
        // the columns outside the block stay NaN (poison): nothing written there
        assert!(
            (0..t)
                .all(|r| DType::to_f32(all[r * (d + 3)]).is_nan() && DType::to_f32(all[r * (d + 3) + d + 1]).is_nan()),
            "layer norm wrote outside its column block"
        );
        v
    } else {
        let xt = dev.upload(&x, &[t, d]).unwrap();
        let mut yt: Tensor<T> = dev.poisoned(&[t, d]).unwrap();
        layer_norm_into(
            dev,
            &LayerNormArgs { x: xt.view(), weight: wo.cloned(), bias: bo.cloned(), eps },
            &mut yt.view_mut(),
        )
        .unwrap();
        yt.to_vec().unwrap()
    };
    let (w64, b64): (Vec<f64>, Vec<f64>) =
        (w.iter().map(|v| v.to_f64()).collect(), b.iter().map(|v| v.to_f64()).collect());
    let (wr, br) = if affine { (Some(&w64[..]), Some(&b64[..])) } else { (None, None) };
    let want = tf_ref::layer_norm(MatRef::new(&x, t, d).unwrap(), wr, br, f64::from(eps)).unwrap();
    assert_close(
        &format!("{name} layer_norm<{}> [{t}x{d}] affine {affine} offset {offset} (seed {s})", <T as DType>::NAME),
        &f32s(&got),
        &want.data,
        tolerance::<T>(),
    );
}

#[test]
fn layer_norm_matches_tf_ref() {
    let s = seed();
    for (dev, name) in backends() {
        for t in TS {
            for d in DS {
                for affine in [false, true] {
                    check_layer_norm::<f32>(&dev, name, t, d, affine, false, s);
                    check_layer_norm::<f16>(&dev, name, t, d, affine, false, s);
                    check_layer_norm::<bf16>(&dev, name, t, d, affine, false, s);
                }
            }
        }
        for d in [40, 264] {
            check_layer_norm::<f32>(&dev, name, 7, d, true, true, s);
            check_layer_norm::<bf16>(&dev, name, 7, d, false, true, s);
            check_layer_norm::<f16>(&dev, name, 7, d, true, true, s);
        }
        // weight alone, and a long row (many 16-byte chunks per lane)
        let mut r = rng(s, 1);
        let x: Vec<f32> = rand_vec(&mut r, 3 * 1536, 3.0);
        let w: Vec<f32> = rand_vec(&mut r, 1536, 1.0);
        let xt = dev.upload(&x, &[3, 1536]).unwrap();
        let wt = dev.upload(&w, &[1536]).unwrap();
        let mut yt: Tensor<f32> = dev.poisoned(&[3, 1536]).unwrap();
        layer_norm_into(
            &dev,
            &LayerNormArgs { x: xt.view(), weight: Some(wt.view()), bias: None, eps: 1e-5 },
            &mut yt.view_mut(),
        )
        .unwrap();
        let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
        let want = tf_ref::layer_norm(MatRef::new(&x, 3, 1536).unwrap(), Some(&w64), None, 1e-5).unwrap();
        assert_close(&format!("{name} layer_norm weight only"), &yt.to_vec().unwrap(), &want.data, 1e-5);
    }
}

// ------------------------------------------------------------------ rotary

/// x `[t, heads·head_dim]` as the q block (columns [0, cols)) of a fused
/// `[t, 3·cols]` buffer when `fused`, else alone; compared with tf-ref; the
/// unrotated dims and the other columns must be bit-for-bit unchanged. Returns
/// the relative error.
#[allow(clippy::too_many_arguments)]
fn check_rotary<T: DType + Element>(
    dev: &Device,
    name: &str,
    t: usize,
    heads: usize,
    head_dim: usize,
    pct: f64,
    pos_offset: usize,
    fused: bool,
    s: u64,
) -> f64 {
    let mut r = rng(s, (t * 7919 + head_dim * 31 + pos_offset) as u64);
    let cols = heads * head_dim;
    let x: Vec<T> = rand_vec(&mut r, t * cols, 2.0);
    let rot = tf_ref::rotary_dims(head_dim, pct).unwrap();
    let (w, c0) = if fused { (3 * cols, cols) } else { (cols, 0) };
    let fill = T::from_f32(-3.25);
    let mut xt = embedded(dev, &x, t, cols, c0, w, fill);
    {
        let mut xv = xt.strided_mut(c0, &[t, cols], &[w, 1]).unwrap();
        rotary_into(dev, &mut xv, &RotaryArgs { heads, head_dim, rot_dim: rot, base: 10000.0, pos_offset }).unwrap();
    }
    let (got, intact) = extract(&xt.to_vec().unwrap(), t, cols, c0, w, fill);
    assert!(intact, "{name} rotary wrote outside its column block");
    let want = tf_ref::rotary(MatRef::new(&x, t, cols).unwrap(), heads, head_dim, pct, 10000.0, pos_offset).unwrap();
    for (i, (g, x0)) in got.iter().zip(&x).enumerate() {
        if i % head_dim >= rot {
            assert_eq!(DType::to_f32(*g).to_bits(), DType::to_f32(*x0).to_bits(), "unrotated dim {i} changed");
        }
    }
    let what = format!(
        "{name} rotary<{}> [{t}x{heads}x{head_dim}] rot {rot} pos {pos_offset} fused {fused} (seed {s})",
        <T as DType>::NAME
    );
    assert_close(&what, &f32s(&got), &want.data, tolerance::<T>()).0
}

#[test]
fn rotary_matches_tf_ref() {
    let s = seed();
    for (dev, name) in backends() {
        for t in TS {
            for head_dim in [64, 80, 96] {
                for pos in [0, 15999] {
                    check_rotary::<f32>(&dev, name, t, 3, head_dim, 0.25, pos, false, s);
                    check_rotary::<f16>(&dev, name, t, 3, head_dim, 0.25, pos, false, s);
                    check_rotary::<bf16>(&dev, name, t, 3, head_dim, 0.25, pos, false, s);
                }
            }
        }
        // q inside a fused qkv buffer, full rotary, no rotary, one head
        check_rotary::<bf16>(&dev, name, 7, 2, 80, 0.25, 5, true, s);
        check_rotary::<f32>(&dev, name, 7, 2, 64, 1.0, 15999, true, s);
        check_rotary::<f16>(&dev, name, 7, 2, 64, 0.0, 3, false, s);
        check_rotary::<f32>(&dev, name, 130, 1, 96, 0.25, 123, false, s);
    }
}

/// The angle at positions ~16k: an f32 product `pos·inv_freq` would be off by
/// up to 5e-4 rad (relative error ~5e-5, over the f32 tolerance); the kernel's
/// exact reduction stays near f32 rounding.
#[test]
fn rotary_is_accurate_at_16k() {
    let s = seed();
    for (dev, name) in backends() {
        for head_dim in [64, 80, 96] {
            let rel = check_rotary::<f32>(&dev, name, 130, 4, head_dim, 0.25, 16000, false, s);
            eprintln!("{name} rotary f32 head_dim {head_dim} positions 16000..16130: relative error {rel:.2e}");
            assert!(rel < 1e-6, "{name} rotary f32 at 16k: relative error {rel:.2e} >= 1e-6");
        }
    }
}

// ------------------------------------------------------------------ residual add

fn check_add<T: DType>(dev: &Device, name: &str, t: usize, d: usize, offset: bool, s: u64) {
    let mut r = rng(s, (t * 31 + d) as u64);
    let y0: Vec<T> = rand_vec(&mut r, t * d, 2.0);
    let x: Vec<T> = rand_vec(&mut r, t * d, 2.0);
    let (c0, w) = if offset { (1, d + 2) } else { (0, d) };
    let fill = T::from_f32(9.5);
    let mut yt = embedded(dev, &y0, t, d, c0, w, fill);
    let xt = embedded(dev, &x, t, d, c0 + 1, w + 1, T::NAN);
    {
        let xv = xt.strided(c0 + 1, &[t, d], &[w + 1, 1]).unwrap();
        let mut yv = yt.strided_mut(c0, &[t, d], &[w, 1]).unwrap();
        add_assign(dev, &mut yv, &xv).unwrap();
    }
    let (got, intact) = extract(&yt.to_vec().unwrap(), t, d, c0, w, fill);
    assert!(intact, "{name} add wrote outside y's column block");
    let want: Vec<f64> = y0.iter().zip(&x).map(|(a, b)| f64::from(a.to_f32()) + f64::from(b.to_f32())).collect();
    // one rounding of the exact sum to T
    let rtol = match <T as DType>::NAME {
        "f32" => 1e-7,
        "f16" => 1e-3,
        _ => 8e-3,
    };
    assert_close(
        &format!("{name} add_assign<{}> [{t}x{d}] offset {offset} (seed {s})", <T as DType>::NAME),
        &f32s(&got),
        &want,
        rtol,
    );
}

#[test]
fn add_assign_matches_plain_rust() {
    let s = seed();
    for (dev, name) in backends() {
        for t in TS {
            for d in DS {
                for offset in [false, true] {
                    check_add::<f32>(&dev, name, t, d, offset, s);
                    check_add::<f16>(&dev, name, t, d, offset, s);
                    check_add::<bf16>(&dev, name, t, d, offset, s);
                }
            }
        }
    }
}

// ------------------------------------------------------------------ embedding

fn check_embedding<T: DType>(dev: &Device, name: &str, t: usize, d: usize, offset: bool, s: u64) {
    let mut r = rng(s, (t * 17 + d) as u64);
    let vocab = 97;
    let table: Vec<T> = rand_vec(&mut r, vocab * d, 1.0);
    let mut tokens: Vec<u32> = (0..t).map(|_| r.random_range(0..vocab as u32)).collect();
    tokens[0] = vocab as u32 - 1;
    if t > 2 {
        tokens[t - 1] = 0;
        tokens[1] = tokens[t - 1]; // repeated ids
    }
    let (c0, w) = if offset { (1, d + 2) } else { (0, d) };
    let tab = if offset {
        embedded(dev, &table, vocab, d, 1, d + 1, T::NAN)
    } else {
        dev.upload(&table, &[vocab, d]).unwrap()
    };
    let mut yt: Tensor<T> = dev.poisoned(&[t, w]).unwrap();
    {
        let tv = if offset { tab.strided(1, &[vocab, d], &[d + 1, 1]).unwrap() } else { tab.view() };
        let mut yv = yt.strided_mut(c0, &[t, d], &[w, 1]).unwrap();
        embedding_into(dev, &tv, &tokens, &mut yv).unwrap();
    }
    let (got, _) = extract(&yt.to_vec().unwrap(), t, d, c0, w, T::NAN);
    for (i, &id) in tokens.iter().enumerate() {
        for c in 0..d {
            let (g, want) = (got[i * d + c], table[id as usize * d + c]);
            assert!(
                DType::to_f32(g).to_bits() == DType::to_f32(want).to_bits(),
                "{name} embedding<{}> [{t}x{d}] offset {offset}: y[{i}, {c}] = {g:?}, table[{id}, {c}] = {want:?} (seed {s})",
                <T as DType>::NAME
            );
        }
    }
}

#[test]
fn embedding_matches_plain_rust() {
    let s = seed();
    for (dev, name) in backends() {
        for t in TS {
            for d in DS {
                for offset in [false, true] {
                    check_embedding::<f32>(&dev, name, t, d, offset, s);
                    check_embedding::<f16>(&dev, name, t, d, offset, s);
                    check_embedding::<bf16>(&dev, name, t, d, offset, s);
                }
            }
        }
    }
}

// ------------------------------------------------------------------ errors

fn err_has(e: tf_host::Error, parts: &[&str]) {
    let m = e.to_string();
    for p in parts {
        assert!(m.contains(p), "error `{m}` does not name `{p}`");
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_values() {
    let dev = Device::emulator();
    let x: Tensor<f32> = dev.upload(&[1.0; 2 * 128], &[2, 128]).unwrap();
    let mut y: Tensor<f32> = dev.zeros(&[2, 128]).unwrap();

    // embedding: an id >= vocab, named with its position; the output untouched
    let table: Tensor<f32> = dev.upload(&[0.5; 10 * 128], &[10, 128]).unwrap();
    err_has(
        embedding_into(&dev, &table.view(), &[3, 10], &mut y.view_mut()).unwrap_err(),
        &["10", "position 1", "10 rows"],
    );
    assert!(y.to_vec().unwrap().iter().all(|&v| v == 0.0));
    err_has(embedding_into(&dev, &table.view(), &[3], &mut y.view_mut()).unwrap_err(), &["1 tokens", "[2, 128]"]);
    let narrow: Tensor<f32> = dev.zeros(&[10, 64]).unwrap();
    err_has(embedding_into(&dev, &narrow.view(), &[1, 2], &mut y.view_mut()).unwrap_err(), &["[10, 64]", "[2, 128]"]);

    // rotary: rot_dim odd, rot_dim > head_dim, heads x head_dim != cols, positions past 2^24
    let mut q: Tensor<f32> = dev.upload(&[1.0; 2 * 128], &[2, 128]).unwrap();
    err_has(
        rotary_into(
            &dev,
            &mut q.view_mut(),
            &RotaryArgs { heads: 2, head_dim: 64, rot_dim: 15, base: 1e4, pos_offset: 0 },
        )
        .unwrap_err(),
        &["15", "even"],
    );
    err_has(
        rotary_into(
            &dev,
            &mut q.view_mut(),
            &RotaryArgs { heads: 2, head_dim: 64, rot_dim: 66, base: 1e4, pos_offset: 0 },
        )
        .unwrap_err(),
        &["66", "64"],
    );
    err_has(
        rotary_into(
            &dev,
            &mut q.view_mut(),
            &RotaryArgs { heads: 3, head_dim: 64, rot_dim: 16, base: 1e4, pos_offset: 0 },
        )
        .unwrap_err(),
        &["[2, 128]", "3 x 64"],
    );
    err_has(
        rotary_into(
            &dev,
            &mut q.view_mut(),
            &RotaryArgs { heads: 2, head_dim: 64, rot_dim: 16, base: 1e4, pos_offset: 1 << 24 },
        )
        .unwrap_err(),
        &["16777216"],
    );
    err_has(
        rotary_into(
            &dev,
            &mut q.view_mut(),
            &RotaryArgs { heads: 2, head_dim: 64, rot_dim: 16, base: -1.0, pos_offset: 0 },
        )
        .unwrap_err(),
        &["base", "-1"],
    );
    assert!(q.to_vec().unwrap().iter().all(|&v| v == 1.0));

    // layer norm: y shape, weight length, eps
    let mut y3: Tensor<f32> = dev.zeros(&[3, 128]).unwrap();
    err_has(
        layer_norm_into(&dev, &LayerNormArgs { x: x.view(), weight: None, bias: None, eps: 1e-5 }, &mut y3.view_mut())
            .unwrap_err(),
        &["[2, 128]", "[3, 128]"],
    );
    let w: Tensor<f32> = dev.zeros(&[100]).unwrap();
    err_has(
        layer_norm_into(
            &dev,
            &LayerNormArgs { x: x.view(), weight: Some(w.view()), bias: None, eps: 1e-5 },
            &mut y.view_mut(),
        )
        .unwrap_err(),
        &["weight", "[100]", "[128]"],
    );
    err_has(
        layer_norm_into(&dev, &LayerNormArgs { x: x.view(), weight: None, bias: None, eps: -1.0 }, &mut y.view_mut())
            .unwrap_err(),
        &["eps", "-1"],
    );

    // add: shapes differ
    let x3: Tensor<f32> = dev.zeros(&[2, 127]).unwrap();
    err_has(add_assign(&dev, &mut y.view_mut(), &x3.view()).unwrap_err(), &["[2, 128]", "[2, 127]"]);

    // another device's tensor
    let other = Device::emulator();
    let xo: Tensor<f32> = other.zeros(&[2, 128]).unwrap();
    assert!(matches!(
        add_assign(&dev, &mut y.view_mut(), &xo.view()).unwrap_err(),
        tf_host::Error::DeviceMismatch { .. }
    ));
}

/// Layer norm with one NaN, +inf or -inf in x, in the weight or in the bias: the same
/// elements as tf-ref (IEEE arithmetic, as PyTorch) are non-finite and the rest agree.
/// The rules, checked as counts too: a NaN or inf in x[r, c] makes row r's mean or
/// variance NaN or inf, so the whole row r is NaN; a NaN / inf in weight[c] or bias[c]
/// reaches column c of every row.
fn layer_norm_non_finite<T: DType + Element>(dev: &Device, name: &str, s: u64) {
    let (t, d) = (5, 264);
    let mut r = rng(s, 77);
    let x0: Vec<T> = rand_vec(&mut r, t * d, 2.0);
    let w0: Vec<T> = rand_vec(&mut r, d, 1.5);
    let b0: Vec<T> = rand_vec(&mut r, d, 0.5);
    for which in 0..3 {
        for val in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let (mut x, mut w, mut b) = (x0.clone(), w0.clone(), b0.clone());
            let (row, col) = (3, d - 1);
            match which {
                0 => x[row * d + col] = T::from_f32(val),
                1 => w[col] = T::from_f32(val),
                _ => b[col] = T::from_f32(val),
            }
            let (xt, wt, bt) =
                (dev.upload(&x, &[t, d]).unwrap(), dev.upload(&w, &[d]).unwrap(), dev.upload(&b, &[d]).unwrap());
            let mut yt: Tensor<T> = dev.upload(&vec![T::from_f32(7777.0); t * d], &[t, d]).unwrap();
            layer_norm_into(
                dev,
                &LayerNormArgs { x: xt.view(), weight: Some(wt.view()), bias: Some(bt.view()), eps: 1e-5 },
                &mut yt.view_mut(),
            )
            .unwrap();
            let got = f32s(&yt.to_vec().unwrap());
            let (w64, b64): (Vec<f64>, Vec<f64>) =
                (w.iter().map(|v| v.to_f64()).collect(), b.iter().map(|v| v.to_f64()).collect());
            let want = tf_ref::layer_norm(MatRef::new(&x, t, d).unwrap(), Some(&w64), Some(&b64), 1e-5).unwrap().data;
            let what = format!(
                "{name} layer_norm<{}>: {val} in {} (seed {s})",
                <T as DType>::NAME,
                ["x", "weight", "bias"][which]
            );
            let (mut num, mut den, mut bad) = (0f64, 0f64, 0);
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.is_finite(), w.is_finite(), "{what}: [{}, {}] got {g}, want {w}", i / d, i % d);
                if w.is_finite() {
                    num += (f64::from(g) - w).powi(2);
                    den += w * w;
                } else {
                    bad += 1;
                }
            }
            assert_eq!(bad, if which == 0 { d } else { t }, "{what}: non-finite outputs");
            assert!((num / den).sqrt() <= tolerance::<T>(), "{what}: finite part off");
        }
    }
}

#[test]
fn layer_norm_propagates_nan_and_inf() {
    let s = seed();
    for (dev, name) in backends() {
        layer_norm_non_finite::<f32>(&dev, name, s);
        layer_norm_non_finite::<f16>(&dev, name, s);
        layer_norm_non_finite::<bf16>(&dev, name, s);
    }
}
