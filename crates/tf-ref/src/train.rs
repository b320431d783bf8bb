//! Training on the f64 reference: a [`Trainer`] holds the model, the AdamW
//! state and the run's settings ([`RunConfig`]), takes one optimizer step at a
//! time on deterministic batches of a [`Corpus`], grows the model (and the
//! optimizer state) in the middle of a run ([`GrowPlan`]), and saves and
//! resumes exactly ([`Trainer::save`], [`Trainer::load`]).
//!
//! Gradients come from a [`Backend`]; today only [`Backend::Reference`]
//! ([`loss_and_grads`](crate::loss_and_grads), exact f64) exists. A step at
//! `s` completed steps is, in order: the planned growth if `s` is its step;
//! the batch of windows `Corpus::batch(seed, s, batch, seq)`; the mean loss and
//! mean gradients over the windows; one [`adamw_step_model`](crate::adamw_step_model)
//! at `lr_at(s, steps)`. Nothing depends on wall time or thread count, so a run
//! resumed from a checkpoint is bitwise identical to one that was not stopped.

mod checkpoint;
mod data;
mod trainer;

pub use checkpoint::DEVICE_PREFIX;
pub use data::{Corpus, EVAL_FRACTION};
pub use trainer::{batch_mean, Backend, Gradients, GrowPlan, RunConfig, StepReport, Trainer};
