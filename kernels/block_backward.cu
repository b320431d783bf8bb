// block_backward.cu: the backward of the block's small ops on SIMT cores, in f32
// arithmetic with f32 gradients (the rotary backward needs no kernel of its own: it
// is the rotary kernel at -θ, tf-host ops/block_backward.rs). The math is tf-ref's
// grad/ops.rs and grad/embedding.rs. Every sum runs in a fixed order, so results do
// not depend on scheduling.
//
// layer_norm_backward_*: one warp per row (grid-stride over rows). With the forward's
//   statistics recomputed (mean, biased variance, σ = sqrt(var + eps)), x̂ = (x - μ)/σ
//   and g = dy ⊙ w (dy without a weight): dx = (g - mean(g) - x̂·mean(g ⊙ x̂)) / σ; a
//   row with σ = 0 gets dx = 0. Writes (μ, 1/σ) per row (0 for 1/σ when σ = 0) for:
// layer_norm_param_grads_*: one thread per column, rows summed in order:
//   dweight[c] = Σ_r dy[r, c]·x̂[r, c], dbias[c] = Σ_r dy[r, c].
// embedding_backward_*: dE[v, :] = Σ dx[i, :] over the positions i with tokens[i] = v,
//   in increasing i: the host sorts the positions by id (a counting sort) into
//   `order` with per-id ranges `starts`; one warp per vocab row (grid-stride), lanes
//   over columns. Every row of dE is written (zeros for ids that do not occur).
// cast_f32_to_*: dst[i] = src[i] rounded to the storage type, grid-stride.
// cross_entropy_*: one block of 256 threads per row of the logits z [t, V]:
//   m = max z, s = Σ exp(z - m) (block reductions in warp order), loss[i] =
//   m + ln s - z[target]; then, in place, z_j ← (exp(z_j - m)/s - [j = target]) / t,
//   rounded to the storage type. No [t, V] f32 buffer exists: the only f32 output is
//   the per-row loss, which the host sums in row order.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/reduce.cuh"

namespace tf_block_backward {

// ------------------------------------------------------------------ layer norm

template <typename T>
__device__ __forceinline__ void layer_norm_backward(const tf_layer_norm_backward_params& p) {
    const int lane = threadIdx.x % 32;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    const T* w = reinterpret_cast<const T*>(p.weight);
    const float fd = (float)p.d;  // exact: d < 2^24
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < p.t; r += warps) {
        const T* x = reinterpret_cast<const T*>(p.x) + r * p.x_row_stride;
        const T* dy = reinterpret_cast<const T*>(p.dy) + r * p.dy_row_stride;
        float* dx = reinterpret_cast<float*>(p.dx) + r * p.d;
        float sum = 0.0f;
        for (int64_t c = lane; c < p.d; c += 32) sum += tf::to_float(x[c]);
        const float mean = tf::warp_sum(sum) / fd;  // exact division: a constant row's mean is its value when the sum is exact
        float sq = 0.0f;
        for (int64_t c = lane; c < p.d; c += 32) {
            const float u = tf::to_float(x[c]) - mean;
            sq = fmaf(u, u, sq);
        }
        const float sigma = sqrtf(tf::warp_sum(sq) / fd + p.eps);
        const float rstd = sigma == 0.0f ? 0.0f : 1.0f / sigma;
        if (lane == 0) reinterpret_cast<float2*>(p.stats)[r] = make_float2(mean, rstd);
        if (sigma == 0.0f) {  // the forward's x̂ = 0 row
            for (int64_t c = lane; c < p.d; c += 32) dx[c] = 0.0f;
            continue;
        }
        float gs = 0.0f, gx = 0.0f;
        for (int64_t c = lane; c < p.d; c += 32) {
            const float g = tf::to_float(dy[c]) * (w ? tf::to_float(w[c]) : 1.0f);
            gs += g;
            gx = fmaf(g, (tf::to_float(x[c]) - mean) / sigma, gx);
        }
        const float g_mean = tf::warp_sum(gs) / fd, gx_mean = tf::warp_sum(gx) / fd;
        for (int64_t c = lane; c < p.d; c += 32) {
            const float g = tf::to_float(dy[c]) * (w ? tf::to_float(w[c]) : 1.0f);
            const float xh = (tf::to_float(x[c]) - mean) / sigma;
            dx[c] = (g - g_mean - xh * gx_mean) / sigma;
        }
    }
}

template <typename T>
__device__ __forceinline__ void layer_norm_param_grads(const tf_layer_norm_backward_params& p) {
    const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= p.d) return;
    const float2* stats = reinterpret_cast<const float2*>(p.stats);
    float dw = 0.0f, db = 0.0f;
    for (int64_t r = 0; r < p.t; ++r) {
        const float dy = tf::to_float(reinterpret_cast<const T*>(p.dy)[r * p.dy_row_stride + c]);
        const float x = tf::to_float(reinterpret_cast<const T*>(p.x)[r * p.x_row_stride + c]);
        const float2 st = stats[r];
        dw = fmaf(dy, (x - st.x) * st.y, dw);
        db += dy;
    }
    reinterpret_cast<float*>(p.dweight)[c] = dw;
    reinterpret_cast<float*>(p.dbias)[c] = db;
}

