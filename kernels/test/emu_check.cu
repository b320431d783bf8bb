// emu_check.cu: seeded bugs for the emulator's memory checks and profiler
// (tests/emulator_checks.rs). Emulator only: not part of the fatbin. Each mode is a
// small kernel with one bug that the plain emulator does not report; `arg` 1 is the
// same kernel with the bug fixed (the checks must find nothing then).
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/async.cuh"

namespace tf_test_chk {

// Mode 0: a two-stage ring of cp.async tiles, 64 threads (2 warps). Each phase thread
// t adds its element of the current stage and the other warp's element t ^ 32, sums
// that over a lane pair (a shuffle), and refills its own slot of the stage for two
// phases ahead. Without the trailing barrier (arg 0) a warp's cp.async overwrites
// slots the other warp may not have read yet: a write-after-read hazard. The plain
// emulator's default schedule (warps take turns at each collective) happens to run
// every read before any refill, so its results are right. in0: f32 [n][64], out0:
// f32 [n][64].
__device__ void ring(const tf_test_params& p) {
    __shared__ __align__(16) float ring[2][64];
    const unsigned t = threadIdx.x;
    const float* src = reinterpret_cast<const float*>(p.in0);
    float* out = reinterpret_cast<float*>(p.out0);
    for (int s = 0; s < 2 && s < p.n; ++s) {
        tf::cp_async_4(&ring[s][t], src + s * 64 + t, 4);
        tf::cp_async_commit();
    }
    for (int64_t ph = 0; ph < p.n; ++ph) {
        if (ph + 1 < p.n) tf::cp_async_wait<1>();
        else tf::cp_async_wait<0>();
        __syncthreads();
        const float* cur = ring[ph % 2];
        float v = cur[t] + cur[t ^ 32];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        out[ph * 64 + t] = v;
        if (p.arg) __syncthreads();  // every read of this stage before its refill
        if (ph + 2 < p.n) tf::cp_async_4(&ring[ph % 2][t], src + (ph + 2) * 64 + t, 4);
        tf::cp_async_commit();
    }
}

// Mode 1: a cp.async destination read before the wait_group that retires it (arg 0)
// or after it (arg 1). 32 threads; in0: f32 [32], out0: f32 [32].
__device__ void cp_early(const tf_test_params& p) {
    __shared__ __align__(16) float tile[32];
    const unsigned t = threadIdx.x;
    tf::cp_async_4(&tile[t], reinterpret_cast<const float*>(p.in0) + t, 4);
    tf::cp_async_commit();
    float early = 0.0f;
    if (!p.arg) early = tile[t];
    tf::cp_async_wait<0>();
    reinterpret_cast<float*>(p.out0)[t] = tile[t] + early * 0.0f;
}

// Mode 2: out0[t] = in0[t + arg2] for t < n: with in0 of n elements, arg 0 reads one
// element past the end on the last thread (arg 1 stays in bounds). Blocks of 64.
__device__ void past_end(const tf_test_params& p) {
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.n) return;
    const float* in = reinterpret_cast<const float*>(p.in0);
    const int64_t i = (p.arg == 0 && t == p.n - 1) ? t + 1 : t;
    reinterpret_cast<float*>(p.out0)[t] = in[i];
}

// Mode 3: shared-memory reads with a stride of `arg` 4-byte words: lane l reads word
// l * arg of a 32 * arg word tile (stride 4: 4-way bank conflicts; stride 1 or 33:
// none). One warp; out0: f32 [32].
__device__ void strided(const tf_test_params& p) {
    __shared__ float tile[32 * 33];
    const unsigned lane = threadIdx.x;
    for (int i = lane; i < 32 * 33; i += 32) tile[i] = (float)i;
    __syncthreads();
    reinterpret_cast<float*>(p.out0)[lane] = tile[lane * p.arg];
}

// Mode 4: out0[t] = in0[t] * 2 for t < n: a plain copy kernel (initcheck: in0 never
// written; profile: coalesced 4-byte loads and stores). Blocks of 64.
__device__ void copy(const tf_test_params& p) {
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < p.n) reinterpret_cast<float*>(p.out0)[t] = reinterpret_cast<const float*>(p.in0)[t] * 2.0f;
}

// Mode 5: shared memory read before any thread wrote it (arg 0: thread 0 skips its
// write). 32 threads; out0: f32 [32].
__device__ void smem_unwritten(const tf_test_params& p) {
    __shared__ float tile[32];
    const unsigned t = threadIdx.x;
    if (p.arg || t != 0) tile[t] = (float)t;
    __syncthreads();
    reinterpret_cast<float*>(p.out0)[t] = tile[(t + 1) % 32];
}

// Mode 6: lanes of one warp exchange through shared memory with (arg 1) or without
// (arg 0) a __syncwarp between the write and the read. 32 threads; out0: f32 [32].
__device__ void warp_exchange(const tf_test_params& p) {
    __shared__ float tile[32];
    const unsigned t = threadIdx.x;
    tile[t] = (float)(t * 3);
    if (p.arg) __syncwarp();
    reinterpret_cast<float*>(p.out0)[t] = tile[t ^ 1];
}

// Mode 7: a 16-byte vector load from global memory at in0 + arg bytes (arg 4: not
// 16-byte aligned). One thread; in0: 64 bytes, out0: 16 bytes.
__device__ void vector_load(const tf_test_params& p) {
    const float4 v = *reinterpret_cast<const float4*>(reinterpret_cast<const char*>(p.in0) + p.arg);
    *reinterpret_cast<float4*>(p.out0) = v;
}

// Mode 8: a read of dynamic shared memory `arg` bytes before its start, where no
// static __shared__ data lies (inside the emulator's window, so it does not fault).
// 32 threads, 256 bytes of dynamic shared memory; out0: f32 [32].
__device__ void smem_below(const tf_test_params& p) {
    extern __shared__ __align__(16) unsigned char dyn[];
    float* f = reinterpret_cast<float*>(dyn);
    f[threadIdx.x] = 1.0f;
    __syncthreads();
    reinterpret_cast<float*>(p.out0)[threadIdx.x] =
        *reinterpret_cast<const float*>(dyn + (threadIdx.x == 0 ? -(int64_t)p.arg : threadIdx.x * 4));
}

}  // namespace tf_test_chk

extern "C" __global__ void tf_test_check(const tf_test_params p) {
    switch (p.mode) {
        case 0: tf_test_chk::ring(p); break;
        case 1: tf_test_chk::cp_early(p); break;
        case 2: tf_test_chk::past_end(p); break;
        case 3: tf_test_chk::strided(p); break;
        case 4: tf_test_chk::copy(p); break;
        case 5: tf_test_chk::smem_unwritten(p); break;
        case 6: tf_test_chk::warp_exchange(p); break;
        case 7: tf_test_chk::vector_load(p); break;
        case 8: tf_test_chk::smem_below(p); break;
        default: __trap();
    }
}
