//! Pattention forward (kernels/pattention*.cu): `Y = Θ(X·K_Pᵀ)·V_P` with the
//! three official row normalisations, on tensor cores for f16/bf16 and a SIMT
//! path for f32.
//!
//! Follows the pattern of every op family: [`plan`] does ALL validation, the
//! workspace layout and the launch geometry (the same for CUDA and the
//! emulator); [`pattention_into`] only gathers pointers and launches.
//!
//! The kernels need scratch memory (scaled scores `h`, per-row statistics and,
//! for small `t`, partial outputs) sized by [`pattention_workspace_bytes`]; a
//! caller may keep one [`Workspace`] and pass it to every call.

use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i32, to_i64, to_u32, Error, Result};
use crate::tensor::{check_disjoint, Tensor, View, ViewMut};
use crate::workspace::Workspace;

const OP: &str = "pattention";

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by every
// pattention_* kernel.
unsafe impl KernelParams for sys::tf_pattention_params {}

/// Width of an n-tile of the statistics (`TF_PATTENTION_TILE_N`).
const TILE_N: usize = sys::TF_PATTENTION_TILE_N as usize;
/// Largest `t` of the decode path (`TF_PATTENTION_DECODE_MAX_T`).
const DECODE_MAX_T: usize = sys::TF_PATTENTION_DECODE_MAX_T as usize;
/// Alignment of each workspace region (`TF_PATTENTION_WS_ALIGN`).
const WS_ALIGN: usize = sys::TF_PATTENTION_WS_ALIGN as usize;
/// Rows per CTA of the tensor-core scores/out kernels (their `Traits::kBM`).
const MMA_ROWS: usize = 128;
/// Rows per CTA of the f32 SIMT scores/out kernels (`SimtTraits::kBM`).
const SIMT_ROWS: usize = 64;
/// Output columns per CTA of the out, decode and combine kernels.
const COLS: usize = 128;
/// Rows (warps) per CTA of pattention_rows (`kRowsWarps`).
const ROWS_PER_CTA: usize = 8;
/// Rows (warps) per CTA of pattention_scores_reduce (`kReduceRows`).
const REDUCE_ROWS: usize = 4;
/// d_in columns per k-tile of the tensor-core scores kernel (`Traits::kBK`).
const SCORES_BK: usize = 32;
/// Rows per CTA of pattention_out64 (`Traits<64>::kBM`).
const OUT64_ROWS: usize = 64;
/// Fewest k-tiles a d_in slice of the split scores kernel streams: below two the
/// cp.async ring has nothing to overlap.
const MIN_SPLIT_K_TILES: usize = 2;

/// The row normalisation Θ (docs/tokenformer.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Norm {
    /// `S_ij = gelu(A_ij · sqrt(n_ref) / (‖A_i‖ + eps))`: every released config.
    #[default]
    L2NormGelu,
    /// `G = gelu(A)`, `S_ij = G_ij · sqrt(n_ref) / (‖G_i‖ + eps)`.
    GeluL2Norm,
    /// `S_ij = n_ref · softmax(A_i)_j` (computed stably; `eps` unused).
    Softmax,
}

impl Norm {
    /// All variants.
    pub const ALL: [Norm; 3] = [Norm::L2NormGelu, Norm::GeluL2Norm, Norm::Softmax];

    /// The official name: `"l2_norm_gelu"`, `"gelu_l2_norm"` or `"softmax"`.
    pub fn name(self) -> &'static str {
        match self {
            Norm::L2NormGelu => "l2_norm_gelu",
            Norm::GeluL2Norm => "gelu_l2_norm",
            Norm::Softmax => "softmax",
        }
    }

    pub(crate) fn code(self) -> sys::tf_norm {
        match self {
            Norm::L2NormGelu => sys::TF_NORM_L2_NORM_GELU,
            Norm::GeluL2Norm => sys::TF_NORM_GELU_L2_NORM,
            Norm::Softmax => sys::TF_NORM_SOFTMAX,
        }
    }
}

