//! The f32-accumulating gemm shared by the backward ops: `C [m, n] f32 = A·Bᵀ`
//! with `A(i, l)` and `B(j, l)` addressed through two strides each, so a
//! transposed operand is a swap of strides. Two kernel families:
//! - tensor cores (kernels/gemm_tc.cu, `gemm_tc_{t}_{a}{b}`) when A and B are the
//!   same 16-bit type and each is row-wise (`cs = 1`) or column-wise (`rs = 1`)
//!   with its other stride a multiple of 8 and a 16-byte aligned start;
//! - SIMT (kernels/pattention_backward.cu, `gemm_{ta}_{tb}`) for everything else.
//!
//! Both are deterministic: each C element is one block's sum over l in order.

use tf_kernels::sys;

use crate::device::{Device, Geometry, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i32, to_i64, to_u32, Result};

/// Rows and columns of C per block of the SIMT gemm (`kTile`).
const TILE: usize = 16;
/// Rows and columns of C per CTA of the tensor-core gemm.
const TC_TILE: usize = sys::TF_GEMM_TC_TILE as usize;
/// Elements of the sum per k-step of the tensor-core gemm.
const TC_K_STEP: usize = 32;
/// Threads per block of `gemm_tc_reduce`.
const REDUCE_THREADS: u32 = 256;

/// The tensor-core gemm's split over the sum on a GPU of `sms` SMs, `(slices,
/// k-steps a slice)`: when the `[m, n]` tiles give at most `sms / 2` CTAs, the
/// sum is cut into at most `sms / ctas` slices (one CTA per SM: by the
/// performance model a second wave costs more than the split gains), at most
/// `TF_GEMM_TC_MAX_SPLITS`, each of at least `TF_GEMM_TC_MIN_SPLIT_TILES`
/// k-steps, and so few that the partials written and read again stay within
/// the operands' bytes (`(slices − 1)·m·n·4 <= (m + n)·k·2`). `(1, all)` when
/// it does not pay. The bits depend on the SM count (the same on every run of
/// one GPU model).
pub(crate) fn k_split(sms: usize, m: usize, n: usize, k: usize) -> (usize, usize) {
    let ctas = (m.div_ceil(TC_TILE) * n.div_ceil(TC_TILE)).max(1);
    let k_tiles = k.div_ceil(TC_K_STEP);
    if 2 * ctas > sms {
        return (1, k_tiles);
    }
    let traffic = 1 + (m + n).saturating_mul(k) / (2 * m * n).max(1);
    let most = (k_tiles / sys::TF_GEMM_TC_MIN_SPLIT_TILES as usize).min(sys::TF_GEMM_TC_MAX_SPLITS as usize);
    let splits = (sms / ctas).min(most).min(traffic).max(1);
    if splits == 1 {
        return (1, k_tiles);
    }
    let per = k_tiles.div_ceil(splits);
    (k_tiles.div_ceil(per), per)
}

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

/// The tensor-core kernel for 16-bit `T` and the operands' layouts, if they
/// allow it: each row-wise (`cs = 1`, "r") or column-wise (`rs = 1`, "c"), its
/// other stride a multiple of 8 elements, its start 16-byte aligned.
fn tc_kernel<TA: DType, TB: DType>(a: &Operand, b: &Operand) -> Option<&'static str> {
    let layout = |o: &Operand| -> Option<bool> {
        if o.addr % 16 != 0 {
            return None;
        }
        if o.cs == 1 && o.rs % 8 == 0 {
            Some(true)
        } else if o.rs == 1 && o.cs % 8 == 0 {
            Some(false)
        } else {
            None
        }
    };
    let (ra, rb) = (layout(a)?, layout(b)?);
    let names: [&'static str; 4] = match (TA::NAME, TB::NAME) {
        ("f16", "f16") => ["gemm_tc_f16_rr", "gemm_tc_f16_rc", "gemm_tc_f16_cr", "gemm_tc_f16_cc"],
        ("bf16", "bf16") => ["gemm_tc_bf16_rr", "gemm_tc_bf16_rc", "gemm_tc_bf16_cr", "gemm_tc_bf16_cc"],
        _ => return None,
    };
    Some(names[usize::from(!ra) * 2 + usize::from(!rb)])
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

