// attention_backward_tc.cu: the backward of scaled dot-product attention on tensor
// cores for f16 / bf16 storage (FlashAttention-2's structure, deterministic),
// head dims 64, 80, 96 and 128. With s_ij = scale·q_i·k_j, p_ij = exp(s_ij - lse_i)
// over the keys row i sees (all, or with `causal` those with j <= i + T_k - T_q, the
// forward's bottom-right alignment), the forward's lse_i and o_i:
//   delta_i = do_i·o_i,  dp_ij = do_i·v_j,  ds_ij = p_ij·(dp_ij - delta_i),
//   dv_j = Σ_i p_ij·do_i,  dk_j = scale·Σ_i ds_ij·q_i,  dq_i = scale·Σ_j ds_ij·k_j.
// A row that sees no key has lse = +inf (the forward's), so p = 0 and it passes no
// gradient. Three launches (tf_kernels.h, tf_attn_bwd_params):
//   attn_bwd_delta_*: a warp per query row, delta_i in f32 from the stored o and do.
//   attn_bwd_dkv_*: a CTA per 64-key block of one (b, h); warp w owns keys
//     [16w, 16w + 16) and keeps dk, dv in f32 registers. The block's K and V tiles
//     stay in shared memory; query steps of STEP rows (Q, dO, lse, delta) stream
//     through a two-stage cp.async ring, from the last (the t_q tail, the only
//     step copied with predicates) down to the first that sees the block's first
//     key. Per step and warp: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (A from
//     the K / V tile by ldmatrix, B from the Q / dO tile by ldmatrix), Pᵀ and dSᵀ in
//     registers, then dv += Pᵀ·dO and dk += dSᵀ·Q with Pᵀ, dSᵀ repacked from the
//     accumulators into A fragments (rounded to the storage type, as FA2 does) and
//     dO, Q read by ldmatrix.trans.
//   attn_bwd_dq_*: a CTA per 64-query block (causal: heaviest first); warp w owns
//     queries [16w, 16w + 16), keeps dq in registers and its rows' lse, delta; the Q
//     and dO tiles stay, key steps (K, V) stream through the ring, last (the T_k
//     tail) first. Per step:
//     S = Q·Kᵀ, dP = dO·Vᵀ, P, dS, then dq += dS·K (K by ldmatrix.trans).
// dq is computed apart from dk / dv (one more S and dP per pair of blocks than
// FA2's atomic dq) so every gradient is one thread's sum in a fixed order: the same
// bits on every run, no atomics. Masks: a step that crosses the causal diagonal
// sets masked scores to -inf (p = 0); query rows past T_q are zero-filled with lse
// +inf, key rows past T_k zero-filled and masked; neither is written.
// Non-finite inputs: a masked pair still multiplies 0 by the other side's value,
// so a NaN or infinite q, k, v or do can make gradients non-finite that the exact
// chain keeps finite (never the reverse); training skips such a step anyway.
//
// Shared tiles are XOR-swizzled per 16-byte chunk (tf/swizzle.cuh) and loaded by
// tf/attention_tiles.cuh, as in the forward (attention.cu). Tile choices in Traits.
// Preconditions (tf-host ops/attention_backward.rs): those of tf_attn_bwd_params;
// t_q >= 1; dynamic shared memory Traits<HD>::kSmemBytes.
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

