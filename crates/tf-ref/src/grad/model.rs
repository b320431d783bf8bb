//! The whole-model loss and its gradient with respect to every parameter.
//!
//! The forward is [`model_forward`](crate::model_forward)'s, op for op (the same
//! public ops, in the same order, so the logits are bit-identical), with the
//! activations each backward needs kept. The backward runs the chain rule in
//! reverse; for one block (see `model.rs`):
//!
//! ```text
//! out = x1 + P_ffn(h1), h1 = LN(x1)   dx1 = dout + LN'(x1)ᵀ·P_ffn'ᵀ·dout
//! x1 = x + P_proj(ctx)                dctx = P_proj'ᵀ·dx1, dx = dx1 + …
//! ctx = attn(rot(q), rot(k), v)       dq, dk via attention then rotary backward
//! q, k, v = P_{q,k,v}(h), h = LN(x)   dh = Σ P'ᵀ·d{q,k,v}, dx += LN'(x)ᵀ·dh
//! ```
//!
//! The model: gather → blocks → affine final norm → `logits = h·Eᵀ` → mean
//! cross-entropy; the tied `E` gets the unembedding gradient `dlogitsᵀ·h` plus
//! the scatter-add of the gradient of the embedded rows.

use super::{attention_backward, cross_entropy, embedding_backward, layer_norm_backward, linear_backward};
use super::{pattention_backward, rotary_backward, PattentionGrads};
use crate::{attention, layer_norm, linear, pattention, rotary, zeros, Error, Mat, MatRef, Result, Tensor4Ref};
use crate::{BlockParams, ModelParams, PattentionOpts, Slot, TokenformerConfig};

const OP: &str = "loss_and_grads";

/// Every parameter tensor of `p` in [`TokenformerConfig::tensor_names`] order:
/// the embedding; per block the key then value tokens of query, key, value, proj,
/// mlp; the final norm weight and bias.
pub fn param_tensors(p: &ModelParams) -> Vec<&[f64]> {
    let mut out: Vec<&[f64]> = vec![&p.embedding];
    for b in &p.blocks {
        for slot in Slot::ALL {
            let (k, v) = b.tokens(slot);
            out.push(k);
            out.push(v);
        }
    }
    out.push(&p.final_norm_weight);
    out.push(&p.final_norm_bias);
    out
}

/// Mutable [`param_tensors`], in the same order.
pub fn param_tensors_mut(p: &mut ModelParams) -> Vec<&mut [f64]> {
    let mut out: Vec<&mut [f64]> = vec![&mut p.embedding];
    for b in &mut p.blocks {
        for (k, v) in [&mut b.q, &mut b.k, &mut b.v, &mut b.proj, &mut b.ffn] {
            out.push(k);
            out.push(v);
        }
    }
    out.push(&mut p.final_norm_weight);
    out.push(&mut p.final_norm_bias);
    out
}

/// The options of one Pattention of block `p` (as the forward uses them).
fn opts(cfg: &TokenformerConfig, p: &BlockParams, slot: Slot) -> PattentionOpts {
    PattentionOpts { norm: cfg.norm, n_ref: p.n_ref(slot), eps: 0.0 }
}

/// `(K_P, V_P)` of one Pattention as matrix views.
fn token_views<'a>(
    cfg: &TokenformerConfig,
    p: &'a BlockParams,
    slot: Slot,
) -> Result<(MatRef<'a, f64>, MatRef<'a, f64>)> {
    let (k, v) = p.tokens(slot);
    let n = cfg.slots(slot);
    Ok((MatRef::new(k, n, cfg.d)?, MatRef::new(v, n, cfg.d)?))
}

fn pattn(cfg: &TokenformerConfig, p: &BlockParams, slot: Slot, x: &Mat) -> Result<Mat> {
    let (k, v) = token_views(cfg, p, slot)?;
    pattention(x.view(), k, v, &opts(cfg, p, slot))
}

