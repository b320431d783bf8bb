//! Row-append growth of a parameter-token matrix (K_P or V_P).

use crate::{philox_normal, Element, Error, MatRef, Result};

/// How the appended rows `[n_old, n_new)` of [`grow`] are initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init<'a> {
    /// All zeros (with zero new KEY rows and a pinned `n_ref`, a grown Pattention
    /// computes exactly what it did before).
    Zeros,
    /// Explicit values: `(n_new − n_old)·cols` of them, row-major, each rounded to
    /// the storage type.
    Rows(&'a [f64]),
    /// `N(0, std²)` from the counter-based Philox stream: element `(r, c)` of the
    /// grown tensor is [`philox_normal`]`(seed, r·cols + c, std)` rounded to the
    /// storage type (`r` is the absolute row index). `std` must be finite and ≥ 0.
    Normal {
        /// Standard deviation.
        std: f32,
        /// Generator seed (Philox key).
        seed: u64,
    },
}

/// Grows `old` (`[n_old, cols]`) to `[n_new, cols]`: rows `[0, n_old)` are
/// bit-identical copies, rows `[n_old, n_new)` come from `init`. Returns the new
/// tensor's `n_new·cols` elements, row-major.
///
/// Errors: `old`'s buffer not matching its shape, `n_new < n_old`, `n_new·cols`
/// overflowing, `Init::Rows` of the wrong length, `Init::Normal` with a negative or
/// non-finite `std`.
pub fn grow<T: Element>(old: MatRef<'_, T>, n_new: usize, init: &Init<'_>) -> Result<Vec<T>> {
    const OP: &str = "grow";
    old.check(OP, "old")?;
    let (n_old, cols) = (old.rows, old.cols);
    if n_new < n_old {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("old is [{n_old}, {cols}] but n_new is {n_new}: growth cannot remove rows"),
        });
    }
    let total = n_new.checked_mul(cols).ok_or_else(|| Error::Shape {
        op: OP,
        msg: format!("the grown tensor [{n_new}, {cols}] has more elements than usize holds"),
    })?;
    let added = total - old.data.len();
    let mut out: Vec<T> = Vec::new();
    out.try_reserve_exact(total).map_err(|_| Error::InvalidArgument {
        op: OP,
        msg: format!("cannot allocate the grown tensor [{n_new}, {cols}]"),
    })?;
    out.extend_from_slice(old.data);
    match *init {
        Init::Zeros => out.resize(total, T::from_f64(0.0)),
        Init::Rows(rows) => {
            if rows.len() != added {
                return Err(Error::Shape {
                    op: OP,
                    msg: format!(
                        "growing [{n_old}, {cols}] to [{n_new}, {cols}] needs {} x {cols} = {added} \
                         init values but Init::Rows holds {}",
                        n_new - n_old,
                        rows.len()
                    ),
                });
            }
            out.extend(rows.iter().map(|&v| T::from_f64(v)));
        }
        Init::Normal { std, seed } => {
            if !(std.is_finite() && std >= 0.0) {
                return Err(Error::InvalidArgument {
                    op: OP,
                    msg: format!("Init::Normal std must be finite and >= 0, got {std}"),
                });
            }
            // usize -> u64 is lossless on every supported target.
            let start = old.data.len() as u64;
            out.extend((start..total as u64).map(|e| T::from_f64(f64::from(philox_normal(seed, e, std)))));
        }
    }
    Ok(out)
}
