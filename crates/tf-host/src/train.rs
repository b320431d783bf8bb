//! The model's loss and gradients on the device: [`Tokenformer::loss_and_grads`]
//! chains the forward (keeping every activation the backward needs) with the
//! device backward ops (`ops::pattention_backward`, `ops::attention_backward`,
//! `ops::block_backward`, `ops::linear::linear_backward`). The math is tf-ref's
//! `loss_and_grads` (crates/tf-ref/src/grad/model.rs) step for step, with f32
//! arithmetic and f32 gradients.
//!
//! Any storage type T: activations are kept in T (as the forward computes them),
//! every gradient is f32, and an f32 gradient handed to an op that takes T is
//! rounded to T first (`cast_from_f32`); f16 flushes magnitudes below 2^-24 there,
//! which a loss scale (`GradOptions::loss_scale`, `Trainer`'s `LossScale`) keeps
//! gradients above. The attention runs on the SIMT training kernels
//! (any head dimension, no padding). Correct paths, not fast ones.

use tf_ref::{ModelParams, Slot};

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layer::Pattention;
use crate::model::Tokenformer;
use crate::ops::attention::{attention, AttnArgs, AttnOptions, HEAD_DIMS};
use crate::ops::attention_backward::{attention_backward, attention_backward_saved, attention_forward, AttnSaved};
use crate::ops::block::{add_assign, embedding_into, layer_norm_into, rotary_into, LayerNormArgs, RotaryArgs};
use crate::ops::block_backward::{
    cast_from_f32, cross_entropy_backward_into, cross_entropy_backward_scaled_into, embedding_backward,
    layer_norm_backward, rotary_backward_into,
};
use crate::ops::linear::{linear_backward, linear_into};
use crate::ops::pattention::{pattention_keeping_into, KeptScores, Norm, PattentionArgs};
use crate::ops::pattention_backward::{pattention_backward, pattention_backward_kept};
use crate::tensor::{Tensor, View};

const OP: &str = "Tokenformer::loss_and_grads";

/// The gradients of every parameter of a model, f32 on its device, in the
/// model's layout.
#[derive(Debug)]
pub struct ModelGrads {
    /// The tied embedding `[vocab, d]` (its gather and unembedding parts summed).
    pub embedding: Tensor<f32>,
    /// Per block, `(dK_P, dV_P)` of the five Pattentions in [`Slot::ALL`] order.
    pub blocks: Vec<[(Tensor<f32>, Tensor<f32>); 5]>,
    /// The final layer norm's weight `[d]`.
    pub final_norm_weight: Tensor<f32>,
    /// The final layer norm's bias `[d]`.
    pub final_norm_bias: Tensor<f32>,
}

impl ModelGrads {
    /// Every gradient tensor in the order of [`Tokenformer::param_views`] (the
    /// model's parameter order), each shaped as its parameter.
    pub fn views(&self) -> Vec<View<'_, f32>> {
        self.tensors().into_iter().map(|t| t.view()).collect()
    }

    fn tensors(&self) -> Vec<&Tensor<f32>> {
        let mut out = vec![&self.embedding];
        for (k, v) in self.blocks.iter().flatten() {
            out.push(k);
            out.push(v);
        }
        out.push(&self.final_norm_weight);
        out.push(&self.final_norm_bias);
        out
    }

    fn tensors_mut(&mut self) -> Vec<&mut Tensor<f32>> {
        let mut out = vec![&mut self.embedding];
        for (k, v) in self.blocks.iter_mut().flatten() {
            out.push(k);
            out.push(v);
        }
        out.push(&mut self.final_norm_weight);
        out.push(&mut self.final_norm_bias);
        out
    }

    /// `self += other`, tensor by tensor on the device (f32, one rounding per
    /// element): accumulates the gradients of several sequences in a fixed order.
    /// Errors: gradients of another shape or device.
    pub fn add_assign(&mut self, other: &ModelGrads) -> Result<()> {
        const OP_ADD: &str = "ModelGrads::add_assign";
        let dev = self.embedding.device().clone();
        let theirs = other.tensors();
        let mine = self.tensors_mut();
        if mine.len() != theirs.len() || mine.iter().zip(&theirs).any(|(a, b)| a.shape() != b.shape()) {
            return Err(Error::Shape { op: OP_ADD, msg: "the gradients are of differently shaped models".into() });
        }
        for (a, b) in mine.into_iter().zip(theirs) {
            // As [rows, elements per row]: the residual add takes 2-D views.
            let cols = a.shape().last().copied().unwrap_or(1).max(1);
            let rows2 = [a.len() / cols, cols];
            add_assign(&dev, &mut a.reshaped_mut(&rows2)?, &b.reshaped(&rows2)?)?;
        }
        Ok(())
    }

    /// The gradients copied to the host as a [`ModelParams`] shaped like `like`
    /// (the model's `to_params()`; its `n_ref` pins are kept, as tf-ref's
    /// `loss_and_grads` does).
    pub fn to_params(&self, like: &ModelParams) -> Result<ModelParams> {
        if like.blocks.len() != self.blocks.len() || like.embedding.len() != self.embedding.len() {
            return Err(Error::Shape {
                op: "ModelGrads::to_params",
                msg: format!(
                    "the gradients are of {} blocks and a {}-element embedding, `like` of {} and {}",
                    self.blocks.len(),
                    self.embedding.len(),
                    like.blocks.len(),
                    like.embedding.len()
                ),
            });
        }
        let f64s = |t: &Tensor<f32>| -> Result<Vec<f64>> { Ok(t.to_vec()?.into_iter().map(f64::from).collect()) };
        let mut g = like.clone();
        g.embedding = f64s(&self.embedding)?;
        g.final_norm_weight = f64s(&self.final_norm_weight)?;
        g.final_norm_bias = f64s(&self.final_norm_bias)?;
        for (gb, b) in g.blocks.iter_mut().zip(&self.blocks) {
            for slot in Slot::ALL {
                let (k, v) = &b[slot.index()];
                *gb.tokens_mut(slot) = (f64s(k)?, f64s(v)?);
            }
        }
        Ok(g)
    }
}

