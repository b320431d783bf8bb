//! Attention forward (kernels/attention.cu) against tf-ref, on the emulator always
//! and on CUDA when a device is present: head dims 64/80/96/128 × causal × f16/bf16
//! (+ f32), T_q < T_k (decode), T_q > T_k (empty causal rows), tails, online-softmax
//! rescales across ≥ 3 K blocks, strided views into a fused QKV buffer, adversarial
//! scores, lane orders, bad inputs.
//!
//! Outputs are poisoned (NaN) first, so an element the kernel does not write fails.
//! Judged by docs/design.md: relative Frobenius error (f32 1e-5, f16 2e-3, bf16 1e-2) on
//! o and lse (lse with an absolute floor, see `assert_lse_close`), max abs error
//! within 8x that, NaN never passes; for f16/bf16 also at most 2x the error of a
//! same-precision CPU computation (FlashAttention's test); f32 within 2x of an
//! f32-score CPU computation where that alone exceeds 1e-5 (adversarial scores).

mod common;

use common::{assert_close, backends, seed, tolerance};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tf_host::ops::attention::{plan, tiles};
use tf_host::{
    attention, attention_into, bf16, f16, AttnArgs, AttnOptions, Checks, DType, Device, EmuOptions, Error, LaneOrder,
    Tensor,
};
use tf_ref::{Element, Tensor4Ref};

/// How the inputs of one case are generated.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Gen {
    /// q in [-2, 2], k and v in [-1, 1].
    Uniform,
    /// Keys grow with their index (|k_j| ∝ 1 + 4 j / T_k): row maxima rise towards
    /// the last key block, which the kernel visits FIRST.
    RisingWithJ,
    /// Keys shrink with their index: row maxima rise in the kernel's visiting order
    /// (last block to first), so every new block rescales the accumulator.
    FallingWithJ,
}

/// One case: shapes, mask, scale, generator.
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    t_q: usize,
    t_k: usize,
    h: usize,
    d: usize,
    causal: bool,
    scale: Option<f32>,
    gen: Gen,
}

impl Case {
    fn new(b: usize, t_q: usize, t_k: usize, h: usize, d: usize, causal: bool) -> Case {
        Case { b, t_q, t_k, h, d, causal, scale: None, gen: Gen::Uniform }
    }
    fn gen(self, gen: Gen) -> Case {
        Case { gen, ..self }
    }
    fn scale(self, s: f32) -> Case {
        Case { scale: Some(s), ..self }
    }
    fn opts(&self) -> AttnOptions {
        AttnOptions { causal: self.causal, scale: self.scale, num_splits: None }
    }
    fn rng(&self, s: u64) -> StdRng {
        let mix = (self.t_q as u64) << 16 ^ (self.t_k as u64) << 32 ^ (self.d as u64) << 48 ^ self.causal as u64;
        StdRng::seed_from_u64(s ^ mix)
    }
}

/// Host data of q [B,Tq,H,D], k and v [B,Tk,H,D] for a case.
fn inputs<T: DType>(c: &Case, rng: &mut StdRng) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (nq, nk) = (c.b * c.t_q * c.h * c.d, c.b * c.t_k * c.h * c.d);
    let q = (0..nq).map(|_| T::from_f32(rng.random_range(-2.0f32..=2.0))).collect();
    let gain = |j: usize| -> f32 {
        let x = j as f32 / c.t_k.max(1) as f32;
        match c.gen {
            Gen::Uniform => 1.0,
            Gen::RisingWithJ => 1.0 + 4.0 * x,
            Gen::FallingWithJ => 5.0 - 4.0 * x,
        }
    };
    let k = (0..nk).map(|i| T::from_f32(rng.random_range(-1.0f32..=1.0) * gain((i / (c.h * c.d)) % c.t_k))).collect();
    let v = (0..nk).map(|_| T::from_f32(rng.random_range(-1.0f32..=1.0))).collect();
    (q, k, v)
}

/// The same attention at the kernels' precision, on the CPU: scores accumulated in
/// f32 (as the kernels' mma / FMA do), the rest in f64 except that for 16-bit T the
/// probabilities are rounded to T before P·V (unnormalised, as the kernel feeds them
/// to the tensor cores), and o rounded to T.
fn same_precision_o<T: DType + Element>(c: &Case, q: &[T], k: &[T], v: &[T]) -> Vec<f64> {
    let (h, d) = (c.h, c.d);
    let scale = c.scale.map_or(1.0 / (d as f64).sqrt(), f64::from);
    let mut o = vec![0.0; q.len()];
    let mut s = vec![0.0; c.t_k];
    for b in 0..c.b {
        for hh in 0..h {
            for i in 0..c.t_q {
                let visible = if c.causal { (i + 1 + c.t_k).saturating_sub(c.t_q).min(c.t_k) } else { c.t_k };
                if visible == 0 {
                    continue;
                }
                let qo = ((b * c.t_q + i) * h + hh) * d;
                for (j, sj) in s[..visible].iter_mut().enumerate() {
                    let ko = ((b * c.t_k + j) * h + hh) * d;
                    let dot =
                        (0..d).fold(0f32, |a, x| (q[qo + x].to_f64() as f32).mul_add(k[ko + x].to_f64() as f32, a));
                    *sj = scale * f64::from(dot);
                }
                let m = s[..visible].iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
                let mut l = 0.0;
                let mut acc = vec![0.0; d];
                for (j, &sj) in s[..visible].iter().enumerate() {
                    let p = (sj - m).exp();
                    l += p;
                    let pr = if <T as DType>::NAME == "f32" { p } else { <T as Element>::from_f64(p).to_f64() };
                    let vo = ((b * c.t_k + j) * h + hh) * d;
                    for (x, a) in acc.iter_mut().enumerate() {
                        *a += pr * v[vo + x].to_f64();
                    }
                }
                for (x, a) in acc.iter().enumerate() {
                    o[qo + x] = <T as Element>::from_f64(a / l).to_f64();
                }
            }
        }
    }
    o
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let (mut n, mut dd) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        n += (g - w) * (g - w);
        dd += w * w;
    }
    if dd > 0.0 {
        (n / dd).sqrt()
    } else {
        n.sqrt()
    }
}

