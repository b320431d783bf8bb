//! Model parameters: the official initialisation, growth, and shape checks.

use super::config::TokenformerConfig;
use crate::{grow, Error, Init, MatRef, Norm, Result};

/// The five Pattentions of a block, in checkpoint order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// `attention.query`: `qkv_slots` tokens.
    Query,
    /// `attention.key`: `qkv_slots` tokens.
    Key,
    /// `attention.value`: `qkv_slots` tokens.
    Value,
    /// `attention.proj`: `proj_slots` tokens.
    Proj,
    /// `mlp`: `ffn_slots` tokens.
    Ffn,
}

impl Slot {
    /// All five, in checkpoint order (also the order of [`BlockParams::n_ref`]).
    pub const ALL: [Slot; 5] = [Slot::Query, Slot::Key, Slot::Value, Slot::Proj, Slot::Ffn];

    /// Position in [`Slot::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The module path inside a block: `attention.{query,key,value,proj}` or `mlp`.
    pub fn module(self) -> &'static str {
        match self {
            Slot::Query => "attention.query",
            Slot::Key => "attention.key",
            Slot::Value => "attention.value",
            Slot::Proj => "attention.proj",
            Slot::Ffn => "mlp",
        }
    }

    /// The checkpoint key prefix of this Pattention in block `block` (0-based):
    /// `sequential.{block+2}.`[`module`](Self::module).
    pub fn key_prefix(self, block: usize) -> String {
        format!("sequential.{}.{}", block.saturating_add(2), self.module())
    }
}

/// The parameters of one block: `(key tokens, value tokens)` of each Pattention,
/// row-major `[slots, d]` each, plus the pinned reference token counts.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockParams {
    /// Query Pattention: key tokens `[qkv_slots, d]`, value tokens `[qkv_slots, d]`.
    pub q: (Vec<f64>, Vec<f64>),
    /// Key Pattention, same shapes as `q`.
    pub k: (Vec<f64>, Vec<f64>),
    /// Value Pattention, same shapes as `q`.
    pub v: (Vec<f64>, Vec<f64>),
    /// Output projection: `[proj_slots, d]` each.
    pub proj: (Vec<f64>, Vec<f64>),
    /// The MLP-replacing Pattention: `[ffn_slots, d]` each.
    pub ffn: (Vec<f64>, Vec<f64>),
    /// Pinned `n_ref` of each Pattention, indexed by [`Slot::index`] (q, k, v, proj,
    /// ffn); `None` uses the current token count. Set by a preserving
    /// [`ModelParams::grow`]; `Some(0)` is invalid.
    pub n_ref: [Option<usize>; 5],
}

impl BlockParams {
    /// The `(key tokens, value tokens)` of one Pattention.
    pub fn tokens(&self, slot: Slot) -> &(Vec<f64>, Vec<f64>) {
        match slot {
            Slot::Query => &self.q,
            Slot::Key => &self.k,
            Slot::Value => &self.v,
            Slot::Proj => &self.proj,
            Slot::Ffn => &self.ffn,
        }
    }

    /// Mutable access to one Pattention's tokens.
    pub fn tokens_mut(&mut self, slot: Slot) -> &mut (Vec<f64>, Vec<f64>) {
        match slot {
            Slot::Query => &mut self.q,
            Slot::Key => &mut self.k,
            Slot::Value => &mut self.v,
            Slot::Proj => &mut self.proj,
            Slot::Ffn => &mut self.ffn,
        }
    }

    /// The pinned `n_ref` of one Pattention (`None`: its current token count).
    pub fn n_ref(&self, slot: Slot) -> Option<usize> {
        self.n_ref[slot.index()]
    }

    /// Assembles a block from its five Pattentions in [`Slot::ALL`] order.
    fn from_slots(tokens: [(Vec<f64>, Vec<f64>); 5], n_ref: [Option<usize>; 5]) -> Self {
        let [q, k, v, proj, ffn] = tokens;
        BlockParams { q, k, v, proj, ffn, n_ref }
    }
}

/// All parameters of a model (f64 in memory; f32 in checkpoints).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    /// The tied token embedding `[vocab, d]`.
    pub embedding: Vec<f64>,
    /// One entry per block.
    pub blocks: Vec<BlockParams>,
    /// Final layer-norm weight `[d]`.
    pub final_norm_weight: Vec<f64>,
    /// Final layer-norm bias `[d]`.
    pub final_norm_bias: Vec<f64>,
}

/// Standard deviation of the embedding and of every key-token matrix (GPT-NeoX
/// `init_method: normal`, `init_method_std` 0.02).
const KEY_STD: f32 = 0.02;

