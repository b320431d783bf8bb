//! Multi-head scaled dot-product attention over `[B, T, H, D]` tensors.

use crate::{zeros, Element, Error, Result};

const OP: &str = "attention";

/// A borrowed contiguous 4-D tensor in `[B, T, H, D]` order (batch, sequence,
/// head, head dimension): element `(b, t, h, d)` is
/// `data[((b·T + t)·H + h)·D + d]`.
#[derive(Debug, Clone, Copy)]
pub struct Tensor4Ref<'a, T> {
    /// The `B·T·H·D` elements.
    pub data: &'a [T],
    /// `[B, T, H, D]`.
    pub shape: [usize; 4],
}

/// Number of elements of `shape`, or `None` on overflow.
fn numel(shape: [usize; 4]) -> Option<usize> {
    shape.iter().try_fold(1_usize, |acc, &d| acc.checked_mul(d))
}

impl<'a, T> Tensor4Ref<'a, T> {
    /// A view of `data` with `shape` `[B, T, H, D]`; an error if the length does
    /// not match (or the element count overflows).
    pub fn new(data: &'a [T], shape: [usize; 4]) -> Result<Self> {
        let t = Tensor4Ref { data, shape };
        t.check("Tensor4Ref::new", "data")?;
        Ok(t)
    }

    fn check(&self, op: &'static str, name: &str) -> Result<()> {
        let want = numel(self.shape).ok_or_else(|| Error::Shape {
            op,
            msg: format!("{name} is {:?}: the element count overflows usize", self.shape),
        })?;
        if self.data.len() != want {
            return Err(Error::Shape {
                op,
                msg: format!(
                    "{name} is {:?} ({want} elements) but its buffer holds {} elements",
                    self.shape,
                    self.data.len()
                ),
            });
        }
        Ok(())
    }

    /// Offset of element `(b, t, h, 0)`; callers have validated the shape.
    fn offset(&self, b: usize, t: usize, h: usize) -> usize {
        let [_, tt, hh, dd] = self.shape;
        ((b * tt + t) * hh + h) * dd
    }
}

/// The result of [`attention`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttnOut {
    /// The output, `[B, Tq, H, D]` (same layout as `q`).
    pub o: Vec<f64>,
    /// The natural log-sum-exp of each row's scaled scores, `[B, H, Tq]`;
    /// `+inf` for a row that sees no key.
    pub lse: Vec<f64>,
    /// The shape of `o`: `[B, Tq, H, D]`.
    pub shape_o: [usize; 4],
}

