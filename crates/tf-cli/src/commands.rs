//! `grow`, `generate`, `golden` and `info`.

use std::process::ExitCode;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tf_host::{bf16, f16, DType, Device, Sampling, Tokenformer, TokenformerConfig};

use crate::util::{bar, config, device, millions, parse_ids, parse_slots, s, spinner, CliResult};
use crate::{DtypeArg, GenerateArgs, GoldenArgs, GrowArgs};

/// Largest model (parameters) the emulator is asked to run: beyond this it
/// takes minutes per forward pass.
const EMULATOR_MAX_PARAMS: usize = 20_000_000;

fn emulator_guard(dev: &Device, cfg: &TokenformerConfig, what: &str) -> CliResult<()> {
    if !dev.is_cuda() && cfg.param_count() > EMULATOR_MAX_PARAMS {
        return Err(format!(
            "{what} ({} parameters) is far too slow on the CPU emulator (the limit is {}): \
             use a GPU with --device cuda, or a small config such as --config tiny",
            millions(cfg.param_count()),
            millions(EMULATOR_MAX_PARAMS)
        ));
    }
    Ok(())
}

fn describe(dev: &Device, why_not_cuda: &Option<String>) -> String {
    match why_not_cuda {
        Some(e) => format!("{} (no CUDA: {e})", dev.name()),
        None => dev.name(),
    }
}

/// `grow`: grows every Pattention of a model at once and compares the logits.
pub fn grow(a: &GrowArgs) -> CliResult<ExitCode> {
    let cfg = config(&a.config)?;
    let (q, p, f) = match (&a.to, &a.to_slots) {
        (Some(name), None) => {
            let t = config(name)?;
            if (t.layers, t.d, t.heads, t.vocab) != (cfg.layers, cfg.d, cfg.heads, cfg.vocab) {
                return Err(format!(
                    "--to {name}: only the slot counts can grow, but {} is {} layers x d {} ({} heads, vocab {}) and {} is {} x {} ({}, {})",
                    cfg.name, cfg.layers, cfg.d, cfg.heads, cfg.vocab, t.name, t.layers, t.d, t.heads, t.vocab
                ));
            }
            (t.qkv_slots, t.proj_slots, t.ffn_slots)
        }
        (None, Some(slots)) => parse_slots(slots)?,
        _ => return Err("grow needs the target: --to CONFIG or --to-slots QKV,PROJ,FFN".into()),
    };
    let grown = cfg.with_slots(q, p, f).map_err(s)?;
    if a.tokens == 0 {
        return Err("--tokens must be at least 1".into());
    }
    let (dev, why) = device(a.device)?;
    emulator_guard(&dev, &grown, &format!("growing {} to {}", cfg.name, grown.name))?;
    match a.dtype {
        DtypeArg::F32 => grow_with::<f32>(a, &dev, &why, &cfg, (q, p, f)),
        DtypeArg::F16 => grow_with::<f16>(a, &dev, &why, &cfg, (q, p, f)),
        DtypeArg::Bf16 => grow_with::<bf16>(a, &dev, &why, &cfg, (q, p, f)),
    }
}