/// `C [m, n] = A·Bᵀ` in f32 (see `tf_gemm_params`), on tensor cores where the
/// types and layouts allow it (see the module's header); nothing to do for an
/// empty C.
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
    let tc = tc_kernel::<TA, TB>(&a, &b);
    let (splits, per) = if tc.is_some() { k_split(dev.sm_count() as usize, m, n, k) } else { (1, 0) };
    // split over the sum: slices 1.. write [m, n] f32 partials, added to C in
    // slice order by gemm_tc_reduce
    let mut scratch = match splits {
        1 => None,
        _ => Some(dev.output::<f32>(&[crate::error::checked_product(op, &[splits - 1, m, n])?])?),
    };
    let mut sv = scratch.as_mut().map(|t| t.view_mut());
    let sp = sv.as_mut().map(|v| v.ptr_mut());
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
        partial: sp.as_ref().map_or(0, |p| p.addr),
        k_splits: to_i32(op, "k slices", splits)?,
        split_k_tiles: to_i32(op, "k-steps a slice", per)?,
    };
    let (name, geometry) = match tc {
        Some(name) => {
            let z = to_u32(op, "k slices", splits)?;
            let grid = [to_u32(op, "grid x", n.div_ceil(TC_TILE))?, to_u32(op, "grid y", m.div_ceil(TC_TILE))?, z];
            (name, Geometry { grid, block: [128, 1, 1], smem: sys::TF_GEMM_TC_SMEM })
        }
        None => {
            let grid = [to_u32(op, "grid x", n.div_ceil(TILE))?, to_u32(op, "grid y", m.div_ceil(TILE))?, 1];
            (kernel::<TA, TB>(), Geometry { grid, block: [TILE as u32, TILE as u32, 1], smem: 0 })
        }
    };
    let blocks = to_u32(op, "reduce blocks", (m * n).div_ceil(REDUCE_THREADS as usize).min(4096))?;
    let reduce = Geometry { grid: [blocks, 1, 1], block: [REDUCE_THREADS, 1, 1], smem: 0 };
    // SAFETY: the caller's contract (operands and C in bounds at these strides);
    // tc_kernel admitted the tensor-core kernel's alignment preconditions; the
    // scratch holds the (splits - 1)·m·n partials the slices write and the
    // reduce reads, and lives (with its pointer guard) until both launches have
    // run (stream-ordered or synchronous).
    unsafe {
        dev.launch(op, name, &geometry, &params)?;
        if splits > 1 {
            dev.launch(op, "gemm_tc_reduce", &reduce, &params)?;
        }
    }
    drop(sp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// A stored operand: `rows × k` logical elements, row-wise (padded row
    /// stride) or column-wise (the transpose stored with a padded stride), the
    /// padding NaN so that a read outside the operand poisons C.
    struct Stored<T> {
        data: Vec<T>,
        rowwise: bool,
        ld: usize,
    }

    fn stored<T: DType>(vals: &[f32], rows: usize, k: usize, rowwise: bool) -> Stored<T> {
        let ld = if rowwise { k.next_multiple_of(8) + 8 } else { rows.next_multiple_of(8) + 8 };
        let outer = if rowwise { rows } else { k };
        let mut data = vec![T::from_f32(f32::NAN); outer.max(1) * ld];
        for i in 0..rows {
            for l in 0..k {
                let at = if rowwise { i * ld + l } else { i + l * ld };
                data[at] = T::from_f32(vals[i * k + l]);
            }
        }
        Stored { data, rowwise, ld }
    }

    /// Every layout pair of the tensor-core gemm against an f64 product of the
    /// same 16-bit values: m, n and k run through every residue mod 8, k = 0
    /// (zeros), k past the 4-stage ring, two CTAs in m and in n, a CTA with no
    /// row residue; C is poisoned, the operands' padding is NaN.
    fn layouts_match_f64<T: DType>() {
        let dev = Device::emulator();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        // r = 6: [254, 194, 158], whose first CTA has all 128 rows of A and of B (the
        // kernel's plain-copy loop) over 4 full k-tiles and a partial one
        let (a_r, b_r, c_r) = ([1, 16, 2, 17, 1, 8, 31, 3], [17, 0, 2, 9, 16, 1, 24, 5], [0, 1, 4, 19, 2, 13, 19, 8]);
        // then sums split over the grid's z (k_split, the emulator's 132 SMs): 8
        // slices of 4 k-steps (the last step partial), and 2 slices over 2 x 2 CTAs
        let split = [(40, 24, 1000), (200, 136, 300)];
        assert_eq!(dev.sm_count(), 132);
        assert_eq!(k_split(132, 40, 24, 1000), (8, 4));
        assert_eq!(k_split(132, 200, 136, 300), (2, 5));
        let shapes = (0..8).map(|r| (8 * a_r[r] + r, 8 * b_r[r] + (3 * r) % 8, 8 * c_r[r] + (5 * r) % 8));
        for (m, n, k) in shapes.chain(split) {
            // the 16-bit values, as f32 and f64
            let av: Vec<f32> = (0..m * k).map(|_| T::from_f32(rand()).to_f32()).collect();
            let bv: Vec<f32> = (0..n * k).map(|_| T::from_f32(rand()).to_f32()).collect();
            let mut want = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] = (0..k).map(|l| f64::from(av[i * k + l]) * f64::from(bv[j * k + l])).sum();
                }
            }
            for (ra, rb) in [(true, true), (true, false), (false, true), (false, false)] {
                let (sa, sb) = (stored::<T>(&av, m, k, ra), stored::<T>(&bv, n, k, rb));
                let operand = |s: &Stored<T>, addr: u64| {
                    if s.rowwise {
                        Operand::rows(addr, s.ld)
                    } else {
                        Operand::cols(addr, s.ld)
                    }
                };
                let ta = dev.upload(&sa.data, &[sa.data.len()]).unwrap();
                let tb = dev.upload(&sb.data, &[sb.data.len()]).unwrap();
                let mut c = dev.upload(&vec![f32::NAN; m * n], &[m * n]).unwrap();
                let (pa, pb) = (ta.view().ptr(), tb.view().ptr());
                let (oa, ob) = (operand(&sa, pa.addr), operand(&sb, pb.addr));
                assert!(tc_kernel::<T, T>(&oa, &ob).is_some(), "the tensor-core kernel takes these operands");
                let mut cv = c.view_mut();
                let pc = cv.ptr_mut();
                // SAFETY: a and b hold m × k and n × k elements at these strides
                // (stored() laid them out so), c is [m, n] f32; all outlive the
                // synchronous emulator launch.
                unsafe { gemm::<T, T>("test", &dev, (m, n, k), oa, ob, pc.addr).unwrap() };
                drop((pa, pb, pc));
                let got = c.to_vec().unwrap();
                let what = format!(
                    "{} {}{} [m {m}, n {n}, k {k}]",
                    T::NAME,
                    if ra { 'r' } else { 'c' },
                    if rb { 'r' } else { 'c' }
                );
                let (mut num, mut den) = (0f64, 0f64);
                for (g, w) in got.iter().zip(&want) {
                    assert!(g.is_finite(), "{what}: a non-finite element (unwritten or a read outside A / B)");
                    num += (f64::from(*g) - w).powi(2);
                    den += w * w;
                }
                if k == 0 {
                    assert!(got.iter().all(|&g| g == 0.0), "{what}: k = 0 gives zeros");
                } else {
                    let rel = (num / den).sqrt();
                    assert!(rel <= 1e-5, "{what}: relative error {rel:.3e}");
                }
            }
        }
    }

    #[test]
    fn tensor_core_layouts_match_f64_f16() {
        layouts_match_f64::<f16>();
    }

    #[test]
    fn tensor_core_layouts_match_f64_bf16() {
        layouts_match_f64::<bf16>();
    }

    #[test]
    fn split_rule() {
        // enough CTAs, or too short a sum: no split
        assert_eq!(k_split(132, 2048, 2048, 4096), (1, 128));
        assert_eq!(k_split(132, 128, 128, 100), (1, 4));
        // 768 x 768 (36 CTAs) over 2048 tokens: 3 slices (108 CTAs) of 22 k-steps,
        // on 132 SMs and on 108; the partials' bytes cap it at 3 (1 + 2.67)
        assert_eq!(k_split(132, 768, 768, 2048), (3, 22));
        assert_eq!(k_split(108, 768, 768, 2048), (3, 22));
        // 66 CTAs (sms / 2): 2 slices; 67: none
        assert_eq!(k_split(132, 128 * 66, 128, 4096), (2, 64));
        assert_eq!(k_split(132, 128 * 67, 128, 4096), (1, 128));
        // one CTA, a long sum: at most 16 slices
        assert_eq!(k_split(132, 128, 128, 4096), (16, 8));
        assert_eq!(k_split(132, 64, 64, 1 << 20), (16, 2048));
        // a wide output over a short sum: the partials' bytes allow no split
        assert_eq!(k_split(132, 1024, 1024, 512), (1, 16));
        // every slice has at least 4 k-steps, and the slices cover the sum
        for (m, n, k) in [(1, 1, 129), (300, 20, 777), (128, 1024, 5000), (8, 8, 32 * 17)] {
            let (s, per) = k_split(132, m, n, k);
            let tiles = k.div_ceil(TC_K_STEP);
            assert!(s == 1 || per >= 4, "[{m}, {n}, {k}]: {s} x {per}");
            assert!(s * per >= tiles && (s - 1) * per < tiles, "[{m}, {n}, {k}]: {s} x {per} for {tiles}");
        }
    }

    #[test]
    fn layouts_the_tensor_cores_refuse() {
        let ok = Operand::rows(256, 16);
        assert_eq!(tc_kernel::<f16, f16>(&ok, &Operand::cols(512, 8)), Some("gemm_tc_f16_rc"));
        assert_eq!(tc_kernel::<bf16, bf16>(&Operand::cols(0, 24), &ok), Some("gemm_tc_bf16_cr"));
        assert_eq!(tc_kernel::<f16, f16>(&ok, &Operand::rows(256 + 8, 16)), None, "unaligned start");
        assert_eq!(tc_kernel::<f16, f16>(&ok, &Operand::rows(256, 12)), None, "stride not a multiple of 8");
        assert_eq!(tc_kernel::<f16, f16>(&ok, &Operand { addr: 256, rs: 16, cs: 2 }), None, "no unit stride");
        assert_eq!(tc_kernel::<f32, f16>(&ok, &ok), None, "f32 operands");
        assert_eq!(tc_kernel::<f32, f32>(&ok, &ok), None, "f32 operands");
    }
}
