//! The issued path through a loop body: the body's forward branches make a DAG
//! from the loop's first instruction to its back edge; the path taken is the one
//! with the most HMMAs, then the most `LDGSTS` (a mainloop's cp.async of the next
//! stage runs in every steady-state iteration, even where a bounds test guards
//! it), then the fewest instructions. Other regions a forward branch can skip (a
//! q-factor prefetch once per n-tile, a predicated epilogue) are assumed skipped:
//! an estimate of one steady-state iteration, where the static count of sass.rs
//! charges every instruction of the body.
//!
//! Edges: the next instruction (unless after an unconditional `BRA` or `EXIT`);
//! a forward `BRA` target inside the body (`BRA.DIV` targets are out-of-line
//! code: not followed). A branch out of the body ends that path (conditional:
//! the fall-through continues). A nested loop is one node: its weighted counts
//! times its trip count, continuing after its back edge.

use super::sass::{loops, weighted, Counts, Function, Loop};

#[derive(Clone, Copy)]
struct Best {
    hmma: f64,
    loads: f64,
    instrs: f64,
    next: Option<usize>,
}

/// Counts by class along the issued path of loop `l`.
pub fn issued(f: &Function, l: &Loop, trips: &dyn Fn(usize) -> f64) -> Counts {
    let node_cost = |i: usize| -> Counts {
        match l.children.iter().find(|c| c.start == i) {
            Some(c) => weighted(f, c, &|d| trips(d + 1)).into_iter().map(|(k, v)| (k, v * trips(1))).collect(),
            None => Counts::from([(f.instrs[i].class().to_string(), 1.0)]),
        }
    };
    let inside_child = |i: usize| l.children.iter().any(|c| c.start < i && i <= c.end);
    let index_of = |addr: u64| f.instrs[l.start..=l.end].iter().position(|x| x.addr == addr).map(|p| p + l.start);
    let mut best: Vec<Option<Best>> = vec![None; l.end + 1];
    for i in (l.start..=l.end).rev() {
        if inside_child(i) {
            continue;
        }
        let cost = node_cost(i);
        let get = |k: &str| cost.get(k).copied().unwrap_or(0.0);
        let (h, ld, n) = (get("HMMA"), get("LDGSTS"), cost.values().sum::<f64>());
        if i == l.end {
            best[i] = Some(Best { hmma: h, loads: ld, instrs: n, next: None });
            continue;
        }
        let x = &f.instrs[i];
        let mut succ = Vec::new();
        let after = l.children.iter().find(|c| c.start == i).map_or(i + 1, |c| c.end + 1);
        let falls_through = match x.class() {
            "BRA" => x.cond || x.opcode.starts_with("BRA.DIV"),
            "EXIT" => x.cond,
            _ => true,
        };
        if falls_through {
            succ.push(after);
        }
        if x.class() == "BRA" && !x.opcode.starts_with("BRA.DIV") {
            if let Some(t) = x.target.filter(|&t| t > x.addr).and_then(index_of) {
                succ.push(t);
            }
        }
        let pick = succ
            .into_iter()
            .filter(|&j| j <= l.end && !inside_child(j))
            .filter_map(|j| best[j].map(|b| (j, b)))
            .max_by(|(_, a), (_, b)| {
                a.hmma.total_cmp(&b.hmma).then(a.loads.total_cmp(&b.loads)).then(b.instrs.total_cmp(&a.instrs))
            });
        best[i] =
            pick.map(|(j, b)| Best { hmma: b.hmma + h, loads: b.loads + ld, instrs: b.instrs + n, next: Some(j) });
    }
    let mut counts = Counts::new();
    let mut at = best[l.start].map(|_| l.start);
    while let Some(i) = at {
        for (k, v) in node_cost(i) {
            *counts.entry(k).or_default() += v;
        }
        at = best[i].and_then(|b| b.next);
    }
    counts
}