/// Options of [`Tokenformer::loss_and_grads_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradOptions {
    /// Activation recomputation: the forward keeps only each block's input (one
    /// `[t, d]` tensor where it kept eight) and the backward runs each block's
    /// forward again before its backward. The result is the same bits either way
    /// (the kernels are deterministic; tests/train_device.rs checks it); the price
    /// is a second forward of every block. Default off.
    pub recompute: bool,
    /// Loss scale: the loss's gradient is multiplied by it before it is rounded to
    /// the storage type, so every gradient comes out multiplied by it (the caller
    /// divides, e.g. through `AdamW::step_scaled`). With a 16-bit `T` it keeps
    /// small gradients above the type's underflow; a power of two changes no bit
    /// but the scaling while nothing overflows. Finite and > 0; default 1. The
    /// returned loss is unscaled.
    pub loss_scale: f32,
    /// Keep the Pattention scores: every `l2_norm_gelu` Pattention's forward
    /// keeps its scores (`A` in the storage type, [`crate::KeptScores`]) and its
    /// backward reads them instead of recomputing `A = X·K_Pᵀ`, one of its five
    /// products. The price is memory: `t·n` elements of the storage type per
    /// Pattention, held from the forward to the backward (with `recompute`, one
    /// block's at a time). The gradients differ from the recomputing backward's
    /// by the rounding of A to the storage type (none for f32 storage beyond the
    /// products' summation order). Default off.
    pub keep_scores: bool,
}

impl Default for GradOptions {
    fn default() -> Self {
        GradOptions { recompute: false, loss_scale: 1.0, keep_scores: false }
    }
}

/// One block's activations that its backward needs (all `[t, d]`).
struct BlockActs<T: DType> {
    x: Tensor<T>,
    h: Tensor<T>,
    q: Tensor<T>,
    k: Tensor<T>,
    v: Tensor<T>,
    ctx: Tensor<T>,
    /// The attention's lse when its forward ran on tensor cores (then `ctx` is its
    /// output `o` and the backward is `attention_backward_saved`).
    lse: Option<Tensor<f32>>,
    x1: Tensor<T>,
    h1: Tensor<T>,
    /// The kept scores of each Pattention (by `Slot::index`), with `keep_scores`.
    kept: [Option<KeptScores<T>>; 5],
}

/// `a + b` as a new `[t, d]` tensor of `a`'s type (`0 + a` is `a`, then `+ b`
/// rounded once, as `add_assign`).
fn add<U: DType>(dev: &Device, td: (usize, usize), a: &View<'_, U>, b: &View<'_, U>) -> Result<Tensor<U>> {
    let mut s = dev.zeros::<U>(&[td.0, td.1])?;
    add_assign(dev, &mut s.view_mut(), a)?;
    add_assign(dev, &mut s.view_mut(), b)?;
    Ok(s)
}

