// attention_decode.cu: attention forward for few query rows (t_q <= 16: decode
// against a KV cache, short speculative chunks), f16 / bf16 on tensor cores, head
// dims 64, 80, 96, 128. The math, layouts, masks, outputs and split-KV partials are
// attention.cu's (tf_attn_params); only the tiling differs. The 128-row query tile
// of attention.cu would pad one decode row 128 times; here a CTA holds 16 rows
// (one m16 tile) and its 4 warps split the keys instead:
//
//   grid (ceil(t_q / 16) * num_splits, B, H), 128 threads = 4 warps. Every warp
//   holds the CTA's Q rows as A fragments in registers (read once from global
//   memory, rows past t_q zero). K / V blocks of 64 keys stream through a ring of
//   Traits::kStages cp.async stages (both tiles of a block in one stage, swizzled as
//   in attention.cu), last block first, so that only the prologue copies a T_k
//   tail and the loop's copies are unpredicated; warp w takes keys [16w, 16w + 16) of every block: S = Q·K_wᵀ
//   (HD / 16 k16 steps, 2 n8 tiles), its own online softmax over the keys it saw
//   (base 2, exact running max, the forward's rescale rule), O_w += P·V_w (P
//   repacked from the accumulators, V by ldmatrix.trans). Only blocks crossing the
//   causal diagonal or the T_k tail evaluate the mask.
//   After the loop the ring's memory holds each warp's f32 O_w [16][HD] and per row
//   (max, sum); 8 threads a row merge them: M = max_w m_w,
//   L = Σ_w l_w·2^(m_w - M), o = Σ_w O_w·2^(m_w - M) / L, and write o (storage
//   type) and lse, or for a split its f32 partials for attn_combine_*.
//   Causal with 1 < t_q: a NaN / inf v behind the mask may reach a row through 0·v,
//   and attention.cu's recompute pass (tf/attention_common.cuh) repairs it.
//
// Split-KV as in attention.cu: split s of a query block takes its visible K blocks
// [s * per, (s + 1) * per). Preconditions: attention.cu's, with dynamic shared
// memory Traits<HD>::kSmemBytes.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/mma.cuh"
#include "tf/async.cuh"
#include "tf/smem.cuh"
#include "tf/reduce.cuh"
#include "tf/swizzle.cuh"
#include "tf/attention_math.cuh"
#include "tf/attention_common.cuh"
#include "tf/attention_tiles.cuh"

