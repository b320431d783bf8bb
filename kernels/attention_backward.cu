// attention_backward.cu: the backward of scaled dot-product attention on SIMT
// cores, f32 arithmetic and f32 gradients: a correct path (no tensor cores, no
// tiling), the reference the FlashAttention-2-style kernel will be checked against
// on the device. The math is tf-ref's grad/attention.rs: for batch b, head h and
// query row i, with p_ij = softmax_j(scale·q_i·k_j) over the keys the row sees (all,
// or with `causal` those with j <= i + T_k - T_q, the forward's bottom-right
// alignment):
//   dp_ij = do_i·v_j,  D_i = Σ_j p_ij·dp_ij (= do_i·o_i),  ds_ij = p_ij·(dp_ij - D_i),
//   dq_i = scale·Σ_j ds_ij·k_j,  dk_j = scale·Σ_i ds_ij·q_i,  dv_j = Σ_i p_ij·do_i.
// A row that sees no key (output 0) passes no gradient.
//
// Two kernels, one warp per row, grid-stride over the rows; lanes hold elements
// c = lane + 32·m (m < 8) of the head dimension (D <= 256), and every dot product is
// a butterfly sum (tf/reduce.cuh: the same bits in every lane):
//   attn_backward_dq_*: warp per (b, h, i) in that order of significance. Pass 1 over
//     the visible keys: the running max and sum of exp (online softmax) give
//     lse_i; pass 2: D_i; pass 3: dq_i. Writes (lse_i, D_i) to stats [B, H, T_q].
//   attn_backward_dkv_*: warp per (b, h, j): over the queries that see key j, in
//     increasing i, recomputes p_ij from lse_i and accumulates dk_j and dv_j.
// No atomics: each gradient row is one warp's, summed in a fixed order.
//   attn_forward_rows_*: the forward the training chain runs (any head dimension up
//     to 256, any strides, no padding): warp per (b, h, i), online softmax over the
//     visible keys, o_i = Σ_j p_ij·v_j in f32 (0 for a row that sees no key).
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/reduce.cuh"

