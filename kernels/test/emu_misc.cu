// emu_misc.cu: emulator test kernels for cp.async, conversions, the error paths and
// timing (tests/emulator.rs). Emulator only: not part of the fatbin.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/async.cuh"
#include "tf/mma.cuh"
#include "tf/smem.cuh"

namespace tf_test_misc {

// cp.async of `mode` (4, 8, 16) bytes per copy. Thread t owns 2 * mode bytes of
// dynamic shared memory at t * 2 * mode: A (first half) and B (second half), with
// sources in0 + t * 2 * mode (A) and + mode (B); A copies in1[t] (int32) bytes, B all.
// Snapshots of the thread's 2 * mode bytes go to out0 ([5][threads][2 * mode] bytes):
//   0: after issuing A (group 1) and B (group 2)      -> poison (0xFF) everywhere
//   1: after cp_async_wait<1>                          -> A landed (zero-filled), B poison
//   2: after cp_async_wait<0>                          -> both landed
//   3: after issuing C (A's source, all bytes) into B's place, uncommitted, and
//      cp_async_wait<0>                                -> B's place is poison (C pending)
//   4: after cp_async_commit and cp_async_wait<0>      -> C landed
__device__ void cp_async_test(const tf_test_params& p) {
    TF_DYNAMIC_SMEM(unsigned char, smem);
    const int size = p.mode;
    const unsigned t = threadIdx.x, nt = blockDim.x;
    unsigned char* mine = smem + t * 2 * size;
    const unsigned char* src = reinterpret_cast<const unsigned char*>(p.in0) + t * 2 * size;
    const int nbytes = reinterpret_cast<const int32_t*>(p.in1)[t];
    unsigned char* out = reinterpret_cast<unsigned char*>(p.out0);
    auto snap = [&](int phase) {
        for (int i = 0; i < 2 * size; ++i) out[((size_t)phase * nt + t) * 2 * size + i] = mine[i];
    };
    auto copy = [&](unsigned char* d, const unsigned char* s, int n) {
        if (size == 16) tf::cp_async_16(d, s, n);
        else if (size == 8) tf::cp_async_8(d, s, n);
        else tf::cp_async_4(d, s, n);
    };
    copy(mine, src, nbytes);
    tf::cp_async_commit();
    copy(mine + size, src + size, size);
    tf::cp_async_commit();
    snap(0);
    tf::cp_async_wait<1>();
    snap(1);
    tf::cp_async_wait<0>();
    snap(2);
    copy(mine + size, src, size);
    tf::cp_async_wait<0>();
    snap(3);
    tf::cp_async_commit();
    tf::cp_async_wait<0>();
    snap(4);
}

// Conversions, n elements, grid-stride. mode 0: in0 f32 -> out0 f16 bits, out1 bf16
// bits (u16). mode 1: in0 u16 bits -> out0 f32 of f16, out1 f32 of bf16. mode 2: in0
// f64 -> out0 f16 bits, out1 bf16 bits (the double constructors).
__device__ void convert(const tf_test_params& p) {
    const int64_t stride = (int64_t)blockDim.x * gridDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        if (p.mode == 0) {
            const float x = reinterpret_cast<const float*>(p.in0)[i];
            reinterpret_cast<uint16_t*>(p.out0)[i] = __half_as_ushort(__float2half_rn(x));
            reinterpret_cast<uint16_t*>(p.out1)[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x));
        } else if (p.mode == 1) {
            const uint16_t x = reinterpret_cast<const uint16_t*>(p.in0)[i];
            reinterpret_cast<float*>(p.out0)[i] = __half2float(__ushort_as_half(x));
            reinterpret_cast<float*>(p.out1)[i] = __bfloat162float(__ushort_as_bfloat16(x));
        } else {
            const double x = reinterpret_cast<const double*>(p.in0)[i];
            reinterpret_cast<uint16_t*>(p.out0)[i] = __half_as_ushort(__half(x));
            reinterpret_cast<uint16_t*>(p.out1)[i] = __bfloat16_as_ushort(__nv_bfloat16(x));
        }
    }
}

// Each error path of the emulator, by mode (block of 64 threads unless noted):
//  0 none (a barrier and a shuffle)         1 divergent barrier (two call sites)
//  2 a thread exits before a barrier         3 lanes disagree on the shuffle mask
//  4 a lane outside the mask calls           5 lanes disagree on the op (shfl vs ballot)
//  6 deadlock: half a warp in a shuffle, the other half at a barrier
//  7 half a warp in a shuffle, the other half exits
//  8 ldmatrix row address not 16-byte aligned (lane 3)
//  9 ldmatrix address outside shared memory (global)
// 10 cp.async destination outside shared memory   11 cp.async destination misaligned
// 12 __trap()                                      13 mma with a partial warp (block 48)
// 14 shuffle width 3                               15 exit at a barrier of another warp
// 16 a write `arg` bytes into 256 bytes of dynamic shared memory (past its end)
// 17 thread 3 overflows its stack (deep recursion)  18 a read through a wild pointer
// 19 thread 0 spins until thread 1 writes a flag, with no rendezvous in the loop (a
//    hang under cooperative scheduling when thread 0 runs first: the watchdog's case)
__device__ __noinline__ int deep(int n) {
    volatile char buf[1024];
    buf[n % 1024] = (char)n;
    if (n == 0) return buf[0];
    return deep(n - 1) + buf[(n * 7) % 1024];
}

