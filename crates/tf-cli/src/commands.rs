//! `grow`, `generate`, `golden` and `info`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tf_host::{
    bf16, f16, CheckpointInfo, DType, Device, LoadOptions, Sampling, SlotCounts, Tokenformer, TokenformerConfig,
};
use tf_tokenizer::Tokenizer;

use crate::util::{bar, check_output, config, device, millions, outln, parse_ids, parse_slots, s, spinner, CliResult};
use crate::{DtypeArg, GenerateArgs, GoldenArgs, GrowArgs, DEFAULT_DTYPE, DEFAULT_INIT_SEED};

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

/// Metadata key of the storage type a checkpoint was made with.
pub const META_DTYPE: &str = "tokenformer.dtype";
/// Metadata key of the init seed of the model a checkpoint descends from.
pub const META_INIT_SEED: &str = "tokenformer.init_seed";

fn dtype_name(d: DtypeArg) -> &'static str {
    match d {
        DtypeArg::F32 => "f32",
        DtypeArg::F16 => "f16",
        DtypeArg::Bf16 => "bf16",
    }
}

/// What a checkpoint records about how it was made (absent for files other
/// programs wrote).
struct Provenance {
    dtype: Option<DtypeArg>,
    init_seed: Option<u64>,
}

/// Slot counts (qkv, proj, ffn).
type Slots = (usize, usize, usize);

/// Reads a checkpoint's header: its slot counts (from the tensor shapes) and
/// provenance. Errors name the flag and the file.
fn checkpoint_info(path: &Path) -> CliResult<(Option<Slots>, Provenance)> {
    let info = CheckpointInfo::read(path).map_err(|e| format!("--checkpoint: {e}"))?;
    let dtype = match info.metadata.get(META_DTYPE).map(String::as_str) {
        None => None,
        Some("f32") => Some(DtypeArg::F32),
        Some("f16") => Some(DtypeArg::F16),
        Some("bf16") => Some(DtypeArg::Bf16),
        Some(other) => {
            return Err(format!(
                "--checkpoint {}: metadata {META_DTYPE} = {other:?} is not f32, f16 or bf16",
                path.display()
            ))
        }
    };
    let init_seed = match info.metadata.get(META_INIT_SEED) {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            format!("--checkpoint {}: metadata {META_INIT_SEED} = {v:?} is not a seed", path.display())
        })?),
    };
    Ok((info.slots(), Provenance { dtype, init_seed }))
}

/// The config a command runs: `--config` with the slot counts of `--slots`, else
/// of the checkpoint's tensors, else the config's own.
/// The model's configuration (`--config`, slot counts from `--slots`, else the
/// checkpoint's tensors) and, with `--checkpoint`, what the file records of its
/// making. Reads only the checkpoint's header.
fn config_and_provenance(
    name: &str,
    slots: Option<&str>,
    checkpoint: Option<&Path>,
) -> CliResult<(TokenformerConfig, Option<Provenance>)> {
    let (file_slots, prov) = match checkpoint {
        Some(path) => {
            let (slots, prov) = checkpoint_info(path)?;
            (slots, Some(prov))
        }
        None => (None, None),
    };
    Ok((model_config(name, slots, file_slots)?, prov))
}

fn model_config(name: &str, slots: Option<&str>, from_file: Option<Slots>) -> CliResult<TokenformerConfig> {
    let cfg = config(name)?;
    let slots = match slots {
        Some(s) => Some(parse_slots("--slots", s)?),
        None => from_file,
    };
    match slots {
        Some((q, p, f)) => cfg.with_slots(q, p, f).map_err(|e| format!("--slots: {e}")),
        None => Ok(cfg),
    }
}

/// The storage type: `--dtype`, else the checkpoint's, else the shared default.
fn pick_dtype(flag: Option<DtypeArg>, prov: Option<&Provenance>) -> DtypeArg {
    flag.or(prov.and_then(|p| p.dtype)).unwrap_or(DEFAULT_DTYPE)
}

