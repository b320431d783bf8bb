//! `tokenformer profile`: one op at one shape on the emulator with its memory
//! profiler on, and per kernel launch the memory table (global requests, sectors,
//! coalescing; shared bank-conflict wavefronts; mma, ldmatrix, cp.async, barrier
//! counts), then the source lines with the most wasted sectors and the most
//! conflicts. Emulator counts, not GPU timings.

use std::process::ExitCode;

use rand::{Rng, SeedableRng};
use tf_host::ops::block::{add_assign, embedding_into, layer_norm_into, rotary_into, LayerNormArgs, RotaryArgs};
use tf_host::{
    attention, linear, pattention, AttnArgs, AttnOptions, Checks, DType, Device, EmuOptions, Norm, PattentionArgs,
    PattentionOptions, Profile, Tensor,
};
use tf_host::{grow_batch, GrowInit, GrowItem};

use crate::util::{one_line, outln, s, CliResult};
use crate::{DtypeArg, ProfileArgs};

/// The ops and the shape keys each takes (with defaults: a TokenFormer-sized layer).
const OPS: &[(&str, &[(&str, usize)])] = &[
    ("pattention", &[("t", 256), ("d", 1024), ("n", 1024), ("d_out", 1024)]),
    ("attention", &[("b", 1), ("h", 4), ("tq", 256), ("tk", 256), ("hd", 64), ("causal", 0)]),
    ("linear", &[("t", 256), ("d_in", 1024), ("d_out", 1024)]),
    ("grow", &[("rows_old", 768), ("rows_new", 1792), ("cols", 1024)]),
    ("layer_norm", &[("t", 256), ("d", 1024)]),
    ("rotary", &[("t", 256), ("heads", 16), ("head_dim", 64), ("rot_dim", 16)]),
    ("add", &[("t", 256), ("d", 1024)]),
    ("embedding", &[("t", 256), ("vocab", 50304), ("d", 1024)]),
];

