//! `cargo xtask perf --calibrate FILE`: the model's error against measured
//! times, and the constants refitted from them.
//!
//! FILE holds the benches' JSON lines (`TF_BENCH_JSON`: one object a line with
//! `family`, `case`, `variant`, `seconds`), or a Markdown table with the
//! columns `family | case | variant | time (us) | ...` (the device kit's
//! `table.md`). Cases the model covers: `bf16/l2_norm_gelu/d{D}_n{N}_t{T}`
//! (variants `fused`, `unfused(cuBLAS)`, `dense dxd (cuBLAS)`),
//! `bf16/hd{HD}_s{S}_b{B}_h{H}_{causal|full}` (variant `flash`) and, family
//! `pattention_backward`, `bf16/d{D}_n{N}_t{T}` (variants `backward`,
//! `backward (kept scores)`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::model::{self, Attn, Facts};
use super::occupancy::Gpu;

/// One measured time.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// `pattention`, `attention`, ...
    pub family: String,
    /// The bench's case id.
    pub case: String,
    /// The variant.
    pub variant: String,
    /// Seconds per call.
    pub seconds: f64,
}

/// Every measurement in `text` (JSON lines or a Markdown table); lines of
/// other shapes are skipped.
pub fn parse(text: &str) -> Vec<Measured> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('{') {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            if let (Some(family), Some(case), Some(variant), Some(seconds)) =
                (s("family"), s("case"), s("variant"), v.get("seconds").and_then(|x| x.as_f64()))
            {
                out.push(Measured { family, case, variant, seconds });
            }
        } else if line.starts_with('|') {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if let [family, case, variant, time, ..] = cells[..] {
                if let Ok(us) = time.parse::<f64>() {
                    out.push(Measured {
                        family: family.into(),
                        case: case.into(),
                        variant: variant.into(),
                        seconds: us * 1e-6,
                    });
                }
            }
        }
    }
    out
}

/// `d1024_n1024_t16384` → the numbers after each letter prefix, in order.
fn numbers(id: &str) -> Vec<u64> {
    id.split('_').filter_map(|p| p.trim_start_matches(|c: char| c.is_ascii_alphabetic()).parse().ok()).collect()
}

/// The model's estimate of one measurement and the term that binds it
/// (`memory`, `tensor`, `issue`, or `cublas`), None where the model has none.
fn estimate(gpu: &Gpu, facts: Facts<'_>, m: &Measured) -> Option<(f64, &'static str)> {
    let mut parts = m.case.split('/');
    if parts.next()? != "bf16" {
        return None;
    }
    match m.family.as_str() {
        "pattention" => {
            if parts.next()? != "l2_norm_gelu" {
                return None;
            }
            let [d, n, t] = numbers(parts.next()?)[..] else { return None };
            match m.variant.as_str() {
                "fused" => {
                    let e = model::pattention(gpu, facts, t, n, d, d);
                    let bound = e.launches.iter().max_by(|a, b| a.seconds().total_cmp(&b.seconds()))?.bound();
                    Some((e.seconds(), bound))
                }
                "unfused(cuBLAS)" => Some((model::unfused(gpu, t, n, d, d), "cublas")),
                v if v.starts_with("dense") => Some((model::gemm(gpu, t as f64, d as f64, d as f64), "cublas")),
                _ => None,
            }
        }
        "pattention_backward" => {
            let [d, n, t] = numbers(parts.next()?)[..] else { return None };
            let kept = match m.variant.as_str() {
                "backward" => false,
                "backward (kept scores)" => true,
                _ => return None,
            };
            let e = model::pattention_backward(gpu, facts, t, n, d, d, kept);
            let bound = e.launches.iter().max_by(|a, b| a.seconds().total_cmp(&b.seconds()))?.bound();
            Some((e.seconds(), bound))
        }
        "attention" if m.variant == "flash" => {
            let id = parts.next()?;
            let [hd, s, b, h] = numbers(id)[..] else { return None };
            let a = Attn { b, t_q: s, t_k: s, heads: h, hd, causal: id.ends_with("causal") };
            let e = model::attention(gpu, facts, a);
            Some((e.seconds(), e.launches.first()?.bound()))
        }
        _ => None,
    }
}

