//! Pattention (token-parameter attention) and the dense linear baseline.

use crate::{checked_mul, gelu, zeros, Element, Error, Mat, MatRef, Result};
use std::fmt;
use std::str::FromStr;

/// The row normalisation Θ of Pattention (the "modified softmax"), applied to
/// each row `A_i` of `A = X·K_Pᵀ`. `n_ref` is the reference token count
/// (the current token count `n` unless pinned), `eps` the optional norm epsilon.
///
/// Non-finite values follow the official formulas in IEEE arithmetic, with one
/// deliberate exception (an all-zero row of an L2 norm, below):
/// - a NaN anywhere in `A_i` makes its norm NaN, so the whole row `S_i` is NaN;
/// - an infinite `A_ij` makes `‖A_i‖₂` infinite: `S_ij = gelu(±∞/∞) = NaN` and the
///   row's finite entries become `gelu(0) = 0` (l2_norm_gelu);
/// - `gelu(−∞) = NaN` (`0.5·(−∞)·(1 + erf(−∞)) = −∞·0`), `gelu(+∞) = +∞`, so a
///   `−∞` score makes a gelu_l2_norm row all NaN and a `+∞` one gives NaN there and 0
///   elsewhere;
/// - softmax: NaN or `+∞` in the row gives an all-NaN row, `−∞` gives `S_ij = 0`
///   (the rest of the row stays finite), and a row of only `−∞` is all NaN (`0/0`);
/// - huge finite scores never overflow: the norms are taken of the row scaled by
///   its largest magnitude, softmax subtracts the row maximum.
///
/// In `Y = S·V_P` the usual products follow: a NaN in `S_ij` or `V_P[j, c]` makes
/// `Y_ic` NaN, and an infinite `V_P[j, c]` gives `±∞` (or NaN where `S_ij = 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Norm {
    /// `S_ij = gelu(A_ij / (‖A_i‖₂ + eps) · sqrt(n_ref))`: the official default.
    /// A zero denominator gives an all-zero row (the official formula would give
    /// `0/0 = NaN`; this is the one deliberate deviation).
    #[default]
    L2NormGelu,
    /// `G = gelu(A)`, `S_ij = G_ij / (‖G_i‖₂ + eps) · sqrt(n_ref)`.
    /// A zero denominator gives an all-zero row (as for `L2NormGelu`).
    GeluL2Norm,
    /// `S_ij = n_ref · exp(A_ij − max_k A_ik) / Σ_k exp(A_ik − max_k A_ik)`, the
    /// official `exp(A) / ‖exp(A)‖₁ · n_ref` without its overflow; `eps` is ignored.
    Softmax,
}

impl Norm {
    /// All variants, in declaration order.
    pub const ALL: [Norm; 3] = [Norm::L2NormGelu, Norm::GeluL2Norm, Norm::Softmax];

    /// The official name: `"l2_norm_gelu"`, `"gelu_l2_norm"` or `"softmax"`.
    pub fn name(self) -> &'static str {
        match self {
            Norm::L2NormGelu => "l2_norm_gelu",
            Norm::GeluL2Norm => "gelu_l2_norm",
            Norm::Softmax => "softmax",
        }
    }
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Norm {
    type Err = Error;

    /// Parses an official name (as returned by [`Norm::name`]).
    fn from_str(s: &str) -> Result<Self> {
        Norm::ALL.into_iter().find(|n| n.name() == s).ok_or_else(|| Error::InvalidArgument {
            op: "Norm::from_str",
            msg: format!("unknown norm {s:?}: expected one of \"l2_norm_gelu\", \"gelu_l2_norm\", \"softmax\""),
        })
    }
}

/// Options of [`pattention`]. The default is the official configuration:
/// `l2_norm_gelu`, `n_ref` = current token count, no epsilon.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PattentionOpts {
    /// The row normalisation Θ.
    pub norm: Norm,
    /// Pinned reference token count for `sqrt(n_ref)` / `n_ref·`; `None` means the
    /// current token count `n` (= `k_p.rows`). `Some(0)` is an error.
    pub n_ref: Option<usize>,
    /// Added to the row norm of the L2 variants (the JAX port uses 1e-5); must be
    /// finite and ≥ 0. Ignored by `softmax`.
    pub eps: f64,
}

const OP: &str = "pattention";

