//! The trainer: model, optimizer state, schedule and growth, stepped one
//! optimizer step at a time.

use super::data::Corpus;
use crate::{
    adamw_step_model, cross_entropy, loss_and_grads, model_forward, param_tensors, param_tensors_mut, AdamWConfig,
    AdamWState, Error, ModelParams, Result, TokenformerConfig,
};

const OP: &str = "Trainer";

/// A growth in the middle of training: before step `at` (0-based, i.e. after
/// `at` completed steps) every block's Pattentions grow to these slot counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowPlan {
    /// Completed steps before the growth; `0 < at < steps` is not required, but
    /// `at < steps` is.
    pub at: u64,
    /// New query/key/value slot count.
    pub qkv: usize,
    /// New output-projection slot count.
    pub proj: usize,
    /// New FFN slot count.
    pub ffn: usize,
    /// Zero new keys and pinned `n_ref` (outputs unchanged), else random init.
    pub preserving: bool,
}

/// Everything that defines a run (what a checkpoint must restore).
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// The released config the run started from (`tiny`, …).
    pub base: String,
    /// Total optimizer steps (the schedule's length).
    pub steps: u64,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence (each window holds `seq + 1`: inputs and targets).
    pub seq: usize,
    /// Seed of the model init, the growth rows and the batches.
    pub seed: u64,
    /// Optimizer hyper-parameters (peak lr in `adamw.lr`).
    pub adamw: AdamWConfig,
    /// The growth, if any.
    pub grow: Option<GrowPlan>,
}

/// Where [`Trainer::step`] computes the gradients. A device backend lives in a
/// crate that depends on this one (tf-host), so it comes in through
/// [`Trainer::step_with`] as a [`Gradients`] function with the same contract
/// (mean loss and mean gradients over a batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// tf-ref's exact f64 gradients ([`loss_and_grads`]), one sequence at a time
    /// on up to `threads` CPU threads (the result does not depend on `threads`).
    #[default]
    Reference,
}

/// The gradient computation of one step: given the parameters, their config and
/// the batch's windows (`seq + 1` tokens each: inputs, then shifted targets),
/// the mean loss and the mean gradients over the windows, shaped like the
/// parameters.
pub type Gradients<'a> = dyn FnMut(&ModelParams, &TokenformerConfig, &[&[u32]]) -> Result<(f64, ModelParams)> + 'a;

/// What one [`Trainer::step`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The step (0-based) that was taken.
    pub step: u64,
    /// Mean cross-entropy of the step's batch, before the update.
    pub loss: f64,
    /// The learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// `Some((before, after))` when the model grew at this step: the batch loss
    /// just before and just after the growth.
    pub grown: Option<(f64, f64)>,
}

/// A training run in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Trainer {
    /// The run's settings.
    pub run: RunConfig,
    /// The current model config (slot counts change at a growth).
    pub cfg: TokenformerConfig,
    /// The parameters.
    pub params: ModelParams,
    /// The AdamW moments; `opt.step` is the number of completed steps.
    pub opt: AdamWState,
    /// Where gradients are computed.
    pub backend: Backend,
    /// CPU threads of the reference backend (results do not depend on it).
    pub threads: usize,
}

impl Trainer {
    /// A fresh run: the base config (`seq` may not exceed its context length),
    /// the official init with `run.seed`, zero moments.
    ///
    /// Errors: an unknown base config, `steps`, `batch` or `seq` of 0, `seq`
    /// above the config's, an invalid AdamW config, a growth plan at or after
    /// the last step or with a slot count below the config's.
    pub fn new(run: RunConfig) -> Result<Self> {
        let cfg = TokenformerConfig::by_name(&run.base)?;
        run.check(&cfg)?;
        let params = ModelParams::init(&cfg, run.seed)?;
        let opt = AdamWState::for_model(&params);
        Ok(Trainer { run, cfg, params, opt, backend: Backend::Reference, threads: 1 })
    }

    /// Completed steps.
    pub fn step_count(&self) -> u64 {
        self.opt.step
    }

    /// Whether every step has been taken.
    pub fn done(&self) -> bool {
        self.opt.step >= self.run.steps
    }

    /// Takes step `step_count()`: first the planned growth if it is due, then
    /// the batch's loss and gradients and one AdamW step at `lr_at(step, steps)`.
    ///
    /// Errors: the corpus too short for `seq`, and any error of the backend or
    /// the optimizer (a non-finite gradient norm, …).
    pub fn step(&mut self, data: &Corpus) -> Result<StepReport> {
        let (backend, threads) = (self.backend, self.threads);
        let mut reference =
            |p: &ModelParams, c: &TokenformerConfig, w: &[&[u32]]| reference_grads(backend, threads, p, c, w);
        self.step_with(data, &mut reference)
    }

    /// [`Trainer::step`] with the gradients from `grads` (e.g. a device backend)
    /// instead of [`Trainer::backend`]; everything else (data, growth, schedule,
    /// the f64 AdamW step on the host) is the same.
    pub fn step_with(&mut self, data: &Corpus, grads: &mut Gradients<'_>) -> Result<StepReport> {
        let step = self.opt.step;
        data.check_fits(self.run.seq, false)?;
        let mut grown = None;
        if let Some(g) = self.run.grow.filter(|g| g.at == step) {
            let before = self.batch_loss(data, step)?;
            self.grow(g.qkv, g.proj, g.ffn, g.preserving)?;
            grown = Some((before, self.batch_loss(data, step)?));
        }
        let windows = data.batch(self.run.seed, step, self.run.batch, self.run.seq);
        let (loss, g) = grads(&self.params, &self.cfg, &windows)?;
        let lr = self.run.adamw.lr_at(step, self.run.steps);
        let info = adamw_step_model(&self.run.adamw, lr, &mut self.opt, &mut self.params, &g)?;
        Ok(StepReport { step, loss, lr, grad_norm: info.grad_norm, grown })
    }