fn pattn_back(cfg: &TokenformerConfig, p: &BlockParams, slot: Slot, x: &Mat, dy: &Mat) -> Result<PattentionGrads> {
    let (k, v) = token_views(cfg, p, slot)?;
    pattention_backward(x.view(), k, v, dy.view(), &opts(cfg, p, slot))
}

fn add(a: &Mat, b: &Mat) -> Mat {
    Mat { data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(), rows: a.rows, cols: a.cols }
}

/// The activations of one block that its backward needs.
struct BlockCache {
    x: Mat,
    h: Mat,
    q: Mat,
    k: Mat,
    v: Mat,
    ctx: Mat,
    x1: Mat,
    h1: Mat,
}

/// The block forward of `model_forward` (positions from 0), keeping activations.
fn block_forward_cached(cfg: &TokenformerConfig, p: &BlockParams, x: Mat) -> Result<(Mat, BlockCache)> {
    let (t, heads, hd) = (x.rows, cfg.heads, cfg.head_dim());
    let h = layer_norm(x.view(), None, None, cfg.ln_eps)?;
    let q = pattn(cfg, p, Slot::Query, &h)?;
    let k = pattn(cfg, p, Slot::Key, &h)?;
    let v = pattn(cfg, p, Slot::Value, &h)?;
    let rope = |m: &Mat| rotary(m.view(), heads, hd, cfg.rotary_pct, cfg.rotary_base, 0);
    let (q, k) = (rope(&q)?, rope(&k)?);
    let shape = [1, t, heads, hd];
    let ctx = attention(
        Tensor4Ref::new(&q.data, shape)?,
        Tensor4Ref::new(&k.data, shape)?,
        Tensor4Ref::new(&v.data, shape)?,
        true,
        Some(1.0 / (hd as f64).sqrt()),
    )?;
    let ctx = Mat { data: ctx.o, rows: t, cols: cfg.d };
    let x1 = add(&x, &pattn(cfg, p, Slot::Proj, &ctx)?);
    let h1 = layer_norm(x1.view(), None, None, cfg.ln_eps)?;
    let out = add(&x1, &pattn(cfg, p, Slot::Ffn, &h1)?);
    Ok((out, BlockCache { x, h, q, k, v, ctx, x1, h1 }))
}

/// The block backward: `dout` in, `dx` out; the parameter gradients go into `g`.
fn block_backward(
    cfg: &TokenformerConfig,
    p: &BlockParams,
    c: &BlockCache,
    dout: &Mat,
    g: &mut BlockParams,
) -> Result<Mat> {
    let (t, heads, hd) = (c.x.rows, cfg.heads, cfg.head_dim());
    let mut put = |slot: Slot, pg: &PattentionGrads| {
        *g.tokens_mut(slot) = (pg.dk_p.data.clone(), pg.dv_p.data.clone());
    };
    let ffn = pattn_back(cfg, p, Slot::Ffn, &c.h1, dout)?;
    put(Slot::Ffn, &ffn);
    let dx1 = add(dout, &layer_norm_backward(c.x1.view(), None, None, ffn.dx.view(), cfg.ln_eps)?.dx);
    let proj = pattn_back(cfg, p, Slot::Proj, &c.ctx, &dx1)?;
    put(Slot::Proj, &proj);
    let shape = [1, t, heads, hd];
    let a = attention_backward(
        Tensor4Ref::new(&c.q.data, shape)?,
        Tensor4Ref::new(&c.k.data, shape)?,
        Tensor4Ref::new(&c.v.data, shape)?,
        Tensor4Ref::new(&proj.dx.data, shape)?,
        true,
        Some(1.0 / (hd as f64).sqrt()),
    )?;
    let unrope = |d: &[f64]| rotary_backward(MatRef::new(d, t, cfg.d)?, heads, hd, cfg.rotary_pct, cfg.rotary_base, 0);
    let dq = unrope(&a.dq)?;
    let dk = unrope(&a.dk)?;
    let dv = Mat { data: a.dv, rows: t, cols: cfg.d };
    let mut dh = Mat { data: vec![0.0; t * cfg.d], rows: t, cols: cfg.d };
    for (slot, d) in [(Slot::Query, &dq), (Slot::Key, &dk), (Slot::Value, &dv)] {
        let pg = pattn_back(cfg, p, slot, &c.h, d)?;
        put(slot, &pg);
        dh = add(&dh, &pg.dx);
    }
    Ok(add(&dx1, &layer_norm_backward(c.x.view(), None, None, dh.view(), cfg.ln_eps)?.dx))
}

