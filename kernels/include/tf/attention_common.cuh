// Shared by the attention kernels (kernels/attention*.cu): masks, empty rows.
// Included by each of those files; nvcc compiles all kernels/*.cu as one unity
// translation unit, so everything here is defined once, behind #pragma once.
#pragma once
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"

namespace tf_attn {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float neg_inf() { return -__builtin_huge_valf(); }
__device__ __forceinline__ float pos_inf() { return __builtin_huge_valf(); }
__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fffffff); }

// Whether query row `row` sees at least one key (t_k >= 1 and, causal, row + t_k - t_q >= 0).
__device__ __forceinline__ bool row_sees_a_key(const tf_attn_params& p, int64_t row) {
    return p.t_k > 0 && (!p.causal || row + p.t_k - p.t_q >= 0);
}

// 1 / l for a final row sum l: a row that sees no key has l = 0 and gets o = 0; a row
// that sees keys but whose scores are all -inf (0 / 0 in the softmax) gets NaN, as
// does a NaN l (a NaN or +inf score).
__device__ __forceinline__ float inv_row_sum(float l, bool sees) { return l == 0.0f ? (sees ? nan_f() : 0.0f) : 1.0f / l; }
// The row's lse from its max (raw score) and sum: +inf for a row that sees no key,
// NaN for one whose visible scores are all -inf or that holds NaN / +inf.
__device__ __forceinline__ float row_lse(float mx, float scale, float l, bool sees) {
    return l == 0.0f ? (sees ? nan_f() : pos_inf()) : mx * scale + logf(l);
}

// The same from the max already in base 2 (m_log2 = max * scale * log2 e), as the
// tensor-core kernels keep it: lse = m_log2 * ln 2 + ln l.
__device__ __forceinline__ float row_lse_log2(float m_log2, float l, bool sees) {
    return l == 0.0f ? (sees ? nan_f() : pos_inf()) : m_log2 * 0.6931471805599453f + logf(l);
}

// NaN or infinite.
__device__ __forceinline__ bool nonfinite(float x) { return !(fabsf(x) <= 3.4028235e38f); }

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Number of K blocks of width `bn` that rows [m0, m0 + bm) see: keys [0, n_end)
// with n_end = t_k, or under the causal mask the last valid row's limit + 1.
__device__ __forceinline__ int num_key_blocks(const tf_attn_params& p, int64_t m0, int bm, int bn) {
    int64_t n_end = p.t_k;
    if (p.causal) {
        const int64_t last_row = min64(m0 + bm, p.t_q) - 1;
        n_end = min64(n_end, last_row + p.t_k - p.t_q + 1);
    }
    return n_end <= 0 ? 0 : (int)((n_end + bn - 1) / bn);
}

// Writes o = 0 and lse = +inf for rows [m0, min(m0 + bm, t_q)) of one (b, h):
// the CTA's rows see no key.
template <typename T, int HD>
__device__ void write_empty_rows(const tf_attn_params& p, int64_t m0, int bm, int tid, int nthreads) {
    const int b = blockIdx.y, h = blockIdx.z;
    const int64_t rows = min64(bm, p.t_q - m0);
    T* o = reinterpret_cast<T*>(p.o) + b * p.o_stride_b + h * p.o_stride_h + m0 * p.o_stride_t;
    const T zero = tf::from_float<T>(0.0f);
    for (int i = tid; i < (int)rows * HD; i += nthreads) {
        const int r = i / HD, c = i % HD;
        o[r * p.o_stride_t + c] = zero;
    }
    float* lse = reinterpret_cast<float*>(p.lse) + b * p.lse_stride_b + h * p.lse_stride_h;
    for (int64_t r = tid; r < rows; r += nthreads) lse[(m0 + r) * p.lse_stride_t] = pos_inf();
}

}  // namespace tf_attn