    /// Grows every Pattention to the given slot counts, and the optimizer state
    /// with it: the moments of the appended rows are zero. With `preserving`
    /// the model computes exactly what it did before (zero keys, pinned `n_ref`).
    /// New random rows continue the init streams of `run.seed`.
    pub fn grow(&mut self, qkv: usize, proj: usize, ffn: usize, preserving: bool) -> Result<()> {
        let mut params = self.params.clone();
        let cfg = params.grow(&self.cfg, qkv, proj, ffn, preserving, self.run.seed)?;
        let sizes: Vec<usize> = param_tensors(&params).iter().map(|t| t.len()).collect();
        for moments in [&mut self.opt.m, &mut self.opt.v] {
            for (m, &n) in moments.iter_mut().zip(&sizes) {
                // Parameter tokens are [slots, d] row-major: new rows are appended.
                m.resize(n, 0.0);
            }
        }
        self.params = params;
        self.cfg = cfg;
        Ok(())
    }

    /// Mean loss of `windows` by the forward pass alone.
    fn forward_loss(&self, windows: &[&[u32]]) -> Result<f64> {
        if windows.is_empty() {
            return Err(Error::InvalidArgument { op: OP, msg: "no windows to evaluate".into() });
        }
        let mut total = 0.0;
        for w in windows {
            let logits = model_forward(&self.cfg, &self.params, &w[..w.len() - 1])?;
            total += cross_entropy(logits.view(), &w[1..])?.0;
        }
        Ok(total / windows.len() as f64)
    }

    /// The mean loss of step `step`'s training batch under the current
    /// parameters (forward only; the same value [`step`](Self::step) reports).
    pub fn batch_loss(&self, data: &Corpus, step: u64) -> Result<f64> {
        data.check_fits(self.run.seq, false)?;
        self.forward_loss(&data.batch(self.run.seed, step, self.run.batch, self.run.seq))
    }

    /// The mean loss on the held-out windows ([`Corpus::eval_batch`]).
    pub fn eval_loss(&self, data: &Corpus) -> Result<f64> {
        data.check_fits(self.run.seq, true)?;
        self.forward_loss(&data.eval_batch(self.run.batch, self.run.seq))
    }
}

impl RunConfig {
    /// Checks the run against its base config `cfg` (see [`Trainer::new`]).
    pub fn check(&self, cfg: &TokenformerConfig) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument { op: OP, msg });
        for (name, v) in [("steps", self.steps as usize), ("batch", self.batch), ("seq", self.seq)] {
            if v == 0 {
                return bad(format!("{name} must be >= 1"));
            }
        }
        if self.seq > cfg.seq {
            return bad(format!("seq {} is above config {:?}'s context length {}", self.seq, cfg.name, cfg.seq));
        }
        self.adamw.validate()?;
        if let Some(g) = &self.grow {
            if g.at >= self.steps {
                return bad(format!("the growth at step {} is not before the last step ({} steps)", g.at, self.steps));
            }
            for (what, old, new) in
                [("qkv", cfg.qkv_slots, g.qkv), ("proj", cfg.proj_slots, g.proj), ("ffn", cfg.ffn_slots, g.ffn)]
            {
                if new < old {
                    return bad(format!("growth to {new} {what} slots: the model already has {old}"));
                }
            }
            cfg.with_slots(g.qkv, g.proj, g.ffn)?;
        }
        Ok(())
    }
}

/// The reference backend's mean loss and mean gradients over `windows` (each
/// `seq + 1` tokens), on up to `threads` threads.
fn reference_grads(
    backend: Backend,
    threads: usize,
    params: &ModelParams,
    cfg: &TokenformerConfig,
    windows: &[&[u32]],
) -> Result<(f64, ModelParams)> {
    let Backend::Reference = backend;
    let one = |w: &[u32]| loss_and_grads(params, cfg, &w[..w.len() - 1], &w[1..]);
    let threads = threads.clamp(1, windows.len().max(1));
    let results: Vec<Result<(f64, ModelParams)>> = if threads == 1 {
        windows.iter().map(|w| one(w)).collect()
    } else {
        let chunk = windows.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> =
                windows.chunks(chunk).map(|c| s.spawn(move || c.iter().map(|w| one(w)).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        })
    };
    // Summed in window order whatever the threads: bitwise reproducible.
    batch_mean(results)
}

/// The mean loss and mean gradients of a batch from its windows' `(loss,
/// gradients)`, summed in the given order (so the result is reproducible to the
/// bit) and divided by their number: the contract of a [`Gradients`] function.
/// The first error is returned; an empty batch is an error.
pub fn batch_mean(windows: impl IntoIterator<Item = Result<(f64, ModelParams)>>) -> Result<(f64, ModelParams)> {
    let (mut n, mut total) = (0usize, 0.0);
    let mut sum: Option<ModelParams> = None;
    for r in windows {
        let (loss, g) = r?;
        n += 1;
        total += loss;
        match &mut sum {
            None => sum = Some(g),
            Some(acc) => {
                for (a, b) in param_tensors_mut(acc).into_iter().zip(param_tensors(&g)) {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                }
            }
        }
    }
    let mut grads = sum.ok_or_else(|| Error::InvalidArgument { op: OP, msg: "a batch of 0 sequences".into() })?;
    let n = n as f64;
    for t in param_tensors_mut(&mut grads) {
        t.iter_mut().for_each(|x| *x /= n);
    }
    Ok((total / n, grads))
}
