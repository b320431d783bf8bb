//! Pattention backward (kernels/pattention_backward.cu through tf-host) against
//! tf-ref's f64 gradients (`tf_ref::pattention_backward`, itself checked by
//! finite differences): every norm × dtype, pinned n_ref and eps, tails in every
//! dimension, rows at numerical edges, non-finite inputs, workspace reuse and
//! bad input. For f32 storage the device computes in f32 throughout, so the bound
//! is f32's. For f16 / bf16 it rounds S and dA to the storage type before the
//! tensor-core products that use them, as mixed-precision training does: the
//! bound is then the larger of the storage type's fixed tolerance and twice the
//! error of a CPU model (f64) that rounds the same two matrices.

mod common;

use common::{assert_close, backends, rand_vec, seed};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tf_host::{
    bf16, f16, pattention_backward, pattention_backward_kept, pattention_backward_workspace_bytes, pattention_into,
    pattention_keeping_into, Checks, DType, Device, EmuOptions, Error, Norm, PattentionArgs, PattentionGrads,
    PattentionOptions, Profile, Tensor, Workspace,
};
use tf_ref::{Element, MatRef};

/// Relative Frobenius error allowed against f64: f32 arithmetic throughout.
const RTOL: f64 = 2e-5;
/// The fixed tolerances of 16-bit storage (docs/design.md).
const RTOL_F16: f64 = 2e-3;
const RTOL_BF16: f64 = 1e-2;

struct Problem<T> {
    x: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    dy: Vec<T>,
    t: usize,
    n: usize,
    d_in: usize,
    d_out: usize,
}

fn problem<T: DType>(rng: &mut StdRng, t: usize, n: usize, d_in: usize, d_out: usize) -> Problem<T> {
    let ks = 2.0 / (d_in.max(1) as f32).sqrt();
    Problem {
        x: rand_vec::<T>(rng, t * d_in, 1.0),
        k: rand_vec::<T>(rng, n * d_in, ks),
        v: rand_vec::<T>(rng, n * d_out, 1.0),
        dy: rand_vec::<T>(rng, t * d_out, 1.0),
        t,
        n,
        d_in,
        d_out,
    }
}

fn ref_opts(o: &PattentionOptions) -> tf_ref::PattentionOpts {
    let norm = match o.norm {
        Norm::L2NormGelu => tf_ref::Norm::L2NormGelu,
        Norm::GeluL2Norm => tf_ref::Norm::GeluL2Norm,
        Norm::Softmax => tf_ref::Norm::Softmax,
    };
    tf_ref::PattentionOpts { norm, n_ref: o.n_ref, eps: f64::from(o.eps) }
}

/// tf-ref's (dX, dK_P, dV_P).
fn reference<T: DType + Element>(p: &Problem<T>, o: &PattentionOptions) -> [Vec<f64>; 3] {
    let g = tf_ref::pattention_backward(
        MatRef::new(&p.x, p.t, p.d_in).unwrap(),
        MatRef::new(&p.k, p.n, p.d_in).unwrap(),
        MatRef::new(&p.v, p.n, p.d_out).unwrap(),
        MatRef::new(&p.dy, p.t, p.d_out).unwrap(),
        &ref_opts(o),
    )
    .unwrap();
    [g.dx.data, g.dk_p.data, g.dv_p.data]
}

