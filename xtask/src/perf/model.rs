//! The time model (an estimate): per kernel launch,
//! time = max(issue time, tensor time, memory time) with wave quantisation;
//! per op, the sum of its launches. Beside it the roofline floor, the unfused
//! pipeline (cuBLAS GEMM → norm kernel → cuBLAS GEMM) and the dense linear layer,
//! both at a cited cuBLAS efficiency. Grids follow the host's plan functions
//! (crates/tf-host/src/ops/pattention.rs, attention.rs). docs/performance-model.md.

use super::occupancy::Gpu;

/// Bytes of storage per element (bf16).
pub const ELEM: f64 = 2.0;
/// DRAM bytes per element of the [t, n] intermediate over the whole tiled
/// l2_norm_gelu pipeline: scores writes it, rows reads and rewrites it, out
/// reads it (4 passes × 2 bytes). Measured by the emulator's profiler
/// (docs/memory-profiles.md: 8.0 bytes per t·n element, 354m qkv, bf16).
pub const INTERMEDIATE_BYTES: f64 = 8.0;
/// Pattention n-tile and the tensor-core CTA tiles (tf_kernels.h, Traits).
const TILE_N: u64 = 128;
const MMA_ROWS: u64 = 128;
const COLS: u64 = 128;
const DECODE_MAX_T: u64 = 64;
/// Product 1's split over d_in on the decode path (tf_kernels.h
/// TF_PATTENTION_SPLIT_CTAS / MAX_SPLITS; pattention.rs k_split).
const SCORES_BK: u64 = 32;
const SPLIT_CTAS: u64 = 264;
const MAX_SPLITS: u64 = 16;
const MIN_SPLIT_K_TILES: u64 = 2;
const REDUCE_ROWS: u64 = 4;

/// Rows per CTA of the tensor-core out kernel as the host's plan chooses them
/// (pattention.rs out_rows): 64 when the 128-row grid loads the busiest SM with
/// at least 8/7 the rows the 64-row grid gives it.
pub fn out_rows(sms: u64, t: u64, d_out: u64) -> u64 {
    let cols = d_out.div_ceil(COLS);
    let busiest = |rows: u64| (cols * t.div_ceil(rows)).div_ceil(sms.max(1)) * rows;
    if busiest(64) * 8 <= busiest(MMA_ROWS) * 7 {
        64
    } else {
        MMA_ROWS
    }
}

/// (slices, k-tiles per slice) of the decode path's product 1, as the host's
/// plan chooses them: one CTA per SM, at most SPLIT_CTAS / n_tiles and
/// MAX_SPLITS slices, at least MIN_SPLIT_K_TILES k-tiles each, at most
/// d_in / (2t) slices (partial scores written <= K_P bytes read).
pub fn k_split(sms: u64, n_tiles: u64, t: u64, d_in: u64) -> (u64, u64) {
    let k_tiles = d_in.div_ceil(SCORES_BK);
    let max = SPLIT_CTAS.div_ceil(n_tiles.max(1)).clamp(1, MAX_SPLITS);
    let want = sms.div_ceil(n_tiles.max(1)).min(max).min(k_tiles / MIN_SPLIT_K_TILES).min(d_in / (2 * t.max(1)));
    if want <= 1 {
        return (1, 0);
    }
    let per = k_tiles.div_ceil(want);
    (k_tiles.div_ceil(per), per)
}
/// The backward's tensor-core gemm (tf_kernels.h TF_GEMM_TC_*, gemm_tc.cu).
const GEMM_TILE: u64 = 128;
const GEMM_BK: u64 = 32;
const GEMM_MAX_SPLITS: u64 = 16;
const GEMM_MIN_SPLIT_TILES: u64 = 4;

/// (slices, k-steps a slice) of the backward's tensor-core gemm `[m, n]` over
/// `k` on `sms` SMs, as the host chooses them (ops/gemm.rs k_split): at most
/// sms / 2 CTAs split into at most sms / ctas and MAX_SPLITS slices of at least
/// MIN_SPLIT_TILES k-steps, with the partials' bytes at most the operands'.
pub fn gemm_split(sms: u64, m: u64, n: u64, k: u64) -> (u64, u64) {
    let ctas = (m.div_ceil(GEMM_TILE) * n.div_ceil(GEMM_TILE)).max(1);
    let k_tiles = k.div_ceil(GEMM_BK);
    if 2 * ctas > sms {
        return (1, k_tiles);
    }
    let traffic = 1 + (m + n) * k / (2 * m * n).max(1);
    let splits = (sms / ctas).min(k_tiles / GEMM_MIN_SPLIT_TILES).min(GEMM_MAX_SPLITS).min(traffic).max(1);
    if splits == 1 {
        return (1, k_tiles);
    }
    let per = k_tiles.div_ceil(splits);
    (k_tiles.div_ceil(per), per)
}

