//! `train`: training on the f64 reference backend (tf-ref's [`Trainer`]) or on
//! a device (tf-host's [`tf_host::Trainer`]: model, gradients and AdamW on the
//! device), with an optional growth in the middle, exact checkpoints and resume,
//! a progress line per step, JSON lines and an SVG loss curve.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use tf_host::{bf16, f16, DType, Device, LossScale};
use tf_ref::{AdamWConfig, Corpus, GrowPlan, RunConfig, StepReport, TokenformerConfig, Trainer};

use crate::util::{bar, check_output, outln, parse_slots, s, write_file, CliResult};
use crate::TrainArgs;

/// Default sequences per step.
pub const DEFAULT_BATCH: usize = 8;
/// Default tokens per sequence.
pub const DEFAULT_SEQ: usize = 64;

/// One step's record (a line of `--json`, a point of `--svg`).
struct Record {
    step: u64,
    loss: f64,
    lr: f64,
    eval_loss: Option<f64>,
    grown: Option<(f64, f64)>,
}

/// `--grow-at STEP:QKV,PROJ,FFN`.
fn parse_grow(s: &str, preserving: bool) -> CliResult<GrowPlan> {
    let (at, slots) = s
        .split_once(':')
        .ok_or_else(|| format!("--grow-at needs STEP:QKV,PROJ,FFN (e.g. 100:96,96,192), got {s:?}"))?;
    let at = at.trim().parse::<u64>().map_err(|_| format!("--grow-at: {at:?} is not a step number"))?;
    let (qkv, proj, ffn) = parse_slots("--grow-at", slots)?;
    Ok(GrowPlan { at, qkv, proj, ffn, preserving })
}

/// Checks the run's settings with messages naming the flags (tf-ref checks them again).
fn check_run(run: &RunConfig, base: &tf_ref::TokenformerConfig) -> CliResult<()> {
    if run.steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    if run.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if run.seq == 0 || run.seq > base.seq {
        return Err(format!("--seq {} must be in 1..={} (config {}'s context length)", run.seq, base.seq, base.name));
    }
    if let Some(g) = &run.grow {
        if g.at >= run.steps {
            return Err(format!("--grow-at step {} must be below --steps {}", g.at, run.steps));
        }
        for (what, old, new) in
            [("qkv", base.qkv_slots, g.qkv), ("proj", base.proj_slots, g.proj), ("ffn", base.ffn_slots, g.ffn)]
        {
            if new < old {
                return Err(format!(
                    "--grow-at: {what} slots {new} is below the model's {old} (growth only adds tokens)"
                ));
            }
        }
    }
    run.check(base).map_err(s)
}

/// A resumed run's corpus fingerprint and device metadata (the loss scaling).
type Resumed = Option<(u64, BTreeMap<String, String>)>;

/// A fresh run from the flags, or the checkpoint's run with every given flag
/// checked against it.
fn make_trainer(a: &TrainArgs) -> CliResult<(Trainer, Resumed)> {
    let grow = a.grow_at.as_deref().map(|g| parse_grow(g, a.preserving)).transpose()?;
    if a.preserving && grow.is_none() {
        return Err("--preserving needs --grow-at".into());
    }
    let Some(path) = &a.resume else {
        let name = a.config.as_deref().ok_or("--config is required (or --resume CKPT)")?;
        let base = crate::util::config(name)?;
        let steps = a.steps.ok_or("--steps is required (or --resume CKPT)")?;
        let adamw = AdamWConfig { lr: a.lr.unwrap_or(AdamWConfig::default().lr), ..AdamWConfig::default() };
        adamw.validate().map_err(|e| format!("--lr: {e}"))?;
        let run = RunConfig {
            base: base.name.clone(),
            steps,
            batch: a.batch.unwrap_or(DEFAULT_BATCH),
            seq: a.seq.unwrap_or(DEFAULT_SEQ),
            seed: a.seed.unwrap_or(0),
            adamw,
            grow,
        };
        check_run(&run, &base)?;
        return Ok((Trainer::new(run).map_err(s)?, None));
    };
    let (t, data, meta) = Trainer::load_with(path).map_err(|e| format!("--resume: {e}"))?;
    let r = &t.run;
    let differs = |flag: &str, given: String, saved: String| {
        Err(format!("--resume: {flag} {given} differs from the checkpoint's {saved} (omit it to keep the run's)"))
    };
    if let Some(c) = &a.config {
        if !c.eq_ignore_ascii_case(&r.base) {
            return differs("--config", c.clone(), r.base.clone());
        }
    }
    for (flag, given, saved) in [
        ("--steps", a.steps, Some(r.steps)),
        ("--batch", a.batch.map(|b| b as u64), Some(r.batch as u64)),
        ("--seq", a.seq.map(|b| b as u64), Some(r.seq as u64)),
        ("--seed", a.seed, Some(r.seed)),
    ] {
        if given.is_some() && given != saved {
            return differs(flag, format!("{}", given.unwrap_or(0)), format!("{}", saved.unwrap_or(0)));
        }
    }
    if a.lr.is_some_and(|lr| lr != r.adamw.lr) {
        return differs("--lr", format!("{}", a.lr.unwrap_or(0.0)), r.adamw.lr.to_string());
    }
    if grow.is_some() && grow != r.grow {
        return differs("--grow-at", a.grow_at.clone().unwrap_or_default(), format!("{:?}", r.grow));
    }
    Ok((t, Some((data, meta))))
}