/// The 16-bit device path's model in f64: A, dS, S = Θ(A) and dA exactly, S
/// and dA rounded to T, then (dX, dK_P, dV_P) = (dA·K_P, dAᵀ·X, Sᵀ·dY).
fn rounded_model<T: DType + Element>(p: &Problem<T>, o: &PattentionOptions) -> [Vec<f64>; 3] {
    let (t, n, d_in, d_out) = (p.t, p.n, p.d_in, p.d_out);
    let f = |v: &[T]| v.iter().map(|e| e.to_f64()).collect::<Vec<f64>>();
    let (x, k, v, dy) = (f(&p.x), f(&p.k), f(&p.v), f(&p.dy));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
    let (mut a, mut ds) = (vec![0f64; t * n], vec![0f64; t * n]);
    for i in 0..t {
        for j in 0..n {
            a[i * n + j] = dot(&x[i * d_in..][..d_in], &k[j * d_in..][..d_in]);
            ds[i * n + j] = dot(&dy[i * d_out..][..d_out], &v[j * d_out..][..d_out]);
        }
    }
    let opts = ref_opts(o);
    let round = |m: tf_ref::Mat| m.data.iter().map(|&e| <T as Element>::from_f64(e).to_f64()).collect::<Vec<f64>>();
    let s = round(tf_ref::pattention_norm(MatRef::new(&a, t, n).unwrap(), &opts).unwrap());
    let da = round(
        tf_ref::pattention_norm_backward(MatRef::new(&a, t, n).unwrap(), MatRef::new(&ds, t, n).unwrap(), &opts)
            .unwrap(),
    );
    let (mut dx, mut dk, mut dv) = (vec![0f64; t * d_in], vec![0f64; n * d_in], vec![0f64; n * d_out]);
    for i in 0..t {
        for j in 0..n {
            for c in 0..d_in {
                dx[i * d_in + c] += da[i * n + j] * k[j * d_in + c];
                dk[j * d_in + c] += da[i * n + j] * x[i * d_in + c];
            }
            for c in 0..d_out {
                dv[j * d_out + c] += s[i * n + j] * dy[i * d_out + c];
            }
        }
    }
    [dx, dk, dv]
}

/// Relative Frobenius error of `got` against `want` (0 for a zero `want` equal to it).
fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    if num == 0.0 {
        0.0
    } else {
        (num / den).sqrt()
    }
}

/// Where the backward takes A from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scores {
    /// Recomputed (`pattention_backward`).
    Recomputed,
    /// Kept by the forward (`pattention_keeping_into`, then
    /// `pattention_backward_kept`); the forward's output is checked against
    /// `pattention_into`'s, bit for bit.
    Kept,
}

fn grads<T: DType>(
    dev: &Device,
    p: &Problem<T>,
    o: &PattentionOptions,
    ws: Option<&mut Workspace>,
    scores: Scores,
) -> Result<PattentionGrads, Error> {
    let x = dev.upload(&p.x, &[p.t, p.d_in])?;
    let k = dev.upload(&p.k, &[p.n, p.d_in])?;
    let v = dev.upload(&p.v, &[p.n, p.d_out])?;
    let dy = dev.upload(&p.dy, &[p.t, p.d_out])?;
    let args = PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: *o };
    if scores == Scores::Recomputed {
        return pattention_backward(dev, &args, &dy.view(), ws);
    }
    let mut y = dev.upload(&poison::<T>(p.t * p.d_out), &[p.t, p.d_out])?;
    let kept = pattention_keeping_into(dev, &args, &mut y.view_mut(), None)?;
    let mut y_plain = dev.upload(&poison::<T>(p.t * p.d_out), &[p.t, p.d_out])?;
    pattention_into(dev, &args, &mut y_plain.view_mut(), None)?;
    let bits = |t: &Tensor<T>| t.to_vec().unwrap().iter().map(|e| e.to_f32().to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&y), bits(&y_plain), "keeping the scores changed the forward's output");
    pattention_backward_kept(dev, &args, &kept, &dy.view(), ws)
}

/// NaN in every element.
fn poison<T: DType>(len: usize) -> Vec<T> {
    vec![T::from_f32(f32::NAN); len]
}

fn host(t: &Tensor<f32>) -> Vec<f32> {
    t.to_vec().unwrap()
}

/// Checks the three gradients against tf-ref; returns the worst relative error.
fn check<T: DType + Element>(dev: &Device, what: &str, p: &Problem<T>, o: &PattentionOptions) -> f64 {
    check_within(dev, what, p, o, RTOL)
}

/// For `l2_norm_gelu` both ways of getting A (recomputed, kept) are checked.
fn check_within<T: DType + Element>(dev: &Device, what: &str, p: &Problem<T>, o: &PattentionOptions, rtol: f64) -> f64 {
    let modes: &[Scores] =
        if o.norm == Norm::L2NormGelu { &[Scores::Recomputed, Scores::Kept] } else { &[Scores::Recomputed] };
    let want = reference(p, o);
    let mut worst = 0f64;
    for &mode in modes {
        worst = worst.max(check_mode(dev, &format!("{what} {mode:?}"), p, o, rtol, &want, mode));
    }
    worst
}