/// lse against tf-ref: non-finite values (+inf rows) must match exactly, NaN never
/// passes, and the error of the finite ones is ‖Δ‖ / max(‖ref‖, √n) ≤ `tol`: relative
/// to the reference, with an absolute floor of `tol` RMS per element, because an lse
/// near 0 (a single visible key with a small score) makes a purely relative error
/// meaningless (a 1e-7 f32 rounding was 4e-5 "relative" there).
fn assert_lse_close(what: &str, got: &[f32], want: &[f64], tol: f64) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{what}: lse length");
    let (mut num, mut den, mut n, mut max_abs) = (0f64, 0f64, 0usize, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        if !w.is_finite() || !g.is_finite() {
            assert!(g == w, "{what}: lse[{i}] got {g}, want {w}");
            continue;
        }
        num += (g - w) * (g - w);
        den += w * w;
        n += 1;
        max_abs = max_abs.max((g - w).abs());
    }
    let rel = num.sqrt() / den.sqrt().max((n as f64).sqrt()).max(f64::MIN_POSITIVE);
    assert!(rel <= tol, "{what}: lse error {rel:.3e} > {tol:.1e} (max abs {max_abs:.3e})");
    (rel, max_abs)
}

/// Compares o and lse with tf-ref (see the module docs); rows that see no key
/// must hold exactly o = 0 and lse = +inf.
fn compare<T: DType + Element>(what: &str, c: &Case, q: &[T], k: &[T], v: &[T], o: &[T], lse: &[f32]) {
    let r = tf_ref::attention(
        Tensor4Ref::new(q, [c.b, c.t_q, c.h, c.d]).unwrap(),
        Tensor4Ref::new(k, [c.b, c.t_k, c.h, c.d]).unwrap(),
        Tensor4Ref::new(v, [c.b, c.t_k, c.h, c.d]).unwrap(),
        c.causal,
        c.scale.map(f64::from),
    )
    .unwrap();
    let tol = tolerance::<T>();
    let o32: Vec<f32> = o.iter().map(|x| DType::to_f32(*x)).collect();
    // A same-precision CPU computation bounds what any kernel can reach: for 16-bit
    // types the kernel must be within 2x of it (and within tol); for f32, within tol,
    // or within 2x of it when the scores are so large (the adversarial test) that
    // f32 rounding of the dot products alone exceeds tol.
    let sp = same_precision_o(c, q, k, v);
    let sp_err = rel_err(&sp, &r.o);
    let f32_bound = if <T as DType>::NAME == "f32" { tol.max(2.0 * sp_err) } else { tol };
    let (rel_o, max_o) = assert_close(&format!("{what}: o"), &o32, &r.o, f32_bound);
    let (rel_l, max_l) = assert_lse_close(what, lse, &r.lse, tol);
    let lse_mag = r.lse.iter().filter(|x| x.is_finite()).fold(1.0f64, |m, x| m.max(x.abs()));
    assert!(max_o <= 8.0 * f32_bound, "{what}: o max abs error {max_o:.3e} > {:.1e}", 8.0 * f32_bound);
    assert!(max_l <= 8.0 * tol * lse_mag, "{what}: lse max abs error {max_l:.3e} > {:.1e}", 8.0 * tol * lse_mag);
    for (row, &w) in r.lse.iter().enumerate() {
        if w == f64::INFINITY {
            assert_eq!(lse[row], f32::INFINITY, "{what}: lse row {row} sees no key");
            let (b, rest) = (row / (c.h * c.t_q), row % (c.h * c.t_q));
            let (hh, i) = (rest / c.t_q, rest % c.t_q);
            let base = ((b * c.t_q + i) * c.h + hh) * c.d;
            assert!(o32[base..base + c.d].iter().all(|&x| x == 0.0), "{what}: o row {row} sees no key: not 0");
        }
    }
    if <T as DType>::NAME != "f32" {
        assert!(
            rel_o <= 2.0 * sp_err + 1e-6,
            "{what}: o error {rel_o:.3e} is more than 2x a same-precision CPU computation's {sp_err:.3e}"
        );
    }
    if std::env::var_os("TF_TEST_VERBOSE").is_some() {
        eprintln!(
            "  {what}: o rel {rel_o:.2e} (same-precision CPU {sp_err:.2e}) max {max_o:.2e}, lse rel {rel_l:.2e} max {max_l:.2e}"
        );
    }
}

/// Runs one case on `dev` with contiguous tensors and poisoned outputs, through the
/// single-pass kernel (no split-KV: on the emulator's 132 "SMs" the heuristic would
/// split most of these small shapes; split-KV has its own tests).
fn check<T: DType + Element>(dev: &Device, c: Case, s: u64) {
    check_splits::<T>(dev, c, s, Some(1));
}

