//! The fused AdamW step of training (kernels/adamw.cu): [`AdamW`] owns the f32
//! master weights and moments of a list of parameter tensors and updates all of
//! them in three launches per step (the global gradient norm in two
//! deterministic passes, then one fused update), with no host sync in between.
//!
//! The math is tf-ref's [`adamw_step`](tf_ref::adamw_step) in f32: global-norm
//! clipping, decoupled weight decay on the value before the update, bias-corrected
//! moments. The step's lr and bias corrections are computed here in f64 and
//! rounded once; the clip factor stays on the device.
//!
//! Gradients are f32 for every parameter type: the model's backward produces f32
//! gradients, and rounding them to f16 first would flush those below 6e-8 to zero.
//! [`AdamW::step_scaled`] multiplies every gradient by a factor before the norm,
//! so a sum of `B` windows' gradients becomes their mean inside the step.

use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i64, to_u32, Error, Result};
use crate::ops::grow::{grow_batch, GrowInit, GrowItem};
use crate::tensor::{Tensor, View, ViewMut};

pub use tf_ref::AdamWConfig;

const OP: &str = "adamw";
/// Threads per block of every adamw kernel.
const THREADS: u32 = sys::TF_ADAMW_THREADS;
/// Elements per chunk (one CTA of the chunked kernels).
const CHUNK: usize = sys::TF_ADAMW_CHUNK as usize;
/// Most chunks of one launch (gridDim.x kept within i32).
const MAX_CHUNKS: usize = i32::MAX as usize;

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by the adamw kernels.
unsafe impl KernelParams for sys::tf_adamw_params {}

/// What one [`AdamW::step`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// The step just taken, 1-based (the `t` of the bias corrections).
    pub step: u64,
    /// The global gradient norm before clipping; `None` when the optimizer does
    /// not read it back ([`AdamW::set_read_norm`]).
    pub grad_norm: Option<f32>,
    /// The factor the gradients were multiplied by (1 when not clipped); `None`
    /// as `grad_norm`.
    pub clip_scale: Option<f32>,
}

/// The state of one tensor: f32 master weights and moments, kept `[rows, inner]`.
struct Slot {
    shape: Vec<usize>,
    decay: bool,
    master: Tensor<f32>,
    m: Tensor<f32>,
    v: Tensor<f32>,
}

/// An AdamW optimizer over a fixed list of parameter tensors of storage type `T`
/// (f32, f16 or bf16): the parameters are a copy of the f32 master weights it
/// owns, rounded to `T` after every step; gradients come in f32.
pub struct AdamW<T: DType> {
    dev: Device,
    cfg: AdamWConfig,
    steps: u64,
    read_norm: bool,
    slots: Vec<Slot>,
    /// Per-chunk sums of squares (pass 1), at least one element.
    partial: Tensor<f32>,
    /// `[N, c]`: the global norm and the clip factor of the last step.
    norm: Tensor<f32>,
    _t: std::marker::PhantomData<T>,
}

impl<T: DType> std::fmt::Debug for AdamW<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdamW<{}>({} tensors, {} steps) on {:?}", T::NAME, self.slots.len(), self.steps, self.dev)
    }
}

/// True when the view's elements are one dense row-major block.
fn dense(shape: &[usize], strides: &[usize]) -> bool {
    let mut expect = 1usize;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(n);
    }
    true
}

/// `[rows, inner]` of a shape (a scalar is `[1, 1]`).
fn rows_inner(shape: &[usize]) -> (usize, usize) {
    match shape.split_first() {
        Some((&r, rest)) => (r, rest.iter().product()),
        None => (1, 1),
    }
}

fn check_view(dev: &Device, what: &str, i: usize, shape: &[usize], strides: &[usize], vdev: &Device) -> Result<()> {
    if !vdev.same(dev) {
        return Err(Error::DeviceMismatch { op: OP });
    }
    if !dense(shape, strides) {
        return Err(Error::Shape {
            op: OP,
            msg: format!("{what} {i} must be contiguous, got shape {shape:?} with strides {strides:?}"),
        });
    }
    Ok(())
}

/// What [`plan`] decided for a list of tensor sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdamWPlan {
    /// Index of each tensor's first chunk (empty tensors take none).
    pub chunk_start: Vec<usize>,
    /// Chunks of all tensors: the CTAs of `adamw_norm_partial` and `adamw_update`.
    pub chunks: usize,
    /// Geometry of the two chunked kernels (`chunks` CTAs of 256 threads).
    pub chunked: Geometry,
    /// Geometry of `adamw_norm_final` (one CTA).
    pub single: Geometry,
}