/// Standard deviation of every value-token matrix: GPT-NeoX `wang_init`,
/// `2 / (L·√d)`, rounded to f32.
fn value_std(cfg: &TokenformerConfig) -> f32 {
    (2.0 / (cfg.layers as f64 * (cfg.d as f64).sqrt())) as f32
}

/// The Philox seed of the random tensor at position `index` of
/// [`TokenformerConfig::tensor_names`], for the model seed `seed`:
/// `seed ^ ((index + 1) · 0x9E3779B97F4A7C15 mod 2⁶⁴)`.
///
/// Multiplication by an odd constant is a bijection of `u64`, so the tensors of one
/// model get pairwise distinct Philox keys. Index 0 is the embedding; block `i`'s
/// Pattention `s` ([`Slot::index`]) has its key tokens at `1 + 10·i + 2·s` and its
/// value tokens at `2 + 10·i + 2·s`. Element `(r, c)` of the tensor is
/// [`philox_normal`](crate::philox_normal)`(tensor_seed(seed, index), r·d + c, std)`
/// (the [`Init::Normal`] definition, `r` the absolute row), so the rows a
/// non-preserving growth appends with the same seed continue the initial stream.
pub fn tensor_seed(seed: u64, index: u64) -> u64 {
    seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Index of a block tensor in [`TokenformerConfig::tensor_names`]; `value` selects
/// the value tokens.
fn block_tensor_index(block: usize, slot: Slot, value: bool) -> u64 {
    // usize -> u64 is lossless on every supported target; the wrapping cannot
    // matter for a model that fits in memory.
    (block as u64).wrapping_mul(10).wrapping_add(1 + 2 * slot.index() as u64 + u64::from(value))
}

/// `[rows, cols]` of `N(0, std²)` from the Philox stream `seed` (values rounded to f32).
fn normal(rows: usize, cols: usize, std: f32, seed: u64) -> Result<Vec<f64>> {
    let empty: &[f64] = &[];
    grow(MatRef::new(empty, 0, cols)?, rows, &Init::Normal { std, seed })
}

impl ModelParams {
    /// The official initialisation: embedding and key tokens `N(0, 0.02²)`, value
    /// tokens `N(0, (2/(L·√d))²)` (the std rounded to f32), final norm weight 1 and
    /// bias 0, no pinned `n_ref`. Every random tensor has its own Philox stream,
    /// seeded by [`tensor_seed`]`(seed, index)`; values are f32-representable.
    ///
    /// Errors: an invalid config, or an allocation failure.
    pub fn init(cfg: &TokenformerConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.d;
        let embedding = normal(cfg.vocab, d, KEY_STD, tensor_seed(seed, 0))?;
        let v_std = value_std(cfg);
        let mut blocks = Vec::new();
        for i in 0..cfg.layers {
            let mut tokens: [(Vec<f64>, Vec<f64>); 5] = Default::default();
            for (slot, t) in Slot::ALL.into_iter().zip(tokens.iter_mut()) {
                let n = cfg.slots(slot);
                let ks = tensor_seed(seed, block_tensor_index(i, slot, false));
                let vs = tensor_seed(seed, block_tensor_index(i, slot, true));
                *t = (normal(n, d, KEY_STD, ks)?, normal(n, d, v_std, vs)?);
            }
            blocks.push(BlockParams::from_slots(tokens, [None; 5]));
        }
        Ok(ModelParams { embedding, blocks, final_norm_weight: vec![1.0; d], final_norm_bias: vec![0.0; d] })
    }

    /// Grows every Pattention of every block to the new token counts (each ≥ the
    /// current one in `cfg`) and returns the grown config. Rows `[0, n_old)` stay
    /// bit-identical; the appended rows are:
    ///
    /// - value tokens: `N(0, (2/(L·√d))²)` as at init, from the stream
    ///   [`tensor_seed`]`(seed, index)` continued at row `n_old`;
    /// - key tokens: the same with std 0.02 when `preserving` is false; zeros when
    ///   it is true, and every Pattention that grows gets its `n_ref` pinned to its
    ///   old count (an already pinned one keeps its pin). Under both conditions
    ///   `model_forward` computes exactly what it did before.
    ///
    /// A non-preserving growth leaves the `n_ref` pins as they were. The returned
    /// config is [`TokenformerConfig::with_slots`] (named `757m` for `354m` grown to
    /// 1792/1792/7168, else `"<name>-grown"`).
    /// On error `self` is unchanged.
    ///
    /// Errors: an invalid config, parameters not matching `cfg` (naming the key), a
    /// count below the current one, `preserving` with the `softmax` norm (which no
    /// growth can preserve: exp(0) = 1), or an allocation failure.
    pub fn grow(
        &mut self,
        cfg: &TokenformerConfig,
        new_qkv: usize,
        new_proj: usize,
        new_ffn: usize,
        preserving: bool,
        seed: u64,
    ) -> Result<TokenformerConfig> {
        const OP: &str = "ModelParams::grow";
        cfg.validate()?;
        self.check(cfg)?;
        if preserving && cfg.norm == Norm::Softmax {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: "a preserving growth needs an L2 norm (l2_norm_gelu or gelu_l2_norm): \
                      softmax scores of zero keys are not zero"
                    .to_string(),
            });
        }
        for (what, old, new) in
            [("qkv", cfg.qkv_slots, new_qkv), ("proj", cfg.proj_slots, new_proj), ("ffn", cfg.ffn_slots, new_ffn)]
        {
            if new < old {
                return Err(Error::InvalidArgument {
                    op: OP,
                    msg: format!("{what} slots {old} -> {new}: growth cannot remove parameter tokens"),
                });
            }
        }
        let grown = cfg.with_slots(new_qkv, new_proj, new_ffn)?;

        let d = cfg.d;
        let v_std = value_std(cfg);
        let mut blocks = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let mut tokens: [(Vec<f64>, Vec<f64>); 5] = Default::default();
            let mut n_ref = b.n_ref;
            for (slot, t) in Slot::ALL.into_iter().zip(tokens.iter_mut()) {
                let (n_old, n_new) = (cfg.slots(slot), grown.slots(slot));
                let (k_old, v_old) = b.tokens(slot);
                let key_init = if preserving {
                    Init::Zeros
                } else {
                    Init::Normal { std: KEY_STD, seed: tensor_seed(seed, block_tensor_index(i, slot, false)) }
                };
                let value_init =
                    Init::Normal { std: v_std, seed: tensor_seed(seed, block_tensor_index(i, slot, true)) };
                *t = (
                    grow(MatRef::new(k_old, n_old, d)?, n_new, &key_init)?,
                    grow(MatRef::new(v_old, n_old, d)?, n_new, &value_init)?,
                );
                if preserving && n_new > n_old {
                    n_ref[slot.index()] = Some(b.n_ref(slot).unwrap_or(n_old));
                }
            }
            blocks.push(BlockParams::from_slots(tokens, n_ref));
        }
        self.blocks = blocks;
        Ok(grown)
    }

    /// The checkpoint key names and shapes, as [`TokenformerConfig::tensor_names`].
    pub fn tensor_names(&self, cfg: &TokenformerConfig) -> Vec<(String, Vec<usize>)> {
        cfg.tensor_names()
    }

    /// Every tensor with its key, expected shape and data, in
    /// [`TokenformerConfig::tensor_names`] order. Callers have checked
    /// `blocks.len() == cfg.layers`.
    pub(crate) fn named_tensors<'a>(&'a self, cfg: &TokenformerConfig) -> Vec<(String, Vec<usize>, &'a [f64])> {
        let mut data: Vec<&[f64]> = vec![&self.embedding];
        for b in &self.blocks {
            for slot in Slot::ALL {
                let (k, v) = b.tokens(slot);
                data.push(k);
                data.push(v);
            }
        }
        data.push(&self.final_norm_weight);
        data.push(&self.final_norm_bias);
        cfg.tensor_names().into_iter().zip(data).map(|((name, shape), d)| (name, shape, d)).collect()
    }

    /// Checks that the parameters fit `cfg`: `layers` blocks, every tensor holding
    /// the element count of its shape, no `n_ref` of 0. Errors name the checkpoint key.
    pub fn check(&self, cfg: &TokenformerConfig) -> Result<()> {
        const OP: &str = "ModelParams::check";
        if self.blocks.len() != cfg.layers {
            return Err(Error::Shape {
                op: OP,
                msg: format!(
                    "config {:?} has {} layers but the parameters hold {} blocks",
                    cfg.name,
                    cfg.layers,
                    self.blocks.len()
                ),
            });
        }
        for (name, shape, data) in self.named_tensors(cfg) {
            let want = shape.iter().try_fold(1_usize, |a, &s| a.checked_mul(s));
            if want != Some(data.len()) {
                return Err(Error::Shape {
                    op: OP,
                    msg: format!(
                        "{name}: config {:?} expects {shape:?} but the tensor holds {} values",
                        cfg.name,
                        data.len()
                    ),
                });
            }
        }
        for (i, b) in self.blocks.iter().enumerate() {
            for slot in Slot::ALL {
                if b.n_ref(slot) == Some(0) {
                    return Err(Error::InvalidArgument {
                        op: OP,
                        msg: format!("{}: n_ref must be >= 1, got 0", slot.key_prefix(i)),
                    });
                }
            }
        }
        Ok(())
    }
}
