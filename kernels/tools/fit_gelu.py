#!/usr/bin/env python3
"""The coefficients of tf::gelu_storage16 (kernels/include/tf/gelu.cuh).

gelu(x) = x * Phi(x), with Phi(-|x|) = 2^H(-|x|) and H(s) ~ log2 Phi(s) a
polynomial of degree K in s with H(0) = -1 exactly (Phi(0) = 1/2). This fits
H on s in [-T, 0] by iteratively reweighted least squares towards the minimax
of the weighted error

    |H_fit(s) - log2 Phi(s)| / log2(1 + 2^-KREL + 2^-KABS / |gelu(-s)|),

i.e. a relative error 2^-KREL of gelu where gelu is not tiny and an absolute
error 2^-KABS in the far negative tail. It prints the fitted ratio (the
maximum weighted error, < 1 means inside the target) and the coefficients
c0 .. cK of H in s, rounded to f32, in the order gelu.cuh uses them.

Run (numpy and mpmath from the package index):

    python3 -m venv /tmp/fit && /tmp/fit/bin/pip install numpy mpmath
    /tmp/fit/bin/python kernels/tools/fit_gelu.py            # K=8 T=13 KREL=19 KABS=31
    /tmp/fit/bin/python kernels/tools/fit_gelu.py 8 13 19 31  # the same, explicit

With the defaults it prints exactly the coefficients in gelu.cuh. The bound
stated there, and checked by tests/gelu.rs over every f16 and bf16 input, is
what matters: after changing the fit, run that test.
"""
import sys

import mpmath as mp
import numpy as np


def fit(k, t_max, krel, kabs, points=2500, iterations=300):
    """Coefficients of H(s) = -1 + s * q(s), degree k, on s in [-t_max, 0]."""
    mp.mp.dps = 30
    # t = -s in [0, t_max], Chebyshev-spaced (dense near both ends).
    t = (1 - np.cos(np.linspace(0, np.pi, points))) / 2 * t_max
    log2_phi = np.array([float(mp.log(mp.ncdf(-x), 2)) for x in t])
    gelu_abs = t * np.array([float(mp.ncdf(-x)) for x in t])
    allowed = np.log2(1 + 2.0**-krel + 2.0**-kabs / np.maximum(gelu_abs, 1e-300))
    weight = 1 / allowed
    # H + 1 = t * q(t) with q in the Chebyshev basis on [0, t_max]: H(0) = -1 exactly.
    basis = np.polynomial.chebyshev.chebvander(2 * t / t_max - 1, k - 1) * t[:, None]
    target = log2_phi + 1
    lawson = np.full(points, 1.0 / points)
    best_err, best = np.inf, None
    for _ in range(iterations):
        w = np.sqrt(lawson) * weight
        c, *_ = np.linalg.lstsq(basis * w[:, None], target * w, rcond=None)
        err = np.abs(basis @ c - target) * weight
        if err.max() < best_err:
            best_err, best = err.max(), c
        lawson = lawson * (err + 1e-30)
        lawson /= lawson.sum()
    q = np.polynomial.Polynomial(np.polynomial.chebyshev.cheb2poly(best))
    q_of_t = q(np.polynomial.Polynomial([-1, 2 / t_max]))
    h_of_t = np.polynomial.Polynomial([-1.0]) + np.polynomial.Polynomial([0, 1]) * q_of_t
    # In s = -t: c_i = (-1)^i * (coefficient of t^i).
    coef_s = np.array([h_of_t.coef[i] * (-1) ** i for i in range(k + 1)]).astype(np.float32)
    return best_err, coef_s


def main():
    args = [float(a) for a in sys.argv[1:]] or [8, 13, 19, 31]
    if len(args) != 4:
        sys.exit("usage: fit_gelu.py [K T KREL KABS]")
    k, t_max, krel, kabs = int(args[0]), args[1], args[2], args[3]
    ratio, coef = fit(k, t_max, krel, kabs)
    print(f"degree {k} on s in [-{t_max:g}, 0], weight 1/(2^-{krel:g} + 2^-{kabs:g}/|gelu|): ratio {ratio:.3f}")
    for i, c in enumerate(coef):
        print(f"c{i} = {np.format_float_scientific(c, unique=True)}")


if __name__ == "__main__":
    main()
