// The register epilogue of the tensor-core scores kernel (kernels/pattention_scores.cu):
// turns the CTA's f32 accumulator fragments of A = X·K_Pᵀ into the stored scaled
// scores ĥ and the (row, n-tile) statistics of tf/pattention_common.cuh, without
// staging the f32 tile in shared memory. It computes what score_row computes for each
// row (the same values to store, the same (e, l) entries, the same NaN / inf / empty
// rules), only with the row's sums taken in another (fixed) order.
//
// Thread mapping: a warp (wm, wn) of the CTA's WARPS_M x WARPS_N holds the m16n8
// fragments of rows wm·WM + 16·mi + {g, g + 8} and columns wn·WN + 8·ni + 2q + {0, 1}
// (g = lane / 4, q = lane % 4): 2·MT rows a thread, 2·NT values of each. A row's
// statistics are reduced over the thread's values, then over the quad (two xor
// shuffles), then over the WARPS_N warps sharing the row (one shared-memory exchange
// per statistic, added / maxed in warp order). The values are packed to the storage
// type in a shared-memory tile (row stride kLd16 halves: the quads' 32-bit writes
// hit 32 distinct banks) and leave in 16-byte stores, 256 contiguous bytes a row.
//
// Columns past n (a CTA at n's edge): the L2 norms need no mask. K_P's rows past n
// are zero-filled, so a finite row of X gives exactly +0 there (the accumulators
// start at +0), which adds nothing to the row's maximum of |v| or sum of squares
// and is stored as the required 0 (gelu(+0) = +0); a row of X holding a NaN or an
// infinity makes every valid column non-finite too, so the row is poisoned in any
// case. Softmax masks them (exp2 of a 0 score is not 0).
//
// Cost, per element (l2_norm_gelu): one max, one scale (FFMA), one square-add, half a
// pack, and no branch. Two __syncthreads in all. l2_norm_gelu first tries its plain
// path (l2_plain_epilogue: half a pack, half a store and a quarter of an HMMA an
// element, no max, no scale), which every CTA whose rows are ordinary takes.
// kernels/NOTES-pattention.md counts the SASS.
#pragma once
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/attention_math.cuh"
#include "tf/convert.cuh"
#include "tf/gelu.cuh"
#include "tf/reduce.cuh"
#include "tf/pattention_common.cuh"

