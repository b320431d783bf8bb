//! A whole TokenFormer on a device: the official initialisation (on the device,
//! the same Philox numbers as `tf_ref::ModelParams::init`), GPT-NeoX safetensors
//! checkpoints, the forward pass to logits, a KV cache for incremental decoding,
//! greedy and temperature sampling, and growth of every Pattention at once.
//!
//! The forward pass, for token ids `tokens` at positions `p..p+t` (docs/tokenformer.md):
//!
//! ```text
//! x = embedding[tokens]                                    [t, d]
//! for each block:
//!     h = LN(x)                                            no affine, eps 1e-5
//!     q, k, v = Pattention_{q,k,v}(h)                      k, v written into the KV cache
//!     q, k = rotary(q), rotary(k)                          first rot_dim dims of each head
//!     ctx = attention(q [1,t,H,hd], K [1,p+t,H,hd], V)     causal, bottom-right aligned
//!     x += Pattention_proj(ctx)
//!     x += Pattention_ffn(LN(x))
//! logits = LN_affine(x) · embeddingᵀ                       [t, vocab]
//! ```
//!
//! Head dimensions the attention kernels have (64, 80, 96, 128) run directly on
//! the cache. Smaller ones (the `tiny` test config has 16) run padded with zeros
//! to the next kernel size: q and the cache rows hold the head's dims followed
//! by zeros, which change neither `q·k` nor (in the dims that are kept) the
//! output; the scale stays `1/sqrt(head_dim)`. k and v are staged `[t, d]` and
//! appended to the cache by one copy launch (`head_copy_*`), which also pads
//! them; q and the context are padded and unpadded by the same kernel.
//!
//! The configuration and checkpoint formats are tf-ref's ([`TokenformerConfig`],
//! [`ModelParams`]); no tf-ref arithmetic runs here.
//!
//! ```
//! use tf_host::{bf16, Device, Sampling, SlotCounts, Tokenformer, TokenformerConfig};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // CUDA device 0, or say why not and use the CPU emulator (same kernels, far slower).
//!     let dev = match Device::cuda(0) {
//!         Ok(d) => d,
//!         Err(e) => {
//!             eprintln!("no CUDA ({e}); running on the CPU emulator");
//!             Device::emulator()
//!         }
//!     };
//!     // A released size on a GPU, the tiny config on the emulator (or a struct literal).
//!     let cfg = TokenformerConfig::by_name(if dev.is_cuda() { "354m" } else { "tiny" })?;
//!     println!("{} on {}", cfg.name, dev.name());
//!     let mut model = Tokenformer::<bf16>::new(&dev, &cfg, 42)?; // official init, on the device
//!     // let model = Tokenformer::<bf16>::load(&dev, &cfg, "tokenformer-354m.safetensors")?;
//!     let logits = model.forward(&[1, 2, 3])?; // Tensor<bf16> [3, vocab]
//!     assert_eq!(logits.shape(), &[3, cfg.vocab]);
//!     let ids = model.generate(&[1, 2, 3], 8, Sampling::Greedy)?; // KV cache, one row per step
//!     assert_eq!(ids.len(), 8);
//!     // Every Pattention grown at once, logits unchanged (354m -> 757m is 1792, 1792, 7168).
//!     let to = SlotCounts { qkv: cfg.qkv_slots * 2, proj: cfg.proj_slots * 2, ffn: cfg.ffn_slots * 2 };
//!     model.grow_preserving(to, 7)?;
//!     assert_eq!(model.forward(&[1, 2, 3])?.to_vec()?, logits.to_vec()?); // bit for bit
//!     model.save(std::env::temp_dir().join("tokenformer-grown.safetensors"))?; // GPT-NeoX key names
//!     println!("{:?} {ids:?}", logits.shape());
//!     Ok(())
//! }
//! ```