namespace tf_attention_backward {

constexpr int kPer = TF_ATTN_BACKWARD_MAX_D / 32;  // head-dim elements a lane holds

// Row (b, t, h) of a [B, T, H, D] operand with strides (sb, st, sh), unit stride in D.
template <typename T>
__device__ __forceinline__ const T* row(tf_ptr base, int64_t sb, int64_t st, int64_t sh, int64_t b, int64_t t,
                                        int64_t h) {
    return reinterpret_cast<const T*>(base) + b * sb + t * st + h * sh;
}

// This lane's elements of a row, widened (0 past D).
template <typename T>
__device__ __forceinline__ void load(const T* r, int64_t d, int lane, float (&v)[kPer]) {
#pragma unroll
    for (int m = 0; m < kPer; ++m) {
        const int64_t c = lane + 32 * m;
        v[m] = c < d ? tf::to_float(r[c]) : 0.0f;
    }
}

// a·r over the head dimension (a held by the lanes, r read), the same in every lane.
template <typename T>
__device__ __forceinline__ float dot(const float (&a)[kPer], const T* r, int64_t d, int lane) {
    float s = 0.0f;
#pragma unroll
    for (int m = 0; m < kPer; ++m) {
        const int64_t c = lane + 32 * m;
        if (c < d) s = fmaf(a[m], tf::to_float(r[c]), s);
    }
    return tf::warp_sum(s);
}

__device__ __forceinline__ void store(float* r, int64_t d, int lane, const float (&v)[kPer], float f) {
#pragma unroll
    for (int m = 0; m < kPer; ++m) {
        const int64_t c = lane + 32 * m;
        if (c < d) r[c] = v[m] * f;
    }
}

// Keys [0, j_end) that query i sees.
__device__ __forceinline__ int64_t keys_seen(const tf_attn_backward_params& p, int64_t i) {
    return p.causal ? max((int64_t)0, min(p.t_k, i + p.t_k - p.t_q + 1)) : p.t_k;
}

// The online softmax of query row (b, h) over keys [0, j_end): the running max
// `mx` and sum `l` of exp(s - mx), s = scale·q·k_j; with VALUES also
// acc = Σ_j exp(s_j - mx)·v_j, rescaled as the max moves (the forward's o·l).
template <typename T, bool VALUES>
__device__ __forceinline__ void online_softmax(const tf_attn_backward_params& p, const float (&q)[kPer], int64_t b,
                                               int64_t h, int64_t j_end, int lane, float& mx, float& l,
                                               float (&acc)[kPer]) {
    mx = -INFINITY;
    l = 0.0f;
    for (int64_t j = 0; j < j_end; ++j) {
        const float s = p.scale * dot(q, row<T>(p.k, p.k_sb, p.k_st, p.k_sh, b, j, h), p.head_dim, lane);
        const float nm = tf::max_nan(mx, s);
        const float corr = expf(mx - nm), e = expf(s - nm);
        l = l * corr + e;
        if (VALUES) {
            const T* vr = row<T>(p.v, p.v_sb, p.v_st, p.v_sh, b, j, h);
#pragma unroll
            for (int m = 0; m < kPer; ++m) {
                const int64_t c = lane + 32 * m;
                acc[m] = c < p.head_dim ? fmaf(e, tf::to_float(vr[c]), acc[m] * corr) : 0.0f;
            }
        }
        mx = nm;
    }
}

template <typename T>
__device__ __forceinline__ void backward_dq(const tf_attn_backward_params& p) {
    const int lane = threadIdx.x % 32;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    const int64_t rows = p.batch * p.heads * p.t_q;
    for (int64_t w = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; w < rows; w += warps) {
        const int64_t i = w % p.t_q, h = (w / p.t_q) % p.heads, b = w / (p.t_q * p.heads);
        float q[kPer], dout[kPer], acc[kPer];
        load(row<T>(p.q, p.q_sb, p.q_st, p.q_sh, b, i, h), p.head_dim, lane, q);
        load(row<T>(p.d_o, p.o_sb, p.o_st, p.o_sh, b, i, h), p.head_dim, lane, dout);
#pragma unroll
        for (int m = 0; m < kPer; ++m) acc[m] = 0.0f;
        const int64_t j_end = keys_seen(p, i);
        float mx, l;
        online_softmax<T, false>(p, q, b, h, j_end, lane, mx, l, acc);
        const float lse = j_end > 0 ? mx + logf(l) : -INFINITY;
        float dsum = 0.0f;
        for (int64_t j = 0; j < j_end; ++j) {
            const float s = p.scale * dot(q, row<T>(p.k, p.k_sb, p.k_st, p.k_sh, b, j, h), p.head_dim, lane);
            const float dp = dot(dout, row<T>(p.v, p.v_sb, p.v_st, p.v_sh, b, j, h), p.head_dim, lane);
            dsum = fmaf(expf(s - lse), dp, dsum);
        }
        for (int64_t j = 0; j < j_end; ++j) {
            const T* kr = row<T>(p.k, p.k_sb, p.k_st, p.k_sh, b, j, h);
            const float s = p.scale * dot(q, kr, p.head_dim, lane);
            const float dp = dot(dout, row<T>(p.v, p.v_sb, p.v_st, p.v_sh, b, j, h), p.head_dim, lane);
            const float ds = expf(s - lse) * (dp - dsum);
#pragma unroll
            for (int m = 0; m < kPer; ++m) {
                const int64_t c = lane + 32 * m;
                if (c < p.head_dim) acc[m] = fmaf(ds, tf::to_float(kr[c]), acc[m]);
            }
        }
        store(reinterpret_cast<float*>(p.dq) + ((b * p.t_q + i) * p.heads + h) * p.head_dim, p.head_dim, lane, acc,
              p.scale);
        if (lane == 0) reinterpret_cast<float2*>(p.stats)[(b * p.heads + h) * p.t_q + i] = make_float2(lse, dsum);
    }
}

template <typename T>
__device__ __forceinline__ void backward_dkv(const tf_attn_backward_params& p) {
    const int lane = threadIdx.x % 32;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    const int64_t rows = p.batch * p.heads * p.t_k;
    const float2* stats = reinterpret_cast<const float2*>(p.stats);
    for (int64_t w = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; w < rows; w += warps) {
        const int64_t j = w % p.t_k, h = (w / p.t_k) % p.heads, b = w / (p.t_k * p.heads);
        float kr[kPer], vr[kPer], dk[kPer], dv[kPer];
        load(row<T>(p.k, p.k_sb, p.k_st, p.k_sh, b, j, h), p.head_dim, lane, kr);
        load(row<T>(p.v, p.v_sb, p.v_st, p.v_sh, b, j, h), p.head_dim, lane, vr);
#pragma unroll
        for (int m = 0; m < kPer; ++m) dk[m] = dv[m] = 0.0f;
        // queries i that see key j: all, or (causal) i >= j - (T_k - T_q)
        const int64_t i0 = p.causal ? max((int64_t)0, j - (p.t_k - p.t_q)) : 0;
        for (int64_t i = i0; i < p.t_q; ++i) {
            const T* qr = row<T>(p.q, p.q_sb, p.q_st, p.q_sh, b, i, h);
            const T* dor = row<T>(p.d_o, p.o_sb, p.o_st, p.o_sh, b, i, h);
            const float2 st = stats[(b * p.heads + h) * p.t_q + i];
            const float pr = expf(p.scale * dot(kr, qr, p.head_dim, lane) - st.x);
            const float ds = pr * (dot(vr, dor, p.head_dim, lane) - st.y);
#pragma unroll
            for (int m = 0; m < kPer; ++m) {
                const int64_t c = lane + 32 * m;
                if (c < p.head_dim) {
                    dv[m] = fmaf(pr, tf::to_float(dor[c]), dv[m]);
                    dk[m] = fmaf(ds, tf::to_float(qr[c]), dk[m]);
                }
            }
        }
        const int64_t out = ((b * p.t_k + j) * p.heads + h) * p.head_dim;
        store(reinterpret_cast<float*>(p.dk) + out, p.head_dim, lane, dk, p.scale);
        store(reinterpret_cast<float*>(p.dv) + out, p.head_dim, lane, dv, 1.0f);
    }
}

template <typename T>
__device__ __forceinline__ void forward_rows(const tf_attn_backward_params& p) {
    const int lane = threadIdx.x % 32;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    const int64_t rows = p.batch * p.heads * p.t_q;
    for (int64_t w = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; w < rows; w += warps) {
        const int64_t i = w % p.t_q, h = (w / p.t_q) % p.heads, b = w / (p.t_q * p.heads);
        float q[kPer], acc[kPer];
        load(row<T>(p.q, p.q_sb, p.q_st, p.q_sh, b, i, h), p.head_dim, lane, q);
#pragma unroll
        for (int m = 0; m < kPer; ++m) acc[m] = 0.0f;
        const int64_t j_end = keys_seen(p, i);
        float mx, l;
        online_softmax<T, true>(p, q, b, h, j_end, lane, mx, l, acc);
        store(reinterpret_cast<float*>(p.o) + ((b * p.t_q + i) * p.heads + h) * p.head_dim, p.head_dim, lane, acc,
              j_end > 0 ? 1.0f / l : 0.0f);
    }
}

}  // namespace tf_attention_backward

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(256) attn_backward_dq_f32(const tf_attn_backward_params p) {
    tf_attention_backward::backward_dq<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) attn_backward_dq_f16(const tf_attn_backward_params p) {
    tf_attention_backward::backward_dq<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) attn_backward_dq_bf16(const tf_attn_backward_params p) {
    tf_attention_backward::backward_dq<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(256) attn_backward_dkv_f32(const tf_attn_backward_params p) {
    tf_attention_backward::backward_dkv<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) attn_backward_dkv_f16(const tf_attn_backward_params p) {
    tf_attention_backward::backward_dkv<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) attn_backward_dkv_bf16(const tf_attn_backward_params p) {
    tf_attention_backward::backward_dkv<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(256) attn_forward_rows_f32(const tf_attn_backward_params p) {
    tf_attention_backward::forward_rows<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) attn_forward_rows_f16(const tf_attn_backward_params p) {
    tf_attention_backward::forward_rows<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) attn_forward_rows_bf16(const tf_attn_backward_params p) {
    tf_attention_backward::forward_rows<__nv_bfloat16>(p);
}
