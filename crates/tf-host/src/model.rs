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
use crate::graph::DevCounter;
use crate::layer::{Pattention, StagedGrowth};
use crate::ops::attention::{attention_into_at, workspace_bytes_bound, AttnArgs, AttnOptions, HEAD_DIMS};
use crate::ops::block::{
    add_assign, embedding_at, embedding_into, layer_norm_into, rotary_apply_at, LayerNormArgs, RotaryArgs,
};
use crate::ops::grow::{grow_batch, GrowInit, GrowItem};
use crate::ops::head_copy::head_copy;
use crate::ops::linear::linear_into;
use crate::ops::pattention::{pattention_workspace_bytes, Norm, PattentionOptions};
use crate::tensor::{Tensor, View, ViewMut};
use crate::workspace::Workspace;

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

/// How [`Tokenformer::generate`] picks each next token from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first one on ties).
    Greedy,
    /// A draw from `softmax(logits / t)`, reproducible for a given `seed`.
    Temperature {
        /// The temperature, finite and > 0.
        t: f32,
        /// Seed of the draws.
        seed: u64,
    },
}

/// Keys and values of every layer for the positions seen so far, for decoding
/// one token at a time: per layer `[1, max_len, heads, head_dim]` (head_dim
/// padded as the model pads it). Made by [`Tokenformer::new_cache`].
///
/// The cache also keeps the forward pass's scratch (activations, workspace),
/// made by its first pass and reused: a pass of no more tokens than any before
/// allocates nothing on the device (with [`Tokenformer::forward_cached_into`],
/// which writes the logits into the caller's buffer). Growing the model makes
/// the next pass enlarge the workspace.
pub struct KvCache<T: DType> {
    dev: Device,
    k: Vec<Tensor<T>>,
    v: Vec<Tensor<T>>,
    len: usize,
    max_len: usize,
    heads: usize,
    hd_pad: usize,
    scratch: Option<Scratch<T>>,
    /// A decode graph's step buffer (token id, position, key count), made by
    /// the first capture.
    step: Option<Workspace>,
}

/// The op name of the forward pass's errors.
const OP_FORWARD: &str = "Tokenformer::forward";

mod decode_graph;
pub use decode_graph::DecodeGraph;

/// Byte offsets in a decode graph's step buffer of the position of the step's
/// token (i32) and of the keys attention then sees (i32); the token id (u32)
/// is at offset 0.
pub(crate) const STEP_POS: u64 = 4;
pub(crate) const STEP_KEYS: u64 = 8;
/// Bytes of the step buffer.
pub(crate) const STEP_BYTES: usize = 16;

/// Where a forward pass takes its tokens and position from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pass<'t> {
    /// Ids from the host (checked), at positions `cache.len()..`; the cache's
    /// length advances.
    Host(&'t [u32]),
    /// One token whose id, position and key count the kernels read from the
    /// step buffer at this device address (offsets 0, `STEP_POS`, `STEP_KEYS`);
    /// the cache's length is the caller's to advance.
    Device(u64),
}

/// The forward pass's buffers, for up to `rows` tokens per pass.
struct Scratch<T: DType> {
    rows: usize,
    /// Residual stream, normed input, q, attention context, Pattention output,
    /// and k and v before they join the cache: each `[rows, d]`.
    x: Tensor<T>,
    hb: Tensor<T>,
    q: Tensor<T>,
    ctx: Tensor<T>,
    tmp: Tensor<T>,
    kv: [Tensor<T>; 2],
    /// `[heads · rows]` f32, seen as `[1, heads, t]`.
    lse: Tensor<f32>,
    /// Padded head dims: q and ctx padded `[rows · heads · hd_pad]` (q's padding
    /// columns stay zero).
    pad: Option<[Tensor<T>; 2]>,
    /// Pattention and split-KV attention workspace (one op at a time).
    ws: Workspace,
    /// The passes (tokens, parameter-token counts per slot) `ws` was checked to
    /// fit, with their later one-token steps.
    sized: Vec<(usize, [usize; 5])>,
}

/// The first `t` rows of a `[rows, d]` buffer.
fn rows_of<T: DType>(b: &Tensor<T>, t: usize) -> Result<View<'_, T>> {
    let d = b.shape()[1];
    b.strided(0, &[t, d], &[d, 1])
}

