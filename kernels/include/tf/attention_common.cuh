// Shared by the attention kernels (kernels/attention*.cu): masks, empty rows, the
// recomputation of outputs a masked non-finite v reached.
// Included by each of those files; nvcc compiles all kernels/*.cu as one unity
// translation unit, so everything here is defined once, behind #pragma once.
#pragma once
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/reduce.cuh"

namespace tf_attn {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float neg_inf() { return -__builtin_huge_valf(); }
__device__ __forceinline__ float pos_inf() { return __builtin_huge_valf(); }
__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fffffff); }

// The key length of a launch: t_k, or the int32 at t_k_dev (a captured decode step
// reads the cache's length at run time) clamped to [0, t_k], t_k being the capacity.
__device__ __forceinline__ int64_t key_length(const tf_attn_params& p) {
    if (p.t_k_dev == 0) return p.t_k;
    const int64_t n = *reinterpret_cast<const int32_t*>(p.t_k_dev);
    return n < 0 ? 0 : (n > p.t_k ? p.t_k : n);
}

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

// ------------------------------------------------ online softmax, split-KV

// m_neg of a row that has seen no finite score yet: any finite block max raises it,
// masked scores still give 2^-inf = 0, and its rescale factor 2^(m_new -
// kNothingSeen) is 0.
constexpr float kNothingSeen = 3.4028235e38f;
constexpr float kLn2 = 0.6931471805599453f;

// Max over the quad that holds a row. Plain fmaxf: a NaN score drops out of the max
// but not out of the row, whose sum 2^NaN makes o and lse NaN (the max only sets
// the reference exponent). fmaxf is symmetric, so the 4 lanes agree bit for bit
// (up to the sign of a zero max, which gives the same probabilities).
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
}

// Split-KV partials of one split: rows [r0, r0 + ...) of o_accum / lse_accum
// [num_splits, B, H, t_q, (head_dim)], f32, row-major.
__device__ __forceinline__ int64_t split_row(const tf_attn_params& p, int split, int64_t row) {
    return ((((int64_t)split * p.batch + blockIdx.y) * p.heads + blockIdx.z) * p.t_q) + row;
}

// A split whose K range is empty (or whose rows see no key): o_accum = 0 and
// lse_accum = -inf for rows [m0, min(m0 + bm, t_q)), so the combine weighs it 0.
template <int HD>
__device__ void write_empty_split(const tf_attn_params& p, int64_t m0, int bm, int split, int tid, int nthreads) {
    const int64_t rows = min64(bm, p.t_q - m0);
    float* oa = reinterpret_cast<float*>(p.o_accum) + split_row(p, split, m0) * HD;
    for (int i = tid; i < (int)rows * HD; i += nthreads) oa[i] = 0.0f;
    float* la = reinterpret_cast<float*>(p.lse_accum) + split_row(p, split, m0);
    for (int r = tid; r < (int)rows; r += nthreads) la[r] = neg_inf();
}

// ------------------------------------------ non-finite V behind the causal mask
//
// A causal K/V block that crosses the diagonal holds keys some rows of the CTA must
// not see. Their P is 0, but 0·v = NaN for a NaN or infinite v, so the tensor-core
// product can leak such a value into rows that cannot see the key. A leak only ever
// makes an output non-finite, and finite inputs never make one non-finite, so the fix
// stays off the hot loop and out of its registers: the epilogue notes whether any of
// the CTA's outputs is non-finite; only then (causal launches) does a second pass,
// after the outputs are written, recompute each non-finite output of a row in f32
// from global memory over exactly the keys the row sees,
//   o_id = Σ_{j visible} exp(scale·q_i·k_j - lse_i)·v_jd,
// skipping masked keys instead of multiplying them by 0. Legitimate NaN / inf (a
// visible non-finite q, k or v) come out of the recomputation non-finite again.

// One warp per row (rows [0, rows) of the CTA, `o` / `lse` at row 0, strides in
// elements): recomputes the row's non-finite outputs over its visible keys in
// [k_lo, k_hi) with the row's lse (for a split: that split's). lse = -inf (a split
// that saw no key, or only -inf scores) makes them 0, the weight-0 partial.
template <int HD, typename T, typename OT>
__device__ __forceinline__ void recompute_nonfinite_rows(const tf_attn_params& p, const T* q, const T* k, const T* v,
                                                      OT* o, int64_t o_stride, const float* lse, int64_t lse_stride,
                                                      int64_t m0, int64_t k_lo, int64_t k_hi, int warp, int lane,
                                                      int warps, int rows) {
    constexpr int kPer = (HD + 31) / 32;
    const int64_t diag = p.t_k - p.t_q;
    for (int r = warp; r < rows; r += warps) {
        OT* orow = o + r * o_stride;
        bool bad = false;
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            const int d = lane + 32 * i;
            if (d < HD) bad |= nonfinite(tf::to_float(orow[d]));
        }
        if (!__any_sync(0xffffffffu, bad)) continue;  // warp-uniform
        const int64_t row = m0 + r;
        const float L = lse[r * lse_stride];
        const T* qr = q + r * p.q_stride_t;
        const int64_t end = p.causal ? min64(k_hi, row + diag + 1) : k_hi;
        float acc[kPer];
#pragma unroll
        for (int i = 0; i < kPer; ++i) acc[i] = 0.0f;
        for (int64_t key = k_lo; key < end; ++key) {
            const T* kr = k + key * p.k_stride_t;
            const T* vr = v + key * p.v_stride_t;
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < kPer; ++i) {
                const int d = lane + 32 * i;
                if (d < HD) dot = fmaf(tf::to_float<T>(qr[d]), tf::to_float<T>(kr[d]), dot);
            }
            dot = tf::warp_sum(dot);
            const float pr = L == neg_inf() ? 0.0f : expf(fmaf(dot, p.scale, -L));
#pragma unroll
            for (int i = 0; i < kPer; ++i) {
                const int d = lane + 32 * i;
                if (d < HD) acc[i] = fmaf(pr, tf::to_float<T>(vr[d]), acc[i]);
            }
        }
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            const int d = lane + 32 * i;
            if (d < HD && nonfinite(tf::to_float(orow[d]))) orow[d] = tf::from_float<OT>(acc[i]);
        }
    }
}

}  // namespace tf_attn