fn grow_with<T: DType>(
    a: &GrowArgs,
    dev: &Device,
    why: &Option<String>,
    cfg: &TokenformerConfig,
    (q, p, f): (usize, usize, usize),
) -> CliResult<ExitCode> {
    println!("grow: {} on {}, {}", cfg.name, describe(dev, why), T::NAME);
    let mut rng = StdRng::seed_from_u64(a.seed);
    let tokens: Vec<u32> = (0..a.tokens).map(|_| rng.random_range(0..cfg.vocab as u32)).collect();
    let sp = spinner(&format!("initialising {} ({} parameters) on the device", cfg.name, millions(cfg.param_count())));
    let mut m = Tokenformer::<T>::new(dev, cfg, a.seed).map_err(s)?;
    sp.set_message(format!("forward pass over {} tokens", tokens.len()));
    let before = m.forward(&tokens).and_then(|l| l.to_vec()).map_err(s)?;
    sp.set_message("growing".to_string());
    dev.synchronize().map_err(s)?;
    let start = Instant::now();
    if a.preserving {
        m.grow_preserving(q, p, f, a.seed ^ 0x5eed).map_err(s)?;
    } else {
        m.grow(q, p, f, a.seed ^ 0x5eed).map_err(s)?;
    }
    dev.synchronize().map_err(s)?;
    let took = start.elapsed();
    sp.set_message(format!("forward pass over {} tokens", tokens.len()));
    let after = m.forward(&tokens).and_then(|l| l.to_vec()).map_err(s)?;
    sp.finish_and_clear();
    let g = m.config();
    println!(
        "grew {} -> {}: qkv {} -> {}, proj {} -> {}, ffn {} -> {} slots; {} -> {} parameters",
        cfg.name,
        g.name,
        cfg.qkv_slots,
        g.qkv_slots,
        cfg.proj_slots,
        g.proj_slots,
        cfg.ffn_slots,
        g.ffn_slots,
        millions(cfg.param_count()),
        millions(g.param_count())
    );
    println!(
        "growth: {:.3} ms for {} Pattentions in one launch of the growth kernel ({}{})",
        took.as_secs_f64() * 1e3,
        5 * cfg.layers,
        if a.preserving { "zero keys, n_ref pinned" } else { "random keys and values" },
        if dev.is_cuda() { "" } else { "; emulator time, not performance" }
    );
    let (mut max_abs, mut num, mut den, mut differ) = (0f64, 0f64, 0f64, 0usize);
    for (x, y) in before.iter().zip(&after) {
        let (x, y) = (f64::from(x.to_f32()), f64::from(y.to_f32()));
        let d = (y - x).abs();
        max_abs = max_abs.max(d);
        num += d * d;
        den += x * x;
        differ += usize::from(x.to_bits() != y.to_bits());
    }
    let rel = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
    println!(
        "logits over {} tokens: max |change| {max_abs:.3e}, relative change {rel:.3e}, {differ} of {} values differ{}",
        a.tokens,
        before.len(),
        if differ == 0 { " (bitwise identical)" } else { "" }
    );
    if let Some(path) = &a.save {
        m.save(path).map_err(s)?;
        println!(
            "saved {} to {} (generate with --config {} --slots {},{},{})",
            g.name,
            path.display(),
            cfg.name,
            g.qkv_slots,
            g.proj_slots,
            g.ffn_slots
        );
    }
    if a.preserving && differ != 0 {
        return Err(format!("grow --preserving changed {differ} logits: the growth did not preserve the function"));
    }
    Ok(ExitCode::SUCCESS)
}

/// `generate`: token ids in, token ids out.
pub fn generate(a: &GenerateArgs) -> CliResult<ExitCode> {
    let mut cfg = config(&a.config)?;
    if let Some(slots) = &a.slots {
        let (q, p, f) = parse_slots(slots).map_err(|e| e.replace("--to-slots", "--slots"))?;
        cfg = cfg.with_slots(q, p, f).map_err(s)?;
    }
    let prompt = parse_ids(&a.tokens)?;
    if prompt.is_empty() {
        return Err("--tokens: give at least one token id".into());
    }
    let sampling = match a.temperature {
        None => Sampling::Greedy,
        Some(t) if t.is_finite() && t > 0.0 => Sampling::Temperature { t, seed: a.seed },
        Some(t) => return Err(format!("--temperature must be finite and > 0, got {t}")),
    };
    let (dev, why) = device(a.device)?;
    emulator_guard(&dev, &cfg, &format!("running {}", cfg.name))?;
    match a.dtype {
        DtypeArg::F32 => generate_with::<f32>(a, &dev, &why, &cfg, &prompt, sampling),
        DtypeArg::F16 => generate_with::<f16>(a, &dev, &why, &cfg, &prompt, sampling),
        DtypeArg::Bf16 => generate_with::<bf16>(a, &dev, &why, &cfg, &prompt, sampling),
    }
}