/// `check` with the number of K splits forced (`Some`) or heuristic (`None`);
/// returns o as f32.
fn check_splits<T: DType + Element>(dev: &Device, c: Case, s: u64, splits: Option<usize>) -> Vec<f32> {
    let (q, k, v) = inputs::<T>(&c, &mut c.rng(s));
    let qt = dev.upload(&q, &[c.b, c.t_q, c.h, c.d]).unwrap();
    let kt = dev.upload(&k, &[c.b, c.t_k, c.h, c.d]).unwrap();
    let vt = dev.upload(&v, &[c.b, c.t_k, c.h, c.d]).unwrap();
    let mut ot: Tensor<T> = dev.poisoned(&[c.b, c.t_q, c.h, c.d]).unwrap();
    let mut lt: Tensor<f32> = dev.poisoned(&[c.b, c.h, c.t_q]).unwrap();
    let what = format!("{} {c:?} splits {splits:?} (seed {s})", <T as DType>::NAME);
    let (mut ov, mut lv) = (ot.view_mut(), lt.view_mut());
    attention_into(
        dev,
        &AttnArgs { q: qt.view(), k: kt.view(), v: vt.view(), opts: AttnOptions { num_splits: splits, ..c.opts() } },
        &mut ov,
        &mut lv,
        None,
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let o = ot.to_vec().unwrap();
    compare(&what, &c, &q, &k, &v, &o, &lt.to_vec().unwrap());
    o.iter().map(|x| DType::to_f32(*x)).collect()
}

fn check_all_dtypes(dev: &Device, c: Case, s: u64) {
    check::<f16>(dev, c, s);
    check::<bf16>(dev, c, s);
    check::<f32>(dev, c, s);
}

const DIMS: [usize; 4] = [64, 80, 96, 128];

#[test]
fn head_dims_dtypes_causal_and_not() {
    let s = seed();
    for (dev, _) in backends() {
        for d in DIMS {
            for causal in [false, true] {
                // 130 = one full 128-row block + 2; K tiles of 64 (or 32 at hd 128) + tail.
                check_all_dtypes(&dev, Case::new(2, 130, 130, 2, d, causal), s);
            }
        }
    }
}

#[test]
fn fewer_queries_than_keys_decode_and_chunked_prefill() {
    let s = seed();
    for (dev, _) in backends() {
        for d in DIMS {
            for causal in [false, true] {
                for (t_q, t_k) in [(1, 1), (1, 200), (17, 65), (17, 200), (65, 130)] {
                    let c = Case::new(1, t_q, t_k, 2, d, causal);
                    check_all_dtypes(&dev, c, s);
                    // ... and as a user gets it: split-KV by the heuristic.
                    check_splits::<bf16>(&dev, c, s, None);
                }
            }
        }
    }
}

#[test]
fn more_queries_than_keys_causal_rows_see_nothing() {
    let s = seed();
    for (dev, _) in backends() {
        for d in DIMS {
            // 300 x 10: query blocks 0 and 1 see no key at all (skipped early), block 2
            // partly; 130 x 17 and 65 x 1: empty rows inside a computed block.
            for (t_q, t_k) in [(300, 10), (130, 17), (65, 1), (17, 16)] {
                check_all_dtypes(&dev, Case::new(1, t_q, t_k, 2, d, true), s);
            }
            // No keys at all: every row is empty, causal or not.
            for causal in [false, true] {
                check_all_dtypes(&dev, Case::new(2, 17, 0, 1, d, causal), s);
            }
        }
    }
}

#[test]
fn tails_in_both_sequence_lengths() {
    let s = seed();
    for (dev, _) in backends() {
        for d in DIMS {
            for t_q in [1, 17, 65, 130] {
                for t_k in [1, 17, 65, 130] {
                    let causal = (t_q + t_k + d) % 2 == 0; // both kinds, spread over the grid
                    check_all_dtypes(&dev, Case::new(1, t_q, t_k, 1, d, causal), s);
                }
            }
        }
    }
}

#[test]
fn online_softmax_rescales_over_many_key_blocks() {
    let s = seed();
    for (dev, _) in backends() {
        for d in DIMS {
            let bn = tiles::<f16>(d).unwrap().1.max(tiles::<f32>(d).unwrap().1);
            let t_k = 4 * bn + 5; // 5 K blocks (the last one ragged)
            for gen in [Gen::FallingWithJ, Gen::RisingWithJ] {
                for causal in [false, true] {
                    check_all_dtypes(&dev, Case::new(1, 40, t_k, 2, d, causal).gen(gen), s);
                }
            }
        }
    }
}

#[test]
fn adversarial_large_scores() {
    let s = seed();
    for (dev, _) in backends() {
        for d in DIMS {
            // |scores| up to ~1e4: an exponent that is not max-shifted overflows even in f32.
            for causal in [false, true] {
                check_all_dtypes(&dev, Case::new(1, 33, 70, 1, d, causal).gen(Gen::FallingWithJ).scale(40.0), s);
            }
        }
    }
}

/// q, k, v as views into one fused [B, T, 3, H, D] buffer; o into a [B, T, H, D+8]
/// buffer and lse into a [B, H, T+3] buffer (their padding must stay untouched).
fn check_fused<T: DType + Element>(dev: &Device, b: usize, t: usize, h: usize, d: usize, causal: bool, s: u64) {
    let c = Case::new(b, t, t, h, d, causal);
    let mut rng = c.rng(s);
    let fused: Vec<T> = (0..b * t * 3 * h * d).map(|_| T::from_f32(rng.random_range(-2.0f32..=2.0))).collect();
    let ft = dev.upload(&fused, &[b, t, 3, h, d]).unwrap();
    let strides = [t * 3 * h * d, 3 * h * d, d, 1];
    let shape = [b, t, h, d];
    let qv = ft.strided(0, &shape, &strides).unwrap();
    let kv = ft.strided(h * d, &shape, &strides).unwrap();
    let vv = ft.strided(2 * h * d, &shape, &strides).unwrap();
    let dp = d + 8;
    let mut ot: Tensor<T> = dev.poisoned(&[b, t, h, dp]).unwrap();
    let mut lt: Tensor<f32> = dev.poisoned(&[b, h, t + 3]).unwrap();
    {
        let mut ov = ot.strided_mut(0, &shape, &[t * h * dp, h * dp, dp, 1]).unwrap();
        let mut lv = lt.strided_mut(0, &[b, h, t], &[h * (t + 3), t + 3, 1]).unwrap();
        attention_into(
            dev,
            &AttnArgs { q: qv.clone(), k: kv.clone(), v: vv.clone(), opts: c.opts() },
            &mut ov,
            &mut lv,
            None,
        )
        .unwrap();
    }
    let pick = |which: usize| -> Vec<T> {
        let mut out = Vec::with_capacity(b * t * h * d);
        for bi in 0..b {
            for ti in 0..t {
                let base = ((bi * t + ti) * 3 + which) * h * d;
                out.extend_from_slice(&fused[base..base + h * d]);
            }
        }
        out
    };
    let (q, k, v) = (pick(0), pick(1), pick(2));
    let o_all = ot.to_vec().unwrap();
    let l_all = lt.to_vec().unwrap();
    let mut o = Vec::with_capacity(b * t * h * d);
    for row in o_all.chunks(dp) {
        o.extend_from_slice(&row[..d]);
        assert!(row[d..].iter().all(|x| DType::to_f32(*x).is_nan()), "o padding was written");
    }
    let mut lse = Vec::with_capacity(b * h * t);
    for row in l_all.chunks(t + 3) {
        lse.extend_from_slice(&row[..t]);
        assert!(row[t..].iter().all(|x| x.is_nan()), "lse padding was written");
    }
    compare(&format!("fused {} {c:?} (seed {s})", <T as DType>::NAME), &c, &q, &k, &v, &o, &lse);
}

#[test]
fn strided_views_into_a_fused_qkv_buffer() {
    let s = seed();
    for (dev, _) in backends() {
        for d in DIMS {
            for causal in [false, true] {
                check_fused::<f16>(&dev, 2, 70, 3, d, causal, s);
                check_fused::<bf16>(&dev, 2, 70, 3, d, causal, s);
                check_fused::<f32>(&dev, 2, 70, 3, d, causal, s);
            }
        }
    }
}

/// Split-KV (Flash-Decoding): the heuristic splits decode shapes, forced splits
/// (more than there are K blocks too: empty splits) match tf-ref and the unsplit
/// kernel; causal rows that see no key still give o = 0, lse = +inf.
fn split_kv_case<T: DType + Element>(dev: &Device, c: Case, s: u64) {
    let whole = check_splits::<T>(dev, c, s, Some(1));
    for n in [None, Some(2), Some(3), Some(7), Some(40)] {
        let split = check_splits::<T>(dev, c, s, n);
        let num: f64 = whole.iter().zip(&split).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = whole.iter().map(|a| (*a as f64).powi(2)).sum();
        let rel = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
        assert!(
            rel <= tolerance::<T>(),
            "{} {c:?} splits {n:?}: differs from unsplit by {rel:.2e}",
            <T as DType>::NAME
        );
    }
}

/// Every head dim and split count at decode, chunked-prefill and short shapes
/// (the longest test of this file: one test per mask, so the two run side by side).
fn split_kv_matches_reference_and_unsplit(causal: bool) {
    let s = seed();
    for (dev, _) in backends() {
        for d in DIMS {
            for (t_q, t_k) in [(1, 1000), (3, 333), (130, 300), (1, 10), (200, 20)] {
                let c = Case::new(1, t_q, t_k, 2, d, causal).gen(Gen::FallingWithJ);
                split_kv_case::<f16>(&dev, c, s);
                split_kv_case::<bf16>(&dev, c, s);
            }
            // Partial lse values near 1e3: the combine must shift before exp.
            let c = Case::new(1, 2, 500, 1, d, causal).gen(Gen::FallingWithJ).scale(40.0);
            split_kv_case::<bf16>(&dev, c, s);
        }
    }
}

#[test]
fn split_kv_matches_reference_and_unsplit_full() {
    split_kv_matches_reference_and_unsplit(false);
}

#[test]
fn split_kv_matches_reference_and_unsplit_causal() {
    split_kv_matches_reference_and_unsplit(true);
}

#[test]
fn split_kv_heuristic_and_limits() {
    let dev = Device::emulator();
    let plan_for = |t_q: usize, t_k: usize| {
        let q: Tensor<bf16> = dev.zeros(&[1, t_q, 16, 64]).unwrap();
        let k: Tensor<bf16> = dev.zeros(&[1, t_k, 16, 64]).unwrap();
        let mut o: Tensor<bf16> = dev.zeros(&[1, t_q, 16, 64]).unwrap();
        let mut l: Tensor<f32> = dev.zeros(&[1, 16, t_q]).unwrap();
        let p = plan(
            &dev,
            &AttnArgs { q: q.view(), k: k.view(), v: k.view(), opts: AttnOptions::default() },
            &o.view_mut(),
            &l.view_mut(),
        );
        p.unwrap().num_splits
    };
    // Decode against 8K keys: 16 blocks on a 132-SM device get split.
    assert!(plan_for(1, 8192) > 1);
    // A long prefill fills the device: no split.
    assert_eq!(plan_for(4096, 4096), 1);
    // No keys: nothing to split.
    assert_eq!(plan_for(1, 0), 1);

    let q: Tensor<f16> = dev.zeros(&[1, 1, 2, 64]).unwrap();
    let mut o: Tensor<f16> = dev.zeros(&[1, 1, 2, 64]).unwrap();
    let mut l: Tensor<f32> = dev.zeros(&[1, 2, 1]).unwrap();
    for bad in [0, 129] {
        let r = attention_into(
            &dev,
            &AttnArgs {
                q: q.view(),
                k: q.view(),
                v: q.view(),
                opts: AttnOptions { num_splits: Some(bad), ..AttnOptions::default() },
            },
            &mut o.view_mut(),
            &mut l.view_mut(),
            None,
        );
        expect_err(&format!("{bad} splits"), r, |e| matches!(e, Error::InvalidArgument { .. }));
    }
    let q32: Tensor<f32> = dev.zeros(&[1, 1, 2, 64]).unwrap();
    let mut o32: Tensor<f32> = dev.zeros(&[1, 1, 2, 64]).unwrap();
    let r = attention_into(
        &dev,
        &AttnArgs {
            q: q32.view(),
            k: q32.view(),
            v: q32.view(),
            opts: AttnOptions { num_splits: Some(2), ..AttnOptions::default() },
        },
        &mut o32.view_mut(),
        &mut l.view_mut(),
        None,
    );
    expect_err("f32 split-KV", r, |e| matches!(e, Error::InvalidArgument { .. }));
}

/// The kernels are deterministic and rely on no implicit warp lockstep: forward,
/// reverse and shuffled lane orders give bit-identical outputs.
#[test]
fn lane_orders_give_identical_bits() {
    let s = seed();
    let c = Case::new(1, 130, 100, 2, 80, true);
    let (q, k, v) = inputs::<bf16>(&c, &mut c.rng(s));
    let mut results = Vec::new();
    for order in [LaneOrder::Forward, LaneOrder::Reverse, LaneOrder::Shuffled] {
        let dev = Device::emulator_with(EmuOptions { lane_order: order, seed: s, os_threads: 0, ..Default::default() });
        let qt = dev.upload(&q, &[1, 130, 2, 80]).unwrap();
        let kt = dev.upload(&k, &[1, 100, 2, 80]).unwrap();
        let vt = dev.upload(&v, &[1, 100, 2, 80]).unwrap();
        let (o, l) = attention(&dev, &AttnArgs { q: qt.view(), k: kt.view(), v: vt.view(), opts: c.opts() }).unwrap();
        let bits: Vec<u16> = o.to_vec().unwrap().iter().map(|x| x.to_bits()).collect();
        let lbits: Vec<u32> = l.to_vec().unwrap().iter().map(|x| x.to_bits()).collect();
        results.push((bits, lbits));
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]), "lane order changed the result (seed {s})");
}

