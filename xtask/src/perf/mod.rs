//! `cargo xtask perf`: a performance model that needs no GPU. Every number it
//! prints is an ESTIMATE (docs/performance-model.md):
//!
//! 1. the SASS analyzer (`cuobjdump -sass` of the fatbin, ptxas' report):
//!    registers, shared memory, CTAs per SM, the hot loop's instruction mix;
//! 2. the time model of Pattention (tiled and decode paths), attention and the
//!    dense baseline at the TokenFormer configs' shapes on A100, H100 SXM, H200;
//! 3. `--calibrate FILE`: model error against measured times (the benches'
//!    `TF_BENCH_JSON` lines) and refitted constants.
//!
//! `cargo xtask test` runs [`sass_check`]: the analyzer table and the issue
//! ratchet of ratchet.rs.

mod analysis;
mod calibrate;
mod model;
mod occupancy;
mod path;
pub(crate) mod ratchet;
mod sass;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use occupancy::{Gpu, GPUS};

/// Tokens per call the model is evaluated at.
const TOKENS: [u64; 4] = [1, 64, 2048, 16384];

const USAGE: &str =
    "usage: cargo xtask perf [--fatbin PATH] [--sass FILE] [--json FILE] [--calibrate FILE] [--gpu NAME]";

/// Options of `cargo xtask perf`.
#[derive(Default)]
struct Opts {
    fatbin: Option<PathBuf>,
    sass: Option<PathBuf>,
    json: Option<PathBuf>,
    calibrate: Option<PathBuf>,
    gpu: Option<String>,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--fatbin" => o.fatbin = Some(val()?.into()),
            "--sass" => o.sass = Some(val()?.into()),
            "--json" => o.json = Some(val()?.into()),
            "--calibrate" => o.calibrate = Some(val()?.into()),
            "--gpu" => o.gpu = Some(val()?),
            _ => return Err(format!("unknown argument '{a}'\n{USAGE}")),
        }
    }
    Ok(o)
}

