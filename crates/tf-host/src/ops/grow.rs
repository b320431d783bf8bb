//! Row-append growth (kernels/grow.cu): copy the kept rows of many parameter
//! tensors into larger buffers and initialise the appended rows, in one launch.
//!
//! The pattern every op family follows: [`plan`] does ALL validation and the
//! launch geometry, the same for CUDA and the emulator; [`grow_batch`] only
//! gathers pointers and launches.

use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i64, to_u32, Error, Result};
use crate::tensor::{non_overlapping, View, ViewMut};

const OP: &str = "grow";
/// Threads per block of `grow_rows` (its `__launch_bounds__`).
const THREADS: u32 = 256;
/// Chunks each thread keeps in flight (`UNROLL` in grow.cu).
const UNROLL: u64 = 4;
/// Most descriptors one launch takes (gridDim.y limit); longer lists are split.
const MAX_DESCS_PER_LAUNCH: usize = 65535;

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by grow_rows.
unsafe impl KernelParams for sys::tf_grow_params {}

/// How appended rows are initialised.
#[derive(Clone)]
pub enum GrowInit<'a, T: DType> {
    /// Zeros.
    Zeros,
    /// These rows, `[rows_new - rows_old, cols]`.
    Rows(View<'a, T>),
    /// N(0, std) from the Philox stream of docs/design.md: element `r·cols + c` of the
    /// grown tensor gets the same value on every backend and in tf-ref.
    Normal {
        /// Standard deviation.
        std: f32,
        /// Philox key.
        seed: u64,
    },
}

/// One tensor to grow.
pub struct GrowItem<'a, T: DType> {
    /// The kept rows `[rows_old, cols]`, or None when `dst` already holds them
    /// (growth inside spare capacity: nothing is copied).
    pub src: Option<View<'a, T>>,
    /// The destination `[rows_new, cols]`.
    pub dst: ViewMut<'a, T>,
    /// Rows kept bit-for-bit.
    pub rows_old: usize,
    /// Initialisation of rows `[rows_old, rows_new)`.
    pub init: GrowInit<'a, T>,
}

/// What [`plan`] decided: descriptors (pointers filled at launch) and geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowPlan {
    /// One geometry per launch (lists longer than 65535 are split).
    pub launches: Vec<(std::ops::Range<usize>, Geometry)>,
}

/// Shapes of one item as `plan` sees them.
#[derive(Debug, Clone, Copy)]
pub struct GrowShape {
    /// Rows kept.
    pub rows_old: usize,
    /// Rows after growth.
    pub rows_new: usize,
    /// Elements per row.
    pub cols: usize,
}

/// Validates the items and computes the launch geometry.
pub fn plan<T: DType>(dev: &Device, items: &[GrowItem<'_, T>]) -> Result<GrowPlan> {
    let mut shapes = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        shapes.push(check_item(dev, i, it)?);
    }
    geometry(dev, &shapes)
}

