// emu_warp.cu: emulator test kernels for warp collectives, barriers, shared memory,
// atomics and thread indices (tests/emulator.rs). Emulator only: not in the fatbin.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/async.cuh"
#include "tf/smem.cuh"

namespace tf_test_warp {

// One warp collective per launch, chosen by `mode`, for every thread of the grid
// (tid = global linear thread index; v = in0[tid], u32):
//   0 __shfl_sync(v, src = in1[tid] (int32), width n)    1 __shfl_up_sync(v, arg, n)
//   2 __shfl_down_sync(v, arg, n)    3 __shfl_xor_sync(v, arg, n)
//   4 __ballot_sync(v & 1)   5 __any_sync(v % 32 == arg)   6 __all_sync(v & 1)
//   7 64-bit __shfl_xor_sync of (v << 32 | ~v) by arg -> out1 (u64)
//   8 __half2 __shfl_down_sync by arg (v's bits)   9 float __shfl_sync from lane arg
//  10 two disjoint groups at once: lanes 0-15 __shfl_xor_sync(0x0000ffff, v, arg),
//     lanes 16-31 __shfl_down_sync(0xffff0000, v, 1, 16)
//  11 __reduce_add_sync(v) -> out0, __reduce_max_sync(v) -> out1
//  12 __match_any_sync(v % arg)
//  13 even lanes __ballot_sync(0x55555555, v & 1), odd lanes __ballot_sync(0xaaaaaaaa, v & 2)
//  14 __syncthreads_count(v & 1) -> out0, __syncthreads_and(v & 1) -> out1, __syncthreads_or(v & 1) -> out2
// out0: u32 per thread.
__device__ void collectives(const tf_test_params& p) {
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned lane = threadIdx.x % 32;
    const uint32_t v = reinterpret_cast<const uint32_t*>(p.in0)[tid];
    uint32_t* out = reinterpret_cast<uint32_t*>(p.out0);
    uint64_t* out1 = reinterpret_cast<uint64_t*>(p.out1);
    const unsigned full = 0xffffffffu;
    const int w = (int)p.n;
    switch (p.mode) {
        case 0: out[tid] = __shfl_sync(full, v, reinterpret_cast<const int32_t*>(p.in1)[tid], w); break;
        case 1: out[tid] = __shfl_up_sync(full, v, (unsigned)p.arg, w); break;
        case 2: out[tid] = __shfl_down_sync(full, v, (unsigned)p.arg, w); break;
        case 3: out[tid] = __shfl_xor_sync(full, v, p.arg, w); break;
        case 4: out[tid] = __ballot_sync(full, v & 1); break;
        case 5: out[tid] = (uint32_t)__any_sync(full, (int)(v % 32) == p.arg); break;
        case 6: out[tid] = (uint32_t)__all_sync(full, v & 1); break;
        case 7: {
            const unsigned long long x = ((unsigned long long)v << 32) | (uint32_t)~v;
            out1[tid] = __shfl_xor_sync(full, x, p.arg);
            break;
        }
        case 8: {
            __half2 h;
            memcpy(&h, &v, 4);
            const __half2 r = __shfl_down_sync(full, h, (unsigned)p.arg);
            memcpy(&out[tid], &r, 4);
            break;
        }
        case 9: {
            const float f = __uint_as_float(v);
            out[tid] = __float_as_uint(__shfl_sync(full, f, p.arg));
            break;
        }
        case 10:
            if (lane < 16) out[tid] = __shfl_xor_sync(0x0000ffffu, v, p.arg);
            else out[tid] = __shfl_down_sync(0xffff0000u, v, 1, 16);
            break;
        case 11:
            out[tid] = __reduce_add_sync(full, v);
            out1[tid] = __reduce_max_sync(full, v);
            break;
        case 12: out[tid] = __match_any_sync(full, v % (uint32_t)p.arg); break;
        case 13:
            if (lane % 2 == 0) out[tid] = __ballot_sync(0x55555555u, v & 1);
            else out[tid] = __ballot_sync(0xaaaaaaaau, v & 2);
            break;
        case 14: {
            uint32_t* out2 = reinterpret_cast<uint32_t*>(p.out2);
            out[tid] = (uint32_t)__syncthreads_count(v & 1);
            out1[tid] = (uint64_t)__syncthreads_and(v & 1);
            out2[tid] = (uint32_t)__syncthreads_or(v & 1);
            break;
        }
        default: __trap();
    }
}

// Block sum of in0 (f32 [gridDim.x * blockDim.x]) through shared memory and
// __syncthreads: out0[block] = the sum; out1[0] += every element (atomicAdd f32);
// out2 (u32): [0] += 1 per thread (atomicAdd), [1] = max of in0's bits (atomicMax),
// [2] += 1 per thread (atomicAdd on int32). blockDim.x a power of two <= 1024.
__device__ void block_reduce(const tf_test_params& p) {
    __shared__ float s[1024];
    const unsigned t = threadIdx.x;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + t;
    const float x = reinterpret_cast<const float*>(p.in0)[i];
    s[t] = x;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) reinterpret_cast<float*>(p.out0)[blockIdx.x] = s[0];
    atomicAdd(reinterpret_cast<float*>(p.out1), x);
    uint32_t* u = reinterpret_cast<uint32_t*>(p.out2);
    atomicAdd(&u[0], 1u);
    atomicMax(&u[1], __float_as_uint(x));
    atomicAdd(reinterpret_cast<int*>(&u[2]), 1);
}