namespace tf_attn_decode {

using tf_attn::kLog2e;
using tf_attn::kLn2;
using tf_attn::kNothingSeen;
using tf_attn::min64;

template <int HD, int STAGES>
struct TraitsBase {
    static constexpr int kHeadDim = HD;
    static constexpr int kRows = TF_ATTN_DECODE_ROWS;      // query rows per CTA
    static constexpr int kBlockN = TF_ATTN_DECODE_BLOCK_N;  // keys per K/V block
    static constexpr int kStages = STAGES;
    static constexpr int kWarps = 4;
    static constexpr int kThreads = 32 * kWarps;
    static_assert(kThreads == TF_ATTN_THREADS, "the host launches TF_ATTN_THREADS threads");
    static_assert(kRows == 16 && kBlockN == 16 * kWarps, "one m16 tile of rows; 16 keys a warp");
    static constexpr int kChunks = HD / 8;
    static constexpr int kKSteps = HD / 16;
    static constexpr int kNTilesO = HD / 8;
    static constexpr int kTileKV = kBlockN * HD * 2;
    static constexpr int kStage = 2 * kTileKV;  // K, then V
    static constexpr int kSmemBytes = kStages * kStage;
    static constexpr int kMergeBytes = kWarps * kRows * (HD + 2) * 4;  // O_w, then (max, sum)
    static_assert(kMergeBytes <= kSmemBytes, "the merge reuses the ring");
    static_assert(kStages >= 2, "a ring");
};

template <int HD> struct Traits;
// 4 stages (64 KB, 80 KB) where they fit two CTAs an SM on A100; 3 (72 KB, 96 KB) at
// hd 96 and 128.
template <> struct Traits<64> : TraitsBase<64, TF_ATTN_DECODE_STAGES_HD64> {};
template <> struct Traits<80> : TraitsBase<80, TF_ATTN_DECODE_STAGES_HD80> {};
template <> struct Traits<96> : TraitsBase<96, TF_ATTN_DECODE_STAGES_HD96> {};
template <> struct Traits<128> : TraitsBase<128, TF_ATTN_DECODE_STAGES_HD128> {};

template <typename T, int HD, bool kSplit>
__device__ __forceinline__ void decode(const tf_attn_params& p_in) {
    // t_k read from device memory when the launch was captured for every step
    tf_attn_params p = p_in;
    p.t_k = tf_attn::key_length(p_in);
    using Tr = Traits<HD>;
    using Sw = tf::Swizzle<Tr::kChunks>;
    constexpr int BN = Tr::kBlockN, NTO = Tr::kNTilesO, S = Tr::kStages;

    TF_DYNAMIC_SMEM(unsigned char, smem);
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
    const int b = blockIdx.y, h = blockIdx.z;
    const int splits = kSplit ? p.num_splits : 1;
    const int split = (int)(blockIdx.x % splits);
    const int64_t m0 = (int64_t)(blockIdx.x / splits) * Tr::kRows;
    const int n_visible = tf_attn::num_key_blocks(p, m0, Tr::kRows, BN);
    int n_lo = 0, n_hi = n_visible;
    if (kSplit) {
        const int per = (n_visible + splits - 1) / splits;
        n_lo = split * per < n_visible ? split * per : n_visible;
        n_hi = n_lo + per < n_visible ? n_lo + per : n_visible;
    }
    if (n_hi <= n_lo) {  // block-uniform: no row of this CTA (split) sees a key
        if (kSplit) {
            tf_attn::write_empty_split<HD>(p, m0, Tr::kRows, split, tid, Tr::kThreads);
        } else {
            tf_attn::write_empty_rows<T, HD>(p, m0, Tr::kRows, tid, Tr::kThreads);
        }
        return;
    }

    const T* q = reinterpret_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h + m0 * p.q_stride_t;
    const T* k = reinterpret_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
    const T* v = reinterpret_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
    const int64_t diag = p.t_k - p.t_q;

    // The ring: the blocks run from n_hi - 1 down to n_lo, block n_hi - 1 - i in
    // stage i % S; a group is committed per block, empty past n_lo, so
    // wait_group<S - 2> always means "this iteration's block has landed". Only the
    // first block can hold the T_k tail: the prologue copies it with predicates,
    // every other block whole, without predicates, from per-thread addresses
    // (load_tile's mapping: row r0, chunk c0) computed once.
    const tf_attn::Lanes ln = tf_attn::lanes<Tr>(tid);
    const T* k_thr = k + ln.r0 * p.k_stride_t + ln.c0 * 8;
    const T* v_thr = v + ln.r0 * p.v_stride_t + ln.c0 * 8;
    auto load_block = [&](int nb, int stage, bool whole) {
        unsigned char* st = smem + stage * Tr::kStage;
        const int64_t n0 = (int64_t)nb * BN;
        if (whole) {
            tf_attn::load_tile_full<Tr, BN>(st + ln.soff, k_thr + n0 * p.k_stride_t, 16 * p.k_stride_t, ln.two);
            tf_attn::load_tile_full<Tr, BN>(st + Tr::kTileKV + ln.soff, v_thr + n0 * p.v_stride_t,
                                            16 * p.v_stride_t, ln.two);
        } else {
            tf_attn::load_tile<Tr, BN>(st, k + n0 * p.k_stride_t, p.k_stride_t, p.t_k - n0, tid);
            tf_attn::load_tile<Tr, BN>(st + Tr::kTileKV, v + n0 * p.v_stride_t, p.v_stride_t, p.t_k - n0, tid);
        }
    };
#pragma unroll
    for (int i = 0; i < S - 1; ++i) {
        const int nb = n_hi - 1 - i;
        if (nb >= n_lo) load_block(nb, i, i > 0 || (int64_t)(nb + 1) * BN <= p.t_k);
        tf::cp_async_commit();
    }

    // Q's A fragments (rows g and g + 8, zero past t_q): k16 step ks holds columns
    // 16 ks + 2 tq (+1) in registers 0, 1 and 8 more in 2, 3.
    uint32_t qa[Tr::kKSteps][4];
    {
        const bool in0 = m0 + g < p.t_q, in1 = m0 + g + 8 < p.t_q;
        const uint32_t* r0 = reinterpret_cast<const uint32_t*>(q + (in0 ? g : 0) * p.q_stride_t);
        const uint32_t* r1 = reinterpret_cast<const uint32_t*>(q + (in1 ? g + 8 : 0) * p.q_stride_t);
#pragma unroll
        for (int ks = 0; ks < Tr::kKSteps; ++ks) {
            const int c = 8 * ks + tq;  // 32-bit pair index of column 16 ks + 2 tq
            qa[ks][0] = in0 ? r0[c] : 0u;
            qa[ks][1] = in1 ? r1[c] : 0u;
            qa[ks][2] = in0 ? r0[c + 4] : 0u;
            qa[ks][3] = in1 ? r1[c + 4] : 0u;
        }
    }

    // Blocks [nb_mask, n_hi) cross the T_k tail or the causal diagonal.
    int nb_mask = (int64_t)n_hi * BN > p.t_k ? n_hi - 1 : n_hi;
    if (p.causal) {
        const int64_t x = m0 + diag - BN + 2;  // block nb crosses iff nb * BN >= x
        const int64_t first = x <= 0 ? 0 : (x + BN - 1) / BN;
        if (first < nb_mask) nb_mask = (int)first;
    }

    const int mi = lane / 8;
    uint32_t k_off = (uint32_t)Sw::offset(16 * warp + (mi >> 1) * 8 + lane % 8, mi & 1);
    uint32_t v_off = (uint32_t)Sw::offset(16 * warp + (mi & 1) * 8 + lane % 8, mi >> 1);
    const float scale_log2 = p.scale * kLog2e;

    float acc_o[NTO][4];
    float m_neg[2] = {kNothingSeen, kNothingSeen}, row_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nt = 0; nt < NTO; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc_o[nt][i] = 0.0f;
    }

