//! Not part of the API: hidden from the documentation and free to change in any
//! release.
//!
//! The benchmark cases and their measurement, shared by `tokenformer bench` and
//! the criterion benches (`benches/*.rs`): the device's measured peaks, median
//! CUDA-event timing, the Pattention-vs-dense, attention and growth cases of the
//! benchmarks issue, the decode step (uncaptured and as a decode graph), the
//! Pattention backward (and recomputing A against keeping S), the roofline table, JSON lines and an SVG chart.
//!
//! Everything here times a CUDA device: [`Device::time_iters`] refuses the
//! emulator, whose timings are not performance.
//!
//! Each case runner allocates its inputs (random normal values from the growth
//! kernel's Philox initialiser, never zeros), then for each variant calls a
//! `hook` with the closure it times (criterion benches register it as a
//! criterion benchmark; the CLI passes a no-op), then takes the median of
//! repeated CUDA-event samples into a [`Row`].

use std::fmt::Write as _;
use std::time::Duration;

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::attention::AttnOptions;
use crate::ops::attention::{attention_into, AttnArgs};
use crate::ops::grow::{grow_batch, GrowInit, GrowItem};
use crate::ops::linear::linear_into;
use crate::ops::pattention::{pattention_into, pattention_workspace_bytes, Norm, PattentionArgs, PattentionOptions};
use crate::ops::rownorm::pattention_norm_into;
use crate::tensor::Tensor;
use crate::workspace::Workspace;
use half::bf16;

mod backward;
mod decode;
pub use backward::{backward_cases, run_backward, BackwardCase};
pub use decode::{decode_cases, run_decode, DecodeCase};

/// Input buffers each timed closure rotates over, so caches do not flatter.
const ROTATE: usize = 4;

/// Which cases run: the device kit's few-minute set, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchSet {
    /// d 1024 and 1536, T 16384, one sweep of norms and dtypes at d = n = 1024;
    /// attention head dims 64 and 128, three lengths, bf16.
    Quick,
    /// Every shape of the benchmarks issue.
    Full,
}

impl BenchSet {
    /// `TF_BENCH_SET=quick` gives [`BenchSet::Quick`], anything else [`BenchSet::Full`].
    pub fn from_env() -> BenchSet {
        if std::env::var("TF_BENCH_SET").is_ok_and(|v| v == "quick") {
            BenchSet::Quick
        } else {
            BenchSet::Full
        }
    }
}

/// What a variant's throughput counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Work {
    /// Floating-point operations per call.
    Flops(f64),
    /// Bytes moved per call.
    Bytes(f64),
}

/// One timed variant, as given to the hook: criterion's group, function and
/// parameter, the work per call, and the closure to time.
pub struct Variant<'a> {
    /// Criterion group, e.g. `pattention/bf16`.
    pub group: String,
    /// Criterion function, e.g. `fused`.
    pub function: String,
    /// Criterion parameter (the case), e.g. `l2_norm_gelu/d1024_n1024_t16384`.
    pub param: String,
    /// Work per call.
    pub work: Work,
    /// One call of the variant (queued on the device's stream).
    pub run: &'a mut dyn FnMut() -> Result<()>,
}

/// The hook type: called once per variant before its median is taken.
pub type Hook<'h> = &'h mut dyn FnMut(&mut Variant<'_>);

/// The device's peaks, measured at the start of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peaks {
    /// A large cuBLAS bf16 product, FLOP/s.
    pub flops: f64,
    /// A large device-to-device copy, bytes/s (read + write).
    pub bytes: f64,
}