// ------------------------------------------------------------------ embedding

template <typename T>
__device__ __forceinline__ void embedding_backward(const tf_embedding_backward_params& p) {
    const int lane = threadIdx.x % 32;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    const uint32_t* starts = reinterpret_cast<const uint32_t*>(p.table);  // [vocab + 1]
    const uint32_t* order = starts + p.vocab + 1;                          // [t]
    for (int64_t v = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; v < p.vocab; v += warps) {
        float* de = reinterpret_cast<float*>(p.de) + v * p.d;
        const uint32_t k0 = starts[v], k1 = starts[v + 1];
        for (int64_t c = lane; c < p.d; c += 32) {
            float acc = 0.0f;
            for (uint32_t k = k0; k < k1; ++k)
                acc += tf::to_float(reinterpret_cast<const T*>(p.dx)[(int64_t)order[k] * p.dx_row_stride + c]);
            de[c] = acc;
        }
    }
}

// -------------------------------------------------------------- cross-entropy

constexpr int kCeThreads = 256;

template <typename T>
__device__ __forceinline__ void cross_entropy(const tf_cross_entropy_params& p) {
    __shared__ float red[kCeThreads / 32];
    const int64_t r = blockIdx.x;
    T* z = reinterpret_cast<T*>(p.logits) + r * p.row_stride;
    const int64_t target = reinterpret_cast<const uint32_t*>(p.targets)[r];
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < p.vocab; j += kCeThreads) m = tf::max_nan(m, tf::to_float(z[j]));
    m = tf::block_reduce<kCeThreads, true>(m, red);
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < p.vocab; j += kCeThreads) s += expf(tf::to_float(z[j]) - m);
    s = tf::block_reduce<kCeThreads, false>(s, red);
    const float zt = tf::to_float(z[target]);
    __syncthreads();  // every thread has read z[target] before it is overwritten
    if (threadIdx.x == 0) reinterpret_cast<float*>(p.loss)[r] = m + logf(s) - zt;
    const float inv_s = 1.0f / s;
    for (int64_t j = threadIdx.x; j < p.vocab; j += kCeThreads) {
        const float q = expf(tf::to_float(z[j]) - m) * inv_s - (j == target ? 1.0f : 0.0f);
        z[j] = tf::from_float<T>(q * p.inv_t);
    }
}

// ------------------------------------------------------------------- cast

template <typename T>
__device__ __forceinline__ void cast(const tf_cast_params& p) {
    const float* src = reinterpret_cast<const float*>(p.src);
    T* dst = reinterpret_cast<T*>(p.dst);
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride)
        dst[i] = tf::from_float<T>(src[i]);
}

}  // namespace tf_block_backward

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(256) layer_norm_backward_f32(const tf_layer_norm_backward_params p) {
    tf_block_backward::layer_norm_backward<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) layer_norm_backward_f16(const tf_layer_norm_backward_params p) {
    tf_block_backward::layer_norm_backward<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) layer_norm_backward_bf16(const tf_layer_norm_backward_params p) {
    tf_block_backward::layer_norm_backward<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(256) layer_norm_param_grads_f32(const tf_layer_norm_backward_params p) {
    tf_block_backward::layer_norm_param_grads<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) layer_norm_param_grads_f16(const tf_layer_norm_backward_params p) {
    tf_block_backward::layer_norm_param_grads<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) layer_norm_param_grads_bf16(const tf_layer_norm_backward_params p) {
    tf_block_backward::layer_norm_param_grads<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(256) embedding_backward_f32(const tf_embedding_backward_params p) {
    tf_block_backward::embedding_backward<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) embedding_backward_f16(const tf_embedding_backward_params p) {
    tf_block_backward::embedding_backward<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) embedding_backward_bf16(const tf_embedding_backward_params p) {
    tf_block_backward::embedding_backward<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(256) cross_entropy_f32(const tf_cross_entropy_params p) {
    tf_block_backward::cross_entropy<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) cross_entropy_f16(const tf_cross_entropy_params p) {
    tf_block_backward::cross_entropy<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) cross_entropy_bf16(const tf_cross_entropy_params p) {
    tf_block_backward::cross_entropy<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(256) cast_f32_to_f32(const tf_cast_params p) {
    tf_block_backward::cast<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) cast_f32_to_f16(const tf_cast_params p) {
    tf_block_backward::cast<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) cast_f32_to_bf16(const tf_cast_params p) {
    tf_block_backward::cast<__nv_bfloat16>(p);
}
