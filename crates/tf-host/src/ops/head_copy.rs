//! Bit-exact copies of `[t, heads, width]` blocks (`head_copy_*` in
//! kernels/block.cu): the model's KV-cache append and its head-dim padding
//! copies. The destination row may come from a [`DevCounter`] read at run time,
//! so that a captured decode step appends where the cache ends.

use tf_kernels::sys;

use crate::device::{Device, KernelParams};
use crate::dtype::DType;
use crate::error::{to_i64, Error, Result};
use crate::graph::DevCounter;
use crate::ops::block::rows_geometry;
use crate::tensor::{check_disjoint, View, ViewMut};

// SAFETY: bindgen-generated repr(C) plain-data struct taken by value by head_copy_*.
unsafe impl KernelParams for sys::tf_head_copy_params {}

const OP: &str = "head_copy";

fn kernel_name<T: DType>() -> &'static str {
    match T::CODE {
        sys::TF_DTYPE_F32 => "head_copy_f32",
        sys::TF_DTYPE_F16 => "head_copy_f16",
        _ => "head_copy_bf16",
    }
}

/// `dst[row0 + i, h, c] = src[i, h, c]` for one or two (src, dst) pairs in one
/// launch: every src `[t, heads, width]` and every dst `[rows, heads, width]`,
/// with the same strides within each side and a contiguous last axis. `row0` is
/// `dst_row0`, plus the value of `counter` when given (then `dst_row0 +
/// counter.max + t <= rows`, so every row it can name is inside dst).
pub(crate) fn head_copy<T: DType>(
    dev: &Device,
    pairs: &mut [(View<'_, T>, ViewMut<'_, T>)],
    dst_row0: usize,
    counter: Option<DevCounter>,
) -> Result<()> {
    let err = |msg: String| Error::Shape { op: OP, msg };
    let (Some((s0, d0)), 1..=2) = (pairs.first(), pairs.len()) else {
        return Err(Error::InvalidArgument { op: OP, msg: format!("1 or 2 pairs, got {}", pairs.len()) });
    };
    let (&[t, heads, width], &[rows, dh, dw]) = (s0.shape(), d0.shape()) else {
        return Err(err(format!("src and dst must be 3-D, got {:?} and {:?}", s0.shape(), d0.shape())));
    };
    if (dh, dw) != (heads, width) {
        return Err(err(format!("src is {:?} but dst is {:?}: heads and width must agree", s0.shape(), d0.shape())));
    }
    let (ss, ds) = (s0.strides().to_vec(), d0.strides().to_vec());
    for (s, d) in pairs.iter() {
        if !s.device().same(dev) || !d.device().same(dev) {
            return Err(Error::DeviceMismatch { op: OP });
        }
        if s.shape() != s0.shape() || d.shape() != d0.shape() || s.strides() != ss || d.strides() != ds {
            return Err(err("every pair must have the same shapes and strides".into()));
        }
        if ss[2] != 1 || ds[2] != 1 {
            return Err(err(format!("the last axis must be contiguous: strides {ss:?} and {ds:?}")));
        }
        check_disjoint(OP, "dst", d)?;
    }
    let top = dst_row0.checked_add(counter.map_or(0, |c| c.max)).and_then(|r| r.checked_add(t));
    if top.is_none_or(|top| top > rows) {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!(
                "{t} rows from row {dst_row0} (+ up to {}) pass the destination's {rows}",
                counter.map_or(0, |c| c.max)
            ),
        });
    }
    let items = pairs.len().checked_mul(t).and_then(|n| n.checked_mul(heads)).filter(|&n| n < i32::MAX as usize);
    let Some(items) = items else {
        return Err(Error::SizeOverflow { op: OP, msg: format!("{} x {t} x {heads} items pass 2^31", pairs.len()) });
    };
    if items == 0 || width == 0 {
        return Ok(());
    }
    let geometry = rows_geometry(dev, OP, items)?;
    let i = |what: &str, x: usize| to_i64(OP, what, x);
    let mut params = sys::tf_head_copy_params {
        src: [0; 2],
        dst: [0; 2],
        row0_dev: counter.map_or(0, |c| c.addr),
        dst_row0: i("dst_row0", dst_row0)?,
        dst_rows: i("rows", rows)?,
        t: i("t", t)?,
        heads: i("heads", heads)?,
        width: i("width", width)?,
        src_row_stride: i("stride", ss[0])?,
        src_head_stride: i("stride", ss[1])?,
        dst_row_stride: i("stride", ds[0])?,
        dst_head_stride: i("stride", ds[1])?,
        pairs: pairs.len() as i32,
        reserved: 0,
    };
    let n = pairs.len();
    let [(s_a, d_a), rest @ ..] = pairs else {
        return Err(Error::InvalidArgument { op: OP, msg: "internal: no pair".into() });
    };
    let (sp_a, dp_a) = (s_a.ptr(), d_a.ptr_mut());
    params.src[0] = sp_a.addr;
    params.dst[0] = dp_a.addr;
    let second = rest.first_mut().map(|(s, d)| (s.ptr(), d.ptr_mut()));
    if let Some((s, d)) = &second {
        params.src[1] = s.addr;
        params.dst[1] = d.addr;
    }
    debug_assert_eq!(n, 1 + usize::from(second.is_some()));
    // SAFETY: every src view is [t, heads, width] and every dst [rows, heads,
    // width] on this device with the strides in params and a contiguous last
    // axis, so element (i, h, c) of each lies inside its tensor; the rows written
    // are dst_row0 + (counter value, clamped by the kernel's dst_rows test to the
    // destination) + i, and dst_row0 + counter.max + t <= rows was checked; dst
    // views are mutable borrows (no aliasing with src) that do not overlap
    // themselves; a counter is one int32 on this device (DevCounter's contract);
    // the borrows and pointer guards outlive the launch.
    let r = unsafe { dev.launch(OP, kernel_name::<T>(), &geometry, &params) };
    drop((sp_a, dp_a, second));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    /// Random-ish distinct values (no zeros).
    fn data(n: usize, salt: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ salt) as f32 / 4.0e9 + 1.0).collect()
    }

    /// Copies [t, heads, width] from a [t, heads * sp] buffer into rows row0.. of
    /// a [rows, heads * dp] buffer filled with a sentinel, and compares with the
    /// copy done here: every width residue of the 16-byte chunk (4 f32, 8 bf16),
    /// unaligned head pitches (the scalar path), and a device counter.
    fn check<T: DType>(t: usize, heads: usize, width: usize, sp: usize, dp: usize, row0: usize, add: i32) {
        let dev = Device::emulator();
        let rows = 9;
        let src: Vec<T> = crate::dtype::from_f32_vec(&data(t * heads * sp, 7));
        let src_t = dev.upload(&src, &[t * heads * sp]).unwrap();
        let dst0: Vec<T> = crate::dtype::from_f32_vec(&vec![-3.0; rows * heads * dp]);
        let mut dst_t = dev.upload(&dst0, &[rows * heads * dp]).unwrap();
        let mut counter = dev.upload(&[f32::from_bits(add as u32)], &[1]).unwrap();
        let c = DevCounter { addr: counter.view_mut().ptr_mut().addr, max: 4 };
        let sv = src_t.strided(0, &[t, heads, width], &[heads * sp, sp, 1]).unwrap();
        let dv = dst_t.strided_mut(0, &[rows, heads, width], &[heads * dp, dp, 1]).unwrap();
        head_copy(&dev, &mut [(sv, dv)], row0, Some(c)).unwrap();
        let got = dst_t.to_vec().unwrap();
        let mut want = dst0.clone();
        let r0 = row0 + add.clamp(0, 4) as usize;
        for i in 0..t {
            for h in 0..heads {
                for k in 0..width {
                    want[(r0 + i) * heads * dp + h * dp + k] = src[i * heads * sp + h * sp + k];
                }
            }
        }
        let (g, w): (Vec<f32>, Vec<f32>) = (crate::dtype::to_f32_vec(&got), crate::dtype::to_f32_vec(&want));
        assert_eq!(g, w, "{} t {t} heads {heads} width {width} pitches {sp}/{dp} row0 {row0} + {add}", T::NAME);
        drop::<Tensor<f32>>(counter);
    }

    #[test]
    fn copies_every_width_residue_at_the_counted_row() {
        for width in 1..=17 {
            check::<f32>(2, 3, width, 24, 32, 1, 2);
            check::<half::bf16>(3, 2, width, 24, 32, 0, 4);
        }
        // unaligned pitches: element by element
        check::<f32>(2, 3, 8, 9, 11, 2, 1);
        check::<half::f16>(2, 2, 16, 17, 16, 0, 3);
    }

    #[test]
    fn refuses_rows_past_the_destination() {
        let dev = Device::emulator();
        let src = dev.zeros::<f32>(&[2, 1, 4]).unwrap();
        let mut dst = dev.zeros::<f32>(&[4, 1, 4]).unwrap();
        let c = DevCounter { addr: 0, max: 2 };
        let e = head_copy(&dev, &mut [(src.view(), dst.view_mut())], 1, Some(c)).unwrap_err();
        assert!(e.to_string().contains("pass the destination"), "{e}");
        head_copy(&dev, &mut [(src.view(), dst.view_mut())], 2, None).unwrap();
    }
}