/// One measured case and variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `pattention`, `attention` or `grow`.
    pub family: &'static str,
    /// The case, e.g. `bf16/l2_norm_gelu/d1024_n1024_t16384`.
    pub case: String,
    /// The variant, e.g. `fused`, `unfused(cuBLAS)`, `dense dxd (cuBLAS)`.
    pub variant: String,
    /// FLOPs of one call (0 for copies).
    pub flops: f64,
    /// Minimum bytes one call must move.
    pub min_bytes: f64,
    /// Median time of one call.
    pub time: Duration,
    /// Pattention: the parameter-token count n (the chart's x); else 0.
    pub n: usize,
    /// Pattention: the model width d; attention: the head dim; else 0.
    pub d: usize,
}

impl Row {
    /// The floor: the larger of compute and memory time at the measured peaks.
    pub fn floor(&self, p: &Peaks) -> f64 {
        (self.flops / p.flops).max(self.min_bytes / p.bytes)
    }
    /// Achieved TFLOP/s.
    pub fn tflops(&self) -> f64 {
        self.flops / self.time.as_secs_f64() / 1e12
    }
}

/// Median GPU time of one call of `f`: `reps` samples of `per` back-to-back
/// calls each (CUDA events), after one warm-up sample.
pub fn median_time<F: FnMut() -> Result<()>>(dev: &Device, reps: usize, per: u64, mut f: F) -> Result<Duration> {
    let per = per.max(1);
    dev.time_iters(per, &mut f)?;
    let mut v = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        v.push(dev.time_iters(per, &mut f)?.as_secs_f64() / per as f64);
    }
    v.sort_by(f64::total_cmp);
    Ok(Duration::from_secs_f64(v[v.len() / 2]))
}

/// A tensor of N(0, std²) values (Philox, on the device; never zeros).
pub fn random<T: DType>(dev: &Device, shape: &[usize], std: f32, seed: u64) -> Result<Tensor<T>> {
    let (rows, cols) = match shape {
        [] => (1, 1),
        [c] => (1, *c),
        [r, rest @ ..] => (*r, rest.iter().product()),
    };
    let mut t = dev.zeros::<T>(&[rows, cols])?;
    grow_batch(
        dev,
        vec![GrowItem { src: None, dst: t.view_mut(), rows_old: 0, init: GrowInit::Normal { std, seed } }],
    )?;
    t.reshape(shape)
}

/// Measures the peaks: an 8192³ cuBLAS bf16 product and a 1 GiB copy.
pub fn measure_peaks(dev: &Device) -> Result<Peaks> {
    let n = 8192;
    let a: Tensor<bf16> = random(dev, &[n, n], 1.0, 1)?;
    let b: Tensor<bf16> = random(dev, &[n, n], 1.0, 2)?;
    let mut c: Tensor<bf16> = dev.zeros(&[n, n])?;
    let t = median_time(dev, 5, 5, || linear_into(dev, &a.view(), &b.view(), &mut c.view_mut()))?;
    let flops = 2.0 * (n as f64).powi(3) / t.as_secs_f64();
    drop((a, b, c));
    let len = 1usize << 29; // 1 GiB of bf16
    let src: Tensor<bf16> = dev.zeros(&[len])?;
    let mut dst: Tensor<bf16> = dev.zeros(&[len])?;
    let t = median_time(dev, 5, 3, || dst.copy_from(&src))?;
    let bytes = 2.0 * (len * 2) as f64 / t.as_secs_f64();
    Ok(Peaks { flops, bytes })
}

/// One Pattention case (docs/tokenformer.md shapes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PattentionCase {
    /// Model width (d_in = d_out).
    pub d: usize,
    /// Parameter tokens.
    pub n: usize,
    /// Tokens (batch × sequence).
    pub t: usize,
    /// The norm.
    pub norm: Norm,
    /// `bf16` or `f16`.
    pub dtype: &'static str,
}