/// The chunking and launch geometry of a step over tensors of `numels` elements.
/// Errors: more chunks than a launch takes.
pub fn plan(numels: &[usize]) -> Result<AdamWPlan> {
    let mut chunk_start = Vec::with_capacity(numels.len());
    let mut chunks = 0usize;
    for &n in numels {
        chunk_start.push(chunks);
        chunks = chunks.saturating_add(n.div_ceil(CHUNK));
    }
    if chunks > MAX_CHUNKS {
        return Err(Error::SizeOverflow { op: OP, msg: format!("{chunks} chunks of {CHUNK} exceed {MAX_CHUNKS}") });
    }
    let block = [THREADS, 1, 1];
    Ok(AdamWPlan {
        chunk_start,
        chunks,
        chunked: Geometry { grid: [to_u32(OP, "chunks", chunks.max(1))?, 1, 1], block, smem: 0 },
        single: Geometry { grid: [1, 1, 1], block, smem: 0 },
    })
}

impl<T: DType> AdamW<T> {
    /// An optimizer for `params` (each contiguous, on `dev`) at step 0: the master
    /// weights are the parameters' values in f32, the moments are zeros; tensor
    /// `i` is decayed iff `decay[i]`. Errors: an invalid `cfg`, `decay` not one
    /// flag per tensor, a tensor on another device or not contiguous.
    pub fn new(dev: &Device, params: &[View<'_, T>], decay: &[bool], cfg: AdamWConfig) -> Result<Self> {
        Self::build(dev, params, decay, cfg, |p| p.to_f32_vec())
    }

    /// An optimizer at step 0 whose master weights are `master` (f32, each
    /// contiguous, shaped as its parameter), e.g. the f32 values a 16-bit model
    /// was rounded from; the moments are zeros. The parameters (of type `T`,
    /// shaped as `master`) are only written by [`step`](Self::step). Errors: as
    /// [`new`](Self::new).
    pub fn with_master(dev: &Device, master: &[View<'_, f32>], decay: &[bool], cfg: AdamWConfig) -> Result<Self> {
        Self::build(dev, master, decay, cfg, |p| p.to_vec())
    }

    fn build<U: DType>(
        dev: &Device,
        init: &[View<'_, U>],
        decay: &[bool],
        cfg: AdamWConfig,
        values: impl Fn(&View<'_, U>) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        cfg.validate()?;
        if decay.len() != init.len() {
            return Err(Error::Shape {
                op: OP,
                msg: format!("{} tensors but {} decay flags", init.len(), decay.len()),
            });
        }
        let mut slots = Vec::with_capacity(init.len());
        for (i, (p, &d)) in init.iter().zip(decay).enumerate() {
            check_view(dev, "parameter", i, p.shape(), p.strides(), p.device())?;
            let (rows, inner) = rows_inner(p.shape());
            slots.push(Slot {
                shape: p.shape().to_vec(),
                decay: d,
                master: dev.upload_f32(&values(p)?, &[rows, inner])?,
                m: dev.zeros(&[rows, inner])?,
                v: dev.zeros(&[rows, inner])?,
            });
        }
        let chunks = plan(&slots.iter().map(|s| s.master.len()).collect::<Vec<_>>())?.chunks;
        Ok(AdamW {
            dev: dev.clone(),
            cfg,
            steps: 0,
            read_norm: true,
            partial: dev.zeros(&[chunks.max(1)])?,
            norm: dev.zeros(&[2])?,
            slots,
            _t: std::marker::PhantomData,
        })
    }

    /// The hyper-parameters (`lr` there is only the schedule's peak: each step
    /// takes its own).
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Whether [`step`](Self::step) reads the gradient norm back (the default):
    /// that waits for the step's kernels, and refuses a non-finite norm as an
    /// error with the step not counted. Off, `step` queues the launches and
    /// returns at once; [`last_norm`](Self::last_norm) reads the norm later. A
    /// step with a non-finite gradient norm updates nothing either way, but
    /// unread it still counts in the bias corrections of the next steps.
    pub fn set_read_norm(&mut self, on: bool) {
        self.read_norm = on;
    }

    /// The f32 master weights of tensor `i`, `[rows, elements per row]`.
    pub fn master(&self, i: usize) -> Option<&Tensor<f32>> {
        self.slots.get(i).map(|s| &s.master)
    }

    /// The first and second moments of tensor `i`, shaped as [`master`](Self::master).
    pub fn moments(&self, i: usize) -> Option<(&Tensor<f32>, &Tensor<f32>)> {
        self.slots.get(i).map(|s| (&s.m, &s.v))
    }

    /// Replaces the moments of every tensor (f32, shaped as its master weights)
    /// and the step count, e.g. to resume a checkpointed run; the master weights
    /// stay. Errors, with nothing changed: not one moment per tensor, a shape or
    /// device mismatch.
    pub fn set_moments(&mut self, m: &[View<'_, f32>], v: &[View<'_, f32>], steps: u64) -> Result<()> {
        let n = self.slots.len();
        if m.len() != n || v.len() != n {
            return Err(Error::Shape {
                op: OP,
                msg: format!("the optimizer holds {n} tensors but got {} and {} moments", m.len(), v.len()),
            });
        }
        for (i, ((a, b), s)) in m.iter().zip(v).zip(&self.slots).enumerate() {
            for (what, x) in [("first moment", a), ("second moment", b)] {
                check_view(&self.dev, what, i, x.shape(), x.strides(), x.device())?;
                if x.shape() != s.shape.as_slice() {
                    return Err(Error::Shape {
                        op: OP,
                        msg: format!("tensor {i} is {:?} but its {what} {:?}", s.shape, x.shape()),
                    });
                }
            }
        }
        let mut values = Vec::with_capacity(n);
        for (a, b) in m.iter().zip(v) {
            values.push((a.to_vec()?, b.to_vec()?));
        }
        for (s, (a, b)) in self.slots.iter_mut().zip(values) {
            s.m.write(&a)?;
            s.v.write(&b)?;
        }
        self.steps = steps;
        Ok(())
    }

    /// The gradient norm and clip factor of the last step (waits for it).
    pub fn last_norm(&self) -> Result<(f32, f32)> {
        let v = self.norm.to_vec()?;
        Ok((v[0], v[1]))
    }

    /// One AdamW step with learning rate `lr` (e.g. [`AdamWConfig::lr_at`]):
    /// `params[i]` (contiguous, shaped as at [`new`](Self::new) or the last
    /// [`grow_rows`](Self::grow_rows)) receives the rounded master weights updated
    /// with the f32 `grads[i]` (same shape). Errors, with nothing launched: `lr`
    /// not finite and ≥ 0, lists not one entry per tensor, a shape, device or
    /// layout mismatch; with the norm read back, a non-finite gradient norm
    /// (nothing was updated, the step is not counted, as tf-ref refuses such a
    /// step).
    pub fn step(&mut self, params: &mut [ViewMut<'_, T>], grads: &[View<'_, f32>], lr: f64) -> Result<StepInfo> {
        self.step_scaled(params, grads, lr, 1.0)
    }

    /// [`step`](Self::step) with every gradient multiplied by `grad_scale` (in
    /// f32) before anything else, the norm and the clipping included: with
    /// `grad_scale = 1/B` and the sum of `B` gradients, the step of their mean
    /// without a separate pass over them. The reported norm is that of the
    /// scaled gradients. Errors: as `step`, and `grad_scale` not finite and > 0.
    pub fn step_scaled(
        &mut self,
        params: &mut [ViewMut<'_, T>],
        grads: &[View<'_, f32>],
        lr: f64,
        grad_scale: f32,
    ) -> Result<StepInfo> {
        if !(grad_scale.is_finite() && grad_scale > 0.0) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("grad_scale must be finite and > 0, got {grad_scale}"),
            });
        }
        self.check_step(params, grads, lr)?;
        let t = self.steps + 1;
        let cfg = &self.cfg;
        // Step counts beyond i32 leave both corrections at 1 anyway.
        let ti = i32::try_from(t).unwrap_or(i32::MAX);
        let (bc1, bc2) = (1.0 - cfg.beta1.powi(ti), 1.0 - cfg.beta2.powi(ti));
        let mut kp = sys::tf_adamw_params {
            descs: 0,
            partial: 0,
            norm: 0,
            num_descs: 0,
            num_chunks: 0,
            grad_scale,
            max_norm: cfg.max_grad_norm.map_or(0.0, |m| m as f32),
            lr: lr as f32,
            lr_wd: (lr * cfg.weight_decay) as f32,
            beta1: cfg.beta1 as f32,
            one_minus_beta1: (1.0 - cfg.beta1) as f32,
            beta2: cfg.beta2 as f32,
            one_minus_beta2: (1.0 - cfg.beta2) as f32,
            inv_bc1: (1.0 / bc1) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            eps: cfg.eps as f32,
        };
        let plan = plan(&self.slots.iter().map(|s| s.master.len()).collect::<Vec<_>>())?;
        let decay: Vec<bool> = self.slots.iter().map(|s| s.decay).collect();
        let mut states: Vec<[ViewMut<'_, f32>; 3]> = self
            .slots
            .iter_mut()
            .map(|s| {
                let Slot { master, m, v, .. } = s;
                [master.view_mut(), m.view_mut(), v.view_mut()]
            })
            .collect();
        let mut guards = Vec::new();
        let mut descs = Vec::with_capacity(params.len());
        for ((((p, g), st), d), &start) in
            params.iter_mut().zip(grads).zip(states.iter_mut()).zip(decay).zip(&plan.chunk_start)
        {
            let numel = p.shape().iter().product::<usize>();
            if numel == 0 {
                continue;
            }
            let [master, m, v] = st;
            let (pp, gp, mp, m1, v1) = (p.ptr_mut(), g.ptr(), master.ptr_mut(), m.ptr_mut(), v.ptr_mut());
            descs.push(sys::tf_adamw_desc {
                param: pp.addr,
                grad: gp.addr,
                master: mp.addr,
                m: m1.addr,
                v: v1.addr,
                numel: to_i64(OP, "elements", numel)?,
                chunk_start: to_i64(OP, "chunks", start)?,
                dtype: T::CODE as i32,
                decay: i32::from(d),
            });
            guards.extend([pp, gp, mp, m1, v1]);
        }
        self.steps = t;
        if descs.is_empty() {
            self.norm.write(&[0.0, 1.0])?;
        } else {
            let (chunked, single) = (&plan.chunked, &plan.single);
            let mut partial = self.partial.view_mut();
            let mut norm = self.norm.view_mut();
            let (pa, no) = (partial.ptr_mut(), norm.ptr_mut());
            kp.partial = pa.addr;
            kp.norm = no.addr;
            kp.num_descs = to_i64(OP, "descriptors", descs.len())?;
            kp.num_chunks = to_i64(OP, "chunks", plan.chunks)?;
            let dev = &self.dev;
            dev.with_table(&descs, |table| {
                kp.descs = table;
                // SAFETY: check_step verified that every parameter and gradient is a
                // dense view of numel elements on this device, shaped as its master
                // and moments (dense f32 tensors of the same numel, owned here);
                // chunk_start is the running sum of ceil(numel / CHUNK) and partial
                // holds at least `plan.chunks` floats (grow_rows keeps it so), norm two;
                // the table stays locked until the launches are done (emulator) or
                // queued ahead of any later upload (CUDA); every borrow and guard
                // outlives these calls.
                unsafe {
                    dev.launch(OP, "adamw_norm_partial", chunked, &kp)?;
                    dev.launch(OP, "adamw_norm_final", single, &kp)?;
                    dev.launch(OP, "adamw_update", chunked, &kp)
                }
            })?;
            drop((pa, no));
        }
        drop(guards);
        if !self.read_norm {
            return Ok(StepInfo { step: t, grad_norm: None, clip_scale: None });
        }
        let (n, c) = self.last_norm()?;
        if !n.is_finite() {
            self.steps -= 1;
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("the global gradient norm is {n}: step {t} skipped, nothing was updated"),
            });
        }
        Ok(StepInfo { step: t, grad_norm: Some(n), clip_scale: Some(c) })
    }

    fn check_step(&self, params: &[ViewMut<'_, T>], grads: &[View<'_, f32>], lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::InvalidArgument { op: OP, msg: format!("lr must be finite and >= 0, got {lr}") });
        }
        let n = self.slots.len();
        if params.len() != n || grads.len() != n {
            return Err(Error::Shape {
                op: OP,
                msg: format!(
                    "the optimizer holds {n} tensors but got {} parameters and {} gradients",
                    params.len(),
                    grads.len()
                ),
            });
        }
        for (i, ((p, g), s)) in params.iter().zip(grads).zip(&self.slots).enumerate() {
            check_view(&self.dev, "parameter", i, p.shape(), p.strides(), p.device())?;
            check_view(&self.dev, "gradient", i, g.shape(), g.strides(), g.device())?;
            if p.shape() != s.shape.as_slice() || g.shape() != s.shape.as_slice() {
                return Err(Error::Shape {
                    op: OP,
                    msg: format!(
                        "tensor {i} is {:?} in the optimizer but the parameter is {:?} and the gradient {:?}",
                        s.shape,
                        p.shape(),
                        g.shape()
                    ),
                });
            }
        }
        Ok(())
    }

