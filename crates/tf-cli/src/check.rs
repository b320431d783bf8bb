//! `tokenformer check`: every kernel against tf-ref (f64) on every available
//! backend, on fresh random inputs (the seed is printed), outputs poisoned with
//! NaN before each run. Tolerances (relative Frobenius error) are docs/design.md's
//! per kernel: f32 1e-5, f16 2e-3, bf16 1e-2; growth copies are exact up to the
//! rounding of the Philox normals; the whole tiny model, where some 30 kernels
//! chain, gets f32 1e-4 and bf16 2e-2.

use std::process::ExitCode;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tf_host::ops::block::{add_assign, embedding_into, layer_norm_into, rotary_into, LayerNormArgs, RotaryArgs};
use tf_host::{
    attention_into, bf16, f16, grow_batch, linear_into, pattention_into, AttnArgs, AttnOptions, DType, Device,
    GrowInit, GrowItem, ModelParams, Norm, PattentionArgs, PattentionOptions, Tokenformer, TokenformerConfig,
};
use tf_ref::{Element, MatRef, Tensor4Ref};

use crate::util::{bar, device, outln, s, seed_or_fresh, CliResult};
use crate::{CheckArgs, DeviceArg};

/// Kernel output and the reference, both flattened.
type Cmp = (Vec<f32>, Vec<f64>);

/// The body of one check.
type CheckFn = Box<dyn Fn(&Device, &mut StdRng) -> CliResult<Cmp>>;

/// One row of the table.
struct Outcome {
    backend: &'static str,
    kernel: &'static str,
    dtype: &'static str,
    case: String,
    result: Result<(f64, f64), String>,
    tol: f64,
    secs: f64,
}

impl Outcome {
    fn ok(&self) -> bool {
        matches!(self.result, Ok((rel, _)) if rel <= self.tol)
    }
}

/// Relative Frobenius error and max abs error; an error if a value is not
/// finite where the reference is, or the lengths differ.
fn compare(got: &[f32], want: &[f64]) -> Result<(f64, f64), String> {
    if got.len() != want.len() {
        return Err(format!("{} values, reference {}", got.len(), want.len()));
    }
    let (mut num, mut den, mut max_abs) = (0f64, 0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        if !g.is_finite() {
            return Err(format!("element {i} is {g} (reference {w}): not written, or overflow"));
        }
        let d = g - w;
        num += d * d;
        den += w * w;
        max_abs = max_abs.max(d.abs());
    }
    Ok((if den > 0.0 { (num / den).sqrt() } else { num.sqrt() }, max_abs))
}

fn tol<T: DType>() -> f64 {
    match T::NAME {
        "f32" => 1e-5,
        "f16" => 2e-3,
        _ => 1e-2,
    }
}

fn rand_vec<T: DType>(rng: &mut StdRng, n: usize, scale: f32) -> Vec<T> {
    (0..n).map(|_| T::from_f32(rng.random_range(-scale..=scale))).collect()
}

fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

fn f32s<T: DType>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

fn ref_norm(n: Norm) -> tf_ref::Norm {
    match n {
        Norm::L2NormGelu => tf_ref::Norm::L2NormGelu,
        Norm::GeluL2Norm => tf_ref::Norm::GeluL2Norm,
        Norm::Softmax => tf_ref::Norm::Softmax,
    }
}

#[allow(clippy::too_many_arguments)]
fn pattention_case<T: DType + Element>(
    dev: &Device,
    rng: &mut StdRng,
    t: usize,
    n: usize,
    d_in: usize,
    d_out: usize,
    norm: Norm,
    n_ref: Option<usize>,
) -> CliResult<Cmp> {
    let x: Vec<T> = rand_vec(rng, t * d_in, 1.0);
    let k: Vec<T> = rand_vec(rng, n * d_in, 0.5);
    let v: Vec<T> = rand_vec(rng, n * d_out, 1.0);
    let (xt, kt, vt) = (
        dev.upload(&x, &[t, d_in]).map_err(s)?,
        dev.upload(&k, &[n, d_in]).map_err(s)?,
        dev.upload(&v, &[n, d_out]).map_err(s)?,
    );
    let mut y = dev.poisoned::<T>(&[t, d_out]).map_err(s)?;
    let opts = PattentionOptions { norm, n_ref, eps: 0.0 };
    pattention_into(
        dev,
        &PattentionArgs { x: xt.view(), k_p: kt.view(), v_p: vt.view(), opts },
        &mut y.view_mut(),
        None,
    )
    .map_err(s)?;
    let want = tf_ref::pattention(
        MatRef::new(&x, t, d_in).map_err(s)?,
        MatRef::new(&k, n, d_in).map_err(s)?,
        MatRef::new(&v, n, d_out).map_err(s)?,
        &tf_ref::PattentionOpts { norm: ref_norm(norm), n_ref, eps: 0.0 },
    )
    .map_err(s)?;
    Ok((f32s(&y.to_vec().map_err(s)?), want.data))
}