/// One backward product `C [m, n] f32 = Σ_l A(i, l)·B(j, l)` over `k` on the
/// tensor-core gemm (bf16 operands; the column-wise pair, `dK_P = dAᵀ·X` and
/// `dV_P = Sᵀ·dY`), with the host's split over the sum or (`split` false)
/// without it. Operands read once (L2 serves the re-reads), C and each partial
/// written once, the partials read once more by the reduce.
pub fn backward_product(gpu: &Gpu, facts: Facts<'_>, m: u64, n: u64, k: u64, split: bool) -> OpEstimate {
    product(gpu, facts, "gemm_tc_bf16_cc", (m, n, k), split)
}

/// [`backward_product`] on the gemm kernel `g` (its layouts: `rr`, `rc`, `cr`, `cc`).
fn product(gpu: &Gpu, facts: Facts<'_>, g: &'static str, (m, n, k): (u64, u64, u64), split: bool) -> OpEstimate {
    let (splits, per) = if split { gemm_split(gpu.sms as u64, m, n, k) } else { (1, k.div_ceil(GEMM_BK)) };
    let tiles = m.div_ceil(GEMM_TILE) * n.div_ceil(GEMM_TILE);
    let (mf, nf, kf) = (m as f64, n as f64, k as f64);
    let out = mf * nf * 4.0;
    let hmma = (GEMM_TILE / 16 * GEMM_TILE / 8 * per * GEMM_BK / 16) as f64;
    let bytes = (mf + nf) * kf * ELEM + out * splits as f64;
    let mut launches = vec![launch(gpu, g, facts(g), Work { grid: tiles * splits, hmma, busy_warps: 4, bytes })];
    if splits > 1 {
        let bytes = out * (splits - 1) as f64 + 2.0 * out;
        let grid = (m * n).div_ceil(256).min(4096);
        launches.push(launch(gpu, "gemm_tc_reduce", None, Work { grid, hmma: 0.0, busy_warps: 8, bytes }));
    }
    let path = if splits > 1 { "split" } else { "whole" };
    OpEstimate { path, launches, flops: 2.0 * mf * nf * kf, min_bytes: (mf + nf) * kf * ELEM + out }
}

/// DRAM bytes per `[t, n]` element of the Pattention backward's row kernel
/// (pattention_norm_backward_bf16): A (f32, recomputed) or the kept 16-bit
/// scores, dS (f32) read once, S and dA (16-bit) written. Measured by the
/// emulator's profiler as unique bytes (docs/training.md: 12 per element with
/// A in f32).
const NORM_BWD_BYTES: f64 = 12.0;
const NORM_BWD_BYTES_KEPT: f64 = 10.0;

/// The whole Pattention backward (l2_norm_gelu, bf16) as the host runs it
/// (ops/pattention_backward.rs): `A = X·K_Pᵀ` (unless `kept`: the forward's
/// scores are read instead), `dS = dY·V_Pᵀ`, the row kernel, then `dV_P = Sᵀ·dY`,
/// `dX = dA·K_P`, `dK_P = dAᵀ·X`, each product with the host's split over the sum.
pub fn pattention_backward(
    gpu: &Gpu,
    facts: Facts<'_>,
    t: u64,
    n: u64,
    d_in: u64,
    d_out: u64,
    kept: bool,
) -> OpEstimate {
    let (tf, nf, di, dout) = (t as f64, n as f64, d_in as f64, d_out as f64);
    let prod = |g: &'static str, shape: (u64, u64, u64)| product(gpu, facts, g, shape, true);
    let per = if kept { NORM_BWD_BYTES_KEPT } else { NORM_BWD_BYTES };
    let row = Work { grid: t, hmma: 0.0, busy_warps: 8, bytes: per * tf * nf };
    let row = OpEstimate {
        path: "row",
        launches: vec![launch(gpu, "pattention_norm_backward_bf16", None, row)],
        flops: 0.0,
        min_bytes: 0.0,
    };
    let parts = [
        (!kept).then(|| prod("gemm_tc_bf16_rr", (t, n, d_in))), // A = X·K_Pᵀ
        Some(prod("gemm_tc_bf16_rr", (t, n, d_out))),           // dS = dY·V_Pᵀ
        Some(row),
        Some(prod("gemm_tc_bf16_cc", (n, d_out, t))), // dV_P = Sᵀ·dY
        Some(prod("gemm_tc_bf16_rc", (t, d_in, n))),  // dX = dA·K_P
        Some(prod("gemm_tc_bf16_cc", (n, d_in, t))),  // dK_P = dAᵀ·X
    ];
    let flops = parts.iter().flatten().map(|e| e.flops).sum();
    let launches = parts.into_iter().flatten().flat_map(|e| e.launches).collect();
    // x, k_p, v_p, dy read; the f32 gradients written (and the kept scores read)
    let io = ELEM * (tf * di + nf * di + nf * dout + tf * dout) + 4.0 * (tf * di + nf * di + nf * dout);
    let min_bytes = io + if kept { ELEM * tf * nf } else { 0.0 };
    OpEstimate { path: if kept { "kept" } else { "recompute" }, launches, flops, min_bytes }
}

