//! Training on the device: [`Trainer`] owns a [`Tokenformer`] and an [`AdamW`]
//! over all its parameters on one device, and runs tf-ref's training contract
//! ([`tf_ref::Trainer`]): the same [`RunConfig`], lr schedule, batches
//! ([`Corpus::batch`]), growth plan and [`StepReport`], so a reference run and a
//! device run of one `RunConfig` can be compared step by step.
//!
//! A step at `s` completed steps is, in order: the planned growth if `s` is its
//! step (the model and the optimizer state); the windows `Corpus::batch(seed, s,
//! batch, seq)`; each window's [`Tokenformer::loss_and_grads`], the f32 gradients
//! summed on the device in window order ([`ModelGrads::add_assign`]: the same bits
//! on every run); one [`AdamW::step_scaled`] at `lr_at(s, steps)` with scale
//! `1/batch`, which makes the sum the mean and updates the parameters in place.
//! Only the losses, the gradient norm and the token ids cross between host and
//! device; the parameters never do.
//!
//! The master weights are f32 (the optimizer's): the init is tf-ref's f64
//! `ModelParams::init` rounded once to f32, and the model holds them rounded to
//! its storage type `T`. Checkpoints are tf-ref's training checkpoints (every
//! value f64, each an exact f32 here), so a saved run resumes bitwise.

use std::collections::BTreeMap;
use std::path::Path;

use tf_ref::{param_tensors, param_tensors_mut, tensor_seed, AdamWState, ModelParams};
pub use tf_ref::{Corpus, GrowPlan, RunConfig, StepReport};

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::{tensor_index, value_std, SlotCounts, Tokenformer, TokenformerConfig, KEY_STD};
use crate::ops::adamw::AdamW;
use crate::ops::grow::GrowInit;
use crate::tensor::{Tensor, View};
use crate::train::{GradOptions, ModelGrads};
use tf_ref::Slot;

const OP: &str = "Trainer";

/// A training run on a device: the model of storage type `T` (f32, f16 or
/// bf16), its f32 master weights and AdamW moments, and the run's settings.
pub struct Trainer<T: DType> {
    run: RunConfig,
    model: Tokenformer<T>,
    opt: AdamW<T>,
    recompute: bool,
    keep_scores: bool,
    loss_scale: LossScale,
    /// The factor the next step scales the loss by, and the finite steps in a row
    /// taken with it (for `LossScale::Dynamic`).
    scale: f32,
    good_steps: u32,
}

/// How [`Trainer`] scales the loss's gradient before the backward (the gradients
/// are divided by the same factor inside the AdamW step, so the update is that of
/// the unscaled gradients). For 16-bit storage types: the backward rounds each
/// op's incoming gradient to `T`, and f16 flushes magnitudes below 2^-24 to zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossScale {
    /// Factor 1 (the default).
    Off,
    /// A fixed factor (finite, > 0; a power of two divides back exactly).
    Static(f32),
    /// Start at `init`; a step whose gradient norm is not finite is taken again
    /// with half the factor (at most 24 halvings a step; then the step fails with
    /// AdamW's error, as an unscaled one does); after `growth_interval` finite
    /// steps in a row the factor doubles. PyTorch's GradScaler uses `init` 2^16
    /// and an interval of 2000.
    Dynamic {
        /// The first factor.
        init: f32,
        /// Finite steps in a row before the factor doubles (>= 1).
        growth_interval: u32,
    },
}

/// Halvings of a dynamic loss scale within one step before the step is skipped.
const MAX_BACKOFFS: u32 = 24;

/// Checkpoint metadata of the loss scaling (tf-ref keeps `tokenformer.device.*`
/// keys as they are): the rule (`off`, `static:F`, `dynamic:INIT:INTERVAL`), the
/// factor of the next step, and the finite steps in a row taken with it.
const META_RULE: &str = "tokenformer.device.loss_scale";
const META_FACTOR: &str = "tokenformer.device.loss_scale.factor";
const META_GOOD: &str = "tokenformer.device.loss_scale.good_steps";

impl LossScale {
    fn to_meta(self) -> String {
        match self {
            LossScale::Off => "off".into(),
            LossScale::Static(f) => format!("static:{f}"),
            LossScale::Dynamic { init, growth_interval } => format!("dynamic:{init}:{growth_interval}"),
        }
    }

