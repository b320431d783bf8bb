// pattention_decode.cu: Pattention for small t (decode, t <= 64), f16 / bf16.
// The whole design is in pattention.cu.
//
// At small t the op reads K_P and V_P once (memory-bound) and the per-row output
// accumulator is small, so one CTA does all of the work for ONE n-tile (128 parameter
// tokens = a "chunk") and a range of output columns, and the n reduction is split
// across CTAs with a deterministic combine (pattention_combine, pattention.cu):
//
//   kernels pattention_decode_{f16,bf16}: grid (n_tiles, y_splits), 128 threads =
//   4 warps side by side (1 x 4), all t <= 64 rows in every CTA (m16 tiles past t
//   skipped). Per CTA:
//   1. P = the chunk's normalised-so-far scores, 64 x 128 in shared memory (16 KB,
//      swizzle chunk ^ (row & 7)):
//      - gelu_l2_norm / softmax: A = X·K_chunkᵀ by mma.sync (k-step 32 over d_in,
//        4-stage cp.async ring, warp w owns chunk columns [32w, 32w + 32)); the
//        scores epilogue of product 1 (tf/pattention_common.cuh) turns it into ĥ
//        and the chunk's statistics (written by the y == 0 CTAs only). Full k-tiles
//        use copies and ldmatrix offsets computed once (tf::pat::TileStream for
//        K_P, plain 16-byte copies when the chunk has 128 tokens; X by
//        ClampedRowStream, rows past t repeating row t - 1 when t > 48, zero-filled
//        otherwise), the partial last k-tile load_tile's zero filling. A copy of
//        the loop without per-m16-tile branches runs when t > 48.
//      - l2_norm_gelu: the row norm is needed before the gelu, so
//        pattention_scores ran first (same h and stats as the tiled path; split over
//        d_in and summed by pattention_scores_reduce when the n-tiles are few); here each
//        warp combines its rows' statistics and loads P = gelu(ĥ·base·2^(e - E)).
//   2. partial[chunk, i, c] = Σ_{j in chunk} P[i, j]·V_P[j, c] for the CTA's column
//      range, 128 columns at a time (k-step 64 tokens, V_P via ldmatrix.x4.trans,
//      3-stage ring streaming across column blocks), f32 stores. Whole 64 x 128 V_P
//      tiles are copied through a TileStream re-aimed at each column block, the
//      others by load_tile; ldmatrix offsets are computed once.
//   pattention_combine then forms y[i, c] = r_i Σ_chunk 2^(e_chunk - E_i)·partial
//   in a fixed order (q = r = 1 for l2_norm_gelu, whose P is final).
// gelu_l2_norm and softmax are thus one fused kernel plus the combine; l2_norm_gelu
// is scores + this kernel + the combine.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/async.cuh"
#include "tf/mma.cuh"
#include "tf/smem.cuh"
#include "tf/swizzle.cuh"
#include "tf/pattention_common.cuh"

namespace tf_pattention_decode {

using namespace tf::pat;

// ---------------------------------------------------------------------- traits

struct Traits {
    static constexpr int kBM = TF_PATTENTION_DECODE_MAX_T;  // 64 rows at most
    static constexpr int kChunk = kTileN;                   // parameter tokens per CTA
    static constexpr int kWarps = 4, kThreads = 32 * kWarps;
    static constexpr int kMT = kBM / 16;                    // m16 tiles (all warps, all rows)
    static constexpr int kWN = kChunk / kWarps;             // 32 columns a warp (both phases)
    static constexpr int kNT = kWN / 8;                     // n8 tiles a warp
    // phase 1 (A = X·K_chunkᵀ)
    static constexpr int kBK = 32, kStagesA = 4, kChunksA = kBK / 8;
    static constexpr int kBytesX = kBM * kBK * 2, kBytesK = kChunk * kBK * 2;
    static constexpr int kStageA = kBytesX + kBytesK;
    static constexpr int kPipeA = kStagesA * kStageA;        // 48 KB
    static constexpr int kEpiBytes = kBM * kStageLd * 4;     // 34 KB
    // phase 2 (partial = P·V_chunk)
    static constexpr int kBN = 128;                          // output columns per block
    static constexpr int kBKV = 64, kStagesB = 3, kChunksV = kBN / 8;
    static constexpr int kSlices = kChunk / kBKV;            // k-steps per chunk
    static constexpr int kStageB = kBKV * kBN * 2;
    static constexpr int kPipeB = kStagesB * kStageB;        // 48 KB
    static constexpr int kChunksP = kChunk / 8;
    static constexpr int kBytesP = kBM * kChunk * 2;         // 16 KB
    static constexpr int kRegion = kPipeA > kEpiBytes ? (kPipeA > kPipeB ? kPipeA : kPipeB)
                                                      : (kEpiBytes > kPipeB ? kEpiBytes : kPipeB);
    static constexpr int kSmemBytes = kBytesP + kRegion;     // 64 KB