fn check_mode<T: DType + Element>(
    dev: &Device,
    what: &str,
    p: &Problem<T>,
    o: &PattentionOptions,
    rtol: f64,
    want: &[Vec<f64>; 3],
    mode: Scores,
) -> f64 {
    let g = grads(dev, p, o, None, mode).unwrap();
    let what = format!(
        "{what} {} {:?} n_ref {:?} eps {} [t {}, n {}, d_in {}, d_out {}]",
        <T as DType>::NAME,
        o.norm,
        o.n_ref,
        o.eps,
        p.t,
        p.n,
        p.d_in,
        p.d_out
    );
    // 16-bit: the larger of the fixed tolerance and 2x the rounded model's error
    let model = match <T as DType>::NAME {
        "f16" | "bf16" => Some(rounded_model(p, o)),
        _ => None,
    };
    let fixed = if <T as DType>::NAME == "f16" { RTOL_F16 } else { RTOL_BF16 };
    let mut worst = 0f64;
    for (i, (name, got)) in [("dX", &g.dx), ("dK_P", &g.dk_p), ("dV_P", &g.dv_p)].into_iter().enumerate() {
        let bound = match &model {
            Some(m) => fixed.max(2.0 * rel_err(&m[i], &want[i])),
            None => rtol,
        };
        let (rel, _) = assert_close(&format!("{what} {name}"), &host(got), &want[i], bound);
        worst = worst.max(rel);
    }
    worst
}

/// t = 1, 17 and 33 (partial 16-row gemm tiles), n = 1 / 70 / 129 / 300 (one
/// column, partial tiles, more than a block's 256 threads per row), d_in and
/// d_out of 8, 24 and 40 (16-bit rows need multiples of 8).
#[test]
fn gradients_match_tf_ref_for_every_norm_and_dtype() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0xb0_0001);
        let mut worst = [0f64; 3];
        for (t, n, d_in, d_out) in [(1, 70, 24, 8), (17, 129, 8, 40), (33, 1, 40, 24), (17, 300, 24, 24)] {
            let pf = problem::<f32>(&mut rng, t, n, d_in, d_out);
            let ph = problem::<f16>(&mut rng, t, n, d_in, d_out);
            let pb = problem::<bf16>(&mut rng, t, n, d_in, d_out);
            for norm in Norm::ALL {
                let o = PattentionOptions { norm, ..Default::default() };
                worst[0] = worst[0].max(check(&dev, backend, &pf, &o));
                worst[1] = worst[1].max(check(&dev, backend, &ph, &o));
                worst[2] = worst[2].max(check(&dev, backend, &pb, &o));
            }
        }
        eprintln!("{backend}: worst relative error f32 {:.2e}, f16 {:.2e}, bf16 {:.2e}", worst[0], worst[1], worst[2]);
    }
}

/// Row lengths on each side of the norm backward's register caches (a row of
/// n <= 256·k held k elements a thread, k = 4, 8, 16, 32; longer rows read from
/// memory on every pass): n = 1024, 1025, 2049, 4097, 8192, 8193, every norm,
/// f32 and bf16.
#[test]
fn norm_backward_row_lengths_across_its_register_caches() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0xb0_0007);
        for n in [1024, 1025, 2049, 4097, 8192, 8193] {
            let pf = problem::<f32>(&mut rng, 3, n, 8, 16);
            let pb = problem::<bf16>(&mut rng, 3, n, 8, 16);
            for norm in Norm::ALL {
                let o = PattentionOptions { norm, ..Default::default() };
                check(&dev, &format!("{backend} n {n}"), &pf, &o);
                check(&dev, &format!("{backend} n {n}"), &pb, &o);
            }
        }
    }
}

