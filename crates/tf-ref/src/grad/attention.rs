//! Backward of scaled dot-product attention, `o_i = Σ_j p_ij·v_j` with
//! `p_i = softmax_j(scale·q_i·k_j)` over the keys row `i` sees (all of them, or
//! with `causal` those with `j ≤ i + Tk − Tq`, the bottom-right alignment of the
//! forward).
//!
//! For each batch, head and query row `i`, recomputing `p_i` and `o_i`:
//! `dv_j += p_ij·do_i`, `dp_ij = do_i·v_j`, and through the softmax Jacobian
//! `ds_ij = p_ij·(dp_ij − Σ_l p_il·dp_il) = p_ij·(dp_ij − do_i·o_i)`; then
//! `dq_i = scale·Σ_j ds_ij·k_j` and `dk_j += scale·ds_ij·q_i`. Masked keys get
//! nothing from row `i`; a row that sees no key (output 0) passes no gradient.

use crate::{zeros, Element, Error, Result, Tensor4Ref};

const OP: &str = "attention_backward";

/// The gradients returned by [`attention_backward`], in the layouts of the inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnGrads {
    /// `dq`, `[B, Tq, H, D]`.
    pub dq: Vec<f64>,
    /// `dk`, `[B, Tk, H, D]`.
    pub dk: Vec<f64>,
    /// `dv`, `[B, Tk, H, D]`.
    pub dv: Vec<f64>,
}

/// A checked tensor widened to f64, with its shape.
struct T4 {
    data: Vec<f64>,
    shape: [usize; 4],
}

impl T4 {
    fn new<T: Element>(t: &Tensor4Ref<'_, T>) -> Result<Self> {
        let t = Tensor4Ref::new(t.data, t.shape)?;
        Ok(T4 { data: t.data.iter().map(|v| v.to_f64()).collect(), shape: t.shape })
    }

    /// Offset of element `(b, t, h, 0)`.
    fn at(&self, b: usize, t: usize, h: usize) -> usize {
        let [_, tt, hh, dd] = self.shape;
        ((b * tt + t) * hh + h) * dd
    }
}

/// Backward of [`attention`](crate::attention): given the forward's inputs (`q`
/// `[B, Tq, H, D]`, `k` and `v` `[B, Tk, H, D]`, `causal`, `scale`, defaulting to
/// `1/sqrt(D)`) and `d_o = ∂L/∂o` (`[B, Tq, H, D]`), returns `dq`, `dk`, `dv`.
/// The causal mask is the forward's bottom-right alignment (query `i` sees key `j`
/// iff `j ≤ i + Tk − Tq`); rows that see no key contribute nothing.
///
/// Errors: the forward's (buffer lengths, `k`/`v` shapes, `q` disagreeing with `k`
/// on `B`, `H` or `D`, `D = 0`, a non-finite `scale`), and `d_o` not of `q`'s shape.
pub fn attention_backward<T: Element>(
    q: Tensor4Ref<'_, T>,
    k: Tensor4Ref<'_, T>,
    v: Tensor4Ref<'_, T>,
    d_o: Tensor4Ref<'_, T>,
    causal: bool,
    scale: Option<f64>,
) -> Result<AttnGrads> {
    // The forward validates everything but d_o (and its output is not needed).
    crate::attention(q, k, v, causal, scale)?;
    let (q, k, v, d_o) = (T4::new(&q)?, T4::new(&k)?, T4::new(&v)?, T4::new(&d_o)?);
    if d_o.shape != q.shape {
        return Err(Error::Shape {
            op: OP,
            msg: format!("d_o is {:?} but q is {:?}: they must have the same shape", d_o.shape, q.shape),
        });
    }
    let [batch, t_q, heads, dim] = q.shape;
    let t_k = k.shape[1];
    let scale = scale.unwrap_or(1.0 / (dim as f64).sqrt());
    let mut dq = zeros(OP, q.data.len())?;
    let mut dk = zeros(OP, k.data.len())?;
    let mut dv = zeros(OP, v.data.len())?;
    let mut p = zeros(OP, t_k)?;
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..t_q {
                let visible = if causal { (i + 1 + t_k).saturating_sub(t_q).min(t_k) } else { t_k };
                if visible == 0 {
                    continue;
                }
                let qo = q.at(b, i, h);
                let qi = &q.data[qo..qo + dim];
                let doi = &d_o.data[qo..qo + dim];
                for (j, pj) in p[..visible].iter_mut().enumerate() {
                    let ko = k.at(b, j, h);
                    *pj = scale * qi.iter().zip(&k.data[ko..ko + dim]).map(|(a, c)| a * c).sum::<f64>();
                }
                let max = p[..visible].iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
                p[..visible].iter_mut().for_each(|s| *s = (*s - max).exp());
                let sum: f64 = p[..visible].iter().sum();
                p[..visible].iter_mut().for_each(|s| *s /= sum);
                // dp_j = do_i·v_j, and do_i·o_i = Σ_j p_j·dp_j.
                let dp: Vec<f64> = (0..visible)
                    .map(|j| {
                        let vo = v.at(b, j, h);
                        doi.iter().zip(&v.data[vo..vo + dim]).map(|(a, c)| a * c).sum()
                    })
                    .collect();
                let do_dot_o: f64 = p[..visible].iter().zip(&dp).map(|(a, c)| a * c).sum();
                for (j, (&pj, &dpj)) in p[..visible].iter().zip(&dp).enumerate() {
                    let ko = k.at(b, j, h);
                    let ds = pj * (dpj - do_dot_o);
                    for c in 0..dim {
                        dv[ko + c] += pj * doi[c];
                        dq[qo + c] += scale * ds * k.data[ko + c];
                        dk[ko + c] += scale * ds * qi[c];
                    }
                }
            }
        }
    }
    Ok(AttnGrads { dq, dk, dv })
}