/// The newest fatbin under the repository's `target/` or `$CARGO_TARGET_DIR`.
fn default_fatbin(root: &Path) -> Option<PathBuf> {
    let mut dirs = vec![root.join("target")];
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.iter()
        .filter_map(|d| crate::newest(d, "tf_kernels.fatbin"))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// cuobjdump beside the nvcc the project finds.
fn cuobjdump(root: &Path) -> Option<PathBuf> {
    crate::toolchain::find_nvcc(root).and_then(|n| Some(n.parent()?.join("cuobjdump"))).filter(|p| p.is_file())
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// The SASS text of `fatbin`, via cuobjdump; None without cuobjdump.
pub fn sass_of(root: &Path, fatbin: &Path) -> Option<Result<String, String>> {
    let tool = cuobjdump(root)?;
    Some(crate::run_capture(Command::new(tool).arg("-sass").arg(fatbin)))
}

/// The analyzer rows of a fatbin's SASS (`sass`) with `ptxas.txt` beside it.
fn analyse(root: &Path, sass: &str, ptxas_report: &str) -> Result<Vec<analysis::Row>, String> {
    let header = read(&root.join("kernels/tf_kernels.h"))?;
    let rows = analysis::analyse(&sass::parse(sass), &occupancy::parse_ptxas(ptxas_report), &header);
    if rows.is_empty() {
        return Err("the SASS has no kernel the analyzer knows".into());
    }
    Ok(rows)
}

/// `cargo xtask test`'s check: the analyzer table and the issue ratchet.
pub fn sass_check(root: &Path, sass: &str, ptxas_report: &str) -> Result<(), String> {
    let rows = analyse(root, sass, ptxas_report)?;
    // Briefly: the bf16 kernels (their f16 twins compile to the same loops); all are checked.
    let bf16: Vec<analysis::Row> = rows.iter().filter(|r| r.kernel.contains("bf16")).cloned().collect();
    print!("{}", analysis::table(&bf16, false));
    let scores: Vec<analysis::Row> =
        bf16.iter().filter(|r| analysis::epilogue_reference(&r.kernel).is_some()).cloned().collect();
    print!("{}", analysis::epilogue_table(&scores));
    let summary = ratchet::check(&rows)?;
    println!("xtask: perf      issued instructions per HMMA within the ratchet: {summary}");
    Ok(())
}

/// `cargo xtask perf [args]`.
pub fn command(root: &Path, args: &[String]) -> Result<(), String> {
    let o = parse_opts(args)?;
    let gpus: Vec<&Gpu> = match &o.gpu {
        None => GPUS.iter().collect(),
        Some(g) => {
            let want = g.to_ascii_lowercase().replace([' ', '-', '_'], "");
            let found: Vec<&Gpu> =
                GPUS.iter().filter(|x| x.name.to_ascii_lowercase().replace(' ', "").starts_with(&want)).collect();
            if found.is_empty() {
                return Err(format!("unknown GPU '{g}': A100, H100, H200"));
            }
            found
        }
    };
    // A calibration file is checked first: a missing one is an error.
    let measured = match &o.calibrate {
        Some(p) => Some(calibrate::parse(&read(p)?)),
        None => None,
    };
    let fatbin = match &o.fatbin {
        Some(p) => p.clone(),
        None => default_fatbin(root)
            .ok_or("no tf_kernels.fatbin under target/ or $CARGO_TARGET_DIR: build the kernels or pass --fatbin")?,
    };
    let ptxas_path = fatbin.with_file_name("ptxas.txt");
    let ptxas_report = read(&ptxas_path)?;
    let sass = match &o.sass {
        Some(p) => read(p)?,
        None => sass_of(root, &fatbin).ok_or("no cuobjdump beside nvcc (run `cargo xtask setup`)")??,
    };
    let rows = analyse(root, &sass, &ptxas_report)?;
    println!("SASS analysis (estimate inputs) of {}:", fatbin.display());
    print!("{}", analysis::table(&rows, true));
    println!("(static counts per hot-loop iteration; a nested loop weighted by hd / 16 in attention, else 1)\n");
    print!("{}", analysis::epilogue_table(&rows));
    println!("(longest: the most instructions on one forward path from the last HMMA loop to an EXIT)\n");

    let mut json_gpus = Vec::new();
    for gpu in &gpus {
        let facts = |k: &str| facts_of(&rows, gpu, k);
        let (text, json) = device_tables(gpu, &facts)?;
        print!("{text}");
        json_gpus.push(json);
    }
    if let Some(m) = &measured {
        let gpu = gpus.iter().find(|g| g.name == "H200").copied().unwrap_or(gpus[0]);
        let facts = |k: &str| facts_of(&rows, gpu, k);
        print!("{}", calibrate::report(gpu, &facts, m));
    }
    if let Some(p) = &o.json {
        let v = serde_json::json!({
            "note": "estimates of a performance model (docs/performance-model.md), not measurements",
            "fatbin": fatbin.display().to_string(),
            "kernels": analysis::json(&rows),
            "devices": json_gpus,
        });
        let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        std::fs::write(p, text + "\n").map_err(|e| format!("{}: {e}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// The model's inputs for kernel `k` on `gpu`: per-HMMA of its hot loop and
/// its CTAs per SM.
fn facts_of(rows: &[analysis::Row], gpu: &Gpu, k: &str) -> Option<model::KernelFacts> {
    let r = rows.iter().find(|r| r.kernel == k && r.arch == gpu.arch)?;
    let ctas = r.occupancy.iter().find(|(g, _)| *g == gpu.name).map(|(_, o)| o.ctas)?;
    Some(model::KernelFacts { per_hmma: r.hot.as_ref()?.per_hmma(), ctas_per_sm: ctas })
}

/// Pattention shapes of the released configs: (label, d, n), distinct (d, n).
/// Attention shapes: (label, heads, head_dim, seq), distinct (heads, hd).
type Shapes = (Vec<(String, u64, u64)>, Vec<(String, u64, u64, u64)>);

fn shapes() -> Result<Shapes, String> {
    let mut pat: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut att: BTreeMap<(u64, u64), (String, u64)> = BTreeMap::new();
    for name in tf_ref::CONFIG_NAMES.iter().filter(|n| **n != "tiny") {
        let c = tf_ref::TokenformerConfig::by_name(name).map_err(|e| e.to_string())?;
        let mut slots = vec![("qkv", c.qkv_slots), ("proj", c.proj_slots), ("ffn", c.ffn_slots)];
        if c.qkv_slots == c.proj_slots {
            slots[0].0 = "qkv/proj";
            slots.remove(1);
        }
        for (slot, n) in slots {
            pat.entry((c.d as u64, n as u64)).or_insert_with(|| format!("{name} {slot}"));
        }
        att.entry((c.heads as u64, c.head_dim() as u64)).or_insert((name.to_string(), c.seq as u64));
    }
    let pat = pat.into_iter().map(|((d, n), l)| (l, d, n)).collect();
    let att = att.into_iter().map(|((h, hd), (l, seq))| (l, h, hd, seq)).collect();
    Ok((pat, att))
}

fn us(s: f64) -> String {
    format!("{:.1}", s * 1e6)
}

/// The estimate tables of one GPU, as text and JSON.
fn device_tables(gpu: &Gpu, facts: model::Facts<'_>) -> Result<(String, serde_json::Value), String> {
    use serde_json::json;
    let (pat, att) = shapes()?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== {} ({} SMs, {:.2} GHz, {:.2} TB/s, {:.0} TFLOP/s bf16 dense, HMMA.16816 {} cycles/sub-partition, cuBLAS at {:.0}%): ESTIMATES, not measurements",
        gpu.name,
        gpu.sms,
        gpu.clock_hz / 1e9,
        gpu.hbm_bytes_s / 1e12,
        gpu.tensor_peak / 1e12,
        gpu.hmma_cycles,
        gpu.cublas_eff * 100.0
    );
    let _ = writeln!(
        s,
        "{:<9} {:<26} {:>5} {:>6} {:>6} {:>10} {:>8} {:>6} {:>10} {:>9} {:>8} {:>9}",
        "",
        "pattention bf16 (d, n)",
        "t",
        "path",
        "bound",
        "fused µs",
        "issue",
        "tensor",
        "unfused µs",
        "dense µs",
        "floor µs",
        "unf/fused"
    );
    let mut jp = Vec::new();
    for (label, d, n) in &pat {
        for &t in &TOKENS {
            let e = model::pattention(gpu, facts, t, *n, *d, *d);
            let fused = e.seconds();
            let unf = model::unfused(gpu, t, *n, *d, *d);
            let dense = model::gemm(gpu, t as f64, *d as f64, *d as f64);
            let (issue, tensor): (f64, f64) =
                e.launches.iter().fold((0.0, 0.0), |a, l| (a.0 + l.issue_s, a.1 + l.tensor_s));
            let bound = e.launches.iter().max_by(|a, b| a.seconds().total_cmp(&b.seconds())).map_or("-", |l| l.bound());
            let shape = format!("{label} ({d}, {n})");
            let _ = writeln!(
                s,
                "{:<9} {:<26} {:>5} {:>6} {:>6} {:>10} {:>8} {:>6} {:>10} {:>9} {:>8} {:>8.2}x",
                "estimate",
                shape,
                t,
                e.path,
                bound,
                us(fused),
                us(issue),
                us(tensor),
                us(unf),
                us(dense),
                us(e.floor(gpu)),
                unf / fused
            );
            jp.push(json!({"shape": label, "d": d, "n": n, "t": t, "path": e.path, "fused_s": fused, "unfused_s": unf,
                "dense_s": dense, "floor_s": e.floor(gpu), "flops": e.flops, "min_bytes": e.min_bytes,
                "launches": launches_json(&e)}));
        }
    }
    let _ = writeln!(
        s,
        "{:<9} {:<26} {:>5} {:>6} {:>6} {:>10} {:>8} {:>6} {:>10}",
        "", "attention bf16 (heads, hd)", "t", "path", "bound", "fused µs", "issue", "tensor", "floor µs"
    );
    let mut ja = Vec::new();
    for (label, h, hd, seq) in &att {
        for &t in &TOKENS {
            let e = model::attention(gpu, facts, model::Attn::tokenformer(t, *seq, *h, *hd));
            let (issue, tensor): (f64, f64) =
                e.launches.iter().fold((0.0, 0.0), |a, l| (a.0 + l.issue_s, a.1 + l.tensor_s));
            let bound = e.launches.first().map_or("-", |l| l.bound());
            let mode = if t == 1 { format!("kv {seq}") } else { "causal".into() };
            let shape = format!("{label} ({h}, {hd}) {mode}");
            let _ = writeln!(
                s,
                "{:<9} {:<26} {:>5} {:>6} {:>6} {:>10} {:>8} {:>6} {:>10}",
                "estimate",
                shape,
                t,
                e.path,
                bound,
                us(e.seconds()),
                us(issue),
                us(tensor),
                us(e.floor(gpu))
            );
            ja.push(json!({"shape": label, "heads": h, "head_dim": hd, "t": t, "kv": if t == 1 { *seq } else { t },
                "seconds": e.seconds(), "floor_s": e.floor(gpu), "flops": e.flops, "launches": launches_json(&e)}));
        }
    }
    // The attention backward at training lengths, beside the forward.
    let _ = writeln!(
        s,
        "{:<9} {:<26} {:>5} {:>6} {:>6} {:>10} {:>8} {:>6} {:>10} {:>8}",
        "", "attention bwd bf16 (heads, hd)", "t", "path", "bound", "bwd µs", "issue", "tensor", "floor µs", "bwd/fwd"
    );
    let mut jab = Vec::new();
    for (label, h, hd, _) in &att {
        for &t in &[2048u64, 16384] {
            let a = model::Attn::tokenformer(t, t, *h, *hd);
            let e = model::attention_backward(gpu, facts, a);
            let fwd = model::attention(gpu, facts, a).seconds();
            let (issue, tensor): (f64, f64) =
                e.launches.iter().fold((0.0, 0.0), |a, l| (a.0 + l.issue_s, a.1 + l.tensor_s));
            let bound = e.launches.iter().max_by(|a, b| a.seconds().total_cmp(&b.seconds())).map_or("-", |l| l.bound());
            let _ = writeln!(
                s,
                "{:<9} {:<26} {:>5} {:>6} {:>6} {:>10} {:>8} {:>6} {:>10} {:>7.2}x",
                "estimate",
                format!("{label} ({h}, {hd}) causal"),
                t,
                e.path,
                bound,
                us(e.seconds()),
                us(issue),
                us(tensor),
                us(e.floor(gpu)),
                e.seconds() / fwd
            );
            jab.push(json!({"shape": label, "heads": h, "head_dim": hd, "t": t, "seconds": e.seconds(),
                "forward_s": fwd, "floor_s": e.floor(gpu), "flops": e.flops, "launches": launches_json(&e)}));
        }
    }
    // The backward's parameter-gradient products, dK_P [n, d] and dV_P [n, d],
    // each a sum over the tokens of one sequence (or of a batch of them).
    let _ = writeln!(
        s,
        "{:<9} {:<26} {:>5} {:>6} {:>6} {:>10} {:>8} {:>6} {:>10} {:>9} {:>8} {:>9}",
        "",
        "backward dK_P (n, d) bf16",
        "t",
        "path",
        "bound",
        "split µs",
        "slices",
        "grid",
        "whole µs",
        "cuBLAS µs",
        "floor µs",
        "whole/split"
    );
    let mut jb = Vec::new();
    for (label, d, n) in &pat {
        for &t in &[2048u64, 16384] {
            let e = model::backward_product(gpu, facts, *n, *d, t, true);
            let w = model::backward_product(gpu, facts, *n, *d, t, false);
            let cublas = model::gemm(gpu, *n as f64, *d as f64, t as f64);
            let (slices, _) = model::gemm_split(gpu.sms as u64, *n, *d, t);
            let bound = e.launches.first().map_or("-", |l| l.bound());
            let _ = writeln!(
                s,
                "{:<9} {:<26} {:>5} {:>6} {:>6} {:>10} {:>8} {:>6} {:>10} {:>9} {:>8} {:>10.2}x",
                "estimate",
                format!("{label} ({n}, {d})"),
                t,
                e.path,
                bound,
                us(e.seconds()),
                slices,
                e.launches.first().map_or(0, |l| l.grid),
                us(w.seconds()),
                us(cublas),
                us(e.floor(gpu)),
                w.seconds() / e.seconds()
            );
            jb.push(json!({"shape": label, "n": n, "d": d, "t": t, "slices": slices, "split_s": e.seconds(),
                "whole_s": w.seconds(), "cublas_s": cublas, "floor_s": e.floor(gpu), "launches": launches_json(&e)}));
        }
    }
    // The whole Pattention backward, recomputing A and from kept scores.
    let _ = writeln!(
        s,
        "{:<9} {:<26} {:>5} {:>13} {:>9} {:>10} {:>8} {:>12}",
        "", "pattention bwd bf16 (d, n)", "t", "recompute µs", "kept µs", "kept/rec", "floor µs", "kept MB"
    );
    let mut jpb = Vec::new();
    for (label, d, n) in &pat {
        for &t in &[2048u64, 16384] {
            let r = model::pattention_backward(gpu, facts, t, *n, *d, *d, false);
            let k = model::pattention_backward(gpu, facts, t, *n, *d, *d, true);
            let kept_mb = (t * n.next_multiple_of(8)) as f64 * model::ELEM / 1e6;
            let _ = writeln!(
                s,
                "{:<9} {:<26} {:>5} {:>13} {:>9} {:>9.2}x {:>8} {:>12.1}",
                "estimate",
                format!("{label} ({d}, {n})"),
                t,
                us(r.seconds()),
                us(k.seconds()),
                k.seconds() / r.seconds(),
                us(r.floor(gpu)),
                kept_mb
            );
            jpb.push(json!({"shape": label, "d": d, "n": n, "t": t, "recompute_s": r.seconds(), "kept_s": k.seconds(),
                "floor_s": r.floor(gpu), "kept_bytes": kept_mb * 1e6, "launches": launches_json(&r),
                "kept_launches": launches_json(&k)}));
        }
    }
    s.push('\n');
    let j = json!({"gpu": gpu.name, "arch": gpu.arch, "sms": gpu.sms, "clock_hz": gpu.clock_hz, "hbm_bytes_s": gpu.hbm_bytes_s,
        "tensor_peak": gpu.tensor_peak, "hmma_cycles": gpu.hmma_cycles, "cublas_efficiency": gpu.cublas_eff,
        "estimate": true, "pattention": jp, "attention": ja, "attention_backward": jab, "backward": jb, "pattention_backward": jpb});
    Ok((s, j))
}

fn launches_json(e: &model::OpEstimate) -> Vec<serde_json::Value> {
    e.launches
        .iter()
        .map(|l| {
            serde_json::json!({"kernel": l.kernel, "grid": l.grid, "waves": l.waves, "hmma_per_cta": l.hmma_per_cta,
                "issue_s": l.issue_s, "tensor_s": l.tensor_s, "memory_s": l.memory_s, "bound": l.bound()})
        })
        .collect()
}
