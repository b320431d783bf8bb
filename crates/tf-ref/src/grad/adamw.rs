//! One AdamW step (decoupled weight decay, bias-corrected moments, global-norm
//! gradient clipping) and the learning-rate schedule, with the official training
//! settings as defaults (see `docs/tokenformer.md`, "Training").
//!
//! A step `t` (1-based) with learning rate `lr`, for every element of every tensor:
//!
//! ```text
//! N  = sqrt(Σ over all tensors of g²)          the global gradient norm
//! c  = max_norm / (N + 1e-6) if that is < 1, else 1;   g ← c·g
//! p ← p − lr·wd·p                               decoupled decay (decayed tensors only)
//! m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²
//! p ← p − lr·(m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + eps)
//! ```
//!
//! The decay uses `p` before the Adam update (PyTorch `AdamW` and the fused Adam in
//! AdamW mode agree on this). The schedule is a linear warm-up from 0 to the peak
//! over `W = warmup_frac·total` steps, then a half cosine down to `min_lr` at `total`.

use super::param_tensors;
use super::param_tensors_mut;
use crate::{Error, ModelParams, Result};

const OP: &str = "adamw_step";

/// AdamW hyper-parameters and the schedule. The default is the official setting:
/// peak lr 6e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1, clipping at global
/// norm 1.0, 1 % linear warm-up, cosine decay to 6e-5.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Peak learning rate (reached at the end of the warm-up).
    pub lr: f64,
    /// Decay of the first moment, in `[0, 1)`.
    pub beta1: f64,
    /// Decay of the second moment, in `[0, 1)`.
    pub beta2: f64,
    /// Added to `sqrt(v̂)` in the denominator.
    pub eps: f64,
    /// Decoupled weight decay `wd`: each decayed tensor loses `lr·wd·p` per step.
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Fraction of the total steps spent in the linear warm-up, in `[0, 1]`.
    pub warmup_frac: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 6e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: Some(1.0),
            warmup_frac: 0.01,
            min_lr: 6e-5,
        }
    }
}