/// What follows a kernel's last HMMA loop: its epilogue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epilogue {
    /// Instructions on the longest forward path from the first instruction after
    /// the last HMMA loop to an `EXIT`: an upper bound on what one warp issues
    /// there whichever runtime branch it takes (a per-norm choice, a split path),
    /// as long as `loops` is 0.
    pub longest: f64,
    /// Every instruction from there to the end of the function (out-of-line code
    /// included).
    pub static_instrs: usize,
    /// Backward branches inside it: each loop body is counted once, so with a
    /// loop `longest` is no bound.
    pub loops: usize,
    /// The longest forward path to an `EXIT` that holds an HMMA and no shuffle:
    /// the tensor-core epilogue, whose row statistics come from mma instead of
    /// shuffles (the scores kernel's plain l2_norm_gelu path). None without one.
    pub tensor_path: Option<f64>,
}

/// The epilogue of `f`, None when no loop holds an HMMA. Edges as in `issued`:
/// the next instruction (not after an unconditional `BRA` or `EXIT`) and a
/// forward `BRA` target (`BRA.DIV` targets are out-of-line: not followed); a
/// backward branch is not followed (and counted in `loops`; a branch to itself,
/// the padding after the last `EXIT`, is not a loop).
pub fn epilogue(f: &Function) -> Option<Epilogue> {
    fn last_hmma_end(f: &Function, ls: &[Loop]) -> Option<usize> {
        ls.iter()
            .filter_map(|l| {
                let own = f.instrs[l.start..=l.end].iter().any(|x| x.class() == "HMMA").then_some(l.end);
                own.max(last_hmma_end(f, &l.children))
            })
            .max()
    }
    let start = last_hmma_end(f, &loops(f))? + 1;
    let n = f.instrs.len();
    let index_of = |addr: u64| f.instrs[start..].iter().position(|x| x.addr == addr).map(|p| p + start);
    let none = f64::NEG_INFINITY;
    // per instruction: the longest path to an EXIT; the same with no shuffle
    // (any, and holding an HMMA)
    let mut best = vec![none; n + 1];
    let (mut no_shfl, mut tensor) = (vec![none; n + 1], vec![none; n + 1]);
    let mut back = 0;
    for i in (start..n).rev() {
        let x = &f.instrs[i];
        let (class, div) = (x.class(), x.opcode.starts_with("BRA.DIV"));
        let ends = if class == "EXIT" { 0.0 } else { none };
        let (mut b, mut ns, mut tc) = (ends, ends, none);
        let falls_through = match class {
            "BRA" => x.cond || div,
            "EXIT" => x.cond,
            _ => true,
        };
        let mut succ = Vec::new();
        if falls_through && i + 1 < n {
            succ.push(i + 1);
        }
        if class == "BRA" && !div {
            match x.target {
                Some(t) if t > x.addr => succ.extend(index_of(t)),
                Some(t) if t < x.addr => back += 1,
                _ => {} // a branch to itself: the padding after the last EXIT
            }
        }
        for j in succ {
            b = b.max(best[j]);
            ns = ns.max(no_shfl[j]);
            tc = tc.max(if class == "HMMA" { no_shfl[j] } else { tensor[j] });
        }
        best[i] = b + 1.0;
        if class != "SHFL" {
            no_shfl[i] = ns + 1.0;
            tensor[i] = tc + 1.0;
        }
    }
    (start < n && best[start].is_finite()).then(|| Epilogue {
        longest: best[start],
        static_instrs: n - start,
        loops: back,
        tensor_path: tensor[start].is_finite().then_some(tensor[start]),
    })
}

#[cfg(test)]
mod tests {
    use super::super::sass::tests::sass;
    use super::super::sass::{hot_loop, parse};
    use super::epilogue;

    #[test]
    fn a_skippable_region_without_hmma_is_skipped() {
        let f = &parse(&sass(&[
            "0000 @P1 BRA 0x40",      // skips the prefetch block
            "0010 LDG.E R2, [R4.64]", // prefetch (once per n-tile)
            "0020 IMAD R3, R2, R2, RZ",
            "0030 IMAD R3, R3, R2, RZ",
            "0040 HMMA.16816.F32 R8, R4, R6, R8",
            "0050 HMMA.16816.F32 R12, R4, R6, R12",
            "0060 @P0 BRA 0x80", // skips an HMMA: taken only if HMMA-free
            "0070 HMMA.16816.F32 R16, R4, R6, R16",
            "0080 @P3 BRA 0xa0", // guards the next stage's cp.async: kept
            "0090 LDGSTS.E.BYPASS.128 [R1], [R2.64]",
            "00a0 @!P2 BRA 0x0",
            "00b0 EXIT",
        ]))[0];
        let h = hot_loop(f, &|_| 1.0).unwrap();
        // issued: BRA, 3 HMMA, BRA(0x60), BRA(0x80), LDGSTS, BRA = 8 over 3 HMMA; static 11
        assert_eq!((h.hmma(), h.total(), h.count("LDGSTS"), h.count("LDG")), (3.0, 8.0, 1.0, 0.0));
        assert_eq!(h.static_counts.values().sum::<f64>(), 11.0);
    }