/// Options of [`pattention`]. The default is the official configuration:
/// `l2_norm_gelu`, `n_ref` = the current token count, no epsilon.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PattentionOptions {
    /// The row normalisation.
    pub norm: Norm,
    /// Pinned reference token count (`sqrt(n_ref)`, `n_ref·`); `None` = `n`.
    /// `Some(0)` is an error.
    pub n_ref: Option<usize>,
    /// Added to the row norm of the two L2 variants; finite and >= 0.
    pub eps: f32,
}

/// The inputs and options of one Pattention call, by name: `x` and the two
/// token matrices are views of one type and often of one shape, so passing them
/// by position would let a swap go unnoticed.
///
/// Views are cheap to make (`tensor.view()`, or [`Tensor::strided`] for a block
/// of a larger buffer); the same arguments can serve many calls.
#[derive(Clone, Debug)]
pub struct PattentionArgs<'a, T: DType> {
    /// The input tokens `[t, d_in]`.
    pub x: View<'a, T>,
    /// The key parameter tokens `K_P` `[n, d_in]`.
    pub k_p: View<'a, T>,
    /// The value parameter tokens `V_P` `[n, d_out]`.
    pub v_p: View<'a, T>,
    /// The norm, the pinned reference count and eps.
    pub opts: PattentionOptions,
}

/// Checks `opts` and returns the factor the kernels apply with `n` tokens:
/// `sqrt(n_ref)` for the two L2 norms, `n_ref` for softmax (`n_ref` = `n`
/// unless pinned).
pub(crate) fn norm_scale(op: &'static str, opts: &PattentionOptions, n: usize) -> Result<f32> {
    if !(opts.eps.is_finite() && opts.eps >= 0.0) {
        return Err(Error::InvalidArgument { op, msg: format!("eps must be finite and >= 0, got {}", opts.eps) });
    }
    let n_ref = match opts.n_ref {
        None => n,
        Some(0) => return Err(Error::InvalidArgument { op, msg: "n_ref must be >= 1, got 0".into() }),
        Some(r) => r,
    };
    let scale = match opts.norm {
        Norm::Softmax => n_ref as f64,
        _ => (n_ref as f64).sqrt(),
    } as f32;
    if !scale.is_finite() {
        return Err(Error::InvalidArgument { op, msg: format!("n_ref = {n_ref} is too large for an f32 scale") });
    }
    Ok(scale)
}

/// Which kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PattentionPath {
    /// scores, rows, out (t > 64 or f32).
    Tiled,
    /// decode (+ scores first for l2_norm_gelu), combine (f16/bf16, t <= 64).
    Decode,
}

/// Byte offsets of the workspace regions (tf_kernels.h, `tf_pattention_params`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceLayout {
    /// `h` [t, h_stride] in the storage type.
    pub h: usize,
    /// `stats` [t, n_tiles] float2.
    pub stats: usize,
    /// `rowf` `[t]` float2.
    pub rowf: usize,
    /// `partial`: decode only (else = total): [n_tiles, t, d_out] f32 partial
    /// outputs, and before them the split scores kernel's [k_splits, t,
    /// n_tiles·128] f32 partial scores.
    pub partial: usize,
    /// Total bytes.
    pub total: usize,
}

/// One kernel launch of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// The kernel's name.
    pub kernel: &'static str,
    /// Its geometry.
    pub geometry: Geometry,
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct PattentionPlan {
    /// Tokens (rows of x and y).
    pub t: usize,
    /// Parameter tokens.
    pub n: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// The path taken.
    pub path: PattentionPath,
    /// The workspace layout (bytes).
    pub workspace: WorkspaceLayout,
    /// Launches in order (empty when t = 0 or d_out = 0).
    pub launches: Vec<Launch>,
    /// `sqrt(n_ref)` (L2 norms) or `n_ref` (softmax), as the kernels take it.
    pub scale: f32,
    /// Row stride of h (elements).
    pub h_stride: usize,
    /// Number of n-tiles.
    pub n_tiles: usize,
    /// Decode: output columns per CTA.
    pub decode_cols: usize,
    /// Slices of d_in product 1 is split into (decode, l2_norm_gelu; else 1).
    pub k_splits: usize,
    /// k-tiles (32 columns of d_in) per slice when `k_splits` > 1, else 0.
    pub split_k_tiles: usize,
}

