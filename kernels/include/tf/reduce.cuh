// Warp reductions by XOR butterfly (__shfl_xor_sync): every lane of the group ends
// with the SAME value, bit for bit (each step adds a and b in both lanes, and
// a + b == b + a in IEEE arithmetic), so results are deterministic and identical
// across lanes. WIDTH lanes (a power of two <= 32, aligned groups) reduce together:
// 32 = the whole warp, 4 = the quad that shares an mma accumulator row.
#pragma once
#include "tf/cuda_types.cuh"

namespace tf {

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
    for (int o = WIDTH / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

}  // namespace tf
