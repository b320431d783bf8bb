//! The model's loss and gradients on the device: [`Tokenformer::loss_and_grads`]
//! chains the forward (keeping every activation the backward needs) with the
//! device backward ops (`ops::pattention_backward`, `ops::attention_backward`,
//! `ops::block_backward`, `ops::linear::linear_backward`). The math is tf-ref's
//! `loss_and_grads` (crates/tf-ref/src/grad/model.rs) step for step, in f32.
//!
//! f32 models only for now: the backward ops take their output gradient in the
//! storage type and return f32, so a 16-bit model needs conversions in the chain
//! (and a loss scale), which are not built. The attention runs on the SIMT
//! training kernels (any head dimension, no padding). Correct paths, not fast ones.

use tf_ref::{ModelParams, Slot};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::layer::Pattention;
use crate::model::Tokenformer;
use crate::ops::attention::{AttnArgs, AttnOptions};
use crate::ops::attention_backward::{attention_backward, attention_forward};
use crate::ops::block::{add_assign, embedding_into, layer_norm_into, rotary_into, LayerNormArgs, RotaryArgs};
use crate::ops::block_backward::{
    cross_entropy_backward_into, embedding_backward, layer_norm_backward, rotary_backward_into,
};
use crate::ops::linear::{linear_backward, linear_into};
use crate::ops::pattention::PattentionArgs;
use crate::ops::pattention_backward::pattention_backward;
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
    /// The gradients copied to the host as a [`ModelParams`] shaped like `like`
    /// (the model's `to_params()`; its `n_ref` pins are kept, as tf-ref's
    /// `loss_and_grads` does).
    pub fn to_params(&self, like: &ModelParams) -> Result<ModelParams> {
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

/// One block's activations that its backward needs (`[t, d]`; ctx `[1, t, H, hd]`).
struct BlockActs {
    x: Tensor<f32>,
    h: Tensor<f32>,
    q: Tensor<f32>,
    k: Tensor<f32>,
    v: Tensor<f32>,
    ctx: Tensor<f32>,
    x1: Tensor<f32>,
    h1: Tensor<f32>,
}

/// `y = layer(x)` into a new `[t, d_out]` tensor.
fn pattn(dev: &Device, layer: &Pattention<f32>, x: &View<'_, f32>) -> Result<Tensor<f32>> {
    let t = x.shape()[0];
    let mut y = dev.output::<f32>(&[t, layer.d_out()])?;
    layer.forward_into(x, &mut y.view_mut(), None)?;
    Ok(y)
}

impl Tokenformer<f32> {
    /// The mean next-token cross-entropy of the model on one sequence (`tokens`
    /// at positions `0..t`, `targets` one per token) and the gradient of every
    /// parameter, on the model's device. The logits are exactly those of
    /// [`Tokenformer::forward`]'s math; the result is tf-ref's `loss_and_grads`
    /// computed in f32 (tests/train_device.rs compares them).
    ///
    /// Errors: no tokens, `targets` not one per token, a token or target id
    /// `>= vocab`, more tokens than the config's context, and the ops' errors.
    pub fn loss_and_grads(&self, tokens: &[u32], targets: &[u32]) -> Result<(f64, ModelGrads)> {
        let cfg = self.config().clone();
        let dev = self.device().clone();
        let dev = &dev;
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
        let eps = cfg.ln_eps as f32;
        let attn = AttnOptions { causal: true, scale: Some(1.0 / (hd as f32).sqrt()), num_splits: None };
        let shape4 = [1, t, heads, hd];
        let ln = |x: &Tensor<f32>| -> Result<Tensor<f32>> {
            let mut y = dev.output::<f32>(&[t, d])?;
            layer_norm_into(dev, &LayerNormArgs { x: x.view(), weight: None, bias: None, eps }, &mut y.view_mut())?;
            Ok(y)
        };
        // a + b as a new [t, d] tensor (0 + a is a, then + b)
        let add = |a: &View<'_, f32>, b: &View<'_, f32>| -> Result<Tensor<f32>> {
            let mut s = dev.zeros::<f32>(&[t, d])?;
            add_assign(dev, &mut s.view_mut(), a)?;
            add_assign(dev, &mut s.view_mut(), b)?;
            Ok(s)
        };

        // Forward, keeping the activations.
        let mut x = dev.output::<f32>(&[t, d])?;
        embedding_into(dev, &self.embedding_view(), tokens, &mut x.view_mut())?;
        let mut acts = Vec::with_capacity(cfg.layers);
        for blk in self.blocks_ref() {
            let p = |slot: Slot| &blk[slot.index()];
            let h = ln(&x)?;
            let mut q = pattn(dev, p(Slot::Query), &h.view())?;
            let mut k = pattn(dev, p(Slot::Key), &h.view())?;
            let v = pattn(dev, p(Slot::Value), &h.view())?;
            rotary_into(dev, &mut q.view_mut(), &rope)?;
            rotary_into(dev, &mut k.view_mut(), &rope)?;
            let args =
                AttnArgs { q: q.reshaped(&shape4)?, k: k.reshaped(&shape4)?, v: v.reshaped(&shape4)?, opts: attn };
            let ctx = attention_forward(dev, &args)?;
            let x1 = add(&x.view(), &pattn(dev, p(Slot::Proj), &ctx.reshaped(&[t, d])?)?.view())?;
            let h1 = ln(&x1)?;
            let out = add(&x1.view(), &pattn(dev, p(Slot::Ffn), &h1.view())?.view())?;
            acts.push(BlockActs { x, h, q, k, v, ctx, x1, h1 });
            x = out;
        }
        let (nw, nb) = self.final_norm_views();
        let final_args = LayerNormArgs { x: x.view(), weight: Some(nw), bias: Some(nb), eps };
        let mut hn = dev.output::<f32>(&[t, d])?;
        layer_norm_into(dev, &final_args, &mut hn.view_mut())?;
        let mut logits = dev.output::<f32>(&[t, cfg.vocab])?;
        linear_into(dev, &hn.view(), &self.embedding_view(), &mut logits.view_mut())?;
        let loss = cross_entropy_backward_into(dev, &mut logits.view_mut(), targets)?;

        // Backward (logits now hold dL/dlogits).
        let (dhn, de_un) = linear_backward(dev, &hn.view(), &self.embedding_view(), &logits.view())?;
        let lg = layer_norm_backward(dev, &final_args, &dhn.view())?;
        let (Some(final_norm_weight), Some(final_norm_bias)) = (lg.dweight, lg.dbias) else {
            return Err(Error::InvalidArgument { op: OP, msg: "internal: no final norm gradients".into() });
        };
        let mut dh = lg.dx;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for (blk, a) in self.blocks_ref().iter().zip(&acts).rev() {
            let pb = |slot: Slot, x: View<'_, f32>, dy: View<'_, f32>| {
                let l = &blk[slot.index()];
                let args = PattentionArgs { x, k_p: l.keys(), v_p: l.values(), opts: *l.options() };
                pattention_backward(dev, &args, &dy, None)
            };
            let ln_back = |x: &Tensor<f32>, dy: &View<'_, f32>| {
                layer_norm_backward(dev, &LayerNormArgs { x: x.view(), weight: None, bias: None, eps }, dy)
            };
            let ffn = pb(Slot::Ffn, a.h1.view(), dh.view())?;
            let dx1 = add(&dh.view(), &ln_back(&a.x1, &ffn.dx.view())?.dx.view())?;
            let proj = pb(Slot::Proj, a.ctx.reshaped(&[t, d])?, dx1.view())?;
            let args = AttnArgs {
                q: a.q.reshaped(&shape4)?,
                k: a.k.reshaped(&shape4)?,
                v: a.v.reshaped(&shape4)?,
                opts: attn,
            };
            let mut ag = attention_backward(dev, &args, &proj.dx.reshaped(&shape4)?)?;
            rotary_backward_into(dev, &mut ag.dq.reshaped_mut(&[t, d])?, &rope)?;
            rotary_backward_into(dev, &mut ag.dk.reshaped_mut(&[t, d])?, &rope)?;
            let gq = pb(Slot::Query, a.h.view(), ag.dq.reshaped(&[t, d])?)?;
            let gk = pb(Slot::Key, a.h.view(), ag.dk.reshaped(&[t, d])?)?;
            let gv = pb(Slot::Value, a.h.view(), ag.dv.reshaped(&[t, d])?)?;
            let dhh = add(&add(&gq.dx.view(), &gk.dx.view())?.view(), &gv.dx.view())?;
            dh = add(&dx1.view(), &ln_back(&a.x, &dhh.view())?.dx.view())?;
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