namespace tf_attn_bwd {

using tf_attn::kLog2e;
using tf_attn::min64;

// ---------------------------------------------------------------------- traits

template <int HD, int STEP>
struct TraitsBase {
    static constexpr int kHeadDim = HD;
    static constexpr int kBlock = TF_ATTN_BWD_BLOCK;  // rows a CTA owns
    static constexpr int kStep = STEP;                 // rows streamed per step
    static constexpr int kWarps = 4;
    static constexpr int kThreads = 32 * kWarps;
    static_assert(kThreads == TF_ATTN_THREADS, "the host launches TF_ATTN_THREADS threads");
    static_assert(kBlock == 16 * kWarps, "each warp owns one m16 tile of rows");
    static constexpr int kChunks = HD / 8;        // 16-byte chunks a row
    static constexpr int kKSteps = HD / 16;       // k16 steps over the head dim
    static constexpr int kNTilesS = STEP / 8;     // n8 tiles of S (or Sᵀ) a warp holds
    static constexpr int kNTilesD = HD / 8;       // n8 tiles of a gradient row
    static constexpr int kPSteps = STEP / 16;     // k16 steps of the P·X products
    static constexpr int kTileOwn = kBlock * HD * 2;
    static constexpr int kTileStep = STEP * HD * 2;
    static constexpr int kStage = 2 * kTileStep + 2 * STEP * 4;  // two tiles, lse and delta
    static constexpr int kSmemBytes = 2 * kTileOwn + 2 * kStage;
    static_assert(HD % 16 == 0 && STEP % 16 == 0, "whole k16 steps");
    static_assert(kSmemBytes == 4 * kBlock * HD + 8 * STEP * HD + 16 * STEP, "tf_kernels.h states this size");
    static_assert(kSmemBytes <= 227 * 1024, "shared memory per block at most 227 KB");
};

template <int HD> struct Traits;
// Every head dim streams 64 rows a step: 4 mma per ldmatrix.x4 of B, and
// 2 * HD + 64 f32 accumulators a thread (dk and dv, S and dP).
template <> struct Traits<64> : TraitsBase<64, TF_ATTN_BWD_STEP_HD64> {};
template <> struct Traits<80> : TraitsBase<80, TF_ATTN_BWD_STEP_HD80> {};
template <> struct Traits<96> : TraitsBase<96, TF_ATTN_BWD_STEP_HD96> {};
template <> struct Traits<128> : TraitsBase<128, TF_ATTN_BWD_STEP_HD128> {};

// ------------------------------------------------------------- warp products

// acc[n] += A·Bᵀ over the head dim for this warp's 16 rows of A (ldmatrix offset
// a_off in tile `sa`) and NT * 8 rows of B (offset b_off of rows 0..15 in `sb`).
template <typename T, typename Tr, int NT>
__device__ __forceinline__ void product_abt(float (&acc)[NT][4], const unsigned char* sa, uint32_t a_off,
                                            const unsigned char* sb, uint32_t b_off) {
    using Sw = tf::Swizzle<Tr::kChunks>;
    constexpr int kRow16 = 16 * Sw::kRowBytes;
#pragma unroll
    for (int ks = 0; ks < Tr::kKSteps; ++ks) {
        uint32_t a[4];
        tf::ldmatrix_x4(a, sa + tf_attn::step_offset<Sw>(a_off, ks));
        const uint32_t bo = tf_attn::step_offset<Sw>(b_off, ks);
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            uint32_t bb[4];  // {0,1}: B of n-tile 2np, {2,3}: of 2np + 1
            tf::ldmatrix_x4(bb, sb + bo + np * kRow16);
            const uint32_t b0[2] = {bb[0], bb[1]};
            const uint32_t b1[2] = {bb[2], bb[3]};
            tf::mma_m16n8k16<T>(acc[2 * np], a, b0);
            tf::mma_m16n8k16<T>(acc[2 * np + 1], a, b1);
        }
    }
}