    /// After growing parameter `index` along its first axis (e.g. with
    /// [`grow_batch`]), grows its state to match `grown` (the whole grown
    /// parameter, `[new_rows, ...]` with the old trailing dimensions): the kept
    /// master rows and moments stay, the new master rows are `grown`'s new rows in
    /// f32, the new moments are zeros. Errors: `index` out of range, `grown` on
    /// another device, not contiguous, with fewer rows or other trailing
    /// dimensions, or a 0-D tensor.
    pub fn grow_rows(&mut self, index: usize, grown: &View<'_, T>) -> Result<()> {
        let (rows_new, inner) = self.check_growth(index, grown.shape(), grown.strides(), grown.device())?;
        let rows_old = self.slots[index].master.shape()[0];
        if rows_new == rows_old {
            return Ok(());
        }
        let all = grown.to_f32_vec()?;
        let fresh = self.dev.upload_f32::<f32>(&all[rows_old * inner..], &[rows_new - rows_old, inner])?;
        self.grow_state(index, grown.shape(), GrowInit::Rows(fresh.view()))
    }

    /// [`grow_rows`](Self::grow_rows) with the new master rows made by `init`
    /// instead of read from the grown parameter: the tensor grows to `shape`
    /// (the old trailing dimensions, at least as many rows). With the
    /// parameter's own [`GrowInit`] (the same Philox seed, or zeros), the new
    /// master rows are the f32 values the parameter's new rows were rounded
    /// from, so a 16-bit model's master weights keep full f32 precision through
    /// a growth. Errors: `index` out of range, a shape that is not such a
    /// growth, `GrowInit::Rows` not `[new rows, inner]` or on another device.
    pub fn grow_rows_init(&mut self, index: usize, shape: &[usize], init: GrowInit<'_, f32>) -> Result<()> {
        let strides = dense_strides(shape);
        self.check_growth(index, shape, &strides, &self.dev.clone())?;
        self.grow_state(index, shape, init)
    }