/// The attention tiles (tf_kernels.h): query rows per CTA, keys per tile; calls
/// of at most ATTN_DECODE_ROWS query rows run the decode kernels' 16 x 64 tiles.
const ATTN_BM: u64 = 128;
const ATTN_DECODE_ROWS: u64 = 16;
fn attn_tiles(t_q: u64, hd: u64) -> (u64, u64) {
    if t_q <= ATTN_DECODE_ROWS {
        (ATTN_DECODE_ROWS, 64)
    } else if hd == 128 {
        (ATTN_BM, 32)
    } else {
        (ATTN_BM, 64)
    }
}

/// What the SASS analysis gives the model for one kernel on one arch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelFacts {
    /// Issued instructions per HMMA in the hot loop.
    pub per_hmma: f64,
    /// Resident CTAs per SM on the GPU.
    pub ctas_per_sm: u32,
}

/// One launch's estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchEstimate {
    /// Kernel name.
    pub kernel: String,
    /// CTAs in the grid.
    pub grid: u64,
    /// Waves: ceil(grid / (SMs × CTAs per SM)).
    pub waves: u64,
    /// HMMA (m16n8k16) per CTA.
    pub hmma_per_cta: f64,
    /// Seconds: issue, tensor, memory; the estimate is their max.
    pub issue_s: f64,
    /// Tensor-pipe seconds.
    pub tensor_s: f64,
    /// DRAM seconds.
    pub memory_s: f64,
}

impl LaunchEstimate {
    /// max(issue, tensor, memory).
    pub fn seconds(&self) -> f64 {
        self.issue_s.max(self.tensor_s).max(self.memory_s)
    }
    /// The term that binds.
    pub fn bound(&self) -> &'static str {
        let s = self.seconds();
        if s == self.memory_s {
            "memory"
        } else if s == self.tensor_s {
            "tensor"
        } else {
            "issue"
        }
    }
}

/// The work of one launch: CTAs, HMMAs per CTA, warps of a CTA that hold
/// HMMA work, DRAM bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Work {
    /// CTAs in the grid.
    pub grid: u64,
    /// HMMA per CTA.
    pub hmma: f64,
    /// Warps of a CTA with HMMA work (each issues at most 1 instruction a cycle
    /// and feeds one sub-partition's tensor core).
    pub busy_warps: u64,
    /// DRAM bytes of the launch.
    pub bytes: f64,
}

/// One launch. Wave quantisation: the busiest SM runs c = ceil(grid / SMs)
/// CTAs (equal CTAs, handed out as SMs free up), in rounds of r (CTAs per SM)
/// and a last round of c mod r; a round of k CTAs shares the SM's 4
/// sub-partitions among the k CTAs' busy warps, so it lasts k CTA works over
/// min(4, busy warps · k) lanes. (Counting every round as r CTAs overstates a
/// tail round whose lone CTA already fills the 4 sub-partitions.)
pub fn launch(gpu: &Gpu, kernel: &str, facts: Option<KernelFacts>, w: Work) -> LaunchEstimate {
    let (per_hmma, r) = facts.map_or((0.0, 1), |f| (f.per_hmma, f.ctas_per_sm.max(1) as u64));
    let c = w.grid.div_ceil(gpu.sms as u64).max(1);
    let waves = w.grid.div_ceil(gpu.sms as u64 * r);
    let round = |k: u64| k as f64 / (w.busy_warps.max(1) * k).min(4) as f64;
    // the busiest SM's time in units of one CTA's work on one lane
    let lane_works = (c / r) as f64 * round(r) + if c % r > 0 { round(c % r) } else { 0.0 };
    LaunchEstimate {
        kernel: kernel.to_string(),
        grid: w.grid,
        waves,
        hmma_per_cta: w.hmma,
        issue_s: lane_works * w.hmma * per_hmma / gpu.clock_hz,
        tensor_s: lane_works * w.hmma * gpu.hmma_cycles / gpu.clock_hz,
        memory_s: w.bytes / gpu.hbm_bytes_s,
    }
}

/// A Pattention (or attention) op at one shape on one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct OpEstimate {
    /// `tiled`, `decode` or `flash`.
    pub path: &'static str,
    /// The launches.
    pub launches: Vec<LaunchEstimate>,
    /// FLOPs of the op.
    pub flops: f64,
    /// Compulsory DRAM bytes (inputs, weights, output).
    pub min_bytes: f64,
}

impl OpEstimate {
    /// Sum over launches.
    pub fn seconds(&self) -> f64 {
        self.launches.iter().map(LaunchEstimate::seconds).sum()
    }
    /// Roofline floor: max(FLOPs at the tensor peak, compulsory bytes at HBM).
    pub fn floor(&self, gpu: &Gpu) -> f64 {
        (self.flops / gpu.tensor_peak).max(self.min_bytes / gpu.hbm_bytes_s)
    }
}