/// Validates `x`, `k_p` and the options; returns `n_ref` as f64.
fn check_scores<T>(x: &MatRef<'_, T>, k_p: &MatRef<'_, T>, opts: &PattentionOpts) -> Result<f64> {
    x.check(OP, "x")?;
    k_p.check(OP, "k_p")?;
    if x.cols != k_p.cols {
        return Err(Error::Shape {
            op: OP,
            msg: format!("x is [{}, {}] but k_p is [{}, {}]: d_in differs", x.rows, x.cols, k_p.rows, k_p.cols),
        });
    }
    if k_p.rows == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("k_p is [0, {}]: at least one parameter token is needed", k_p.cols),
        });
    }
    check_opts(k_p.rows, opts)
}

/// Validates `n` (the token count) and the options; returns `n_ref` as f64.
fn check_opts(n: usize, opts: &PattentionOpts) -> Result<f64> {
    if n == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: "no parameter tokens (n = 0): at least one is needed".to_string(),
        });
    }
    if !(opts.eps.is_finite() && opts.eps >= 0.0) {
        return Err(Error::InvalidArgument { op: OP, msg: format!("eps must be finite and >= 0, got {}", opts.eps) });
    }
    let n_ref = match opts.n_ref {
        None => n,
        Some(0) => return Err(Error::InvalidArgument { op: OP, msg: "n_ref must be >= 1, got 0".to_string() }),
        Some(r) => r,
    };
    // usize -> f64 is exact below 2^53, far beyond any real token count.
    Ok(n_ref as f64)
}

/// The larger of `a` and `b`, NaN if either is NaN (`f64::max` would drop it).
fn max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Euclidean norm of `v`, scaled by its largest magnitude first so that it
/// neither overflows nor underflows for extreme finite inputs. NaN if `v` holds
/// a NaN, `+∞` if it holds an infinity (and no NaN).
pub(crate) fn l2_norm(v: &[f64]) -> f64 {
    let m = v.iter().fold(0.0_f64, |m, a| max_nan(m, a.abs()));
    if m == 0.0 || !m.is_finite() {
        return m;
    }
    m * v.iter().map(|a| (a / m) * (a / m)).sum::<f64>().sqrt()
}

/// Applies Θ in place to one row `a` of `A` (IEEE semantics: see [`Norm`]).
fn normalise_row(a: &mut [f64], norm: Norm, n_ref: f64, eps: f64) {
    match norm {
        Norm::L2NormGelu => {
            let denom = l2_norm(a) + eps;
            if denom == 0.0 {
                a.fill(0.0);
            } else {
                let s = n_ref.sqrt();
                a.iter_mut().for_each(|v| *v = gelu(*v / denom * s));
            }
        }
        Norm::GeluL2Norm => {
            a.iter_mut().for_each(|v| *v = gelu(*v));
            let denom = l2_norm(a) + eps;
            if denom == 0.0 {
                a.fill(0.0);
            } else {
                let s = n_ref.sqrt();
                a.iter_mut().for_each(|v| *v = *v / denom * s);
            }
        }
        Norm::Softmax => {
            let max = a.iter().fold(f64::NEG_INFINITY, |m, &v| max_nan(m, v));
            a.iter_mut().for_each(|v| *v = (*v - max).exp());
            let sum: f64 = a.iter().sum();
            a.iter_mut().for_each(|v| *v = *v / sum * n_ref);
        }
    }
}

/// Θ applied to the rows of a given score matrix `a` `[T, n]` (the middle step of
/// the unfused pipeline `A = X·K_Pᵀ`, `S = Θ(A)`, `Y = S·V_P`), shape `[T, n]`.
/// `n_ref` defaults to `n = a.cols`; errors as for [`pattention_scores`] (`n = 0`,
/// `n_ref = Some(0)`, `eps` negative or not finite).
pub fn pattention_norm<T: Element>(a: MatRef<'_, T>, opts: &PattentionOpts) -> Result<Mat> {
    a.check(OP, "a")?;
    let n_ref = check_opts(a.cols, opts)?;
    let (t, n) = (a.rows, a.cols);
    let mut s = zeros(OP, checked_mul(OP, "scores [T, n]", t, n)?)?;
    for i in 0..t {
        let row = &mut s[i * n..(i + 1) * n];
        row.copy_from_slice(&a.row_f64(i));
        normalise_row(row, opts.norm, n_ref, opts.eps);
    }
    Ok(Mat { data: s, rows: t, cols: n })
}