namespace tf {
namespace pat {

// Row stride (16-bit elements) of the staged output tile: 128 + 8, so that the 32-bit
// writes of a warp (rows g, columns 2q of 8 rows x 4 quads) fall in 32 banks.
constexpr int kLd16 = kTileN + 8;

// Shared memory the register epilogue needs for a BM-row CTA tile: the 16-bit tile,
// then two [WARPS_N][BM] f32 exchange arrays (maxima, sums).
template <int BM, int WARPS_N>
constexpr int register_epilogue_bytes() {
    return BM * kLd16 * 2 + 2 * WARPS_N * BM * 4;
}

// 2^-e for the frexp exponent e of a finite mx > 0, clamped below at -126 (the
// scale of score_row): e = (biased exponent of mx) - 126 for normal and subnormal
// mx alike, so 2^-e = 2^(126 - biased), normal down to biased 252, then 2^-127 and
// 2^-128 as subnormals. Exact. Any other mx gives some value (never undefined
// behaviour): the caller selects it away.
__device__ __forceinline__ float l2_scale(float mx) {
    const unsigned biased = (__float_as_uint(mx) >> 23) & 0xffu;
    return biased <= 252u ? __uint_as_float((253u - biased) << 23) : __uint_as_float(0x00400000u >> (biased - 253u));
}
__device__ __forceinline__ int l2_exponent(float mx) { return (int)((__float_as_uint(mx) >> 23) & 0xffu) - 126; }

// The staged 16-bit tile's rows < `rows` to h (n-tile blockIdx.x of rows m0 ..),
// 16 bytes a thread, columns past h_stride left alone.
template <typename T, int BM, int THREADS>
__device__ __forceinline__ void copy_out_tile(const tf_pattention_params& p, const uint16_t* tile, int64_t m0,
                                              int rows, int tid) {
    constexpr int kChunks = kTileN / 8;          // 16-byte chunks of a tile row
    constexpr int kRowStep = THREADS / kChunks;  // rows between a thread's chunks
    static_assert(THREADS % kChunks == 0 && BM % kRowStep == 0, "every thread copies the same chunks");
    const unsigned row0 = (unsigned)tid / kChunks, ch = (unsigned)tid % kChunks;
    const int64_t col = (int64_t)blockIdx.x * kTileN + 8 * ch;
    if (col < p.h_stride) {
        T* dst = reinterpret_cast<T*>(p.h) + (m0 + row0) * p.h_stride + col;
        const int64_t step = kRowStep * p.h_stride;
        const uint16_t* src = tile + row0 * kLd16 + 8 * ch;
#pragma unroll
        for (int i = 0; i < BM / kRowStep; ++i) {
            if ((int)row0 + i * kRowStep < rows)
                *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src + i * kRowStep * kLd16);
            dst += step;
        }
    }
}

// Where a (row, n-tile)'s sum of squares of the unscaled 16-bit scores lies in
// [l2_plain_min<T>(), kPlainMax], l2_norm_gelu stores the scores unscaled (e = 0):
// see l2_plain_epilogue. Unscaled, only values that are subnormal in T lose
// precision. f16: a sum >= 2^-15 over at most 128 values means a largest |value| >=
// 2^-11, so a subnormal's error (at most 2^-25, half its ulp) is <= 2^-14 of the
// tile row's largest value, under the 2^-12 that rounding that value costs.
// bf16's subnormals start at 2^-126 (2^-134 error): 2^-100 leaves as much room.
// Above: 2^100 keeps the sum of every tile's sum finite.
template <typename T>
__device__ __forceinline__ constexpr float l2_plain_min() {
    return detail::same_type<T, __half>::value ? 0x1p-15f : 0x1p-100f;
}
constexpr float kPlainMax = 0x1p100f;

// l2_norm_gelu's common case: the accumulators packed to 16 bits UNSCALED (e = 0),
// and each row's sum of squares taken from exactly those 16-bit values on the tensor
// cores, as the diagonal of the Gram matrix ĥ·ĥᵀ of each m16 block: for the k16
// block of n8 tiles (2kk, 2kk + 1) the packed accumulators ARE an m16 x k16 A
// fragment (a0 = rows g, a1 = rows g + 8, a2 / a3 the second n8 tile), and the top /
// bottom 8 rows of it are the k16 x n8 B fragment (B[k][n] = ĥ[n][k]) of the rows
// they hold. mma(A, B_top) puts Σ_k ĥ[g][k]² at C[g][g], mma(A, B_bottom) puts
// Σ_k ĥ[g + 8][k]² at C[g + 8][g]: both in lane (g, q = g / 2), element g % 2 and
// 2 + g % 2. 8 HMMA per m16 block replace 32 FFMA a thread, and no row maximum
// and no scaling are needed. The packed tile goes to shared memory as in the
// general path. Returns false (CTA-uniform, nothing written to global memory) when
// some row < rows of the tile has a sum outside [l2_plain_min<T>(), kPlainMax]: a
// row that is zero, tiny, huge, NaN or infinite (an overflowing pack gives an
// infinite sum) goes through the general path, which rewrites the staged tile.
// A stored value equals the general path's ĥ·2^e exactly (power-of-two scaling
// commutes with rounding for normal numbers); only the sum's arithmetic differs.
template <typename T, int BM, int WM, int WN, int MT, int NT, int WARPS_N, int THREADS>
__device__ __forceinline__ bool l2_plain_epilogue(const tf_pattention_params& p, const float (&acc)[MT][NT][4],
                                                  uint16_t* tile, float* red_sum, int64_t m0, int rows, int wm,
                                                  int wn, int tid) {
    static_assert(NT % 2 == 0, "n8 tiles pair into k16 blocks");
    const int lane = tid % 32, g = lane / 4, q = lane % 4;
    const bool diag = q == g / 2, odd = g % 2;
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
        uint32_t top[NT], bot[NT];
#pragma unroll
        for (int ni = 0; ni < NT; ++ni) {
            top[ni] = tf::pack2<T>(acc[mi][ni][0], acc[mi][ni][1]);
            bot[ni] = tf::pack2<T>(acc[mi][ni][2], acc[mi][ni][3]);
            uint16_t* at = tile + (wm * WM + mi * 16 + g) * kLd16 + wn * WN + ni * 8 + 2 * q;
            *reinterpret_cast<uint32_t*>(at) = top[ni];
            *reinterpret_cast<uint32_t*>(at + 8 * kLd16) = bot[ni];
        }
        float ct[4] = {0.0f, 0.0f, 0.0f, 0.0f}, cb[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int kk = 0; kk < NT / 2; ++kk) {
            const uint32_t a[4] = {top[2 * kk], bot[2 * kk], top[2 * kk + 1], bot[2 * kk + 1]};
            const uint32_t bt[2] = {top[2 * kk], top[2 * kk + 1]};
            const uint32_t bb[2] = {bot[2 * kk], bot[2 * kk + 1]};
            tf::mma_m16n8k16<T>(ct, a, bt);
            tf::mma_m16n8k16<T>(cb, a, bb);
        }
        if (diag) {
            const int r = wm * WM + mi * 16 + g;
            red_sum[wn * BM + r] = odd ? ct[1] : ct[0];
            red_sum[wn * BM + r + 8] = odd ? cb[3] : cb[2];
        }
    }
    __syncthreads();
    float sum = 0.0f;
    bool general = false;
    if (tid < rows) {
        sum = red_sum[tid];
#pragma unroll
        for (int w = 1; w < WARPS_N; ++w) sum += red_sum[w * BM + tid];
        general = !(sum >= l2_plain_min<T>() && sum <= kPlainMax);  // NaN fails both
    }
    // (The vote makes the CTA-wide result visibly warp-uniform to the compiler: the
    // general path's shuffles then need no divergence fallback.)
    if (__any_sync(0xffffffffu, __syncthreads_or(general))) return false;
    if (tid < rows) reinterpret_cast<float2*>(p.stats)[(m0 + tid) * p.n_tiles + blockIdx.x] = make_float2(0.0f, sum);
    copy_out_tile<T, BM, THREADS>(p, tile, m0, rows, tid);
    return true;
}

