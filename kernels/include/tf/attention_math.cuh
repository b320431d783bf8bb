// Math helpers that need one PTX instruction (the attention kernels' online softmax,
// Pattention's softmax scores).
#pragma once
#include "tf/cuda_types.cuh"

namespace tf {

// 2^x by the special-function unit (ex2.approx.ftz.f32: max relative error
// 2^-22, results below 2^-126 flush to 0, ex2(-inf) = +0). The softmax only
// evaluates it at x <= 0, where a flushed denormal is a term < 2^-126 of a sum
// >= 1. exp2f without --use_fast_math adds a range test and two multiplies per
// call to handle those denormals (and costs registers in the softmax).
__device__ __forceinline__ float exp2_approx(float x) {
#if defined(__CUDA_ARCH__)
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

}  // namespace tf
