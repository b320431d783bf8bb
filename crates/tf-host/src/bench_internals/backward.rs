//! The Pattention backward at training shapes, and the measurement behind its
//! one open design question: recompute `A = X·K_Pᵀ` in the backward (the
//! default) or read the scores the forward kept (`pattention_backward_kept`,
//! `GradOptions::keep_scores`). Three timed variants per case: the recomputing
//! backward, the backward from kept scores (kept once, by a forward before the
//! timing), and the recompute product alone (the same gemm call the backward
//! makes). Keeping pays by the difference of the first two, at the memory price
//! of `t·n·2` bytes per Pattention per layer.

use half::bf16;

use super::{median_time, random, BenchSet, Hook, Row, Variant, Work};
use crate::device::Device;
use crate::error::Result;
use crate::ops::gemm::{gemm, Operand};
use crate::ops::pattention::{pattention_keeping_into, Norm, PattentionArgs, PattentionOptions};
use crate::ops::pattention_backward::{
    pattention_backward, pattention_backward_kept, pattention_backward_workspace_bytes,
};
use crate::tensor::Tensor;
use crate::workspace::Workspace;

/// A Pattention-backward case: width d (= d_in = d_out), n parameter tokens, t
/// tokens (batch × sequence), bf16, the default norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackwardCase {
    /// Model width.
    pub d: usize,
    /// Parameter tokens.
    pub n: usize,
    /// Tokens.
    pub t: usize,
}

/// 450m's qkv/proj (1024, 1024) and ffn (1024, 4096) Pattentions at 16384 tokens
/// (8 sequences of 2048); the full set adds 1.5b's (1536, 1536 / 6144) and t = 2048.
pub fn backward_cases(set: BenchSet) -> Vec<BackwardCase> {
    let mut shapes = vec![(1024, 1024), (1024, 4096)];
    let mut ts = vec![16384];
    if set == BenchSet::Full {
        shapes.extend([(1536, 1536), (1536, 6144)]);
        ts.insert(0, 2048);
    }
    let mut v = Vec::new();
    for &(d, n) in &shapes {
        for &t in &ts {
            v.push(BackwardCase { d, n, t });
        }
    }
    v
}

/// Times one case: `backward` (FLOPs of its five products, `10·t·n·d`),
/// `backward (kept scores)` (four, `8·t·n·d`) and `recompute A` (`2·t·n·d`).
pub fn run_backward(dev: &Device, case: &BackwardCase, hook: Hook<'_>) -> Result<Vec<Row>> {
    let BackwardCase { d, n, t } = *case;
    let x: Tensor<bf16> = random(dev, &[t, d], 1.0, 30)?;
    let k_p: Tensor<bf16> = random(dev, &[n, d], 0.05, 31)?;
    let v_p: Tensor<bf16> = random(dev, &[n, d], 0.05, 32)?;
    let dy: Tensor<bf16> = random(dev, &[t, d], 1.0, 33)?;
    let opts = PattentionOptions { norm: Norm::L2NormGelu, ..Default::default() };
    let mut ws = Workspace::new(dev, pattention_backward_workspace_bytes(t, n)?)?;
    let param = format!("d{d}_n{n}_t{t}");
    let group = "pattention_backward/bf16".to_string();
    let (tf, nf, df) = (t as f64, n as f64, d as f64);

    let mut whole = || {
        let args = PattentionArgs { x: x.view(), k_p: k_p.view(), v_p: v_p.view(), opts };
        pattention_backward(dev, &args, &dy.view(), Some(&mut ws)).map(drop)
    };
    let flops = 10.0 * tf * nf * df;
    let w = Work::Flops(flops);
    hook(&mut Variant {
        group: group.clone(),
        function: "backward".into(),
        param: param.clone(),
        work: w,
        run: &mut whole,
    });
    let t_whole = median_time(dev, 7, 3, &mut whole)?;

    // A = X·K_Pᵀ into an f32 [t, n] matrix, as the backward's first call.
    let mut a: Tensor<f32> = dev.zeros(&[t, n])?;
    let mut recompute = || {
        let (xp, kp) = (x.view().ptr(), k_p.view().ptr());
        let mut av = a.view_mut();
        let ap = av.ptr_mut();
        // SAFETY: x is [t, d] and k_p [n, d] bf16 with row strides d, a an f32
        // [t, n] matrix of row stride n; the borrows and guards outlive the launch.
        unsafe {
            gemm::<bf16, bf16>("bench", dev, (t, n, d), Operand::rows(xp.addr, d), Operand::rows(kp.addr, d), ap.addr)
        }
    };
    let w = Work::Flops(2.0 * tf * nf * df);
    let f = "recompute A".to_string();
    hook(&mut Variant { group: group.clone(), function: f, param: param.clone(), work: w, run: &mut recompute });
    let t_recompute = median_time(dev, 7, 3, &mut recompute)?;

    let args = PattentionArgs { x: x.view(), k_p: k_p.view(), v_p: v_p.view(), opts };
    let mut y: Tensor<bf16> = dev.zeros(&[t, d])?;
    let kept = pattention_keeping_into(dev, &args, &mut y.view_mut(), None)?;
    let mut from_kept = || pattention_backward_kept(dev, &args, &kept, &dy.view(), Some(&mut ws)).map(drop);
    let kept_flops = 8.0 * tf * nf * df;
    let w = Work::Flops(kept_flops);
    let f = "backward (kept scores)".to_string();
    hook(&mut Variant { group, function: f, param: param.clone(), work: w, run: &mut from_kept });
    let t_kept = median_time(dev, 7, 3, &mut from_kept)?;

    let elem = std::mem::size_of::<bf16>() as f64;
    let io = elem * (2.0 * tf * df + 2.0 * nf * df) + 4.0 * (tf * df + 2.0 * nf * df);
    let row = |variant: &str, flops: f64, min_bytes: f64, time| Row {
        family: "pattention_backward",
        case: format!("bf16/{param}"),
        variant: variant.into(),
        flops,
        min_bytes,
        time,
        n,
        d,
    };
    Ok(vec![
        row("backward", flops, io, t_whole),
        row("recompute A (gemm_tc)", 2.0 * tf * nf * df, elem * (tf + nf) * df + 4.0 * tf * nf, t_recompute),
        row("backward (kept scores)", kept_flops, io + elem * tf * nf, t_kept),
    ])
}