/// The Pattention cases: d 768…1536, n = d/2 (the dense layer's equal-FLOPs
/// point), d and 4d, T 4096 and 16384; bf16 with all three norms and f16
/// with l2_norm_gelu (the quick set: fewer widths, T 16384, the sweep only at d = n = 1024).
pub fn pattention_cases(set: BenchSet) -> Vec<PattentionCase> {
    let quick = set == BenchSet::Quick;
    let ds: &[usize] = if quick { &[1024, 1536] } else { &[768, 1024, 1280, 1536] };
    let ts: &[usize] = if quick { &[16384] } else { &[4096, 16384] };
    let mut v = Vec::new();
    for &d in ds {
        for n in [d / 2, d, 4 * d] {
            for &t in ts {
                v.push(PattentionCase { d, n, t, norm: Norm::L2NormGelu, dtype: "bf16" });
                if !quick || (d == 1024 && n == d) {
                    v.push(PattentionCase { d, n, t, norm: Norm::GeluL2Norm, dtype: "bf16" });
                    v.push(PattentionCase { d, n, t, norm: Norm::Softmax, dtype: "bf16" });
                    v.push(PattentionCase { d, n, t, norm: Norm::L2NormGelu, dtype: "f16" });
                }
            }
        }
    }
    v
}

/// Times one Pattention case in three variants: `fused` (this project's
/// kernels, one reused workspace), `unfused(cuBLAS)` (cuBLAS `X·K_Pᵀ` → the
/// norm kernel over `[T, n]` in global memory → cuBLAS `S·V_P`, what a PyTorch
/// user runs) and `dense dxd (cuBLAS)` (a `d → d` linear layer). FLOPs
/// `4·T·d·n` (Θ not counted), dense `2·T·d²`.
pub fn run_pattention<T: DType>(dev: &Device, case: &PattentionCase, hook: Hook<'_>) -> Result<Vec<Row>> {
    let PattentionCase { d, n, t, norm, .. } = *case;
    let opts = PattentionOptions { norm, ..Default::default() };
    let mut xs = Vec::with_capacity(ROTATE);
    for i in 0..ROTATE {
        xs.push(random::<T>(dev, &[t, d], 1.0, 10 + i as u64)?);
    }
    let k_p: Tensor<T> = random(dev, &[n, d], 0.05, 20)?;
    let v_p: Tensor<T> = random(dev, &[n, d], 0.05, 21)?;
    let v_pt: Tensor<T> = random(dev, &[d, n], 0.05, 22)?; // V_Pᵀ for cuBLAS' x·wᵀ form
    let w: Tensor<T> = random(dev, &[d, d], 0.05, 23)?;
    let mut y: Tensor<T> = dev.zeros(&[t, d])?;
    let mut scores: Tensor<T> = dev.zeros(&[t, n])?;
    let mut ws = Workspace::new(dev, pattention_workspace_bytes::<T>(t, n, d)?)?;

    let flops = 4.0 * (t * d * n) as f64;
    let dense_flops = 2.0 * (t * d * d) as f64;
    let elem = std::mem::size_of::<T>() as f64;
    let io_bytes = elem * (2 * t * d + 2 * n * d) as f64; // X, Y, K_P, V_P
    let unfused_bytes = io_bytes + elem * 4.0 * (t * n) as f64; // scores written, read, rewritten, read
    let dense_bytes = elem * (2 * t * d + d * d) as f64;
    let case_id = format!("{}/d{d}_n{n}_t{t}", norm.name());
    let group = format!("pattention/{}", T::NAME);

    let mut i = 0usize;
    let mut fused = || {
        i = (i + 1) % ROTATE;
        pattention_into(
            dev,
            &PattentionArgs { x: xs[i].view(), k_p: k_p.view(), v_p: v_p.view(), opts },
            &mut y.view_mut(),
            Some(&mut ws),
        )
    };
    hook(&mut Variant {
        group: group.clone(),
        function: "fused".into(),
        param: case_id.clone(),
        work: Work::Flops(flops),
        run: &mut fused,
    });
    let t_fused = median_time(dev, 7, 3, &mut fused)?;

    let mut j = 0usize;
    let mut unfused = || {
        j = (j + 1) % ROTATE;
        linear_into(dev, &xs[j].view(), &k_p.view(), &mut scores.view_mut())?;
        pattention_norm_into(dev, &mut scores.view_mut(), &opts)?;
        linear_into(dev, &scores.view(), &v_pt.view(), &mut y.view_mut())
    };
    hook(&mut Variant {
        group: group.clone(),
        function: "unfused".into(),
        param: case_id.clone(),
        work: Work::Flops(flops),
        run: &mut unfused,
    });
    let t_unfused = median_time(dev, 7, 3, &mut unfused)?;

    let mut k = 0usize;
    let mut dense = || {
        k = (k + 1) % ROTATE;
        linear_into(dev, &xs[k].view(), &w.view(), &mut y.view_mut())
    };
    hook(&mut Variant {
        group,
        function: "dense_dxd".into(),
        param: format!("d{d}_t{t}"),
        work: Work::Flops(dense_flops),
        run: &mut dense,
    });
    let t_dense = median_time(dev, 7, 3, &mut dense)?;

    let case = format!("{}/{case_id}", T::NAME);
    let row = |variant: &str, flops: f64, min_bytes: f64, time: Duration| Row {
        family: "pattention",
        case: case.clone(),
        variant: variant.into(),
        flops,
        min_bytes,
        time,
        n,
        d,
    };
    Ok(vec![
        row("fused", flops, io_bytes, t_fused),
        row("unfused(cuBLAS)", flops, unfused_bytes, t_unfused),
        row("dense dxd (cuBLAS)", dense_flops, dense_bytes, t_dense),
    ])
}