fn attention_case<T: DType + Element>(
    dev: &Device,
    rng: &mut StdRng,
    t_q: usize,
    t_k: usize,
    h: usize,
    d: usize,
    causal: bool,
) -> CliResult<Cmp> {
    let q: Vec<T> = rand_vec(rng, t_q * h * d, 1.0);
    let k: Vec<T> = rand_vec(rng, t_k * h * d, 1.0);
    let v: Vec<T> = rand_vec(rng, t_k * h * d, 1.0);
    let (qt, kt, vt) = (
        dev.upload(&q, &[1, t_q, h, d]).map_err(s)?,
        dev.upload(&k, &[1, t_k, h, d]).map_err(s)?,
        dev.upload(&v, &[1, t_k, h, d]).map_err(s)?,
    );
    let mut o = dev.poisoned::<T>(&[1, t_q, h, d]).map_err(s)?;
    let mut lse = dev.poisoned::<f32>(&[1, h, t_q]).map_err(s)?;
    let scale = 1.0 / (d as f64).sqrt();
    let opts = AttnOptions { causal, scale: Some(scale as f32), num_splits: None };
    attention_into(
        dev,
        &AttnArgs { q: qt.view(), k: kt.view(), v: vt.view(), opts },
        &mut o.view_mut(),
        &mut lse.view_mut(),
        None,
    )
    .map_err(s)?;
    let want = tf_ref::attention(
        Tensor4Ref::new(&q, [1, t_q, h, d]).map_err(s)?,
        Tensor4Ref::new(&k, [1, t_k, h, d]).map_err(s)?,
        Tensor4Ref::new(&v, [1, t_k, h, d]).map_err(s)?,
        causal,
        Some(scale),
    )
    .map_err(s)?;
    Ok((f32s(&o.to_vec().map_err(s)?), want.o))
}

fn grow_case<T: DType + Element>(
    dev: &Device,
    rng: &mut StdRng,
    rows_old: usize,
    rows_new: usize,
    cols: usize,
    normal: bool,
) -> CliResult<Cmp> {
    let old: Vec<T> = rand_vec(rng, rows_old * cols, 1.0);
    let src = dev.upload(&old, &[rows_old, cols]).map_err(s)?;
    let mut dst = dev.poisoned::<T>(&[rows_new, cols]).map_err(s)?;
    let seed: u64 = rng.random();
    let (init, rinit) = if normal {
        (GrowInit::Normal { std: 0.02, seed }, tf_ref::Init::Normal { std: 0.02, seed })
    } else {
        (GrowInit::Zeros, tf_ref::Init::Zeros)
    };
    grow_batch(dev, vec![GrowItem { src: Some(src.view()), dst: dst.view_mut(), rows_old, init }]).map_err(s)?;
    let want = tf_ref::grow(MatRef::new(&old, rows_old, cols).map_err(s)?, rows_new, &rinit).map_err(s)?;
    let got = dst.to_vec().map_err(s)?;
    // The kept rows must be bit-for-bit copies.
    let kept = rows_old * cols;
    if let Some(i) = (0..kept).find(|&i| got[i].to_f32().to_bits() != old[i].to_f32().to_bits()) {
        return Err(format!("kept element {i} changed: {} -> {}", old[i].to_f32(), got[i].to_f32()));
    }
    Ok((f32s(&got), f64s(&want)))
}