/// `attention` (allocating) and `attention_into` (poisoned outputs) agree bit for bit.
#[test]
fn allocating_and_into_forms_agree() {
    let s = seed();
    for (dev, _) in backends() {
        let c = Case::new(2, 33, 47, 2, 64, true);
        let (q, k, v) = inputs::<f16>(&c, &mut c.rng(s));
        let qt = dev.upload(&q, &[2, 33, 2, 64]).unwrap();
        let kt = dev.upload(&k, &[2, 47, 2, 64]).unwrap();
        let vt = dev.upload(&v, &[2, 47, 2, 64]).unwrap();
        let (o1, l1) = attention(&dev, &AttnArgs { q: qt.view(), k: kt.view(), v: vt.view(), opts: c.opts() }).unwrap();
        let mut o2: Tensor<f16> = dev.poisoned(&[2, 33, 2, 64]).unwrap();
        let mut l2: Tensor<f32> = dev.poisoned(&[2, 2, 33]).unwrap();
        attention_into(
            &dev,
            &AttnArgs { q: qt.view(), k: kt.view(), v: vt.view(), opts: c.opts() },
            &mut o2.view_mut(),
            &mut l2.view_mut(),
            None,
        )
        .unwrap();
        let (a, b) = (o1.to_vec().unwrap(), o2.to_vec().unwrap());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        let (a, b) = (l1.to_vec().unwrap(), l2.to_vec().unwrap());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        compare("allocating", &c, &q, &k, &v, &o1.to_vec().unwrap(), &l1.to_vec().unwrap());
    }
}