/// Per-HMMA and occupancy of a kernel family on the GPU (None: not analysed).
pub type Facts<'a> = &'a dyn Fn(&str) -> Option<KernelFacts>;

/// Fused Pattention (l2_norm_gelu, bf16): `x [t, d_in]`, `n` tokens, `d_out`.
pub fn pattention(gpu: &Gpu, facts: Facts<'_>, t: u64, n: u64, d_in: u64, d_out: u64) -> OpEstimate {
    let n_tiles = n.div_ceil(TILE_N);
    let h_stride = n.next_multiple_of(8) as f64;
    let (tf, nf, di, dout) = (t as f64, n as f64, d_in as f64, d_out as f64);
    let stats = tf * n_tiles as f64 * 8.0;
    let m16 = t.min(MMA_ROWS).div_ceil(16) as f64; // m16 tiles of a row block that hold rows
    let mut launches = Vec::new();
    // Product 1 (both paths for l2_norm_gelu): grid (n_tiles, ceil(t / 128)).
    let row_blocks = t.div_ceil(MMA_ROWS);
    let hmma1 = m16 * (TILE_N / 8) as f64 * (d_in as f64 / 16.0).ceil();
    let interm = INTERMEDIATE_BYTES / 4.0 * tf * h_stride; // one pass over [t, n]
    let bytes1 = (tf * di + nf * di) * ELEM + interm + stats;
    let scores = "pattention_scores_bf16";
    // 2 x 2 warps of 64 x 64: a warp row with no row of t has no HMMA work
    let busy1 = 2 * t.min(MMA_ROWS).div_ceil(64);
    let (splits, per) = if t <= DECODE_MAX_T { k_split(gpu.sms as u64, n_tiles, t, d_in) } else { (1, 0) };
    if splits > 1 {
        // decode: grid (n_tiles, 1, splits); each CTA streams `per` k-tiles and
        // writes its f32 partial scores, which the reduce kernel sums into h, stats
        let apart = splits as f64 * tf * (n_tiles * TILE_N) as f64 * 4.0;
        let hmma = m16 * (TILE_N / 8) as f64 * (per * SCORES_BK / 16) as f64;
        let bytes = (tf * di + nf * di) * ELEM + apart;
        let w = Work { grid: n_tiles * splits, hmma, busy_warps: busy1, bytes };
        launches.push(launch(gpu, scores, facts(scores), w));
        let r = "pattention_scores_reduce_bf16";
        let w =
            Work { grid: n_tiles * t.div_ceil(REDUCE_ROWS), hmma: 0.0, busy_warps: 4, bytes: apart + interm + stats };
        launches.push(launch(gpu, r, None, w));
    } else {
        let w1 = Work { grid: n_tiles * row_blocks, hmma: hmma1, busy_warps: busy1, bytes: bytes1 };
        launches.push(launch(gpu, scores, facts(scores), w1));
    }
    let path = if t <= DECODE_MAX_T {
        // decode: grid (n_tiles, y_splits) as the host's plan chooses them
        let col_blocks = d_out.div_ceil(COLS);
        let want = (2 * gpu.sms as u64).div_ceil(n_tiles).clamp(1, col_blocks);
        let blocks_per = col_blocks.div_ceil(want);
        let decode_cols = blocks_per * COLS;
        let y_splits = col_blocks.div_ceil(blocks_per);
        let hmma = m16 * (decode_cols / 8) as f64 * (TILE_N / 16) as f64;
        let partial = n_tiles as f64 * tf * dout * 4.0;
        let k = "pattention_decode_bf16";
        let bytes = interm + stats + nf * dout * ELEM + partial;
        launches.push(launch(gpu, k, facts(k), Work { grid: n_tiles * y_splits, hmma, busy_warps: 4, bytes }));
        let c = "pattention_combine_bf16";
        let bytes = partial + stats + tf * dout * ELEM;
        launches.push(launch(gpu, c, None, Work { grid: col_blocks * t, hmma: 0.0, busy_warps: 4, bytes }));
        "decode"
    } else {
        let r = "pattention_rows_bf16";
        let bytes = 2.0 * interm + stats + tf * 8.0;
        launches.push(launch(gpu, r, None, Work { grid: t.div_ceil(8), hmma: 0.0, busy_warps: 8, bytes }));
        let rows = out_rows(gpu.sms as u64, t, d_out);
        let hmma = (rows / 16) as f64 * (COLS / 8) as f64 * (h_stride / 16.0).ceil();
        let o = if rows == 64 { "pattention_out64_bf16" } else { "pattention_out_bf16" };
        let bytes = interm + nf * dout * ELEM + tf * 8.0 + tf * dout * ELEM;
        let grid = d_out.div_ceil(COLS) * t.div_ceil(rows);
        launches.push(launch(gpu, o, facts(o), Work { grid, hmma, busy_warps: 4, bytes }));
        "tiled"
    };
    let flops = 2.0 * tf * nf * (di + dout);
    let min_bytes = (tf * di + nf * di + nf * dout + tf * dout) * ELEM;
    OpEstimate { path, launches, flops, min_bytes }
}