fn linear_case<T: DType + Element>(
    dev: &Device,
    rng: &mut StdRng,
    t: usize,
    d_in: usize,
    d_out: usize,
) -> CliResult<Cmp> {
    let x: Vec<T> = rand_vec(rng, t * d_in, 1.0);
    let w: Vec<T> = rand_vec(rng, d_out * d_in, 1.0);
    let (xt, wt) = (dev.upload(&x, &[t, d_in]).map_err(s)?, dev.upload(&w, &[d_out, d_in]).map_err(s)?);
    let mut y = dev.poisoned::<T>(&[t, d_out]).map_err(s)?;
    linear_into(dev, &xt.view(), &wt.view(), &mut y.view_mut()).map_err(s)?;
    let want =
        tf_ref::linear(MatRef::new(&x, t, d_in).map_err(s)?, MatRef::new(&w, d_out, d_in).map_err(s)?).map_err(s)?;
    Ok((f32s(&y.to_vec().map_err(s)?), want.data))
}

fn layer_norm_case<T: DType + Element>(
    dev: &Device,
    rng: &mut StdRng,
    t: usize,
    d: usize,
    affine: bool,
) -> CliResult<Cmp> {
    let x: Vec<T> = rand_vec(rng, t * d, 2.0);
    let w: Vec<T> = (0..d).map(|_| T::from_f32(rng.random_range(0.5..1.5))).collect();
    let b: Vec<T> = rand_vec(rng, d, 0.2);
    let xt = dev.upload(&x, &[t, d]).map_err(s)?;
    let (wt, bt) = (dev.upload(&w, &[d]).map_err(s)?, dev.upload(&b, &[d]).map_err(s)?);
    let mut y = dev.poisoned::<T>(&[t, d]).map_err(s)?;
    let (wv, bv) = (wt.view(), bt.view());
    let (wo, bo) = if affine { (Some(&wv), Some(&bv)) } else { (None, None) };
    layer_norm_into(
        dev,
        &LayerNormArgs { x: xt.view(), weight: wo.cloned(), bias: bo.cloned(), eps: 1e-5 },
        &mut y.view_mut(),
    )
    .map_err(s)?;
    let (w64, b64) = (f64s(&w), f64s(&b));
    let (wr, br) = if affine { (Some(&w64[..]), Some(&b64[..])) } else { (None, None) };
    let want = tf_ref::layer_norm(MatRef::new(&x, t, d).map_err(s)?, wr, br, 1e-5).map_err(s)?;
    Ok((f32s(&y.to_vec().map_err(s)?), want.data))
}

fn rotary_case<T: DType + Element>(
    dev: &Device,
    rng: &mut StdRng,
    t: usize,
    heads: usize,
    hd: usize,
    pos: usize,
) -> CliResult<Cmp> {
    let x: Vec<T> = rand_vec(rng, t * heads * hd, 1.0);
    let mut xt = dev.upload(&x, &[t, heads * hd]).map_err(s)?;
    let rot = tf_ref::rotary_dims(hd, 0.25).map_err(s)?;
    rotary_into(
        dev,
        &mut xt.view_mut(),
        &RotaryArgs { heads, head_dim: hd, rot_dim: rot, base: 10000.0, pos_offset: pos },
    )
    .map_err(s)?;
    let want = tf_ref::rotary(MatRef::new(&x, t, heads * hd).map_err(s)?, heads, hd, 0.25, 10000.0, pos).map_err(s)?;
    Ok((f32s(&xt.to_vec().map_err(s)?), want.data))
}

fn add_case<T: DType + Element>(dev: &Device, rng: &mut StdRng, t: usize, d: usize) -> CliResult<Cmp> {
    let y0: Vec<T> = rand_vec(rng, t * d, 1.0);
    let x: Vec<T> = rand_vec(rng, t * d, 1.0);
    let mut yt = dev.upload(&y0, &[t, d]).map_err(s)?;
    let xt = dev.upload(&x, &[t, d]).map_err(s)?;
    add_assign(dev, &mut yt.view_mut(), &xt.view()).map_err(s)?;
    let want = y0.iter().zip(&x).map(|(a, b)| a.to_f64() + b.to_f64()).collect();
    Ok((f32s(&yt.to_vec().map_err(s)?), want))
}