/// What the training loop needs of a backend: tf-ref's trainer (the reference
/// backend) or tf-host's (the device backend), one run contract.
trait Backend {
    fn run(&self) -> &RunConfig;
    fn cfg(&self) -> &TokenformerConfig;
    fn step_count(&self) -> u64;
    fn step(&mut self, data: &Corpus) -> CliResult<StepReport>;
    fn eval_loss(&self, data: &Corpus) -> CliResult<f64>;
    fn save(&self, path: &Path, data: u64) -> CliResult<()>;
    /// The loss scaling, as "S (rule)" (the device backend only).
    fn loss_scale(&self) -> Option<String> {
        None
    }
}

impl Backend for Trainer {
    fn run(&self) -> &RunConfig {
        &self.run
    }
    fn cfg(&self) -> &TokenformerConfig {
        &self.cfg
    }
    fn step_count(&self) -> u64 {
        Trainer::step_count(self)
    }
    fn step(&mut self, data: &Corpus) -> CliResult<StepReport> {
        Trainer::step(self, data).map_err(s)
    }
    fn eval_loss(&self, data: &Corpus) -> CliResult<f64> {
        Trainer::eval_loss(self, data).map_err(s)
    }
    fn save(&self, path: &Path, data: u64) -> CliResult<()> {
        Trainer::save(self, path, data).map_err(s)
    }
}

impl<T: DType> Backend for tf_host::Trainer<T> {
    fn run(&self) -> &RunConfig {
        tf_host::Trainer::run(self)
    }
    fn cfg(&self) -> &TokenformerConfig {
        self.config()
    }
    fn step_count(&self) -> u64 {
        tf_host::Trainer::step_count(self)
    }
    fn step(&mut self, data: &Corpus) -> CliResult<StepReport> {
        tf_host::Trainer::step(self, data).map_err(s)
    }
    fn eval_loss(&self, data: &Corpus) -> CliResult<f64> {
        tf_host::Trainer::eval_loss(self, data).map_err(s)
    }
    fn loss_scale(&self) -> Option<String> {
        let rule = match self.loss_scale_rule() {
            LossScale::Off => "off",
            LossScale::Static(_) => "static",
            LossScale::Dynamic { .. } => "dynamic",
        };
        Some(format!("{} ({rule})", tf_host::Trainer::loss_scale(self)))
    }
    fn save(&self, path: &Path, data: u64) -> CliResult<()> {
        tf_host::Trainer::save(self, path, data).map_err(s)
    }
}

/// How the device backend scales the loss: a given `--loss-scale`, else a
/// resumed run's saved rule and state, else the storage type's default.
struct ScaleChoice<'a> {
    given: Option<LossScale>,
    saved: Option<&'a BTreeMap<String, String>>,
    default: LossScale,
}

/// The device backend's trainer in storage type `dtype`, in the state of `t`
/// (a fresh run's init or a checkpoint's state, as f32 master weights).
fn device_trainer(
    dev: &Device,
    dtype: &str,
    t: &Trainer,
    memory: Memory,
    scale: &ScaleChoice,
) -> CliResult<Box<dyn Backend>> {
    fn make<T: DType + 'static>(
        dev: &Device,
        t: &Trainer,
        memory: Memory,
        scale: &ScaleChoice,
    ) -> CliResult<Box<dyn Backend>> {
        let mut d = tf_host::Trainer::<T>::from_reference(dev, t).map_err(s)?;
        d.set_recompute(memory.recompute);
        d.set_keep_scores(memory.keep_scores);
        let restored = match (scale.given, scale.saved) {
            (None, Some(meta)) => d.restore_loss_scale(meta).map_err(|e| format!("--resume: {e}"))?,
            _ => false,
        };
        if !restored {
            d.set_loss_scale(scale.given.unwrap_or(scale.default)).map_err(|e| format!("--loss-scale: {e}"))?;
        }
        Ok(Box::new(d))
    }
    match dtype {
        "f16" => make::<f16>(dev, t, memory, scale),
        "bf16" => make::<bf16>(dev, t, memory, scale),
        _ => make::<f32>(dev, t, memory, scale),
    }
}