/// Shapes that give the 16-bit path's tensor-core products several full
/// 128 x 128 tiles and sums of 5 to 9 k-steps of 32 (past the 4-stage ring),
/// with a partial last tile in every dimension: t = 264, n = 136, d_in = 136,
/// d_out = 200.
#[test]
fn tensor_core_products_over_many_k_tiles() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0xb0_0006);
        let (t, n, d_in, d_out) = (264, 136, 136, 200);
        let ph = problem::<f16>(&mut rng, t, n, d_in, d_out);
        let pb = problem::<bf16>(&mut rng, t, n, d_in, d_out);
        for norm in [Norm::L2NormGelu, Norm::Softmax] {
            let o = PattentionOptions { norm, ..Default::default() };
            check(&dev, backend, &ph, &o);
            check(&dev, backend, &pb, &o);
        }
    }
}

#[test]
fn pinned_n_ref_and_eps() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0xb0_0002);
        let p = problem::<f32>(&mut rng, 9, 70, 16, 24);
        let q = problem::<bf16>(&mut rng, 9, 70, 16, 24);
        for norm in Norm::ALL {
            for (n_ref, eps) in [(Some(50), 0.0), (Some(1000), 1e-5), (None, 0.25)] {
                let o = PattentionOptions { norm, n_ref, eps };
                check(&dev, backend, &p, &o);
                check(&dev, backend, &q, &o);
            }
        }
    }
}

/// A zero row of x (the forward's all-zero row: dA = 0 for the L2 norms without
/// eps), rows ×1e-4 and ×1e4 and, in f32, ×1e15 (its squares would overflow f32
/// and c / (D·r) would underflow it without the scale-free form). For the L2
/// norms Θ is scale-invariant, so these rows are as well conditioned as any.
/// Softmax is not: a saturated row's dA is a cancellation to about 0 that x's
/// scale then multiplies into dK_P, so its rows are scaled by 1e-4 and by 60
/// (scores past 88, where exp overflows f32 without the max subtracted), and its
/// bound is 5·RTOL (measured: up to 2.1e-5 from the ×60 row).
#[test]
fn rows_at_numerical_edges() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0xb0_0003);
        let (t, n, d_in, d_out) = (6, 70, 16, 8);
        let base_f = problem::<f32>(&mut rng, t, n, d_in, d_out);
        let base_b = problem::<bf16>(&mut rng, t, n, d_in, d_out);
        for norm in Norm::ALL {
            let scales: &[(usize, f32)] = if norm == Norm::Softmax {
                &[(0, 0.0), (1, 60.0), (2, 1e-4)]
            } else {
                &[(0, 0.0), (1, 1e4), (2, 1e-4), (3, 1e15)]
            };
            let mut p = Problem {
                x: base_f.x.clone(),
                k: base_f.k.clone(),
                v: base_f.v.clone(),
                dy: base_f.dy.clone(),
                ..base_f
            };
            let mut q = Problem {
                x: base_b.x.clone(),
                k: base_b.k.clone(),
                v: base_b.v.clone(),
                dy: base_b.dy.clone(),
                ..base_b
            };
            for &(r, f) in scales {
                for c in 0..d_in {
                    p.x[r * d_in + c] *= f;
                    if f < 1e10 {
                        q.x[r * d_in + c] = bf16::from_f32(q.x[r * d_in + c].to_f32() * f);
                    }
                }
            }
            let rtol = if norm == Norm::Softmax { 5.0 * RTOL } else { RTOL };
            for eps in [0.0, 1e-3] {
                let o = PattentionOptions { norm, eps, ..Default::default() };
                check_within(&dev, backend, &p, &o, rtol);
                check_within(&dev, backend, &q, &o, rtol);
            }
        }
    }
}