// A per-warp sum of in0 (f32) through shared memory, the classic tree of
// `if (lane < off) s[lane] += s[lane + off]`. mode 0: no __syncwarp (relies on implicit
// lockstep: a race); mode 1: __syncwarp after every step. out0[warp] = s[0].
__device__ void warp_race(const tf_test_params& p) {
    __shared__ float s[1024];
    const unsigned t = threadIdx.x, lane = t % 32, base = t - lane;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + t;
    s[t] = reinterpret_cast<const float*>(p.in0)[i];
    if (p.mode) __syncwarp();
    for (unsigned off = 16; off > 0; off /= 2) {
        if (lane < off) s[base + lane] += s[base + lane + off];
        if (p.mode) __syncwarp();
    }
    if (lane == 0) reinterpret_cast<float*>(p.out0)[i / 32] = s[base];
}

// Thread indices: out0 (u32 [threads of the grid][12]) = threadIdx, blockIdx, blockDim,
// gridDim (x, y, z each), at the linear index of (block, thread), x fastest.
__device__ void indices(const tf_test_params& p) {
    const uint64_t b = blockIdx.x + (uint64_t)gridDim.x * (blockIdx.y + (uint64_t)gridDim.y * blockIdx.z);
    const uint64_t t = threadIdx.x + (uint64_t)blockDim.x * (threadIdx.y + (uint64_t)blockDim.y * threadIdx.z);
    const uint64_t i = b * blockDim.x * blockDim.y * blockDim.z + t;
    uint32_t* o = reinterpret_cast<uint32_t*>(p.out0) + i * 12;
    const uint3 ti = threadIdx, bi = blockIdx;
    const dim3 bd = blockDim, gd = gridDim;
    o[0] = ti.x, o[1] = ti.y, o[2] = ti.z;
    o[3] = bi.x, o[4] = bi.y, o[5] = bi.z;
    o[6] = bd.x, o[7] = bd.y, o[8] = bd.z;
    o[9] = gd.x, o[10] = gd.y, o[11] = gd.z;
}