// acc[d] += P·X for this warp's 16 rows: P [16, STEP] in accumulator layout (n8
// tiles 2ks, 2ks + 1 make the A fragment of k16 step ks, rounded to T), X the
// STEP x HD tile `sx` read by ldmatrix.trans at x_off.
template <typename T, typename Tr>
__device__ __forceinline__ void product_px(float (&acc)[Tr::kNTilesD][4], const float (&pm)[Tr::kNTilesS][4],
                                           const unsigned char* sx, uint32_t x_off) {
    using Sw = tf::Swizzle<Tr::kChunks>;
    constexpr int kRow16 = 16 * Sw::kRowBytes;
#pragma unroll
    for (int ks = 0; ks < Tr::kPSteps; ++ks) {
        const uint32_t pa[4] = {tf::pack2<T>(pm[2 * ks][0], pm[2 * ks][1]), tf::pack2<T>(pm[2 * ks][2], pm[2 * ks][3]),
                                tf::pack2<T>(pm[2 * ks + 1][0], pm[2 * ks + 1][1]),
                                tf::pack2<T>(pm[2 * ks + 1][2], pm[2 * ks + 1][3])};
#pragma unroll
        for (int dp = 0; dp < Tr::kNTilesD / 2; ++dp) {
            uint32_t xb[4];  // {0,1}: B of d-tile 2dp, {2,3}: of 2dp + 1
            tf::ldmatrix_x4_trans(xb, sx + tf_attn::step_offset<Sw>(x_off, dp) + ks * kRow16);
            const uint32_t b0[2] = {xb[0], xb[1]};
            const uint32_t b1[2] = {xb[2], xb[3]};
            tf::mma_m16n8k16<T>(acc[2 * dp], pa, b0);
            tf::mma_m16n8k16<T>(acc[2 * dp + 1], pa, b1);
        }
    }
}

// The ldmatrix offsets of one lane, the forward's (attention.cu): A rows (this
// warp's 16 rows, chunk lane / 16), B rows (pairs of n8 tiles), X rows (.trans).
struct Offsets {
    uint32_t a, b, x;
};
template <typename Sw>
__device__ __forceinline__ Offsets lane_offsets(int warp, int lane) {
    const int mi = lane / 8;
    return {(uint32_t)Sw::offset(16 * warp + lane % 16, lane / 16), (uint32_t)Sw::offset((mi >> 1) * 8 + lane % 8, mi & 1),
            (uint32_t)Sw::offset((mi & 1) * 8 + lane % 8, mi >> 1)};
}

template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[n][i] = 0.0f;
    }
}

// Rows `row` and row + 8 of a warp's accumulators, times `f`, to f32 [.., HD] rows
// at `out` (row stride `ld` floats) while below `rows`.
template <int HD>
__device__ __forceinline__ void store_rows(float* out, int64_t ld, const float (&acc)[HD / 8][4], int64_t row,
                                           int64_t rows, int tq, float f) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        if (row + 8 * hr >= rows) continue;
        float* r = out + (row + 8 * hr) * ld + 2 * tq;
#pragma unroll
        for (int nt = 0; nt < HD / 8; ++nt) {
            *reinterpret_cast<float2*>(r + nt * 8) = make_float2(acc[nt][2 * hr] * f, acc[nt][2 * hr + 1] * f);
        }
    }
}

template <typename T>
__device__ __forceinline__ const T* at(tf_ptr base, int64_t sb, int64_t sh, int b, int h) {
    return reinterpret_cast<const T*>(base) + b * sb + h * sh;
}

// ------------------------------------------------------------------- delta

template <typename T>
__device__ __forceinline__ void delta_rows(const tf_attn_bwd_params& p) {
    const int lane = threadIdx.x % 32;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    const int64_t rows = p.batch * p.heads * p.t_q;
    for (int64_t w = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; w < rows; w += warps) {
        const int64_t i = w % p.t_q, h = (w / p.t_q) % p.heads, b = w / (p.t_q * p.heads);
        const T* o = reinterpret_cast<const T*>(p.o) + b * p.o_sb + i * p.o_st + h * p.o_sh;
        const T* d = reinterpret_cast<const T*>(p.d_o) + b * p.do_sb + i * p.do_st + h * p.do_sh;
        float s = 0.0f;
        for (int64_t c = lane; c < p.head_dim; c += 32) s = fmaf(tf::to_float(o[c]), tf::to_float(d[c]), s);
        s = tf::warp_sum(s);
        if (lane == 0) reinterpret_cast<float*>(p.delta)[w] = s;  // w = (b * H + h) * t_q + i
    }
}

// --------------------------------------------------------------------- dk, dv