__device__ void errors(const tf_test_params& p) {
    __shared__ __align__(16) uint16_t tile[64 * 8];
    const unsigned t = threadIdx.x, lane = t % 32;
    const unsigned full = 0xffffffffu;
    float* out = reinterpret_cast<float*>(p.out0);
    float v = (float)t;
    tile[t % 64] = (uint16_t)t;
    switch (p.mode) {
        case 0:
            __syncthreads();
            v = __shfl_xor_sync(full, v, 1);
            break;
        case 1:
            if (t < 32) __syncthreads();
            else __syncthreads();
            break;
        case 2:
            if (t == 5) return;
            __syncthreads();
            break;
        case 3: v = __shfl_sync(lane < 16 ? full : 0xffff0000u, v, 0); break;
        case 4: v = __shfl_sync(0xfffffff0u, v, 4); break;
        case 5:
            if (lane % 2) v = __shfl_sync(full, v, 0);
            else v = (float)__ballot_sync(full, 1);
            break;
        case 6:
            if (lane < 16) v = __shfl_sync(full, v, 0);
            else __syncthreads();
            break;
        case 7:
            if (lane >= 16) return;
            v = __shfl_sync(full, v, 0);
            break;
        case 8:
        case 9: {
            uint32_t r[4];
            const char* a = reinterpret_cast<const char*>(tile + (t % 32) * 8);
            if (p.mode == 8 && lane == 3) a += 8;
            if (p.mode == 9) a = reinterpret_cast<const char*>(p.in0);
            tf::ldmatrix_x4(r, a);
            v = (float)r[0];
            break;
        }
        case 10: tf::cp_async_16(reinterpret_cast<void*>(p.out1), reinterpret_cast<const void*>(p.in0), 16); break;
        case 11: tf::cp_async_8(reinterpret_cast<char*>(tile) + 4, reinterpret_cast<const void*>(p.in0), 8); break;
        case 12:
            if (t == 7) __trap();
            break;
        case 13: {
            uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
            float d[4] = {0, 0, 0, 0};
            tf::mma_m16n8k16<__half>(d, a, b);
            v = d[0];
            break;
        }
        case 14: v = __shfl_xor_sync(full, v, 1, 3); break;
        case 15:
            if (t >= 32) return;
            __syncthreads();
            break;
        case 16: {
            TF_DYNAMIC_SMEM(unsigned char, dyn);
            if (t == 9) dyn[p.arg] = 1;
            break;
        }
        case 17:
            if (t == 3) v = (float)deep(1 << 20);
            break;
        case 18:
            if (t == 40) v = (float)*reinterpret_cast<volatile int*>(p.in2 + 16);  // in2 = 0
            break;
        case 19: {
            volatile uint32_t* flag = reinterpret_cast<volatile uint32_t*>(p.out1);  // out1 = 0 before
            if (t == 1) *flag = 1u;
            if (t == 0)
                while (*flag == 0u) {
                }
            break;
        }
        default: break;
    }
    out[t] = v;
}

// A static __shared__ array over the 48 KiB limit.
__device__ void big_static(const tf_test_params& p) {
    __shared__ unsigned char big[48 * 1024 + 16];
    big[threadIdx.x] = 1;
    reinterpret_cast<unsigned char*>(p.out0)[threadIdx.x] = big[threadIdx.x];
}

// Iterations of one rendezvous, for timing: n times; mode 0: __syncwarp();
// 1: __syncthreads(); 2: a bf16 mma.sync per warp; 3: __shfl_xor_sync;
// 4: __nanosleep(0) (a yield: with 2 threads, one fiber switch each).
// out0[thread] (f32): a checksum.
__device__ void bench(const tf_test_params& p) {
    float acc = 0.0f;
    float d[4] = {0, 0, 0, 0};
    const uint32_t a[4] = {0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};  // bf16 1.0
    const uint32_t b[2] = {0x3f803f80u, 0x3f803f80u};
    for (int64_t i = 0; i < p.n; ++i) {
        switch (p.mode) {
            case 0: __syncwarp(); break;
            case 1: __syncthreads(); break;
            case 2: tf::mma_m16n8k16<__nv_bfloat16>(d, a, b); break;
            case 3: acc += __shfl_xor_sync(0xffffffffu, acc + 1.0f, 1); break;
            default: __nanosleep(0); break;
        }
    }
    reinterpret_cast<float*>(p.out0)[(int64_t)blockIdx.x * blockDim.x + threadIdx.x] = acc + d[0];
}

}  // namespace tf_test_misc

extern "C" __global__ void tf_test_cp_async(const tf_test_params p) { tf_test_misc::cp_async_test(p); }
extern "C" __global__ void tf_test_convert(const tf_test_params p) { tf_test_misc::convert(p); }
extern "C" __global__ void tf_test_errors(const tf_test_params p) { tf_test_misc::errors(p); }
extern "C" __global__ void tf_test_big_static(const tf_test_params p) { tf_test_misc::big_static(p); }
extern "C" __global__ void tf_test_bench(const tf_test_params p) { tf_test_misc::bench(p); }