/// `y = layer(x)` into a new `[t, d_out]` tensor, and with `keep` (for an
/// `l2_norm_gelu` layer with an output) the scores its backward can read.
fn pattn<T: DType>(
    dev: &Device,
    layer: &Pattention<T>,
    x: &View<'_, T>,
    keep: bool,
) -> Result<(Tensor<T>, Option<KeptScores<T>>)> {
    let t = x.shape()[0];
    let mut y = dev.output::<T>(&[t, layer.d_out()])?;
    if keep && layer.options().norm == Norm::L2NormGelu && layer.d_out() > 0 {
        let args = PattentionArgs { x: x.clone(), k_p: layer.keys(), v_p: layer.values(), opts: *layer.options() };
        let kept = pattention_keeping_into(dev, &args, &mut y.view_mut(), None)?;
        return Ok((y, Some(kept)));
    }
    layer.forward_into(x, &mut y.view_mut(), None)?;
    Ok((y, None))
}

/// The sizes and options of one sequence's training forward and backward.
struct Setup {
    t: usize,
    d: usize,
    rope: RotaryArgs,
    eps: f32,
    attn: AttnOptions,
    shape4: [usize; 4],
}

/// What the training forward keeps of one block for the backward.
enum Saved<T: DType> {
    /// Every activation the block's backward needs.
    All(Box<BlockActs<T>>),
    /// The block's input only: the backward runs the block's forward again
    /// (activation recomputation; the kernels are deterministic, so the
    /// recomputed activations are the same bits).
    Input(Tensor<T>),
}

/// The training forward's results: what each block keeps, the final norm's
/// input and output, and the logits.
struct Forward<T: DType> {
    setup: Setup,
    saved: Vec<Saved<T>>,
    x: Tensor<T>,
    hn: Tensor<T>,
    logits: Tensor<T>,
}

impl<T: DType> Tokenformer<T> {
    /// The mean next-token cross-entropy of the model on one sequence, by the
    /// forward of [`loss_and_grads`](Self::loss_and_grads) alone: the same ops in
    /// the same order, so the same bits as the loss `loss_and_grads` returns.
    ///
    /// Errors: as `loss_and_grads`.
    pub fn loss(&self, tokens: &[u32], targets: &[u32]) -> Result<f64> {
        let mut f = self.train_forward(tokens, targets, true, false)?;
        cross_entropy_backward_into(self.device(), &mut f.logits.view_mut(), targets)
    }

