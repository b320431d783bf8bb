//! Devices, resources per kernel (ptxas report + launch table) and CTAs per SM.
//! Every device number is cited in docs/performance-model.md.

use std::collections::BTreeMap;

/// One GPU of the model (public datasheet numbers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gpu {
    /// Label.
    pub name: &'static str,
    /// The SASS arch the project compiles for it.
    pub arch: &'static str,
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Shared memory per SM usable by CTAs (bytes).
    pub smem_per_sm: u32,
    /// Clock (Hz) at which the datasheet's tensor peak is stated.
    pub clock_hz: f64,
    /// HBM bandwidth (bytes/s).
    pub hbm_bytes_s: f64,
    /// Dense 16-bit tensor peak (FLOP/s).
    pub tensor_peak: f64,
    /// Cycles per `mma.sync.m16n8k16` (HMMA.16816) per SM sub-partition.
    pub hmma_cycles: f64,
    /// cuBLAS bf16 GEMM efficiency (fraction of `tensor_peak`) at large shapes.
    pub cublas_eff: f64,
}

/// A100 SXM4 80 GB, H100 SXM5, H200 SXM.
pub const GPUS: [Gpu; 3] = [
    Gpu {
        name: "A100",
        arch: "sm_80",
        sms: 108,
        smem_per_sm: 164 * 1024,
        clock_hz: 1.41e9,
        hbm_bytes_s: 2.039e12,
        tensor_peak: 312e12,
        hmma_cycles: 8.0,
        cublas_eff: 0.80,
    },
    Gpu {
        name: "H100 SXM",
        arch: "sm_90a",
        sms: 132,
        smem_per_sm: 228 * 1024,
        clock_hz: 1.83e9,
        hbm_bytes_s: 3.35e12,
        tensor_peak: 989e12,
        hmma_cycles: 6.0,
        cublas_eff: 0.70,
    },
    Gpu {
        name: "H200",
        arch: "sm_90a",
        sms: 132,
        smem_per_sm: 228 * 1024,
        clock_hz: 1.83e9,
        hbm_bytes_s: 4.8e12,
        tensor_peak: 989e12,
        hmma_cycles: 6.0,
        cublas_eff: 0.70,
    },
];

/// Per-SM limits of compute capability 8.0 and 9.0 (CUDA C++ Programming Guide,
/// "Technical Specifications per Compute Capability").
const REGS_PER_SM: u32 = 65536;
const REG_UNIT: u32 = 256; // registers allocated per warp in units of 256
const MAX_THREADS_PER_SM: u32 = 2048;
const MAX_CTAS_PER_SM: u32 = 32;
/// Shared memory the system reserves per CTA (1 KB on 8.x and 9.x).
const SMEM_RESERVED_PER_CTA: u32 = 1024;
const SMEM_UNIT: u32 = 128;

/// Registers and static shared memory per (kernel, arch) from ptxas' report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ptxas {
    /// Registers per thread.
    pub regs: u32,
    /// Static shared memory (bytes).
    pub smem: u32,
}

/// Parses `ptxas -v` output: "Compiling entry function 'k' for 'sm_80'" then
/// "Used N registers, ... M bytes smem".
pub fn parse_ptxas(report: &str) -> BTreeMap<(String, String), Ptxas> {
    let mut out = BTreeMap::new();
    let mut cur: Option<(String, String)> = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut q = rest.split('\'');
            let name = q.next().unwrap_or("").to_string();
            let arch = q.nth(1).unwrap_or("").to_string();
            cur = Some((name, arch));
        } else if let (Some(key), Some(rest)) = (&cur, line.split("Used ").nth(1)) {
            let num_before = |unit: &str| -> u32 {
                rest.split(',')
                    .find(|p| p.trim().ends_with(unit))
                    .and_then(|p| p.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            out.insert(key.clone(), Ptxas { regs: num_before("registers"), smem: num_before("bytes smem") });
        }
    }
    out
}

/// CTAs per SM and the limit that binds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Occupancy {
    /// Resident CTAs per SM (0: does not fit).
    pub ctas: u32,
    /// `regs`, `smem`, `threads` or `blocks`.
    pub limit: &'static str,
}