    static_assert(kBM == 64 && kBM % 16 == 0, "decode rows: four m16 tiles");
    static_assert(kWN == kBN / kWarps, "warp w owns the same 32 columns in both phases");
    static_assert(kNT % 2 == 0 && kBK % 16 == 0 && kBKV % 16 == 0, "ldmatrix.x4 pairs, k16 steps");
    static_assert(kChunk % kBKV == 0, "whole k-steps per chunk");
    static_assert(kSmemBytes <= 227 * 1024, "shared memory per block at most 227 KB");
};

static_assert(Traits::kSmemBytes == TF_PATTENTION_SMEM_DECODE, "tf_kernels.h states the launch's shared memory");

// ------------------------------------------------------------------- phase 1

// A = X·K_chunkᵀ by mma, then the scores epilogue into P (and the chunk statistics).
template <typename T>
__device__ __forceinline__ void chunk_scores(const tf_pattention_params& p, unsigned char* sP, unsigned char* sR,
                                             int64_t chunk, int mt_active) {
    using Tr = Traits;
    using Sw = tf::Swizzle<Tr::kChunksA>;
    using SwP = tf::Swizzle<Tr::kChunksP>;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int64_t n0 = chunk * Tr::kChunk;
    const int rows = (int)p.t;
    const int tokens = (int)min64(Tr::kChunk, p.n - n0);
    const T* gx = reinterpret_cast<const T*>(p.x);
    const T* gk = reinterpret_cast<const T*>(p.k_p) + n0 * p.k_row_stride;
    const int k_tiles = (int)((p.d_in + Tr::kBK - 1) / Tr::kBK);

    const int k_full = (int)(p.d_in / Tr::kBK);  // k-tiles with no d_in residue

    // Full k-tiles stream through precomputed per-thread copies: when all four m16
    // tiles hold rows (t > 48), X's rows past t (at most 15) repeat row t - 1 (plain
    // copies; those rows of A are never read: the epilogue stops at t and P's rows
    // past t are zero); at t <= 48 they are zero-filled and read nothing. K_P's tokens
    // past the chunk are zero-filled unless the chunk is whole. The partial last
    // k-tile goes through load_tile.
    ClampedRowStream<Tr::kBM, Tr::kChunksA, Tr::kThreads, T> sx(gx, p.x_row_stride, rows, tid);
    TileStream<Tr::kChunk, Tr::kChunksA, Tr::kThreads, T> sk(gk, p.k_row_stride, tokens, Tr::kBK, tid);
    auto load = [&](int kt, auto full_k, auto full_m) {
        unsigned char* s = sR + (kt % Tr::kStagesA) * Tr::kStageA;
        if (kt < k_full) {
            sx.template issue<decltype(full_m)::value>(s);
            sk.template issue<decltype(full_k)::value>(s + Tr::kBytesX);
            sx.advance(Tr::kBK);
            sk.advance(Tr::kBK);
        } else {
            const int64_t k0 = (int64_t)kt * Tr::kBK;
            load_tile<Tr::kBM, Tr::kChunksA, Tr::kThreads>(s, gx + k0, p.x_row_stride, rows, p.d_in - k0, tid);
            load_tile<Tr::kChunk, Tr::kChunksA, Tr::kThreads>(s + Tr::kBytesX, gk + k0, p.k_row_stride, tokens,
                                                              p.d_in - k0, tid);
        }
    };

    // Each lane's ldmatrix offsets, fixed for the loop (as in pattention_scores.cu):
    // one per k16 step for A (m16 tiles 1 KB apart) and for B (n16 pairs 1 KB apart).
    constexpr int kKK = Tr::kBK / 16;
    constexpr int kTile16 = 16 * Sw::kRowBytes;
    int a_off[kKK], b_off[kKK];
#pragma unroll
    for (int kk = 0; kk < kKK; ++kk) {
        a_off[kk] = Sw::offset(lane % 16, kk * 2 + lane / 16);
        b_off[kk] = Tr::kBytesX + Sw::offset(warp * Tr::kWN + (lane / 16) * 8 + lane % 8, kk * 2 + (lane / 8) % 2);
    }

    float acc[Tr::kMT][Tr::kNT][4];
    zero_acc(acc);

    // The loop in copies decided once per CTA: plain 16-byte K copies when the chunk
    // has all 128 tokens (and K_P's stride is `narrow`), zero-filling ones otherwise;
    // and with no per-m16-tile branch when all four m16 tiles hold rows (t > 48).
    auto mainloop = [&](auto full_k, auto full_m) {
        const int mts = decltype(full_m)::value ? Tr::kMT : mt_active;
        auto load_kt = [&](int kt) { load(kt, full_k, full_m); };
        ring_prologue<Tr::kStagesA>(k_tiles, load_kt);
        for (int kt = 0; kt < k_tiles; ++kt) {
            tf::cp_async_wait<Tr::kStagesA - 2>();
            __syncthreads();
            if (kt + Tr::kStagesA - 1 < k_tiles) load(kt + Tr::kStagesA - 1, full_k, full_m);
            tf::cp_async_commit();
            const unsigned char* st = sR + (kt % Tr::kStagesA) * Tr::kStageA;
#pragma unroll
            for (int kk = 0; kk < kKK; ++kk) {
                uint32_t bf[Tr::kNT / 2][4];
#pragma unroll
                for (int np = 0; np < Tr::kNT / 2; ++np) tf::ldmatrix_x4(bf[np], st + b_off[kk] + np * kTile16);
#pragma unroll
                for (int mi = 0; mi < Tr::kMT; ++mi) {
                    if (mi < mts) {
                        uint32_t af[4];
                        tf::ldmatrix_x4(af, st + a_off[kk] + mi * kTile16);
#pragma unroll
                        for (int np = 0; np < Tr::kNT / 2; ++np) {
                            const uint32_t b0[2] = {bf[np][0], bf[np][1]};
                            const uint32_t b1[2] = {bf[np][2], bf[np][3]};
                            tf::mma_m16n8k16<T>(acc[mi][2 * np], af, b0);
                            tf::mma_m16n8k16<T>(acc[mi][2 * np + 1], af, b1);
                        }
                    }
                }
            }
        }
    };
    const bool full_k = tokens == Tr::kChunk && sk.narrow;
    if (mt_active == Tr::kMT)
        full_k ? mainloop(Flag<true>(), Flag<true>()) : mainloop(Flag<false>(), Flag<true>());
    else
        full_k ? mainloop(Flag<true>(), Flag<false>()) : mainloop(Flag<false>(), Flag<false>());
    tf::cp_async_wait<0>();
    __syncthreads();

    float* stage = reinterpret_cast<float*>(sR);
#pragma unroll
    for (int mi = 0; mi < Tr::kMT; ++mi)
#pragma unroll
        for (int ni = 0; ni < Tr::kNT; ++ni)
            stage_fragment(stage, mi * 16, warp * Tr::kWN + ni * 8, lane, acc[mi][ni]);
    __syncthreads();

    float2* stats = reinterpret_cast<float2*>(p.stats);
    const bool write_stats = blockIdx.y == 0;
    scores_epilogue<T, Tr::kWarps>(stage, rows, tokens, p.norm, warp, lane,
                                [&](int r, int ln, const float(&v)[4], float2 st) {
                                    store4<T>(reinterpret_cast<T*>(sP + SwP::offset(r, ln / 2) + (ln % 2) * 8), v);
                                    if (write_stats && ln == 0) stats[r * p.n_tiles + chunk] = st;
                                });
}

// l2_norm_gelu: P = gelu(ĥ · base · 2^(e_chunk - E)) from h and the row statistics.
template <typename T>
__device__ __forceinline__ void chunk_from_h(const tf_pattention_params& p, unsigned char* sP, int64_t chunk) {
    using Tr = Traits;
    using SwP = tf::Swizzle<Tr::kChunksP>;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int64_t n0 = chunk * Tr::kChunk;
    const int64_t c = n0 + 4 * lane;
    const float2* stats = reinterpret_cast<const float2*>(p.stats);
    const T* h = reinterpret_cast<const T*>(p.h);
    for (int r = warp; r < p.t; r += Tr::kWarps) {
        const float2* st = stats + r * p.n_tiles;
        float E, sum;
        combine_row(st, p.n_tiles, p.norm, lane, E, sum);
        const float base = row_base(p.norm, p.scale, p.eps, E, sum);
        const float2 s = st[chunk];
        const float f = scale_pow2(base, s.x - E);  // 0 for an empty tile, NaN for a poisoned row
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (c < p.h_stride) load4<T>(h + r * p.h_stride + c, v);
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = c + j < p.n ? tf::gelu_stored_as<T>(v[j] * f) : 0.0f;
        store4<T>(reinterpret_cast<T*>(sP + SwP::offset(r, lane / 2) + (lane % 2) * 8), v);
    }
}

// ------------------------------------------------------------------- phase 2

template <typename T>
__device__ __forceinline__ void decode(const tf_pattention_params& p) {
    using Tr = Traits;
    using SwP = tf::Swizzle<Tr::kChunksP>;
    using SwV = tf::Swizzle<Tr::kChunksV>;
    TF_DYNAMIC_SMEM(unsigned char, smem);
    unsigned char* sP = smem;
    unsigned char* sR = smem + Tr::kBytesP;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int64_t chunk = blockIdx.x;
    const int64_t n0 = chunk * Tr::kChunk;
    const int tokens = (int)min64(Tr::kChunk, p.n - n0);
    const int rows = (int)p.t;
    const int mt_active = imin(Tr::kMT, (rows + 15) / 16);

    // Rows [t, 16·mt_active) of P feed the mma: make them zero.
    for (int e = tid; e < (16 * mt_active - rows) * Tr::kChunksP; e += Tr::kThreads) {
        const int r = rows + e / Tr::kChunksP, ch = e % Tr::kChunksP;
        *reinterpret_cast<uint4*>(sP + SwP::offset(r, ch)) = make_uint4(0u, 0u, 0u, 0u);
    }
    if (p.norm == TF_NORM_L2_NORM_GELU) {
        chunk_from_h<T>(p, sP, chunk);
    } else {
        chunk_scores<T>(p, sP, sR, chunk, mt_active);
    }
    __syncthreads();  // P complete; the staging region is free for the V ring

    const int64_t c_begin = (int64_t)blockIdx.y * p.decode_cols;
    const int64_t c_end = min64(p.d_out, c_begin + p.decode_cols);
    if (c_begin >= c_end) return;  // uniform over the CTA
    const int blocks = (int)((c_end - c_begin + Tr::kBN - 1) / Tr::kBN);
    const int slices = (tokens + Tr::kBKV - 1) / Tr::kBKV;
    const int steps = blocks * slices;
    const T* gv = reinterpret_cast<const T*>(p.v_p) + n0 * p.v_row_stride;

    // Steps load in order (block, slice) = (0, 0), (0, 1), ...: a whole slice of a whole
    // column block streams through a TileStream re-aimed at each block; the others
    // (the chunk's last tokens, the range's last columns) go through load_tile.
    const int64_t v_step = (int64_t)Tr::kBKV * p.v_row_stride;
    const int full_slices = tokens / Tr::kBKV;
    TileStream<Tr::kBKV, Tr::kChunksV, Tr::kThreads, T> sv_in(gv + c_begin, p.v_row_stride, Tr::kBKV,
                                                              c_end - c_begin, tid);
    int ld_blk = 0, ld_s = 0;  // the next step to load
    auto load = [&](int it) {
        const int64_t col0 = c_begin + (int64_t)ld_blk * Tr::kBN;
        unsigned char* dst = sR + (it % Tr::kStagesB) * Tr::kStageB;
        if (ld_s < full_slices && col0 + Tr::kBN <= c_end && sv_in.narrow)
            sv_in.template issue<true>(dst);
        else
            load_tile<Tr::kBKV, Tr::kChunksV, Tr::kThreads>(dst, gv + ld_s * v_step + col0, p.v_row_stride,
                                                            tokens - ld_s * Tr::kBKV, c_end - col0, tid);
        if (++ld_s < slices) {
            sv_in.advance(v_step);
        } else {  // the next column block, slice 0
            sv_in.advance(Tr::kBN - (slices - 1) * v_step);
            ld_s = 0, ++ld_blk;
        }
    };

    // Each lane's ldmatrix offsets, fixed for the loop: V_P (16 rows = 4 KB per k16
    // step) one per n8 pair np; P one per k16 step of the slice, whose chunk index
    // 8·s + 2·kk + lane / 16 meets the swizzle (row & 7 = lane & 7) as
    // 8·s + ((2·kk + lane / 16) ^ (lane & 7)): the slice is a constant offset.
    constexpr int kStepV16 = 16 * SwV::kRowBytes, kTileP16 = 16 * SwP::kRowBytes;
    int v_off[Tr::kNT / 2], p_off[Tr::kBKV / 16];
#pragma unroll
    for (int np = 0; np < Tr::kNT / 2; ++np) {
        const int m = lane / 8;
        v_off[np] = SwV::offset((m % 2) * 8 + lane % 8, warp * (Tr::kWN / 8) + 2 * np + m / 2);
    }
#pragma unroll
    for (int kk = 0; kk < Tr::kBKV / 16; ++kk)
        p_off[kk] = (lane % 16) * SwP::kRowBytes + ((2 * kk + lane / 16) ^ (lane & 7)) * 16;
    static_assert(Tr::kBKV / 8 == 8 && SwP::kGroup == 8 && SwP::kShift == 0, "the P offset split above");

    float* part = reinterpret_cast<float*>(p.partial);
    const bool even = p.d_out % 2 == 0;
    float acc[Tr::kMT][Tr::kNT][4];
    zero_acc(acc);

    // The loop in two forms decided once per CTA: FULL when all four m16 tiles hold
    // rows (t > 48: no per-tile branch), else with the tiles past t skipped.
    auto mainloop = [&](auto full) {
    const int mts = decltype(full)::value ? Tr::kMT : mt_active;
    ring_prologue<Tr::kStagesB>(steps, load);
    for (int it = 0, blk = 0, s = 0; it < steps; ++it) {  // step it = column block blk, slice s
        tf::cp_async_wait<Tr::kStagesB - 2>();
        __syncthreads();
        if (it + Tr::kStagesB - 1 < steps) load(it + Tr::kStagesB - 1);
        tf::cp_async_commit();
        const unsigned char* sv = sR + (it % Tr::kStagesB) * Tr::kStageB;
        const unsigned char* sp = sP + s * 8 * 16;  // this slice's chunks of P
#pragma unroll
        for (int kk = 0; kk < Tr::kBKV / 16; ++kk) {
            uint32_t bf[Tr::kNT / 2][4];
#pragma unroll
            for (int np = 0; np < Tr::kNT / 2; ++np) tf::ldmatrix_x4_trans(bf[np], sv + v_off[np] + kk * kStepV16);
#pragma unroll
            for (int mi = 0; mi < Tr::kMT; ++mi) {
                if (mi < mts) {
                    uint32_t af[4];
                    tf::ldmatrix_x4(af, sp + p_off[kk] + mi * kTileP16);
#pragma unroll
                    for (int np = 0; np < Tr::kNT / 2; ++np) {
                        const uint32_t b0[2] = {bf[np][0], bf[np][1]};
                        const uint32_t b1[2] = {bf[np][2], bf[np][3]};
                        tf::mma_m16n8k16<T>(acc[mi][2 * np], af, b0);
                        tf::mma_m16n8k16<T>(acc[mi][2 * np + 1], af, b1);
                    }
                }
            }
        }
        if (s == slices - 1) {  // this column block is complete: f32 partial sums
            const int64_t col_w = c_begin + (int64_t)blk * Tr::kBN + warp * Tr::kWN + 2 * (lane % 4);
#pragma unroll
            for (int mi = 0; mi < Tr::kMT; ++mi)
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {
                    const int r = mi * 16 + lane / 4 + 8 * hf;
                    if (mi < mts && r < rows) {
                        float* dst = part + (chunk * p.t + r) * p.d_out;
#pragma unroll
                        for (int ni = 0; ni < Tr::kNT; ++ni) {
                            const int64_t col = col_w + ni * 8;
                            const float a = acc[mi][ni][2 * hf], b = acc[mi][ni][2 * hf + 1];
                            if (even && col + 1 < c_end) {
                                *reinterpret_cast<float2*>(dst + col) = make_float2(a, b);
                            } else {
                                if (col < c_end) dst[col] = a;
                                if (col + 1 < c_end) dst[col + 1] = b;
                            }
                        }
                    }
                }
            zero_acc(acc);  // for the next column block
        }
        if (++s == slices) s = 0, ++blk;
    }
    };
    if (mt_active == Tr::kMT)
        mainloop(Flag<true>());
    else
        mainloop(Flag<false>());
    tf::cp_async_wait<0>();
}

}  // namespace tf_pattention_decode

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(128) pattention_decode_f16(const tf_pattention_params p) {
    tf_pattention_decode::decode<__half>(p);
}
extern "C" __global__ void __launch_bounds__(128) pattention_decode_bf16(const tf_pattention_params p) {
    tf_pattention_decode::decode<__nv_bfloat16>(p);
}