template <typename T, int HD>
__device__ __forceinline__ void dkv(const tf_attn_bwd_params& p) {
    using Tr = Traits<HD>;
    using Sw = tf::Swizzle<Tr::kChunks>;
    constexpr int BK = Tr::kBlock, STEP = Tr::kStep, NTS = Tr::kNTilesS, NTD = Tr::kNTilesD;

    TF_DYNAMIC_SMEM(unsigned char, smem);
    unsigned char* sK = smem;
    unsigned char* sV = smem + Tr::kTileOwn;
    unsigned char* stages = smem + 2 * Tr::kTileOwn;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
    const int b = blockIdx.y, h = blockIdx.z;
    const int64_t j0 = (int64_t)blockIdx.x * BK;
    const int64_t diag = p.t_k - p.t_q;  // key j visible to row i iff j <= i + diag (causal)
    const T* q = at<T>(p.q, p.q_sb, p.q_sh, b, h);
    const T* d_o = at<T>(p.d_o, p.do_sb, p.do_sh, b, h);
    const float* lse = reinterpret_cast<const float*>(p.lse) + ((int64_t)b * p.heads + h) * p.t_q;
    const float* delta = reinterpret_cast<const float*>(p.delta) + ((int64_t)b * p.heads + h) * p.t_q;

    // Query steps: from the first that holds a row seeing key j0 to the last.
    const int64_t i_first = p.causal ? (j0 - diag > 0 ? j0 - diag : 0) : 0;
    const int s_lo = (int)(i_first / STEP), s_hi = (int)((p.t_q + STEP - 1) / STEP);

    // Stage `st` receives query step `s`: Q and dO rows (zero past t_q), lse in
    // base 2 (+inf past t_q: p = 0) and delta. The steps run from the last, the
    // only one that can hold the t_q tail (the prologue's, copied with
    // predicates), down to s_lo: every step the loop fetches is whole and copies
    // from per-thread addresses without predicates (load_tile's mapping).
    const tf_attn::Lanes ln = tf_attn::lanes<Tr>(tid);
    const T* q_thr = q + ln.r0 * p.q_st + ln.c0 * 8;
    const T* do_thr = d_o + ln.r0 * p.do_st + ln.c0 * 8;
    auto load_step = [&](int s, int st, bool whole) {
        unsigned char* base = stages + st * Tr::kStage;
        const int64_t i0 = (int64_t)s * STEP;
        if (whole) {
            tf_attn::load_tile_full<Tr, STEP>(base + ln.soff, q_thr + i0 * p.q_st, 16 * p.q_st, ln.two);
            tf_attn::load_tile_full<Tr, STEP>(base + Tr::kTileStep + ln.soff, do_thr + i0 * p.do_st,
                                              16 * p.do_st, ln.two);
        } else {
            tf_attn::load_tile<Tr, STEP>(base, q + i0 * p.q_st, p.q_st, p.t_q - i0, tid);
            tf_attn::load_tile<Tr, STEP>(base + Tr::kTileStep, d_o + i0 * p.do_st, p.do_st, p.t_q - i0, tid);
        }
        float* fl = reinterpret_cast<float*>(base + 2 * Tr::kTileStep);
        for (int r = tid; r < STEP; r += Tr::kThreads) {
            const bool in = i0 + r < p.t_q;
            fl[r] = in ? lse[i0 + r] * kLog2e : tf_attn::pos_inf();
            fl[STEP + r] = in ? delta[i0 + r] : 0.0f;
        }
    };

    tf_attn::load_tile<Tr, BK>(sK, at<T>(p.k, p.k_sb, p.k_sh, b, h) + j0 * p.k_st, p.k_st, p.t_k - j0, tid);
    tf_attn::load_tile<Tr, BK>(sV, at<T>(p.v, p.v_sb, p.v_sh, b, h) + j0 * p.v_st, p.v_st, p.t_k - j0, tid);
    if (s_lo < s_hi) load_step(s_hi - 1, 0, false);
    tf::cp_async_commit();

    Offsets off = lane_offsets<Sw>(warp, lane);
    const float scale_log2 = p.scale * kLog2e;
    const int64_t key0 = j0 + 16 * warp + g;  // this lane's keys: key0, key0 + 8
    float dk[NTD][4], dv[NTD][4];
    zero(dk);
    zero(dv);

    for (int s = s_hi - 1, it = 0; s >= s_lo; --s, ++it) {
        tf_attn::keep_in_register(off.a);
        tf_attn::keep_in_register(off.b);
        tf_attn::keep_in_register(off.x);
        tf::cp_async_wait<0>();  // step s (and K, V) landed
        __syncthreads();         // ... for every thread; every warp is done with step s + 1
        if (s > s_lo) {
            load_step(s - 1, (it + 1) & 1, true);
            tf::cp_async_commit();
        }
        const unsigned char* sQ = stages + (it & 1) * Tr::kStage;
        const unsigned char* sDO = sQ + Tr::kTileStep;
        const float* fl = reinterpret_cast<const float*>(sQ + 2 * Tr::kTileStep);

        float st[NTS][4], dpt[NTS][4];  // Sᵀ and dPᵀ: rows = this warp's keys, columns = the step's queries
        zero(st);
        zero(dpt);
        product_abt<T, Tr>(st, sK, off.a, sQ, off.b);
        product_abt<T, Tr>(dpt, sV, off.a, sDO, off.b);

        const int64_t i0 = (int64_t)s * STEP;
        // Causal: the step crosses the diagonal iff its first query misses the block's last key.
        if (p.causal && i0 + diag < j0 + BK - 1) {  // a branch around the mask, off the steady state
            // key0 + 8 hr - (i0 + 2 tq + diag) > nt * 8 + jj: the key lies past the query's limit
            const int64_t lim = key0 - (i0 + 2 * tq + diag);
#pragma unroll
            for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    if (lim + 8 * (i >> 1) > nt * 8 + (i & 1)) st[nt][i] = tf_attn::neg_inf();
                }
            }
        }