    fn from_meta(v: &str) -> Option<LossScale> {
        let parts: Vec<&str> = v.split(':').collect();
        match parts[..] {
            ["off"] => Some(LossScale::Off),
            ["static", f] => f.parse().ok().map(LossScale::Static),
            ["dynamic", init, interval] => {
                Some(LossScale::Dynamic { init: init.parse().ok()?, growth_interval: interval.parse().ok()? })
            }
            _ => None,
        }
    }
}

impl<T: DType> std::fmt::Debug for Trainer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trainer<{}>(step {} of {}, {:?})", T::NAME, self.step_count(), self.run.steps, self.model)
    }
}

fn views(ts: &[Tensor<f32>]) -> Vec<View<'_, f32>> {
    ts.iter().map(|t| t.view()).collect()
}

/// Which tensors are decayed, in parameter order: all but the final norm's
/// weight and bias (tf-ref's `adamw_step_model`).
fn decay_flags(n: usize) -> Vec<bool> {
    (0..n).map(|i| i + 2 < n).collect()
}

impl<T: DType> Trainer<T> {
    /// A fresh run on `dev`: tf-ref's official init of the base config with
    /// `run.seed` (the f64 values rounded to f32 master weights), zero moments.
    ///
    /// Errors: as [`tf_ref::Trainer::new`] (an unknown config, `steps`, `batch`
    /// or `seq` of 0, `seq` above the context, an invalid AdamW config, a growth
    /// plan at or after the last step or shrinking a slot count), and a config the
    /// device model refuses (e.g. a 16-bit `T` with `d` not a multiple of 8).
    pub fn new(dev: &Device, run: RunConfig) -> Result<Self> {
        let cfg = TokenformerConfig::by_name(&run.base)?;
        run.check(&cfg)?;
        let params = ModelParams::init(&cfg, run.seed)?;
        Self::from_state(dev, run, &cfg, &params, &AdamWState::for_model(&params))
    }

    /// A run in the state of `state` (parameters, which become the master
    /// weights rounded to f32; moments, rounded to f32; step count; settings),
    /// e.g. a reference run or a checkpoint ([`load`](Self::load)).
    ///
    /// Errors: the run's settings or the parameters not fitting its config, the
    /// moments not shaped like the parameters, and the device's errors.
    pub fn from_reference(dev: &Device, state: &tf_ref::Trainer) -> Result<Self> {
        let base = TokenformerConfig::by_name(&state.run.base)?;
        state.run.check(&base)?;
        Self::from_state(dev, state.run.clone(), &state.cfg, &state.params, &state.opt)
    }

