// emu_tensor.cu: emulator test kernels for mma.sync m16n8k16, ldmatrix and their
// composition (tests/emulator.rs). Emulator only: not part of the fatbin.
//
// Fragments are built here straight from the PTX ISA tables of docs/ptx-fragments.md
// (groupID = lane >> 2, threadID_in_group = lane % 4), never from emulator code.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/mma.cuh"
#include "tf/smem.cuh"

namespace tf_test_tensor {

// Element (row, col) of a 16-bit matrix stored row-major with `ld` elements a row.
__device__ __forceinline__ uint32_t at(const uint16_t* m, int ld, int row, int col) {
    return m[row * ld + col];
}

// One 16x16x8 product per warp: tile t = blockIdx.x * warps + warp of
//   in0: A tiles, u16 bits [n][16][16] row-major;  in1: B tiles, u16 bits [n][16][8]
//   (B[k][n] row-major); in2: C tiles f32 [n][16][8];  out0: D = A*B + C, f32 [n][16][8].
template <typename T>
__device__ void mma_tiles(const tf_test_params& p) {
    const int lane = threadIdx.x % 32;
    const int64_t t = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (t >= p.n) return;  // whole warps only
    const uint16_t* A = reinterpret_cast<const uint16_t*>(p.in0) + t * 256;
    const uint16_t* B = reinterpret_cast<const uint16_t*>(p.in1) + t * 128;
    const float* C = reinterpret_cast<const float*>(p.in2) + t * 128;
    float* D = reinterpret_cast<float*>(p.out0) + t * 128;
    const int g = lane >> 2, q = lane % 4;
    uint32_t a[4], b[2];
    float d[4];
    for (int r = 0; r < 4; ++r) {  // a_{2r}, a_{2r+1} in register r, low half first
        uint32_t v = 0;
        for (int h = 0; h < 2; ++h) {
            const int i = 2 * r + h;
            const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
            const int col = (i < 4) ? q * 2 + (i & 1) : q * 2 + (i & 1) + 8;
            v |= at(A, 16, row, col) << (16 * h);
        }
        a[r] = v;
    }
    for (int r = 0; r < 2; ++r) {
        uint32_t v = 0;
        for (int h = 0; h < 2; ++h) {
            const int i = 2 * r + h;
            const int k = (i < 2) ? q * 2 + (i & 1) : q * 2 + (i & 1) + 8;
            v |= at(B, 8, k, g) << (16 * h);
        }
        b[r] = v;
    }
    for (int i = 0; i < 4; ++i) d[i] = C[(i < 2 ? g : g + 8) * 8 + q * 2 + (i & 1)];
    tf::mma_m16n8k16<T>(d, a, b);
    for (int i = 0; i < 4; ++i) D[(i < 2 ? g : g + 8) * 8 + q * 2 + (i & 1)] = d[i];
}

// ldmatrix of 32 rows of 8 u16 (in0, [32][8]) copied to shared memory; lane l passes
// the address of row in1[l] (int32 [32]) plus `n` bytes. mode: 1, 2 or 4 matrices;
// arg bit 0: .trans; arg bit 1: pass a global address instead. out0: u32 [32][4],
// lane-major, registers r0..r(mode-1).
__device__ void ldmatrix_rows(const tf_test_params& p) {
    __shared__ __align__(16) uint16_t rows[32 * 8];
    const int lane = threadIdx.x;
    const uint16_t* src = reinterpret_cast<const uint16_t*>(p.in0);
    for (int c = 0; c < 8; ++c) rows[lane * 8 + c] = src[lane * 8 + c];
    __syncwarp();
    const int row = reinterpret_cast<const int32_t*>(p.in1)[lane];
    const char* addr = reinterpret_cast<const char*>(rows + row * 8) + p.n;
    if (p.arg & 2) addr = reinterpret_cast<const char*>(src + row * 8);
    uint32_t r[4] = {0, 0, 0, 0};
    const bool trans = p.arg & 1;
    if (p.mode == 1) {
        uint32_t x[1];
        if (trans) tf::ldmatrix_x1_trans(x, addr);
        else tf::ldmatrix_x1(x, addr);
        r[0] = x[0];
    } else if (p.mode == 2) {
        uint32_t x[2];
        if (trans) tf::ldmatrix_x2_trans(x, addr);
        else tf::ldmatrix_x2(x, addr);
        r[0] = x[0];
        r[1] = x[1];
    } else {
        if (trans) tf::ldmatrix_x4_trans(r, addr);
        else tf::ldmatrix_x4(r, addr);
    }
    uint32_t* out = reinterpret_cast<uint32_t*>(p.out0);
    for (int m = 0; m < 4; ++m) out[lane * 4 + m] = r[m];
}

// ldmatrix -> mma as kernels use it. in0: A u16 [16][16] row-major; in1: B u16 [16][8]
// (B[k][n]). Shared tiles are padded (A: 24 elements a row; B^T: 24). out0: D via
// A = ldmatrix_x4(&A[(l%16)*ld + (l/16)*8]) and B = ldmatrix_x2_trans(&B[l%16][0]);
// out1: D via B stored transposed (Bt[n][k]) and B = ldmatrix_x2(&Bt[l%8][(l/8)*8]).
// D is f32 [16][8] row-major; C = 0.
template <typename T>
__device__ void ldsm_mma(const tf_test_params& p) {
    TF_DYNAMIC_SMEM(unsigned char, smem);
    constexpr int LDA = 24, LDB = 8, LDBT = 24;
    uint16_t* sA = reinterpret_cast<uint16_t*>(smem);
    uint16_t* sB = sA + 16 * LDA;   // 16 rows of 8: row stride 16 bytes
    uint16_t* sBt = sB + 16 * LDB;  // 8 rows of 24
    const int lane = threadIdx.x;
    const uint16_t* A = reinterpret_cast<const uint16_t*>(p.in0);
    const uint16_t* B = reinterpret_cast<const uint16_t*>(p.in1);
    for (int i = lane; i < 256; i += 32) sA[(i / 16) * LDA + i % 16] = A[i];
    for (int i = lane; i < 128; i += 32) {
        sB[(i / 8) * LDB + i % 8] = B[i];
        sBt[(i % 8) * LDBT + i / 8] = B[i];
    }
    __syncwarp();
    uint32_t a[4], b[2], bt[2];
    tf::ldmatrix_x4(a, sA + (lane % 16) * LDA + (lane / 16) * 8);
    tf::ldmatrix_x2_trans(b, sB + (lane % 16) * LDB);
    tf::ldmatrix_x2(bt, sBt + (lane % 8) * LDBT + ((lane / 8) % 2) * 8);
    float d0[4] = {0, 0, 0, 0}, d1[4] = {0, 0, 0, 0};
    tf::mma_m16n8k16<T>(d0, a, b);
    tf::mma_m16n8k16<T>(d1, a, bt);
    const int g = lane >> 2, q = lane % 4;
    float* D0 = reinterpret_cast<float*>(p.out0);
    float* D1 = reinterpret_cast<float*>(p.out1);
    for (int i = 0; i < 4; ++i) {
        D0[(i < 2 ? g : g + 8) * 8 + q * 2 + (i & 1)] = d0[i];
        D1[(i < 2 ? g : g + 8) * 8 + q * 2 + (i & 1)] = d1[i];
    }
}

}  // namespace tf_test_tensor

extern "C" __global__ void tf_test_mma_f16(const tf_test_params p) { tf_test_tensor::mma_tiles<__half>(p); }
extern "C" __global__ void tf_test_mma_bf16(const tf_test_params p) {
    tf_test_tensor::mma_tiles<__nv_bfloat16>(p);
}
extern "C" __global__ void tf_test_ldmatrix(const tf_test_params p) { tf_test_tensor::ldmatrix_rows(p); }
extern "C" __global__ void tf_test_ldsm_mma(const tf_test_params p) {
    if (p.mode == 1) tf_test_tensor::ldsm_mma<__half>(p);
    else tf_test_tensor::ldsm_mma<__nv_bfloat16>(p);
}
