// rownorm.cu: the normalisation Θ of Pattention on its own, in place on a
// score matrix A [t, n] -> S (docs/tokenformer.md, three norms):
//   l2_norm_gelu  S = gelu(A * scale / (||A_i|| + eps))
//   gelu_l2_norm  S = gelu(A) * scale / (||gelu(A_i)|| + eps)
//   softmax       S = scale * exp(A - max_i) / sum_i exp(A - max_i)
// A zero norm gives a zero row (never NaN). Non-finite scores follow the formulas
// in IEEE arithmetic (as tf-ref's pattention_norm): a NaN poisons its row, an inf
// makes the L2 norm inf (inf/inf = NaN at that entry, 0 elsewhere for l2_norm_gelu),
// softmax is NaN for a NaN or +inf anywhere in the row and 0 at a -inf. The sum of
// squares is not rescaled: rows with |A| beyond ~1e19 overflow it (the fused kernels
// scale by powers of two and do not). This is the middle step of the
// unfused pipeline (cuBLAS product -> this -> cuBLAS product) that the
// benchmarks compare the fused kernels of pattention*.cu with; the fused path
// never runs it.
//
// Thread mapping: one block of 256 threads per row (blockIdx.x = row). Pass 1
// strides the row and reduces the statistic (sum of squares, or max then sum of
// exponentials) through warp shuffles and a 8-entry shared array; pass 2
// rewrites the row. f32 arithmetic, storage f32/f16/bf16; gelu is the exact erf
// form for f32 and tf::gelu_storage16 (tf/gelu.cuh) for 16-bit storage.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/gelu.cuh"
#include "tf/reduce.cuh"

namespace tf_rownorm {

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;

template <bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* red) {
    return tf::block_reduce<THREADS, MAX>(v, red);
}

template <typename T>
__device__ void rownorm(const tf_rownorm_params& p) {
    __shared__ float red[WARPS];
    T* row = reinterpret_cast<T*>(p.a) + (int64_t)blockIdx.x * p.row_stride;
    if (p.norm == TF_NORM_SOFTMAX) {
        float m = -INFINITY;
        for (int64_t j = threadIdx.x; j < p.n; j += THREADS) m = tf::max_nan(m, tf::to_float(row[j]));
        m = block_reduce<true>(m, red);
        float l = 0.f;
        for (int64_t j = threadIdx.x; j < p.n; j += THREADS) l += expf(tf::to_float(row[j]) - m);
        l = block_reduce<false>(l, red);
        const float f = p.scale / l;
        for (int64_t j = threadIdx.x; j < p.n; j += THREADS)
            row[j] = tf::from_float<T>(f * expf(tf::to_float(row[j]) - m));
        return;
    }
    const bool gelu_first = p.norm == TF_NORM_GELU_L2_NORM;
    float ss = 0.f;
    for (int64_t j = threadIdx.x; j < p.n; j += THREADS) {
        const float a = tf::to_float(row[j]);
        const float g = gelu_first ? tf::gelu_stored_as<T>(a) : a;
        ss = fmaf(g, g, ss);
    }
    ss = block_reduce<false>(ss, red);
    const float den = sqrtf(ss) + p.eps;
    const float f = den == 0.f ? 0.f : p.scale / den;  // NaN den (a NaN in the row): NaN
    for (int64_t j = threadIdx.x; j < p.n; j += THREADS) {
        const float a = tf::to_float(row[j]);
        row[j] = tf::from_float<T>(gelu_first ? tf::gelu_stored_as<T>(a) * f : tf::gelu_stored_as<T>(a * f));
    }
}

}  // namespace tf_rownorm

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(256) rownorm_f32(const tf_rownorm_params p) {
    tf_rownorm::rownorm<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) rownorm_f16(const tf_rownorm_params p) {
    tf_rownorm::rownorm<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) rownorm_bf16(const tf_rownorm_params p) {
    tf_rownorm::rownorm<__nv_bfloat16>(p);
}
