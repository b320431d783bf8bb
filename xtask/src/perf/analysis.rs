//! Per kernel and arch: registers, shared memory, CTAs per SM on each GPU of
//! the arch, and the hot loop nest's instruction mix (the analyzer table).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::occupancy::{launch_of, occupancy, Occupancy, Ptxas, GPUS};
use super::path::{epilogue, Epilogue};
use super::sass::{hot_loop, loop_costs, Function, HotLoop};

/// Trip count assumed for a loop nested inside a kernel's hot loop. The
/// attention kernels' K-block loop holds one nested loop: the k16 steps of
/// S = Q·Kᵀ over the head dimension, `hd / 16` of them (with them the hot
/// loop's HMMAs per warp equal the tile's 2 · 2 · (BN / 8) · (hd / 16)). The
/// Pattention mainloops are single loops; a nested loop elsewhere counts once.
pub fn nested_trips(kernel: &str) -> f64 {
    let hd = kernel.rsplit_once("_hd").and_then(|(_, d)| d.parse::<f64>().ok());
    hd.map_or(1.0, |d| (d / 16.0).ceil())
}

/// One row of the analyzer table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Kernel name.
    pub kernel: String,
    /// `sm_80` or `sm_90a`.
    pub arch: String,
    /// ptxas: registers and static shared memory (None: not in the report).
    pub ptxas: Option<Ptxas>,
    /// Threads per CTA and dynamic shared memory of its launch.
    pub launch: Option<(u32, u32)>,
    /// CTAs per SM for each GPU of the arch.
    pub occupancy: Vec<(&'static str, Occupancy)>,
    /// The hot HMMA loop nest.
    pub hot: Option<HotLoop>,
    /// Every outermost HMMA loop: (HMMAs, issued per HMMA) on its issued path.
    pub loops: Vec<(f64, f64)>,
    /// The code after the last HMMA loop.
    pub epilogue: Option<Epilogue>,
}

/// Rows for every function that the model launches or that has an HMMA loop.
pub fn analyse(functions: &[Function], ptxas: &BTreeMap<(String, String), Ptxas>, header: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for f in functions {
        let trips = nested_trips(&f.name);
        let hot = hot_loop(f, &|_| trips);
        let launch = launch_of(header, &f.name);
        let tensor = super::ratchet::family(&f.name).is_some();
        if hot.is_none() && launch.is_none() && !tensor {
            continue;
        }
        let res = ptxas.get(&(f.name.clone(), f.arch.clone())).copied();
        let occupancy = match (res, launch) {
            (Some(p), Some((threads, dynamic))) => GPUS
                .iter()
                .filter(|g| g.arch == f.arch)
                .map(|g| (g.name, occupancy(g, threads, p.regs, p.smem + dynamic)))
                .collect(),
            _ => Vec::new(),
        };
        let epilogue = epilogue(f);
        let loops = loop_costs(f, &|_| trips);
        rows.push(Row {
            kernel: f.name.clone(),
            arch: f.arch.clone(),
            ptxas: res,
            launch,
            occupancy,
            hot,
            loops,
            epilogue,
        });
    }
    rows.sort_by(|a, b| (&a.kernel, &a.arch).cmp(&(&b.kernel, &b.arch)));
    rows
}

/// Instruction classes with a column of their own; the rest sum in "other".
pub const CLASSES: [&str; 11] =
    ["HMMA", "LDSM", "LDGSTS", "LDS", "STS", "BAR", "BRA", "IMAD", "IADD3", "ISETP", "LOP3"];

/// The analyzer table (tensor-core kernels with an HMMA loop first, then the
/// rest with their resources only when `all`).
pub fn table(rows: &[Row], all: bool) -> String {
    let mut s = String::new();
    let _ =
        write!(s, "{:<28} {:<6} {:>4} {:>6} {:>6} {:<19}", "kernel", "arch", "regs", "smem", "dyn", "CTAs/SM (limit)");
    for c in CLASSES {
        let _ = write!(s, " {:>6}", c);
    }
    let _ = writeln!(s, " {:>6} {:>6} {:>7}  hot loop", "other", "/HMMA", "static");
    for r in rows.iter().filter(|r| all || r.hot.is_some()) {
        let (regs, smem) = r.ptxas.map_or(("-".into(), "-".into()), |p| (p.regs.to_string(), p.smem.to_string()));
        let dynamic = r.launch.map_or("-".into(), |l| l.1.to_string());
        let occ: Vec<String> =
            r.occupancy.iter().map(|(g, o)| format!("{}:{}({})", short(g), o.ctas, o.limit)).collect();
        let occ = if occ.is_empty() { "-".into() } else { dedup(occ) };
        let _ = write!(s, "{:<28} {:<6} {:>4} {:>6} {:>6} {:<19}", r.kernel, r.arch, regs, smem, dynamic, occ);
        match &r.hot {
            Some(h) => {
                let named: f64 = CLASSES.iter().map(|c| h.count(c)).sum();
                for c in CLASSES {
                    let _ = write!(s, " {:>6}", fmt_count(h.count(c)));
                }
                let _ = writeln!(
                    s,
                    " {:>6} {:>6.2} {:>7.2}  {:#06x}-{:#06x} depth {}, {} HMMA loops",
                    fmt_count(h.total() - named),
                    h.per_hmma(),
                    h.static_per_hmma(),
                    h.addrs.0,
                    h.addrs.1,
                    h.depth,
                    h.hmma_loops
                );
            }
            None => {
                let _ = writeln!(s, "  (no HMMA loop)");
            }
        }
    }
    s
}

