// attention_combine.cu: the second launch of split-KV attention (Flash-Decoding).
//
// After attn_fwd_split_* (kernels/attention.cu) wrote, per split s of the key range,
// o_s (f32, normalised by that split's own row sum) to o_accum [splits, B, H, T_q, D]
// and lse_s (natural log, -inf where the split saw no key of the row) to lse_accum
// [splits, B, H, T_q], this computes per query row
//   L = log sum_s e^{lse_s},   o = sum_s e^{lse_s - L} o_s   (storage type),  lse = L
// and, when no split saw a key (L = -inf), o = 0 and lse = +inf.
//
// Thread mapping: a warp per row, TF_ATTN_COMBINE_ROWS rows per 128-thread block,
// grid (ceil(B * H * T_q / TF_ATTN_COMBINE_ROWS), 1, 1). Lanes split the splits for
// the max and the sum (warp reductions) and the head dimension for o.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/reduce.cuh"
#include "tf/attention_common.cuh"

namespace tf_attn_combine {

using tf_attn::neg_inf;
using tf_attn::pos_inf;

// Merges the num_splits partial results of one query row into o and lse
// (Flash-Decoding): L = log sum_s e^{lse_s}, o = sum_s e^{lse_s - L} o_s. A warp per
// row; L = -inf (no split saw a key) gives o = 0 and lse = +inf.
template <typename T>
__device__ __forceinline__ void attn_combine(const tf_attn_params& p) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t rows = (int64_t)p.batch * p.heads * p.t_q;
    const int64_t r = (int64_t)blockIdx.x * TF_ATTN_COMBINE_ROWS + warp;
    if (r >= rows) return;  // warp-uniform
    const int64_t i = r % p.t_q, bh = r / p.t_q;
    const int64_t hh = bh % p.heads, bb = bh / p.heads;
    const float* la = reinterpret_cast<const float*>(p.lse_accum) + r;  // split s at la[s * rows]
    const float* oa = reinterpret_cast<const float*>(p.o_accum) + r * p.head_dim;
    T* o = reinterpret_cast<T*>(p.o) + bb * p.o_stride_b + i * p.o_stride_t + hh * p.o_stride_h;
    float* lse = reinterpret_cast<float*>(p.lse) + bb * p.lse_stride_b + hh * p.lse_stride_h + i * p.lse_stride_t;

    float mx = neg_inf();
    for (int s = lane; s < p.num_splits; s += 32) mx = tf::max_nan(mx, la[s * rows]);
    mx = tf::warp_max<32>(mx);  // NaN if a split's lse is NaN: then o and lse are NaN
    if (mx == neg_inf()) {
        // No split saw a key (o = 0, lse = +inf), or the row's keys all had -inf
        // scores (the softmax is 0/0: NaN).
        const bool sees = tf_attn::row_sees_a_key(p, i);
        for (int d = lane; d < p.head_dim; d += 32) o[d] = tf::from_float<T>(sees ? tf_attn::nan_f() : 0.0f);
        if (lane == 0) *lse = sees ? tf_attn::nan_f() : pos_inf();
        return;
    }
    float sum = 0.0f;
    for (int s = lane; s < p.num_splits; s += 32) sum += expf(la[s * rows] - mx);
    sum = tf::warp_sum<32>(sum);
    const float big_l = mx + logf(sum);
    for (int d = lane; d < p.head_dim; d += 32) {
        float acc = 0.0f;
        for (int s = 0; s < p.num_splits; ++s) {
            const float w = expf(la[s * rows] - big_l);  // 0 for a split that saw no key
            acc = fmaf(w, oa[s * rows * p.head_dim + d], acc);
        }
        o[d] = tf::from_float<T>(acc);
    }
    if (lane == 0) *lse = big_l;
}

}  // namespace tf_attn_combine

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(128) attn_combine_f16(const tf_attn_params p) { tf_attn_combine::attn_combine<__half>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_combine_bf16(const tf_attn_params p) { tf_attn_combine::attn_combine<__nv_bfloat16>(p); }