/// [`run_pattention`] with the case's storage type.
pub fn run_pattention_case(dev: &Device, case: &PattentionCase, hook: Hook<'_>) -> Result<Vec<Row>> {
    match case.dtype {
        "f16" => run_pattention::<half::f16>(dev, case, hook),
        "bf16" => run_pattention::<bf16>(dev, case, hook),
        other => Err(Error::InvalidArgument {
            op: "bench",
            msg: format!("Pattention benchmark dtype {other:?}: bf16 or f16"),
        }),
    }
}

/// One attention case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionCase {
    /// Head dimension.
    pub head_dim: usize,
    /// Sequence length (T_q = T_k).
    pub seq: usize,
    /// Causal mask.
    pub causal: bool,
    /// `bf16` or `f16`.
    pub dtype: &'static str,
}

/// The attention cases: head dims 64, 80, 96, 128 (quick: 64, 128), sequences
/// 1k…16k, causal and not, bf16 and f16 (quick: bf16).
pub fn attention_cases(set: BenchSet) -> Vec<AttentionCase> {
    let quick = set == BenchSet::Quick;
    let hds: &[usize] = if quick { &[64, 128] } else { &[64, 80, 96, 128] };
    let seqs: &[usize] = if quick { &[1024, 4096, 16384] } else { &[1024, 2048, 4096, 8192, 16384] };
    let mut v = Vec::new();
    for &head_dim in hds {
        for &seq in seqs {
            for causal in [false, true] {
                v.push(AttentionCase { head_dim, seq, causal, dtype: "bf16" });
                if !quick {
                    v.push(AttentionCase { head_dim, seq, causal, dtype: "f16" });
                }
            }
        }
    }
    v
}

