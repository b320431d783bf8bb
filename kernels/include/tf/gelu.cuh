// GELU in f32, two forms.
//
// tf::gelu: the exact (erf-form) GELU, as PyTorch's F.gelu default computes it:
//   gelu(x) = 0.5 * x * (1 + erf(x / sqrt(2)))
// (NOT the tanh approximation, which TokenFormer's checkpoints did not use).
// For x < 0 the factor 1 + erf(x/√2) cancels; its absolute error stays at one f32
// ulp of 1, i.e. |error| <= 6e-8 * |x|, far below the tolerances of scores of
// size ~1, so the single-branch form (one erff, no divergence) is kept. The f32
// paths use it (~30 SASS instructions: erff's two polynomials, selected per lane).
//
// tf::gelu_storage16: the same function for results that are stored in f16/bf16,
// in 12 SASS instructions per element (8 FFMA, MUFU.EX2, FSETP, FADD, FMUL; the
// first coefficient's register is loop-invariant). With Φ the standard normal CDF,
// gelu(x) = x·Φ(x), and Φ(x) = w for x < 0, 1 - w for x >= 0, where
//   w = Φ(-|x|) = 2^H(-|x|),  H(s) = log2 Φ(s) ≈ c0 + c1·s + ... + c8·s^8.
// H is smooth and (unlike erf) needs no second range: one polynomial covers every
// x, and 2^H keeps the RELATIVE accuracy of the tiny values of x·Φ(x) for x << 0
// that 1 + erf(x/√2) cancels away. The coefficients are a weighted minimax fit
// (rounded to f32) of log2 Φ on s ∈ [-13, 0] (weight 1/(2^-19 + 2^-31/|gelu|);
// kernels/tools/fit_gelu.py prints exactly these coefficients); with
// its f32 coefficients the polynomial's only critical point is at s = +9.93, so H
// rises monotonically on s < 0: it falls to -∞ as |x| grows (H(-13) = -179.6), and
// no input past the fitted range makes w grow. The bound, for every x:
//   |gelu_storage16(x) - gelu(x)| <= 2^-18 · |gelu(x)| + 2^-30
// It is the fit's error (<= 0.57·(2^-19·|gelu| + 2^-31)) plus the f32 rounding of
// the Horner steps, the select and the product, checked on every f16 and bf16
// input and a dense f32 sweep (tests/gelu.rs asserts the bound less 2^-21·|gelu|,
// the allowance for ex2.approx.ftz's relative error <= 2^-22 on the GPU, where
// the emulator calls exp2f).
// Measured (emulator, every f16 and bf16 value and a dense f32 sweep,
// tests/gelu.rs): |error| <= 2^-19.1·|gelu(x)| + 2^-30.9. Compared with the
// storage: half an ulp is >= 2^-12 relative in f16 (2^-25 absolute in its
// subnormals) and >= 2^-9 in bf16, 64x and 512x above the relative term; the
// absolute term only matters where |gelu(x)| < 2^-12 (x < -3.9). Stored to f16,
// 20 of the 65536 results differ from the correctly rounded gelu where
// |gelu| >= 2^-12 (by one ulp) and 1 below; to bf16, 0 and 141 (x < -5.3: tiny
// values bf16 keeps, accurate to 2^-30 absolute only). The exact form tf::gelu,
// whose 1 + erff cancels for x < 0: 328 (f16) and 197 (bf16).
// Results below 2^-126 flush to 0 on the GPU (ex2.approx.ftz), not in the
// emulator (exp2f); both are within the bound.
// Special values as tf::gelu: NaN -> NaN, +inf -> +inf, -inf -> NaN (x·0 = -∞·0,
// the literal formula; tf-ref's gelu does the same), -0 -> -0.
#pragma once
#include "tf/cuda_types.cuh"
#include "tf/attention_math.cuh"

namespace tf {

__device__ __forceinline__ float gelu(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float gelu_storage16(float x) {
    const float s = -fabsf(x);  // a free operand modifier of the FFMAs
    float h = -3.840817e-07f;  // c8 .. c1 (c0 = -1: Φ(0) = 1/2 exactly): log2 Φ(s), s ∈ [-13, 0]
    h = fmaf(h, s, -5.9882905e-06f);
    h = fmaf(h, s, -2.3531131e-06f);
    h = fmaf(h, s, 6.612193e-04f);
    h = fmaf(h, s, 7.885871e-03f);
    h = fmaf(h, s, 5.3187087e-02f);
    h = fmaf(h, s, -4.5893288e-01f);
    h = fmaf(h, s, 1.1511422e+00f);
    h = fmaf(h, s, -1.0f);
    const float w = exp2_approx(h);  // Φ(-|x|): 0.5 at x = 0, -> 0 for |x| -> ∞
    return x * (x >= 0.0f ? 1.0f - w : w);
}

// The GELU of a result stored as T: gelu_storage16 for f16/bf16, the exact form for f32.
template <typename T>
__device__ __forceinline__ float gelu_stored_as(float x) {
    if constexpr (sizeof(T) == 2) {
        return gelu_storage16(x);
    } else {
        return gelu(x);
    }
}

}  // namespace tf