use tf_ref::{tensor_seed, BlockParams};
/// The configuration and checkpoint types, tf-ref's (re-exported for users).
pub use tf_ref::{CheckpointInfo, LoadOptions, ModelParams, Slot, TokenformerConfig, CONFIG_NAMES};

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layer::{Pattention, StagedGrowth};
use crate::ops::attention::HEAD_DIMS;
use crate::ops::grow::{grow_batch, GrowInit, GrowItem};
use crate::ops::pattention::{Norm, PattentionOptions};
use crate::tensor::{Tensor, View, ViewMut};

/// Standard deviation of the embedding and of every key-token matrix (GPT-NeoX
/// `init_method_std` 0.02), as tf-ref.
pub(crate) const KEY_STD: f32 = 0.02;

/// Standard deviation of the value tokens: `2 / (L·√d)` ("wang init"), computed
/// in f64 and rounded to f32, as tf-ref.
pub(crate) fn value_std(cfg: &TokenformerConfig) -> f32 {
    (2.0 / (cfg.layers as f64 * (cfg.d as f64).sqrt())) as f32
}

/// Index of a block tensor in [`TokenformerConfig::tensor_names`] (the index
/// [`tensor_seed`] takes): `1 + 10·block + 2·slot + value`.
pub(crate) fn tensor_index(block: usize, slot: Slot, value: bool) -> u64 {
    (block as u64).wrapping_mul(10).wrapping_add(1 + 2 * slot.index() as u64 + u64::from(value))
}

/// A tf-ref error (config or checkpoint) as a tf-host error, message kept whole.
fn from_ref(op: &'static str) -> impl Fn(tf_ref::Error) -> Error {
    move |e| match e {
        tf_ref::Error::Shape { .. } => Error::Shape { op, msg: e.to_string() },
        other => Error::InvalidArgument { op, msg: other.to_string() },
    }
}

fn norm_of(n: tf_ref::Norm) -> Norm {
    match n {
        tf_ref::Norm::L2NormGelu => Norm::L2NormGelu,
        tf_ref::Norm::GeluL2Norm => Norm::GeluL2Norm,
        tf_ref::Norm::Softmax => Norm::Softmax,
    }
}

/// Sizes derived from a config, checked once.
#[derive(Debug, Clone, Copy)]
struct Geo {
    d: usize,
    vocab: usize,
    heads: usize,
    /// The model's head dimension.
    hd: usize,
    /// The attention kernel's head dimension (`hd` or the next larger kernel size).
    hd_pad: usize,
    rot_dim: usize,
    base: f32,
    eps: f32,
    norm: Norm,
}

impl Geo {
    fn of<T: DType>(op: &'static str, cfg: &TokenformerConfig) -> Result<Geo> {
        cfg.validate().map_err(from_ref(op))?;
        let hd = cfg.head_dim();
        let Some(&hd_pad) = HEAD_DIMS.iter().find(|&&k| k >= hd) else {
            return Err(Error::InvalidArgument {
                op,
                msg: format!(
                    "config {:?}: head dimension {hd} is larger than the attention kernels' largest ({})",
                    cfg.name,
                    HEAD_DIMS[HEAD_DIMS.len() - 1]
                ),
            });
        };
        if std::mem::size_of::<T>() == 2 && cfg.d % 8 != 0 {
            return Err(Error::Alignment {
                op,
                msg: format!(
                    "config {:?}: d = {} must be a multiple of 8 for {} storage (16-byte rows)",
                    cfg.name,
                    cfg.d,
                    T::NAME
                ),
            });
        }
        let rot_dim = cfg.rot_dim().map_err(from_ref(op))?;
        Ok(Geo {
            d: cfg.d,
            vocab: cfg.vocab,
            heads: cfg.heads,
            hd,
            hd_pad,
            rot_dim,
            base: cfg.rotary_base as f32,
            eps: cfg.ln_eps as f32,
            norm: norm_of(cfg.norm),
        })
    }