/// The most d_in slices the decode path's product 1 may use with `n_tiles`
/// n-tiles (`S` of tf_kernels.h): a function of the shapes only, so that the
/// workspace size is too.
fn max_k_splits(n_tiles: usize) -> usize {
    let ctas = sys::TF_PATTENTION_SPLIT_CTAS as usize;
    ctas.div_ceil(n_tiles.max(1)).clamp(1, sys::TF_PATTENTION_MAX_SPLITS as usize)
}

/// Rows per CTA of the tensor-core out kernel: 128, or 64 (pattention_out64)
/// when the 128-row grid loads the busiest SM with at least 8/7 the work the
/// 64-row grid gives it. Both kinds of CTA keep an SM's tensor cores busy on
/// their own, so an SM's time goes with the rows its CTAs hold: e.g. d_out =
/// 1024, t = 2048 on 108 SMs: 128 CTAs of 128 rows put 2 on some SMs (256 rows),
/// 256 CTAs of 64 rows put at most 3 (192 rows).
fn out_rows(sm_count: usize, t: usize, d_out: usize) -> usize {
    let (sms, cols) = (sm_count.max(1), d_out.div_ceil(COLS));
    let busiest = |rows: usize| (cols * t.div_ceil(rows)).div_ceil(sms) * rows;
    if busiest(OUT64_ROWS) * 8 <= busiest(MMA_ROWS) * 7 {
        OUT64_ROWS
    } else {
        MMA_ROWS
    }
}

/// Product 1's split over d_in on the decode path: (slices, k-tiles per slice).
/// Enough CTAs to give every SM one (`sm_count`), at most [`max_k_splits`],
/// every slice at least [`MIN_SPLIT_K_TILES`] k-tiles, and at most d_in / (2t)
/// slices, so that the f32 partial scores written (slices · t · n · 4 bytes) stay
/// within the K_P bytes read (n · d_in · 2); (1, 0) when that leaves one.
fn k_split(sm_count: usize, n_tiles: usize, t: usize, d_in: usize) -> (usize, usize) {
    let k_tiles = d_in.div_ceil(SCORES_BK);
    let want = sm_count
        .div_ceil(n_tiles.max(1))
        .min(max_k_splits(n_tiles))
        .min(k_tiles / MIN_SPLIT_K_TILES)
        .min(d_in / (2 * t.max(1)));
    if want <= 1 {
        return (1, 0);
    }
    let per = k_tiles.div_ceil(want);
    (k_tiles.div_ceil(per), per)
}

/// Whether (dtype, t) takes the decode path.
fn is_decode<T: DType>(t: usize) -> bool {
    T::NAME != "f32" && t <= DECODE_MAX_T
}

fn round_up(op: &'static str, v: usize, m: usize) -> Result<usize> {
    v.checked_next_multiple_of(m)
        .ok_or_else(|| Error::SizeOverflow { op, msg: format!("{v} rounded up to a multiple of {m}") })
}

fn bytes_of(what: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::SizeOverflow { op: OP, msg: format!("workspace {what}: product of {dims:?} overflows") })
}

/// The workspace layout for storage type `T` and shapes (t, n, d_out): the one
/// formula of tf_kernels.h (`tf_pattention_params`).
pub fn workspace_layout<T: DType>(t: usize, n: usize, d_out: usize) -> Result<WorkspaceLayout> {
    let n_tiles = n.div_ceil(TILE_N);
    let h_stride = round_up(OP, n, 8)?;
    let add = |a: usize, b: usize| {
        a.checked_add(b).ok_or_else(|| Error::SizeOverflow { op: OP, msg: "workspace size overflows".into() })
    };
    let h_bytes = round_up(OP, bytes_of("h", &[t, h_stride, std::mem::size_of::<T>()])?, WS_ALIGN)?;
    let stats_bytes = round_up(OP, bytes_of("stats", &[t, n_tiles, 8])?, WS_ALIGN)?;
    let rowf_bytes = round_up(OP, bytes_of("rowf", &[t, 8])?, WS_ALIGN)?;
    let partial_bytes = if is_decode::<T>(t) {
        let outputs = bytes_of("partial", &[n_tiles, t, d_out, 4])?;
        let scores = bytes_of("partial scores", &[max_k_splits(n_tiles), t, n_tiles, TILE_N, 4])?;
        round_up(OP, outputs.max(scores), WS_ALIGN)?
    } else {
        0
    };
    let stats = h_bytes;
    let rowf = add(stats, stats_bytes)?;
    let partial = add(rowf, rowf_bytes)?;
    let total = add(partial, partial_bytes)?;
    Ok(WorkspaceLayout { h: 0, stats, rowf, partial, total })
}