fn generate_with<T: DType>(
    a: &GenerateArgs,
    dev: &Device,
    why: &Option<String>,
    cfg: &TokenformerConfig,
    prompt: &[u32],
    sampling: Sampling,
) -> CliResult<ExitCode> {
    let m = match &a.checkpoint {
        Some(path) => Tokenformer::<T>::load(dev, cfg, path).map_err(s)?,
        None => Tokenformer::<T>::new(dev, cfg, a.seed).map_err(s)?,
    };
    eprintln!(
        "generate: {} ({}) on {}, {}, {}",
        cfg.name,
        a.checkpoint.as_ref().map_or_else(|| format!("random init, seed {}", a.seed), |p| p.display().to_string()),
        describe(dev, why),
        T::NAME,
        match sampling {
            Sampling::Greedy => "greedy".to_string(),
            Sampling::Temperature { t, seed } => format!("temperature {t}, seed {seed}"),
        }
    );
    let pb = bar(a.max_new as u64, "generating");
    let out = m.generate_with(prompt, a.max_new, sampling, |_| pb.inc(1)).map_err(s)?;
    pb.finish_and_clear();
    let ids: Vec<String> = out.iter().map(u32::to_string).collect();
    println!("{}", ids.join(","));
    Ok(ExitCode::SUCCESS)
}

/// `golden`: tf-ref's golden files.
pub fn golden(a: &GoldenArgs) -> CliResult<ExitCode> {
    let files =
        tf_ref::golden::write_all(&a.out, a.seed).map_err(|e| format!("golden --out {}: {e}", a.out.display()))?;
    for f in &files {
        println!("{}", f.display());
    }
    println!("golden: {} files in {} (seed {})", files.len(), a.out.display(), a.seed);
    Ok(ExitCode::SUCCESS)
}

/// `info`: driver and device, compiled archs, nvcc, the ptxas summary.
pub fn info() -> CliResult<ExitCode> {
    println!("tokenformer {}", env!("CARGO_PKG_VERSION"));
    match Device::cuda(0) {
        Ok(d) => println!(
            "cuda:     device 0 = {} ({} SMs, {} KiB shared memory per block)",
            d.name(),
            d.sm_count(),
            d.max_smem_per_block() / 1024
        ),
        Err(e) => println!("cuda:     unavailable: {e}"),
    }
    println!("emulator: {} (always available; runs the same kernel source)", Device::emulator().name());
    if tf_kernels::FATBIN.is_some() {
        println!("kernels:  fatbin built, SASS for sm_{{{}}} (+ PTX)", tf_kernels::CUDA_ARCHS);
        println!("nvcc:     {}", tf_kernels::NVCC_VERSION);
    } else {
        println!("kernels:  no fatbin: nvcc was not found when tf-kernels was built (run `cargo xtask setup`)");
        println!("nvcc:     none at build time");
    }
    let entries = tf_kernels::ptxas_summary();
    if entries.is_empty() {
        println!("ptxas:    no report (no CUDA build)");
    } else {
        let mut kernels: Vec<&str> = entries.iter().map(|e| e.kernel.as_str()).collect();
        kernels.sort_unstable();
        kernels.dedup();
        let mut archs: Vec<&str> = entries.iter().map(|e| e.arch.as_str()).collect();
        archs.sort_unstable();
        archs.dedup();
        let worst = entries.iter().max_by_key(|e| e.registers);
        let spills: u64 = entries.iter().map(|e| e.spill_bytes).sum();
        let spilling = entries.iter().filter(|e| e.spill_bytes > 0).count();
        println!(
            "ptxas:    {} kernels x {} archs ({}), {} compilations; spill bytes {} ({} spilling)",
            kernels.len(),
            archs.len(),
            archs.join(", "),
            entries.len(),
            spills,
            spilling
        );
        if let Some(w) = worst {
            println!("ptxas:    most registers {} ({} on {})", w.registers, w.kernel, w.arch);
        }
        let max_smem = entries.iter().map(|e| e.smem_bytes).max().unwrap_or(0);
        println!("ptxas:    largest static shared memory {max_smem} bytes");
    }
    Ok(ExitCode::SUCCESS)
}
