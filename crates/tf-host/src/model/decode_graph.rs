//! One decode step captured once and replayed for every token: a CUDA graph
//! on a GPU (one launch call per token instead of 3 + 29 a layer at 354m's
//! shapes), the recorded launches on the emulator.
//!
//! A replay runs the captured launches with the params they were captured
//! with, so nothing in them may depend on the step: the token id, its position
//! and the number of keys attention sees are read by the kernels from a step
//! buffer of the cache, which [`DecodeGraph::step`] writes before each replay
//! (embedding: the id; rotary: the position; the KV-cache append: the row;
//! attention: the key count, with split-KV chosen for the cache's capacity).
//! Everything else (activations, workspaces, logits) is allocated before the
//! capture, and the graph borrows the model and the cache, so neither can be
//! grown, reallocated or used by another pass while the graph lives.

use super::{KvCache, Pass, Tokenformer, STEP_BYTES, STEP_KEYS, STEP_POS};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::linear::linear_into;
use crate::tensor::Tensor;
use crate::workspace::Workspace;

/// A decode step of a [`Tokenformer`] captured for its [`KvCache`] (see
/// [`Tokenformer::capture_decode`]): each [`step`](Self::step) appends one token
/// and returns its logits, with one replay of the captured launches.
pub struct DecodeGraph<'a, T: DType> {
    model: &'a Tokenformer<T>,
    cache: &'a mut KvCache<T>,
    logits: Tensor<T>,
    graph: Graph,
    launches: usize,
}

impl<T: DType> std::fmt::Debug for DecodeGraph<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DecodeGraph<{}>({} launches a step, {:?})", T::NAME, self.launches, self.cache)
    }
}