// The epilogue for one norm; the CTA's n-tile holds `valid` <= 128 columns of A. The
// split path is the caller's (write_partial_fragments). `acc` is consumed.
template <typename T, int NORM, int BM, int WM, int WN, int MT, int NT, int WARPS_N, int THREADS>
__device__ __forceinline__ void register_epilogue(const tf_pattention_params& p, float (&acc)[MT][NT][4],
                                                  unsigned char* smem, int64_t m0, int rows, int valid, int wm,
                                                  int wn, int tid) {
    static_assert(sizeof(T) == 2, "the staged tile holds 16-bit values");
    static_assert(WN * WARPS_N == kTileN, "the warps of a row cover one n-tile");
    constexpr int R = 2 * MT;  // rows a thread holds
    const int lane = tid % 32, g = lane / 4, q = lane % 4;
    uint16_t* tile = reinterpret_cast<uint16_t*>(smem);
    float* red_max = reinterpret_cast<float*>(smem + BM * kLd16 * 2);
    float* red_sum = red_max + WARPS_N * BM;
    auto row_of = [&](int r) { return wm * WM + (r / 2) * 16 + (r % 2) * 8 + g; };
    constexpr bool kSoftmax = NORM == TF_NORM_SOFTMAX;
    if constexpr (NORM == TF_NORM_L2_NORM_GELU) {
        if (l2_plain_epilogue<T, BM, WM, WN, MT, NT, WARPS_N, THREADS>(p, acc, tile, red_sum, m0, rows, wm, wn, tid))
            return;
    }
    auto ok = [&](int ni, int j) { return !kSoftmax || wn * WN + ni * 8 + 2 * q + (j & 1) < valid; };

    // 1. The element-wise part before the statistics, and each row's maximum: of
    //    A·log2e (softmax; the product rounded once, as score_row) or of |v| (NaN wins).
    float mx[R];
#pragma unroll
    for (int r = 0; r < R; ++r) mx[r] = kSoftmax ? neg_inf() : 0.0f;
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int ni = 0; ni < NT; ++ni)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float& v = acc[mi][ni][j];
                if (NORM == TF_NORM_GELU_L2_NORM) v = tf::gelu_stored_as<T>(v);
                if (kSoftmax) v = __fmul_rn(v, kLog2e);
                if (ok(ni, j)) mx[2 * mi + j / 2] = tf::max_nan(mx[2 * mi + j / 2], kSoftmax ? v : fabsf(v));
            }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        mx[r] = tf::warp_max<4>(mx[r]);
        if (q == 0) red_max[wn * BM + row_of(r)] = mx[r];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float m = red_max[row_of(r)];
