//! The SASS analyzer: `cuobjdump -sass` text → functions → loops → issued
//! instructions per HMMA of the hot loop nest.
//!
//! A loop is a backward branch: a `BRA` (predicated `@P0 BRA` / `@!P0 BRA` or
//! not) whose target address is at or below its own. Its body is the address
//! range [target, branch]. Back edges to one target merge into one loop (the
//! furthest branch). A range holding an unpredicated `EXIT` is not a loop: that
//! is the shape of the out-of-line code after a `BRA.DIV`, which jumps back into
//! the function. Loops nest by range containment.
//!
//! Counts are static: every instruction of a body counts once per iteration
//! (forward branches inside a body are not followed), and a nested loop's body
//! counts its trip count times (given by the caller: a stated assumption).

use std::collections::BTreeMap;

/// One SASS instruction.
#[derive(Debug, Clone, PartialEq)]
pub struct Instr {
    /// Byte address inside the function.
    pub addr: u64,
    /// Guard predicate (`P0`, `!P0`, `UP1`, ...), if any.
    pub pred: Option<String>,
    /// The full opcode with modifiers, e.g. `HMMA.16816.F32.BF16`.
    pub opcode: String,
    /// Branch target (the last hexadecimal operand of a `BRA`).
    pub target: Option<u64>,
    /// Conditional: a guard predicate, or a predicate operand (`BRA.U !UP0, 0x..`).
    pub cond: bool,
}

impl Instr {
    /// The opcode without modifiers: `HMMA`, `IMAD`, `LDSM`, ...
    pub fn class(&self) -> &str {
        self.opcode.split('.').next().unwrap_or(&self.opcode)
    }
}

/// One function of one arch.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// The kernel's name.
    pub name: String,
    /// `sm_80`, `sm_90a`, ...
    pub arch: String,
    /// Its instructions in address order.
    pub instrs: Vec<Instr>,
}

/// Parses `cuobjdump -sass` output (every arch, every function).
pub fn parse(text: &str) -> Vec<Function> {
    let mut arch = String::new();
    let mut out: Vec<Function> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(a) = l.strip_prefix("code for ").or_else(|| l.strip_prefix(".target")) {
            arch = a.trim().to_string();
        } else if let Some(name) = l.strip_prefix("Function : ") {
            out.push(Function { name: name.trim().to_string(), arch: arch.clone(), instrs: Vec::new() });
        } else if let (Some(f), Some(i)) = (out.last_mut(), parse_instr(l)) {
            f.instrs.push(i);
        }
    }
    out
}

/// `/*0a70*/  @P0 BRA 0xb80 ;  /* 0x... */` → an instruction; encoding-only and
/// other lines → None.
fn parse_instr(l: &str) -> Option<Instr> {
    let rest = l.strip_prefix("/*")?;
    let (addr, rest) = rest.split_once("*/")?;
    let addr = u64::from_str_radix(addr.trim(), 16).ok()?;
    let body = rest.split(';').next()?.trim();
    let mut toks = body.split_whitespace();
    let first = toks.next()?;
    let (pred, opcode) = match first.strip_prefix('@') {
        Some(p) => (Some(p.to_string()), toks.next()?.to_string()),
        None => (None, first.to_string()),
    };
    let target = if opcode.starts_with("BRA") {
        body.split([' ', ','])
            .filter_map(|t| t.strip_prefix("0x"))
            .filter_map(|h| u64::from_str_radix(h, 16).ok())
            .next_back()
    } else {
        None
    };
    let pred_operand = opcode.starts_with("BRA")
        && toks.next().is_some_and(|t| {
            let t = t.trim_start_matches('!');
            (t.starts_with('P') || t.starts_with("UP")) && t != "PT," && t != "UPT,"
        });
    let cond = pred.is_some() || pred_operand;
    Some(Instr { addr, pred, opcode, target, cond })
}

/// A loop: instruction indices [start, end] (end = the back-edge branch).
#[derive(Debug, Clone, PartialEq)]
pub struct Loop {
    /// Index of the first instruction of the body (the branch target).
    pub start: usize,
    /// Index of the back-edge branch.
    pub end: usize,
    /// Loops nested directly inside.
    pub children: Vec<Loop>,
}

impl Loop {
    fn contains(&self, other: &Loop) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}

/// The loops of `f`, outermost first, nested by containment. A loop that
/// overlaps another without containing it or being contained is kept at the
/// outer level.
pub fn loops(f: &Function) -> Vec<Loop> {
    let index: BTreeMap<u64, usize> = f.instrs.iter().enumerate().map(|(i, x)| (x.addr, i)).collect();
    let mut by_start: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, ins) in f.instrs.iter().enumerate() {
        let Some(t) = ins.target.filter(|&t| t <= ins.addr) else { continue };
        let Some(&s) = index.get(&t) else { continue };
        let exits = f.instrs[s..=i].iter().any(|x| x.class() == "EXIT" && x.pred.is_none());
        if !exits {
            let e = by_start.entry(s).or_insert(i);
            *e = (*e).max(i);
        }
    }
    let mut flat: Vec<Loop> = by_start.into_iter().map(|(start, end)| Loop { start, end, children: vec![] }).collect();
    flat.sort_by_key(|l| (l.start, std::cmp::Reverse(l.end)));
    let mut roots: Vec<Loop> = Vec::new();
    for l in flat {
        insert(&mut roots, l);
    }
    roots
}