/// Bytes of workspace one pattention call with storage type `T`, `t` tokens,
/// `n` parameter tokens and output width `d_out` needs.
pub fn pattention_workspace_bytes<T: DType>(t: usize, n: usize, d_out: usize) -> Result<usize> {
    Ok(workspace_layout::<T>(t, n, d_out)?.total)
}

/// Kernel names, built in this one place.
fn kernel_name<T: DType>(stage: &str) -> &'static str {
    match (stage, T::NAME) {
        ("scores", "f32") => "pattention_scores_f32",
        ("scores", "f16") => "pattention_scores_f16",
        ("scores", _) => "pattention_scores_bf16",
        ("rows", "f32") => "pattention_rows_f32",
        ("rows", "f16") => "pattention_rows_f16",
        ("rows", _) => "pattention_rows_bf16",
        ("out", "f32") => "pattention_out_f32",
        ("out", "f16") => "pattention_out_f16",
        ("out", _) => "pattention_out_bf16",
        ("out64", "f16") => "pattention_out64_f16",
        ("out64", _) => "pattention_out64_bf16",
        ("decode", "f16") => "pattention_decode_f16",
        ("decode", _) => "pattention_decode_bf16",
        ("reduce", "f16") => "pattention_scores_reduce_f16",
        ("reduce", _) => "pattention_scores_reduce_bf16",
        ("combine", "f16") => "pattention_combine_f16",
        (_, _) => "pattention_combine_bf16",
    }
}

fn shape_err(msg: String) -> Error {
    Error::Shape { op: OP, msg }
}

/// Checks one operand: 2-D, contiguous rows, and for 16-bit types a 16-byte
/// aligned start and a row stride that is a multiple of 8 elements.
pub(crate) fn check_operand<T: DType>(
    name: &str,
    shape: &[usize],
    strides: &[usize],
    offset: usize,
    inner: bool,
) -> Result<(usize, usize, usize)> {
    let &[rows, cols] = shape else {
        return Err(shape_err(format!("{name} must be 2-D, got shape {shape:?}")));
    };
    if !inner {
        return Err(shape_err(format!("{name} rows must be contiguous (last stride 1), strides {strides:?}")));
    }
    let stride = strides[0];
    if std::mem::size_of::<T>() == 2 {
        let start = offset.saturating_mul(2);
        if start % 16 != 0 {
            return Err(Error::Alignment {
                op: OP,
                msg: format!(
                    "{name} starts at element {offset}: {} storage needs a 16-byte aligned start (a multiple of 8 elements)",
                    T::NAME
                ),
            });
        }
        if rows > 1 && stride % 8 != 0 {
            return Err(Error::Alignment {
                op: OP,
                msg: format!(
                    "{name} row stride {stride} elements: {} storage needs a multiple of 8 (16-byte rows)",
                    T::NAME
                ),
            });
        }
    }
    Ok((rows, cols, stride))
}

