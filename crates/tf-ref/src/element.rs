//! Storage element types and the row-major matrix views the reference works on.

use crate::{Error, Result};
use half::{bf16, f16};

/// A storage element type (f32, f64, f16, bf16). The reference converts every
/// element to f64 (exact for all four types) and computes in f64.
pub trait Element: Copy + Send + Sync + 'static {
    /// Short type name: `"f32"`, `"f64"`, `"f16"`, `"bf16"`.
    const NAME: &'static str;
    /// Exact widening conversion to f64.
    fn to_f64(self) -> f64;
    /// Conversion from f64, correctly rounded to nearest, ties to even
    /// (overflow gives ±inf, NaN stays NaN).
    fn from_f64(v: f64) -> Self;
}

impl Element for f64 {
    const NAME: &'static str = "f64";
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> Self {
        // Rust's `as` between floats rounds to nearest, ties to even.
        v as f32
    }
}

impl Element for f16 {
    const NAME: &'static str = "f16";
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        // `half`'s own f64 -> f16 path drops the low 32 mantissa bits before
        // rounding, which misrounds values just above a tie. Round to odd into
        // f32 first (24 >= 11 + 2 bits), then to nearest-even: a single correct rounding.
        f16::from_f32(f64_to_f32_round_to_odd(v))
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        // Same reasoning as for f16: 24 >= 8 + 2 bits, and bf16 shares f32's
        // exponent range (subnormals included), so round-to-odd then RNE is exact.
        bf16::from_f32(f64_to_f32_round_to_odd(v))
    }
}

/// Rounds `v` to f32 with "round to odd": exact values are kept, inexact ones
/// are truncated toward zero and get their last mantissa bit set. A second
/// rounding to nearest-even into a format with at least 2 fewer significand
/// bits then equals a direct correct rounding of `v`.
fn f64_to_f32_round_to_odd(v: f64) -> f32 {
    if !v.is_finite() {
        return v as f32;
    }
    let nearest = v as f32;
    if f64::from(nearest) == v {
        return nearest;
    }
    let mut bits = nearest.to_bits();
    if f64::from(nearest).abs() > v.abs() {
        // Rounded away from zero (possibly to inf): step one ulp back toward zero.
        // The magnitude is non-zero here, so this never borrows into the sign bit.
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}

/// A borrowed row-major, contiguous matrix: element `(r, c)` is `data[r * cols + c]`.
///
/// The fields are public; every function of this crate re-checks
/// `data.len() == rows * cols`, so a hand-built inconsistent view yields an error.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    /// The `rows * cols` elements, row after row.
    pub data: &'a [T],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns (the row length).
    pub cols: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A view of `data` as a `[rows, cols]` matrix; an error if
    /// `data.len() != rows * cols` (or if that product overflows).
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        let m = MatRef { data, rows, cols };
        m.check("MatRef::new", "data")?;
        Ok(m)
    }

    /// Checks the length invariant; `name` is the operand's name in messages.
    pub(crate) fn check(&self, op: &'static str, name: &str) -> Result<()> {
        let want = self.rows.checked_mul(self.cols).ok_or_else(|| Error::Shape {
            op,
            msg: format!("{name} is [{}, {}]: the element count overflows usize", self.rows, self.cols),
        })?;
        if self.data.len() != want {
            return Err(Error::Shape {
                op,
                msg: format!(
                    "{name} is [{}, {}] ({want} elements) but its buffer holds {} elements",
                    self.rows,
                    self.cols,
                    self.data.len()
                ),
            });
        }
        Ok(())
    }

    /// The shape as `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }
}

impl<T: Element> MatRef<'_, T> {
    /// Row `r` converted to f64 (callers have checked the length invariant and `r < rows`).
    pub(crate) fn row_f64(&self, r: usize) -> Vec<f64> {
        self.data[r * self.cols..(r + 1) * self.cols].iter().map(|v| v.to_f64()).collect()
    }
}

/// An owned row-major f64 matrix: the output type of the reference ops.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    /// The `rows * cols` elements, row after row.
    pub data: Vec<f64>,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
}

impl Mat {
    /// Element `(r, c)`, or `None` if out of range.
    pub fn get(&self, r: usize, c: usize) -> Option<f64> {
        if r < self.rows && c < self.cols {
            self.data.get(r * self.cols + c).copied()
        } else {
            None
        }
    }

    /// Row `r` as a slice, or `None` if out of range.
    pub fn row(&self, r: usize) -> Option<&[f64]> {
        if r < self.rows {
            self.data.get(r * self.cols..(r + 1) * self.cols)
        } else {
            None
        }
    }

    /// The shape as `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// A borrowed view, to feed one op's output into another.
    pub fn view(&self) -> MatRef<'_, f64> {
        MatRef { data: &self.data, rows: self.rows, cols: self.cols }
    }

    /// The elements rounded (to nearest, ties to even) to storage type `T`.
    pub fn to_vec<T: Element>(&self) -> Vec<T> {
        self.data.iter().map(|&v| T::from_f64(v)).collect()
    }
}
