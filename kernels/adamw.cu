// adamw.cu: the fused AdamW step of training over a list of tensors, deterministic.
//
// Computes, for one step t with the clip factor c and every element of every tensor
// (the f64 formulas of tf-ref's adamw_step, here in f32), the f32 gradient first
// multiplied by the step's grad_scale s (e.g. 1/B for the mean of B summed windows):
//   g = s * g;  N = sqrt(sum of g^2 over all tensors);  c = min(1, max_norm / (N + 1e-6))
//   g = c * g;  p = p - lr*wd*p (decayed tensors);  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
//   p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps);  param = round(p)
// in three launches with no host sync between them:
//   adamw_norm_partial  one CTA per chunk of TF_ADAMW_CHUNK elements: the f32 sum of
//                       squares of its scaled grads (fixed per-thread order, then a
//                       fixed tree) -> partial[chunk];
//   adamw_norm_final    one CTA: the partials summed in f64 in a fixed order -> N, c;
//   adamw_update        one CTA per chunk: reads N and c from device memory; when N is
//                       not finite it writes nothing (the step is skipped, as tf-ref
//                       refuses it), else updates master, m, v and the parameter copy.
// No atomics anywhere: the same inputs give the same bits on every run.
//
// Gradients are f32 whatever the parameters' storage type T: the model's backward
// produces f32 gradients, and rounding them to f16 first would flush small ones to
// zero (f16's smallest subnormal is 6e-8) and coarsen the rest.
//
// Thread mapping: blockIdx.x is a chunk; the CTA finds its descriptor by binary search
// over chunk_start. Its 256 threads stride over the chunk's elements in groups of
// 16 bytes of the storage type (8 for f16/bf16, 4 for f32) when every pointer of the
// descriptor is 16-byte aligned, else element by element; the tensor's last chunk ends
// with a scalar tail. The norm pass reads the f32 gradients in groups of 4. Indices
// are 64-bit.
//
// Preconditions (checked by the host plan): numel >= 1, chunk_start consistent with
// the numels, pointers aligned to their element size, no buffer overlapping another.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"

namespace tf_adamw {

constexpr int THREADS = TF_ADAMW_THREADS;
constexpr int64_t CHUNK = TF_ADAMW_CHUNK;
static_assert(CHUNK % 8 == 0, "a chunk holds whole 16-byte groups of every storage type");

// The descriptor owning chunk `c` (chunk_start ascending, descs[0].chunk_start == 0).
__device__ __forceinline__ tf_adamw_desc find(const tf_adamw_params& p, int64_t c) {
    const tf_adamw_desc* d = reinterpret_cast<const tf_adamw_desc*>(p.descs);
    int64_t lo = 0, hi = p.num_descs - 1;
    while (lo < hi) {
        const int64_t mid = (lo + hi + 1) / 2;
        if (d[mid].chunk_start <= c) lo = mid;
        else hi = mid - 1;
    }
    return d[lo];
}

__device__ __forceinline__ bool aligned16(tf_ptr a) { return (a & 15u) == 0; }

// Elements [begin, end) of the descriptor that chunk `c` covers.
__device__ __forceinline__ void chunk_range(const tf_adamw_desc& d, int64_t c, int64_t& begin, int64_t& end) {
    begin = (c - d.chunk_start) * CHUNK;
    end = begin + CHUNK < d.numel ? begin + CHUNK : d.numel;
}

// N consecutive f32 values rounded to T at element i (one 16-byte store when N
// elements of T make 16 bytes).
template <typename T, int N>
__device__ __forceinline__ void store(T* base, int64_t i, const float (&in)[N]) {
    if constexpr (N * sizeof(T) == 16) {
        uint4 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int k = 0; k < N; ++k) e[k] = tf::from_float<T>(in[k]);
        *reinterpret_cast<uint4*>(base + i) = raw;
    } else {
#pragma unroll
        for (int k = 0; k < N; ++k) base[i + k] = tf::from_float<T>(in[k]);
    }
}

// f32 master, m, v: groups of N floats, as 16-byte loads when N is a multiple of 4.
template <int N>
__device__ __forceinline__ void load_f32(const float* base, int64_t i, float (&out)[N]) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int k = 0; k < N; k += 4) {
            const float4 q = *reinterpret_cast<const float4*>(base + i + k);
            out[k] = q.x, out[k + 1] = q.y, out[k + 2] = q.z, out[k + 3] = q.w;
        }
    } else {
#pragma unroll
        for (int k = 0; k < N; ++k) out[k] = base[i + k];
    }
}

template <int N>
__device__ __forceinline__ void store_f32(float* base, int64_t i, const float (&in)[N]) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int k = 0; k < N; k += 4)
            *reinterpret_cast<float4*>(base + i + k) = make_float4(in[k], in[k + 1], in[k + 2], in[k + 3]);
    } else {
#pragma unroll
        for (int k = 0; k < N; ++k) base[i + k] = in[k];
    }
}

// Sum of squares of the scaled f32 grads [begin, end): groups of N from thread t,
// then the tail.
template <int N>
__device__ float sum_squares(const float* g, float scale, int64_t begin, int64_t end) {
    float acc = 0.0f;
    const int64_t groups = (end - begin) / N;
    for (int64_t j = threadIdx.x; j < groups; j += THREADS) {
        float x[N];
        load_f32<N>(g, begin + j * N, x);
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const float y = scale * x[k];
            acc += y * y;
        }
    }
    for (int64_t i = begin + groups * N + threadIdx.x; i < end; i += THREADS) {
        const float y = scale * g[i];
        acc += y * y;
    }
    return acc;
}