/// One cuBLAS GEMM (m × k by k × n, bf16) at the cited efficiency, or its bytes at HBM.
pub fn gemm(gpu: &Gpu, m: f64, n: f64, k: f64) -> f64 {
    let bytes = (m * k + k * n + m * n) * ELEM;
    (2.0 * m * n * k / (gpu.tensor_peak * gpu.cublas_eff)).max(bytes / gpu.hbm_bytes_s)
}

/// The unfused pipeline: GEMM A = X·K_Pᵀ, the norm kernel in place on A
/// (read + write), GEMM Y = S·V_P.
pub fn unfused(gpu: &Gpu, t: u64, n: u64, d_in: u64, d_out: u64) -> f64 {
    let (tf, nf) = (t as f64, n as f64);
    let norm = 2.0 * tf * nf * ELEM / gpu.hbm_bytes_s;
    gemm(gpu, tf, nf, d_in as f64) + norm + gemm(gpu, tf, d_out as f64, nf)
}

/// An attention shape: batch, query and key lengths, heads, head dim, mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attn {
    /// Batch.
    pub b: u64,
    /// Query rows.
    pub t_q: u64,
    /// Keys.
    pub t_k: u64,
    /// Heads.
    pub heads: u64,
    /// Head dimension.
    pub hd: u64,
    /// Causal (bottom-right) mask.
    pub causal: bool,
}

impl Attn {
    /// Batch 1: causal self-attention over t tokens, or for t = 1 one query
    /// against `kv` cached keys.
    pub fn tokenformer(t: u64, kv: u64, heads: u64, hd: u64) -> Attn {
        let (t_q, t_k) = if t == 1 { (1, kv) } else { (t, t) };
        Attn { b: 1, t_q, t_k, heads, hd, causal: t > 1 }
    }
}

/// Flash attention (bf16), split-KV as the host's heuristic chooses it.
pub fn attention(gpu: &Gpu, facts: Facts<'_>, a: Attn) -> OpEstimate {
    let Attn { b, t_q, t_k, heads, hd, causal } = a;
    let (bm, bn) = attn_tiles(t_q, hd);
    let m_blocks = t_q.div_ceil(bm);
    let n_blocks = t_k.div_ceil(bn);
    let splits = splits_heuristic(m_blocks * b * heads, gpu.sms as u64, n_blocks, 128);
    // K blocks a query block visits (bottom-right causal), averaged over query blocks
    let visits: f64 = if causal {
        let seen = |i: u64| (((i + 1) * bm).min(t_q) + t_k).saturating_sub(t_q).div_ceil(bn);
        (0..m_blocks).map(|i| seen(i) as f64).sum::<f64>() / m_blocks as f64
    } else {
        n_blocks as f64
    };
    let per_cta = (visits / splits as f64).ceil();
    let hmma = per_cta * 2.0 * (bm / 16) as f64 * (bn / 8) as f64 * (hd as f64 / 16.0).ceil();
    let bh = (b * heads) as f64;
    let (qf, kf, df) = (t_q as f64, t_k as f64, hd as f64);
    let io = (2.0 * qf + 2.0 * kf) * bh * df * ELEM + qf * bh * 4.0;
    let mut launches = Vec::new();
    let family = if t_q <= ATTN_DECODE_ROWS { "attn_decode" } else { "attn_fwd" };
    let name = format!("{family}{}_bf16_hd{hd}", if splits > 1 { "_split" } else { "" });
    let accum = if splits > 1 { splits as f64 * bh * qf * (df + 1.0) * 4.0 } else { 0.0 };
    let grid = m_blocks * splits * b * heads;
    launches.push(launch(gpu, &name, facts(&name), Work { grid, hmma, busy_warps: 4, bytes: io + accum }));
    if splits > 1 {
        let rows = b * heads * t_q;
        let bytes = accum + qf * bh * df * ELEM;
        launches.push(launch(
            gpu,
            "attn_combine_bf16",
            None,
            Work { grid: rows.div_ceil(4), hmma: 0.0, busy_warps: 4, bytes },
        ));
    }
    let pairs = if causal { qf * (2.0 * kf - qf + 1.0) / 2.0 } else { qf * kf };
    OpEstimate { path: "flash", launches, flops: 4.0 * pairs * bh * df, min_bytes: io }
}

/// The attention backward's tiles (tf_kernels.h): rows a CTA owns, and rows
/// streamed per step (32 at hd 128).
const ATTN_BWD_BLOCK: u64 = 64;
fn attn_bwd_step(hd: u64) -> u64 {
    if hd == 128 {
        32
    } else {
        64
    }
}

