//! The block and model forward passes.

use super::config::TokenformerConfig;
use super::ops::{layer_norm, rotary};
use super::params::{BlockParams, ModelParams, Slot};
use crate::{attention, linear, pattention, zeros, Error, Mat, MatRef, PattentionOpts};
use crate::{Result, Tensor4Ref};

/// One Pattention of block `p` applied to `x [t, d]`. Shapes were checked by the caller.
fn pattn(cfg: &TokenformerConfig, p: &BlockParams, slot: Slot, x: &Mat) -> Result<Mat> {
    let n = cfg.slots(slot);
    let (k_p, v_p) = p.tokens(slot);
    pattention(
        x.view(),
        MatRef::new(k_p, n, cfg.d)?,
        MatRef::new(v_p, n, cfg.d)?,
        &PattentionOpts { norm: cfg.norm, n_ref: p.n_ref(slot), eps: 0.0 },
    )
}

/// `a + b` elementwise (same shapes, checked by the caller).
fn add(a: &Mat, b: &Mat) -> Mat {
    Mat { data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(), rows: a.rows, cols: a.cols }
}

/// Checks one block's tensors against `cfg` (element counts and `n_ref`), naming
/// the tensor by its key inside the block (e.g. `attention.query.key_param_tokens`).
fn check_block(cfg: &TokenformerConfig, p: &BlockParams) -> Result<()> {
    const OP: &str = "block_forward";
    for slot in Slot::ALL {
        let n = cfg.slots(slot);
        let (k, v) = p.tokens(slot);
        for (part, t) in [("key", k), ("value", v)] {
            if n.checked_mul(cfg.d) != Some(t.len()) {
                return Err(Error::Shape {
                    op: OP,
                    msg: format!(
                        "{}.{part}_param_tokens: config {:?} expects [{n}, {}] but the tensor \
                         holds {} values",
                        slot.module(),
                        cfg.name,
                        cfg.d,
                        t.len()
                    ),
                });
            }
        }
        if p.n_ref(slot) == Some(0) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("{}: n_ref must be >= 1, got 0", slot.module()),
            });
        }
    }
    Ok(())
}

/// One TokenFormer block (official `ParallelTokenformerLayer`) on one sequence
/// `x [t, d]` whose first row is at position `pos_offset`, with causal
/// self-attention over these `t` rows only (no KV cache):
///
/// ```text
/// h = LN(x); q,k,v = Pattention_{q,k,v}(h); q,k = rotary(q), rotary(k)
/// ctx = causal_attention(q, k, v)     x1 = x + Pattention_proj(ctx)
/// out = x1 + Pattention_ffn(LN(x1))
/// ```
///
/// The layer norms have no affine weights; `q`, `k`, `v` are viewed as
/// `[1, t, heads, head_dim]`; the attention scale is `1/sqrt(head_dim)`. Returns
/// `[t, d]`; `t = 0` gives an empty result.
///
/// Errors: an invalid config, a block tensor not of its config shape (named by its
/// key inside the block, e.g. `mlp.value_param_tokens`), `x` not `[t, d]`,
/// `pos_offset + t` overflowing.
pub fn block_forward(cfg: &TokenformerConfig, p: &BlockParams, x: &Mat, pos_offset: usize) -> Result<Mat> {
    cfg.validate()?;
    check_block(cfg, p)?;
    x.view().check("block_forward", "x")?;
    if x.cols != cfg.d {
        return Err(Error::Shape {
            op: "block_forward",
            msg: format!("x is [{}, {}] but config {:?} has d = {}", x.rows, x.cols, cfg.name, cfg.d),
        });
    }
    block_forward_checked(cfg, p, x, pos_offset)
}

/// [`block_forward`] after validation.
fn block_forward_checked(cfg: &TokenformerConfig, p: &BlockParams, x: &Mat, pos_offset: usize) -> Result<Mat> {
    let (t, heads, hd) = (x.rows, cfg.heads, cfg.head_dim());
    let h = layer_norm(x.view(), None, None, cfg.ln_eps)?;
    let q = pattn(cfg, p, Slot::Query, &h)?;
    let k = pattn(cfg, p, Slot::Key, &h)?;
    let v = pattn(cfg, p, Slot::Value, &h)?;
    let rope = |m: &Mat| rotary(m.view(), heads, hd, cfg.rotary_pct, cfg.rotary_base, pos_offset);
    let (q, k) = (rope(&q)?, rope(&k)?);
    // [t, d] row-major is [1, t, heads, head_dim] row-major.
    let shape = [1, t, heads, hd];
    let ctx = attention(
        Tensor4Ref::new(&q.data, shape)?,
        Tensor4Ref::new(&k.data, shape)?,
        Tensor4Ref::new(&v.data, shape)?,
        true,
        Some(1.0 / (hd as f64).sqrt()),
    )?;
    let ctx = Mat { data: ctx.o, rows: t, cols: cfg.d };
    let x1 = add(x, &pattn(cfg, p, Slot::Proj, &ctx)?);
    let h1 = layer_norm(x1.view(), None, None, cfg.ln_eps)?;
    Ok(add(&x1, &pattn(cfg, p, Slot::Ffn, &h1)?))
}

/// The whole model on one sequence of token ids (positions `0..t`): embedding
/// gather → `L` blocks → final layer norm with affine weights → logits `h·Eᵀ`
/// through the tied embedding. Returns `[t, vocab]` (empty for no tokens).
///
/// Errors: an invalid config, parameters not matching it (naming the key), or a
/// token id ≥ `vocab` (naming the id and its position).
pub fn model_forward(cfg: &TokenformerConfig, p: &ModelParams, tokens: &[u32]) -> Result<Mat> {
    const OP: &str = "model_forward";
    cfg.validate()?;
    p.check(cfg)?;
    let d = cfg.d;
    let t = tokens.len();
    let mut x = zeros(OP, crate::checked_mul(OP, "activations [t, d]", t, d)?)?;
    for (pos, (&id, row)) in tokens.iter().zip(x.chunks_exact_mut(d)).enumerate() {
        // u32 -> usize is lossless on every supported target.
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
        row.copy_from_slice(&p.embedding[id * d..(id + 1) * d]);
    }
    let mut h = Mat { data: x, rows: t, cols: d };
    for b in &p.blocks {
        h = block_forward_checked(cfg, b, &h, 0)?;
    }
    let h = layer_norm(h.view(), Some(&p.final_norm_weight), Some(&p.final_norm_bias), cfg.ln_eps)?;
    linear(h.view(), MatRef::new(&p.embedding, cfg.vocab, d)?)
}