// Shared memory poison and layout, per block b and thread t (blockDim.x <= 256):
// out0 (u32 [blocks][256]): a static __shared__ u32 read before any write;
// out1 (u32 [blocks][256]): s[(t + 1) % blockDim.x] after every thread wrote
//   s[t] = 1000 * b + t and a barrier;
// out2 (u32 [blocks][4]) by thread 0: [0] the first dynamic u32 read before a write,
//   [1] 1 if the dynamic base is 16-byte aligned, [2] 1 if the __align__(128) static
//   array is 128-byte aligned, [3] the bits of a static __shared__ double read first.
__device__ void smem_poison(const tf_test_params& p) {
    __shared__ uint32_t s[256];
    __shared__ __align__(128) unsigned char aligned[40];
    __shared__ double d0, d1[3];
    TF_DYNAMIC_SMEM(uint32_t, dyn);
    const unsigned t = threadIdx.x, b = blockIdx.x;
    uint32_t* o0 = reinterpret_cast<uint32_t*>(p.out0) + b * 256;
    uint32_t* o1 = reinterpret_cast<uint32_t*>(p.out1) + b * 256;
    uint32_t* o2 = reinterpret_cast<uint32_t*>(p.out2) + b * 4;
    o0[t] = s[t];
    if (t == 0) {
        o2[0] = dyn[0];
        o2[1] = (reinterpret_cast<uintptr_t>(dyn) % 16) == 0;
        o2[2] = (reinterpret_cast<uintptr_t>(aligned) % 128) == 0;
        uint64_t bits;
        memcpy(&bits, &d0, 8);
        o2[3] = (uint32_t)bits;
        d1[0] = 1.0;
    }
    __syncthreads();
    s[t] = 1000 * b + t;
    __syncthreads();
    o1[t] = s[(t + 1) % blockDim.x];
}

// Warps reading a shared tile that one warp then overwrites: the tile pipeline of a
// tiled kernel, shrunk. Blocks of 64 threads (2 warps), n phases; every block reads
// the same input. Phase 0's tile (64 f32 of in0) is loaded by all threads, then a
// barrier. In every phase each warp sums the tile (lane l reads tile[l] and
// tile[l + 32], then a __shfl_xor_sync tree) into out0[(block * n + phase) * 2 +
// warp]; then warp 0 alone loads the next phase's tile (in0 + 64 * (phase + 1)) over
// the same tile: arg 0 with plain stores; arg 1 with cp.async (16 bytes per lane,
// lanes 0-15), waited for after the next barrier and followed by another barrier
// (the usual issue / barrier / wait / barrier pipeline). mode 1: a __syncthreads
// between the sums and the overwrite (correct); mode 0: none (a race on a GPU: warp 0
// may overwrite the tile before warp 1 has read it). Under the round-robin warp order
// warp 1 always reads before warp 0 overwrites (the shuffles keep the warps within
// one collective of each other), so mode 0 passes there; under a warp-major order
// that runs warp 0 first, warp 1 reads the next tile (arg 0) or poison (arg 1).
__device__ void tile_overwrite_race(const tf_test_params& p) {
    __shared__ __align__(16) float tile[64];
    const unsigned t = threadIdx.x, lane = t % 32, warp = t / 32;
    const float* src = reinterpret_cast<const float*>(p.in0);
    float* out = reinterpret_cast<float*>(p.out0) + (int64_t)blockIdx.x * p.n * 2;
    tile[t] = src[t];
    __syncthreads();
    for (int64_t ph = 0; ph < p.n; ++ph) {
        float v = tile[lane] + tile[lane + 32];
        for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0) out[ph * 2 + warp] = v;
        if (p.mode) __syncthreads();  // the barrier the overwrite needs
        if (ph + 1 < p.n && warp == 0) {
            const float* next = src + 64 * (ph + 1);
            if (p.arg == 1) {
                if (lane < 16) tf::cp_async_16(&tile[lane * 4], next + lane * 4, 16);
                tf::cp_async_commit();
            } else {
                tile[lane] = next[lane];
                tile[lane + 32] = next[lane + 32];
            }
        }
        __syncthreads();
        if (p.arg == 1) {
            tf::cp_async_wait<0>();
            __syncthreads();
        }
    }
}

}  // namespace tf_test_warp

extern "C" __global__ void tf_test_collectives(const tf_test_params p) { tf_test_warp::collectives(p); }
extern "C" __global__ void __launch_bounds__(1024) tf_test_block_reduce(const tf_test_params p) {
    tf_test_warp::block_reduce(p);
}
extern "C" __global__ void tf_test_warp_race(const tf_test_params p) { tf_test_warp::warp_race(p); }
extern "C" __global__ void tf_test_indices(const tf_test_params p) { tf_test_warp::indices(p); }
extern "C" __global__ void tf_test_smem_poison(const tf_test_params p) { tf_test_warp::smem_poison(p); }
extern "C" __global__ void tf_test_tile_overwrite_race(const tf_test_params p) {
    tf_test_warp::tile_overwrite_race(p);
}