pub fn run(args: &ProfileArgs) -> CliResult<ExitCode> {
    let Some((_, keys)) = OPS.iter().find(|(name, _)| *name == args.op) else {
        let names: Vec<&str> = OPS.iter().map(|(n, _)| *n).collect();
        return Err(format!("unknown op {:?}; profile one of {}", args.op, names.join(", ")));
    };
    let shape = parse_shape(args.shape.as_deref().unwrap_or(""), keys)?;
    let get = |k: &str| shape.iter().find(|(n, _)| *n == k).map(|(_, v)| *v).unwrap_or(0);
    let dev = Device::emulator_with(EmuOptions { checks: Checks::PROFILE, ..Default::default() });
    let desc: Vec<String> = shape.iter().map(|(k, v)| format!("{k}={v}")).collect();
    outln!(
        "profile: {} at {} ({:?}) on the emulator: memory counts, not GPU timings",
        args.op,
        desc.join(","),
        args.dtype
    );
    match args.dtype {
        DtypeArg::F32 => run_op::<f32>(&dev, &args.op, &get, args.seed),
        DtypeArg::F16 => run_op::<half::f16>(&dev, &args.op, &get, args.seed),
        DtypeArg::Bf16 => run_op::<half::bf16>(&dev, &args.op, &get, args.seed),
    }
    .map_err(|e| format!("{}: {}", args.op, one_line(&e)))?;
    let profiles = dev.take_profiles();
    if profiles.is_empty() {
        return Err("no kernel was launched (a zero dimension?)".into());
    }
    for p in &profiles {
        print_profile(p)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `t=64,d=1024` against the op's keys; unnamed keys keep their defaults.
fn parse_shape(text: &str, keys: &[(&'static str, usize)]) -> CliResult<Vec<(&'static str, usize)>> {
    let mut out: Vec<(&'static str, usize)> = keys.to_vec();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("--shape: {part:?} is not KEY=VALUE"));
        };
        let Some(slot) = out.iter_mut().find(|(n, _)| *n == k.trim()) else {
            let names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
            return Err(format!("--shape: unknown key {k:?}; this op takes {}", names.join(", ")));
        };
        slot.1 = v.trim().parse().map_err(|_| format!("--shape: {k}={v:?} is not a non-negative integer"))?;
    }
    Ok(out)
}

fn random<T: DType>(dev: &Device, shape: &[usize], seed: u64, std: f32) -> Result<Tensor<T>, String> {
    let n: usize = shape.iter().product();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * std * 1.732).collect();
    dev.upload(&tf_host::from_f32_vec::<T>(&v), shape).map_err(s)
}

fn run_op<T: DType>(dev: &Device, op: &str, get: &dyn Fn(&str) -> usize, seed: u64) -> Result<(), String> {
    match op {
        "pattention" => {
            let (t, d, n, d_out) = (get("t"), get("d"), get("n"), get("d_out"));
            let x = random::<T>(dev, &[t, d], seed, 1.0)?;
            let k = random::<T>(dev, &[n, d], seed + 1, 0.02)?;
            let v = random::<T>(dev, &[n, d_out], seed + 2, 0.02)?;
            let opts = PattentionOptions { norm: Norm::L2NormGelu, n_ref: None, eps: 1e-6 };
            let args = PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts };
            pattention(dev, &args).map(|_| ()).map_err(s)
        }
        "attention" => {
            let (b, h, tq, tk, hd) = (get("b"), get("h"), get("tq"), get("tk"), get("hd"));
            let q = random::<T>(dev, &[b, tq, h, hd], seed, 1.0)?;
            let k = random::<T>(dev, &[b, tk, h, hd], seed + 1, 1.0)?;
            let v = random::<T>(dev, &[b, tk, h, hd], seed + 2, 1.0)?;
            let opts = AttnOptions { causal: get("causal") != 0, ..Default::default() };
            attention(dev, &AttnArgs { q: q.view(), k: k.view(), v: v.view(), opts }).map(|_| ()).map_err(s)
        }
        "linear" => {
            let (t, d_in, d_out) = (get("t"), get("d_in"), get("d_out"));
            let x = random::<T>(dev, &[t, d_in], seed, 1.0)?;
            let w = random::<T>(dev, &[d_out, d_in], seed + 1, 0.02)?;
            linear(dev, &x, &w).map(|_| ()).map_err(s)
        }
        "grow" => {
            let (old, new, cols) = (get("rows_old"), get("rows_new"), get("cols"));
            let src = random::<T>(dev, &[old, cols], seed, 0.02)?;
            let mut dst = dev.zeros::<T>(&[new, cols]).map_err(s)?;
            let item = GrowItem {
                src: Some(src.view()),
                dst: dst.view_mut(),
                rows_old: old,
                init: GrowInit::Normal { std: 0.02, seed },
            };
            grow_batch(dev, vec![item]).map_err(s)
        }
        "layer_norm" => {
            let (t, d) = (get("t"), get("d"));
            let x = random::<T>(dev, &[t, d], seed, 1.0)?;
            let w = random::<T>(dev, &[d], seed + 1, 1.0)?;
            let b = random::<T>(dev, &[d], seed + 2, 1.0)?;
            let mut y = dev.zeros::<T>(&[t, d]).map_err(s)?;
            let args = LayerNormArgs { x: x.view(), weight: Some(w.view()), bias: Some(b.view()), eps: 1e-5 };
            layer_norm_into(dev, &args, &mut y.view_mut()).map_err(s)
        }
        "rotary" => {
            let (t, heads, head_dim, rot_dim) = (get("t"), get("heads"), get("head_dim"), get("rot_dim"));
            let mut x = random::<T>(dev, &[t, heads * head_dim], seed, 1.0)?;
            let args = RotaryArgs { heads, head_dim, rot_dim, base: 10000.0, pos_offset: 0 };
            rotary_into(dev, &mut x.view_mut(), &args).map_err(s)
        }
        "add" => {
            let (t, d) = (get("t"), get("d"));
            let mut y = random::<T>(dev, &[t, d], seed, 1.0)?;
            let x = random::<T>(dev, &[t, d], seed + 1, 1.0)?;
            add_assign(dev, &mut y.view_mut(), &x.view()).map_err(s)
        }
        "embedding" => {
            let (t, vocab, d) = (get("t"), get("vocab"), get("d"));
            let table = random::<T>(dev, &[vocab, d], seed, 0.02)?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 1);
            let tokens: Vec<u32> = (0..t).map(|_| rng.random_range(0..vocab.max(1)) as u32).collect();
            let mut y = dev.zeros::<T>(&[t, d]).map_err(s)?;
            embedding_into(dev, &table.view(), &tokens, &mut y.view_mut()).map_err(s)
        }
        _ => Err(format!("unknown op {op:?}")),
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.3} MB", bytes as f64 / 1e6)
}

