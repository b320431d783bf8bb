// Warp reductions by XOR butterfly (__shfl_xor_sync): every lane of the group ends
// with the SAME value, bit for bit (each step adds a and b in both lanes, and
// a + b == b + a in IEEE arithmetic), so results are deterministic and identical
// across lanes. WIDTH lanes (a power of two <= 32, aligned groups) reduce together:
// 32 = the whole warp, 4 = the quad that shares an mma accumulator row.
// Maxima propagate NaN (max_nan): fmaxf returns the other operand when one is NaN,
// which would let a NaN input vanish from a row statistic.
#pragma once
#include "tf/cuda_types.cuh"

namespace tf {

// max(a, b), NaN if either is NaN (fmaxf(NaN, b) would be b). Symmetric in a and b,
// so the butterflies below stay bitwise identical across lanes. On sm_80+ one
// instruction (max.NaN.f32: the canonical NaN for any NaN operand); elsewhere (the
// emulator) a NaN operand's sum, also a NaN.
__device__ __forceinline__ float max_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
#else
    return (a == a && b == b) ? fmaxf(a, b) : a + b;
#endif
}

template <int WIDTH = 32>
__device__ __forceinline__ float warp_sum(float v) {
    static_assert(WIDTH >= 1 && WIDTH <= 32 && (WIDTH & (WIDTH - 1)) == 0, "WIDTH: a power of two <= 32");
#pragma unroll
    for (int o = WIDTH / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <int WIDTH = 32>
__device__ __forceinline__ float warp_max(float v) {
    static_assert(WIDTH >= 1 && WIDTH <= 32 && (WIDTH & (WIDTH - 1)) == 0, "WIDTH: a power of two <= 32");
#pragma unroll
    for (int o = WIDTH / 2; o > 0; o /= 2) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (or NaN-propagating max) over a block of THREADS threads, the warps' partial
// results added in warp order (deterministic); every thread gets the result. `red`:
// THREADS / 32 floats of shared memory, free again when this returns.
template <int THREADS, bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* red) {
    static_assert(THREADS % 32 == 0, "whole warps");
    v = MAX ? warp_max(v) : warp_sum(v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int w = 1; w < THREADS / 32; ++w) r = MAX ? max_nan(r, red[w]) : r + red[w];
    __syncthreads();  // red is reused by the next reduction
    return r;
}

}  // namespace tf