fn embedding_case<T: DType + Element>(
    dev: &Device,
    rng: &mut StdRng,
    vocab: usize,
    d: usize,
    t: usize,
) -> CliResult<Cmp> {
    let table: Vec<T> = rand_vec(rng, vocab * d, 1.0);
    let tokens: Vec<u32> = (0..t).map(|_| rng.random_range(0..vocab as u32)).collect();
    let tt = dev.upload(&table, &[vocab, d]).map_err(s)?;
    let mut y = dev.poisoned::<T>(&[t, d]).map_err(s)?;
    embedding_into(dev, &tt.view(), &tokens, &mut y.view_mut()).map_err(s)?;
    let want = tokens.iter().flat_map(|&i| f64s(&table[i as usize * d..(i as usize + 1) * d])).collect();
    Ok((f32s(&y.to_vec().map_err(s)?), want))
}

/// The tiny model's logits against `tf_ref::model_forward` with the same
/// parameters (rounded to `T`).
fn model_case<T: DType + Element>(dev: &Device, rng: &mut StdRng, t: usize) -> CliResult<Cmp> {
    let cfg = TokenformerConfig::by_name("tiny").map_err(s)?;
    let mut p = ModelParams::init(&cfg, rng.random()).map_err(s)?;
    let r = |v: &mut Vec<f64>| v.iter_mut().for_each(|x| *x = T::from_f64(*x).to_f64());
    r(&mut p.embedding);
    for b in &mut p.blocks {
        for slot in tf_ref::Slot::ALL {
            let (k, v) = b.tokens_mut(slot);
            r(k);
            r(v);
        }
    }
    let tokens: Vec<u32> = (0..t).map(|_| rng.random_range(0..cfg.vocab as u32)).collect();
    let m = Tokenformer::<T>::from_params(dev, &cfg, &p).map_err(s)?;
    let got = m.forward(&tokens).and_then(|l| l.to_vec()).map_err(s)?;
    let want = tf_ref::model_forward(&cfg, &p, &tokens).map_err(s)?;
    Ok((f32s(&got), want.data))
}

/// One check: its labels, tolerance and body.
struct Case {
    kernel: &'static str,
    dtype: &'static str,
    case: String,
    tol: f64,
    run: CheckFn,
}

fn case(
    kernel: &'static str,
    dtype: &'static str,
    case: String,
    tol: f64,
    run: impl Fn(&Device, &mut StdRng) -> CliResult<Cmp> + 'static,
) -> Case {
    Case { kernel, dtype, case, tol, run: Box::new(run) }
}

/// The per-dtype cases of every kernel family.
fn cases_for<T: DType + Element>() -> Vec<Case> {
    let dt = <T as DType>::NAME;
    let tl = tol::<T>();
    let mut v = Vec::new();
    // Pattention: three norms; t = 37 (the 16-bit decode path) and 97 (tiled);
    // n = 70 (not a tile multiple); d_in 64 -> d_out 40; and a pinned n_ref.
    for norm in Norm::ALL {
        for t in [37, 97] {
            v.push(case("pattention", dt, format!("{} t{t} n70 64->40", norm.name()), tl, move |d, r| {
                pattention_case::<T>(d, r, t, 70, 64, 40, norm, None)
            }));
        }
    }
    v.push(case("pattention", dt, "l2_norm_gelu t37 n70 n_ref=48".into(), tl, |d, r| {
        pattention_case::<T>(d, r, 37, 70, 64, 40, Norm::L2NormGelu, Some(48))
    }));
    // Attention: causal and not, head dims 64 and 96, a decode row against a cache.
    for (hd, causal) in [(64, true), (64, false), (96, true)] {
        let label = format!("t45 h2 hd{hd} {}", if causal { "causal" } else { "full" });
        v.push(case("attention", dt, label, tl, move |d, r| attention_case::<T>(d, r, 45, 45, 2, hd, causal)));
    }
    v.push(case("attention", dt, "decode tq1 tk77 h2 hd64 causal".into(), tl, |d, r| {
        attention_case::<T>(d, r, 1, 77, 2, 64, true)
    }));
    // Growth: kept rows bit-exact, new rows zeros or Philox normals.
    let gtol = if dt == "f32" { 1e-6 } else { 4e-3 };
    for normal in [false, true] {
        let label = format!("37->70 rows x 48 {}", if normal { "normal" } else { "zeros" });
        v.push(case("grow", dt, label, gtol, move |d, r| grow_case::<T>(d, r, 37, 70, 48, normal)));
    }
    v.push(case("linear", dt, "t37 64->50".into(), tl, |d, r| linear_case::<T>(d, r, 37, 64, 50)));
    for affine in [false, true] {
        let label = format!("t37 d64 {}", if affine { "affine" } else { "no affine" });
        v.push(case("layer_norm", dt, label, tl, move |d, r| layer_norm_case::<T>(d, r, 37, 64, affine)));
    }
    v.push(case("rotary", dt, "t37 h2 hd64 rot16 pos5".into(), tl, |d, r| rotary_case::<T>(d, r, 37, 2, 64, 5)));
    v.push(case("add", dt, "t37 d64".into(), tl, |d, r| add_case::<T>(d, r, 37, 64)));
    v.push(case("embedding", dt, "vocab100 d64 t37".into(), 0.0, |d, r| embedding_case::<T>(d, r, 100, 64, 37)));
    v
}