    /// The checks of a training sequence and the sizes derived from it.
    fn setup(&self, tokens: &[u32], targets: &[u32]) -> Result<Setup> {
        let cfg = self.config();
        let t = tokens.len();
        if t == 0 || targets.len() != t {
            return Err(Error::Shape {
                op: OP,
                msg: format!("{t} tokens and {} targets: one target per token, at least one", targets.len()),
            });
        }
        if t > cfg.seq {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("{t} tokens: config {:?} has a context of {}", cfg.name, cfg.seq),
            });
        }
        let (d, heads) = (cfg.d, cfg.heads);
        let hd = d / heads;
        let rope = RotaryArgs {
            heads,
            head_dim: hd,
            rot_dim: cfg.rot_dim().map_err(|e| Error::InvalidArgument { op: OP, msg: e.to_string() })?,
            base: cfg.rotary_base as f32,
            pos_offset: 0,
        };
        let attn = AttnOptions { causal: true, scale: Some(1.0 / (hd as f32).sqrt()), num_splits: None };
        Ok(Setup { t, d, rope, eps: cfg.ln_eps as f32, attn, shape4: [1, t, heads, hd] })
    }

    /// One block's training forward from its input `x`: the activations its
    /// backward needs, and its output.
    fn block_forward(
        &self,
        su: &Setup,
        blk: &[Pattention<T>],
        x: Tensor<T>,
        keep: bool,
    ) -> Result<(BlockActs<T>, Tensor<T>)> {
        let dev = self.device();
        let (t, d, eps, shape4) = (su.t, su.d, su.eps, su.shape4);
        let td = (t, d);
        let ln = |x: &Tensor<T>| -> Result<Tensor<T>> {
            let mut y = dev.output::<T>(&[t, d])?;
            layer_norm_into(dev, &LayerNormArgs { x: x.view(), weight: None, bias: None, eps }, &mut y.view_mut())?;
            Ok(y)
        };
        let p = |slot: Slot| &blk[slot.index()];
        let mut kept: [Option<KeptScores<T>>; 5] = Default::default();
        let mut run = |slot: Slot, x: &Tensor<T>| -> Result<Tensor<T>> {
            let (y, k) = pattn(dev, p(slot), &x.view(), keep)?;
            kept[slot.index()] = k;
            Ok(y)
        };
        let h = ln(&x)?;
        let mut q = run(Slot::Query, &h)?;
        let mut k = run(Slot::Key, &h)?;
        let v = run(Slot::Value, &h)?;
        rotary_into(dev, &mut q.view_mut(), &su.rope)?;
        rotary_into(dev, &mut k.view_mut(), &su.rope)?;
        let args =
            AttnArgs { q: q.reshaped(&shape4)?, k: k.reshaped(&shape4)?, v: v.reshaped(&shape4)?, opts: su.attn };
        // f16 / bf16 at a head dim with kernels: the tensor-core forward, whose o and
        // lse the tensor-core backward takes; otherwise the SIMT rows in f32.
        let (ctx, lse) = if std::mem::size_of::<T>() == 2 && HEAD_DIMS.contains(&su.shape4[3]) {
            let (o, lse) = attention(dev, &args)?;
            (o.reshape(&[t, d])?, Some(lse))
        } else {
            (cast_from_f32::<T>(dev, &attention_forward(dev, &args)?)?.reshape(&[t, d])?, None)
        };
        let x1 = add(dev, td, &x.view(), &run(Slot::Proj, &ctx)?.view())?;
        let h1 = ln(&x1)?;
        let out = add(dev, td, &x1.view(), &run(Slot::Ffn, &h1)?.view())?;
        Ok((BlockActs { x, h, q, k, v, ctx, lse, x1, h1, kept }, out))
    }

    /// The forward of tf-ref's `loss_and_grads`, keeping every block's
    /// activations (and, with `keep`, its Pattentions' scores), or only its input
    /// when `recompute`.
    fn train_forward(&self, tokens: &[u32], targets: &[u32], recompute: bool, keep: bool) -> Result<Forward<T>> {
        let su = self.setup(tokens, targets)?;
        let dev = self.device();
        let (t, d, eps) = (su.t, su.d, su.eps);
        let mut x = dev.output::<T>(&[t, d])?;
        embedding_into(dev, &self.embedding_view(), tokens, &mut x.view_mut())?;
        let mut saved = Vec::with_capacity(self.blocks_ref().len());
        for blk in self.blocks_ref() {
            let (acts, out) = self.block_forward(&su, blk, x, keep && !recompute)?;
            // with recompute the other activations are freed here, block by block
            saved.push(if recompute { Saved::Input(acts.x) } else { Saved::All(Box::new(acts)) });
            x = out;
        }
        let (nw, nb) = self.final_norm_views();
        let mut hn = dev.output::<T>(&[t, d])?;
        layer_norm_into(
            dev,
            &LayerNormArgs { x: x.view(), weight: Some(nw), bias: Some(nb), eps },
            &mut hn.view_mut(),
        )?;
        let mut logits = dev.output::<T>(&[t, self.config().vocab])?;
        linear_into(dev, &hn.view(), &self.embedding_view(), &mut logits.view_mut())?;
        Ok(Forward { setup: su, saved, x, hn, logits })
    }

    /// The mean next-token cross-entropy of the model on one sequence (`tokens`
    /// at positions `0..t`, `targets` one per token) and the gradient of every
    /// parameter, on the model's device: tf-ref's `loss_and_grads`, with the
    /// activations in the storage type and the gradients in f32
    /// (tests/train_device.rs compares them).
    ///
    /// Errors: no tokens, `targets` not one per token, a token or target id
    /// `>= vocab`, more tokens than the config's context, and the ops' errors.
    pub fn loss_and_grads(&self, tokens: &[u32], targets: &[u32]) -> Result<(f64, ModelGrads)> {
        self.loss_and_grads_with(tokens, targets, &GradOptions::default())
    }

    /// [`loss_and_grads`](Self::loss_and_grads) with [`GradOptions`]: activation
    /// recomputation and a loss scale.
    pub fn loss_and_grads_with(
        &self,
        tokens: &[u32],
        targets: &[u32],
        opts: &GradOptions,
    ) -> Result<(f64, ModelGrads)> {
        let recompute = opts.recompute;
        let cfg = self.config().clone();
        let dev = self.device().clone();
        let dev = &dev;
        let keep = opts.keep_scores;
        let Forward { setup: su, saved, x, hn, mut logits } = self.train_forward(tokens, targets, recompute, keep)?;
        let (t, d, eps, shape4, attn) = (su.t, su.d, su.eps, su.shape4, su.attn);
        let (td, rope) = ((t, d), su.rope);
        // an f32 tensor (of t·d elements) rounded to T as [t, d]
        let cast = |g: &Tensor<f32>| -> Result<Tensor<T>> { cast_from_f32::<T>(dev, g)?.reshape(&[t, d]) };
        let loss = cross_entropy_backward_scaled_into(dev, &mut logits.view_mut(), targets, opts.loss_scale)?;
        let (nw, nb) = self.final_norm_views();
        let final_args = LayerNormArgs { x: x.view(), weight: Some(nw), bias: Some(nb), eps };

        // Backward (logits now hold dL/dlogits, in T). Every op takes its output
        // gradient in T: the f32 gradients are cast on the way in.
        let (dhn, de_un) = linear_backward(dev, &hn.view(), &self.embedding_view(), &logits.view())?;
        let lg = layer_norm_backward(dev, &final_args, &cast(&dhn)?.view())?;
        let (Some(final_norm_weight), Some(final_norm_bias)) = (lg.dweight, lg.dbias) else {
            return Err(Error::InvalidArgument { op: OP, msg: "internal: no final norm gradients".into() });
        };
        let mut dh = lg.dx;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for (blk, saved) in self.blocks_ref().iter().zip(saved).rev() {
            let a = match saved {
                Saved::All(a) => *a,
                Saved::Input(x) => self.block_forward(&su, blk, x, keep)?.0,
            };
            let pb = |slot: Slot, x: View<'_, T>, dy: &Tensor<f32>| {
                let l = &blk[slot.index()];
                let args = PattentionArgs { x, k_p: l.keys(), v_p: l.values(), opts: *l.options() };
                match &a.kept[slot.index()] {
                    Some(kept) => pattention_backward_kept(dev, &args, kept, &cast(dy)?.view(), None),
                    None => pattention_backward(dev, &args, &cast(dy)?.view(), None),
                }
            };
            let ln_back = |x: &Tensor<T>, dy: &Tensor<f32>| {
                let args = LayerNormArgs { x: x.view(), weight: None, bias: None, eps };
                layer_norm_backward(dev, &args, &cast(dy)?.view())
            };
            let ffn = pb(Slot::Ffn, a.h1.view(), &dh)?;
            let dx1 = add(dev, td, &dh.view(), &ln_back(&a.x1, &ffn.dx)?.dx.view())?;
            let proj = pb(Slot::Proj, a.ctx.view(), &dx1)?;
            let args = AttnArgs {
                q: a.q.reshaped(&shape4)?,
                k: a.k.reshaped(&shape4)?,
                v: a.v.reshaped(&shape4)?,
                opts: attn,
            };
            let d_o = cast(&proj.dx)?;
            let ag = match &a.lse {
                Some(lse) => {
                    let saved = AttnSaved { o: a.ctx.reshaped(&shape4)?, lse: lse.view() };
                    attention_backward_saved(dev, &args, &saved, &d_o.reshaped(&shape4)?)?
                }
                None => attention_backward(dev, &args, &d_o.reshaped(&shape4)?)?,
            };
            let (mut dq, mut dk, dv) = (ag.dq.reshape(&[t, d])?, ag.dk.reshape(&[t, d])?, ag.dv.reshape(&[t, d])?);
            rotary_backward_into(dev, &mut dq.view_mut(), &rope)?;
            rotary_backward_into(dev, &mut dk.view_mut(), &rope)?;
            let gq = pb(Slot::Query, a.h.view(), &dq)?;
            let gk = pb(Slot::Key, a.h.view(), &dk)?;
            let gv = pb(Slot::Value, a.h.view(), &dv)?;
            let dhh = add(dev, td, &add(dev, td, &gq.dx.view(), &gk.dx.view())?.view(), &gv.dx.view())?;
            dh = add(dev, td, &dx1.view(), &ln_back(&a.x, &dhh)?.dx.view())?;
            blocks.push([
                (gq.dk_p, gq.dv_p),
                (gk.dk_p, gk.dv_p),
                (gv.dk_p, gv.dv_p),
                (proj.dk_p, proj.dv_p),
                (ffn.dk_p, ffn.dv_p),
            ]);
        }
        blocks.reverse();
        let gathered = embedding_backward(dev, tokens, &dh.view(), cfg.vocab)?;
        let mut embedding = de_un;
        add_assign(dev, &mut embedding.view_mut(), &gathered.view())?;
        Ok((loss, ModelGrads { embedding, blocks, final_norm_weight, final_norm_bias }))
    }
}