fn insert(level: &mut Vec<Loop>, l: Loop) {
    match level.last_mut() {
        Some(parent) if parent.contains(&l) => insert(&mut parent.children, l),
        _ => level.push(l),
    }
}

/// Instruction counts by class, weighted by trip counts.
pub type Counts = BTreeMap<String, f64>;

/// Counts of `l`'s body: its own instructions once, each nested loop's counts
/// times `trips(depth)` (depth 1 = directly inside `l`).
pub fn weighted(f: &Function, l: &Loop, trips: &dyn Fn(usize) -> f64) -> Counts {
    weighted_at(f, l, trips, 1)
}

fn weighted_at(f: &Function, l: &Loop, trips: &dyn Fn(usize) -> f64, depth: usize) -> Counts {
    let mut c = Counts::new();
    let mut i = l.start;
    for child in &l.children {
        for x in &f.instrs[i..child.start] {
            *c.entry(x.class().to_string()).or_default() += 1.0;
        }
        let w = trips(depth);
        for (k, v) in weighted_at(f, child, trips, depth + 1) {
            *c.entry(k).or_default() += v * w;
        }
        i = child.end + 1;
    }
    for x in &f.instrs[i..=l.end] {
        *c.entry(x.class().to_string()).or_default() += 1.0;
    }
    c
}

/// The hot loop nest of a function and what it issues.
#[derive(Debug, Clone, PartialEq)]
pub struct HotLoop {
    /// Address of the first instruction and of the back edge.
    pub addrs: (u64, u64),
    /// Nesting depth below it (0: no nested loop).
    pub depth: usize,
    /// Counts by class along the issued path (path.rs), nested loops weighted.
    pub counts: Counts,
    /// Counts by class of every instruction of the body, nested loops weighted.
    pub static_counts: Counts,
    /// Loops of the function that contain HMMA (any level).
    pub hmma_loops: usize,
}

impl HotLoop {
    /// All weighted instructions.
    pub fn total(&self) -> f64 {
        self.counts.values().sum()
    }
    /// Weighted HMMAs.
    pub fn hmma(&self) -> f64 {
        self.count("HMMA")
    }
    /// Weighted count of one class.
    pub fn count(&self, class: &str) -> f64 {
        self.counts.get(class).copied().unwrap_or(0.0)
    }
    /// Issued instructions per HMMA along the issued path (the HMMA included).
    pub fn per_hmma(&self) -> f64 {
        self.total() / self.hmma().max(1.0)
    }
    /// Instructions of the whole body per HMMA of the whole body.
    pub fn static_per_hmma(&self) -> f64 {
        let h = self.static_counts.get("HMMA").copied().unwrap_or(0.0);
        self.static_counts.values().sum::<f64>() / h.max(1.0)
    }
}

fn depth(l: &Loop) -> usize {
    l.children.iter().map(|c| 1 + depth(c)).max().unwrap_or(0)
}

fn count_hmma_loops(f: &Function, ls: &[Loop]) -> usize {
    ls.iter()
        .map(|l| {
            let own = f.instrs[l.start..=l.end].iter().any(|x| x.class() == "HMMA") as usize;
            own + count_hmma_loops(f, &l.children)
        })
        .sum()
}

/// The outermost loop holding the most (weighted) HMMAs, None when no loop
/// holds one.
pub fn hot_loop(f: &Function, trips: &dyn Fn(usize) -> f64) -> Option<HotLoop> {
    let roots = loops(f);
    let hmma_loops = count_hmma_loops(f, &roots);
    roots
        .iter()
        .map(|l| (l, weighted(f, l, trips)))
        .filter(|(_, c)| c.get("HMMA").is_some_and(|&h| h > 0.0))
        .max_by(|a, b| a.1["HMMA"].total_cmp(&b.1["HMMA"]))
        .map(|(l, static_counts)| HotLoop {
            addrs: (f.instrs[l.start].addr, f.instrs[l.end].addr),
            depth: depth(l),
            counts: super::path::issued(f, l, trips),
            static_counts,
            hmma_loops,
        })
}