    fn padded(&self) -> bool {
        self.hd_pad != self.hd
    }

    /// Elements of one cache row (one position, every head).
    fn cache_row(&self) -> usize {
        self.heads * self.hd_pad
    }
}

/// Parameter-token counts of a model's Pattentions, the same in every block:
/// what [`Tokenformer::grow`] and [`Tokenformer::grow_preserving`] grow to.
///
/// Growing `354m` into `757m` (both released configurations) doubles each:
/// `SlotCounts { qkv: 1792, proj: 1792, ffn: 7168 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotCounts {
    /// Tokens of each of the query, key and value Pattentions.
    pub qkv: usize,
    /// Tokens of the output projection.
    pub proj: usize,
    /// Tokens of the feed-forward Pattention.
    pub ffn: usize,
}

impl SlotCounts {
    /// The counts of `cfg` (`qkv_slots`, `proj_slots`, `ffn_slots`).
    pub fn of(cfg: &TokenformerConfig) -> SlotCounts {
        SlotCounts { qkv: cfg.qkv_slots, proj: cfg.proj_slots, ffn: cfg.ffn_slots }
    }
}

mod decode_graph;
mod forward;
mod generate;
pub use decode_graph::DecodeGraph;
pub use forward::KvCache;
pub(crate) use forward::{Pass, STEP_BYTES, STEP_KEYS, STEP_POS};
pub use generate::Sampling;

/// A TokenFormer with storage type `T` (f32, f16, bf16) on a device.
///
/// ```
/// use tf_host::{Device, Sampling, SlotCounts, Tokenformer, TokenformerConfig};
///
/// # fn main() -> tf_host::Result<()> {
/// let dev = Device::emulator();
/// let cfg = TokenformerConfig::by_name("tiny")?; // 2 blocks, d 64, vocab 512
/// let mut model = Tokenformer::<f32>::new(&dev, &cfg, 7)?;
/// let tokens = [1, 2, 3, 4];
/// let logits = model.forward(&tokens)?;
/// assert_eq!(logits.shape(), &[4, cfg.vocab]);
///
/// // tf-ref runs the same parameters in f64.
/// let want = tf_ref::model_forward(&cfg, &model.to_params()?, &tokens)?;
/// let (mut diff, mut norm) = (0.0, 0.0);
/// for (g, w) in logits.to_f32_vec()?.iter().zip(&want.data) {
///     diff += (f64::from(*g) - w).powi(2);
///     norm += w * w;
/// }
/// assert!((diff / norm).sqrt() < 1e-4, "relative error {}", (diff / norm).sqrt());
///
/// // Every Pattention doubled in one launch, the logits unchanged bit for bit.
/// let s = model.slot_counts();
/// model.grow_preserving(SlotCounts { qkv: 2 * s.qkv, proj: 2 * s.proj, ffn: 2 * s.ffn }, 1)?;
/// assert_eq!(model.config().qkv_slots, 128);
/// assert_eq!(model.forward(&tokens)?.to_vec()?, logits.to_vec()?);
///
/// // Greedy decoding through the KV cache.
/// let ids = model.generate(&tokens, 3, Sampling::Greedy)?;
/// assert!(ids.len() == 3 && ids.iter().all(|&id| (id as usize) < cfg.vocab));
/// # Ok(()) }
/// ```
pub struct Tokenformer<T: DType> {
    dev: Device,
    cfg: TokenformerConfig,
    geo: Geo,
    /// The tied embedding `[vocab, d]`.
    embedding: Tensor<T>,
    /// Per block, the five Pattentions in [`Slot::ALL`] order.
    blocks: Vec<[Pattention<T>; 5]>,
    norm_weight: Tensor<T>,
    norm_bias: Tensor<T>,
}

