//! The gradient oracle: every backward against central finite differences of its
//! forward, the whole-model `loss_and_grads`, and the AdamW step and schedule
//! against values computed here from the formulas.
//!
//! A finite difference is the fourth-order central stencil
//! `(−f(2h) + 8f(h) − 8f(−h) + f(−2h)) / 12h` of a scalar loss along a direction
//! `u`, compared with `grad·u`: the relative error must be ≤ 1e-6 (or the
//! difference below an absolute floor of 1e-10, for derivatives that are 0).

mod adamw;
mod model;
mod ops;
mod pattention;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Relative tolerance of every gradient check.
pub const REL_TOL: f64 = 1e-6;
/// Absolute floor (derivatives that vanish: finite differences leave round-off).
pub const ABS_TOL: f64 = 1e-10;
/// Step of the finite differences: the truncation error of the stencil is
/// `O(H⁴)` (at 1e-3 the whole model is still 1e-5 off), its round-off `O(1e-16/H)`.
pub const H: f64 = 1e-4;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `len` values uniform in `[−scale, scale)`.
pub fn random(rng: &mut StdRng, len: usize, scale: f64) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `inputs + t·dirs`, input by input.
fn shifted(inputs: &[Vec<f64>], dirs: &[Vec<f64>], t: f64) -> Vec<Vec<f64>> {
    inputs.iter().zip(dirs).map(|(x, u)| x.iter().zip(u).map(|(a, b)| a + t * b).collect()).collect()
}

/// The fourth-order central difference of `loss` at `inputs` along `dirs`.
pub fn fd(loss: &dyn Fn(&[Vec<f64>]) -> f64, inputs: &[Vec<f64>], dirs: &[Vec<f64>]) -> f64 {
    let f = |t: f64| loss(&shifted(inputs, dirs, t));
    (-f(2.0 * H) + 8.0 * f(H) - 8.0 * f(-H) + f(-2.0 * H)) / (12.0 * H)
}

/// Asserts that `analytic` matches `numeric` (see the module doc), naming `what`.
pub fn assert_close(what: &str, analytic: f64, numeric: f64) {
    let diff = (analytic - numeric).abs();
    let rel = diff / analytic.abs().max(numeric.abs());
    assert!(
        diff <= ABS_TOL || rel <= REL_TOL,
        "{what}: analytic {analytic:e} vs finite difference {numeric:e} (relative error {rel:e})"
    );
}

/// Checks `grads` (one vector per input) of `loss` at `inputs`: along `directions`
/// random directions through all inputs at once, one random direction in each
/// input alone, and `elements` single elements of each input. Returns the number
/// of checks whose derivative was not negligible (so callers can insist on some).
pub fn check_grads(
    what: &str,
    loss: &dyn Fn(&[Vec<f64>]) -> f64,
    inputs: &[Vec<f64>],
    grads: &[Vec<f64>],
    rng: &mut StdRng,
    directions: usize,
    elements: usize,
) -> usize {
    assert_eq!(inputs.len(), grads.len(), "{what}: one gradient per input");
    for (i, (x, g)) in inputs.iter().zip(grads).enumerate() {
        assert_eq!(x.len(), g.len(), "{what}: gradient {i} has the wrong length");
    }
    let mut significant = 0;
    let mut check = |label: String, dirs: Vec<Vec<f64>>| {
        let analytic: f64 = grads.iter().zip(&dirs).map(|(g, u)| dot(g, u)).sum();
        let numeric = fd(loss, inputs, &dirs);
        assert_close(&format!("{what}: {label}"), analytic, numeric);
        if analytic.abs() > 1e-6 {
            significant += 1;
        }
    };
    for k in 0..directions {
        let dirs: Vec<Vec<f64>> = inputs.iter().map(|x| random(rng, x.len(), 1.0)).collect();
        check(format!("joint direction {k}"), dirs);
    }
    for (i, x) in inputs.iter().enumerate() {
        if x.is_empty() {
            continue;
        }
        let mut dirs: Vec<Vec<f64>> = inputs.iter().map(|x| vec![0.0; x.len()]).collect();
        dirs[i] = random(rng, x.len(), 1.0);
        check(format!("direction in input {i}"), dirs);
        for _ in 0..elements {
            let e = rng.random_range(0..x.len());
            let mut dirs: Vec<Vec<f64>> = inputs.iter().map(|x| vec![0.0; x.len()]).collect();
            dirs[i][e] = 1.0;
            check(format!("input {i} element {e}"), dirs);
        }
    }
    significant
}