#pragma unroll
        for (int w = 1; w < WARPS_N; ++w) m = tf::max_nan(m, red_max[w * BM + row_of(r)]);
        mx[r] = m;
    }

    // 2. Each row's factor, then the values to store and the row's partial sum.
    //    L2 norms: v·2^-e as v·2^-e + 0, so that a row whose maximum is 0 (every
    //    value ±0) stores +0 as score_row does; a non-finite row keeps its values
    //    (factor 1: it is poisoned anyway). Softmax: 2^(a - e) on the special-function
    //    unit (tf::exp2_approx, as score_row), with e = 0 for a poisoned or empty row.
    float f[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const float m = mx[r];
        if (kSoftmax) {
            f[r] = m <= kFinite && m != neg_inf() ? ceilf(m) : 0.0f;
        } else {
            f[r] = m <= kFinite ? l2_scale(m) : 1.0f;
        }
    }
    float l[R];
#pragma unroll
    for (int r = 0; r < R; ++r) l[r] = 0.0f;
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int ni = 0; ni < NT; ++ni)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = 2 * mi + h;
                float v[2];
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const float a = acc[mi][ni][2 * h + j];
                    if (kSoftmax) {
                        v[j] = ok(ni, j) ? tf::exp2_approx(a - f[r]) : 0.0f;
                        l[r] += v[j];
                    } else {
                        v[j] = ok(ni, j) ? fmaf(a, f[r], 0.0f) : 0.0f;
                        l[r] = fmaf(v[j], v[j], l[r]);
                    }
                }
                const uint32_t packed = tf::pack2<T>(v[0], v[1]);
                *reinterpret_cast<uint32_t*>(tile + row_of(r) * kLd16 + wn * WN + ni * 8 + 2 * q) = packed;
            }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        l[r] = tf::warp_sum<4>(l[r]);
        if (q == 0) red_sum[wn * BM + row_of(r)] = l[r];
    }
    __syncthreads();

    // 3. The statistics entries, one row a thread (row = tid < BM), then the tile's
    //    rows, 16 bytes a thread, columns past h_stride left alone.
    static_assert(THREADS >= BM, "one thread per row for the statistics");
    const int64_t t_idx = blockIdx.x;
    if (tid < rows) {
        float m = red_max[tid], s = red_sum[tid];
#pragma unroll
        for (int w = 1; w < WARPS_N; ++w) {
            m = tf::max_nan(m, red_max[w * BM + tid]);
            s += red_sum[w * BM + tid];
        }
        float2 st;
        if (kSoftmax) {
            st = m <= kFinite ? make_float2(ceilf(m), s) : make_float2(0.0f, nan_f());  // NaN or +inf
            if (m == neg_inf()) st = make_float2(kEmpty, 0.0f);                        // every score -inf
        } else {
            st = m <= kFinite ? make_float2((float)l2_exponent(m), s) : make_float2(0.0f, nan_f());  // NaN, inf
            if (m == 0.0f) st = make_float2(kEmpty, 0.0f);  // every (gelu-)score zero
        }
        reinterpret_cast<float2*>(p.stats)[(m0 + tid) * p.n_tiles + t_idx] = st;
    }
    copy_out_tile<T, BM, THREADS>(p, tile, m0, rows, tid);
}

// Split over d_in: the CTA's raw f32 accumulators to slice blockIdx.z of partial
// (row stride n_tiles · 128), rows < `rows` only, 8 bytes a value pair.
template <int WM, int WN, int MT, int NT>
__device__ __forceinline__ void write_partial_fragments(const tf_pattention_params& p, const float (&acc)[MT][NT][4],
                                                        int64_t m0, int rows, int wm, int wn, int lane) {
    const int64_t ld = p.n_tiles * kTileN;
    float* out = reinterpret_cast<float*>(p.partial) + ((int64_t)blockIdx.z * p.t + m0) * ld +
                 (int64_t)blockIdx.x * kTileN + wn * WN + 2 * (lane % 4);
#pragma unroll
    for (int mi = 0; mi < MT; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = wm * WM + mi * 16 + h * 8 + lane / 4;
            if (row < rows) {
#pragma unroll
                for (int ni = 0; ni < NT; ++ni)
                    *reinterpret_cast<float2*>(out + row * ld + ni * 8) =
                        make_float2(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
            }
        }
}

}  // namespace pat
}  // namespace tf