impl<T: DType> std::fmt::Debug for Tokenformer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenformer<{}>({:?}: {} layers, d {}, {} heads, slots {}/{}/{}, vocab {} on {:?})",
            T::NAME,
            self.cfg.name,
            self.cfg.layers,
            self.cfg.d,
            self.cfg.heads,
            self.cfg.qkv_slots,
            self.cfg.proj_slots,
            self.cfg.ffn_slots,
            self.cfg.vocab,
            self.dev
        )
    }
}

fn pattention_opts(geo: &Geo, n_ref: Option<usize>) -> PattentionOptions {
    PattentionOptions { norm: geo.norm, n_ref, eps: 0.0 }
}

/// An f64 host tensor as a device tensor of `T` (via f32, as checkpoints store it).
fn upload_f64<T: DType>(dev: &Device, data: &[f64], shape: &[usize]) -> Result<Tensor<T>> {
    let v: Vec<T> = data.iter().map(|&x| T::from_f32(x as f32)).collect();
    dev.upload(&v, shape)
}

fn to_f64<T: DType>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| f64::from(x.to_f32())).collect()
}

impl<T: DType> Tokenformer<T> {
    /// A model with the official initialisation, made on the device: embedding
    /// and key tokens N(0, 0.02²), value tokens N(0, (2/(L·√d))²), final norm
    /// weight 1 and bias 0. Tensor `i` of [`TokenformerConfig::tensor_names`]
    /// uses the Philox stream `tensor_seed(seed, i)`, so the values are those of
    /// `tf_ref::ModelParams::init(cfg, seed)` (rounded to `T`; up to a last-bit
    /// difference of the device's `log`/`cos`). All random tensors are filled by
    /// one launch of the growth kernel.
    pub fn new(dev: &Device, cfg: &TokenformerConfig, seed: u64) -> Result<Self> {
        const OP: &str = "Tokenformer::new";
        let geo = Geo::of::<T>(OP, cfg)?;
        let d = cfg.d;
        let mut embedding = dev.zeros::<T>(&[cfg.vocab, d])?;
        let mut tokens = Vec::with_capacity(cfg.layers * 5);
        for _ in 0..cfg.layers {
            for slot in Slot::ALL {
                let n = cfg.slots(slot);
                tokens.push((dev.zeros::<T>(&[n, d])?, dev.zeros::<T>(&[n, d])?));
            }
        }
        let v_std = value_std(cfg);
        {
            let mut items = Vec::with_capacity(1 + 2 * tokens.len());
            items.push(GrowItem {
                src: None,
                dst: embedding.view_mut(),
                rows_old: 0,
                init: GrowInit::Normal { std: KEY_STD, seed: tensor_seed(seed, 0) },
            });
            for (j, (k, v)) in tokens.iter_mut().enumerate() {
                let (block, slot) = (j / 5, Slot::ALL[j % 5]);
                items.push(GrowItem {
                    src: None,
                    dst: k.view_mut(),
                    rows_old: 0,
                    init: GrowInit::Normal { std: KEY_STD, seed: tensor_seed(seed, tensor_index(block, slot, false)) },
                });
                items.push(GrowItem {
                    src: None,
                    dst: v.view_mut(),
                    rows_old: 0,
                    init: GrowInit::Normal { std: v_std, seed: tensor_seed(seed, tensor_index(block, slot, true)) },
                });
            }
            grow_batch(dev, items)?;
        }
        let mut blocks = Vec::with_capacity(cfg.layers);
        let mut it = tokens.into_iter();
        for _ in 0..cfg.layers {
            let mut ps = Vec::with_capacity(5);
            for _ in Slot::ALL {
                let (k, v) = it.next().ok_or_else(|| Error::InvalidArgument {
                    op: OP,
                    msg: "internal: parameter tensors miscounted".into(),
                })?;
                ps.push(Pattention::new(dev, k, v, pattention_opts(&geo, None))?);
            }
            blocks.push(five(ps)?);
        }
        Ok(Tokenformer {
            dev: dev.clone(),
            cfg: cfg.clone(),
            geo,
            embedding,
            blocks,
            norm_weight: dev.upload(&vec![T::from_f32(1.0); d], &[d])?,
            norm_bias: dev.zeros::<T>(&[d])?,
        })
    }