/// Validates the operands and options and computes the workspace layout and
/// every launch. `workspace` is the size of a caller's workspace, if any.
pub fn plan<T: DType>(
    dev: &Device,
    args: &PattentionArgs<'_, T>,
    y: &ViewMut<'_, T>,
    workspace: Option<usize>,
) -> Result<PattentionPlan> {
    let PattentionArgs { x, k_p, v_p, opts } = args;
    for d in [x.device(), k_p.device(), v_p.device(), y.device()] {
        if !d.same(dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
    }
    let (t, d_in, xs) = check_operand::<T>("x", x.shape(), x.strides(), x.offset(), x.inner_contiguous())?;
    let (n, k_in, ks) = check_operand::<T>("k_p", k_p.shape(), k_p.strides(), k_p.offset(), k_p.inner_contiguous())?;
    let (vn, d_out, vs) = check_operand::<T>("v_p", v_p.shape(), v_p.strides(), v_p.offset(), v_p.inner_contiguous())?;
    let (yt, yo, ys) = check_operand::<T>("y", y.shape(), y.strides(), y.offset(), y.inner_contiguous())?;
    if k_in != d_in {
        return Err(shape_err(format!("x is [{t}, {d_in}] but k_p is [{n}, {k_in}]: d_in differs")));
    }
    if vn != n {
        return Err(shape_err(format!("k_p is [{n}, {k_in}] but v_p is [{vn}, {d_out}]: n differs")));
    }
    if yt != t || yo != d_out {
        return Err(shape_err(format!("y is [{yt}, {yo}] but [t, d_out] = [{t}, {d_out}]")));
    }
    check_disjoint(OP, "y", y)?;
    if n == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("k_p is [0, {d_in}]: at least one parameter token is needed"),
        });
    }
    let scale = norm_scale(OP, opts, n)?;
    // Every index the kernels form must fit their 64-bit signed arithmetic.
    for (what, v) in [("x row stride", xs), ("k_p row stride", ks), ("v_p row stride", vs), ("y row stride", ys)] {
        to_i64(OP, what, v)?;
    }
    for (what, rows, stride) in [("x", t, xs), ("k_p", n, ks), ("v_p", n, vs), ("y", t, ys)] {
        let elems = rows.checked_mul(stride).and_then(|e| e.checked_add(d_in.max(d_out)));
        match elems {
            Some(e) => {
                to_i64(OP, what, e.saturating_mul(std::mem::size_of::<T>()))?;
            }
            None => return Err(Error::SizeOverflow { op: OP, msg: format!("{what}: {rows} rows of stride {stride}") }),
        }
    }

    let layout = workspace_layout::<T>(t, n, d_out)?;
    to_i64(OP, "workspace bytes", layout.total)?;
    if let Some(have) = workspace {
        if have < layout.total {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "workspace has {have} bytes; t = {t}, n = {n}, d_out = {d_out} in {} need {} (pattention_workspace_bytes)",
                    T::NAME,
                    layout.total
                ),
            });
        }
    }
    let n_tiles = n.div_ceil(TILE_N);
    let h_stride = round_up(OP, n, 8)?;
    let path = if is_decode::<T>(t) { PattentionPath::Decode } else { PattentionPath::Tiled };
    let mut launches = Vec::new();
    let mut decode_cols = 0;
    let (mut k_splits, mut split_k_tiles) = (1, 0);
    if t > 0 && d_out > 0 {
        let g = |grid: [usize; 3], threads: u32, smem: u32| -> Result<Geometry> {
            let grid = [to_u32(OP, "grid x", grid[0])?, to_u32(OP, "grid y", grid[1])?, to_u32(OP, "grid z", grid[2])?];
            if grid[1] > 65535 || grid[0] > i32::MAX as u32 {
                return Err(Error::SizeOverflow {
                    op: OP,
                    msg: format!(
                        "grid {grid:?} exceeds CUDA's limits (x < 2^31, y <= 65535): t = {t}, n = {n}, d_out = {d_out}"
                    ),
                });
            }
            if smem > dev.max_smem_per_block() {
                return Err(Error::InvalidArgument {
                    op: OP,
                    msg: format!(
                        "needs {smem} bytes of shared memory per block; this device allows {}",
                        dev.max_smem_per_block()
                    ),
                });
            }
            Ok(Geometry { grid, block: [threads, 1, 1], smem })
        };
        let f32_path = T::NAME == "f32";
        let scores = if f32_path {
            g([n_tiles, t.div_ceil(SIMT_ROWS), 1], 256, sys::TF_PATTENTION_SMEM_SCORES_F32)?
        } else {
            g([n_tiles, t.div_ceil(MMA_ROWS), 1], 128, sys::TF_PATTENTION_SMEM_SCORES)?
        };
        let col_blocks = d_out.div_ceil(COLS);
        match path {
            PattentionPath::Tiled => {
                let (out, out_kernel) = if f32_path {
                    let g = g([col_blocks, t.div_ceil(SIMT_ROWS), 1], 256, sys::TF_PATTENTION_SMEM_OUT_F32)?;
                    (g, kernel_name::<T>("out"))
                } else if out_rows(dev.sm_count() as usize, t, d_out) == OUT64_ROWS {
                    let g = g([col_blocks, t.div_ceil(OUT64_ROWS), 1], 128, sys::TF_PATTENTION_SMEM_OUT64)?;
                    (g, kernel_name::<T>("out64"))
                } else {
                    (
                        g([col_blocks, t.div_ceil(MMA_ROWS), 1], 128, sys::TF_PATTENTION_SMEM_MMA)?,
                        kernel_name::<T>("out"),
                    )
                };
                launches.push(Launch { kernel: kernel_name::<T>("scores"), geometry: scores });
                launches.push(Launch {
                    kernel: kernel_name::<T>("rows"),
                    geometry: g([t.div_ceil(ROWS_PER_CTA), 1, 1], 32 * ROWS_PER_CTA as u32, 0)?,
                });
                launches.push(Launch { kernel: out_kernel, geometry: out });
            }
            PattentionPath::Decode => {
                // Enough CTAs to cover the SMs twice: split the columns when the
                // n-tiles alone are too few (each split recomputes its chunk's scores
                // for gelu_l2_norm / softmax, which is cheap at t <= 64).
                let want = (2 * dev.sm_count() as usize).div_ceil(n_tiles).clamp(1, col_blocks);
                let blocks_per = col_blocks.div_ceil(want);
                decode_cols = blocks_per * COLS;
                let y_splits = col_blocks.div_ceil(blocks_per);
                if opts.norm == Norm::L2NormGelu {
                    // A few n-tiles leave most SMs idle while each CTA streams all of
                    // d_in: split d_in, and sum the slices in pattention_scores_reduce.
                    (k_splits, split_k_tiles) = k_split(dev.sm_count() as usize, n_tiles, t, d_in);
                    if k_splits > 1 {
                        let split = g([n_tiles, 1, k_splits], 128, sys::TF_PATTENTION_SMEM_SCORES)?;
                        launches.push(Launch { kernel: kernel_name::<T>("scores"), geometry: split });
                        launches.push(Launch {
                            kernel: kernel_name::<T>("reduce"),
                            geometry: g([n_tiles, t.div_ceil(REDUCE_ROWS), 1], 32 * REDUCE_ROWS as u32, 0)?,
                        });
                    } else {
                        launches.push(Launch { kernel: kernel_name::<T>("scores"), geometry: scores });
                    }
                }
                launches.push(Launch {
                    kernel: kernel_name::<T>("decode"),
                    geometry: g([n_tiles, y_splits, 1], 128, sys::TF_PATTENTION_SMEM_DECODE)?,
                });
                launches.push(Launch {
                    kernel: kernel_name::<T>("combine"),
                    geometry: g([col_blocks, t, 1], COLS as u32, 0)?,
                });
            }
        }
    }
    Ok(PattentionPlan {
        t,
        n,
        d_in,
        d_out,
        path,
        workspace: layout,
        launches,
        scale,
        h_stride,
        n_tiles,
        decode_cols,
        k_splits,
        split_k_tiles,
    })
}