    int stage = 0, fill = S - 1;  // this block's stage, and the stage of block nb - (S - 1)
    for (int nb = n_hi - 1; nb >= n_lo; --nb) {
        tf_attn::keep_in_register(k_off);
        tf_attn::keep_in_register(v_off);
        tf::cp_async_wait<S - 2>();  // block nb landed
        __syncthreads();             // ... for every thread; every warp is done with block nb + 1
        if (nb - (S - 1) >= n_lo) load_block(nb - (S - 1), fill, true);
        tf::cp_async_commit();
        fill = fill + 1 == S ? 0 : fill + 1;
        const unsigned char* sK = smem + stage * Tr::kStage;
        stage = stage + 1 == S ? 0 : stage + 1;
        const unsigned char* sV = sK + Tr::kTileKV;

        float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int ks = 0; ks < Tr::kKSteps; ++ks) {
            uint32_t kb[4];  // {0,1}: B of keys +0..7, {2,3}: of +8..15
            tf::ldmatrix_x4(kb, sK + tf_attn::step_offset<Sw>(k_off, ks));
            const uint32_t b0[2] = {kb[0], kb[1]};
            const uint32_t b1[2] = {kb[2], kb[3]};
            tf::mma_m16n8k16<T>(s[0], qa[ks], b0);
            tf::mma_m16n8k16<T>(s[1], qa[ks], b1);
        }

        if (nb >= nb_mask) {  // row g + 8 hr sees the block's keys c < lim
            const int64_t key0 = (int64_t)nb * BN + 16 * warp + 2 * tq;
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                int64_t lim = p.t_k - key0;
                if (p.causal) lim = min64(lim, m0 + g + 8 * hr + diag + 1 - key0);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        if (nt * 8 + j >= lim) s[nt][2 * hr + j] = tf_attn::neg_inf();
                    }
                }
            }
        }

        // The forward's online softmax for this warp's keys (attention.cu).
        bool need = false;
        float mxs[2];
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const float mx = fmaxf(fmaxf(s[0][2 * hr], s[0][2 * hr + 1]), fmaxf(s[1][2 * hr], s[1][2 * hr + 1]));
            mxs[hr] = tf_attn::quad_max(mx) * scale_log2;
            need |= mxs[hr] + m_neg[hr] > 0.0f;
        }
        if (__any_sync(0xffffffffu, need)) {  // warp-uniform
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const float old = m_neg[hr];
                const float m_new = mxs[hr] + old > 0.0f ? -mxs[hr] : old;
                const float corr = tf::exp2_approx(m_new - old);
                m_neg[hr] = m_new;
                row_sum[hr] *= corr;
#pragma unroll
                for (int nt = 0; nt < NTO; ++nt) {
                    acc_o[nt][2 * hr] *= corr;
                    acc_o[nt][2 * hr + 1] *= corr;
                }
            }
        }
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float e = tf::exp2_approx(fmaf(s[nt][i], scale_log2, m_neg[i >> 1]));
                s[nt][i] = e;
                row_sum[i >> 1] += e;
            }
        }

        // O_w += P·V_w: P's A fragment is the two S accumulators.
        const uint32_t pa[4] = {tf::pack2<T>(s[0][0], s[0][1]), tf::pack2<T>(s[0][2], s[0][3]),
                                tf::pack2<T>(s[1][0], s[1][1]), tf::pack2<T>(s[1][2], s[1][3])};
