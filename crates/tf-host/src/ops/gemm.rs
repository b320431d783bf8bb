//! The strided f32-accumulating gemm of kernels/pattention_backward.cu
//! (`gemm_{ta}_{tb}`), shared by the backward ops: `C [m, n] f32 = A·Bᵀ` with
//! `A(i, l)` and `B(j, l)` addressed through two strides each, so a transposed
//! operand is a swap of strides. Deterministic (the sum runs over l in order).

use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i64, to_u32, Result};

/// Rows and columns of C per block (`kTile`).
const TILE: usize = 16;

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by gemm_*.
unsafe impl KernelParams for sys::tf_gemm_params {}

fn kernel<TA: DType, TB: DType>() -> &'static str {
    match (TA::NAME, TB::NAME) {
        ("f32", "f32") => "gemm_f32_f32",
        ("f16", "f16") => "gemm_f16_f16",
        ("bf16", "bf16") => "gemm_bf16_bf16",
        ("f32", "f16") => "gemm_f32_f16",
        _ => "gemm_f32_bf16",
    }
}

/// One operand: base address and the strides of its (row, l) element.
#[derive(Clone, Copy)]
pub(crate) struct Operand {
    pub addr: u64,
    pub rs: usize,
    pub cs: usize,
}

impl Operand {
    /// Element (i, l) at `i·rs + l`: a row-major matrix.
    pub fn rows(addr: u64, rs: usize) -> Operand {
        Operand { addr, rs, cs: 1 }
    }
    /// Element (i, l) at `i + l·cs`: the transpose of a row-major matrix.
    pub fn cols(addr: u64, cs: usize) -> Operand {
        Operand { addr, rs: 1, cs }
    }
}

/// Checks the grid a `[m, n]` C needs against CUDA's limits (x < 2^31, y <= 65535).
pub(crate) fn check_grid(op: &'static str, what: &str, m: usize, n: usize) -> Result<()> {
    let (gx, gy) = (n.div_ceil(TILE), m.div_ceil(TILE));
    if gy > 65535 || gx > i32::MAX as usize {
        return Err(crate::error::Error::SizeOverflow {
            op,
            msg: format!("{what} [{m}, {n}] needs a grid of [{gx}, {gy}]; CUDA allows x < 2^31, y <= 65535"),
        });
    }
    Ok(())
}

/// `C [m, n] = A·Bᵀ` in f32 (see `tf_gemm_params`); nothing to do for an empty C.
///
/// # Safety
/// `a` and `b` must address `m × k` and `n × k` elements of types `TA` / `TB` at
/// their strides, and `c` an f32 `[m, n]` matrix of row stride `n`, all live until
/// the launch has run.
pub(crate) unsafe fn gemm<TA: DType, TB: DType>(
    op: &'static str,
    dev: &Device,
    (m, n, k): (usize, usize, usize),
    a: Operand,
    b: Operand,
    c: u64,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    check_grid(op, "C", m, n)?;
    let i = |what: &str, v: usize| to_i64(op, what, v);
    let params = sys::tf_gemm_params {
        a: a.addr,
        b: b.addr,
        c,
        m: i("m", m)?,
        n: i("n", n)?,
        k: i("k", k)?,
        a_rs: i("a row stride", a.rs)?,
        a_cs: i("a column stride", a.cs)?,
        b_rs: i("b row stride", b.rs)?,
        b_cs: i("b column stride", b.cs)?,
        c_rs: i("c row stride", n)?,
    };
    let grid = [to_u32(op, "grid x", n.div_ceil(TILE))?, to_u32(op, "grid y", m.div_ceil(TILE))?, 1];
    let geometry = Geometry { grid, block: [TILE as u32, TILE as u32, 1], smem: 0 };
    // SAFETY: the caller's contract (operands and C in bounds at these strides).
    unsafe { dev.launch(op, kernel::<TA, TB>(), &geometry, &params) }
}
