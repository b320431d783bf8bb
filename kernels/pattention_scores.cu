// pattention_scores.cu: Pattention product 1, A = X·K_Pᵀ, with the norm's
// element-wise part and the per-row n-tile statistics fused into the epilogue.
// The whole design (and why l2_norm_gelu stores scaled A) is in pattention.cu.
//
// Writes, for the CTA's rows i and n-tile t (columns [128t, 128t + 128) of A):
//   h[i, j]      = ĥ_ij (storage type): A·2^-e (l2_norm_gelu; e = 0 on the plain
//                  path of tf/pattention_scores_epilogue.cuh), gelu(A)·2^-e
//                  (gelu_l2_norm) or 2^(A·log2e - e) (softmax); 0 at columns
//                  [n, h_stride) so the padding of h is defined
//   stats[i, t]  = (e, l): see tf/pattention_common.cuh
//
// f16 / bf16, kernels pattention_scores_{f16,bf16}: grid (n_tiles, ceil(t / 128)),
//   128 threads = 4 warps in 2 x 2, CTA tile 128 x 128, warp tile 64 x 64
//   (4 m16 x 8 n8 mma.sync m16n8k16 tiles, 128 f32 accumulators a thread), k-step 32,
//   4-stage cp.async ring (16 KB a stage). X and K_P tiles are 64-byte rows
//   swizzled chunk ^ ((row >> 1) & 3), both read with ldmatrix.x4 (K_P rows are the
//   "col" B operand directly). blockIdx.x runs over n-tiles, so CTAs resident
//   together share one X row block; K_P stays in L2.
//   Main loop: every thread's cp.async sources and shared offsets (tf::pat::TileStream)
//   and every lane's ldmatrix offsets are computed once; a full k-tile costs 8 copies
//   with pointers advanced by a constant, and only the last, partial k-tile (d_in
//   % 32) goes through load_tile's zero filling. The fragments of k16 step kk + 1 load
//   before the mma of step kk. A CTA with no row residue (128 rows of X and of K_P)
//   runs a copy of the loop with plain 16-byte copies and no per-m16-tile branch;
//   in the others, rows past t / n are zero-filled and warps skip their m16 tiles
//   that lie wholly past t (decode-sized t costs no wasted mma).
//   Epilogue (tf/pattention_scores_epilogue.cuh): from the accumulator registers,
//   one body per norm; each row's maximum and scaled sum are reduced over the quad
//   by shuffles and between the row's two warps through shared memory; the
//   scaled scores are packed to 16 bits in the drained pipeline memory and leave in
//   16-byte stores, 256 contiguous bytes a row; one thread per row writes the
//   statistics entry.
//
// Split over d_in (decode path, l2_norm_gelu, k_splits > 1): at t <= 64 the n-tiles
//   alone give a handful of CTAs, each streaming all of d_in, so the grid gains a z
//   dimension: CTA z runs the same main loop over the k-tiles [z·s, z·s + s) of d_in
//   (s = split_k_tiles; only the last slice can hold the partial k-tile) and writes
//   its f32 accumulators, unnormalised, from registers to partial[z, i, j]. Then
//   pattention_scores_reduce_{f16,bf16}: grid (n_tiles, ceil(t / 4)), 128 threads,
//   one warp per row, sums the slices in the order z = 0, 1, ... (deterministic) and
//   runs the same per-row epilogue (score_row) as the unsplit kernel.
//
// f32, kernel pattention_scores_f32: a SIMT path (correct, not fast): grid
//   (n_tiles, ceil(t / 64)), 256 threads, CTA tile 64 x 128, k-step 16, each thread
//   4 rows x 8 columns (columns 16 apart: conflict-free shared reads); same epilogue.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/async.cuh"
#include "tf/mma.cuh"
#include "tf/smem.cuh"
#include "tf/swizzle.cuh"
#include "tf/pattention_common.cuh"
#include "tf/pattention_scores_epilogue.cuh"