fn check_item<T: DType>(dev: &Device, i: usize, it: &GrowItem<'_, T>) -> Result<GrowShape> {
    let shape_err = |msg: String| Error::Shape { op: OP, msg: format!("item {i}: {msg}") };
    if !it.dst.device().same(dev) {
        return Err(Error::DeviceMismatch { op: OP });
    }
    let &[rows_new, cols] = it.dst.shape() else {
        return Err(shape_err(format!("dst must be 2-D [rows_new, cols], got {:?}", it.dst.shape())));
    };
    if !it.dst.inner_contiguous() {
        return Err(shape_err(format!("dst rows must be contiguous, strides {:?}", it.dst.strides())));
    }
    if !non_overlapping(it.dst.shape(), it.dst.strides()) {
        return Err(shape_err(format!(
            "dst overlaps itself: strides {:?} for shape {:?} (a row stride must be at least the row length)",
            it.dst.strides(),
            it.dst.shape()
        )));
    }
    if it.rows_old > rows_new {
        return Err(shape_err(format!("rows_old = {} exceeds the destination's {rows_new} rows", it.rows_old)));
    }
    if let Some(src) = &it.src {
        if !src.device().same(dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
        if src.shape() != [it.rows_old, cols] {
            return Err(shape_err(format!(
                "src is {:?} but [rows_old, cols] = [{}, {cols}]",
                src.shape(),
                it.rows_old
            )));
        }
        if !src.inner_contiguous() {
            return Err(shape_err(format!("src rows must be contiguous, strides {:?}", src.strides())));
        }
    }
    match &it.init {
        GrowInit::Rows(r) => {
            if !r.device().same(dev) {
                return Err(Error::DeviceMismatch { op: OP });
            }
            if r.shape() != [rows_new - it.rows_old, cols] {
                return Err(shape_err(format!(
                    "init rows are {:?} but {} new rows of {cols} are needed",
                    r.shape(),
                    rows_new - it.rows_old
                )));
            }
            if !r.inner_contiguous() {
                return Err(shape_err(format!("init rows must be contiguous, strides {:?}", r.strides())));
            }
        }
        GrowInit::Normal { std, .. } => {
            if !std.is_finite() || *std < 0.0 {
                return Err(Error::InvalidArgument {
                    op: OP,
                    msg: format!("item {i}: std must be finite and >= 0, got {std}"),
                });
            }
        }
        GrowInit::Zeros => {}
    }
    // Everything the kernel indexes must fit its 64-bit signed arithmetic.
    let bytes = rows_new
        .checked_mul(cols)
        .and_then(|e| e.checked_mul(std::mem::size_of::<T>()))
        .ok_or_else(|| Error::SizeOverflow { op: OP, msg: format!("item {i}: [{rows_new}, {cols}] of {}", T::NAME) })?;
    to_i64(OP, "tensor bytes", bytes)?;
    Ok(GrowShape { rows_old: it.rows_old, rows_new, cols })
}

/// Launch geometry for a list of shapes: grid (blocks_x, descriptors), with
/// blocks_x sized by the largest tensor's 16-byte chunks and capped so the
/// whole grid stays near 8 blocks per SM.
pub fn geometry(dev: &Device, shapes: &[GrowShape]) -> Result<GrowPlan> {
    let mut launches = Vec::new();
    let mut start = 0;
    while start < shapes.len() {
        let end = (start + MAX_DESCS_PER_LAUNCH).min(shapes.len());
        let batch = &shapes[start..end];
        let max_chunks =
            batch.iter().map(|s| (s.rows_new as u64).saturating_mul(s.cols as u64).div_ceil(8)).max().unwrap_or(0);
        let per_block = u64::from(THREADS) * UNROLL;
        let want = max_chunks.div_ceil(per_block).max(1);
        let budget = (u64::from(dev.sm_count()) * 8).div_ceil(batch.len() as u64).max(1);
        let blocks_x = want.min(budget.max(4)).min(u64::from(u32::MAX >> 1));
        launches.push((
            start..end,
            Geometry {
                grid: [blocks_x as u32, to_u32(OP, "descriptors", batch.len())?, 1],
                block: [THREADS, 1, 1],
                smem: 0,
            },
        ));
        start = end;
    }
    Ok(GrowPlan { launches })
}

/// Grows every item in one launch (or a few, past 65535 items). The descriptor
/// table goes through the device's reused table buffer: no allocation once that
/// buffer holds a table of this size.
pub fn grow_batch<T: DType>(dev: &Device, mut items: Vec<GrowItem<'_, T>>) -> Result<()> {
    let plan = plan(dev, &items)?;
    let elem = std::mem::size_of::<T>();
    for (range, geom) in plan.launches {
        let mut guards = Vec::new();
        let mut descs = Vec::with_capacity(range.len());
        for it in &mut items[range] {
            let pitch = |strides: &[usize]| to_i64(OP, "row pitch", strides[0].saturating_mul(elem));
            let rows_new = it.dst.shape()[0];
            let cols = it.dst.shape()[1];
            let dst_pitch = pitch(it.dst.strides())?;
            let (src, src_pitch) = match &it.src {
                Some(s) => {
                    let p = s.ptr();
                    let a = p.addr;
                    guards.push(p);
                    (a, pitch(s.strides())?)
                }
                None => (0, 0),
            };
            let (init, init_src, init_pitch, std, seed) = match &it.init {
                GrowInit::Zeros => (sys::TF_INIT_ZEROS, 0, 0, 0.0, 0),
                GrowInit::Rows(r) => {
                    let p = r.ptr();
                    let a = p.addr;
                    guards.push(p);
                    (sys::TF_INIT_ROWS, a, pitch(r.strides())?, 0.0, 0)
                }
                GrowInit::Normal { std, seed } => (sys::TF_INIT_NORMAL, 0, 0, *std, *seed),
            };
            let dst = it.dst.ptr_mut().addr;
            descs.push(sys::tf_grow_desc {
                src,
                dst,
                init_src,
                rows_old: to_i64(OP, "rows_old", it.rows_old)?,
                rows_new: to_i64(OP, "rows_new", rows_new)?,
                cols: to_i64(OP, "cols", cols)?,
                src_pitch,
                dst_pitch,
                init_pitch,
                seed,
                std,
                init: init as i32,
                elem_bytes: elem as i32,
                dtype: T::CODE as i32,
            });
        }
        let num_descs = to_i64(OP, "descriptors", descs.len())?;
        dev.with_table(&descs, |table| {
            let params = sys::tf_grow_params { descs: table, num_descs };
            // SAFETY: plan() checked every item: dst views cover [rows_new, cols]
            // with contiguous rows, src/init views cover the rows the kernel reads,
            // sizes fit i64; the descriptor table stays in the device's table
            // buffer, locked, until the launch is done (emulator) or queued ahead
            // of any later upload into it (CUDA); the views' borrows (and guards)
            // outlive the launch call.
            unsafe { dev.launch(OP, "grow_rows", &geom, &params) }
        })?;
        drop(guards);
    }
    Ok(())
}
