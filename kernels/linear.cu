// linear.cu: y = x . w^T (PyTorch F.linear, no bias) on SIMT cores.
//
// The benchmarks' dense baseline runs through cuBLAS on a GPU; this kernel is
// what the emulator runs in its place (and a portable fallback). Shapes: x [t, d_in],
// w [d_out, d_in], y [t, d_out], row strides in elements; f32 accumulation.
//
// Thread mapping: a 16x16 block computes a 16x16 tile of y; each thread one
// element. x and w tiles of 16 x 16 pass through static shared memory, tails
// zero-filled. Simple on purpose: it is a reference-grade baseline, not a fast path.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"

namespace tf_linear {

constexpr int TILE = 16;

template <typename T>
__device__ void linear_tile(const tf_linear_params& p) {
    __shared__ float xs[TILE][TILE + 1];
    __shared__ float ws[TILE][TILE + 1];
    const T* x = reinterpret_cast<const T*>(p.x);
    const T* w = reinterpret_cast<const T*>(p.w);
    T* y = reinterpret_cast<T*>(p.y);
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t row = (int64_t)blockIdx.y * TILE + ty;  // row of y (token)
    const int64_t col = (int64_t)blockIdx.x * TILE + tx;  // column of y (output feature)
    const int64_t wrow = (int64_t)blockIdx.x * TILE + ty; // row of w this thread loads
    float acc = 0.f;
    for (int64_t k0 = 0; k0 < p.d_in; k0 += TILE) {
        const int64_t k = k0 + tx;
        xs[ty][tx] = (row < p.t && k < p.d_in) ? tf::to_float(x[row * p.x_row_stride + k]) : 0.f;
        ws[ty][tx] = (wrow < p.d_out && k < p.d_in) ? tf::to_float(w[wrow * p.w_row_stride + k]) : 0.f;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE; ++kk) acc = fmaf(xs[ty][kk], ws[tx][kk], acc);
        __syncthreads();
    }
    if (row < p.t && col < p.d_out) y[row * p.y_row_stride + col] = tf::from_float<T>(acc);
}

}  // namespace tf_linear

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(256) linear_f32(const tf_linear_params p) {
    tf_linear::linear_tile<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) linear_f16(const tf_linear_params p) {
    tf_linear::linear_tile<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) linear_bf16(const tf_linear_params p) {
    tf_linear::linear_tile<__nv_bfloat16>(p);
}