namespace tf_pattention_scores {

using namespace tf::pat;

// ---------------------------------------------------------------------- traits

// Tensor-core tile of product 1 (docs/kernel-design.md "Pattention": 128 x 128, k-step 32,
// 4 warps 2 x 2, 4 stages = 64 KB: 2 CTAs per SM on A100 (164 KB), 3 on H100).
struct Traits {
    static constexpr int kBM = 128;            // rows of X (tokens) per CTA
    static constexpr int kBN = kTileN;         // parameter tokens per CTA = one n-tile
    static constexpr int kBK = 32;             // d_in per pipeline stage
    static constexpr int kStages = 4;
    static constexpr int kWarpsM = 2, kWarpsN = 2;
    static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
    static constexpr int kWM = kBM / kWarpsM;  // 64
    static constexpr int kWN = kBN / kWarpsN;  // 64
    static constexpr int kMT = kWM / 16;       // m16 tiles per warp
    static constexpr int kNT = kWN / 8;        // n8 tiles per warp
    static constexpr int kChunks = kBK / 8;    // 16-byte chunks per tile row
    static constexpr int kBytesA = kBM * kBK * 2;
    static constexpr int kBytesB = kBN * kBK * 2;
    static constexpr int kStageBytes = kBytesA + kBytesB;
    static constexpr int kPipeBytes = kStages * kStageBytes;
    static constexpr int kEpiBytes = register_epilogue_bytes<kBM, kWarpsN>();
    static constexpr int kSmemBytes = kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes;