fn expect_err<R>(what: &str, r: tf_host::Result<R>, ok: impl Fn(&Error) -> bool) {
    match r {
        Ok(_) => panic!("{what}: expected an error, got Ok"),
        Err(e) => {
            assert!(ok(&e), "{what}: wrong error: {e:?}");
            eprintln!("  {what}: {e}");
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Device::emulator();
    let h16 = |shape: &[usize]| -> Tensor<f16> {
        dev.upload(&vec![f16::from_f32(0.5); shape.iter().product()], shape).unwrap()
    };
    let opts = AttnOptions::default();
    let is_shape = |e: &Error| matches!(e, Error::Shape { .. });
    let is_align = |e: &Error| matches!(e, Error::Alignment { .. });
    let is_arg = |e: &Error| matches!(e, Error::InvalidArgument { .. });

    // Head dimension 72: no kernel (16-bit and f32).
    let q = h16(&[1, 4, 1, 72]);
    expect_err("head dim 72", attention(&dev, &AttnArgs { q: q.view(), k: q.view(), v: q.view(), opts }), |e| {
        is_arg(e) && e.to_string().contains("72")
    });
    let q32: Tensor<f32> = dev.upload(&[0.5f32; 4 * 72], &[1, 4, 1, 72]).unwrap();
    expect_err(
        "f32 head dim 72",
        attention(&dev, &AttnArgs { q: q32.view(), k: q32.view(), v: q32.view(), opts }),
        is_arg,
    );

    // Mismatched shapes.
    let q = h16(&[1, 4, 2, 64]);
    let k = h16(&[1, 5, 2, 64]);
    let v = h16(&[1, 6, 2, 64]);
    expect_err(
        "k and v lengths differ",
        attention(&dev, &AttnArgs { q: q.view(), k: k.view(), v: v.view(), opts }),
        is_shape,
    );
    let k2 = h16(&[1, 5, 2, 80]);
    expect_err(
        "q and k head dims differ",
        attention(&dev, &AttnArgs { q: q.view(), k: k2.view(), v: k2.view(), opts }),
        is_shape,
    );
    let k3 = h16(&[2, 5, 2, 64]);
    expect_err(
        "q and k batches differ",
        attention(&dev, &AttnArgs { q: q.view(), k: k3.view(), v: k3.view(), opts }),
        is_shape,
    );
    let q3 = h16(&[4, 2, 64]);
    expect_err("3-D q", attention(&dev, &AttnArgs { q: q3.view(), k: k.view(), v: k.view(), opts }), is_shape);
    let mut o_bad: Tensor<f16> = dev.poisoned(&[1, 4, 2, 80]).unwrap();
    let mut l_ok: Tensor<f32> = dev.poisoned(&[1, 2, 4]).unwrap();
    expect_err(
        "o shape",
        attention_into(
            &dev,
            &AttnArgs { q: q.view(), k: k.view(), v: k.view(), opts },
            &mut o_bad.view_mut(),
            &mut l_ok.view_mut(),
            None,
        ),
        is_shape,
    );
    let mut o_ok: Tensor<f16> = dev.poisoned(&[1, 4, 2, 64]).unwrap();
    let mut l_bad: Tensor<f32> = dev.poisoned(&[1, 4, 2]).unwrap();
    expect_err(
        "lse shape [B, T, H] instead of [B, H, T]",
        attention_into(
            &dev,
            &AttnArgs { q: q.view(), k: k.view(), v: k.view(), opts },
            &mut o_ok.view_mut(),
            &mut l_bad.view_mut(),
            None,
        ),
        is_shape,
    );

    // Misaligned 16-bit views: a head stride of 68 elements, an offset of 4.
    let wide = h16(&[1, 4, 2, 68]);
    let qv = wide.strided(0, &[1, 4, 2, 64], &[4 * 2 * 68, 2 * 68, 68, 1]).unwrap();
    expect_err(
        "head stride 68",
        attention(&dev, &AttnArgs { q: qv.clone(), k: qv.clone(), v: qv.clone(), opts }),
        is_align,
    );
    let qv = wide.strided(4, &[1, 4, 2, 64], &[4 * 2 * 68, 2 * 68, 64, 1]).unwrap();
    expect_err(
        "offset 4 elements",
        attention(&dev, &AttnArgs { q: qv.clone(), k: k.view(), v: k.view(), opts }),
        |e| is_align(e) || is_shape(e),
    );
    let qv = wide.strided(4, &[1, 4, 1, 64], &[4 * 2 * 68, 2 * 68, 68, 1]).unwrap();
    let kv = wide.strided(0, &[1, 4, 1, 64], &[4 * 2 * 68, 2 * 68, 68, 1]).unwrap();
    expect_err(
        "offset 4 elements, else aligned",
        attention(&dev, &AttnArgs { q: qv.clone(), k: kv.clone(), v: kv.clone(), opts }),
        is_align,
    );
    // f32 has no 16-byte rule: the same layout works.
    let wide32: Tensor<f32> = dev.upload(&vec![0.25f32; 4 * 2 * 68], &[1, 4, 2, 68]).unwrap();
    let qv = wide32.strided(4, &[1, 4, 1, 64], &[4 * 2 * 68, 2 * 68, 68, 1]).unwrap();
    attention(&dev, &AttnArgs { q: qv.clone(), k: qv.clone(), v: qv.clone(), opts }).expect("f32 with odd strides");

    // Head dimension not contiguous.
    let dbl = h16(&[1, 4, 2, 128]);
    let qv = dbl.strided(0, &[1, 4, 2, 64], &[4 * 2 * 128, 2 * 128, 128, 2]).unwrap();
    expect_err(
        "head dim stride 2",
        attention(&dev, &AttnArgs { q: qv.clone(), k: qv.clone(), v: qv.clone(), opts }),
        is_shape,
    );

    // An output that overlaps itself.
    let mut o_small: Tensor<f16> = dev.poisoned(&[1, 4, 1, 128]).unwrap();
    {
        let mut ov = o_small.strided_mut(0, &[1, 4, 2, 64], &[512, 128, 32, 1]).unwrap();
        expect_err(
            "overlapping o",
            attention_into(
                &dev,
                &AttnArgs { q: q.view(), k: q.view(), v: q.view(), opts },
                &mut ov,
                &mut l_ok.view_mut(),
                None,
            ),
            is_shape,
        );
    }

    // Scales.
    for bad in [0.0f32, -0.125, f32::NAN, f32::INFINITY] {
        let o = AttnOptions { scale: Some(bad), ..Default::default() };
        expect_err(
            &format!("scale {bad}"),
            attention(&dev, &AttnArgs { q: q.view(), k: q.view(), v: q.view(), opts: o }),
            is_arg,
        );
    }

    // Grid limits: B > 65535.
    let big = h16(&[65536, 1, 1, 64]);
    expect_err("B = 65536", attention(&dev, &AttnArgs { q: big.view(), k: big.view(), v: big.view(), opts }), |e| {
        matches!(e, Error::SizeOverflow { .. })
    });

    // Tensors of another device.
    let other = Device::emulator();
    let qo: Tensor<f16> = other.upload(&vec![f16::from_f32(0.5); 4 * 2 * 64], &[1, 4, 2, 64]).unwrap();
    expect_err("another device", attention(&dev, &AttnArgs { q: qo.view(), k: q.view(), v: q.view(), opts }), |e| {
        matches!(e, Error::DeviceMismatch { .. })
    });
}

/// Empty batches, heads or query rows launch nothing and succeed.
#[test]
fn empty_shapes_are_no_ops() {
    let dev = Device::emulator();
    for shape in [[0, 4, 2, 64], [1, 0, 2, 64], [1, 4, 0, 64]] {
        let q: Tensor<bf16> = dev.zeros(&shape).unwrap();
        let (o, l) =
            attention(&dev, &AttnArgs { q: q.view(), k: q.view(), v: q.view(), opts: AttnOptions::default() }).unwrap();
        assert_eq!(o.shape(), &shape);
        assert_eq!(l.shape(), &[shape[0], shape[2], shape[1]]);
    }
}

// ------------------------------------------------------------ non-finite inputs
//
// Semantics (tf-ref's, which the kernels follow): the causal mask REMOVES a key from
// the rows that cannot see it, before anything is computed from it. So a NaN or inf in
// q row i poisons row i; in k or v row j only the rows that see key j (causal: rows
// i >= j - (T_k - T_q)); a NaN score or a +inf one gives a NaN row (softmax), a -inf
// score weight 0, a row whose visible scores are all -inf NaN (0/0), and a v column
// with NaN or inf gives NaN or ±inf in that column of the rows that see it. This is
// PyTorch's boolean-mask definition for q and k (masked_fill of the scores with -inf
// before the softmax), and for v the one that keeps causal attention causal: with P·V
// taken over all keys, a NaN in the value of a LATER token would reach earlier
// outputs through 0·NaN, which no causal model can mean, and a prefill would then
// disagree with the same tokens decoded one at a time from a KV cache.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Which {
    Q,
    K,
    V,
}

/// One NaN / ±inf in q, k or v (batch 0, head 0) at the given row and column; o and
/// lse against tf-ref: the same elements non-finite (+inf lse exactly for rows that
/// see no key), the finite part within tolerance. For NaN the number of poisoned
/// outputs is also checked against the rules above. Outputs are pre-filled with a
/// finite sentinel, so an element the kernel does not write cannot pass as NaN.
fn attn_non_finite<T: DType + Element>(
    dev: &Device,
    c: Case,
    s: u64,
    splits: Option<usize>,
    at: [(Which, usize, usize); 3],
) {
    let (q0, k0, v0) = inputs::<T>(&c, &mut c.rng(s));
    let tol = tolerance::<T>();
    for (which, row, col) in at {
        for val in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let (mut q, mut k, mut v) = (q0.clone(), k0.clone(), v0.clone());
            let idx = row * c.h * c.d + col; // batch 0, head 0
            match which {
                Which::Q => q[idx] = T::from_f32(val),
                Which::K => k[idx] = T::from_f32(val),
                Which::V => v[idx] = T::from_f32(val),
            }
            let what =
                format!("{} {c:?} splits {splits:?}: {val} in {which:?}[{row}, {col}] (seed {s})", <T as DType>::NAME);
            let qt = dev.upload(&q, &[c.b, c.t_q, c.h, c.d]).unwrap();
            let kt = dev.upload(&k, &[c.b, c.t_k, c.h, c.d]).unwrap();
            let vt = dev.upload(&v, &[c.b, c.t_k, c.h, c.d]).unwrap();
            let mut ot: Tensor<T> = dev.upload(&vec![T::from_f32(7777.0); q.len()], &[c.b, c.t_q, c.h, c.d]).unwrap();
            let mut lt: Tensor<f32> = dev.upload(&vec![7777.0f32; c.b * c.h * c.t_q], &[c.b, c.h, c.t_q]).unwrap();
            let (mut ov, mut lv) = (ot.view_mut(), lt.view_mut());
            attention_into(
                dev,
                &AttnArgs {
                    q: qt.view(),
                    k: kt.view(),
                    v: vt.view(),
                    opts: AttnOptions { num_splits: splits, ..c.opts() },
                },
                &mut ov,
                &mut lv,
                None,
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            let o: Vec<f32> = ot.to_vec().unwrap().iter().map(|x| DType::to_f32(*x)).collect();
            let lse = lt.to_vec().unwrap();
            let r = tf_ref::attention(
                Tensor4Ref::new(&q, [c.b, c.t_q, c.h, c.d]).unwrap(),
                Tensor4Ref::new(&k, [c.b, c.t_k, c.h, c.d]).unwrap(),
                Tensor4Ref::new(&v, [c.b, c.t_k, c.h, c.d]).unwrap(),
                c.causal,
                c.scale.map(f64::from),
            )
            .unwrap();
            let (mut num, mut den, mut bad) = (0f64, 0f64, 0usize);
            for (i, (&g, &w)) in o.iter().zip(&r.o).enumerate() {
                assert_eq!(g.is_finite(), w.is_finite(), "{what}: o[{i}] got {g}, want {w}");
                if w.is_finite() {
                    num += (f64::from(g) - w).powi(2);
                    den += w * w;
                } else {
                    bad += 1;
                }
            }
            let rel = (num / den).sqrt();
            assert!(rel <= tol, "{what}: finite part of o off by {rel:.3e}");
            for (i, (&g, &w)) in lse.iter().zip(&r.lse).enumerate() {
                if w.is_finite() {
                    assert!(
                        (f64::from(g) - w).abs() <= 8.0 * tol * w.abs().max(1.0),
                        "{what}: lse[{i}] got {g}, want {w}"
                    );
                } else {
                    assert!(g.is_nan() && w.is_nan() || f64::from(g) == w, "{what}: lse[{i}] got {g}, want {w}");
                }
            }
            if val.is_nan() {
                // rows of head 0 that see key j: causal i >= j - (t_k - t_q)
                let seeing = |j: usize| -> usize {
                    if c.causal {
                        (0..c.t_q).filter(|&i| i as i64 + c.t_k as i64 - c.t_q as i64 >= j as i64).count()
                    } else {
                        c.t_q
                    }
                };
                let want_bad = match which {
                    Which::Q => c.d,
                    Which::K => seeing(row) * c.d,
                    Which::V => seeing(row),
                };
                assert_eq!(bad, want_bad, "{what}: non-finite outputs");
            }
        }
    }
}

/// q[0, 2] = -inf against keys whose column 2 is positive: every score of the row is
/// -inf; split-KV (2 splits) must give o = NaN and lse = NaN, as tf-ref.
fn attn_all_minus_inf(dev: &Device, c: Case, s: u64, k: Vec<f16>) {
    let (mut q, _, v) = inputs::<f16>(&c, &mut c.rng(s));
    q[2] = f16::NEG_INFINITY;
    let qt = dev.upload(&q, &[c.b, c.t_q, c.h, c.d]).unwrap();
    let kt = dev.upload(&k, &[c.b, c.t_k, c.h, c.d]).unwrap();
    let vt = dev.upload(&v, &[c.b, c.t_k, c.h, c.d]).unwrap();
    let mut ot: Tensor<f16> = dev.upload(&vec![f16::from_f32(7777.0); q.len()], &[c.b, c.t_q, c.h, c.d]).unwrap();
    let mut lt: Tensor<f32> = dev.upload(&[7777.0f32], &[1, 1, 1]).unwrap();
    let (mut ov, mut lv) = (ot.view_mut(), lt.view_mut());
    attention_into(
        dev,
        &AttnArgs { q: qt.view(), k: kt.view(), v: vt.view(), opts: AttnOptions { num_splits: Some(2), ..c.opts() } },
        &mut ov,
        &mut lv,
        None,
    )
    .unwrap();
    let r = tf_ref::attention(
        Tensor4Ref::new(&q, [c.b, c.t_q, c.h, c.d]).unwrap(),
        Tensor4Ref::new(&k, [c.b, c.t_k, c.h, c.d]).unwrap(),
        Tensor4Ref::new(&v, [c.b, c.t_k, c.h, c.d]).unwrap(),
        c.causal,
        None,
    )
    .unwrap();
    assert!(r.o.iter().all(|x| x.is_nan()) && r.lse[0].is_nan(), "tf-ref: all -inf scores give NaN");
    assert!(ot.to_vec().unwrap().iter().all(|x| x.to_f32().is_nan()), "split-KV o of an all -inf row");
    assert!(lt.to_vec().unwrap()[0].is_nan(), "split-KV lse of an all -inf row");
}

#[test]
fn nan_and_inf_inputs_reach_only_the_rows_that_see_them() {
    let s = seed();
    for (dev, _) in backends() {
        // hd 80: the recomputation's lanes cover 80 = 2·32 + 16 columns
        for d in [64, 80, 128] {
            // 70 x 70 causal: key 50 lies in a K block that crosses the diagonal (rows
            // 0..49 must not see it), key 66 in the ragged last block; query 69 is the
            // last row. Non-causal: everything reaches every row.
            for causal in [true, false] {
                let c = Case::new(1, 70, 70, 2, d, causal);
                let at = [(Which::Q, 69, d - 1), (Which::K, 50, 3), (Which::V, 66, d - 1)];
                let at2 = [(Which::Q, 5, 0), (Which::K, 66, d - 1), (Which::V, 50, 7)];
                attn_non_finite::<f16>(&dev, c, s, Some(1), at);
                attn_non_finite::<bf16>(&dev, c, s, Some(1), at2);
                attn_non_finite::<f32>(&dev, c, s, Some(1), if causal { at } else { at2 });
                // split-KV (2 splits) over the same rows: each split's partials too
                attn_non_finite::<f16>(&dev, c, s, Some(2), at2);
            }
            // causal T_q > T_k: query 0 sees no key and keeps o = 0, lse = +inf whatever
            // key 0 holds; the others see key 0
            let c = Case::new(1, 17, 16, 2, d, true);
            let at = [(Which::Q, 16, 1), (Which::K, 0, 5), (Which::V, 0, d - 1)];
            attn_non_finite::<f16>(&dev, c, s, Some(1), at);
            attn_non_finite::<f32>(&dev, c, s, Some(1), at);
            // causal T_q = T_k: query 0 sees only key 0; -inf in q[0, col] with
            // k[0, col] > 0 makes its only score -inf: softmax 0/0 = NaN, not an empty row
            let c = Case::new(1, 20, 20, 1, d, true);
            let k0 = inputs::<bf16>(&c, &mut c.rng(s)).1;
            let col = (0..d).find(|&x| k0[x].to_f32() > 0.0).unwrap();
            let at = [(Which::Q, 0, col), (Which::K, 19, 0), (Which::V, 19, 1)];
            attn_non_finite::<bf16>(&dev, c, s, Some(1), at);
            attn_non_finite::<f32>(&dev, c, s, Some(1), at);
            // the same through split-KV: one query against 70 keys whose scores are all
            // -inf (q[0, col] = -inf, k[j, col] > 0 for every j): every split has weight
            // 0, and the combine must give NaN, not an empty row
            let c = Case::new(1, 1, 70, 1, d, true);
            let (_, mut kk, _) = inputs::<f16>(&c, &mut c.rng(s));
            for j in 0..70 {
                kk[j * d + 2] = f16::from_f32(kk[j * d + 2].to_f32().abs() + 0.01);
            }
            attn_all_minus_inf(&dev, c, s, kk);
            // decode against a cache, split-KV (3 splits): the combine carries NaN
            let c = Case::new(1, 1, 200, 2, d, true);
            let at = [(Which::Q, 0, 1), (Which::K, 150, d - 1), (Which::V, 199, 2)];
            attn_non_finite::<bf16>(&dev, c, s, Some(3), at);
            attn_non_finite::<f16>(&dev, c, s, Some(3), at);
        }
    }
}

/// Calls of at most 16 query rows (f16 / bf16) run the decode kernels
/// (attention_decode.cu: 16-row tiles, the warps splitting the keys): t_q from 1
/// to 16 against key counts with every kind of tail (one key, a block and a half,
/// exactly a block, many blocks), causal and not (t_q > t_k: rows that see no key),
/// whole and split over the keys; a NaN in v behind the causal mask (the recompute
/// pass); and the launch profiles name the kernel on either side of 16 rows.
#[test]
fn decode_kernel_for_up_to_16_query_rows() {
    let s = seed();
    for (dev, _) in backends() {
        for d in DIMS {
            for causal in [false, true] {
                for (t_q, t_k) in [(2, 2), (5, 77), (8, 64), (9, 129), (15, 15), (16, 300), (16, 10)] {
                    let c = Case::new(1, t_q, t_k, 2, d, causal);
                    check_all_dtypes(&dev, c, s);
                    check_splits::<bf16>(&dev, c, s, Some(3));
                }
            }
            // key 66 is seen by rows 5..8 of 9 only (t_k - t_q = 61)
            let c = Case::new(1, 9, 70, 2, d, true);
            let at = [(Which::Q, 8, d - 1), (Which::K, 30, 3), (Which::V, 66, d - 1)];
            attn_non_finite::<f16>(&dev, c, s, Some(1), at);
            attn_non_finite::<bf16>(&dev, c, s, Some(2), at);
        }
    }
    let dev = Device::emulator_with(EmuOptions { checks: Checks::PROFILE, ..Default::default() });
    for (t_q, want) in [(1, "attn_decode_bf16_hd64"), (16, "attn_decode_bf16_hd64"), (17, "attn_fwd_bf16_hd64")] {
        let c = Case::new(1, t_q, 100, 2, 64, true);
        check_splits::<bf16>(&dev, c, s, Some(1));
        let ran: Vec<String> = dev.take_profiles().into_iter().map(|p| p.kernel).collect();
        assert!(ran.iter().any(|k| k == want), "t_q {t_q}: {want} not in {ran:?}");
    }
}