fn print_profile(p: &Profile) -> CliResult<()> {
    outln!("");
    outln!(
        "kernel {}: {} warps; per warp-instruction counts: {} mma, {} ldmatrix, {} cp.async, {} shuffles, {} other \
         collectives; {} barriers",
        p.kernel,
        p.warps,
        p.mma,
        p.ldmatrix,
        p.cp_async,
        p.shuffles,
        p.other_collectives,
        p.barriers
    );
    let sector_bytes = p.global_sector_bytes();
    outln!(
        "  global memory: {} unique bytes touched by the grid (DRAM floor), {} in 32-byte sectors by all requests \
         (L2 side, {:.2}x the unique bytes)",
        mb(p.unique_global_bytes),
        mb(sector_bytes),
        sector_bytes as f64 / p.unique_global_bytes.max(1) as f64
    );
    outln!(
        "  {:<48} {:<6} {:<14} {:>9} {:>12} {:>11} {:>10} {:>12}",
        "source line",
        "space",
        "kind",
        "requests",
        "bytes",
        "sectors/req",
        "coalesced",
        "wavefronts"
    );
    for l in &p.lines {
        let (spr, coal, wave) = if l.space == "global" {
            (format!("{:.2}", l.sectors_per_request()), format!("{:.0}%", 100.0 * l.coalescing()), "-".to_string())
        } else {
            ("-".into(), "-".into(), format!("{}/{} ideal", l.wavefronts, l.ideal_wavefronts))
        };
        outln!(
            "  {:<48} {:<6} {:<14} {:>9} {:>12} {:>11} {:>10} {:>12}",
            l.site,
            l.space,
            l.kind,
            l.requests,
            l.bytes,
            spr,
            coal,
            wave
        );
    }
    let mut wasted: Vec<_> = p.lines.iter().filter(|l| l.space == "global" && l.sectors > l.ideal_sectors).collect();
    wasted.sort_by_key(|l| std::cmp::Reverse(l.sectors - l.ideal_sectors));
    let mut conflicts: Vec<_> =
        p.lines.iter().filter(|l| l.space == "shared" && l.wavefronts > l.ideal_wavefronts).collect();
    conflicts.sort_by_key(|l| std::cmp::Reverse(l.wavefronts - l.ideal_wavefronts));
    if wasted.is_empty() {
        outln!("  wasted sectors: none (every global request is as coalesced as its bytes allow)");
    }
    for l in wasted.iter().take(5) {
        outln!("  wasted sectors: {} at {} ({} {})", l.sectors - l.ideal_sectors, l.site, l.space, l.kind);
    }
    if conflicts.is_empty() {
        outln!("  bank conflicts: none");
    }
    for l in conflicts.iter().take(5) {
        outln!(
            "  bank conflicts: {} extra wavefronts at {} ({}, {:.2}x ideal)",
            l.wavefronts - l.ideal_wavefronts,
            l.site,
            l.kind,
            l.conflict_factor()
        );
    }
    Ok(())
}