impl AdamWConfig {
    /// Checks every field: `lr`, `min_lr`, `eps`, `weight_decay` finite and ≥ 0,
    /// betas in `[0, 1)`, `max_grad_norm` finite and > 0, `warmup_frac` in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument { op: "AdamWConfig::validate", msg });
        for (name, v) in
            [("lr", self.lr), ("min_lr", self.min_lr), ("eps", self.eps), ("weight_decay", self.weight_decay)]
        {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be finite and >= 0, got {v}"));
            }
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("{name} must be in [0, 1), got {v}"));
            }
        }
        if let Some(m) = self.max_grad_norm {
            if !(m.is_finite() && m > 0.0) {
                return bad(format!("max_grad_norm must be finite and > 0, got {m}"));
            }
        }
        if !(0.0..=1.0).contains(&self.warmup_frac) {
            return bad(format!("warmup_frac must be in [0, 1], got {}", self.warmup_frac));
        }
        Ok(())
    }

    /// The learning rate of the step that follows `step` completed steps, out of
    /// `total_steps`: the cosine style of the official code's `AnnealingLR`, whose
    /// counter starts at 0 and is advanced after each optimizer step. With
    /// `W = warmup_frac·total_steps` (real-valued, as there):
    ///
    /// - `step ≤ W` (and `W > 0`): `lr·step/W`, so `lr_at(0) = 0` and `lr_at(W) = lr`;
    /// - `W < step < total_steps`: `min_lr + (lr − min_lr)·(1 + cos(π·(step − W)/(total_steps − W)))/2`;
    /// - `step ≥ total_steps`: `min_lr` (the official formula would climb back up
    ///   the cosine past the end; training never gets there).
    pub fn lr_at(&self, step: u64, total_steps: u64) -> f64 {
        let (s, total) = (step as f64, total_steps as f64);
        let warmup = self.warmup_frac * total;
        if warmup > 0.0 && s <= warmup {
            return self.lr * s / warmup;
        }
        if step >= total_steps {
            return self.min_lr;
        }
        let progress = (s - warmup) / (total - warmup);
        self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The optimizer state: the step count and the two moments of every tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWState {
    /// Steps taken so far (the next step is `step + 1` in the bias corrections).
    pub step: u64,
    /// First moments, one vector per tensor.
    pub m: Vec<Vec<f64>>,
    /// Second moments, one vector per tensor.
    pub v: Vec<Vec<f64>>,
}

impl AdamWState {
    /// A fresh state (step 0, zero moments) for tensors of the given element counts.
    pub fn new(sizes: &[usize]) -> Self {
        AdamWState {
            step: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// A fresh state for every tensor of a model, in [`param_tensors`] order.
    pub fn for_model(p: &ModelParams) -> Self {
        let sizes: Vec<usize> = param_tensors(p).iter().map(|t| t.len()).collect();
        AdamWState::new(&sizes)
    }
}

/// What [`adamw_step`] did besides updating.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The factor the gradients were multiplied by (1 when not clipped).
    pub clip_scale: f64,
}

/// One AdamW step with learning rate `lr` (e.g. [`AdamWConfig::lr_at`]; `cfg.lr`
/// is only the schedule's peak) over a list of tensors: `params[i]` is updated with
/// `grads[i]`, and decayed iff `decay[i]`. Clipping uses the norm over all tensors.
/// `state.step` is incremented; with `t` the new value, for every element:
///
/// ```text
/// N = sqrt(Σ over all tensors of g²);  c = min(1, max_grad_norm / (N + 1e-6));  g ← c·g
/// p ← p − lr·wd·p                         (decayed tensors only; p before the update)
/// m ← β1·m + (1 − β1)·g;   v ← β2·v + (1 − β2)·g²
/// p ← p − lr·(m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + eps)
/// ```
///
/// Errors: an invalid `cfg`, `lr` not finite and ≥ 0, the lists or `state` not
/// having one entry per tensor, a gradient or moment length differing from its
/// tensor's, a non-finite gradient norm (nothing is updated then).
pub fn adamw_step(
    cfg: &AdamWConfig,
    lr: f64,
    state: &mut AdamWState,
    params: &mut [&mut [f64]],
    grads: &[&[f64]],
    decay: &[bool],
) -> Result<StepInfo> {
    cfg.validate()?;
    let bad = |msg: String| Err(Error::InvalidArgument { op: OP, msg });
    if !(lr.is_finite() && lr >= 0.0) {
        return bad(format!("lr must be finite and >= 0, got {lr}"));
    }
    let n = params.len();
    if grads.len() != n || decay.len() != n || state.m.len() != n || state.v.len() != n {
        return Err(Error::Shape {
            op: OP,
            msg: format!(
                "{n} tensors but {} gradients, {} decay flags, {} + {} moments",
                grads.len(),
                decay.len(),
                state.m.len(),
                state.v.len()
            ),
        });
    }
    for (i, (p, g)) in params.iter().zip(grads).enumerate() {
        if g.len() != p.len() || state.m[i].len() != p.len() || state.v[i].len() != p.len() {
            return Err(Error::Shape {
                op: OP,
                msg: format!(
                    "tensor {i} holds {} values but its gradient {}, moments {} and {}",
                    p.len(),
                    g.len(),
                    state.m[i].len(),
                    state.v[i].len()
                ),
            });
        }
    }
    let grad_norm = grads.iter().flat_map(|g| g.iter()).map(|g| g * g).sum::<f64>().sqrt();
    if !grad_norm.is_finite() {
        return bad(format!("the global gradient norm is {grad_norm}"));
    }
    let clip_scale = match cfg.max_grad_norm {
        Some(max) => (max / (grad_norm + 1e-6)).min(1.0),
        None => 1.0,
    };
    let t = state.step + 1;
    // Step counts beyond i32 leave both corrections at 1 anyway.
    let ti = i32::try_from(t).unwrap_or(i32::MAX);
    let (bc1, bc2) = (1.0 - cfg.beta1.powi(ti), 1.0 - cfg.beta2.powi(ti));
    for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
        let (m, v) = (&mut state.m[i], &mut state.v[i]);
        for (((pe, &ge), me), ve) in p.iter_mut().zip(g.iter()).zip(m.iter_mut()).zip(v.iter_mut()) {
            if decay[i] {
                *pe -= lr * cfg.weight_decay * *pe;
            }
            let g = clip_scale * ge;
            *me = cfg.beta1 * *me + (1.0 - cfg.beta1) * g;
            *ve = cfg.beta2 * *ve + (1.0 - cfg.beta2) * g * g;
            *pe -= lr * (*me / bc1) / ((*ve / bc2).sqrt() + cfg.eps);
        }
    }
    state.step = t;
    Ok(StepInfo { grad_norm, clip_scale })
}

/// [`adamw_step`] over every tensor of a model (gradients as returned by
/// [`loss_and_grads`](super::loss_and_grads), state from [`AdamWState::for_model`]).
/// The embedding and all parameter tokens are decayed; the final layer-norm weight
/// and bias are not (GPT-NeoX exempts norm parameters and biases from decay).
///
/// Errors: as for [`adamw_step`], with `grads` not shaped like `params`.
pub fn adamw_step_model(
    cfg: &AdamWConfig,
    lr: f64,
    state: &mut AdamWState,
    params: &mut ModelParams,
    grads: &ModelParams,
) -> Result<StepInfo> {
    let g = param_tensors(grads);
    let mut p = param_tensors_mut(params);
    let n = p.len();
    let decay: Vec<bool> = (0..n).map(|i| i + 2 < n).collect();
    adamw_step(cfg, lr, state, &mut p, &g, &decay)
}