/// The attention backward on tensor cores (bf16; tf-host's
/// `attention_backward_saved`, kernels/attention_backward_tc.cu): delta (a warp
/// a query row), dk and dv (a CTA per 64 keys streaming the query steps that
/// see them: Sᵀ, dPᵀ, dv, dk, four products a step), dq (a CTA per 64 queries
/// streaming the key steps they see: S, dP, dq, three products). Causal steps
/// that see no key are skipped, as the kernels skip them. Re-reads of Q, dO, K
/// and V by other CTAs are L2 hits; the gradients are written in f32. FLOPs are
/// FlashAttention-2's count (five products, 2.5 times the forward's), so the
/// floor does not credit the seven products this deterministic version runs.
pub fn attention_backward(gpu: &Gpu, facts: Facts<'_>, a: Attn) -> OpEstimate {
    let Attn { b, t_q, t_k, heads, hd, causal } = a;
    let (blk, step) = (ATTN_BWD_BLOCK, attn_bwd_step(hd));
    let bh = b * heads;
    let (qf, kf, df, bhf) = (t_q as f64, t_k as f64, hd as f64, bh as f64);
    let diag = t_k as i64 - t_q as i64; // key j visible to query i iff j <= i + diag
                                        // dkv: the query steps a key block visits, from the first that sees its first key
    let key_blocks = t_k.div_ceil(blk);
    let q_steps = t_q.div_ceil(step);
    let dkv_steps = |kb: u64| -> u64 {
        if !causal {
            return q_steps;
        }
        let first_row = (kb as i64 * blk as i64 - diag).max(0) as u64;
        q_steps.saturating_sub(first_row / step)
    };
    let dkv_avg = (0..key_blocks).map(|kb| dkv_steps(kb) as f64).sum::<f64>() / key_blocks.max(1) as f64;
    // dq: the key steps a query block visits, up to the last key its last row sees
    let query_blocks = t_q.div_ceil(blk);
    let dq_steps = |qb: u64| -> u64 {
        if !causal {
            return t_k.div_ceil(step);
        }
        let last_row = ((qb + 1) * blk).min(t_q) as i64 - 1;
        ((last_row + diag + 1).clamp(0, t_k as i64) as u64).div_ceil(step)
    };
    let dq_avg = (0..query_blocks).map(|qb| dq_steps(qb) as f64).sum::<f64>() / query_blocks.max(1) as f64;
    let per_product = (blk * step * hd) as f64 / 2048.0; // m16n8k16: 2,048 MACs
    let (io_q, io_k) = (qf * bhf * df * ELEM, kf * bhf * df * ELEM);
    let stats = qf * bhf * 4.0;
    let mut launches = Vec::new();
    let rows = bh * t_q;
    let delta_grid = rows.div_ceil(8).min(gpu.sms as u64 * 16).max(1);
    let delta = "attn_bwd_delta_bf16";
    let w = Work { grid: delta_grid, hmma: 0.0, busy_warps: 8, bytes: 2.0 * io_q + stats };
    launches.push(launch(gpu, delta, None, w));
    let dkv = format!("attn_bwd_dkv_bf16_hd{hd}");
    let bytes = 2.0 * io_k + 2.0 * io_q + 2.0 * stats + 2.0 * kf * bhf * df * 4.0;
    let w = Work { grid: key_blocks * bh, hmma: dkv_avg * 4.0 * per_product, busy_warps: 4, bytes };
    launches.push(launch(gpu, &dkv, facts(&dkv), w));
    let dq = format!("attn_bwd_dq_bf16_hd{hd}");
    let bytes = 2.0 * io_q + 2.0 * io_k + 2.0 * stats + qf * bhf * df * 4.0;
    let w = Work { grid: query_blocks * bh, hmma: dq_avg * 3.0 * per_product, busy_warps: 4, bytes };
    launches.push(launch(gpu, &dq, facts(&dq), w));
    let pairs = if causal { qf * (2.0 * kf - qf + 1.0) / 2.0 } else { qf * kf };
    let min_bytes = 3.0 * io_q + 2.0 * io_k + stats + (qf + 2.0 * kf) * bhf * df * 4.0;
    OpEstimate { path: "flash", launches, flops: 10.0 * pairs * bhf * df, min_bytes }
}