/// `grow`: grows every Pattention of a model at once and compares the logits.
pub fn grow(a: &GrowArgs) -> CliResult<ExitCode> {
    // Everything the user typed is checked before the model exists.
    let (cfg, prov) = config_and_provenance(&a.config, a.slots.as_deref(), a.checkpoint.as_deref())?;
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
        (None, Some(slots)) => parse_slots("--to-slots", slots)?,
        _ => return Err("grow needs the target: --to CONFIG or --to-slots QKV,PROJ,FFN".into()),
    };
    let flag = if a.to.is_some() { "--to" } else { "--to-slots" };
    for (what, old, new) in [("qkv", cfg.qkv_slots, q), ("proj", cfg.proj_slots, p), ("ffn", cfg.ffn_slots, f)] {
        if new < old {
            return Err(format!(
                "{flag}: {what} slots {old} -> {new}: growth only appends parameter tokens, the model has {},{},{}",
                cfg.qkv_slots, cfg.proj_slots, cfg.ffn_slots
            ));
        }
    }
    let grown = cfg.with_slots(q, p, f).map_err(|e| format!("{flag}: {e}"))?;
    if a.tokens == 0 || a.tokens > cfg.seq {
        return Err(format!(
            "--tokens {}: the compared forward pass takes 1 to {} tokens (config {}'s context length, seq)",
            a.tokens, cfg.seq, cfg.name
        ));
    }
    if let Some(path) = &a.save {
        check_output("--save", path)?;
    }
    let (dev, why) = device(a.device)?;
    emulator_guard(&dev, &grown, &format!("growing {} to {}", cfg.name, grown.name))?;
    let dtype = pick_dtype(a.dtype, prov.as_ref());
    match dtype {
        DtypeArg::F32 => grow_with::<f32>(a, &dev, &why, &cfg, (q, p, f), prov.as_ref()),
        DtypeArg::F16 => grow_with::<f16>(a, &dev, &why, &cfg, (q, p, f), prov.as_ref()),
        DtypeArg::Bf16 => grow_with::<bf16>(a, &dev, &why, &cfg, (q, p, f), prov.as_ref()),
    }
}