/// Times one attention case: batch × heads filling the device (16k tokens per
/// batch, 2048 / head_dim heads, as FlashAttention's benchmark). FLOPs
/// `4·B·H·T²·D`, halved when causal.
pub fn run_attention<T: DType>(dev: &Device, case: &AttentionCase, hook: Hook<'_>) -> Result<Vec<Row>> {
    let AttentionCase { head_dim: hd, seq, causal, .. } = *case;
    let heads = 2048 / hd;
    let batch = (16384 / seq).max(1);
    let shape = [batch, seq, heads, hd];
    let q: Tensor<T> = random(dev, &shape, 1.0, 1)?;
    let k: Tensor<T> = random(dev, &shape, 1.0, 2)?;
    let v: Tensor<T> = random(dev, &shape, 1.0, 3)?;
    let mut o: Tensor<T> = dev.zeros(&shape)?;
    let mut lse: Tensor<f32> = dev.zeros(&[batch, heads, seq])?;
    let opts = AttnOptions { causal, ..Default::default() };
    let mut flops = 4.0 * (batch * heads * seq * seq * hd) as f64;
    if causal {
        flops /= 2.0;
    }
    let elem = std::mem::size_of::<T>() as f64;
    let bytes = elem * 4.0 * (batch * seq * heads * hd) as f64 + 4.0 * (batch * heads * seq) as f64;
    let id = format!("hd{hd}_s{seq}_b{batch}_h{heads}_{}", if causal { "causal" } else { "full" });
    let mut run = || {
        attention_into(
            dev,
            &AttnArgs { q: q.view(), k: k.view(), v: v.view(), opts },
            &mut o.view_mut(),
            &mut lse.view_mut(),
            None,
        )
    };
    hook(&mut Variant {
        group: format!("attention/{}", T::NAME),
        function: "flash".into(),
        param: id.clone(),
        work: Work::Flops(flops),
        run: &mut run,
    });
    let time = median_time(dev, 7, 3, &mut run)?;
    Ok(vec![Row {
        family: "attention",
        case: format!("{}/{id}", T::NAME),
        variant: "flash".into(),
        flops,
        min_bytes: bytes,
        time,
        n: 0,
        d: hd,
    }])
}

/// [`run_attention`] with the case's storage type.
pub fn run_attention_case(dev: &Device, case: &AttentionCase, hook: Hook<'_>) -> Result<Vec<Row>> {
    match case.dtype {
        "f16" => run_attention::<half::f16>(dev, case, hook),
        "bf16" => run_attention::<bf16>(dev, case, hook),
        other => Err(Error::InvalidArgument {
            op: "bench",
            msg: format!("attention benchmark dtype {other:?}: bf16 or f16"),
        }),
    }
}