/// A NaN or ±inf in x or in dy: the non-finite elements of every gradient are
/// where tf-ref has them (assert_close compares them exactly), the rest within
/// the bound.
#[test]
fn non_finite_inputs() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0xb0_0004);
        let (t, n, d_in, d_out) = (5, 40, 8, 8);
        let base = problem::<f32>(&mut rng, t, n, d_in, d_out);
        for norm in Norm::ALL {
            let o = PattentionOptions { norm, ..Default::default() };
            for val in [f32::NAN, f32::INFINITY] {
                let mut p =
                    Problem { x: base.x.clone(), dy: base.dy.clone(), k: base.k.clone(), v: base.v.clone(), ..base };
                p.dy[3 * d_out + 5] = val;
                check(&dev, &format!("{backend} dy {val}"), &p, &o);
                let mut p =
                    Problem { x: base.x.clone(), dy: base.dy.clone(), k: base.k.clone(), v: base.v.clone(), ..base };
                p.x[2 * d_in + 7] = f32::NAN;
                check(&dev, &format!("{backend} x NaN"), &p, &o);
            }
        }
    }
}

#[test]
fn one_workspace_serves_many_calls_and_results_repeat() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0xb0_0005);
        let shapes = [(17, 129, 24, 8), (3, 300, 8, 40)];
        let big = shapes.iter().map(|&(t, n, _, _)| pattention_backward_workspace_bytes(t, n).unwrap()).max();
        let mut ws = Workspace::new(&dev, big.unwrap()).unwrap();
        for (t, n, d_in, d_out) in shapes {
            let p = problem::<f16>(&mut rng, t, n, d_in, d_out);
            let o = PattentionOptions::default();
            for mode in [Scores::Recomputed, Scores::Kept] {
                let a = grads(&dev, &p, &o, Some(&mut ws), mode).unwrap();
                let b = grads(&dev, &p, &o, Some(&mut ws), mode).unwrap();
                for (x, y) in [(&a.dx, &b.dx), (&a.dk_p, &b.dk_p), (&a.dv_p, &b.dv_p)] {
                    let (x, y): (Vec<u32>, Vec<u32>) =
                        (host(x).iter().map(|v| v.to_bits()).collect(), host(y).iter().map(|v| v.to_bits()).collect());
                    assert_eq!(x, y, "{backend} {mode:?}: two runs differ");
                }
                let want = reference(&p, &o);
                assert_close(&format!("{backend} {mode:?} reused workspace dX"), &host(&a.dx), &want[0], RTOL_F16);
            }
        }
    }
}

/// t = 0: dX is empty, dK_P and dV_P are zeros (nothing flows back).
#[test]
fn no_tokens_gives_zero_parameter_gradients() {
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(seed() ^ 0xb0_0006);
        let p = problem::<bf16>(&mut rng, 0, 20, 8, 16);
        for mode in [Scores::Recomputed, Scores::Kept] {
            let g = grads(&dev, &p, &PattentionOptions::default(), None, mode).unwrap();
            assert_eq!(g.dx.shape(), &[0, 8], "{backend} {mode:?}");
            assert!(host(&g.dk_p).iter().all(|&v| v == 0.0) && g.dk_p.shape() == [20, 8], "{backend} {mode:?}");
            assert!(host(&g.dv_p).iter().all(|&v| v == 0.0) && g.dv_p.shape() == [20, 16], "{backend} {mode:?}");
        }
    }
}

#[test]
fn bad_inputs_return_errors() {
    let dev = Device::emulator();
    let mut rng = StdRng::seed_from_u64(seed() ^ 0xb0_0007);
    let p = problem::<f32>(&mut rng, 4, 10, 8, 8);
    let (x, k, v) =
        (dev.upload(&p.x, &[4, 8]).unwrap(), dev.upload(&p.k, &[10, 8]).unwrap(), dev.upload(&p.v, &[10, 8]).unwrap());
    let args = PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: Default::default() };
    let wrong_dy = dev.upload(&p.dy[..24], &[3, 8]).unwrap();
    let e = pattention_backward(&dev, &args, &wrong_dy.view(), None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("dy"), "{e}");
    let k7 = dev.upload(&p.k[..70], &[10, 7]).unwrap();
    let bad = PattentionArgs { k_p: k7.view(), ..args.clone() };
    let dy = dev.upload(&p.dy, &[4, 8]).unwrap();
    let e = pattention_backward(&dev, &bad, &dy.view(), None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("d_in"), "{e}");
    let bad = PattentionArgs { opts: PattentionOptions { n_ref: Some(0), ..Default::default() }, ..args.clone() };
    assert!(matches!(pattention_backward(&dev, &bad, &dy.view(), None), Err(Error::InvalidArgument { .. })));
    let need = pattention_backward_workspace_bytes(4, 10).unwrap();
    let mut small = Workspace::new(&dev, need - 1).unwrap();
    let e = pattention_backward(&dev, &args, &dy.view(), Some(&mut small)).unwrap_err();
    assert!(e.to_string().contains(&need.to_string()), "{e}");
    let other = Device::emulator();
    let dy_other = other.upload(&p.dy, &[4, 8]).unwrap();
    assert!(matches!(pattention_backward(&dev, &args, &dy_other.view(), None), Err(Error::DeviceMismatch { .. })));
}