/// What a device run keeps between its forward and its backward
/// (`--recompute`, `--keep-scores`).
#[derive(Clone, Copy)]
struct Memory {
    recompute: bool,
    keep_scores: bool,
}

/// `--loss-scale`: off, dynamic (GradScaler's defaults) or a factor; absent,
/// dynamic for f16 (whose gradients underflow first) and off otherwise.
fn parse_loss_scale(arg: Option<&str>, dtype: &str) -> CliResult<LossScale> {
    let dynamic = LossScale::Dynamic { init: 65536.0, growth_interval: 2000 };
    Ok(match arg {
        None if dtype == "f16" => dynamic,
        None | Some("off") => LossScale::Off,
        Some("dynamic") => dynamic,
        Some(v) => match v.parse::<f32>() {
            Ok(f) if f.is_finite() && f > 0.0 => LossScale::Static(f),
            _ => return Err(format!("--loss-scale {v}: expected off, dynamic or a finite factor > 0")),
        },
    })
}

/// Runs `tokenformer train`.
pub fn run(a: &TrainArgs) -> CliResult<ExitCode> {
    if !["f32", "f16", "bf16"].contains(&a.dtype.as_str()) {
        return Err(format!("--dtype {}: expected f32, f16 or bf16", a.dtype));
    }
    if a.dtype != "f32" && a.device == "reference" {
        return Err(format!("--dtype {}: the reference backend computes in f64; --dtype is for --device", a.dtype));
    }
    let device = match a.device.as_str() {
        "reference" => None,
        "emulator" => Some(crate::util::device(crate::DeviceArg::Emulator)?.0),
        "cuda" => Some(crate::util::device(crate::DeviceArg::Cuda)?.0),
        "auto" => Some(crate::util::device(crate::DeviceArg::Auto)?.0),
        other => {
            return Err(format!(
                "--device {other}: expected reference (tf-ref's f64 gradients on the CPU), emulator, cuda or auto \
                 (the device backward kernels, f32)"
            ))
        }
    };
    if a.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if a.recompute && device.is_none() {
        return Err("--recompute: the reference backend keeps its activations; --recompute is for --device".into());
    }
    if a.keep_scores && device.is_none() {
        return Err("--keep-scores: the reference backend has no kernels to skip; --keep-scores is for --device".into());
    }
    if a.loss_scale.is_some() && device.is_none() {
        return Err("--loss-scale: the reference backend computes in f64; --loss-scale is for --device".into());
    }
    parse_loss_scale(a.loss_scale.as_deref(), &a.dtype)?;
    if a.eval_every == Some(0) || a.log_every == 0 {
        return Err("--eval-every and --log-every must be at least 1".into());
    }
    let (mut rt, saved_data) = make_trainer(a)?;
    rt.threads = a.threads;
    let data = match &a.tokenizer {
        Some(path) => {
            let tok = crate::tokenize::load(path, &rt.cfg.name, rt.cfg.vocab)?;
            let (corpus, bytes) = crate::tokenize::corpus(&a.data, &tok, rt.cfg.vocab)?;
            outln!(
                "tokenizer: {} ({} tokens): {bytes} bytes of text -> {} tokens",
                path.display(),
                tok.vocab_size(),
                corpus.len()
            );
            corpus
        }
        None => Corpus::read(&a.data, rt.cfg.vocab).map_err(|e| format!("--data: {e}"))?,
    };
    data.check_fits(rt.run.seq, a.eval_every.is_some()).map_err(|e| format!("--data {}: {e}", a.data.display()))?;
    if let Some((fp, _)) = &saved_data {
        if *fp != data.fingerprint() {
            return Err(format!("--resume: the checkpoint was trained on other data than {}", a.data.display()));
        }
    }
    let stop = a.stop_at.unwrap_or(rt.run.steps);
    if stop <= rt.step_count() || stop > rt.run.steps {
        return Err(format!(
            "--stop-at {stop} must be in {}..={} (the run has taken {} of {} steps)",
            rt.step_count() + 1,
            rt.run.steps,
            rt.step_count(),
            rt.run.steps
        ));
    }
    for (flag, p) in [("--save", &a.save), ("--json", &a.json), ("--svg", &a.svg)] {
        if let Some(p) = p {
            check_output(flag, p)?;
        }
    }
    let threads = rt.threads;
    let mut t: Box<dyn Backend> = match &device {
        None => Box::new(rt),
        Some(dev) => {
            let scale = ScaleChoice {
                given: a.loss_scale.as_deref().map(|v| parse_loss_scale(Some(v), &a.dtype)).transpose()?,
                saved: saved_data.as_ref().map(|(_, meta)| meta),
                default: parse_loss_scale(None, &a.dtype)?,
            };
            let memory = Memory { recompute: a.recompute, keep_scores: a.keep_scores };
            device_trainer(dev, &a.dtype, &rt, memory, &scale)?
        }
    };
    let r = t.run();
    outln!(
        "train: config {} ({} params), {} steps (from {}), batch {} x seq {}, lr {} cosine, seed {}, {} corpus tokens \
         ({} train, {} held out), {}",
        t.cfg().name,
        crate::util::millions(t.cfg().param_count()),
        r.steps,
        t.step_count(),
        r.batch,
        r.seq,
        r.adamw.lr,
        r.seed,
        data.len(),
        data.train().len(),
        data.eval().len(),
        match &device {
            None => format!("reference backend (f64, {threads} thread{})", if threads == 1 { "" } else { "s" }),
            Some(d) => format!(
                "device backend on {}, {} model (f32 gradients, f32 master weights and AdamW on the device), loss \
                 scale {}",
                d.name(),
                a.dtype,
                t.loss_scale().unwrap_or_default()
            ),
        }
    );
    let tokens_per_step = (r.batch * r.seq) as f64;
    let progress =
        bar(stop - t.step_count(), if device.is_some() { "training (device)" } else { "training (reference)" });
    let mut records = Vec::new();
    let (start, first) = (Instant::now(), t.step_count());
    let mut compute = 0.0;
    while t.step_count() < stop {
        let t0 = Instant::now();
        let rep = t.step(&data)?;
        let dt = t0.elapsed().as_secs_f64();
        compute += dt;
        let last = t.step_count() == stop;
        let eval_loss = match a.eval_every {
            Some(k) if t.step_count() % k == 0 || last => Some(t.eval_loss(&data)?),
            _ => None,
        };
        progress.inc(1);
        if let Some((before, after)) = rep.grown {
            let c = t.cfg();
            let same = if before.to_bits() == after.to_bits() { "bitwise equal" } else { "changed" };
            let line = format!(
                "grow: before step {} to {},{},{} slots ({}, {} params): batch loss {before:.6} -> {after:.6} ({same})",
                rep.step,
                c.qkv_slots,
                c.proj_slots,
                c.ffn_slots,
                if t.run().grow.is_some_and(|g| g.preserving) { "preserving" } else { "random init" },
                crate::util::millions(c.param_count())
            );
            progress.suspend(|| crate::util::write_stdout(format_args!("{line}"), true))?;
        }
        if rep.step % a.log_every == 0 || last || eval_loss.is_some() {
            let ev = eval_loss.map_or(String::new(), |e| format!("  eval {e:.4}"));
            let line = format!(
                "step {:>5}/{}  loss {:.4}{ev}  lr {:.3e}  |g| {:.3}  {:.0} tok/s",
                rep.step,
                t.run().steps,
                rep.loss,
                rep.lr,
                rep.grad_norm,
                tokens_per_step / dt
            );
            progress.suspend(|| crate::util::write_stdout(format_args!("{line}"), true))?;
        }
        records.push(Record { step: rep.step, loss: rep.loss, lr: rep.lr, eval_loss, grown: rep.grown });
    }
    progress.finish_and_clear();
    let n = (t.step_count() - first) as f64;
    let backend = match &device {
        None => format!("reference backend, {threads} thread{}", if threads == 1 { "" } else { "s" }),
        Some(d) => format!("device backend on {}", d.name()),
    };
    let tokens_per_s = n * tokens_per_step / compute.max(1e-9);
    outln!("trained {} steps in {:.2} s: {:.0} tokens/s ({backend})", n, start.elapsed().as_secs_f64(), tokens_per_s);
    if let Some(d) = device.as_ref().filter(|d| d.is_cuda() && n > 0.0) {
        outln!("{}", utilization(t.cfg(), t.run().seq, tokens_per_s, &d.name(), &a.dtype));
    }
    if let Some(p) = &a.save {
        t.save(p, data.fingerprint()).map_err(|e| format!("--save: {e}"))?;
        outln!("saved step {} of {} to {}", t.step_count(), t.run().steps, p.display());
    }
    if let Some(p) = &a.json {
        write_file("--json", p, json_lines(&records).as_bytes())?;
    }
    if let Some(p) = &a.svg {
        write_file("--svg", p, svg(&records, t.run().steps).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON number (non-finite values as `null`).
fn num(v: f64) -> String {
    if v.is_finite() {
        // Debug prints the shortest decimal that reads back to the same f64.
        format!("{v:?}")
    } else {
        "null".into()
    }
}

fn json_lines(records: &[Record]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&format!("{{\"step\":{},\"loss\":{},\"lr\":{}", r.step, num(r.loss), num(r.lr)));
        if let Some(e) = r.eval_loss {
            out.push_str(&format!(",\"eval_loss\":{}", num(e)));
        }
        out.push_str(&format!(",\"grown\":{}", r.grown.is_some()));
        if let Some((b, a)) = r.grown {
            out.push_str(&format!(",\"loss_before_growth\":{},\"loss_after_growth\":{}", num(b), num(a)));
        }
        out.push_str("}\n");
    }
    out
}

/// The loss curve: training loss as a line, eval loss as dots, the growth step
/// as a dashed vertical line.
fn svg(records: &[Record], steps: u64) -> String {
    let (w, h, l, r, top, bot) = (720.0, 360.0, 60.0, 20.0, 20.0, 40.0);
    let losses = records.iter().flat_map(|r| std::iter::once(r.loss).chain(r.eval_loss)).filter(|v| v.is_finite());
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, if hi > lo { hi } else { lo + 1.0 }) } else { (0.0, 1.0) };
    let x = |s: f64| l + (w - l - r) * s / (steps.max(2) - 1) as f64;
    let y = |v: f64| top + (h - top - bot) * (hi - v) / (hi - lo);
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
    );
    o.push_str(&format!(
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{l}\" y1=\"{top}\" x2=\"{l}\" \
         y2=\"{}\" stroke=\"black\"/>\n",
        h - bot,
        w - r,
        h - bot,
        h - bot
    ));
    for (v, anchor) in [(hi, top + 4.0), (lo, h - bot)] {
        o.push_str(&format!("<text x=\"{}\" y=\"{anchor}\" text-anchor=\"end\">{v:.3}</text>\n", l - 4.0));
    }
    o.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step (0..{steps})</text>\n<text x=\"14\" y=\"{}\" \
         transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">loss</text>\n",
        (l + w - r) / 2.0,
        h - 10.0,
        h / 2.0,
        h / 2.0
    ));
    if let Some(g) = records.iter().find(|r| r.grown.is_some()) {
        let gx = x(g.step as f64);
        o.push_str(&format!(
            "<line x1=\"{gx:.1}\" y1=\"{top}\" x2=\"{gx:.1}\" y2=\"{}\" stroke=\"red\" stroke-dasharray=\"4 3\"/>\n\
             <text x=\"{:.1}\" y=\"{}\" fill=\"red\">grown at step {}</text>\n",
            h - bot,
            gx + 4.0,
            top + 12.0,
            g.step
        ));
    }
    let pts: Vec<String> = records
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| format!("{:.1},{:.1}", x(r.step as f64), y(r.loss)))
        .collect();
    o.push_str(&format!("<polyline fill=\"none\" stroke=\"steelblue\" points=\"{}\"/>\n", pts.join(" ")));
    for r in records {
        if let Some(e) = r.eval_loss.filter(|e| e.is_finite()) {
            o.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"darkorange\"/>\n",
                x(r.step as f64),
                y(e)
            ));
        }
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_scale_flags_parse() {
        let dynamic = LossScale::Dynamic { init: 65536.0, growth_interval: 2000 };
        assert_eq!(parse_loss_scale(None, "f16").unwrap(), dynamic);
        assert_eq!(parse_loss_scale(None, "bf16").unwrap(), LossScale::Off);
        assert_eq!(parse_loss_scale(Some("dynamic"), "f32").unwrap(), dynamic);
        assert_eq!(parse_loss_scale(Some("off"), "f16").unwrap(), LossScale::Off);
        assert_eq!(parse_loss_scale(Some("1024"), "f16").unwrap(), LossScale::Static(1024.0));
        for bad in ["0", "-2", "inf", "nan", "x"] {
            assert!(parse_loss_scale(Some(bad), "f16").unwrap_err().contains("--loss-scale"), "{bad}");
        }
    }

    #[test]
    fn grow_flags_parse() {
        let g = parse_grow("5:96,96,192", true).unwrap();
        assert_eq!((g.at, g.qkv, g.proj, g.ffn, g.preserving), (5, 96, 96, 192, true));
        assert!(parse_grow("96,96,192", false).unwrap_err().contains("STEP:"));
        assert!(parse_grow("x:1,2,3", false).is_err());
    }

    #[test]
    fn svg_marks_the_growth() {
        let rec = |step, grown| Record { step, loss: 5.0 - step as f64, lr: 1e-3, eval_loss: None, grown };
        let s = svg(&[rec(0, None), rec(1, Some((4.0, 4.0))), rec(2, None)], 3);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("grown at step 1") && s.contains("polyline"));
    }
}