/// Times the row-append growth of a whole 1.5B-config model's parameter tokens
/// (40 layers × 5 Pattentions × keys and values, bf16) grown by 25 %, in ONE
/// launch (zeros and Philox-normal new rows), against one device-to-device copy
/// of the old bytes. Bytes counted: old rows read and written, new rows written.
pub fn run_grow(dev: &Device, hook: Hook<'_>) -> Result<Vec<Row>> {
    let cfg = tf_ref::TokenformerConfig::by_name("1.5b")
        .map_err(|e| Error::InvalidArgument { op: "bench", msg: e.to_string() })?;
    let d = cfg.d;
    let mut shapes = Vec::new();
    for _ in 0..cfg.layers {
        for slots in [cfg.qkv_slots, cfg.qkv_slots, cfg.qkv_slots, cfg.proj_slots, cfg.ffn_slots] {
            shapes.push((slots, slots + slots / 4)); // keys
            shapes.push((slots, slots + slots / 4)); // values
        }
    }
    let mut srcs: Vec<Tensor<bf16>> = Vec::with_capacity(shapes.len());
    let mut dsts: Vec<Tensor<bf16>> = Vec::with_capacity(shapes.len());
    for (i, &(ro, rn)) in shapes.iter().enumerate() {
        srcs.push(random(dev, &[ro, d], 0.02, i as u64)?);
        dsts.push(dev.zeros(&[rn, d])?);
    }
    let old_bytes: usize = shapes.iter().map(|&(ro, _)| ro * d * 2).sum();
    let new_bytes: usize = shapes.iter().map(|&(ro, rn)| (rn - ro) * d * 2).sum();
    let moved = (2 * old_bytes + new_bytes) as f64;

    let mut grow = |normal: bool| {
        let items: Vec<GrowItem<'_, bf16>> = srcs
            .iter()
            .zip(dsts.iter_mut())
            .zip(&shapes)
            .enumerate()
            .map(|(i, ((s, dst), &(ro, _)))| GrowItem {
                src: Some(s.view()),
                dst: dst.view_mut(),
                rows_old: ro,
                init: if normal { GrowInit::Normal { std: 0.02, seed: i as u64 } } else { GrowInit::Zeros },
            })
            .collect();
        grow_batch(dev, items)
    };
    let mut times = Vec::new();
    for (name, normal) in [("grow_zeros", false), ("grow_normal", true)] {
        let mut run = || grow(normal);
        hook(&mut Variant {
            group: "grow/bf16".into(),
            function: name.into(),
            param: "1.5b_x1.25".into(),
            work: Work::Bytes(moved),
            run: &mut run,
        });
        times.push(median_time(dev, 7, 3, &mut run)?);
    }
    drop((srcs, dsts));
    let flat_src: Tensor<bf16> = dev.zeros(&[old_bytes / 2])?;
    let mut flat_dst: Tensor<bf16> = dev.zeros(&[old_bytes / 2])?;
    let mut copy = || flat_dst.copy_from(&flat_src);
    hook(&mut Variant {
        group: "grow/bf16".into(),
        function: "memcpy_dtod".into(),
        param: "1.5b_old_bytes".into(),
        work: Work::Bytes(2.0 * old_bytes as f64),
        run: &mut copy,
    });
    let t_copy = median_time(dev, 7, 3, &mut copy)?;
    let row = |case: &str, variant: &str, bytes: f64, time: Duration| Row {
        family: "grow",
        case: case.into(),
        variant: variant.into(),
        flops: 0.0,
        min_bytes: bytes,
        time,
        n: 0,
        d,
    };
    Ok(vec![
        row("bf16/1.5b_x1.25", "grow zeros", moved, times[0]),
        row("bf16/1.5b_x1.25", "grow normal", moved, times[1]),
        row("bf16/1.5b_old", "memcpy dtod", 2.0 * old_bytes as f64, t_copy),
    ])
}

/// The roofline table: FLOPs, minimum bytes, time, TFLOP/s, GB/s and the
/// achieved fraction of the floor at the measured peaks.
pub fn table(rows: &[Row], p: &Peaks) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:<38} {:<20} {:>9} {:>9} {:>10} {:>8} {:>8} {:>7}",
        "family", "case", "variant", "GFLOP", "MB", "time µs", "TFLOP/s", "GB/s", "floor%"
    );
    for r in rows {
        let secs = r.time.as_secs_f64();
        let _ = writeln!(
            s,
            "{:<10} {:<38} {:<20} {:>9.2} {:>9.1} {:>10.1} {:>8.1} {:>8.0} {:>6.1}%",
            r.family,
            r.case,
            r.variant,
            r.flops / 1e9,
            r.min_bytes / 1e6,
            secs * 1e6,
            r.flops / secs / 1e12,
            r.min_bytes / secs / 1e9,
            100.0 * r.floor(p) / secs
        );
    }
    s
}