/// The normalised scores `S = Θ(X·K_Pᵀ)`, shape `[T, n]`.
///
/// `x` is `[T, d_in]`, `k_p` is `[n, d_in]` with `n ≥ 1`; `T = 0` gives an empty
/// result. Errors: mismatched shapes (the message names both), `n = 0`,
/// `n_ref = Some(0)`, `eps` negative or not finite.
pub fn pattention_scores<T: Element>(x: MatRef<'_, T>, k_p: MatRef<'_, T>, opts: &PattentionOpts) -> Result<Mat> {
    let n_ref = check_scores(&x, &k_p, opts)?;
    let (t, n) = (x.rows, k_p.rows);
    let mut s = zeros(OP, checked_mul(OP, "scores [T, n]", t, n)?)?;
    let keys: Vec<Vec<f64>> = (0..n).map(|j| k_p.row_f64(j)).collect();
    for i in 0..t {
        let xi = x.row_f64(i);
        let row = &mut s[i * n..(i + 1) * n];
        for (a, kj) in row.iter_mut().zip(&keys) {
            *a = xi.iter().zip(kj).map(|(p, q)| p * q).sum();
        }
        normalise_row(row, opts.norm, n_ref, opts.eps);
    }
    Ok(Mat { data: s, rows: t, cols: n })
}

/// Pattention forward: `Y = Θ(X·K_Pᵀ) · V_P`.
///
/// `x` is `[T, d_in]`, `k_p` is `[n, d_in]`, `v_p` is `[n, d_out]`; the result is
/// `[T, d_out]`. Accumulation is in f64 throughout. See [`Norm`] for Θ and
/// [`PattentionOpts`] for `n_ref` and `eps`; errors as for [`pattention_scores`],
/// plus `k_p` and `v_p` disagreeing on `n`.
pub fn pattention<T: Element>(
    x: MatRef<'_, T>,
    k_p: MatRef<'_, T>,
    v_p: MatRef<'_, T>,
    opts: &PattentionOpts,
) -> Result<Mat> {
    v_p.check(OP, "v_p")?;
    if k_p.rows != v_p.rows {
        return Err(Error::Shape {
            op: OP,
            msg: format!("k_p is [{}, {}] but v_p is [{}, {}]: n differs", k_p.rows, k_p.cols, v_p.rows, v_p.cols),
        });
    }
    let s = pattention_scores(x, k_p, opts)?;
    let (t, n, d_out) = (s.rows, s.cols, v_p.cols);
    let mut y = zeros(OP, checked_mul(OP, "output [T, d_out]", t, d_out)?)?;
    let values: Vec<Vec<f64>> = (0..n).map(|j| v_p.row_f64(j)).collect();
    for i in 0..t {
        let yi = &mut y[i * d_out..(i + 1) * d_out];
        for (&sij, vj) in s.data[i * n..(i + 1) * n].iter().zip(&values) {
            for (yc, &vc) in yi.iter_mut().zip(vj) {
                *yc += sij * vc;
            }
        }
    }
    Ok(Mat { data: y, rows: t, cols: d_out })
}

/// The dense baseline `y = x·wᵀ` (PyTorch `F.linear`, no bias): `x` is
/// `[T, d_in]`, `w` is `[d_out, d_in]`, the result `[T, d_out]`, accumulated in f64.
pub fn linear<T: Element>(x: MatRef<'_, T>, w: MatRef<'_, T>) -> Result<Mat> {
    const OP: &str = "linear";
    x.check(OP, "x")?;
    w.check(OP, "w")?;
    if x.cols != w.cols {
        return Err(Error::Shape {
            op: OP,
            msg: format!(
                "x is [{}, {}] but w is [{}, {}]: d_in differs (w is [d_out, d_in])",
                x.rows, x.cols, w.rows, w.cols
            ),
        });
    }
    let (t, d_out) = (x.rows, w.rows);
    let mut y = zeros(OP, checked_mul(OP, "output [T, d_out]", t, d_out)?)?;
    let weights: Vec<Vec<f64>> = (0..d_out).map(|o| w.row_f64(o)).collect();
    for i in 0..t {
        let xi = x.row_f64(i);
        for (yo, wo) in y[i * d_out..(i + 1) * d_out].iter_mut().zip(&weights) {
            *yo = xi.iter().zip(wo).map(|(p, q)| p * q).sum();
        }
    }
    Ok(Mat { data: y, rows: t, cols: d_out })
}
