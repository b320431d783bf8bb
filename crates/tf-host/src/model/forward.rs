//! The forward pass of a [`Tokenformer`]: the KV cache and the scratch it
//! keeps, and the pass itself, for token ids from the host or for one token
//! whose id and position the kernels read from device memory (a captured
//! decode step, [`super::DecodeGraph`]).

use super::Tokenformer;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::graph::DevCounter;
use crate::ops::attention::{attention_into_at, workspace_bytes_bound, AttnArgs, AttnOptions};
use crate::ops::block::{
    add_assign, embedding_at, embedding_into, layer_norm_into, rotary_apply_at, LayerNormArgs, RotaryArgs,
};
use crate::ops::head_copy::head_copy;
use crate::ops::linear::linear_into;
use crate::ops::pattention::pattention_workspace_bytes;
use crate::tensor::{Tensor, View, ViewMut};
use crate::workspace::Workspace;
use tf_ref::Slot;

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
    pub(super) dev: Device,
    pub(super) k: Vec<Tensor<T>>,
    pub(super) v: Vec<Tensor<T>>,
    pub(super) len: usize,
    pub(super) max_len: usize,
    pub(super) heads: usize,
    pub(super) hd_pad: usize,
    scratch: Option<Scratch<T>>,
    /// A decode graph's step buffer (token id, position, key count), made by
    /// the first capture.
    pub(super) step: Option<Workspace>,
}

/// The op name of the forward pass's errors.
const OP_FORWARD: &str = "Tokenformer::forward";

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

impl<T: DType> Tokenformer<T> {
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

    /// The forward pass over `tokens` at positions `cache.len()..`, appending to
    /// the cache; logits of every new position (`logits` `[t, vocab]`), or of the
    /// last one only (`[1, vocab]`). Activations and workspace are the cache's
    /// scratch, enlarged first if this pass needs more.
    pub(super) fn run(&self, tokens: &[u32], cache: &mut KvCache<T>, logits: &mut ViewMut<'_, T>) -> Result<()> {
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
    pub(super) fn ensure_scratch(&self, cache: &mut KvCache<T>, t: usize) -> Result<()> {
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