#pragma unroll
        for (int dp = 0; dp < NTO / 2; ++dp) {
            uint32_t vb[4];  // {0,1}: B of d-tile 2dp, {2,3}: of 2dp + 1
            tf::ldmatrix_x4_trans(vb, sV + tf_attn::step_offset<Sw>(v_off, dp));
            const uint32_t b0[2] = {vb[0], vb[1]};
            const uint32_t b1[2] = {vb[2], vb[3]};
            tf::mma_m16n8k16<T>(acc_o[2 * dp], pa, b0);
            tf::mma_m16n8k16<T>(acc_o[2 * dp + 1], pa, b1);
        }
    }
    tf::cp_async_wait<0>();  // only empty groups can pend; the ring is free
    __syncthreads();         // ... once every warp is done with the last block

    // The merge: O_w [warp][16][HD] and (max in base 2, sum) [warp][16] in the ring.
    float* mo = reinterpret_cast<float*>(smem);
    float2* ml = reinterpret_cast<float2*>(mo + Tr::kWarps * Tr::kRows * HD);
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const int r = g + 8 * hr;
        const float l = tf::warp_sum<4>(row_sum[hr]);
#pragma unroll
        for (int nt = 0; nt < NTO; ++nt) {
            *reinterpret_cast<float2*>(mo + (warp * Tr::kRows + r) * HD + nt * 8 + 2 * tq) =
                make_float2(acc_o[nt][2 * hr], acc_o[nt][2 * hr + 1]);
        }
        if (tq == 0) ml[warp * Tr::kRows + r] = make_float2(-m_neg[hr], l);
    }
    __syncthreads();

    constexpr int kCols = HD / 8;  // columns a merging thread owns (8 threads a row)
    const int r = tid / 8, c0 = (tid % 8) * kCols;
    const int64_t row = m0 + r;
    float mw[Tr::kWarps], M = -kNothingSeen, L = 0.0f;
#pragma unroll
    for (int w = 0; w < Tr::kWarps; ++w) M = fmaxf(M, ml[w * Tr::kRows + r].x);
