// attention_simt.cu: attention forward for f32 storage on a plain SIMT path
// (correct, not fast): the same o and lse as the tensor-core kernels of
// kernels/attention.cu (see its header for the maths, masks and layouts).
//
// Thread mapping: grid (ceil(T_q / 32), B, H), 128 threads, 32 query rows x 16 keys
// per tile in shared memory. S by all threads (row tid / 4, keys tid % 4 + 4 j), the
// online softmax by warp 0 (one row a lane, statistics in shared memory), O by all
// threads (row tid / 4 owns columns tid % 4 + 4 i). Rows of Q and K are padded to
// D + 1 floats, so the column reads of S are conflict-free. Plain loads, no cp.async:
// f32 views need only 4-byte alignment. Tiles from tf_kernels.h (TF_ATTN_F32_*).
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/smem.cuh"
#include "tf/reduce.cuh"
#include "tf/attention_common.cuh"

namespace tf_attn_simt {

using tf_attn::kLog2e;
using tf_attn::neg_inf;
using tf_attn::num_key_blocks;
using tf_attn::pos_inf;
using tf_attn::write_empty_rows;
using tf_attn::min64;
using tf_attn::row_sees_a_key;
using tf_attn::inv_row_sum;
using tf_attn::row_lse;

// SIMT f32 path.
template <int HD>
struct SimtTraits {
    static constexpr int kHeadDim = HD;
    static constexpr int kBlockM = TF_ATTN_F32_BLOCK_M;  // 32
    static constexpr int kBlockN = TF_ATTN_F32_BLOCK_N;  // 16: hd 128 needs 35 KB (< 48 KB, no opt-in)
    static constexpr int kThreads = TF_ATTN_THREADS;
    static constexpr int kLdQK = HD + 1;            // padded row stride (floats): conflict-free column reads
    static constexpr int kLdP = kBlockN + 1;
    static constexpr int kColsPerThread = HD / 4;   // O columns a thread owns
    static constexpr int kSmemFloats =
        kBlockM * kLdQK + kBlockN * kLdQK + kBlockN * HD + kBlockM * kLdP + 3 * kBlockM;
    static constexpr int kSmemBytes = kSmemFloats * 4;
    static_assert(HD % 4 == 0, "a row splits into 4 column groups");
    static_assert(kThreads == 4 * kBlockM, "4 threads per query row in the O phase");
    static_assert((kBlockM * kBlockN) % kThreads == 0, "S entries split evenly");
    static_assert(kBlockM <= 32, "warp 0 runs one row per lane in the softmax phase");
};

// -------------------------------------------------------------- SIMT path (f32)

template <int HD>
__device__ __forceinline__ void attn_fwd_simt(const tf_attn_params& p_in) {
    // t_k read from device memory when the launch was captured for every step
    tf_attn_params p = p_in;
    p.t_k = tf_attn::key_length(p_in);
    using Tr = SimtTraits<HD>;
    constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, LD = Tr::kLdQK, LP = Tr::kLdP;
    constexpr int CPT = Tr::kColsPerThread;

    TF_DYNAMIC_SMEM(unsigned char, smem);
    float* sQ = reinterpret_cast<float*>(smem);  // [BM][LD]
    float* sK = sQ + BM * LD;                    // [BN][LD]
    float* sV = sK + BN * LD;                    // [BN][HD]
    float* sP = sV + BN * HD;                    // [BM][LP]: scores, then probabilities
    float* sCorr = sP + BM * LP;                 // [BM]: this block's rescale factor per row
    float* sMax = sCorr + BM;                    // [BM]: running raw row max
    float* sSum = sMax + BM;                     // [BM]: running row sum

    const int tid = threadIdx.x;
    const int b = blockIdx.y, h = blockIdx.z;
    const int64_t m0 = (int64_t)blockIdx.x * BM;
    const int n_blocks = num_key_blocks(p, m0, BM, BN);
    if (n_blocks == 0) {
        write_empty_rows<float, HD>(p, m0, BM, tid, Tr::kThreads);
        return;
    }
    const float* q = reinterpret_cast<const float*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
    const float* k = reinterpret_cast<const float*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
    const float* v = reinterpret_cast<const float*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
    const int64_t diag = p.t_k - p.t_q;
    const float scale_log2 = p.scale * kLog2e;

    for (int i = tid; i < BM * HD; i += Tr::kThreads) {
        const int r = i / HD, c = i % HD;
        sQ[r * LD + c] = m0 + r < p.t_q ? q[(m0 + r) * p.q_stride_t + c] : 0.0f;
    }
    if (tid < BM) {
        sMax[tid] = neg_inf();
        sSum[tid] = 0.0f;
    }

    const int orow = tid / 4, ocol = tid % 4;  // O phase: row, column group (columns ocol + 4 i)
    float acc[CPT];
#pragma unroll
    for (int i = 0; i < CPT; ++i) acc[i] = 0.0f;

    for (int nb = 0; nb < n_blocks; ++nb) {
        const int64_t n0 = (int64_t)nb * BN;
        __syncthreads();  // everyone is done with the previous K, V, P
        for (int i = tid; i < BN * HD; i += Tr::kThreads) {
            const int r = i / HD, c = i % HD;
            const bool ok = n0 + r < p.t_k;
            sK[r * LD + c] = ok ? k[(n0 + r) * p.k_stride_t + c] : 0.0f;
            sV[r * HD + c] = ok ? v[(n0 + r) * p.v_stride_t + c] : 0.0f;
        }
        __syncthreads();
        // S: thread owns row tid / 4, keys tid % 4 + 4 j.
        for (int j = 0; j < BN / 4; ++j) {
            const int r = tid / 4, c = tid % 4 + 4 * j;
            float dot = 0.0f;
            for (int d = 0; d < HD; ++d) dot = fmaf(sQ[r * LD + d], sK[c * LD + d], dot);
            const int64_t row = m0 + r, col = n0 + c;
            const bool visible = col < p.t_k && (!p.causal || col <= row + diag);
            sP[r * LP + c] = visible ? dot : neg_inf();
        }
        __syncthreads();
        if (tid < BM) {  // warp 0: online softmax of row tid
            float* pr = sP + tid * LP;
            float mx = sMax[tid];
            for (int c = 0; c < BN; ++c) mx = tf::max_nan(mx, pr[c]);
            const float m_scaled = (mx == neg_inf() ? 0.0f : mx) * scale_log2;
            const float corr = exp2f(sMax[tid] * scale_log2 - m_scaled);
            float sum = sSum[tid] * corr;
            for (int c = 0; c < BN; ++c) {
                const float e = exp2f(fmaf(pr[c], scale_log2, -m_scaled));
                pr[c] = e;
                sum += e;
            }
            sMax[tid] = mx;
            sSum[tid] = sum;
            sCorr[tid] = corr;
        }
        __syncthreads();
        const float corr = sCorr[orow];
#pragma unroll
        for (int i = 0; i < CPT; ++i) acc[i] *= corr;
        // Only the keys this row sees: a masked key's P is 0, but 0·v is NaN for a
        // NaN or infinite v, which must not reach a row that cannot see it.
        int64_t lim64 = p.t_k - n0;
        if (p.causal) lim64 = min64(lim64, m0 + orow + diag - n0 + 1);
        const int lim = lim64 < 0 ? 0 : (lim64 > BN ? BN : (int)lim64);
        for (int c = 0; c < lim; ++c) {
            const float pv = sP[orow * LP + c];
#pragma unroll
            for (int i = 0; i < CPT; ++i) acc[i] = fmaf(pv, sV[c * HD + ocol + 4 * i], acc[i]);
        }
    }
    __syncthreads();  // sSum / sMax final
    const int64_t row = m0 + orow;
    if (row < p.t_q) {
        const float l = sSum[orow];
        const bool sees = row_sees_a_key(p, row);
        const float inv = inv_row_sum(l, sees);
        float* o = reinterpret_cast<float*>(p.o) + b * p.o_stride_b + h * p.o_stride_h + row * p.o_stride_t;
#pragma unroll
        for (int i = 0; i < CPT; ++i) o[ocol + 4 * i] = acc[i] * inv;
        if (ocol == 0) {
            float* lse = reinterpret_cast<float*>(p.lse) + b * p.lse_stride_b + h * p.lse_stride_h;
            lse[row * p.lse_stride_t] = row_lse(sMax[orow], p.scale, l, sees);
        }
    }
}

}  // namespace tf_attn_simt

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(128) attn_fwd_f32_hd64(const tf_attn_params p) { tf_attn_simt::attn_fwd_simt<64>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_f32_hd80(const tf_attn_params p) { tf_attn_simt::attn_fwd_simt<80>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_f32_hd96(const tf_attn_params p) { tf_attn_simt::attn_fwd_simt<96>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_f32_hd128(const tf_attn_params p) { tf_attn_simt::attn_fwd_simt<128>(p); }