#pragma unroll
        for (int nt = 0; nt < NTS; ++nt) {
            const int c = nt * 8 + 2 * tq;
            const float2 l2 = *reinterpret_cast<const float2*>(fl + c);
            const float2 dl = *reinterpret_cast<const float2*>(fl + STEP + c);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int jj = i & 1;
                const float pr = tf::exp2_approx(fmaf(st[nt][i], scale_log2, -(jj ? l2.y : l2.x)));
                st[nt][i] = pr;
                dpt[nt][i] = pr * (dpt[nt][i] - (jj ? dl.y : dl.x));
            }
        }
        product_px<T, Tr>(dv, st, sDO, off.x);
        product_px<T, Tr>(dk, dpt, sQ, off.x);
    }
    tf::cp_async_wait<0>();  // nothing pends at exit (a block no query step reached)

    const int64_t ld = p.heads * HD;
    const int64_t out = ((int64_t)b * p.t_k * p.heads + h) * HD;
    store_rows<HD>(reinterpret_cast<float*>(p.dk) + out, ld, dk, key0, p.t_k, tq, p.scale);
    store_rows<HD>(reinterpret_cast<float*>(p.dv) + out, ld, dv, key0, p.t_k, tq, 1.0f);
}

// ------------------------------------------------------------------------- dq