/// `y = Θ(x·k_pᵀ)·v_p` into a caller-given `y` `[t, d_out]`: x `[t, d_in]`,
/// k_p `[n, d_in]`, v_p `[n, d_out]`, rows contiguous (16-bit storage: 16-byte
/// aligned starts and row strides that are multiples of 8 elements). The
/// scratch comes from `workspace` (at least [`pattention_workspace_bytes`]) or
/// is allocated for the call.
pub fn pattention_into<T: DType>(
    dev: &Device,
    args: &PattentionArgs<'_, T>,
    y: &mut ViewMut<'_, T>,
    workspace: Option<&mut Workspace>,
) -> Result<()> {
    run(dev, args, y, workspace, None)
}

/// What an `l2_norm_gelu` Pattention forward keeps for its backward
/// ([`pattention_keeping_into`], [`crate::pattention_backward_kept`]): the
/// scores `A = x·k_pᵀ` as the forward stored them, `ĥ = A·2^-e` in the storage
/// type with one power-of-two exponent `e` per row and 128-column n-tile, so
/// `A_ij = ĥ_ij·2^e` exactly (A rounded once to the storage type). `t·round_up(n,
/// 8)` elements of the storage type and `t·ceil(n / 128)·8` bytes of statistics.
#[derive(Debug)]
pub struct KeptScores<T: DType> {
    /// ĥ `[t, round_up(n, 8)]`.
    pub(crate) h: Tensor<T>,
    /// `[t, ceil(n / 128)]` (e, l) pairs, as `[t, 2·ceil(n / 128)]` f32.
    pub(crate) stats: Tensor<f32>,
    pub(crate) t: usize,
    pub(crate) n: usize,
}