/// What keeping the scores saves, counted by the emulator's profiler (bf16,
/// the tiled forward): the forward moves the same bytes in the same launches;
/// the kept backward runs exactly the recomputing one's launches but the first
/// (the product A = X·K_Pᵀ), so its mma count drops by that product's, and it
/// moves fewer bytes (it reads A in 16 bits where the other writes and reads
/// it in f32).
#[test]
fn kept_scores_skip_the_product_and_move_fewer_bytes() {
    let dev = Device::emulator_with(EmuOptions { checks: Checks::PROFILE, ..Default::default() });
    let mut rng = StdRng::seed_from_u64(seed() ^ 0xb0_0009);
    let (t, n, d) = (130, 300, 64);
    let p = problem::<bf16>(&mut rng, t, n, d, d);
    let up = |v: &[bf16], shape: &[usize]| dev.upload(v, shape).unwrap();
    let (x, k, v, dy) = (up(&p.x, &[t, d]), up(&p.k, &[n, d]), up(&p.v, &[n, d]), up(&p.dy, &[t, d]));
    let args = PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: Default::default() };
    let mut y = dev.zeros::<bf16>(&[t, d]).unwrap();
    let bytes = |p: &[Profile]| p.iter().map(Profile::global_sector_bytes).sum::<u64>();
    let names = |p: &[Profile]| p.iter().map(|q| q.kernel.clone()).collect::<Vec<_>>();
    let _ = dev.take_profiles();
    pattention_into(&dev, &args, &mut y.view_mut(), None).unwrap();
    let fwd = dev.take_profiles();
    let kept = pattention_keeping_into(&dev, &args, &mut y.view_mut(), None).unwrap();
    let fwd_kept = dev.take_profiles();
    assert_eq!(names(&fwd), names(&fwd_kept));
    assert_eq!(bytes(&fwd), bytes(&fwd_kept), "the keeping forward's bytes");
    pattention_backward(&dev, &args, &dy.view(), None).unwrap();
    let bwd = dev.take_profiles();
    pattention_backward_kept(&dev, &args, &kept, &dy.view(), None).unwrap();
    let bwd_kept = dev.take_profiles();
    assert!(bwd[0].kernel.starts_with("gemm_tc") && bwd[0].mma > 0, "{:?}", names(&bwd));
    assert_eq!(names(&bwd)[1..], names(&bwd_kept)[..], "the kept backward's launches");
    let mma = |p: &[Profile]| p.iter().map(|q| q.mma).sum::<u64>();
    assert_eq!(mma(&bwd) - bwd[0].mma, mma(&bwd_kept));
    let (b, bk) = (bytes(&bwd), bytes(&bwd_kept));
    assert!(bk < b, "bytes: recomputing {b}, kept {bk}");
    eprintln!(
        "t {t}, n {n}, d {d}: mma {} -> {}, sector bytes {b} -> {bk} ({:.1} -> {:.1} per t·n element)",
        mma(&bwd),
        mma(&bwd_kept),
        b as f64 / (t * n) as f64,
        bk as f64 / (t * n) as f64
    );
}