template <typename T, int HD>
__device__ __forceinline__ void dq(const tf_attn_bwd_params& p) {
    using Tr = Traits<HD>;
    using Sw = tf::Swizzle<Tr::kChunks>;
    constexpr int BM = Tr::kBlock, STEP = Tr::kStep, NTS = Tr::kNTilesS, NTD = Tr::kNTilesD;

    TF_DYNAMIC_SMEM(unsigned char, smem);
    unsigned char* sQ = smem;
    unsigned char* sDO = smem + Tr::kTileOwn;
    unsigned char* stages = smem + 2 * Tr::kTileOwn;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
    const int b = blockIdx.y, h = blockIdx.z;
    // Causal: the last query block sees the most keys; x runs from it down.
    const int m_block = p.causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int64_t m0 = (int64_t)m_block * BM;
    const int64_t diag = p.t_k - p.t_q;
    const T* k = at<T>(p.k, p.k_sb, p.k_sh, b, h);
    const T* v = at<T>(p.v, p.v_sb, p.v_sh, b, h);

    // Key steps: keys [0, n_end) that some row of the block sees.
    int64_t n_end = p.t_k;
    if (p.causal) n_end = min64(n_end, min64(m0 + BM, p.t_q) - 1 + diag + 1);
    const int s_hi = n_end <= 0 ? 0 : (int)((n_end + STEP - 1) / STEP);

    // Key steps from the last, the only one that can hold the T_k tail (the
    // prologue's, copied with predicates), down to 0: every step the loop fetches
    // is whole and copies from per-thread addresses without predicates.
    const tf_attn::Lanes ln = tf_attn::lanes<Tr>(tid);
    const T* k_thr = k + ln.r0 * p.k_st + ln.c0 * 8;
    const T* v_thr = v + ln.r0 * p.v_st + ln.c0 * 8;
    auto load_step = [&](int s, int st, bool whole) {
        unsigned char* base = stages + st * Tr::kStage;
        const int64_t n0 = (int64_t)s * STEP;
        if (whole) {
            tf_attn::load_tile_full<Tr, STEP>(base + ln.soff, k_thr + n0 * p.k_st, 16 * p.k_st, ln.two);
            tf_attn::load_tile_full<Tr, STEP>(base + Tr::kTileStep + ln.soff, v_thr + n0 * p.v_st, 16 * p.v_st,
                                              ln.two);
        } else {
            tf_attn::load_tile<Tr, STEP>(base, k + n0 * p.k_st, p.k_st, p.t_k - n0, tid);
            tf_attn::load_tile<Tr, STEP>(base + Tr::kTileStep, v + n0 * p.v_st, p.v_st, p.t_k - n0, tid);
        }
    };

    tf_attn::load_tile<Tr, BM>(sQ, at<T>(p.q, p.q_sb, p.q_sh, b, h) + m0 * p.q_st, p.q_st, p.t_q - m0, tid);
    tf_attn::load_tile<Tr, BM>(sDO, at<T>(p.d_o, p.do_sb, p.do_sh, b, h) + m0 * p.do_st, p.do_st, p.t_q - m0, tid);
    if (s_hi > 0) load_step(s_hi - 1, 0, false);
    tf::cp_async_commit();

    // This lane's rows row0 and row0 + 8: lse in base 2 (+inf past t_q) and delta.
    const int64_t row0 = m0 + 16 * warp + g;
    float l2[2], dl[2];
    {
        const float* lse = reinterpret_cast<const float*>(p.lse) + ((int64_t)b * p.heads + h) * p.t_q;
        const float* delta = reinterpret_cast<const float*>(p.delta) + ((int64_t)b * p.heads + h) * p.t_q;
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const bool in = row0 + 8 * hr < p.t_q;
            l2[hr] = in ? lse[row0 + 8 * hr] * kLog2e : tf_attn::pos_inf();
            dl[hr] = in ? delta[row0 + 8 * hr] : 0.0f;
        }
    }

    Offsets off = lane_offsets<Sw>(warp, lane);
    const float scale_log2 = p.scale * kLog2e;
    float acc[NTD][4];
    zero(acc);

    for (int s = s_hi - 1, it = 0; s >= 0; --s, ++it) {
        tf_attn::keep_in_register(off.a);
        tf_attn::keep_in_register(off.b);
        tf_attn::keep_in_register(off.x);
        tf::cp_async_wait<0>();  // step s landed
        __syncthreads();         // ... for every thread; every warp is done with step s + 1
        if (s > 0) {
            load_step(s - 1, (it + 1) & 1, true);
            tf::cp_async_commit();
        }
        const unsigned char* sK = stages + (it & 1) * Tr::kStage;
        const unsigned char* sV = sK + Tr::kTileStep;

        float sc[NTS][4], dp[NTS][4];  // S and dP: rows = this warp's queries, columns = the step's keys
        zero(sc);
        zero(dp);
        product_abt<T, Tr>(sc, sQ, off.a, sK, off.b);
        product_abt<T, Tr>(dp, sDO, off.a, sV, off.b);

        const int64_t n0 = (int64_t)s * STEP;
        // The T_k tail, or (causal) a key past the block's first row's limit.
        if (n0 + STEP > p.t_k || (p.causal && n0 + STEP - 1 > m0 + diag)) {  // a branch around the mask
            // Local key c = nt * 8 + 2 tq + (i & 1) is visible below lim (per row half).
            const int64_t tail = p.t_k - n0 - 2 * tq;
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                int64_t lim = tail;
                if (p.causal) lim = min64(lim, row0 + 8 * hr + diag + 1 - n0 - 2 * tq);
#pragma unroll
                for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                    for (int jj = 0; jj < 2; ++jj) {
                        if (nt * 8 + jj >= lim) sc[nt][2 * hr + jj] = tf_attn::neg_inf();
                    }
                }
            }
        }