impl<T: DType> KeptScores<T> {
    /// `(t, n)`: the forward's tokens and parameter tokens.
    pub fn shape(&self) -> (usize, usize) {
        (self.t, self.n)
    }

    /// Device bytes held (scores and statistics).
    pub fn bytes(&self) -> usize {
        self.h.len() * std::mem::size_of::<T>() + self.stats.len() * 4
    }

    /// The device they live on.
    pub fn device(&self) -> &Device {
        self.h.device()
    }
}

/// [`pattention_into`], also keeping the scores for the backward
/// ([`KeptScores`]): the backward then reads them instead of recomputing
/// `A = x·k_pᵀ` (one of its five products), at the cost of holding them from
/// the forward to the backward. The forward moves no more bytes: its `[t, n]`
/// intermediate goes to the kept tensor instead of the workspace, and the rows
/// pass writes S to the workspace instead of over it. `y` gets the same bits as
/// from `pattention_into`.
///
/// Errors: those of `pattention_into`; a norm other than `l2_norm_gelu` (the
/// other norms store `gelu(A)` or `exp(A)`, from which the backward cannot take
/// A); `d_out = 0` (no kernel runs, so there are no scores to keep).
pub fn pattention_keeping_into<T: DType>(
    dev: &Device,
    args: &PattentionArgs<'_, T>,
    y: &mut ViewMut<'_, T>,
    workspace: Option<&mut Workspace>,
) -> Result<KeptScores<T>> {
    if args.opts.norm != Norm::L2NormGelu {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!(
                "keeping the scores needs the l2_norm_gelu norm; {} stores a function of A the backward cannot invert",
                args.opts.norm.name()
            ),
        });
    }
    let p = plan(dev, args, y, workspace.as_ref().map(|w| w.bytes()))?;
    if p.d_out == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("v_p is [{}, 0]: with d_out = 0 no scores are computed, so none can be kept", p.n),
        });
    }
    let h = dev.output::<T>(&[p.t, p.h_stride])?;
    let stats = dev.output::<f32>(&[p.t, 2 * p.n_tiles])?;
    let kept = KeptScores { h, stats, t: p.t, n: p.n };
    run(dev, args, y, workspace, Some(&kept))?;
    Ok(kept)
}