    static_assert(kBN == kTileN, "one CTA column block is exactly one statistics n-tile");
    static_assert(kBK % 16 == 0 && kNT % 2 == 0, "k16 steps; ldmatrix.x4 loads pairs of n8 tiles");
    static_assert(kBM % 16 == 0 && kThreads == 128, "4 warps");
    static_assert(kSmemBytes <= 227 * 1024, "shared memory per block at most 227 KB");
    static_assert(kMT * kNT * 4 <= 128, "accumulators must leave registers for fragments");
};

// SIMT f32 tile.
struct SimtTraits {
    static constexpr int kBM = 64, kBN = kTileN, kBK = 16, kThreads = 256;
    static constexpr int kTM = 4, kTN = 8;     // rows x columns per thread
    static constexpr int kLdA = kBM + 4;       // [kBK][kLdA] k-major X tile
    static constexpr int kLdB = kBN + 4;       // [kBK][kLdB] k-major K_P tile
    static constexpr int kPipeBytes = (kBK * kLdA + kBK * kLdB) * 4;
    static constexpr int kEpiBytes = kBM * kStageLd * 4;
    static constexpr int kSmemBytes = kPipeBytes > kEpiBytes ? kPipeBytes : kEpiBytes;
    static_assert((kBM / kTM) * (kBN / kTN) == kThreads, "one micro-tile per thread");
    static_assert(kSmemBytes <= 48 * 1024, "no opt-in needed");
};

static_assert(Traits::kSmemBytes == TF_PATTENTION_SMEM_SCORES, "tf_kernels.h states the launch's shared memory");
static_assert(SimtTraits::kSmemBytes == TF_PATTENTION_SMEM_SCORES_F32, "tf_kernels.h states the launch's shared memory");

// ------------------------------------------------------------------- epilogue

// Stores lane ln's four elements of row `row` of n-tile t_idx to h, and the row's
// tile statistics (lane 0).
template <typename T>
__device__ __forceinline__ void store_row(const tf_pattention_params& p, int64_t row, int64_t t_idx, int ln,
                                          const float (&v)[4], float2 st) {
    const int64_t col = t_idx * kTileN + 4 * ln;
    if (col < p.h_stride) store4<T>(reinterpret_cast<T*>(p.h) + row * p.h_stride + col, v);
    if (ln == 0) reinterpret_cast<float2*>(p.stats)[row * p.n_tiles + t_idx] = st;
}

// Writes the finished rows of the staged tile to h and stats.
template <typename T, int WARPS>
__device__ __forceinline__ void write_scores(const tf_pattention_params& p, const float* stage, int64_t m0,
                                             int rows, int warp, int lane) {
    const int64_t t_idx = blockIdx.x;
    const int64_t n0 = t_idx * kTileN;
    const int valid = (int)min64(kTileN, p.n - n0);
    scores_epilogue<T, WARPS>(stage, rows, valid, p.norm, warp, lane, [&](int r, int ln, const float(&v)[4], float2 st) {
        store_row<T>(p, m0 + r, t_idx, ln, v, st);
    });
}

// --------------------------------------------------------- tensor-core kernel

template <typename T>
__device__ __forceinline__ void scores_mma(const tf_pattention_params& p) {
    using Tr = Traits;
    using Sw = tf::Swizzle<Tr::kChunks>;
    TF_DYNAMIC_SMEM(unsigned char, smem);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wm = warp / Tr::kWarpsN, wn = warp % Tr::kWarpsN;
    const int64_t n0 = (int64_t)blockIdx.x * Tr::kBN;
    const int64_t m0 = (int64_t)blockIdx.y * Tr::kBM;
    const int rows_a = (int)min64(Tr::kBM, p.t - m0);
    const int rows_b = (int)min64(Tr::kBN, p.n - n0);
    // m16 tiles of this warp holding at least one row < t.
    const int mt_active = imin(Tr::kMT, imax(0, (rows_a - wm * Tr::kWM + 15) / 16));
    // This CTA's slice of d_in: columns [k_begin, k_begin + d_len) (all of d_in unsplit).
    const int64_t k_begin = p.k_splits > 1 ? (int64_t)blockIdx.z * p.split_k_tiles * Tr::kBK : 0;
    const int64_t d_len = p.k_splits > 1 ? min64((int64_t)p.split_k_tiles * Tr::kBK, p.d_in - k_begin) : p.d_in;
    const T* gx = reinterpret_cast<const T*>(p.x) + m0 * p.x_row_stride + k_begin;
    const T* gk = reinterpret_cast<const T*>(p.k_p) + n0 * p.k_row_stride + k_begin;
    const int k_tiles = (int)((d_len + Tr::kBK - 1) / Tr::kBK);
    const int k_full = (int)(d_len / Tr::kBK);  // k-tiles with no d_in residue

    // Full k-tiles stream through precomputed per-thread copies; the partial last one
    // (d_in % kBK != 0) goes through load_tile's zero filling. Tiles load in order.
    TileStream<Tr::kBM, Tr::kChunks, Tr::kThreads, T> sx(gx, p.x_row_stride, rows_a, Tr::kBK, tid);
    TileStream<Tr::kBN, Tr::kChunks, Tr::kThreads, T> sk(gk, p.k_row_stride, rows_b, Tr::kBK, tid);
    auto load = [&](int kt, auto full) {
        unsigned char* sa = smem + (kt % Tr::kStages) * Tr::kStageBytes;
        if (kt < k_full) {
            sx.template issue<decltype(full)::value>(sa);
            sk.template issue<decltype(full)::value>(sa + Tr::kBytesA);
            sx.advance(Tr::kBK);
            sk.advance(Tr::kBK);
        } else {
            const int64_t k0 = (int64_t)kt * Tr::kBK;
            load_tile<Tr::kBM, Tr::kChunks, Tr::kThreads>(sa, gx + k0, p.x_row_stride, rows_a, d_len - k0, tid);
            load_tile<Tr::kBN, Tr::kChunks, Tr::kThreads>(sa + Tr::kBytesA, gk + k0, p.k_row_stride, rows_b,
                                                          d_len - k0, tid);
        }
    };

    // Each lane's ldmatrix rows, fixed for the whole loop: the row's swizzle depends on
    // its low bits only, and the m16 / n16 tiles of a warp are 16 rows (1 KB) apart, so
    // one offset per k16 step serves all of them. A: matrices (rows 0-7, k lo),
    // (8-15, k lo), (0-7, k hi), (8-15, k hi) of an m16 tile; B: (n8 tile 2np, k lo),
    // (2np, k hi), (2np + 1, k lo), (2np + 1, k hi).
    constexpr int kKK = Tr::kBK / 16;
    constexpr int kTile16 = 16 * Sw::kRowBytes;
    int a_off[kKK], b_off[kKK];
#pragma unroll
    for (int kk = 0; kk < kKK; ++kk) {
        a_off[kk] = Sw::offset(wm * Tr::kWM + lane % 16, kk * 2 + lane / 16);
        b_off[kk] = Tr::kBytesA + Sw::offset(wn * Tr::kWN + (lane / 16) * 8 + lane % 8, kk * 2 + (lane / 8) % 2);
    }

    float acc[Tr::kMT][Tr::kNT][4];
    zero_acc(acc);

    // One pipeline stage: the fragments of k16 step kk + 1 load before the mma of
    // step kk. `mts` m16 tiles take part (kMT, a constant, for a warp with no rows
    // past t: no branch per tile).
    auto mma_stage = [&](const unsigned char* st, int mts) {
        uint32_t af[2][Tr::kMT][4], bf[2][Tr::kNT / 2][4];
        auto frags = [&](int kk, uint32_t(&a)[Tr::kMT][4], uint32_t(&b)[Tr::kNT / 2][4]) {
#pragma unroll
            for (int np = 0; np < Tr::kNT / 2; ++np) tf::ldmatrix_x4(b[np], st + b_off[kk] + np * kTile16);
#pragma unroll
            for (int mi = 0; mi < Tr::kMT; ++mi)
                if (mi < mts) tf::ldmatrix_x4(a[mi], st + a_off[kk] + mi * kTile16);
        };
        frags(0, af[0], bf[0]);
#pragma unroll
        for (int kk = 0; kk < kKK; ++kk) {
            if (kk + 1 < kKK) frags(kk + 1, af[(kk + 1) % 2], bf[(kk + 1) % 2]);
            mma_k16<T>(acc, af[kk % 2], bf[kk % 2], mts);
        }
    };

    // The main loop, in two forms decided once per CTA: FULL for a tile with no row
    // residue and `narrow` strides (every copy 16 bytes at a 32-bit offset, every m16
    // tile computed), else the general one.
    auto mainloop = [&](auto full) {
        constexpr bool kFull = decltype(full)::value;
        auto load_kt = [&](int kt) { load(kt, full); };
        ring_prologue<Tr::kStages>(k_tiles, load_kt);
        for (int kt = 0; kt < k_tiles; ++kt) {
            tf::cp_async_wait<Tr::kStages - 2>();
            __syncthreads();  // tile kt landed for all; stage (kt - 1) % S is free
            if (kt + Tr::kStages - 1 < k_tiles) load(kt + Tr::kStages - 1, full);
            tf::cp_async_commit();
            mma_stage(smem + (kt % Tr::kStages) * Tr::kStageBytes, kFull ? Tr::kMT : mt_active);
        }
    };
    if (rows_a == Tr::kBM && rows_b == Tr::kBN && sx.narrow && sk.narrow)
        mainloop(Flag<true>());
    else
        mainloop(Flag<false>());
    tf::cp_async_wait<0>();
    __syncthreads();  // every warp is done with the pipeline memory

    if (p.k_splits > 1) {
        write_partial_fragments<Tr::kWM, Tr::kWN>(p, acc, m0, rows_a, wm, wn, lane);
        return;
    }
    const int valid = (int)min64(kTileN, p.n - n0);
    auto epilogue = [&](auto norm) {
        register_epilogue<T, decltype(norm)::value, Tr::kBM, Tr::kWM, Tr::kWN, Tr::kMT, Tr::kNT, Tr::kWarpsN,
                          Tr::kThreads>(p, acc, smem, m0, rows_a, valid, wm, wn, tid);
    };
    if (p.norm == TF_NORM_SOFTMAX)
        epilogue(Norm<TF_NORM_SOFTMAX>());
    else if (p.norm == TF_NORM_GELU_L2_NORM)
        epilogue(Norm<TF_NORM_GELU_L2_NORM>());
    else
        epilogue(Norm<TF_NORM_L2_NORM_GELU>());
}

// ------------------------------------------------------------- split-K reduce

constexpr int kReduceRows = 4;  // rows (warps) per CTA of pattention_scores_reduce

// Sums the k_splits slices of partial for one row (warp) and n-tile (blockIdx.x),
// z = 0 first, then runs the per-row epilogue of the unsplit kernel.
template <typename T>
__device__ __forceinline__ void scores_reduce(const tf_pattention_params& p) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.y * kReduceRows + warp;
    if (row >= p.t) return;
    const int64_t ld = p.n_tiles * kTileN, slice = p.t * ld;
    const float* src = reinterpret_cast<const float*>(p.partial) + row * ld + blockIdx.x * kTileN + 4 * lane;
    float4 a = *reinterpret_cast<const float4*>(src);
    for (int z = 1; z < p.k_splits; ++z) {
        const float4 b = *reinterpret_cast<const float4*>(src + z * slice);
        a.x += b.x;
        a.y += b.y;
        a.z += b.z;
        a.w += b.w;
    }
    float v[4] = {a.x, a.y, a.z, a.w};
    const int valid = (int)min64(kTileN, p.n - (int64_t)blockIdx.x * kTileN);
    const float2 st = score_row<T>(v, lane, valid, p.norm);
    store_row<T>(p, row, blockIdx.x, lane, v, st);
}