#pragma unroll
    for (int w = 0; w < Tr::kWarps; ++w) {
        const float2 x = ml[w * Tr::kRows + r];
        mw[w] = tf::exp2_approx(x.x - M);  // 0 for a warp that saw no finite score
        L = fmaf(x.y, mw[w], L);
    }
    const bool sees = tf_attn::row_sees_a_key(p, row);
    bool bad = false;
    if (row < p.t_q) {
        // Final: the forward's row rules (o = 0, lse = +inf for a row that sees no
        // key). Split: normalised by this split's sum, lse = -inf if it saw nothing.
        const float inv = kSplit ? (L == 0.0f ? 0.0f : 1.0f / L) : tf_attn::inv_row_sum(L, sees);
        T* o = reinterpret_cast<T*>(p.o) + b * p.o_stride_b + h * p.o_stride_h + row * p.o_stride_t;
        float* oa = kSplit ? reinterpret_cast<float*>(p.o_accum) + tf_attn::split_row(p, split, row) * HD : nullptr;
#pragma unroll
        for (int c = c0; c < c0 + kCols; c += 2) {
            float x0 = 0.0f, x1 = 0.0f;
#pragma unroll
            for (int w = 0; w < Tr::kWarps; ++w) {
                const float2 y = *reinterpret_cast<const float2*>(mo + (w * Tr::kRows + r) * HD + c);
                x0 = fmaf(y.x, mw[w], x0);
                x1 = fmaf(y.y, mw[w], x1);
            }
            x0 *= inv;
            x1 *= inv;
            bad |= tf_attn::nonfinite(x0) || tf_attn::nonfinite(x1);
            if (kSplit) {
                *reinterpret_cast<float2*>(oa + c) = make_float2(x0, x1);
            } else {
                *reinterpret_cast<uint32_t*>(o + c) = tf::pack2<T>(x0, x1);
            }
        }
        if (tid % 8 == 0) {
            if (kSplit) {
                reinterpret_cast<float*>(p.lse_accum)[tf_attn::split_row(p, split, row)] =
                    L == 0.0f ? tf_attn::neg_inf() : M * kLn2 + logf(L);
            } else {
                reinterpret_cast<float*>(p.lse)[b * p.lse_stride_b + h * p.lse_stride_h + row * p.lse_stride_t] =
                    tf_attn::row_lse_log2(M, L, sees);
            }
        }
    }
    // Causal: a masked key's NaN / inf v may have reached a row through 0·v.
    if (p.causal && __syncthreads_or(bad)) {
        const int rows = (int)min64(Tr::kRows, p.t_q - m0);
        const int64_t k_lo = (int64_t)n_lo * BN, k_hi = min64((int64_t)n_hi * BN, p.t_k);
        if (kSplit) {
            const int64_t at = tf_attn::split_row(p, split, m0);
            tf_attn::recompute_nonfinite_rows<HD>(p, q, k, v, reinterpret_cast<float*>(p.o_accum) + at * HD,
                                                  (int64_t)HD, reinterpret_cast<const float*>(p.lse_accum) + at, 1,
                                                  m0, k_lo, k_hi, warp, lane, Tr::kWarps, rows);
        } else {
            T* o = reinterpret_cast<T*>(p.o) + b * p.o_stride_b + h * p.o_stride_h + m0 * p.o_stride_t;
            const float* lse =
                reinterpret_cast<const float*>(p.lse) + b * p.lse_stride_b + h * p.lse_stride_h + m0 * p.lse_stride_t;
            tf_attn::recompute_nonfinite_rows<HD>(p, q, k, v, o, p.o_stride_t, lse, p.lse_stride_t, m0, k_lo, k_hi,
                                                  warp, lane, Tr::kWarps, rows);
        }
    }
}

}  // namespace tf_attn_decode

// ------------------------------------------------------------------ entry points

// One line per kernel (the emulator's build finds kernels by their `extern "C"
// __global__` text, so no macro). Dynamic shared memory Traits<HD>::kSmemBytes.
extern "C" __global__ void __launch_bounds__(128) attn_decode_f16_hd64(const tf_attn_params p) { tf_attn_decode::decode<__half, 64, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_f16_hd80(const tf_attn_params p) { tf_attn_decode::decode<__half, 80, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_f16_hd96(const tf_attn_params p) { tf_attn_decode::decode<__half, 96, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_f16_hd128(const tf_attn_params p) { tf_attn_decode::decode<__half, 128, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_bf16_hd64(const tf_attn_params p) { tf_attn_decode::decode<__nv_bfloat16, 64, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_bf16_hd80(const tf_attn_params p) { tf_attn_decode::decode<__nv_bfloat16, 80, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_bf16_hd96(const tf_attn_params p) { tf_attn_decode::decode<__nv_bfloat16, 96, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_bf16_hd128(const tf_attn_params p) { tf_attn_decode::decode<__nv_bfloat16, 128, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_split_f16_hd64(const tf_attn_params p) { tf_attn_decode::decode<__half, 64, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_split_f16_hd80(const tf_attn_params p) { tf_attn_decode::decode<__half, 80, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_split_f16_hd96(const tf_attn_params p) { tf_attn_decode::decode<__half, 96, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_split_f16_hd128(const tf_attn_params p) { tf_attn_decode::decode<__half, 128, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_split_bf16_hd64(const tf_attn_params p) { tf_attn_decode::decode<__nv_bfloat16, 64, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_split_bf16_hd80(const tf_attn_params p) { tf_attn_decode::decode<__nv_bfloat16, 80, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_split_bf16_hd96(const tf_attn_params p) { tf_attn_decode::decode<__nv_bfloat16, 96, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_decode_split_bf16_hd128(const tf_attn_params p) { tf_attn_decode::decode<__nv_bfloat16, 128, true>(p); }