/// Every case: the kernels in f32, f16 and bf16, and the tiny model in f32 and bf16.
fn all_cases() -> Vec<Case> {
    let mut v = cases_for::<f32>();
    v.extend(cases_for::<f16>());
    v.extend(cases_for::<bf16>());
    v.push(case("model", "f32", "tiny forward t11".into(), 1e-4, |d, r| model_case::<f32>(d, r, 11)));
    v.push(case("model", "bf16", "tiny forward t11".into(), 2e-2, |d, r| model_case::<bf16>(d, r, 11)));
    v
}

/// The backends: the emulator and/or CUDA (when usable), with why CUDA is skipped.
fn backends(arg: DeviceArg) -> CliResult<Vec<(Device, &'static str)>> {
    let mut v = Vec::new();
    if arg != DeviceArg::Cuda {
        v.push((Device::emulator(), "emulator"));
    }
    if arg != DeviceArg::Emulator {
        match device(DeviceArg::Cuda) {
            Ok((d, _)) => v.push((d, "cuda")),
            Err(e) if arg == DeviceArg::Cuda => return Err(e),
            Err(e) => outln!("CUDA skipped: {}", e.trim_start_matches("--device cuda: ")),
        }
    }
    Ok(v)
}

/// Runs the checks and prints the table; non-zero exit on any failure.
pub fn run(args: &CheckArgs) -> CliResult<ExitCode> {
    let seed = seed_or_fresh(args.seed);
    outln!("check: every kernel against tf-ref (f64), seed {seed} (replay with --seed {seed})");
    let backends = backends(args.device)?;
    let cases = all_cases();
    let pb = bar((cases.len() * backends.len()) as u64, "checking");
    let mut rows = Vec::new();
    for (dev, backend) in &backends {
        let mut rng = StdRng::seed_from_u64(seed);
        for c in &cases {
            pb.set_message(format!("{backend} {} {}", c.kernel, c.dtype));
            let start = Instant::now();
            let result = (c.run)(dev, &mut rng).and_then(|(got, want)| compare(&got, &want));
            rows.push(Outcome {
                backend,
                kernel: c.kernel,
                dtype: c.dtype,
                case: c.case.clone(),
                result,
                tol: c.tol,
                secs: start.elapsed().as_secs_f64(),
            });
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    outln!(
        "{:<9} {:<11} {:<5} {:<34} {:>9} {:>9} {:>8} {:>7}  result",
        "backend",
        "kernel",
        "dtype",
        "case",
        "rel err",
        "max abs",
        "tol",
        "time s"
    );
    for r in &rows {
        let (rel, abs, note) = match &r.result {
            Ok((rel, abs)) => (format!("{rel:.2e}"), format!("{abs:.2e}"), String::new()),
            Err(e) => ("-".into(), "-".into(), format!(": {e}")),
        };
        outln!(
            "{:<9} {:<11} {:<5} {:<34} {:>9} {:>9} {:>8.0e} {:>7.2}  {}{note}",
            r.backend,
            r.kernel,
            r.dtype,
            r.case,
            rel,
            abs,
            r.tol,
            r.secs,
            if r.ok() { "ok" } else { "FAIL" }
        );
    }
    let failed = rows.iter().filter(|r| !r.ok()).count();
    if failed == 0 {
        outln!("check: all {} checks ok", rows.len());
        Ok(ExitCode::SUCCESS)
    } else {
        outln!("check: {failed} of {} checks FAILED", rows.len());
        Ok(ExitCode::FAILURE)
    }
}