impl<T: DType> Tokenformer<T> {
    /// Captures one decode step (one token through the whole model, appended to
    /// `cache`) for replay by [`DecodeGraph::step`]: a CUDA graph on a GPU, the
    /// recorded launches on the emulator. The cache may already hold positions
    /// (a prompt run by [`forward_cached_into`](Self::forward_cached_into));
    /// the steps continue from its length. Allocates the step's buffers first;
    /// the steps allocate nothing.
    ///
    /// The logits are those of [`forward_cached_into`](Self::forward_cached_into)
    /// with one token, except that attention's split-KV (f16 and bf16) is
    /// chosen once, for the cache's capacity, instead of for each length: the
    /// same values up to the rounding of the split combine.
    ///
    /// While it captures, the device must not be used by another thread: on
    /// CUDA whatever reaches the stream joins the graph, and the capture
    /// refuses allocations and copies from any thread.
    ///
    /// ```
    /// use tf_host::{Device, Tokenformer, TokenformerConfig};
    ///
    /// # fn main() -> tf_host::Result<()> {
    /// let dev = Device::emulator();
    /// let cfg = TokenformerConfig::by_name("tiny")?;
    /// let model = Tokenformer::<f32>::new(&dev, &cfg, 7)?;
    /// let mut cache = model.new_cache(8)?;
    /// let mut last = dev.zeros::<f32>(&[1, cfg.vocab])?;
    /// model.forward_cached_into(&[1, 2, 3], &mut cache, &mut last.view_mut())?; // the prompt
    /// let mut graph = model.capture_decode(&mut cache)?;
    /// let before = dev.allocations();
    /// let logits = graph.step(4)?.to_vec()?; // position 3
    /// graph.step(5)?; // position 4
    /// assert_eq!(dev.allocations(), before, "steps allocate nothing");
    /// assert_eq!(graph.cache_len(), 5);
    /// drop(graph);
    /// // The same logits as a pass over the four tokens (f32: no split-KV).
    /// let all = model.forward(&[1, 2, 3, 4])?.to_vec()?;
    /// assert_eq!(logits, all[3 * cfg.vocab..].to_vec());
    /// # Ok(()) }
    /// ```
    pub fn capture_decode<'a>(&'a self, cache: &'a mut KvCache<T>) -> Result<DecodeGraph<'a, T>> {
        const OP: &str = "Tokenformer::capture_decode";
        if i32::try_from(cache.max_len).is_err() {
            return Err(Error::SizeOverflow {
                op: OP,
                msg: format!("a cache of {} positions: a decode graph counts them in 32 bits", cache.max_len),
            });
        }
        if !cache.dev.same(&self.dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
        // Everything the step uses exists before the capture: the capture refuses
        // allocations and uploads.
        self.ensure_scratch(cache, 1)?;
        if cache.step.is_none() {
            cache.step = Some(Workspace::new(&self.dev, STEP_BYTES)?);
        }
        let mut logits = self.dev.output::<T>(&[1, self.geo.vocab])?;
        if self.dev.is_cuda() {
            // The logits product runs on cuBLAS, whose handle and lazily made
            // resources must exist before the capture: one product first.
            let x = self.dev.zeros::<T>(&[1, self.geo.d])?;
            linear_into(&self.dev, &x.view(), &self.embedding.view(), &mut logits.view_mut())?;
        }
        let step = match cache.step.as_mut() {
            Some(w) => w.ptr_mut().addr,
            None => return Err(Error::InvalidArgument { op: OP, msg: "internal: no step buffer".into() }),
        };
        let (graph, (), launches) = {
            let cache = &mut *cache;
            let logits = &mut logits;
            self.dev.capture(|| self.pass(Pass::Device(step), cache, &mut logits.view_mut()))?
        };
        Ok(DecodeGraph { model: self, cache, logits, graph, launches })
    }
}

impl<T: DType> DecodeGraph<'_, T> {
    /// Runs `token` at the next position of the cache and returns its logits
    /// `[1, vocab]` (the graph's buffer, overwritten by the next step). An id
    /// `>= vocab` or a full cache is an error, and then nothing runs and the
    /// cache is unchanged.
    pub fn step(&mut self, token: u32) -> Result<&Tensor<T>> {
        const OP: &str = "DecodeGraph::step";
        self.model.check_tokens(OP, &[token])?;
        let len = self.cache.len;
        if len >= self.cache.max_len {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("the KV cache is full: {len} of {} positions", self.cache.max_len),
            });
        }
        // i32: capture_decode checked max_len
        let mut raw = [0u8; STEP_BYTES];
        raw[..4].copy_from_slice(&token.to_le_bytes());
        raw[STEP_POS as usize..][..4].copy_from_slice(&(len as i32).to_le_bytes());
        raw[STEP_KEYS as usize..][..4].copy_from_slice(&(len as i32 + 1).to_le_bytes());
        match self.cache.step.as_mut() {
            Some(w) => w.write_bytes(&raw)?,
            None => return Err(Error::InvalidArgument { op: OP, msg: "internal: no step buffer".into() }),
        }
        // SAFETY: the captured launches address the model's parameters (borrowed
        // shared by this graph: no growth can free them), the cache's K/V
        // tensors, scratch and step buffer (borrowed mutably by this graph: no
        // other pass can enlarge or replace them) and the graph's logits; the
        // step buffer now holds an id < vocab, the position len < max_len and the
        // key count len + 1 <= max_len, the values the kernels read.
        unsafe { self.graph.launch() }?;
        self.cache.len = len + 1;
        Ok(&self.logits)
    }

    /// The logits of the last step (unwritten before the first).
    pub fn logits(&self) -> &Tensor<T> {
        &self.logits
    }

    /// Positions the cache holds.
    pub fn cache_len(&self) -> usize {
        self.cache.len
    }

    /// [`KvCache::truncate`] of the graph's cache: the next step runs at
    /// position `len`.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        self.cache.truncate(len)
    }

    /// Kernel launches a step replays.
    pub fn launches(&self) -> usize {
        self.launches
    }
}