/// The split-KV choice of tf-host's `num_splits_heuristic` (attention.rs).
fn splits_heuristic(blocks: u64, sms: u64, n_blocks: u64, max_splits: u64) -> u64 {
    if blocks * 5 >= sms * 4 || sms == 0 {
        return 1;
    }
    let max_splits = max_splits.min(sms).min(n_blocks).max(1);
    let eligible = |s: u64| s == 1 || n_blocks.div_ceil(s) != n_blocks.div_ceil(s - 1);
    let eff = |s: u64| {
        let waves = (blocks * s) as f64 / sms as f64;
        waves / waves.ceil()
    };
    let best = (1..=max_splits).filter(|&s| eligible(s)).map(eff).fold(0.0f64, f64::max);
    (1..=max_splits).find(|&s| eligible(s) && eff(s) >= 0.85 * best).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::super::occupancy::GPUS;
    use super::*;

    #[test]
    fn wave_quantisation() {
        let g = &GPUS[1]; // 132 SMs
        let f = Some(KernelFacts { per_hmma: 2.0, ctas_per_sm: 3 });
        let w = |grid| Work { grid, hmma: 1000.0, busy_warps: 4, bytes: 0.0 };
        let one = launch(g, "k", f, w(132));
        let full = launch(g, "k", f, w(396));
        let over = launch(g, "k", f, w(397));
        assert_eq!((one.waves, full.waves, over.waves), (1, 1, 2));
        assert!((full.seconds() / one.seconds() - 3.0).abs() < 1e-9);
        // one SM runs a 4th CTA, alone, at the full rate: 4/3 of the time
        assert!((over.seconds() / full.seconds() - 4.0 / 3.0).abs() < 1e-9);
        // 6 cycles per HMMA over 4 sub-partitions beats 2 issue slots per HMMA
        assert_eq!(one.bound(), "tensor");
        // two busy warps of one CTA feed two sub-partitions: twice the time
        let half = launch(g, "k", f, Work { busy_warps: 2, ..w(132) });
        assert!((half.seconds() / one.seconds() - 2.0).abs() < 1e-9);
    }

    /// Keeping the scores removes the first product and 2 bytes per [t, n]
    /// element from the row kernel, and nothing else.
    #[test]
    fn pattention_backward_kept_skips_one_product() {
        let facts = |_: &str| Some(KernelFacts { per_hmma: 2.6, ctas_per_sm: 2 });
        for gpu in &GPUS {
            let (t, n, d) = (16384, 1024, 1024);
            let r = pattention_backward(gpu, &facts, t, n, d, d, false);
            let k = pattention_backward(gpu, &facts, t, n, d, d, true);
            let a = product(gpu, &facts, "gemm_tc_bf16_rr", (t, n, d), true);
            assert_eq!(r.launches.len(), k.launches.len() + a.launches.len());
            assert_eq!(r.flops, k.flops + 2.0 * (t * n * d) as f64);
            assert_eq!(r.flops, 10.0 * (t * n * d) as f64);
            let row_saving = 2.0 * (t * n) as f64 / gpu.hbm_bytes_s;
            let diff = r.seconds() - k.seconds() - a.seconds() - row_saving;
            assert!(diff.abs() < 1e-12, "{}: {diff}", gpu.name);
            assert!(k.seconds() < r.seconds());
        }
    }

    #[test]
    fn attention_backward_steps_and_products() {
        let g = &GPUS[1];
        let f = |_: &str| Some(KernelFacts { per_hmma: 4.0, ctas_per_sm: 1 });
        let a = |t, causal| Attn { b: 1, t_q: t, t_k: t, heads: 16, hd: 64, causal };
        let full = attention_backward(g, &f, a(2048, false));
        let causal = attention_backward(g, &f, a(2048, true));
        assert_eq!(full.launches.len(), 3);
        // 32 key blocks x 16 heads; each visits all 32 query steps: 4 products of
        // 64 x 64 x 64 (128 HMMA each) a step
        assert_eq!(full.launches[1].grid, 32 * 16);
        assert_eq!(full.launches[1].hmma_per_cta, 32.0 * 4.0 * 128.0);
        assert_eq!(full.launches[2].hmma_per_cta, 32.0 * 3.0 * 128.0);
        // causal: block kb visits steps kb..32, on average 16.5 of 32
        assert_eq!(causal.launches[1].hmma_per_cta, 16.5 * 4.0 * 128.0);
        assert_eq!(causal.launches[2].hmma_per_cta, 16.5 * 3.0 * 128.0);
        assert!((full.flops / causal.flops - 2.0 * 2048.0 / 2049.0).abs() < 1e-9);
        // hd 128: 32-row steps, twice as many of them
        let h128 = attention_backward(g, &f, Attn { hd: 128, ..a(2048, false) });
        assert_eq!(h128.launches[1].hmma_per_cta, 64.0 * 4.0 * 128.0);
        assert!(full.seconds() >= full.floor(g) && causal.seconds() < full.seconds());
    }

    #[test]
    fn paths_and_intermediate_bytes() {
        let g = &GPUS[0];
        let f = |_: &str| Some(KernelFacts { per_hmma: 2.5, ctas_per_sm: 2 });
        let big = pattention(g, &f, 2048, 1024, 1024, 1024);
        assert_eq!(big.path, "tiled");
        assert_eq!(big.launches.len(), 3);
        // the intermediate moved over the three launches: 8 bytes per t·n element
        let total: f64 = big.launches.iter().map(|l| l.memory_s).sum::<f64>() * g.hbm_bytes_s;
        let stats_rowf = 2048.0 * 8.0 * 8.0 * 2.0 + 2048.0 * 16.0;
        assert!((total - big.min_bytes - 8.0 * 2048.0 * 1024.0 - stats_rowf).abs() < 1.0);
        assert!(big.seconds() >= big.floor(g));
        assert_eq!(pattention(g, &f, 1, 1024, 1024, 1024).path, "decode");
    }

    #[test]
    fn decode_splits_product_one_over_d_in() {
        // 354m qkv on A100 at t = 1: 6 n-tiles, 32 k-tiles -> 16 slices of 2 k-tiles
        assert_eq!(k_split(108, 6, 1, 1024), (16, 2));
        // t = 64: at most 1024 / 128 = 8 slices (partial scores <= K_P bytes)
        assert_eq!(k_split(108, 6, 64, 1024), (8, 4));
        // 17 k-tiles into 8 wanted slices: 3 k-tiles each, 6 slices
        assert_eq!(k_split(132, 8, 5, 520), (6, 3));
        // n-tiles enough for the SMs, or too short a d_in: unsplit
        assert_eq!(k_split(108, 108, 1, 4096), (1, 0));
        assert_eq!(k_split(108, 6, 1, 64), (1, 0));
        let g = &GPUS[0];
        let f = |_: &str| Some(KernelFacts { per_hmma: 2.5, ctas_per_sm: 2 });
        let d = pattention(g, &f, 16, 768, 1024, 1024);
        let names: Vec<&str> = d.launches.iter().map(|l| l.kernel.as_str()).collect();
        assert_eq!(
            names,
            [
                "pattention_scores_bf16",
                "pattention_scores_reduce_bf16",
                "pattention_decode_bf16",
                "pattention_combine_bf16"
            ]
        );
        assert_eq!(d.launches[0].grid, 6 * 16);
        // the slices' f32 partial scores: written once, read once
        let apart = 16.0 * 16.0 * 768.0 * 4.0;
        assert!(d.launches[1].memory_s * g.hbm_bytes_s >= apart);
    }

    #[test]
    fn out_rows_even_out_the_sms() {
        // 354m qkv at t = 2048: 128 CTAs on A100's 108 SMs -> 64 rows (3 halves
        // against 2 wholes on the busiest SM); on 132 SMs one CTA each -> 128 rows
        assert_eq!(out_rows(108, 2048, 1024), 64);
        assert_eq!(out_rows(132, 2048, 1024), 128);
        // t = 16384: 1024 CTAs over 108 SMs: 10 against 19 halves, under 1/8 gained
        assert_eq!(out_rows(108, 16384, 1024), 128);
        let g = &GPUS[0];
        let f = |_: &str| Some(KernelFacts { per_hmma: 2.5, ctas_per_sm: 2 });
        let p = pattention(g, &f, 2048, 768, 1024, 1024);
        assert_eq!((p.launches[2].kernel.as_str(), p.launches[2].grid), ("pattention_out64_bf16", 256));
    }

    #[test]
    fn backward_products_split_like_the_host() {
        // the host's unit-test cases (ops/gemm.rs split_rule)
        assert_eq!(gemm_split(132, 2048, 2048, 4096), (1, 128));
        assert_eq!(gemm_split(132, 768, 768, 2048), (3, 22));
        assert_eq!(gemm_split(108, 768, 768, 2048), (3, 22));
        assert_eq!(gemm_split(132, 128 * 66, 128, 4096), (2, 64));
        assert_eq!(gemm_split(132, 128 * 67, 128, 4096), (1, 128));
        assert_eq!(gemm_split(132, 64, 64, 1 << 20), (16, 2048));
        assert_eq!(gemm_split(132, 40, 24, 1000), (8, 4));
        assert_eq!(gemm_split(132, 1024, 1024, 512), (1, 16));
        let g = &GPUS[1];
        let f = |_: &str| Some(KernelFacts { per_hmma: 2.9, ctas_per_sm: 2 });
        let whole = backward_product(g, &f, 768, 768, 2048, false);
        let split = backward_product(g, &f, 768, 768, 2048, true);
        assert_eq!((whole.launches.len(), whole.launches[0].grid), (1, 36));
        assert_eq!((split.launches.len(), split.launches[0].grid), (2, 108));
        // 36 CTAs use 36 of 132 SMs; 108 use most of them: 1.81x (estimate), less
        // than 3x for the partials' traffic
        assert!(split.seconds() < whole.seconds() / 1.5, "{} vs {}", split.seconds(), whole.seconds());
        assert!(split.seconds() >= split.floor(g));
    }

    #[test]
    fn split_kv_for_decode_attention() {
        assert_eq!(splits_heuristic(64, 132, 1, 128), 1);
        assert!(splits_heuristic(16, 132, 32, 128) > 1);
        assert_eq!(attn_tiles(16, 128), (16, 64));
        assert_eq!(attn_tiles(17, 128), (128, 32));
    }
}