/// CTAs of `threads` threads with `regs` registers each and `smem` bytes
/// (static + dynamic) that fit on one SM of `gpu`.
pub fn occupancy(gpu: &Gpu, threads: u32, regs: u32, smem: u32) -> Occupancy {
    let warps = threads.div_ceil(32).max(1);
    let regs_per_warp = (regs.max(1) * 32).div_ceil(REG_UNIT) * REG_UNIT;
    // Registers are split over the 4 sub-partitions; a warp lives on one.
    let by_regs = (REGS_PER_SM / 4 / regs_per_warp) * 4 / warps;
    let per_cta = (smem + SMEM_RESERVED_PER_CTA).div_ceil(SMEM_UNIT) * SMEM_UNIT;
    let by_smem = gpu.smem_per_sm / per_cta;
    let by_threads = MAX_THREADS_PER_SM / (warps * 32);
    [(by_regs, "regs"), (by_smem, "smem"), (by_threads, "threads"), (MAX_CTAS_PER_SM, "blocks")]
        .into_iter()
        .min_by_key(|&(n, _)| n)
        .map(|(ctas, limit)| Occupancy { ctas, limit })
        .unwrap_or(Occupancy { ctas: 0, limit: "none" })
}

/// `#define NAME value` of the header, as a number.
pub fn header_define(header: &str, name: &str) -> Option<u32> {
    header.lines().find_map(|l| {
        let mut t = l.split_whitespace();
        (t.next() == Some("#define") && t.next() == Some(name)).then(|| t.next()?.trim_end_matches('u').parse().ok())?
    })
}