#pragma unroll
        for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int hr = i >> 1;
                const float pr = tf::exp2_approx(fmaf(sc[nt][i], scale_log2, -l2[hr]));
                sc[nt][i] = pr * (dp[nt][i] - dl[hr]);  // dS
            }
        }
        product_px<T, Tr>(acc, sc, sK, off.x);
    }
    tf::cp_async_wait<0>();

    const int64_t ld = p.heads * HD;
    store_rows<HD>(reinterpret_cast<float*>(p.dq) + ((int64_t)b * p.t_q * p.heads + h) * HD, ld, acc, row0, p.t_q,
                   tq, p.scale);
}

}  // namespace tf_attn_bwd

// ------------------------------------------------------------------ entry points

// One line per kernel (the emulator's build finds kernels by their `extern "C"
// __global__` text, so no macro). Dynamic shared memory Traits<HD>::kSmemBytes.
extern "C" __global__ void __launch_bounds__(256) attn_bwd_delta_f16(const tf_attn_bwd_params p) { tf_attn_bwd::delta_rows<__half>(p); }
extern "C" __global__ void __launch_bounds__(256) attn_bwd_delta_bf16(const tf_attn_bwd_params p) { tf_attn_bwd::delta_rows<__nv_bfloat16>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkv_f16_hd64(const tf_attn_bwd_params p) { tf_attn_bwd::dkv<__half, 64>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkv_f16_hd80(const tf_attn_bwd_params p) { tf_attn_bwd::dkv<__half, 80>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkv_f16_hd96(const tf_attn_bwd_params p) { tf_attn_bwd::dkv<__half, 96>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkv_f16_hd128(const tf_attn_bwd_params p) { tf_attn_bwd::dkv<__half, 128>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkv_bf16_hd64(const tf_attn_bwd_params p) { tf_attn_bwd::dkv<__nv_bfloat16, 64>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkv_bf16_hd80(const tf_attn_bwd_params p) { tf_attn_bwd::dkv<__nv_bfloat16, 80>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkv_bf16_hd96(const tf_attn_bwd_params p) { tf_attn_bwd::dkv<__nv_bfloat16, 96>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkv_bf16_hd128(const tf_attn_bwd_params p) { tf_attn_bwd::dkv<__nv_bfloat16, 128>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_f16_hd64(const tf_attn_bwd_params p) { tf_attn_bwd::dq<__half, 64>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_f16_hd80(const tf_attn_bwd_params p) { tf_attn_bwd::dq<__half, 80>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_f16_hd96(const tf_attn_bwd_params p) { tf_attn_bwd::dq<__half, 96>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_f16_hd128(const tf_attn_bwd_params p) { tf_attn_bwd::dq<__half, 128>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_bf16_hd64(const tf_attn_bwd_params p) { tf_attn_bwd::dq<__nv_bfloat16, 64>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_bf16_hd80(const tf_attn_bwd_params p) { tf_attn_bwd::dq<__nv_bfloat16, 80>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_bf16_hd96(const tf_attn_bwd_params p) { tf_attn_bwd::dq<__nv_bfloat16, 96>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dq_bf16_hd128(const tf_attn_bwd_params p) { tf_attn_bwd::dq<__nv_bfloat16, 128>(p); }