    fn from_state(
        dev: &Device,
        run: RunConfig,
        cfg: &TokenformerConfig,
        params: &ModelParams,
        opt: &AdamWState,
    ) -> Result<Self> {
        let model = Tokenformer::<T>::from_params(dev, cfg, params)?;
        let shapes: Vec<Vec<usize>> = model.param_views().iter().map(|v| v.shape().to_vec()).collect();
        let values = param_tensors(params);
        let n = values.len();
        if opt.m.len() != n || opt.v.len() != n {
            return Err(Error::Shape {
                op: OP,
                msg: format!("{n} parameter tensors but {} and {} moments", opt.m.len(), opt.v.len()),
            });
        }
        let f32s = |v: &[f64], shape: &[usize], what: &str, i: usize| -> Result<Tensor<f32>> {
            let len: usize = shape.iter().product();
            if v.len() != len {
                return Err(Error::Shape {
                    op: OP,
                    msg: format!("{what} of tensor {i} holds {} values, the parameter {shape:?}", v.len()),
                });
            }
            dev.upload(&v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), shape)
        };
        let mut master = Vec::with_capacity(n);
        let (mut m, mut v) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (i, shape) in shapes.iter().enumerate() {
            master.push(f32s(values[i], shape, "the parameter", i)?);
            m.push(f32s(&opt.m[i], shape, "the first moment", i)?);
            v.push(f32s(&opt.v[i], shape, "the second moment", i)?);
        }
        let mut adamw = AdamW::<T>::with_master(dev, &views(&master), &decay_flags(n), run.adamw)?;
        adamw.set_moments(&views(&m), &views(&v), opt.step)?;
        Ok(Trainer {
            run,
            model,
            opt: adamw,
            recompute: false,
            keep_scores: false,
            loss_scale: LossScale::Off,
            scale: 1.0,
            good_steps: 0,
        })
    }

    /// The run's settings.
    pub fn run(&self) -> &RunConfig {
        &self.run
    }

    /// The current model config (its slot counts change at a growth).
    pub fn config(&self) -> &TokenformerConfig {
        self.model.config()
    }

    /// The model (its parameters are the master weights rounded to `T`).
    pub fn model(&self) -> &Tokenformer<T> {
        &self.model
    }

    /// The optimizer: master weights and moments per tensor, in parameter order.
    pub fn optimizer(&self) -> &AdamW<T> {
        &self.opt
    }

    /// The device.
    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// Activation recomputation on or off (off by default): each window's
    /// backward runs the blocks' forward again instead of keeping their
    /// activations ([`Tokenformer::loss_and_grads_with`]). Less memory, one more
    /// forward per step, the same bits. Not part of a checkpoint.
    pub fn set_recompute(&mut self, on: bool) {
        self.recompute = on;
    }

    /// Whether activations are recomputed.
    pub fn recompute(&self) -> bool {
        self.recompute
    }

    /// Keeping the Pattention scores on or off (off by default): the
    /// `l2_norm_gelu` Pattentions' backward reads the scores their forward kept
    /// instead of recomputing them (`GradOptions::keep_scores`). One product
    /// fewer per Pattention backward, `t·n` elements of `T` more memory per
    /// Pattention. Not part of a checkpoint.
    pub fn set_keep_scores(&mut self, on: bool) {
        self.keep_scores = on;
    }

    /// Whether the Pattention scores are kept.
    pub fn keep_scores(&self) -> bool {
        self.keep_scores
    }

    /// Sets the loss scaling ([`LossScale`]; `Off` by default) and resets its
    /// state to the rule's first factor. A checkpoint keeps the rule and its
    /// state ([`load`](Self::load) restores them). Errors: a factor that is not
    /// finite and > 0, a growth interval of 0.
    pub fn set_loss_scale(&mut self, rule: LossScale) -> Result<()> {
        let first = match rule {
            LossScale::Off => 1.0,
            LossScale::Static(f) => f,
            LossScale::Dynamic { init, growth_interval } => {
                if growth_interval == 0 {
                    return Err(Error::InvalidArgument { op: OP, msg: "the growth interval must be >= 1".into() });
                }
                init
            }
        };
        if !(first.is_finite() && first > 0.0) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("a loss scale must be finite and > 0, got {first}"),
            });
        }
        (self.loss_scale, self.scale, self.good_steps) = (rule, first, 0);
        Ok(())
    }

    /// The factor the next step scales the loss by.
    pub fn loss_scale(&self) -> f32 {
        self.scale
    }

    /// The loss scaling's rule ([`set_loss_scale`](Self::set_loss_scale)).
    pub fn loss_scale_rule(&self) -> LossScale {
        self.loss_scale
    }

    /// The loss scaling's rule and state as a checkpoint keeps them (metadata
    /// under `tokenformer.device.`, written by [`save`](Self::save)).
    pub fn loss_scale_metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (META_RULE.to_string(), self.loss_scale.to_meta()),
            (META_FACTOR.to_string(), self.scale.to_string()),
            (META_GOOD.to_string(), self.good_steps.to_string()),
        ])
    }

    /// Restores the loss scaling's rule, next factor and count of finite steps
    /// from a checkpoint's device metadata ([`tf_ref::Trainer::load_with`]), so
    /// that a resumed run scales as the uninterrupted one would. Returns false,
    /// changing nothing, when the metadata holds none (a reference backend's
    /// file, or one written before the loss scale was saved).
    ///
    /// Errors: a malformed value, a factor that is not finite and > 0.
    pub fn restore_loss_scale(&mut self, meta: &BTreeMap<String, String>) -> Result<bool> {
        let Some(rule) = meta.get(META_RULE) else { return Ok(false) };
        let bad = |k: &str| Error::InvalidArgument {
            op: OP,
            msg: format!("checkpoint metadata {k} = {:?} is malformed", meta.get(k).map_or("(missing)", |v| v)),
        };
        let rule = LossScale::from_meta(rule).ok_or_else(|| bad(META_RULE))?;
        let factor: f32 = meta.get(META_FACTOR).and_then(|v| v.parse().ok()).ok_or_else(|| bad(META_FACTOR))?;
        let good: u32 = meta.get(META_GOOD).and_then(|v| v.parse().ok()).ok_or_else(|| bad(META_GOOD))?;
        if !(factor.is_finite() && factor > 0.0) {
            return Err(bad(META_FACTOR));
        }
        self.set_loss_scale(rule)?;
        (self.scale, self.good_steps) = (factor, good);
        Ok(true)
    }

    /// Completed steps.
    pub fn step_count(&self) -> u64 {
        self.opt.steps()
    }

    /// Whether every step has been taken.
    pub fn done(&self) -> bool {
        self.step_count() >= self.run.steps
    }

    /// Takes step `step_count()` (see the module docs).
    ///
    /// Errors: the corpus too short for `seq`, every step taken already, and
    /// the device's and the optimizer's errors (a non-finite gradient norm
    /// updates nothing and is not counted, as in tf-ref).
    pub fn step(&mut self, data: &Corpus) -> Result<StepReport> {
        let step = self.step_count();
        if self.done() {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("all {} steps of the run are taken", self.run.steps),
            });
        }
        data.check_fits(self.run.seq, false)?;
        let mut grown = None;
        if let Some(g) = self.run.grow.filter(|g| g.at == step) {
            let before = self.batch_loss(data, step)?;
            self.grow(g.qkv, g.proj, g.ffn, g.preserving)?;
            grown = Some((before, self.batch_loss(data, step)?));
        }
        let windows = data.batch(self.run.seed, step, self.run.batch, self.run.seq);
        let lr = self.run.adamw.lr_at(step, self.run.steps);
        let dynamic = matches!(self.loss_scale, LossScale::Dynamic { .. });
        let mut backoffs = 0;
        loop {
            let opts = GradOptions { recompute: self.recompute, loss_scale: self.scale, keep_scores: self.keep_scores };
            let (mut total, mut sum): (f64, Option<ModelGrads>) = (0.0, None);
            for w in &windows {
                let (loss, g) = self.model.loss_and_grads_with(&w[..w.len() - 1], &w[1..], &opts)?;
                total += loss;
                match &mut sum {
                    None => sum = Some(g),
                    Some(acc) => acc.add_assign(&g)?,
                }
            }
            let sum = sum.ok_or_else(|| Error::InvalidArgument { op: OP, msg: "a batch of 0 sequences".into() })?;
            // the mean over windows and the loss scale, undone in one factor
            let scale = (1.0 / (windows.len() as f64 * f64::from(self.scale))) as f32;
            let info = match self.opt.step_scaled(&mut self.model.param_views_mut()?, &sum.views(), lr, scale) {
                Ok(info) => info,
                Err(e) => {
                    // A non-finite gradient norm: AdamW updated nothing and did not
                    // count the step. Dynamic scaling takes it again with half the
                    // factor; anything else is the caller's error.
                    let overflow = self.opt.last_norm().is_ok_and(|(n, _)| !n.is_finite());
                    if dynamic && overflow && backoffs < MAX_BACKOFFS {
                        (self.scale, self.good_steps, backoffs) = (self.scale / 2.0, 0, backoffs + 1);
                        continue;
                    }
                    return Err(e);
                }
            };
            if let LossScale::Dynamic { growth_interval, .. } = self.loss_scale {
                self.good_steps += 1;
                if self.good_steps >= growth_interval && (self.scale * 2.0).is_finite() {
                    (self.scale, self.good_steps) = (self.scale * 2.0, 0);
                }
            }
            let grad_norm = info.grad_norm.map_or(f64::NAN, f64::from);
            return Ok(StepReport { step, loss: total / windows.len() as f64, lr, grad_norm, grown });
        }
    }

    /// Grows every Pattention to the given slot counts, and the optimizer state
    /// with it: the model as [`Tokenformer::grow`] or
    /// [`Tokenformer::grow_preserving`] with `run.seed` (the rows tf-ref's
    /// `ModelParams::grow` makes: each tensor's Philox stream continued at its
    /// old row count; zero keys with `preserving`), the master weights' new rows
    /// from the same init in f32 (the values the model's rows were rounded from),
    /// zero moments for the new rows.
    ///
    /// Errors: a count below the current one, the softmax norm with
    /// `preserving` (checked before anything changes), and the device's errors
    /// (after which, e.g. an allocation failing once the model grew, the model
    /// and the optimizer state may disagree: drop the trainer).
    pub fn grow(&mut self, qkv: usize, proj: usize, ffn: usize, preserving: bool) -> Result<()> {
        let old = self.model.config().clone();
        let to = SlotCounts { qkv, proj, ffn };
        let seed = self.run.seed;
        if preserving {
            self.model.grow_preserving(to, seed)?;
        } else {
            self.model.grow(to, seed)?;
        }
        let new = self.model.config().clone();
        let v_std = value_std(&old);
        for block in 0..old.layers {
            for slot in Slot::ALL {
                let rows = new.slots(slot);
                if rows == old.slots(slot) {
                    continue;
                }
                let (ki, vi) = (tensor_index(block, slot, false), tensor_index(block, slot, true));
                let k_init = if preserving {
                    GrowInit::Zeros
                } else {
                    GrowInit::Normal { std: KEY_STD, seed: tensor_seed(seed, ki) }
                };
                let v_init = GrowInit::Normal { std: v_std, seed: tensor_seed(seed, vi) };
                // The tensor index is also the position in parameter order.
                self.opt.grow_rows_init(ki as usize, &[rows, new.d], k_init)?;
                self.opt.grow_rows_init(vi as usize, &[rows, new.d], v_init)?;
            }
        }
        Ok(())
    }

    /// The mean loss of `windows` by the forward pass alone, summed in order.
    fn forward_loss(&self, windows: &[&[u32]]) -> Result<f64> {
        if windows.is_empty() {
            return Err(Error::InvalidArgument { op: OP, msg: "no windows to evaluate".into() });
        }
        let mut total = 0.0;
        for w in windows {
            total += self.model.loss(&w[..w.len() - 1], &w[1..])?;
        }
        Ok(total / windows.len() as f64)
    }

    /// The mean loss of step `step`'s training batch under the current
    /// parameters (forward only; the value [`step`](Self::step) reports, bit for
    /// bit, when taken before that step).
    pub fn batch_loss(&self, data: &Corpus, step: u64) -> Result<f64> {
        data.check_fits(self.run.seq, false)?;
        self.forward_loss(&data.batch(self.run.seed, step, self.run.batch, self.run.seq))
    }

    /// The mean loss on the held-out windows ([`Corpus::eval_batch`]).
    pub fn eval_loss(&self, data: &Corpus) -> Result<f64> {
        data.check_fits(self.run.seq, true)?;
        self.forward_loss(&data.eval_batch(self.run.batch, self.run.seq))
    }

    /// The run as a reference trainer: the f32 master weights and moments as
    /// f64 (exactly), the step count, the settings and the pinned `n_ref`s.
    /// Continuing it on the reference backend continues this run in f64.
    pub fn to_reference(&self) -> Result<tf_ref::Trainer> {
        let mut params = self.model.to_params()?;
        let n = param_tensors(&params).len();
        let mut m = Vec::with_capacity(n);
        let mut v = Vec::with_capacity(n);
        let f64s = |t: &Tensor<f32>| -> Result<Vec<f64>> { Ok(t.to_vec()?.into_iter().map(f64::from).collect()) };
        for (i, p) in param_tensors_mut(&mut params).into_iter().enumerate() {
            let (master, (mi, vi)) = match (self.opt.master(i), self.opt.moments(i)) {
                (Some(w), Some(mv)) => (w, mv),
                _ => return Err(Error::InvalidArgument { op: OP, msg: format!("internal: no state for tensor {i}") }),
            };
            p.copy_from_slice(&f64s(master)?);
            m.push(f64s(mi)?);
            v.push(f64s(vi)?);
        }
        Ok(tf_ref::Trainer {
            run: self.run.clone(),
            cfg: self.model.config().clone(),
            params,
            opt: AdamWState { step: self.step_count(), m, v },
            backend: tf_ref::Backend::Reference,
            threads: 1,
        })
    }

    /// Writes the run as tf-ref's training checkpoint (every value f64, each an
    /// exact f32; the storage type `T` is not recorded) with the loss scaling's
    /// rule and state ([`loss_scale_metadata`](Self::loss_scale_metadata)),
    /// atomically. `data` is the corpus [`fingerprint`](Corpus::fingerprint).
    pub fn save(&self, path: &Path, data: u64) -> Result<()> {
        Ok(self.to_reference()?.save_with(path, data, &self.loss_scale_metadata())?)
    }

    /// Reads a training checkpoint (of this backend or the reference one: f64
    /// values are rounded to f32) onto `dev`, with the loss scaling it was saved
    /// with (`Off` for a reference run's file); returns the run and the corpus
    /// fingerprint it was trained on.
    pub fn load(dev: &Device, path: &Path) -> Result<(Self, u64)> {
        let (t, data, meta) = tf_ref::Trainer::load_with(path)?;
        let mut d = Self::from_reference(dev, &t)?;
        d.restore_loss_scale(&meta)?;
        Ok((d, data))
    }
}