/// Threads per CTA and dynamic shared memory of a kernel's launch (the host's
/// plan functions; the amounts from kernels/tf_kernels.h), None for kernels the
/// model does not launch.
pub fn launch_of(header: &str, kernel: &str) -> Option<(u32, u32)> {
    let d = |n: &str| header_define(header, n);
    let sixteen = kernel.contains("_f16") || kernel.contains("_bf16");
    if kernel.starts_with("pattention_out64") {
        return Some((128, d("TF_PATTENTION_SMEM_OUT64")?));
    }
    if kernel.starts_with("pattention_scores_reduce") {
        return Some((128, 0)); // 4 warps, one a row (pattention.rs REDUCE_ROWS)
    }
    if kernel.starts_with("pattention_scores") || kernel.starts_with("pattention_out") {
        let stage = if kernel.starts_with("pattention_scores") { "SCORES" } else { "OUT" };
        return if sixteen {
            let define = if stage == "SCORES" { "TF_PATTENTION_SMEM_SCORES" } else { "TF_PATTENTION_SMEM_MMA" };
            Some((128, d(define)?))
        } else {
            Some((256, d(&format!("TF_PATTENTION_SMEM_{stage}_F32"))?))
        };
    }
    if kernel.starts_with("pattention_decode") {
        return Some((128, d("TF_PATTENTION_SMEM_DECODE")?));
    }
    if kernel.starts_with("gemm_tc_reduce") {
        return Some((256, 0)); // ops/gemm.rs REDUCE_THREADS
    }
    if kernel.starts_with("gemm_tc") {
        return Some((128, d("TF_GEMM_TC_SMEM")?)); // ops/gemm.rs
    }
    if kernel.starts_with("pattention_rows") {
        return Some((256, 0)); // 8 warps, one a row (pattention.rs ROWS_PER_CTA)
    }
    if kernel.starts_with("pattention_combine") || kernel.starts_with("attn_combine") {
        return Some((128, 0));
    }
    if kernel.starts_with("attn_decode") {
        let hd: u32 = kernel.rsplit("_hd").next()?.parse().ok()?;
        let stages = d(&format!("TF_ATTN_DECODE_STAGES_HD{hd}"))?;
        return Some((d("TF_ATTN_THREADS")?, stages * 4 * d("TF_ATTN_DECODE_BLOCK_N")? * hd));
    }
    if kernel.starts_with("attn_bwd_delta") {
        return Some((256, 0)); // a warp a row (ops/block.rs rows_geometry)
    }
    if kernel.starts_with("attn_bwd") {
        let hd: u32 = kernel.rsplit("_hd").next()?.parse().ok()?;
        let (block, step) = (d("TF_ATTN_BWD_BLOCK")?, d(&format!("TF_ATTN_BWD_STEP_HD{hd}"))?);
        return Some((d("TF_ATTN_THREADS")?, 4 * block * hd + 8 * step * hd + 16 * step));
    }
    if kernel.starts_with("attn_fwd") {
        let hd: u32 = kernel.rsplit("_hd").next()?.parse().ok()?;
        let threads = d("TF_ATTN_THREADS")?;
        if sixteen {
            let bm = d("TF_ATTN_BLOCK_M")?;
            let bn = d(&format!("TF_ATTN_BLOCK_N_HD{hd}"))?;
            return Some((threads, (bm + 2 * bn) * hd * 2));
        }
        let (bm, bn) = (d("TF_ATTN_F32_BLOCK_M")?, d("TF_ATTN_F32_BLOCK_N")?);
        return Some((threads, 4 * (bm * (hd + 1) + bn * (hd + 1) + bn * hd + bm * (bn + 1) + 3 * bm)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_report() {
        let r = "ptxas info    : Compiling entry function 'pattention_out_bf16' for 'sm_90a'\n\
                 ptxas info    : Function properties for pattention_out_bf16\n    0 bytes stack frame\n\
                 ptxas info    : Used 168 registers, used 1 barriers, 512 bytes smem, 536 bytes cmem[0]\n";
        let m = parse_ptxas(r);
        assert_eq!(m[&("pattention_out_bf16".into(), "sm_90a".into())], Ptxas { regs: 168, smem: 512 });
    }

    #[test]
    fn ctas_per_sm() {
        // 128 threads, 168 regs (5376 a warp): 3 warps a sub-partition = 3 CTAs of 4 warps
        let a100 = &GPUS[0];
        assert_eq!(occupancy(a100, 128, 168, 0), Occupancy { ctas: 3, limit: "regs" });
        // 68 KB + 1 KB reserved: 2 on A100 (164 KB), 3 on H100 (228 KB)
        assert_eq!(occupancy(a100, 128, 128, 69632), Occupancy { ctas: 2, limit: "smem" });
        assert_eq!(occupancy(&GPUS[1], 128, 128, 69632).ctas, 3);
        assert_eq!(occupancy(a100, 1024, 16, 0), Occupancy { ctas: 2, limit: "threads" });
        assert_eq!(occupancy(a100, 32, 16, 0), Occupancy { ctas: 32, limit: "blocks" });
    }

    #[test]
    fn launches_from_the_header() {
        let h = "#define TF_PATTENTION_SMEM_MMA 69632 /* x */\n#define TF_PATTENTION_SMEM_SCORES 65536\n\
                 #define TF_ATTN_THREADS 128\n\
                 #define TF_ATTN_BLOCK_M 128\n#define TF_ATTN_BLOCK_N_HD64 64\n";
        assert_eq!(launch_of(h, "pattention_scores_bf16"), Some((128, 65536)));
        assert_eq!(launch_of(h, "pattention_out_f16"), Some((128, 69632)));
        assert_eq!(launch_of(h, "attn_fwd_split_bf16_hd64"), Some((128, 256 * 64 * 2)));
        assert_eq!(launch_of(h, "pattention_scores_reduce_f16"), Some((128, 0)));
        assert_eq!(launch_of(h, "grow_rows"), None);
        let a = "#define TF_ATTN_THREADS 128\n#define TF_ATTN_DECODE_BLOCK_N 64\n\
                 #define TF_ATTN_DECODE_STAGES_HD128 3\n#define TF_ATTN_BWD_BLOCK 64\n#define TF_ATTN_BWD_STEP_HD128 32\n";
        assert_eq!(launch_of(a, "attn_decode_split_bf16_hd128"), Some((128, 3 * 4 * 64 * 128)));
        assert_eq!(launch_of(a, "attn_bwd_dq_f16_hd128"), Some((128, 4 * 64 * 128 + 8 * 32 * 128 + 16 * 32)));
        let g = "#define TF_GEMM_TC_SMEM 65536 /* x */\n";
        assert_eq!(launch_of(g, "gemm_tc_bf16_cc"), Some((128, 65536)));
    }
}