    /// A model holding `params` (checked against `cfg`; errors name the key),
    /// each value rounded to `T` through f32. Pinned `n_ref`s are kept.
    pub fn from_params(dev: &Device, cfg: &TokenformerConfig, params: &ModelParams) -> Result<Self> {
        const OP: &str = "Tokenformer::from_params";
        let geo = Geo::of::<T>(OP, cfg)?;
        params.check(cfg).map_err(from_ref(OP))?;
        let d = cfg.d;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for b in &params.blocks {
            let mut ps = Vec::with_capacity(5);
            for slot in Slot::ALL {
                let n = cfg.slots(slot);
                let (k, v) = b.tokens(slot);
                ps.push(Pattention::new(
                    dev,
                    upload_f64(dev, k, &[n, d])?,
                    upload_f64(dev, v, &[n, d])?,
                    pattention_opts(&geo, b.n_ref(slot)),
                )?);
            }
            blocks.push(five(ps)?);
        }
        Ok(Tokenformer {
            dev: dev.clone(),
            cfg: cfg.clone(),
            geo,
            embedding: upload_f64(dev, &params.embedding, &[cfg.vocab, d])?,
            blocks,
            norm_weight: upload_f64(dev, &params.final_norm_weight, &[d])?,
            norm_bias: upload_f64(dev, &params.final_norm_bias, &[d])?,
        })
    }