/// The first `t` rows of a `[rows, d]` buffer, writable.
fn rows_of_mut<T: DType>(b: &mut Tensor<T>, t: usize) -> Result<ViewMut<'_, T>> {
    let d = b.shape()[1];
    b.strided_mut(0, &[t, d], &[d, 1])
}

impl<T: DType> std::fmt::Debug for KvCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KvCache<{}>({} layers, {} of {} positions, {} heads x {})",
            T::NAME,
            self.k.len(),
            self.len,
            self.max_len,
            self.heads,
            self.hd_pad
        )
    }
}

impl<T: DType> KvCache<T> {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Most positions it can hold.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
    /// Forgets every position (the buffers and the scratch are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Forgets the positions from `len` on (a rejected draft, a retried step);
    /// the next pass writes over them. A `len` past [`len`](Self::len) is refused.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::InvalidArgument {
                op: "KvCache::truncate",
                msg: format!("cannot keep {len} positions of {}", self.len),
            });
        }
        self.len = len;
        Ok(())
    }
}

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

    /// An empty KV cache for up to `max_len` positions.
    pub fn new_cache(&self, max_len: usize) -> Result<KvCache<T>> {
        if max_len == 0 {
            return Err(Error::InvalidArgument { op: "Tokenformer::new_cache", msg: "max_len must be >= 1".into() });
        }
        let shape = [1, max_len, self.geo.heads, self.geo.hd_pad];
        let mut k = Vec::with_capacity(self.blocks.len());
        let mut v = Vec::with_capacity(self.blocks.len());
        for _ in &self.blocks {
            k.push(self.dev.zeros::<T>(&shape)?);
            v.push(self.dev.zeros::<T>(&shape)?);
        }
        Ok(KvCache {
            dev: self.dev.clone(),
            k,
            v,
            len: 0,
            max_len,
            heads: self.geo.heads,
            hd_pad: self.geo.hd_pad,
            scratch: None,
            step: None,
        })
    }

    /// Logits `[t, vocab]` of the token ids `tokens` (positions `0..t`).
    pub fn forward(&self, tokens: &[u32]) -> Result<Tensor<T>> {
        let mut cache = self.new_cache(tokens.len().max(1))?;
        self.forward_cached(tokens, &mut cache)
    }

    /// Logits `[t, vocab]` of `tokens` at positions `cache.len()..cache.len() + t`,
    /// attending to every position the cache holds; their keys and values are
    /// appended to the cache. One token at a time is incremental decoding (the
    /// attention runs with one query row against the whole cache).
    /// The logits are a new tensor; [`forward_cached_into`](Self::forward_cached_into)
    /// writes them into the caller's buffer instead.
    pub fn forward_cached(&self, tokens: &[u32], cache: &mut KvCache<T>) -> Result<Tensor<T>> {
        self.check_tokens(OP_FORWARD, tokens)?;
        let mut logits = self.dev.output::<T>(&[tokens.len(), self.geo.vocab])?;
        self.run(tokens, cache, &mut logits.view_mut())?;
        Ok(logits)
    }

    /// [`forward_cached`](Self::forward_cached) into a caller's `logits`: `[t, vocab]`
    /// for every new position, or `[1, vocab]` for the last one only. The
    /// activations and workspaces are the cache's scratch, made by its first
    /// pass and reused by every pass of no more tokens, so a decode loop
    /// allocates nothing on the device after its first step (the model's
    /// growth aside).
    ///
    /// ```
    /// use tf_host::{Device, Tokenformer, TokenformerConfig};
    ///
    /// # fn main() -> tf_host::Result<()> {
    /// let dev = Device::emulator();
    /// let cfg = TokenformerConfig::by_name("tiny")?;
    /// let model = Tokenformer::<f32>::new(&dev, &cfg, 7)?;
    /// let mut cache = model.new_cache(16)?;
    /// let mut logits = dev.zeros::<f32>(&[1, cfg.vocab])?;
    /// model.forward_cached_into(&[1, 2, 3], &mut cache, &mut logits.view_mut())?; // the prompt
    /// let before = dev.allocations();
    /// for token in [4, 5, 6] {
    ///     model.forward_cached_into(&[token], &mut cache, &mut logits.view_mut())?;
    /// }
    /// assert_eq!(dev.allocations(), before, "decode steps allocate nothing");
    /// assert_eq!(cache.len(), 6);
    /// // The same logits as a pass over all six tokens.
    /// let all = model.forward(&[1, 2, 3, 4, 5, 6])?.to_vec()?;
    /// let last = logits.to_vec()?;
    /// assert!(last.iter().zip(&all[5 * cfg.vocab..]).all(|(a, b)| (a - b).abs() < 1e-4));
    /// # Ok(()) }
    /// ```
    pub fn forward_cached_into(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<T>,
        logits: &mut ViewMut<'_, T>,
    ) -> Result<()> {
        self.run(tokens, cache, logits)
    }

    /// `max_new` token ids continuing `prompt`, each chosen by `sampling` from the
    /// logits of the last position: the prompt in one pass, then one token per
    /// step through the KV cache, the steps as one captured decode step replayed
    /// per token ([`capture_decode`](Self::capture_decode); should a GPU refuse
    /// the capture, the steps run uncaptured). Returns the new ids only. The device
    /// memory (cache, scratch, logits, the graph's buffers) is allocated before
    /// the steps; the steps allocate none.
    pub fn generate(&self, prompt: &[u32], max_new: usize, sampling: Sampling) -> Result<Vec<u32>> {
        self.generate_with(prompt, max_new, sampling, |_| {})
    }

    /// [`generate`](Self::generate), calling `on_token` with each new id as it is chosen.
    pub fn generate_with(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampling: Sampling,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        const OP: &str = "Tokenformer::generate";
        let mut rng = match sampling {
            Sampling::Greedy => None,
            Sampling::Temperature { t, seed } => {
                if !(t.is_finite() && t > 0.0) {
                    return Err(Error::InvalidArgument {
                        op: OP,
                        msg: format!("temperature must be finite and > 0, got {t}"),
                    });
                }
                Some((t, SplitMix64(seed)))
            }
        };
        self.check_tokens(OP, prompt)?;
        let total = prompt.len().checked_add(max_new).ok_or_else(|| Error::SizeOverflow {
            op: OP,
            msg: format!("{} prompt tokens + {max_new} new", prompt.len()),
        })?;
        if max_new == 0 {
            return Ok(Vec::new());
        }
        // The cache (total positions) is allocated first: it fails cleanly for a
        // huge max_new, and once it exists the ids fit too.
        let mut cache = self.new_cache(total)?;
        let mut out = Vec::with_capacity(max_new);
        let mut logits = self.dev.output::<T>(&[1, self.geo.vocab])?;
        self.run(prompt, &mut cache, &mut logits.view_mut())?;
        let mut choose = |logits: &Tensor<T>, pos: usize| -> Result<u32> {
            let row: Vec<f32> = logits.to_vec()?.iter().map(|x| x.to_f32()).collect();
            let tok = match &mut rng {
                None => argmax(&row),
                Some((t, r)) => sample_temperature(&row, *t, r),
            }
            .ok_or_else(|| Error::InvalidArgument {
                op: OP,
                msg: format!("the logits at position {pos} are not finite"),
            })?;
            out.push(tok);
            on_token(tok);
            Ok(tok)
        };
        // The steps' graph is captured before the first id is chosen, so that
        // nothing is allocated once ids flow. The emulator refuses nothing a GPU
        // would accept: there a failed capture is a bug to report, not to work
        // around.
        let graph = if max_new > 1 {
            match self.capture_decode(&mut cache) {
                Ok(g) => Some(g),
                Err(e) if !self.dev.is_cuda() => return Err(e),
                Err(_) => None,
            }
        } else {
            None
        };
        let mut tok = choose(&logits, prompt.len() - 1)?;
        match graph {
            Some(mut graph) => {
                for _ in 1..max_new {
                    let pos = graph.cache_len();
                    tok = choose(graph.step(tok)?, pos)?;
                }
            }
            None => {
                for _ in 1..max_new {
                    self.run(&[tok], &mut cache, &mut logits.view_mut())?;
                    tok = choose(&logits, cache.len() - 1)?;
                }
            }
        }
        Ok(out)
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

    /// The forward pass over `tokens` at positions `cache.len()..`, appending to
    /// the cache; logits of every new position (`logits` `[t, vocab]`), or of the
    /// last one only (`[1, vocab]`). Activations and workspace are the cache's
    /// scratch, enlarged first if this pass needs more.
    fn run(&self, tokens: &[u32], cache: &mut KvCache<T>, logits: &mut ViewMut<'_, T>) -> Result<()> {
        self.check_tokens(OP_FORWARD, tokens)?;
        self.pass(Pass::Host(tokens), cache, logits)
    }

    /// The forward pass of [`run`](Self::run), for tokens from the host or for
    /// one token whose id and position the kernels read on the device (a
    /// captured decode step: every launch's params are then the same at every
    /// step). Checks the cache and the logits' shape; the ids are the caller's.
    pub(crate) fn pass(&self, pass: Pass<'_>, cache: &mut KvCache<T>, logits: &mut ViewMut<'_, T>) -> Result<()> {
        const OP: &str = OP_FORWARD;
        if !cache.dev.same(&self.dev) || !logits.device().same(&self.dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
        if cache.k.len() != self.blocks.len() || cache.heads != self.geo.heads || cache.hd_pad != self.geo.hd_pad {
            return Err(Error::Shape {
                op: OP,
                msg: format!(
                    "the KV cache is for {} layers of {} heads x {} but the model has {} layers of {} x {}",
                    cache.k.len(),
                    cache.heads,
                    cache.hd_pad,
                    self.blocks.len(),
                    self.geo.heads,
                    self.geo.hd_pad
                ),
            });
        }
        let t = match pass {
            Pass::Host(tokens) => tokens.len(),
            Pass::Device(_) => 1,
        };
        let rows = match logits.shape() {
            &[r, v] if (r == t || r == 1) && v == self.geo.vocab => r,
            other => {
                return Err(Error::Shape {
                    op: OP,
                    msg: format!(
                        "logits must be [{t}, {}] (every new position) or [1, {}] (the last one), got {other:?}",
                        self.geo.vocab, self.geo.vocab
                    ),
                })
            }
        };
        let max_len = cache.max_len;
        // p: the host's position of row 0; end: the keys attention sees (the
        // cache's capacity when the counters say how many are filled).
        let (p, end, pos, keys) = match pass {
            Pass::Host(_) => {
                let p = cache.len;
                let end = p.checked_add(t).filter(|&e| e <= max_len).ok_or_else(|| Error::InvalidArgument {
                    op: OP,
                    msg: format!("{t} new tokens after {p} cached positions pass the KV cache's max_len {max_len}"),
                })?;
                (p, end, None, None)
            }
            Pass::Device(step) => (
                0,
                max_len,
                Some(DevCounter { addr: step + STEP_POS, max: max_len - 1 }),
                Some(DevCounter { addr: step + STEP_KEYS, max: max_len }),
            ),
        };
        let g = self.geo;
        let (d, h, hd, hp) = (g.d, g.heads, g.hd, g.hd_pad);
        let row = g.cache_row();
        let dev = &self.dev;
        self.ensure_scratch(cache, t)?;
        let KvCache { k: k_cache, v: v_cache, scratch, .. } = cache;
        let Some(Scratch { rows: cap, x, hb, q, ctx, tmp, kv, lse, pad, ws, .. }) = scratch.as_mut() else {
            return Err(Error::InvalidArgument { op: OP, msg: "internal: no forward scratch".into() });
        };
        let cap = *cap;
        let [kt, vt] = kv;

        match pass {
            Pass::Host(tokens) => embedding_into(dev, &self.embedding.view(), tokens, &mut rows_of_mut(x, t)?)?,
            // SAFETY: the step buffer holds the id (a u32 the caller checked < vocab)
            // at its start, alive while the captured step can run (DecodeGraph).
            Pass::Device(step) => unsafe { embedding_at(dev, &self.embedding.view(), step, &mut rows_of_mut(x, t)?)? },
        }
        let attn_opts = AttnOptions { causal: true, scale: Some(1.0 / (hd as f32).sqrt()), num_splits: None };
        let [sq, sk, sv, sp, sf] = Slot::ALL.map(Slot::index);
        let rope_args = RotaryArgs { heads: h, head_dim: hd, rot_dim: g.rot_dim, base: g.base, pos_offset: p };
        let rope = |x: &mut ViewMut<'_, T>| rotary_apply_at(dev, x, &rope_args, false, pos);
        let ln = |x: &Tensor<T>, y: &mut Tensor<T>| {
            layer_norm_into(
                dev,
                &LayerNormArgs { x: rows_of(x, t)?, weight: None, bias: None, eps: g.eps },
                &mut rows_of_mut(y, t)?,
            )
        };
        // Padded q and context: [1, t, H, hd_pad] at the start of [cap · H · hd_pad].
        let q_shape = [1, t, h, hp];
        let q_strides = [t * row, row, hp, 1];
        // [t, H, hd] blocks of a [t, d] buffer and of the padded layouts.
        let heads_of = [t, h, hd];
        fn unpadded<'b, T: DType>(b: &'b Tensor<T>, heads_of: &[usize; 3], d: usize) -> Result<View<'b, T>> {
            b.strided(0, heads_of, &[d, heads_of[2], 1])
        }
        let kv_shape = [1, end, h, hp];
        let kv_strides = [max_len * row, row, hp, 1];

        for (l, blk) in self.blocks.iter().enumerate() {
            let (kc, vc) = (&mut k_cache[l], &mut v_cache[l]);
            ln(x, hb)?;
            let hv = rows_of(hb, t)?;
            blk[sq].forward_into(&hv, &mut rows_of_mut(q, t)?, Some(&mut *ws))?;
            rope(&mut rows_of_mut(q, t)?)?;
            blk[sk].forward_into(&hv, &mut rows_of_mut(kt, t)?, Some(&mut *ws))?;
            rope(&mut rows_of_mut(kt, t)?)?;
            blk[sv].forward_into(&hv, &mut rows_of_mut(vt, t)?, Some(&mut *ws))?;
            // k and v join the cache at row p (+ the position counter), padded.
            head_copy(
                dev,
                &mut [
                    (unpadded(kt, &heads_of, d)?, kc.strided_mut(0, &[max_len, h, hd], &[row, hp, 1])?),
                    (unpadded(vt, &heads_of, d)?, vc.strided_mut(0, &[max_len, h, hd], &[row, hp, 1])?),
                ],
                p,
                pos,
            )?;
            let k4 = kc.strided(0, &kv_shape, &kv_strides)?;
            let v4 = vc.strided(0, &kv_shape, &kv_strides)?;
            let mut lse_v = lse.strided_mut(0, &[1, h, t], &[h * cap, cap, 1])?;
            match pad {
                None => {
                    let q4 = q.strided(0, &q_shape, &q_strides)?;
                    let mut o4 = ctx.strided_mut(0, &q_shape, &q_strides)?;
                    let args = AttnArgs { q: q4, k: k4, v: v4, opts: attn_opts };
                    attention_into_at(dev, &args, &mut o4, &mut lse_v, Some(&mut *ws), keys)?;
                }
                Some([qp, cp]) => {
                    head_copy(
                        dev,
                        &mut [(unpadded(q, &heads_of, d)?, qp.strided_mut(0, &heads_of, &[row, hp, 1])?)],
                        0,
                        None,
                    )?;
                    let q4 = qp.strided(0, &q_shape, &q_strides)?;
                    let mut o4 = cp.strided_mut(0, &q_shape, &q_strides)?;
                    let args = AttnArgs { q: q4, k: k4, v: v4, opts: attn_opts };
                    attention_into_at(dev, &args, &mut o4, &mut lse_v, Some(&mut *ws), keys)?;
                    drop(o4);
                    let src = cp.strided(0, &heads_of, &[row, hp, 1])?;
                    head_copy(dev, &mut [(src, ctx.strided_mut(0, &heads_of, &[d, hd, 1])?)], 0, None)?;
                }
            }
            blk[sp].forward_into(&rows_of(ctx, t)?, &mut rows_of_mut(tmp, t)?, Some(&mut *ws))?;
            add_assign(dev, &mut rows_of_mut(x, t)?, &rows_of(tmp, t)?)?;
            ln(x, hb)?;
            blk[sf].forward_into(&rows_of(hb, t)?, &mut rows_of_mut(tmp, t)?, Some(&mut *ws))?;
            add_assign(dev, &mut rows_of_mut(x, t)?, &rows_of(tmp, t)?)?;
        }
        layer_norm_into(
            dev,
            &LayerNormArgs {
                x: rows_of(x, t)?,
                weight: Some(self.norm_weight.view()),
                bias: Some(self.norm_bias.view()),
                eps: g.eps,
            },
            &mut rows_of_mut(hb, t)?,
        )?;
        let hv = hb.strided((t - rows) * d, &[rows, d], &[d, 1])?;
        linear_into(dev, &hv, &self.embedding.view(), logits)?;
        if let Pass::Host(_) = pass {
            cache.len = end;
        }
        Ok(())
    }

    /// Makes or enlarges the cache's scratch for a pass of `t` tokens: activations
    /// of at least `t` rows, and a workspace for every Pattention at `t` rows and
    /// at one row, and for the attention of `t` query rows or one against up to
    /// `max_len` positions (so decode steps after this pass fit). The sizes met
    /// are remembered per (t, token counts), so a repeated pass only compares.
    fn ensure_scratch(&self, cache: &mut KvCache<T>, t: usize) -> Result<()> {
        let g = self.geo;
        let dev = &self.dev;
        let mut ns = [0usize; 5];
        if let Some(b) = self.blocks.first() {
            for slot in Slot::ALL {
                ns[slot.index()] = b[slot.index()].n();
            }
        }
        // Activations of another model's width (a cache shared between models of
        // equal heads and padded head dim) are remade.
        let acts_fit = |s: &Scratch<T>| s.rows >= t && s.x.shape()[1] == g.d && s.pad.is_some() == g.padded();
        if cache.scratch.as_ref().is_some_and(|s| acts_fit(s) && s.sized.contains(&(t, ns))) {
            return Ok(());
        }
        let rows = cache.scratch.as_ref().map_or(0, |s| s.rows).max(t);
        let mut ws_bytes = 0;
        for r in [t, 1] {
            for &n in &ns {
                ws_bytes = ws_bytes.max(pattention_workspace_bytes::<T>(r, n, g.d)?);
            }
            ws_bytes = ws_bytes.max(workspace_bytes_bound::<T>(dev, 1, r, cache.max_len, g.heads, g.hd_pad)?);
        }
        let (old_acts, old_ws) = match cache.scratch.take() {
            Some(s) if acts_fit(&s) => (Some(s), None),
            Some(s) => (None, Some(s.ws)),
            None => (None, None),
        };
        // Keep the activations if they fit, else the workspace if it is large enough.
        let mut s = match old_acts {
            Some(s) => s,
            None => {
                let (d, h, hp) = (g.d, g.heads, g.hd_pad);
                let act = || dev.output::<T>(&[rows, d]);
                let pad = if g.padded() {
                    // q's padding columns must be zero: the copies write only the head's dims.
                    Some([dev.zeros::<T>(&[rows * h * hp])?, dev.output::<T>(&[rows * h * hp])?])
                } else {
                    None
                };
                let ws = match old_ws {
                    Some(w) if w.bytes() >= ws_bytes => w,
                    _ => Workspace::new(dev, ws_bytes)?,
                };
                Scratch {
                    rows,
                    x: act()?,
                    hb: act()?,
                    q: act()?,
                    ctx: act()?,
                    tmp: act()?,
                    kv: [act()?, act()?],
                    lse: dev.output::<f32>(&[h * rows])?,
                    pad,
                    ws,
                    sized: Vec::new(),
                }
            }
        };
        if s.ws.bytes() < ws_bytes {
            s.ws = Workspace::new(dev, ws_bytes)?;
            s.sized.clear();
        }
        if s.sized.len() >= 16 {
            s.sized.clear();
        }
        s.sized.push((t, ns));
        cache.scratch = Some(s);
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

/// Index of the largest value (the first on ties); None if any value is not finite.
fn argmax(v: &[f32]) -> Option<u32> {
    if v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    u32::try_from(best).ok()
}

/// A draw from softmax(v / t); None if any value is not finite.
fn sample_temperature(v: &[f32], t: f32, rng: &mut SplitMix64) -> Option<u32> {
    if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = v.iter().map(|&x| ((f64::from(x) - f64::from(m)) / f64::from(t)).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut u = rng.uniform() * total;
    for (i, &wi) in w.iter().enumerate() {
        if u < wi {
            return u32::try_from(i).ok();
        }
        u -= wi;
    }
    // Rounding left u just past the last weight: the last token with weight > 0.
    w.iter().rposition(|&x| x > 0.0).and_then(|i| u32::try_from(i).ok())
}

/// SplitMix64 (Steele et al.): the sampler's small, seedable generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_helpers() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, -1.0]), Some(1));
        assert_eq!(argmax(&[0.0, f32::NAN]), None);
        let mut r = SplitMix64(7);
        // A very low temperature is greedy.
        assert_eq!(sample_temperature(&[0.0, 5.0, 1.0], 1e-3, &mut r), Some(1));
        // Draws follow the weights roughly.
        let mut counts = [0usize; 2];
        for _ in 0..4000 {
            counts[sample_temperature(&[0.0, (3.0f32).ln()], 1.0, &mut r).unwrap() as usize] += 1;
        }
        let frac = counts[1] as f64 / 4000.0;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
    }

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