/// Main-loop iterations the epilogue of a family is weighed against: the scores
/// kernel's k-tiles (32 of d_in) at d_in = 1024, the target's reference shape.
pub fn epilogue_reference(kernel: &str) -> Option<f64> {
    kernel.starts_with("pattention_scores").then_some(1024.0 / 32.0)
}

/// The epilogues of the Pattention kernels with an HMMA loop (the attention
/// kernels' code after their last HMMA loop is no epilogue of one tile): the longest path after the
/// last HMMA loop (any runtime branch: the worst norm), the static count, and,
/// where a reference shape is set, the longest path over the main loop's issued
/// instructions at that shape.
pub fn epilogue_table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<28} {:<6} {:>8} {:>7} {:>5}  vs main loop; tensor-core path (HMMA, no shuffle)",
        "epilogue of", "arch", "longest", "static", "loops"
    );
    for r in rows.iter().filter(|r| r.kernel.starts_with("pattention")) {
        let (Some(h), Some(e)) = (&r.hot, &r.epilogue) else { continue };
        let vs = epilogue_reference(&r.kernel).map_or("-".to_string(), |k| {
            let main = h.total() * k;
            let tensor = e.tensor_path.map_or("none".to_string(), |p| format!("{p:.0} = {:.1} %", 100.0 * p / main));
            format!("{:.1} % of {k:.0} x {:.0} (d_in = 1024); {tensor}", 100.0 * e.longest / main, h.total())
        });
        let _ = writeln!(
            s,
            "{:<28} {:<6} {:>8.0} {:>7} {:>5}  {vs}",
            r.kernel, r.arch, e.longest, e.static_instrs, e.loops
        );
    }
    s
}

fn short(gpu: &str) -> &str {
    gpu.split_whitespace().next().unwrap_or(gpu)
}

/// "H100:3(smem) H200:3(smem)" → "H100/H200:3(smem)".
fn dedup(v: Vec<String>) -> String {
    if v.len() == 2 {
        let (a, b) = (v[0].split_once(':'), v[1].split_once(':'));
        if let (Some((ga, ra)), Some((gb, rb))) = (a, b) {
            if ra == rb {
                return format!("{ga}/{gb}:{ra}");
            }
        }
    }
    v.join(" ")
}

fn fmt_count(v: f64) -> String {
    if v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The rows as JSON.
pub fn json(rows: &[Row]) -> serde_json::Value {
    use serde_json::json;
    let v: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "kernel": r.kernel,
                "arch": r.arch,
                "registers": r.ptxas.map(|p| p.regs),
                "static_smem": r.ptxas.map(|p| p.smem),
                "threads": r.launch.map(|l| l.0),
                "dynamic_smem": r.launch.map(|l| l.1),
                "ctas_per_sm": r.occupancy.iter().map(|(g, o)| json!({"gpu": g, "ctas": o.ctas, "limit": o.limit})).collect::<Vec<_>>(),
                "hot_loop": r.hot.as_ref().map(|h| json!({
                    "start": h.addrs.0, "end": h.addrs.1, "depth": h.depth, "hmma_loops": h.hmma_loops,
                    "nested_trips_assumed": nested_trips(&r.kernel),
                    "counts": h.counts, "issued_per_hmma": h.per_hmma(),
                    "static_counts": h.static_counts, "static_per_hmma": h.static_per_hmma(),
                })),
                "hmma_loops": r.loops.iter().map(|(h, p)| json!({"hmma": h, "issued_per_hmma": p})).collect::<Vec<_>>(),
                "epilogue": r.epilogue.map(|e| json!({
                    "longest_path": e.longest, "static": e.static_instrs, "loops": e.loops, "tensor_path": e.tensor_path,
                })),
            })
        })
        .collect();
    serde_json::Value::Array(v)
}