/// The decode path's split scores (16-bit, t <= 64, few n-tiles and a long
/// d_in: product 1 split over d_in, the slices summed by
/// pattention_scores_reduce) write the scores the kept backward reads: the
/// plan is checked to split, then both ways of getting A against tf-ref.
#[test]
fn kept_scores_from_the_split_decode_path() {
    let s = seed();
    for (dev, backend) in backends() {
        let mut rng = StdRng::seed_from_u64(s ^ 0xb0_000a);
        let (t, n, d_in, d_out) = (5, 200, 136, 16);
        let p = problem::<bf16>(&mut rng, t, n, d_in, d_out);
        let up = |v: &[bf16], shape: &[usize]| dev.upload(v, shape).unwrap();
        let (x, k, v) = (up(&p.x, &[t, d_in]), up(&p.k, &[n, d_in]), up(&p.v, &[n, d_out]));
        let args = PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: Default::default() };
        let mut y = dev.zeros::<bf16>(&[t, d_out]).unwrap();
        let plan = tf_host::ops::pattention::plan(&dev, &args, &y.view_mut(), None).unwrap();
        assert!(plan.k_splits > 1, "{backend}: {plan:?}");
        let ph = problem::<f16>(&mut rng, t, n, d_in, d_out);
        check(&dev, backend, &p, &PattentionOptions::default());
        check(&dev, backend, &ph, &PattentionOptions::default());
    }
}

/// Keeping the scores: refused for the other norms and for d_out = 0; the kept
/// backward refuses scores of another shape, norm or device.
#[test]
fn kept_scores_bad_inputs_return_errors() {
    let dev = Device::emulator();
    let mut rng = StdRng::seed_from_u64(seed() ^ 0xb0_0008);
    let p = problem::<bf16>(&mut rng, 4, 10, 8, 8);
    let up = |d: &Device, v: &[bf16], shape: &[usize]| d.upload(v, shape).unwrap();
    let (x, k, v, dy) =
        (up(&dev, &p.x, &[4, 8]), up(&dev, &p.k, &[10, 8]), up(&dev, &p.v, &[10, 8]), up(&dev, &p.dy, &[4, 8]));
    let args = PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: Default::default() };
    let mut y = dev.zeros::<bf16>(&[4, 8]).unwrap();
    for norm in [Norm::GeluL2Norm, Norm::Softmax] {
        let bad = PattentionArgs { opts: PattentionOptions { norm, ..Default::default() }, ..args.clone() };
        let e = pattention_keeping_into(&dev, &bad, &mut y.view_mut(), None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("l2_norm_gelu"), "{e}");
    }
    let v0 = dev.zeros::<bf16>(&[10, 0]).unwrap();
    let mut y0 = dev.zeros::<bf16>(&[4, 0]).unwrap();
    let e = pattention_keeping_into(&dev, &PattentionArgs { v_p: v0.view(), ..args.clone() }, &mut y0.view_mut(), None)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("d_out = 0"), "{e}");

    let kept = pattention_keeping_into(&dev, &args, &mut y.view_mut(), None).unwrap();
    assert_eq!(kept.shape(), (4, 10));
    // another t: the first three rows of x and dy
    let (x3, dy3) = (up(&dev, &p.x[..24], &[3, 8]), up(&dev, &p.dy[..24], &[3, 8]));
    let short = PattentionArgs { x: x3.view(), ..args.clone() };
    let e = pattention_backward_kept(&dev, &short, &kept, &dy3.view(), None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("kept"), "{e}");
    let softmax =
        PattentionArgs { opts: PattentionOptions { norm: Norm::Softmax, ..Default::default() }, ..args.clone() };
    let e = pattention_backward_kept(&dev, &softmax, &kept, &dy.view(), None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let other = Device::emulator();
    let (xo, ko, vo, dyo) =
        (up(&other, &p.x, &[4, 8]), up(&other, &p.k, &[10, 8]), up(&other, &p.v, &[10, 8]), up(&other, &p.dy, &[4, 8]));
    let args_other = PattentionArgs { x: xo.view(), k_p: ko.view(), v_p: vo.view(), opts: Default::default() };
    let e = pattention_backward_kept(&other, &args_other, &kept, &dyo.view(), None).unwrap_err();
    assert!(matches!(e, Error::DeviceMismatch { .. }), "{e}");
    // the right call works
    assert!(pattention_backward_kept(&dev, &args, &kept, &dy.view(), None).is_ok());
}