/// Every outermost loop holding HMMA, as (HMMAs, issued instructions per HMMA)
/// along its issued path: the kernels keep specialised copies of a loop (a
/// whole tile, a branch-free row count), and the ratchet checks the copy it
/// names by its HMMA count.
pub fn loop_costs(f: &Function, trips: &dyn Fn(usize) -> f64) -> Vec<(f64, f64)> {
    loops(f)
        .iter()
        .map(|l| super::path::issued(f, l, trips))
        .filter_map(|c| {
            let h = c.get("HMMA").copied().unwrap_or(0.0);
            (h > 0.0).then(|| (h, c.values().sum::<f64>() / h))
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A function from lines "ADDR [PRED] OPCODE [TARGET]" in cuobjdump's format.
    pub(in crate::perf) fn sass(body: &[&str]) -> String {
        let mut s = String::from("\tcode for sm_80\n\t\tFunction : k\n");
        for l in body {
            let (addr, rest) = l.split_once(' ').unwrap();
            s.push_str(&format!("        /*{addr}*/   {rest} ;   /* 0x000 */\n"));
            s.push_str("                                  /* 0x000fe2 */\n");
        }
        s
    }

    #[test]
    fn parses_predicates_targets_and_classes() {
        let f = &parse(&sass(&["0000 IMAD.MOV.U32 R1, RZ, RZ, c[0x0][0x28]", "0010 @!P0 BRA 0x0", "0020 EXIT"]))[0];
        assert_eq!((f.name.as_str(), f.arch.as_str(), f.instrs.len()), ("k", "sm_80", 3));
        assert_eq!(f.instrs[0].class(), "IMAD");
        assert_eq!((f.instrs[1].pred.as_deref(), f.instrs[1].target), (Some("!P0"), Some(0)));
    }

    #[test]
    fn single_predicated_loop() {
        // prologue; loop [0x10, 0x50] with 2 HMMA in 5 instructions; epilogue
        let f = &parse(&sass(&[
            "0000 MOV R0, RZ",
            "0010 LDSM.16.M88.4 R4, [R2]",
            "0020 HMMA.16816.F32.BF16 R8, R4, R6, R8",
            "0030 HMMA.16816.F32.BF16 R12, R4, R6, R12",
            "0040 ISETP.GE.AND P0, PT, R0, 0x4, PT",
            "0050 @!P0 BRA 0x10",
            "0060 EXIT",
        ]))[0];
        let h = hot_loop(f, &|_| 1.0).unwrap();
        assert_eq!((h.addrs, h.depth, h.hmma_loops), ((0x10, 0x50), 0, 1));
        assert_eq!(h.per_hmma(), 2.5);
        assert_eq!(h.count("LDSM"), 1.0);
    }

    #[test]
    fn nested_loop_weighted_by_trips() {
        // outer [0x10, 0x70] (3 own instructions + BRA), inner [0x20, 0x40] 2 HMMA + BRA
        let f = &parse(&sass(&[
            "0000 MOV R0, RZ",
            "0010 LDGSTS.E.BYPASS.128 [R1], [R2.64]",
            "0020 HMMA.16816.F32 R8, R4, R6, R8",
            "0030 HMMA.16816.F32 R12, R4, R6, R12",
            "0040 @P1 BRA 0x20",
            "0050 BAR.SYNC.DEFER_BLOCKING 0x0",
            "0060 IADD3 R0, R0, 0x1, RZ",
            "0070 @P0 BRA 0x10",
            "0080 EXIT",
        ]))[0];
        let h = hot_loop(f, &|d| if d == 1 { 4.0 } else { 1.0 }).unwrap();
        assert_eq!((h.addrs, h.depth, h.hmma_loops), ((0x10, 0x70), 1, 2));
        assert_eq!(h.hmma(), 8.0);
        // 4 own (LDGSTS, BAR, IADD3, BRA) + 4 x 3 inner = 16 over 8 HMMA
        assert_eq!(h.total(), 16.0);
        assert_eq!(h.per_hmma(), 2.0);
    }

    #[test]
    fn out_of_line_jump_back_is_no_loop_and_loops_without_hmma_are_skipped() {
        let f = &parse(&sass(&[
            "0000 HMMA.16816.F32 R8, R4, R6, R8",
            "0010 BRA.DIV UR4, 0x60",
            "0020 SHFL.BFLY PT, R1, R2, 0x1, 0x1f",
            "0030 IADD3 R0, R0, 0x1, RZ",
            "0040 @P0 BRA 0x30",
            "0050 EXIT",
            "0060 WARPSYNC.ALL",
            "0070 BRA 0x20",
            "0080 BRA 0x80",
        ]))[0];
        let ls = loops(f);
        // [0x30, 0x40] is a loop; [0x20, 0x70] holds EXIT; 0x80 jumps to itself
        assert_eq!(ls.iter().map(|l| (l.start, l.end)).collect::<Vec<_>>(), vec![(3, 4), (8, 8)]);
        assert!(hot_loop(f, &|_| 1.0).is_none());
    }

    #[test]
    fn the_loop_with_most_hmma_is_hot() {
        let f = &parse(&sass(&[
            "0000 HMMA.16816.F32 R8, R4, R6, R8",
            "0010 @P0 BRA 0x0",
            "0020 HMMA.16816.F32 R8, R4, R6, R8",
            "0030 HMMA.16816.F32 R8, R4, R6, R8",
            "0040 IMAD R0, R0, 0x2, RZ",
            "0050 IMAD R0, R0, 0x2, RZ",
            "0060 @P0 BRA 0x20",
        ]))[0];
        let h = hot_loop(f, &|_| 1.0).unwrap();
        assert_eq!((h.addrs, h.hmma_loops, h.per_hmma()), ((0x20, 0x60), 2, 2.5));
    }
}