/// Scaled dot-product attention, `o = softmax(scale · q·kᵀ + mask) · v`, per batch
/// and head.
///
/// `q` is `[B, Tq, H, D]`, `k` and `v` are `[B, Tk, H, D]`. `scale` defaults to
/// `1/sqrt(D)`. With `causal`, the mask is aligned to the bottom right (the
/// FlashAttention convention): query `i` sees key `j` iff `j ≤ i + Tk − Tq`, so a
/// single query (`Tq = 1`) sees every key. A query row that sees no key (only
/// possible when causal and `Tq > Tk`) gets `o = 0` and `lse = +inf`; otherwise
/// `lse = ln Σ_j exp(scale · q·k_j)` over the visible keys, computed with a max
/// shift. All arithmetic is in f64.
///
/// Non-finite inputs follow IEEE arithmetic, with the causal mask REMOVING a key from
/// the rows that cannot see it (it takes part in nothing they compute): a NaN or ∞ in
/// `q` row i reaches row i only; in `k` or `v` row j only the rows that see key j. A NaN
/// or `+∞` score gives a NaN row (o and lse), a `−∞` score weight 0, a row whose
/// visible scores are all `−∞` NaN (`0/0`; a row that sees no key stays `o = 0`,
/// `lse = +∞`), and a NaN / ±∞ in `v[j, c]` gives NaN / ±∞ in column c of the rows
/// that see key j. For `q` and `k` this is PyTorch's boolean-mask semantics (scores
/// `masked_fill`ed with `−∞` before the softmax); for `v` it is the one that keeps
/// causal attention causal (with `P·V` over all keys, `0·NaN` would carry a later
/// token's NaN value into earlier outputs, and a prefill would disagree with the
/// same tokens decoded one by one).
///
/// Errors: a buffer length not matching its shape; `k` and `v` shapes differing;
/// `q` disagreeing with `k` on `B`, `H` or `D` (messages name the shapes); `D = 0`;
/// a `scale` that is not finite.
pub fn attention<T: Element>(
    q: Tensor4Ref<'_, T>,
    k: Tensor4Ref<'_, T>,
    v: Tensor4Ref<'_, T>,
    causal: bool,
    scale: Option<f64>,
) -> Result<AttnOut> {
    q.check(OP, "q")?;
    k.check(OP, "k")?;
    v.check(OP, "v")?;
    if k.shape != v.shape {
        return Err(Error::Shape {
            op: OP,
            msg: format!("k is {:?} but v is {:?}: they must have the same shape [B, Tk, H, D]", k.shape, v.shape),
        });
    }
    let [b_q, t_q, h_q, d_q] = q.shape;
    let [b_k, t_k, h_k, d_k] = k.shape;
    for (what, a, b) in [("B", b_q, b_k), ("H", h_q, h_k), ("D", d_q, d_k)] {
        if a != b {
            return Err(Error::Shape {
                op: OP,
                msg: format!("q is {:?} but k is {:?}: {what} differs ({a} vs {b})", q.shape, k.shape),
            });
        }
    }
    let (batch, heads, dim) = (b_q, h_q, d_q);
    if dim == 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("q is {:?}: the head dimension D must be >= 1", q.shape),
        });
    }
    let scale = match scale {
        None => 1.0 / (dim as f64).sqrt(),
        Some(s) if s.is_finite() => s,
        Some(s) => return Err(Error::InvalidArgument { op: OP, msg: format!("scale must be finite, got {s}") }),
    };

    // q is validated and D ≥ 1, so B·Tq·H ≤ B·Tq·H·D = q.data.len() (the length of o).
    // When that is 0 the result is empty; otherwise B, H ≥ 1 and D ≥ 1 bound Tk by
    // k.data.len(), so no size below can overflow or be absurdly large.
    let mut o = zeros(OP, q.data.len())?;
    let mut lse = zeros(OP, q.data.len() / dim)?;
    if q.data.is_empty() {
        return Ok(AttnOut { o, lse, shape_o: q.shape });
    }
    let mut scores = zeros(OP, t_k)?;
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..t_q {
                // Number of visible keys: all, or those with j ≤ i + Tk − Tq.
                let visible = if causal { (i + 1 + t_k).saturating_sub(t_q).min(t_k) } else { t_k };
                let lse_at = (b * heads + h) * t_q + i;
                if visible == 0 {
                    lse[lse_at] = f64::INFINITY;
                    continue; // o stays 0
                }
                let qo = q.offset(b, i, h);
                let qi = &q.data[qo..qo + dim];
                for (j, s) in scores[..visible].iter_mut().enumerate() {
                    let ko = k.offset(b, j, h);
                    let dot: f64 = qi.iter().zip(&k.data[ko..ko + dim]).map(|(a, c)| a.to_f64() * c.to_f64()).sum();
                    *s = scale * dot;
                }
                let max = scores[..visible].iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
                let mut sum = 0.0;
                let oo = q.offset(b, i, h);
                let oi = &mut o[oo..oo + dim];
                for (j, &s) in scores[..visible].iter().enumerate() {
                    let p = (s - max).exp();
                    sum += p;
                    let vo = v.offset(b, j, h);
                    for (od, vd) in oi.iter_mut().zip(&v.data[vo..vo + dim]) {
                        *od += p * vd.to_f64();
                    }
                }
                oi.iter_mut().for_each(|od| *od /= sum);
                lse[lse_at] = max + sum.ln();
            }
        }
    }
    Ok(AttnOut { o, lse, shape_o: q.shape })
}