/// Model FLOPs a token of training: `6·N + 12·L·d·T` (N parameters, the tied
/// embedding counted once for the unembedding product; L layers of width d; T
/// tokens a sequence), the count llm.c and PaLM's MFU use (attention not halved
/// for the causal mask).
pub(crate) fn flops_per_token(cfg: &tf_ref::TokenformerConfig, seq: usize) -> f64 {
    6.0 * cfg.param_count() as f64 + 12.0 * (cfg.layers * cfg.d * seq) as f64
}

/// The dense 16-bit tensor peak of a GPU by its name (datasheet values, without
/// sparsity), for MFU; None for a GPU not listed.
pub(crate) fn dense_16bit_peak(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    if n.contains("H200") || (n.contains("H100") && !n.contains("PCIE")) {
        Some(989e12)
    } else if n.contains("H100") {
        Some(756e12)
    } else if n.contains("A100") {
        Some(312e12)
    } else {
        None
    }
}

/// The line after a device run: model TFLOP/s and, for a 16-bit model on a
/// listed GPU, the model FLOPs utilisation.
fn utilization(cfg: &tf_ref::TokenformerConfig, seq: usize, tokens_per_s: f64, gpu: &str, dtype: &str) -> String {
    let f = flops_per_token(cfg, seq);
    let achieved = f * tokens_per_s;
    let mut line = format!(
        "model FLOPs: {:.3} GFLOP a token (6·N + 12·L·d·T, N = {} parameters): {:.1} TFLOP/s",
        f / 1e9,
        cfg.param_count(),
        achieved / 1e12
    );
    match dense_16bit_peak(gpu) {
        Some(peak) if dtype != "f32" => line.push_str(&format!(
            ", MFU {:.1} % of the {gpu}'s dense {dtype} peak ({:.0} TFLOP/s, datasheet)",
            100.0 * achieved / peak,
            peak / 1e12
        )),
        Some(_) => line.push_str(" (MFU is stated for f16 / bf16 models: the tensor-core peak)"),
        None => line.push_str(&format!(" (no datasheet peak listed for {gpu}: MFU not stated)")),
    }
    line
}

#[cfg(test)]
mod mfu_tests {
    use super::*;

    #[test]
    fn flops_and_peaks() {
        let cfg = tf_ref::TokenformerConfig::by_name("150m").unwrap();
        // 6N + 12·L·d·T by hand from the config's fields
        let n = cfg.param_count() as f64;
        let want = 6.0 * n + 12.0 * cfg.layers as f64 * cfg.d as f64 * 1024.0;
        assert_eq!(flops_per_token(&cfg, 1024), want);
        assert_eq!(dense_16bit_peak("NVIDIA H200"), Some(989e12));
        assert_eq!(dense_16bit_peak("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(dense_16bit_peak("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(dense_16bit_peak("NVIDIA A100-SXM4-80GB"), Some(312e12));
        assert_eq!(dense_16bit_peak("NVIDIA L4"), None);
        let line = utilization(&cfg, 1024, 1e5, "NVIDIA H200", "bf16");
        let mfu = 100.0 * want * 1e5 / 989e12;
        assert!(line.contains(&format!("MFU {mfu:.1} %")), "{line}");
        assert!(utilization(&cfg, 1024, 1e5, "NVIDIA H200", "f32").contains("MFU is stated for f16"));
    }
}