// ------------------------------------------------------------------ SIMT kernel

__device__ __forceinline__ void scores_simt(const tf_pattention_params& p) {
    using Tr = SimtTraits;
    TF_DYNAMIC_SMEM(unsigned char, smem);
    float* sa = reinterpret_cast<float*>(smem);  // [kBK][kLdA]
    float* sb = sa + Tr::kBK * Tr::kLdA;         // [kBK][kLdB]

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int tx = tid % 16, ty = tid / 16;
    const int64_t n0 = (int64_t)blockIdx.x * Tr::kBN;
    const int64_t m0 = (int64_t)blockIdx.y * Tr::kBM;
    const int rows_a = (int)min64(Tr::kBM, p.t - m0);
    const int rows_b = (int)min64(Tr::kBN, p.n - n0);
    const float* gx = reinterpret_cast<const float*>(p.x) + m0 * p.x_row_stride;
    const float* gk = reinterpret_cast<const float*>(p.k_p) + n0 * p.k_row_stride;

    float acc[Tr::kTM][Tr::kTN];
#pragma unroll
    for (int i = 0; i < Tr::kTM; ++i)
#pragma unroll
        for (int j = 0; j < Tr::kTN; ++j) acc[i][j] = 0.0f;

    for (int64_t k0 = 0; k0 < p.d_in; k0 += Tr::kBK) {
        for (int e = tid; e < Tr::kBM * Tr::kBK; e += Tr::kThreads) {
            const int r = e / Tr::kBK, k = e % Tr::kBK;
            sa[k * Tr::kLdA + r] = (r < rows_a && k0 + k < p.d_in) ? gx[r * p.x_row_stride + k0 + k] : 0.0f;
        }
        for (int e = tid; e < Tr::kBN * Tr::kBK; e += Tr::kThreads) {
            const int r = e / Tr::kBK, k = e % Tr::kBK;
            sb[k * Tr::kLdB + r] = (r < rows_b && k0 + k < p.d_in) ? gk[r * p.k_row_stride + k0 + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < Tr::kBK; ++k) {
            float a[Tr::kTM], b[Tr::kTN];
#pragma unroll
            for (int i = 0; i < Tr::kTM; ++i) a[i] = sa[k * Tr::kLdA + ty * Tr::kTM + i];
#pragma unroll
            for (int j = 0; j < Tr::kTN; ++j) b[j] = sb[k * Tr::kLdB + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < Tr::kTM; ++i)
#pragma unroll
                for (int j = 0; j < Tr::kTN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }

    float* stage = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int i = 0; i < Tr::kTM; ++i)
#pragma unroll
        for (int j = 0; j < Tr::kTN; ++j) stage[(ty * Tr::kTM + i) * kStageLd + tx + 16 * j] = acc[i][j];
    __syncthreads();
    write_scores<float, Tr::kThreads / 32>(p, stage, m0, rows_a, warp, lane);
}

}  // namespace tf_pattention_scores

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(128, 2) pattention_scores_f16(const tf_pattention_params p) {
    tf_pattention_scores::scores_mma<__half>(p);
}
extern "C" __global__ void __launch_bounds__(128, 2) pattention_scores_bf16(const tf_pattention_params p) {
    tf_pattention_scores::scores_mma<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(128) pattention_scores_reduce_f16(const tf_pattention_params p) {
    tf_pattention_scores::scores_reduce<__half>(p);
}
extern "C" __global__ void __launch_bounds__(128) pattention_scores_reduce_bf16(const tf_pattention_params p) {
    tf_pattention_scores::scores_reduce<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(256) pattention_scores_f32(const tf_pattention_params p) {
    tf_pattention_scores::scores_simt(p);
}