/// The ratios of each Pattention case: fused over unfused speed, and fused
/// TFLOP/s over dense TFLOP/s. One line per case.
pub fn pattention_ratios(rows: &[Row]) -> String {
    let mut s = String::new();
    let mut cases: Vec<&str> = rows.iter().filter(|r| r.family == "pattention").map(|r| r.case.as_str()).collect();
    cases.dedup();
    for c in cases {
        let get = |v: &str| rows.iter().find(|r| r.case == c && r.variant.starts_with(v));
        if let (Some(f), Some(u), Some(d)) = (get("fused"), get("unfused"), get("dense")) {
            let _ = writeln!(
                s,
                "{c}: fused/unfused speed {:.2}x, fused/dense TFLOP/s {:.2}",
                u.time.as_secs_f64() / f.time.as_secs_f64(),
                f.tflops() / d.tflops()
            );
        }
    }
    s
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// One JSON object per row, one per line (the device kit's `bench.jsonl`
/// format: family, case, variant, flops, min_bytes, seconds, floor_seconds,
/// peak_flops, peak_bytes).
pub fn json_lines(rows: &[Row], p: &Peaks) -> String {
    let mut s = String::new();
    for r in rows {
        let _ = writeln!(
            s,
            "{{\"family\":{},\"case\":{},\"variant\":{},\"flops\":{},\"min_bytes\":{},\"seconds\":{:e},\"floor_seconds\":{:e},\"peak_flops\":{:e},\"peak_bytes\":{:e}}}",
            json_str(r.family),
            json_str(&r.case),
            json_str(&r.variant),
            r.flops,
            r.min_bytes,
            r.time.as_secs_f64(),
            r.floor(p),
            p.flops,
            p.bytes
        );
    }
    s
}

/// Appends [`json_lines`] to the file named by `$TF_BENCH_JSON`, if set. The
/// file is replaced atomically (old lines + new ones, `tf_ref::atomic`), so a
/// failed write leaves it as it was rather than with a partial last line.
pub fn append_env_json(rows: &[Row], p: &Peaks) -> std::io::Result<()> {
    if let Some(path) = std::env::var_os("TF_BENCH_JSON") {
        let path = std::path::Path::new(&path);
        let mut bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        bytes.extend_from_slice(json_lines(rows, p).as_bytes());
        tf_ref::atomic::write_atomic(path, &bytes)?;
    }
    Ok(())
}

/// A hand-written SVG chart of Pattention TFLOP/s against n (log₂ axis): one
/// line per (variant, d) over the bf16 `l2_norm_gelu` cases at the largest T,
/// plus the peak as a dashed line. Empty chart (with a note) without such rows.
pub fn svg(rows: &[Row], p: Option<&Peaks>) -> String {
    let pick: Vec<&Row> =
        rows.iter().filter(|r| r.family == "pattention" && r.case.starts_with("bf16/l2_norm_gelu/")).collect();
    let t_of = |r: &Row| r.case.rsplit("_t").next().and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
    let t_max = pick.iter().map(|r| t_of(r)).max().unwrap_or(0);
    let pick: Vec<&Row> = pick.into_iter().filter(|r| t_of(r) == t_max).collect();
    let (w, h) = (760.0f64, 440.0f64);
    let (l, r_, top, bot) = (70.0, 200.0, 40.0, 60.0);
    let (pw, ph) = (w - l - r_, h - top - bot);
    let ns: Vec<f64> = pick.iter().map(|r| (r.n.max(1) as f64).log2()).collect();
    let (x0, x1) = ns.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let (x0, x1) = if x0.is_finite() && x1 > x0 { (x0 - 0.25, x1 + 0.25) } else { (8.0, 13.0) };
    let peak = p.map(|p| p.flops / 1e12);
    let y_max = pick.iter().map(|r| r.tflops()).chain(peak).fold(1.0f64, f64::max) * 1.1;
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + ph - y / y_max * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, "<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">Pattention vs dense, bf16 l2_norm_gelu, T = {t_max}: TFLOP/s against n</text>",
        l + pw / 2.0
    );
    // axes, grid and ticks
    let _ =
        writeln!(s, "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>", top + ph, l + pw, top + ph);
    let _ = writeln!(s, "<line x1=\"{l}\" y1=\"{top}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>", top + ph);
    for i in 0..=5 {
        let y = y_max * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/><text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{4:.0}</text>",
            sy(y),
            l + pw,
            l - 6.0,
            sy(y) + 4.0,
            y
        );
    }
    let mut ticks: Vec<usize> = pick.iter().map(|r| r.n).collect();
    ticks.sort_unstable();
    ticks.dedup();
    for n in &ticks {
        let x = sx((*n.max(&1) as f64).log2());
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{0}\" x2=\"{x:.1}\" y2=\"{1}\" stroke=\"black\"/><text x=\"{x:.1}\" y=\"{2}\" text-anchor=\"middle\" font-size=\"10\">{n}</text>",
            top + ph,
            top + ph + 5.0,
            top + ph + 18.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">n (parameter tokens, log scale)</text>",
        l + pw / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        "<text x=\"18\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {0})\">TFLOP/s</text>",
        top + ph / 2.0
    );
    if let Some(pk) = peak {
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"gray\" stroke-dasharray=\"6 4\"/><text x=\"{1}\" y=\"{2:.1}\" text-anchor=\"end\" fill=\"gray\">cuBLAS bf16 peak {pk:.0}</text>",
            sy(pk),
            l + pw,
            sy(pk) - 4.0
        );
    }
    if pick.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"gray\">no bf16 l2_norm_gelu Pattention rows measured</text>",
            l + pw / 2.0,
            top + ph / 2.0
        );
    }
    // series: (variant, d)
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
    let mut series: Vec<(String, usize)> = pick.iter().map(|r| (r.variant.clone(), r.d)).collect();
    series.sort();
    series.dedup();
    let mut ds: Vec<usize> = series.iter().map(|s| s.1).collect();
    ds.sort_unstable();
    ds.dedup();
    for (k, (variant, d)) in series.iter().enumerate() {
        let color = colors[ds.iter().position(|x| x == d).unwrap_or(0) % colors.len()];
        let dash = if variant.starts_with("fused") {
            ""
        } else if variant.starts_with("unfused") {
            " stroke-dasharray=\"5 3\""
        } else {
            " stroke-dasharray=\"1 3\""
        };
        let mut pts: Vec<(f64, f64)> = pick
            .iter()
            .filter(|r| &r.variant == variant && r.d == *d)
            .map(|r| (sx((r.n.max(1) as f64).log2()), sy(r.tflops())))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            path.join(" ")
        );
        for (x, y) in &pts {
            let _ = writeln!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"/>");
        }
        let ly = top + 14.0 + 16.0 * k as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{0}\" y1=\"{ly:.1}\" x2=\"{1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/><text x=\"{2}\" y=\"{3:.1}\">{4} d={d}</text>",
            l + pw + 10.0,
            l + pw + 36.0,
            l + pw + 42.0,
            ly + 4.0,
            xml_escape(variant)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(variant: &str, n: usize, d: usize, us: u64) -> Row {
        Row {
            family: "pattention",
            case: format!("bf16/l2_norm_gelu/d{d}_n{n}_t16384"),
            variant: variant.into(),
            flops: 4.0 * (16384 * d * n) as f64,
            min_bytes: 1e6,
            time: Duration::from_micros(us),
            n,
            d,
        }
    }

    #[test]
    fn outputs_are_well_formed() {
        let rows =
            vec![row("fused", 512, 1024, 100), row("fused", 1024, 1024, 180), row("unfused(cuBLAS)", 1024, 1024, 300)];
        let p = Peaks { flops: 900e12, bytes: 4e12 };
        let svg = svg(&rows, Some(&p));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        let j = json_lines(&rows, &p);
        assert_eq!(j.lines().count(), 3);
        assert!(j.lines().all(|l| l.starts_with("{\"family\":\"pattention\"") && l.ends_with('}')));
        assert!(table(&rows, &p).contains("fused"));
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert!(svg_empty_is_valid());
    }

    fn svg_empty_is_valid() -> bool {
        let s = svg(&[], None);
        s.contains("no bf16") && s.trim_end().ends_with("</svg>")
    }

    #[test]
    fn case_lists_match_the_issue() {
        assert_eq!(pattention_cases(BenchSet::Full).len(), 4 * 3 * 2 * 4);
        assert_eq!(attention_cases(BenchSet::Full).len(), 4 * 5 * 2 * 2);
        assert!(pattention_cases(BenchSet::Quick).len() < 20);
    }
}
