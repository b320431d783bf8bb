// Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy
// as 1, 2, 3", SC'11) and the normal stream of docs/design.md ("Growth semantics"),
// shared by every kernel that initialises parameters. tf-ref computes the same.
#pragma once
#include "tf/cuda_types.cuh"

namespace tf {

struct Philox4 {
    uint32_t v[4];
};

__device__ __forceinline__ Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                                 uint32_t k0, uint32_t k1) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        const uint64_t p0 = (uint64_t)M0 * c0;
        const uint64_t p1 = (uint64_t)M1 * c2;
        const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += W0;
        k1 += W1;
    }
    Philox4 out;
    out.v[0] = c0;
    out.v[1] = c1;
    out.v[2] = c2;
    out.v[3] = c3;
    return out;
}

// N(0, std) for element index `e` of a tensor: key = (seed lo, seed hi),
// counter = (e lo, e hi, 0, 0); u1 = (w0 + 1) / 2^32, u2 = w1 / 2^32;
// std * sqrt(-2 ln u1) * cos(2 pi u2), evaluated in f64 and rounded to f32 once,
// so the GPU, the emulator and tf-ref agree to the libm's last bit.
__device__ __forceinline__ float philox_normal(uint64_t seed, uint64_t e, float std_dev) {
    const Philox4 w = philox4x32_10((uint32_t)e, (uint32_t)(e >> 32), 0u, 0u, (uint32_t)seed,
                                    (uint32_t)(seed >> 32));
    const double u1 = ((double)w.v[0] + 1.0) * (1.0 / 4294967296.0);
    const double u2 = (double)w.v[1] * (1.0 / 4294967296.0);
#if defined(__CUDA_ARCH__)
    // cospi has no Payne-Hanek slow path (cos(2 pi u2) would add a local-memory
    // frame and a spill to every caller); the argument is exact either way.
    const double c = cospi(2.0 * u2);
#else
    const double c = cos(6.283185307179586476925286766559 * u2);
#endif
    return (float)((double)std_dev * sqrt(-2.0 * log(u1)) * c);
}

}  // namespace tf