/// The mean next-token cross-entropy of the model on one sequence and its gradient
/// with respect to every parameter.
///
/// The logits are exactly [`model_forward`](crate::model_forward)`(cfg, params,
/// tokens)` (positions `0..t`); the loss is
/// [`cross_entropy`]`(logits, targets)`, `(1/t)·Σ_i −ln softmax(logits_i)[targets_i]`.
/// The gradients come back in a [`ModelParams`] of the same shape as `params`
/// (the tied embedding's gradient sums its gather and unembedding parts); its
/// `n_ref` pins are copied from `params` (they are not parameters and have no
/// gradient). The parameter tensors can be walked in checkpoint order with
/// [`param_tensors`].
///
/// Errors: an invalid config, parameters not matching it, no tokens, `targets`
/// not one per token, a token or target id ≥ `vocab`.
pub fn loss_and_grads(
    params: &ModelParams,
    cfg: &TokenformerConfig,
    tokens: &[u32],
    targets: &[u32],
) -> Result<(f64, ModelParams)> {
    cfg.validate()?;
    params.check(cfg)?;
    if tokens.len() != targets.len() {
        return Err(Error::Shape {
            op: OP,
            msg: format!("{} tokens but {} targets: one target per token expected", tokens.len(), targets.len()),
        });
    }
    let (t, d) = (tokens.len(), cfg.d);
    // Forward, as model_forward.
    let mut x = zeros(OP, crate::checked_mul(OP, "activations [t, d]", t, d)?)?;
    for (pos, (&id, row)) in tokens.iter().zip(x.chunks_exact_mut(d)).enumerate() {
        let id = id as usize;
        if id >= cfg.vocab {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "token id {id} at position {pos} is out of range: config {:?} has vocab {}",
                    cfg.name, cfg.vocab
                ),
            });
        }
        row.copy_from_slice(&params.embedding[id * d..(id + 1) * d]);
    }
    let mut h = Mat { data: x, rows: t, cols: d };
    let mut caches = Vec::with_capacity(params.blocks.len());
    for b in &params.blocks {
        let (out, cache) = block_forward_cached(cfg, b, h)?;
        caches.push(cache);
        h = out;
    }
    let (w, bias) = (&params.final_norm_weight, &params.final_norm_bias);
    let hn = layer_norm(h.view(), Some(w), Some(bias), cfg.ln_eps)?;
    let emb = MatRef::new(&params.embedding, cfg.vocab, d)?;
    let logits = linear(hn.view(), emb)?;
    let (loss, dlogits) = cross_entropy(logits.view(), targets)?;

    // Backward.
    let mut grads = params.clone();
    let un = linear_backward(hn.view(), emb, dlogits.view())?;
    let ln = layer_norm_backward(h.view(), Some(w), Some(bias), un.dx.view(), cfg.ln_eps)?;
    grads.final_norm_weight = ln.dweight.unwrap_or_default();
    grads.final_norm_bias = ln.dbias.unwrap_or_default();
    let mut dh = ln.dx;
    for ((b, c), g) in params.blocks.iter().zip(&caches).zip(&mut grads.blocks).rev() {
        dh = block_backward(cfg, b, c, &dh, g)?;
    }
    let gathered = embedding_backward(tokens, dh.view(), cfg.vocab)?;
    grads.embedding = un.dw.data.iter().zip(&gathered.data).map(|(a, b)| a + b).collect();
    Ok((loss, grads))
}
