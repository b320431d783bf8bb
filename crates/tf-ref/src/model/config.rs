//! Model configurations: the released ones and custom ones.

use super::ops::rotary_dims;
use super::params::Slot;
use crate::{Error, Norm, Result};

/// The vocabulary of every released config: the GPT-NeoX-20B tokenizer padded to
/// a multiple of 128.
pub const NEOX_VOCAB: usize = 50304;

/// The names [`TokenformerConfig::by_name`] knows: the Pile models, the
/// incremental-scaling pair (OpenWebText2, 354M grown to 757M) and a tiny test model.
pub const CONFIG_NAMES: [&str; 7] = ["150m", "450m", "900m", "1.5b", "354m", "757m", "tiny"];

/// The shape of a TokenFormer model. All fields are public, so a custom model is a
/// struct literal (or a released one with fields changed); [`validate`] checks it.
///
/// [`validate`]: TokenformerConfig::validate
#[derive(Debug, Clone, PartialEq)]
pub struct TokenformerConfig {
    /// A label (the released name, or anything for a custom model).
    pub name: String,
    /// Number of blocks `L`.
    pub layers: usize,
    /// Hidden size `d`.
    pub d: usize,
    /// Attention heads (`head_dim = d / heads`).
    pub heads: usize,
    /// Parameter tokens of each of the query, key and value Pattentions.
    pub qkv_slots: usize,
    /// Parameter tokens of the output projection Pattention.
    pub proj_slots: usize,
    /// Parameter tokens of the Pattention replacing the MLP.
    pub ffn_slots: usize,
    /// Vocabulary size `V` (rows of the tied embedding).
    pub vocab: usize,
    /// Training sequence length (informational: the forward accepts any length).
    pub seq: usize,
    /// The Pattention normalisation Θ of every Pattention.
    pub norm: Norm,
    /// Fraction of each head's dimensions that are rotated (0.25).
    pub rotary_pct: f64,
    /// Rotary base (10000).
    pub rotary_base: f64,
    /// Epsilon of every layer norm (1e-5).
    pub ln_eps: f64,
}

/// The shape of a block: `(layers, d, heads, qkv, proj, ffn, vocab, seq)`.
type Shape = (usize, usize, usize, usize, usize, usize, usize, usize);

impl TokenformerConfig {
    /// A released (or the tiny test) configuration by name, case-insensitive:
    ///
    /// | name | layers | d | heads (head_dim) | qkv / proj slots | ffn slots | vocab | seq |
    /// |---|---|---|---|---|---|---|---|
    /// | `150m` | 12 | 768 | 12 (64) | 768 | 3072 | 50304 | 2048 |
    /// | `450m` | 24 | 1024 | 16 (64) | 1024 | 4096 | 50304 | 2048 |
    /// | `900m` | 32 | 1280 | 16 (80) | 1280 | 5120 | 50304 | 2048 |
    /// | `1.5b` | 40 | 1536 | 16 (96) | 1536 | 6144 | 50304 | 2048 |
    /// | `354m` | 24 | 1024 | 16 (64) | 768 | 3072 | 50304 | 1024 |
    /// | `757m` | 24 | 1024 | 16 (64) | 1792 | 7168 | 50304 | 1024 |
    /// | `tiny` | 2 | 64 | 4 (16) | 64 | 128 | 512 | 128 |
    ///
    /// All use `l2_norm_gelu`, rotary on 25 % of each head with base 10000, and
    /// layer-norm epsilon 1e-5 (the official configs). An unknown name is an error
    /// listing the known ones.
    pub fn by_name(name: &str) -> Result<Self> {
        let key = name.to_ascii_lowercase();
        let shape: Shape = match key.as_str() {
            "150m" => (12, 768, 12, 768, 768, 3072, NEOX_VOCAB, 2048),
            "450m" => (24, 1024, 16, 1024, 1024, 4096, NEOX_VOCAB, 2048),
            "900m" => (32, 1280, 16, 1280, 1280, 5120, NEOX_VOCAB, 2048),
            "1.5b" => (40, 1536, 16, 1536, 1536, 6144, NEOX_VOCAB, 2048),
            "354m" => (24, 1024, 16, 768, 768, 3072, NEOX_VOCAB, 1024),
            "757m" => (24, 1024, 16, 1792, 1792, 7168, NEOX_VOCAB, 1024),
            "tiny" => (2, 64, 4, 64, 64, 128, 512, 128),
            _ => {
                return Err(Error::InvalidArgument {
                    op: "TokenformerConfig::by_name",
                    msg: format!("unknown config {name:?}: expected one of {CONFIG_NAMES:?}"),
                })
            }
        };
        let (layers, d, heads, qkv_slots, proj_slots, ffn_slots, vocab, seq) = shape;
        Ok(TokenformerConfig {
            name: key,
            layers,
            d,
            heads,
            qkv_slots,
            proj_slots,
            ffn_slots,
            vocab,
            seq,
            norm: Norm::L2NormGelu,
            rotary_pct: 0.25,
            rotary_base: 10000.0,
            ln_eps: 1e-5,
        })
    }

    /// `d / heads` (0 if `heads` is 0; [`validate`](Self::validate) rejects that).
    pub fn head_dim(&self) -> usize {
        self.d.checked_div(self.heads).unwrap_or(0)
    }