    #[test]
    fn unconditional_forward_branch_and_nested_loop() {
        let f = &parse(&sass(&[
            "0000 BRA 0x20", // jumps over dead code
            "0010 IMAD R0, R0, R0, RZ",
            "0020 HMMA.16816.F32 R8, R4, R6, R8",
            "0030 @P1 BRA 0x20",       // nested loop [0x20, 0x30], trips 4
            "0040 BRA.DIV UR4, 0x100", // out-of-line target: falls through
            "0050 @P0 BRA 0x0",
        ]))[0];
        let h = hot_loop(f, &|_| 4.0).unwrap();
        assert_eq!(h.hmma(), 4.0);
        // BRA + 4 x (HMMA + BRA) + BRA.DIV + BRA = 11
        assert_eq!(h.total(), 11.0);
        assert_eq!(h.static_counts.values().sum::<f64>(), 12.0);
    }
    #[test]
    fn epilogue_takes_the_longest_branch_after_the_last_hmma_loop() {
        let f = &parse(&sass(&[
            "0000 HMMA.16816.F32 R8, R4, R6, R8",
            "0010 @P0 BRA 0x0",  // the main loop
            "0020 @P1 BRA 0x60", // norm A (2 instructions) or norm B (3)
            "0030 FMUL R1, R1, R1",
            "0040 FMUL R1, R1, R1",
            "0050 BRA 0xa0",
            "0060 FADD R1, R1, R1",
            "0070 FADD R1, R1, R1",
            "0080 FADD R1, R1, R1",
            "0090 NOP",
            "00a0 @P2 EXIT", // an early exit: the path may go on
            "00b0 STG.E [R2.64], R1",
            "00c0 EXIT",
            "00d0 BRA 0xd0", // the end padding: after the EXIT, not reached
        ]))[0];
        let e = epilogue(f).unwrap();
        // BRA, 3 FADD, NOP, EXIT?, STG, EXIT = 8; the padding's self-branch is no loop
        assert_eq!((e.longest, e.static_instrs, e.loops), (8.0, 12, 0));
        assert_eq!(e.tensor_path, None, "no HMMA after the main loop");
        let no_hmma = &parse(&sass(&["0000 FADD R1, R1, R1", "0010 @P0 BRA 0x0", "0020 EXIT"]))[0];
        assert!(epilogue(no_hmma).is_none());
    }

    #[test]
    fn the_tensor_core_path_holds_an_hmma_and_no_shuffle() {
        let f = &parse(&sass(&[
            "0000 HMMA.16816.F32 R8, R4, R6, R8",
            "0010 @P0 BRA 0x0",  // the main loop
            "0020 @P1 BRA 0x70", // the plain path (an HMMA) or a shuffling one
            "0030 HMMA.16816.F32 R20, R4, R6, R20",
            "0040 @P2 BRA 0xb0", // the plain path goes on, or falls back
            "0050 STS [R1], R20",
            "0060 EXIT",
            "0070 SHFL.BFLY PT, R2, R1, 0x1, 0x1f",
            "0080 FADD R1, R1, R2",
            "0090 FADD R1, R1, R2",
            "00a0 FADD R1, R1, R2",
            "00b0 SHFL.BFLY PT, R2, R1, 0x2, 0x1f", // the fallback shuffles
            "00c0 STG.E [R2.64], R1",
            "00d0 EXIT",
        ]))[0];
        let e = epilogue(f).unwrap();
        // longest: BRA, HMMA, BRA, SHFL, STG, EXIT = 6 or BRA, SHFL, 3 FADD, SHFL, STG,
        // EXIT = 8; tensor: BRA, HMMA, BRA, STS, EXIT = 5 (the fallback shuffles)
        assert_eq!((e.longest, e.tensor_path), (8.0, Some(5.0)));
    }
}