__device__ float chunk_sum_squares(const tf_adamw_desc& d, float scale, int64_t begin, int64_t end) {
    const float* g = reinterpret_cast<const float*>(d.grad);
    return aligned16(d.grad) ? sum_squares<4>(g, scale, begin, end) : sum_squares<1>(g, scale, begin, end);
}

// The step's constants, f32.
struct Coef {
    float scale, c, lr, lr_wd, b1, omb1, b2, omb2, inv_bc1, inv_bc2, eps;
};

template <typename T, int N>
__device__ __forceinline__ void update_group(const tf_adamw_desc& d, const Coef& k, int64_t i) {
    float g[N], p[N], m[N], v[N];
    load_f32<N>(reinterpret_cast<const float*>(d.grad), i, g);
    load_f32<N>(reinterpret_cast<const float*>(d.master), i, p);
    load_f32<N>(reinterpret_cast<const float*>(d.m), i, m);
    load_f32<N>(reinterpret_cast<const float*>(d.v), i, v);
#pragma unroll
    for (int e = 0; e < N; ++e) {
        if (d.decay) p[e] = p[e] - k.lr_wd * p[e];
        const float ge = k.c * (k.scale * g[e]);
        m[e] = k.b1 * m[e] + k.omb1 * ge;
        v[e] = k.b2 * v[e] + k.omb2 * (ge * ge);
        p[e] = p[e] - k.lr * (m[e] * k.inv_bc1) / (sqrtf(v[e] * k.inv_bc2) + k.eps);
    }
    store_f32<N>(reinterpret_cast<float*>(d.master), i, p);
    store_f32<N>(reinterpret_cast<float*>(d.m), i, m);
    store_f32<N>(reinterpret_cast<float*>(d.v), i, v);
    store<T, N>(reinterpret_cast<T*>(d.param), i, p);
}

template <typename T, int N>
__device__ void update_range(const tf_adamw_desc& d, const Coef& k, int64_t begin, int64_t end) {
    const int64_t groups = (end - begin) / N;
    for (int64_t j = threadIdx.x; j < groups; j += THREADS) update_group<T, N>(d, k, begin + j * N);
    for (int64_t i = begin + groups * N + threadIdx.x; i < end; i += THREADS) update_group<T, 1>(d, k, i);
}

template <typename T>
__device__ void chunk_update(const tf_adamw_desc& d, const Coef& k, int64_t begin, int64_t end) {
    constexpr int V = 16 / sizeof(T);
    const bool vec = aligned16(d.param) && aligned16(d.grad) && aligned16(d.master) && aligned16(d.m) &&
                     aligned16(d.v);
    if (vec) update_range<T, V>(d, k, begin, end);
    else update_range<T, 1>(d, k, begin, end);
}

}  // namespace tf_adamw

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(TF_ADAMW_THREADS) adamw_norm_partial(const tf_adamw_params p) {
    using namespace tf_adamw;
    __shared__ float red[THREADS];
    const int64_t c = blockIdx.x;
    if (c >= p.num_chunks) return;  // uniform across the CTA
    const tf_adamw_desc d = find(p, c);
    int64_t begin, end;
    chunk_range(d, c, begin, end);
    red[threadIdx.x] = chunk_sum_squares(d, p.grad_scale, begin, end);
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s /= 2) {
        if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) reinterpret_cast<float*>(p.partial)[c] = red[0];
}

extern "C" __global__ void __launch_bounds__(TF_ADAMW_THREADS) adamw_norm_final(const tf_adamw_params p) {
    using namespace tf_adamw;
    __shared__ double red[THREADS];
    const float* part = reinterpret_cast<const float*>(p.partial);
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < p.num_chunks; i += THREADS) acc += (double)part[i];
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s /= 2) {
        if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const double n = sqrt(red[0]);
        double c = 1.0;
        if (p.max_norm > 0.0f) {
            const double r = (double)p.max_norm / (n + 1e-6);
            c = r < 1.0 ? r : 1.0;
        }
        float* out = reinterpret_cast<float*>(p.norm);
        out[0] = (float)n;
        out[1] = (float)c;
    }
}

extern "C" __global__ void __launch_bounds__(TF_ADAMW_THREADS) adamw_update(const tf_adamw_params p) {
    using namespace tf_adamw;
    const int64_t c = blockIdx.x;
    if (c >= p.num_chunks) return;
    const float* nc = reinterpret_cast<const float*>(p.norm);
    const float n = nc[0];
    if (!isfinite(n)) return;  // a NaN or infinite gradient: the step is skipped
    const Coef k{p.grad_scale, nc[1], p.lr, p.lr_wd, p.beta1, p.one_minus_beta1, p.beta2, p.one_minus_beta2, p.inv_bc1, p.inv_bc2,
                 p.eps};
    const tf_adamw_desc d = find(p, c);
    int64_t begin, end;
    chunk_range(d, c, begin, end);
    if (d.dtype == TF_DTYPE_F32) chunk_update<float>(d, k, begin, end);
    else if (d.dtype == TF_DTYPE_F16) chunk_update<__half>(d, k, begin, end);
    else chunk_update<__nv_bfloat16>(d, k, begin, end);
}