/// The error table and refitted constants for `gpu`.
pub fn report(gpu: &Gpu, facts: Facts<'_>, measured: &[Measured]) -> String {
    let mut s = String::new();
    if measured.is_empty() {
        let _ = writeln!(s, "calibration: no measurements in the file; nothing to calibrate");
        return s;
    }
    let _ = writeln!(
        s,
        "calibration against {} measurements, model of {} (estimates vs measured):",
        measured.len(),
        gpu.name
    );
    let _ = writeln!(
        s,
        "{:<12} {:<44} {:<20} {:>11} {:>12} {:>8} {:>7}",
        "family", "case", "variant", "measured µs", "estimate µs", "error", "bound"
    );
    let mut ratios: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for m in measured {
        let Some((est, bound)) = estimate(gpu, facts, m) else { continue };
        let err = (est - m.seconds) / m.seconds * 100.0;
        let _ = writeln!(
            s,
            "{:<12} {:<44} {:<20} {:>11.1} {:>12.1} {:>7.0}% {:>7}",
            m.family,
            m.case,
            m.variant,
            m.seconds * 1e6,
            est * 1e6,
            err,
            bound
        );
        ratios.entry(bound).or_default().push(m.seconds / est);
    }
    if ratios.is_empty() {
        let _ = writeln!(s, "no measurement is of a case the model covers");
        return s;
    }
    let _ = writeln!(s, "refitted constants (median of measured / estimate over the cases each term binds):");
    for (bound, mut r) in ratios {
        r.sort_by(f64::total_cmp);
        let k = r[r.len() / 2];
        let line = match bound {
            "memory" => {
                format!("HBM bandwidth {:.2} TB/s (model {:.2})", gpu.hbm_bytes_s / k / 1e12, gpu.hbm_bytes_s / 1e12)
            }
            "tensor" => format!("cycles per HMMA.16816 {:.2} (model {})", gpu.hmma_cycles * k, gpu.hmma_cycles),
            "issue" => format!("issue efficiency {:.2} of 1 instruction/clock/scheduler (model 1)", 1.0 / k),
            _ => format!(
                "cuBLAS efficiency {:.0}% of peak (model {:.0}%)",
                gpu.cublas_eff / k * 100.0,
                gpu.cublas_eff * 100.0
            ),
        };
        let _ = writeln!(s, "  {bound:<7} {} cases, ratio {k:.2}: {line}", r.len());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::occupancy::GPUS;
    use super::*;

    #[test]
    fn json_lines_and_markdown() {
        let text = "{\"family\":\"pattention\",\"case\":\"bf16/l2_norm_gelu/d1024_n1024_t16384\",\"variant\":\"fused\",\"flops\":1,\"min_bytes\":1,\"seconds\":1.5e-4}\n\
                    | attention | bf16/hd64_s1024_b4_h16_causal | flash | 120.5 | 100 | 1 | 50% |\n\
                    | family | case | variant | time (us) |\nnot a row\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].variant.as_str(), m[0].seconds), ("fused", 1.5e-4));
        assert!((m[1].seconds - 120.5e-6).abs() < 1e-12);
        let facts = |_: &str| Some(model::KernelFacts { per_hmma: 3.0, ctas_per_sm: 2 });
        let r = report(&GPUS[2], &facts, &m);
        assert!(r.contains("refitted constants"), "{r}");
        assert!(report(&GPUS[2], &facts, &[]).contains("no measurements"));
    }

    /// The Pattention backward's bench rows map to the model, both variants;
    /// the recompute product alone does not.
    #[test]
    fn pattention_backward_rows() {
        let line = |v: &str| {
            format!("{{\"family\":\"pattention_backward\",\"case\":\"bf16/d1024_n1024_t16384\",\"variant\":\"{v}\",\"seconds\":5e-4}}")
        };
        let m = parse(&[line("backward"), line("backward (kept scores)"), line("recompute A (gemm_tc)")].join("\n"));
        assert_eq!(m.len(), 3);
        let facts = |_: &str| Some(model::KernelFacts { per_hmma: 2.6, ctas_per_sm: 2 });
        let e: Vec<Option<f64>> = m.iter().map(|m| estimate(&GPUS[2], &facts, m).map(|e| e.0)).collect();
        let (r, k) = (e[0].unwrap(), e[1].unwrap());
        assert!(k < r && k > 0.5 * r, "recompute {r}, kept {k}");
        assert!(e[2].is_none());
    }

    #[test]
    fn case_numbers() {
        assert_eq!(numbers("d1024_n768_t1"), vec![1024, 768, 1]);
        assert_eq!(numbers("hd64_s1024_b4_h16_causal"), vec![64, 1024, 4, 16]);
    }
}