    /// The parameter-token count of a Pattention kind.
    pub fn slots(&self, slot: Slot) -> usize {
        match slot {
            Slot::Query | Slot::Key | Slot::Value => self.qkv_slots,
            Slot::Proj => self.proj_slots,
            Slot::Ffn => self.ffn_slots,
        }
    }

    /// The exact number of parameters:
    /// `V·d + L·2d·(3·qkv_slots + proj_slots + ffn_slots) + 2d`
    /// (embedding; key and value tokens of the five `d → d` Pattentions of each
    /// block; final norm weight and bias). With the released slot numbers
    /// (`qkv = proj = d`, `ffn = 4d`) that is `16·L·d² + V·d + 2d`. Saturates at
    /// `usize::MAX` for absurd configs ([`validate`](Self::validate) rejects those).
    pub fn param_count(&self) -> usize {
        self.checked_param_count().unwrap_or(usize::MAX)
    }

    fn checked_param_count(&self) -> Option<usize> {
        let tokens = Slot::ALL.iter().try_fold(0_usize, |acc, &s| acc.checked_add(self.slots(s)))?;
        let blocks = self.layers.checked_mul(self.d.checked_mul(2)?)?.checked_mul(tokens)?;
        self.vocab.checked_mul(self.d)?.checked_add(blocks)?.checked_add(self.d.checked_mul(2)?)
    }

    /// This config with new slot counts (the target of a growth), validated. Its
    /// name is that of the released config it now equals in every other field
    /// (`354m` with 1792 / 1792 / 7168 slots is `757m`), else `"<name>-grown"`
    /// (unchanged if the counts are).
    pub fn with_slots(&self, qkv_slots: usize, proj_slots: usize, ffn_slots: usize) -> Result<Self> {
        let mut c = TokenformerConfig { qkv_slots, proj_slots, ffn_slots, ..self.clone() };
        c.validate()?;
        if c != *self {
            c.name = CONFIG_NAMES
                .iter()
                .filter_map(|n| TokenformerConfig::by_name(n).ok())
                .find(|r| TokenformerConfig { name: r.name.clone(), ..c.clone() } == *r)
                .map_or_else(|| format!("{}-grown", self.name), |r| r.name);
        }
        Ok(c)
    }

    /// The number of rotated dims of each head (see [`rotary_dims`]).
    pub fn rot_dim(&self) -> Result<usize> {
        rotary_dims(self.head_dim(), self.rotary_pct)
    }

    /// Checks the configuration: every size ≥ 1, `d` divisible by `heads`,
    /// `rotary_pct` in `[0, 1]` giving an even number of rotated dims,
    /// `rotary_base` finite and > 0, `ln_eps` finite and ≥ 0, and a parameter
    /// count that fits in `usize`. Errors name the config and the field.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "TokenformerConfig::validate";
        let bad = |msg: String| Err(Error::InvalidArgument { op: OP, msg: format!("config {:?}: {msg}", self.name) });
        for (field, v) in [
            ("layers", self.layers),
            ("d", self.d),
            ("heads", self.heads),
            ("qkv_slots", self.qkv_slots),
            ("proj_slots", self.proj_slots),
            ("ffn_slots", self.ffn_slots),
            ("vocab", self.vocab),
            ("seq", self.seq),
        ] {
            if v == 0 {
                return bad(format!("{field} must be >= 1"));
            }
        }
        if self.d % self.heads != 0 {
            return bad(format!("d = {} is not divisible by heads = {}", self.d, self.heads));
        }
        if let Err(e) = self.rot_dim() {
            return bad(format!("rotary: {e}"));
        }
        if !(self.rotary_base.is_finite() && self.rotary_base > 0.0) {
            return bad(format!("rotary_base must be finite and > 0, got {}", self.rotary_base));
        }
        if !(self.ln_eps.is_finite() && self.ln_eps >= 0.0) {
            return bad(format!("ln_eps must be finite and >= 0, got {}", self.ln_eps));
        }
        if self.checked_param_count().is_none() {
            return bad("the parameter count overflows usize".to_string());
        }
        Ok(())
    }

    /// Every checkpoint tensor with its shape, in a fixed order, under the official
    /// GPT-NeoX key names (`L = layers`, block `i` in `0..L`):
    ///
    /// - `sequential.0.word_embeddings.weight` `[vocab, d]`;
    /// - `sequential.{i+2}.attention.{query,key,value,proj}.{key,value}_param_tokens`
    ///   `[slots, d]` and `sequential.{i+2}.mlp.{key,value}_param_tokens`
    ///   `[ffn_slots, d]`, per block in the order query, key, value, proj, mlp,
    ///   key tokens before value tokens;
    /// - `sequential.{L+3}.norm.weight` and `.bias` `[d]`.
    ///
    /// A tensor's position in this list is its index for [`tensor_seed`](super::tensor_seed).
    pub fn tensor_names(&self) -> Vec<(String, Vec<usize>)> {
        let mut names = vec![("sequential.0.word_embeddings.weight".to_string(), vec![self.vocab, self.d])];
        for i in 0..self.layers {
            for slot in Slot::ALL {
                for part in ["key", "value"] {
                    names.push((format!("{}.{part}_param_tokens", slot.key_prefix(i)), vec![self.slots(slot), self.d]));
                }
            }
        }
        let norm = self.layers.saturating_add(3);
        for part in ["weight", "bias"] {
            names.push((format!("sequential.{norm}.norm.{part}"), vec![self.d]));
        }
        names
    }
}