fn grow_with<T: DType>(
    a: &GrowArgs,
    dev: &Device,
    why: &Option<String>,
    cfg: &TokenformerConfig,
    (q, p, f): Slots,
    prov: Option<&Provenance>,
) -> CliResult<ExitCode> {
    let init_seed = match prov {
        Some(pr) => pr.init_seed,
        None => Some(a.init_seed.unwrap_or(DEFAULT_INIT_SEED)),
    };
    let source = match &a.checkpoint {
        Some(path) => format!("{} ({})", cfg.name, path.display()),
        None => format!("{} (random init, seed {})", cfg.name, init_seed.unwrap_or(DEFAULT_INIT_SEED)),
    };
    outln!("grow: {source} on {}, {}", describe(dev, why), T::NAME);
    let mut rng = StdRng::seed_from_u64(a.grow_seed);
    let tokens: Vec<u32> = (0..a.tokens).map(|_| rng.random_range(0..cfg.vocab as u32)).collect();
    let sp = spinner(&format!("loading {} ({} parameters) on the device", cfg.name, millions(cfg.param_count())));
    let mut m = match &a.checkpoint {
        Some(path) => {
            let opts = LoadOptions { allow_non_finite: a.allow_non_finite };
            Tokenformer::<T>::load_with(dev, cfg, path, &opts).map_err(s)?
        }
        None => Tokenformer::<T>::new(dev, cfg, init_seed.unwrap_or(DEFAULT_INIT_SEED)).map_err(s)?,
    };
    sp.set_message(format!("forward pass over {} tokens", tokens.len()));
    let before = m.forward(&tokens).and_then(|l| l.to_vec()).map_err(s)?;
    sp.set_message("growing".to_string());
    dev.synchronize().map_err(s)?;
    let start = Instant::now();
    let to = SlotCounts { qkv: q, proj: p, ffn: f };
    if a.preserving {
        m.grow_preserving(to, a.grow_seed ^ 0x5eed).map_err(s)?;
    } else {
        m.grow(to, a.grow_seed ^ 0x5eed).map_err(s)?;
    }
    dev.synchronize().map_err(s)?;
    let took = start.elapsed();
    sp.set_message(format!("forward pass over {} tokens", tokens.len()));
    let after = m.forward(&tokens).and_then(|l| l.to_vec()).map_err(s)?;
    sp.finish_and_clear();
    let g = m.config().clone();
    let grew = (g.qkv_slots, g.proj_slots, g.ffn_slots) != (cfg.qkv_slots, cfg.proj_slots, cfg.ffn_slots);
    if grew {
        outln!(
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
        outln!(
            "growth: {:.3} ms for {} Pattentions in one launch of the growth kernel ({}{})",
            took.as_secs_f64() * 1e3,
            5 * cfg.layers,
            if a.preserving { "zero keys, n_ref pinned" } else { "random keys and values" },
            if dev.is_cuda() { "" } else { "; emulator time, not performance" }
        );
    } else {
        outln!(
            "grow: nothing to grow: the model already has qkv {}, proj {}, ffn {} slots; it is unchanged",
            g.qkv_slots,
            g.proj_slots,
            g.ffn_slots
        );
    }
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
    outln!(
        "logits over {} tokens: max |change| {max_abs:.3e}, relative change {rel:.3e}, {differ} of {} values differ{}",
        a.tokens,
        before.len(),
        if differ == 0 { " (bitwise identical)" } else { "" }
    );
    let save = a.save.as_ref().map(|path| {
        move || -> CliResult<()> {
            let seed_text = init_seed.map(|v| v.to_string());
            let mut meta = vec![(META_DTYPE, T::NAME)];
            if let Some(v) = &seed_text {
                meta.push((META_INIT_SEED, v.as_str()));
            }
            m.save_with_metadata(path, &meta).map_err(|e| format!("--save: {e}"))?;
            outln!(
                "saved {} to {} ({}; generate with --config {} --checkpoint {})",
                g.name,
                path.display(),
                T::NAME,
                cfg.name,
                path.display()
            );
            Ok(())
        }
    });
    check_then_save(a.preserving, differ, save)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `save` (if any) only after a `--preserving` growth was seen to leave
/// every logit bitwise unchanged: a growth that did not preserve the function is
/// an error and is never saved.
fn check_then_save(preserving: bool, differ: usize, save: Option<impl FnOnce() -> CliResult<()>>) -> CliResult<()> {
    if preserving && differ != 0 {
        return Err(format!(
            "grow --preserving changed {differ} logits: the growth did not preserve the function{}",
            if save.is_some() { "; nothing was saved" } else { "" }
        ));
    }
    match save {
        Some(f) => f(),
        None => Ok(()),
    }
}

/// `generate`: token ids in, token ids out.
pub fn generate(a: &GenerateArgs) -> CliResult<ExitCode> {
    // Everything the user typed is checked before any allocation it sizes.
    let (cfg, prov) = config_and_provenance(&a.config, a.slots.as_deref(), a.checkpoint.as_deref())?;
    let tokenizer = match &a.tokenizer {
        Some(_) if a.text.is_none() => {
            return Err("--tokenizer is for --text: with --tokens the prompt is ids and only new ids print".into())
        }
        Some(path) => Some(crate::tokenize::load(path, &cfg.name, cfg.vocab)?),
        None => None,
    };
    let prompt = match (&a.tokens, &a.text) {
        (Some(ids), _) => parse_ids(ids)?,
        (None, Some(text)) if tokenizer.is_some() => tokenizer.as_ref().map(|t| t.encode(text)).unwrap_or_default(),
        (None, Some(text)) => {
            if cfg.vocab < 256 {
                return Err(format!(
                    "--text: config {} has a vocabulary of {} tokens, fewer than the 256 byte values",
                    cfg.name, cfg.vocab
                ));
            }
            text.bytes().map(u32::from).collect()
        }
        (None, None) => return Err("give the prompt with --tokens or --text".into()),
    };
    if prompt.is_empty() {
        return Err(if a.text.is_some() {
            "--text: the prompt is empty"
        } else {
            "--tokens: give at least one token id"
        }
        .into());
    }
    match prompt.len().checked_add(a.max_new) {
        Some(total) if total <= cfg.seq => {}
        _ => {
            return Err(format!(
                "--max-new {}: {} prompt tokens + {} new exceed config {}'s context length (seq) of {}; at most {} new tokens fit",
                a.max_new,
                prompt.len(),
                a.max_new,
                cfg.name,
                cfg.seq,
                cfg.seq.saturating_sub(prompt.len())
            ))
        }
    }
    let sampling = match a.temperature {
        None => Sampling::Greedy,
        Some(t) if t.is_finite() && t > 0.0 => Sampling::Temperature { t, seed: a.sample_seed },
        Some(t) => return Err(format!("--temperature must be finite and > 0, got {t}")),
    };
    let (dev, why) = device(a.device)?;
    emulator_guard(&dev, &cfg, &format!("running {}", cfg.name))?;
    let prompt = Prompt { ids: prompt, tokenizer };
    match pick_dtype(a.dtype, prov.as_ref()) {
        DtypeArg::F32 => generate_with::<f32>(a, &dev, &why, &cfg, &prompt, sampling, prov.as_ref()),
        DtypeArg::F16 => generate_with::<f16>(a, &dev, &why, &cfg, &prompt, sampling, prov.as_ref()),
        DtypeArg::Bf16 => generate_with::<bf16>(a, &dev, &why, &cfg, &prompt, sampling, prov.as_ref()),
    }
}

/// The prompt's ids, and the tokenizer that made them from --text (if any),
/// which also prints the output.
struct Prompt {
    ids: Vec<u32>,
    tokenizer: Option<Tokenizer>,
}

/// Token ids of the byte-level vocabulary as text: runs of ids < 256 are bytes
/// decoded as UTF-8 (invalid sequences as U+FFFD), every id >= 256 is U+FFFD.
fn bytes_as_text(ids: &[u32]) -> String {
    let mut out = String::new();
    for run in ids.split(|&id| id >= 256) {
        let bytes: Vec<u8> = run.iter().map(|&id| id as u8).collect();
        out.push_str(&String::from_utf8_lossy(&bytes));
        out.push('\u{fffd}');
    }
    out.pop(); // the split leaves one run more than there are separators
    out
}

fn generate_with<T: DType>(
    a: &GenerateArgs,
    dev: &Device,
    why: &Option<String>,
    cfg: &TokenformerConfig,
    prompt: &Prompt,
    sampling: Sampling,
    prov: Option<&Provenance>,
) -> CliResult<ExitCode> {
    let init_seed = a.init_seed.unwrap_or(DEFAULT_INIT_SEED);
    let m = match &a.checkpoint {
        Some(path) => {
            let opts = LoadOptions { allow_non_finite: a.allow_non_finite };
            Tokenformer::<T>::load_with(dev, cfg, path, &opts).map_err(s)?
        }
        None => Tokenformer::<T>::new(dev, cfg, init_seed).map_err(s)?,
    };
    let pb = bar(a.max_new as u64, "generating");
    let started = std::time::Instant::now();
    let out = m.generate_with(&prompt.ids, a.max_new, sampling, |_| pb.inc(1)).map_err(s)?;
    let seconds = started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let all = [&prompt.ids[..], &out[..]].concat();
    if let Some(tok) = &prompt.tokenizer {
        outln!("{}", crate::tokenize::text(tok, &all));
    } else if a.text.is_some() {
        outln!("{}", bytes_as_text(&all));
    } else {
        let ids: Vec<String> = out.iter().map(u32::to_string).collect();
        outln!("{}", ids.join(","));
    }
    // What ran, after the result (so that an error is the only line on stderr).
    let source = match (&a.checkpoint, prov) {
        (None, _) => format!("random init, seed {init_seed}"),
        (Some(path), Some(pr)) => {
            let mut s = path.display().to_string();
            match (pr.dtype, pr.init_seed) {
                (Some(d), Some(seed)) => s.push_str(&format!(", made in {} from init seed {seed}", dtype_name(d))),
                (Some(d), None) => s.push_str(&format!(", made in {}", dtype_name(d))),
                _ => {}
            }
            if let (Some(made), Some(asked)) = (pr.dtype, a.dtype) {
                if made != asked {
                    s.push_str(&format!("; run in {} as --dtype asks, so the tokens may differ", dtype_name(asked)));
                }
            }
            s
        }
        (Some(path), None) => path.display().to_string(),
    };
    eprintln!(
        "generate: {} ({source}) on {}, {}, {}; {} new tokens in {seconds:.2} s with the prompt's pass ({:.1} tokens/s)",
        cfg.name,
        describe(dev, why),
        T::NAME,
        match sampling {
            Sampling::Greedy => "greedy".to_string(),
            Sampling::Temperature { t, seed } => format!("temperature {t}, sample seed {seed}"),
        },
        out.len(),
        out.len() as f64 / seconds.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// `golden`: tf-ref's golden files.
pub fn golden(a: &GoldenArgs) -> CliResult<ExitCode> {
    let files =
        tf_ref::golden::write_all(&a.out, a.seed).map_err(|e| format!("golden --out {}: {e}", a.out.display()))?;
    for f in &files {
        outln!("{}", f.display());
    }
    outln!("golden: {} files in {} (seed {})", files.len(), a.out.display(), a.seed);
    Ok(ExitCode::SUCCESS)
}

/// `info`: driver and device, compiled archs, nvcc, the ptxas summary.
pub fn info() -> CliResult<ExitCode> {
    outln!("tokenformer {}", env!("CARGO_PKG_VERSION"));
    match Device::cuda(0) {
        Ok(d) => outln!(
            "cuda:     device 0 = {} ({} SMs, {} KiB shared memory per block)",
            d.name(),
            d.sm_count(),
            d.max_smem_per_block() / 1024
        ),
        Err(e) => outln!("cuda:     unavailable: {e}"),
    }
    outln!("emulator: {} (always available; runs the same kernel source)", Device::emulator().name());
    if tf_kernels::FATBIN_EXTERNAL {
        outln!("kernels:  fatbin built, SASS for sm_{{{}}} (+ PTX), loaded from TF_FATBIN", tf_kernels::CUDA_ARCHS);
        outln!("nvcc:     {}", tf_kernels::NVCC_VERSION);
    } else if tf_kernels::FATBIN.is_some() {
        outln!("kernels:  fatbin built, SASS for sm_{{{}}} (+ PTX)", tf_kernels::CUDA_ARCHS);
        outln!("nvcc:     {}", tf_kernels::NVCC_VERSION);
    } else {
        outln!("kernels:  no fatbin: built with the `emulator-only` feature or TF_NO_NVCC (emulator only)");
        outln!("nvcc:     not used");
    }
    let entries = tf_kernels::ptxas_summary();
    if entries.is_empty() {
        outln!("ptxas:    no report (no CUDA build)");
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
        outln!(
            "ptxas:    {} kernels x {} archs ({}), {} compilations; spill bytes {} ({} spilling)",
            kernels.len(),
            archs.len(),
            archs.join(", "),
            entries.len(),
            spills,
            spilling
        );
        if let Some(w) = worst {
            outln!("ptxas:    most registers {} ({} on {})", w.registers, w.kernel, w.arch);
        }
        let max_smem = entries.iter().map(|e| e.smem_bytes).max().unwrap_or(0);
        outln!("ptxas:    largest static shared memory {max_smem} bytes");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ids_print_as_text() {
        assert_eq!(bytes_as_text(&[72, 105, 300, 0xe2, 0x82, 0xac]), "Hi\u{fffd}\u{20ac}");
        assert_eq!(bytes_as_text(&[0xff, 65]), "\u{fffd}A"); // not UTF-8
        assert_eq!(bytes_as_text(&[65, 256]), "A\u{fffd}");
        assert_eq!(bytes_as_text(&[256, 257]), "\u{fffd}\u{fffd}");
        assert_eq!(bytes_as_text(&[]), "");
    }

    #[test]
    fn a_growth_that_changed_the_logits_is_not_saved() {
        let mut saved = 0;
        let e = check_then_save(
            true,
            3,
            Some(|| -> CliResult<()> {
                saved += 1;
                Ok(())
            }),
        )
        .unwrap_err();
        assert!(e.contains("changed 3 logits") && e.contains("nothing was saved"), "{e}");
        assert_eq!(saved, 0, "saved before the check");
        let mut save = || -> CliResult<()> {
            saved += 1;
            Ok(())
        };
        check_then_save(true, 0, Some(&mut save)).unwrap();
        check_then_save(false, 5, Some(&mut save)).unwrap();
        assert_eq!(saved, 2);
        assert!(check_then_save(true, 1, None::<fn() -> CliResult<()>>).unwrap_err().ends_with("function"));
    }
}