    /// The parameters copied to the host (f64 holding the `T` values exactly),
    /// with the pinned `n_ref`s: what [`save`](Self::save) writes.
    pub fn to_params(&self) -> Result<ModelParams> {
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let mut tok: Vec<(Vec<f64>, Vec<f64>)> = Vec::with_capacity(5);
            let mut n_ref = [None; 5];
            for (p, slot) in b.iter().zip(Slot::ALL) {
                let (k, v) = p.download()?;
                tok.push((to_f64(&k), to_f64(&v)));
                n_ref[slot.index()] = p.options().n_ref;
            }
            let mut it = tok.into_iter();
            let mut next = || it.next().unwrap_or_default();
            blocks.push(BlockParams { q: next(), k: next(), v: next(), proj: next(), ffn: next(), n_ref });
        }
        Ok(ModelParams {
            embedding: to_f64(&self.embedding.to_vec()?),
            blocks,
            final_norm_weight: to_f64(&self.norm_weight.to_vec()?),
            final_norm_bias: to_f64(&self.norm_bias.to_vec()?),
        })
    }

    /// A model read from a safetensors checkpoint with the official GPT-NeoX key
    /// names (tf-ref's format). A missing, extra or wrongly shaped tensor is an
    /// error naming its key; so is a NaN or infinite weight (see [`load_with`](Self::load_with)).
    pub fn load(dev: &Device, cfg: &TokenformerConfig, path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::load_with(dev, cfg, path, &LoadOptions::default())
    }

    /// [`load`](Self::load) with tf-ref's [`LoadOptions`] (e.g. accepting
    /// non-finite weights).
    pub fn load_with(
        dev: &Device,
        cfg: &TokenformerConfig,
        path: impl AsRef<std::path::Path>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        const OP: &str = "Tokenformer::load";
        Geo::of::<T>(OP, cfg)?;
        let params = ModelParams::load_safetensors_with(cfg, path, opts).map_err(from_ref(OP))?;
        Self::from_params(dev, cfg, &params)
    }

    /// Writes the model as a safetensors checkpoint (f32 tensors, official key
    /// names, pinned `n_ref`s in the metadata), replacing any old file atomically.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.save_with_metadata(path, &[])
    }

    /// [`save`](Self::save) with extra string metadata (e.g. the storage type and
    /// init seed the model was made with).
    pub fn save_with_metadata(&self, path: impl AsRef<std::path::Path>, extra: &[(&str, &str)]) -> Result<()> {
        const OP: &str = "Tokenformer::save";
        self.to_params()?.save_safetensors_with_metadata(&self.cfg, path, extra).map_err(from_ref(OP))
    }

    /// The configuration (its slot counts follow growth).
    pub fn config(&self) -> &TokenformerConfig {
        &self.cfg
    }

    /// The tied embedding `[vocab, d]` (the training chain, crate::train).
    pub(crate) fn embedding_view(&self) -> View<'_, T> {
        self.embedding.view()
    }

    /// The blocks' Pattentions, per block in [`Slot::ALL`] order.
    pub(crate) fn blocks_ref(&self) -> &[[Pattention<T>; 5]] {
        &self.blocks
    }

    /// The final layer norm's weight and bias, `[d]` each.
    pub(crate) fn final_norm_views(&self) -> (View<'_, T>, View<'_, T>) {
        (self.norm_weight.view(), self.norm_bias.view())
    }

    /// Every parameter tensor in [`TokenformerConfig::tensor_names`] order (the
    /// order of tf-ref's `param_tensors`): the embedding `[vocab, d]`; per block
    /// the key then value tokens `[n, d]` of query, key, value, proj, ffn; the
    /// final norm's weight and bias `[d]`.
    pub fn param_views(&self) -> Vec<View<'_, T>> {
        let mut out = vec![self.embedding.view()];
        for p in self.blocks.iter().flatten() {
            out.push(p.keys());
            out.push(p.values());
        }
        out.push(self.norm_weight.view());
        out.push(self.norm_bias.view());
        out
    }

    /// [`param_views`](Self::param_views), writable: an optimizer updates the
    /// parameters in place (crate::trainer).
    pub(crate) fn param_views_mut(&mut self) -> Result<Vec<ViewMut<'_, T>>> {
        let mut out = vec![self.embedding.view_mut()];
        for p in self.blocks.iter_mut().flatten() {
            let (k, v) = p.tokens_mut()?;
            out.push(k);
            out.push(v);
        }
        out.push(self.norm_weight.view_mut());
        out.push(self.norm_bias.view_mut());
        Ok(out)
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The Pattention `slot` of block `block`, if both exist.
    pub fn pattention(&self, block: usize, slot: Slot) -> Option<&Pattention<T>> {
        self.blocks.get(block).map(|b| &b[slot.index()])
    }

    /// Grows every Pattention of every block to the token counts `to` (each at
    /// least the current one) in ONE launch of the growth kernel. New rows, as
    /// `tf_ref::ModelParams::grow(.., preserving: false, seed)`: keys
    /// N(0, 0.02²) and values N(0, (2/(L·√d))²) from the streams
    /// `tensor_seed(seed, i)` continued at the old row count. The outputs change.
    pub fn grow(&mut self, to: SlotCounts, seed: u64) -> Result<()> {
        self.grow_all(to, false, seed)
    }

    /// Growth that leaves the logits unchanged (docs/tokenformer.md): new key rows are
    /// zero and each grown Pattention's `n_ref` is pinned to its old count (an
    /// already pinned one keeps its pin); new value rows are random as in
    /// [`grow`](Self::grow) so that they can train. One launch. Refused for the
    /// softmax norm, which no growth preserves.
    pub fn grow_preserving(&mut self, to: SlotCounts, seed: u64) -> Result<()> {
        self.grow_all(to, true, seed)
    }

    /// The current parameter-token counts (those of [`config`](Self::config)).
    pub fn slot_counts(&self) -> SlotCounts {
        SlotCounts::of(&self.cfg)
    }

    fn grow_all(&mut self, to: SlotCounts, preserving: bool, seed: u64) -> Result<()> {
        let SlotCounts { qkv: new_qkv, proj: new_proj, ffn: new_ffn } = to;
        let op: &'static str = if preserving { "Tokenformer::grow_preserving" } else { "Tokenformer::grow" };
        if preserving && self.geo.norm == Norm::Softmax {
            return Err(Error::InvalidArgument {
                op,
                msg: "softmax cannot be preserved by growth (exp(0) = 1 adds mass); use grow".into(),
            });
        }
        for (what, old, new) in [
            ("qkv", self.cfg.qkv_slots, new_qkv),
            ("proj", self.cfg.proj_slots, new_proj),
            ("ffn", self.cfg.ffn_slots, new_ffn),
        ] {
            if new < old {
                return Err(Error::InvalidArgument {
                    op,
                    msg: format!("{what} slots {old} -> {new}: growth cannot remove parameter tokens"),
                });
            }
        }
        let grown = self.cfg.with_slots(new_qkv, new_proj, new_ffn).map_err(from_ref(op))?;
        let v_std = value_std(&self.cfg);
        let mut staged: Vec<StagedGrowth<T>> = Vec::with_capacity(self.blocks.len() * 5);
        for b in &self.blocks {
            for (p, slot) in b.iter().zip(Slot::ALL) {
                staged.push(p.stage_growth(op, grown.slots(slot))?);
            }
        }
        {
            let mut items = Vec::with_capacity(staged.len() * 2);
            let layers = self
                .blocks
                .iter_mut()
                .enumerate()
                .flat_map(|(i, b)| b.iter_mut().zip(Slot::ALL).map(move |(p, s)| (i, s, p)));
            for ((i, slot, p), st) in layers.zip(staged.iter_mut()) {
                let k_init = if preserving {
                    GrowInit::Zeros
                } else {
                    GrowInit::Normal { std: KEY_STD, seed: tensor_seed(seed, tensor_index(i, slot, false)) }
                };
                let v_init = GrowInit::Normal { std: v_std, seed: tensor_seed(seed, tensor_index(i, slot, true)) };
                items.extend(p.growth_items(st, k_init, v_init)?);
            }
            if !items.is_empty() {
                grow_batch(&self.dev, items)?;
            }
        }
        let all = self.blocks.iter_mut().flat_map(|b| b.iter_mut());
        for (p, st) in all.zip(staged) {
            let old = p.n();
            p.commit_growth(st);
            if preserving && p.n() > old {
                let pin = p.options().n_ref.unwrap_or(old);
                p.set_n_ref(Some(pin))?;
            }
        }
        self.cfg = grown;
        Ok(())
    }

    fn check_tokens(&self, op: &'static str, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument { op, msg: "at least one token id is needed".into() });
        }
        if let Some((pos, &id)) = tokens.iter().enumerate().find(|(_, &id)| id as usize >= self.geo.vocab) {
            return Err(Error::InvalidArgument {
                op,
                msg: format!(
                    "token id {id} at position {pos} is out of range: config {:?} has vocab {}",
                    self.cfg.name, self.geo.vocab
                ),
            });
        }
        Ok(())
    }
}

/// Five Pattentions as an array (the caller pushed exactly five).
fn five<T: DType>(v: Vec<Pattention<T>>) -> Result<[Pattention<T>; 5]> {
    v.try_into().map_err(|v: Vec<Pattention<T>>| Error::InvalidArgument {
        op: "Tokenformer",
        msg: format!("internal: a block needs 5 Pattentions, got {}", v.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_indices_follow_tensor_names() {
        let cfg = TokenformerConfig::by_name("tiny").unwrap();
        let names = cfg.tensor_names();
        for i in 0..cfg.layers {
            for slot in Slot::ALL {
                for value in [false, true] {
                    let (name, _) = &names[tensor_index(i, slot, value) as usize];
                    let part = if value { "value" } else { "key" };
                    assert_eq!(name, &format!("{}.{part}_param_tokens", slot.key_prefix(i)));
                }
            }
        }
    }
}