/// The forward's launches; with `kept`, h and the statistics go to it and the
/// rows pass writes S to the workspace's h region, which the output product reads.
fn run<T: DType>(
    dev: &Device,
    args: &PattentionArgs<'_, T>,
    y: &mut ViewMut<'_, T>,
    workspace: Option<&mut Workspace>,
    kept: Option<&KeptScores<T>>,
) -> Result<()> {
    if let Some(ws) = &workspace {
        if !ws.device().same(dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
    }
    let p = plan(dev, args, y, workspace.as_ref().map(|w| w.bytes()))?;
    let PattentionArgs { x, k_p, v_p, opts } = args;
    if p.launches.is_empty() {
        return Ok(());
    }
    let mut owned;
    let ws: &mut Workspace = match workspace {
        Some(w) => w,
        None => {
            owned = Workspace::new(dev, p.workspace.total)?;
            &mut owned
        }
    };
    let i64_of = |what: &str, v: usize| to_i64(OP, what, v);
    let (xp, kp, vp) = (x.ptr(), k_p.ptr(), v_p.ptr());
    let wp = ws.ptr_mut();
    let base = wp.addr;
    let params = sys::tf_pattention_params {
        x: xp.addr,
        k_p: kp.addr,
        v_p: vp.addr,
        y: 0,
        h: base + p.workspace.h as u64,
        stats: base + p.workspace.stats as u64,
        rowf: base + p.workspace.rowf as u64,
        partial: if p.path == PattentionPath::Decode { base + p.workspace.partial as u64 } else { 0 },
        t: i64_of("t", p.t)?,
        n: i64_of("n", p.n)?,
        d_in: i64_of("d_in", p.d_in)?,
        d_out: i64_of("d_out", p.d_out)?,
        x_row_stride: i64_of("x row stride", x.strides()[0])?,
        k_row_stride: i64_of("k_p row stride", k_p.strides()[0])?,
        v_row_stride: i64_of("v_p row stride", v_p.strides()[0])?,
        y_row_stride: i64_of("y row stride", y.strides()[0])?,
        h_stride: i64_of("h stride", p.h_stride)?,
        n_tiles: i64_of("n tiles", p.n_tiles)?,
        decode_cols: i64_of("decode columns", p.decode_cols)?,
        scale: p.scale,
        eps: opts.eps,
        norm: opts.norm.code() as i32,
        k_splits: to_i32(OP, "k splits", p.k_splits)?,
        split_k_tiles: to_i32(OP, "split k-tiles", p.split_k_tiles)?,
        reserved: 0,
        s: 0,
    };
    let yp = y.ptr_mut();
    let params = sys::tf_pattention_params { y: yp.addr, ..params };
    // Keeping: every launch takes h and stats from the kept tensors, except the
    // output product, which reads S where the rows pass put it (the workspace's h).
    let kept_ptrs = kept.map(|k| (k.h.view().ptr(), k.stats.view().ptr()));
    let (params, out_params) = match &kept_ptrs {
        None => (params, params),
        Some((kh, ks)) => {
            let kept = sys::tf_pattention_params { h: kh.addr, stats: ks.addr, s: params.h, ..params };
            (kept, sys::tf_pattention_params { h: params.h, s: 0, ..kept })
        }
    };
    for l in &p.launches {
        let output_product = l.kernel == kernel_name::<T>("out") || l.kernel == kernel_name::<T>("out64");
        let params = if output_product { &out_params } else { &params };
        // SAFETY: plan() checked x [t, d_in], k_p [n, d_in], v_p [n, d_out] and
        // y [t, d_out] (contiguous rows at the given strides, 16-byte aligned
        // starts and strides for 16-bit storage, i64-safe sizes), and that the
        // workspace holds the layout's `total` bytes, which bound every h /
        // stats / rowf / partial access; kept h and stats, when given, are
        // [t, h_stride] and [t, n_tiles] float2 (pattention_keeping_into sized
        // them from this plan). The kernels touch nothing else. The borrows and
        // guards (xp, kp, vp, wp, yp, kept_ptrs) outlive the launches, which are
        // stream-ordered (CUDA) or synchronous (emulator).
        unsafe { dev.launch(OP, l.kernel, &l.geometry, params) }?;
    }
    drop((xp, kp, vp, wp, yp, kept_ptrs));
    Ok(())
}

/// `Θ(x·k_pᵀ)·v_p`, allocating the output `[t, d_out]` and the workspace.
pub fn pattention<T: DType>(dev: &Device, args: &PattentionArgs<'_, T>) -> Result<Tensor<T>> {
    let t = args.x.shape().first().copied().unwrap_or(0);
    let d_out = args.v_p.shape().get(1).copied().unwrap_or(0);
    let mut y = dev.output::<T>(&[t, d_out])?;
    pattention_into(dev, args, &mut y.view_mut(), None)?;
    Ok(y)
}