    /// Checks a growth of tensor `index` to `shape`; its `[rows, inner]`.
    fn check_growth(&self, index: usize, shape: &[usize], strides: &[usize], dev: &Device) -> Result<(usize, usize)> {
        let n = self.slots.len();
        let Some(slot) = self.slots.get(index) else {
            return Err(Error::InvalidArgument { op: OP, msg: format!("tensor {index} of {n}") });
        };
        check_view(&self.dev, "grown parameter", index, shape, strides, dev)?;
        let old = &slot.shape;
        if old.is_empty() || shape.len() != old.len() || shape[1..] != old[1..] || shape[0] < old[0] {
            return Err(Error::Shape {
                op: OP,
                msg: format!("tensor {index} is {old:?}; it cannot grow along its first axis to {shape:?}"),
            });
        }
        Ok(rows_inner(shape))
    }

    /// Grows tensor `index`'s state to `shape` (checked): master rows from
    /// `init`, zero moments.
    fn grow_state(&mut self, index: usize, shape: &[usize], init: GrowInit<'_, f32>) -> Result<()> {
        let (rows_new, inner) = rows_inner(shape);
        let slot = &mut self.slots[index];
        let rows_old = slot.master.shape()[0];
        if rows_new == rows_old {
            return Ok(());
        }
        let mut master = self.dev.zeros::<f32>(&[rows_new, inner])?;
        let mut m = self.dev.zeros::<f32>(&[rows_new, inner])?;
        let mut v = self.dev.zeros::<f32>(&[rows_new, inner])?;
        let items = vec![
            GrowItem { src: Some(slot.master.view()), dst: master.view_mut(), rows_old, init },
            GrowItem { src: Some(slot.m.view()), dst: m.view_mut(), rows_old, init: GrowInit::Zeros },
            GrowItem { src: Some(slot.v.view()), dst: v.view_mut(), rows_old, init: GrowInit::Zeros },
        ];
        grow_batch(&self.dev, items)?;
        (slot.master, slot.m, slot.v) = (master, m, v);
        slot.shape = shape.to_vec();
        let chunks = plan(&self.slots.iter().map(|s| s.master.len()).collect::<Vec<_>>())?.chunks;
        if chunks > self.partial.len() {
            self.partial = self.dev.zeros(&[chunks])?;
        }
        Ok(())
    }
}

/// Row-major strides of a dense tensor of `shape`.
fn dense_strides(shape: &[usize]) -> Vec<usize> {
    let mut st = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1].saturating_mul(shape[i + 1]);
    }
    st
}
