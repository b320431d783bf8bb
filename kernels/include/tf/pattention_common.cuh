// Device code shared by the Pattention kernels (kernels/pattention*.cu): constants,
// the n-tile statistics and their per-row combination, the scores epilogue that
// turns an f32 tile of A = X·K_Pᵀ into stored scaled scores, 16-byte tile loads into
// swizzled shared memory, and small numeric helpers. The design is explained in the
// header comment of kernels/pattention.cu.
#pragma once
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/async.cuh"
#include "tf/attention_math.cuh"
#include "tf/convert.cuh"
#include "tf/gelu.cuh"
#include "tf/mma.cuh"
#include "tf/reduce.cuh"
#include "tf/swizzle.cuh"

namespace tf {
namespace pat {

// Width of an n-tile (columns of A that share one statistics entry per row).
constexpr int kTileN = TF_PATTENTION_TILE_N;
// Row stride (floats) of an f32 tile staged in shared memory for an epilogue: +8
// makes the float2 fragment writes of a half-warp (rows g, cols 2t) conflict-free.
constexpr int kStageLd = kTileN + 8;
// Exponent recorded for an n-tile whose scores are all zero (L2 norms) or all -inf
// (softmax): 2^(kEmpty - E) is 0 for any real row exponent E.
constexpr float kEmpty = -1e38f;
constexpr float kLog2e = 1.4426950408889634f;
// The largest finite f32 is 3.4028235e38: x <= kFinite is false for NaN and +inf.
constexpr float kFinite = 3.4028235e38f;

static_assert(kTileN == 128, "the epilogues give each lane 4 of a tile row's 128 columns");

__device__ __forceinline__ float neg_inf() { return -__builtin_huge_valf(); }
__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fffffff); }

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// The exponent of the factors below, clamped to [-300, 0] (a NaN d gives -300).
__device__ __forceinline__ int pow2_exp(float d) { return (int)fminf(fmaxf(d, -300.0f), 0.0f); }
// 2^d for an integer-valued d <= 0 (exact; 0 below 2^-149).
__device__ __forceinline__ float pow2_neg(float d) { return ldexpf(1.0f, pow2_exp(d)); }
// 2^e for an integer e in [-300, 0] (pow2_exp's range), built from its bits: the
// same value as ldexpf(1, e) (subnormal from -127 down to -149, 0 below).
__device__ __forceinline__ float pow2_bits(int e) {
    const int biased = e + 127;
    const int sub = e >= -149 ? 1 << imax(e + 149, 0) : 0;  // e < -126: subnormal bits
    return __int_as_float(biased > 0 ? biased << 23 : sub);
}
// v * 2^d for an integer-valued d <= 0 (exact unless the result is subnormal; NaN
// and infinite v stay so for every d).
__device__ __forceinline__ float scale_pow2(float v, float d) { return ldexpf(v, pow2_exp(d)); }

// Element-wise product of two packed pairs of 16-bit floats (one HMUL2 on a GPU).
// Used with power-of-two factors only, so the product is exact (or flushes to 0
// below the type's smallest subnormal).
template <typename T> struct Pair;
template <> struct Pair<__half> { using type = __half2; };
template <> struct Pair<__nv_bfloat16> { using type = __nv_bfloat162; };

template <typename T>
__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
    using P = typename Pair<T>::type;
    P pa, pb;
    memcpy(&pa, &a, 4);
    memcpy(&pb, &b, 4);
    const P r = __hmul2(pa, pb);
    uint32_t out;
    memcpy(&out, &r, 4);
    return out;
}

// Four consecutive elements of a row, stored from f32 (8 bytes for 16-bit types,
// 16 for f32). `dst` must be aligned to 4 elements.
template <typename T>
__device__ __forceinline__ void store4(T* dst, const float (&v)[4]) {
    if constexpr (sizeof(T) == 4) {
        *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
        uint2 u;
        u.x = tf::pack2<T>(v[0], v[1]);
        u.y = tf::pack2<T>(v[2], v[3]);
        *reinterpret_cast<uint2*>(dst) = u;
    }
}

// Four consecutive elements of a row as f32 (aligned to 4 elements).
template <typename T>
__device__ __forceinline__ void load4(const T* src, float (&v)[4]) {
    if constexpr (sizeof(T) == 4) {
        const float4 a = *reinterpret_cast<const float4*>(src);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    } else {
        const uint2 u = *reinterpret_cast<const uint2*>(src);
        T e[4];
        memcpy(e, &u, 8);
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = tf::to_float<T>(e[j]);
    }
}

// ---------------------------------------------------------------- statistics
//
// One entry per (row i, n-tile t), float2 (e, l):
//   l2_norm_gelu: stored ĥ = A·2^-e with e = frexp exponent of max_t |A| (|ĥ| <= 1),
//                 l = Σ_t ĥ² (from the f32 accumulators, before rounding ĥ); or, in
//                 the 16-bit tensor-core scores kernel when every row of the CTA's
//                 tile has an ordinary sum (l2_plain_epilogue in
//                 tf/pattention_scores_epilogue.cuh), e = 0: ĥ = A rounded, and
//                 l = Σ_t ĥ² of those rounded values (on the tensor cores)
//   gelu_l2_norm: the same with G = gelu(A) in place of A
//   softmax:      stored ĥ = 2^(A·log2e - e) with e = ceil(max_t A·log2e) (ĥ <= 1; the
//                 product A·log2e rounded once to f32, the same in both places;
//                 2^x by tf::exp2_approx, so on a GPU a ĥ below 2^-126 is 0),
//                 l = Σ_t ĥ
// A tile whose (gelu-)scores are all zero, or (softmax) all -inf, records (kEmpty, 0).
// Because every scale is a power of two, combining tiles (below) and rescaling stored
// 16-bit values by 2^(e_t - E) are exact operations.
//
// Non-finite scores (IEEE semantics of the official formulas, as tf-ref): a tile
// holding a NaN or an infinite (gelu-)score (L2 norms), or a NaN or +inf score
// (softmax), records (0, NaN): its row's norm is NaN or infinite, so every S_ij of the
// row is NaN (inf/inf) or multiplies one that is, and every output of the row is NaN.
// The NaN l carries that through the combine into the row factor. A -inf softmax
// score is an ordinary 2^-inf = 0.

// Combines the statistics of one row (a warp; lanes stride over the n_tiles
// entries at `st`): E = max_t e_t over non-empty tiles, sum = Σ_t l_t·2^(k(e_t - E))
// with k = 2 for the L2 norms (sums of squares), 1 for softmax. Every lane returns
// the same values (deterministic: fixed order per lane, then a XOR butterfly).
// A NaN l (a poisoned tile) makes sum NaN; empty tiles (l == 0) are skipped.
__device__ __forceinline__ void combine_row(const float2* st, int64_t n_tiles, int norm, int lane, float& E,
                                            float& sum) {
    float m = neg_inf();
    for (int64_t t = lane; t < n_tiles; t += 32) {
        const float2 s = st[t];
        if (s.y != 0.0f) m = fmaxf(m, s.x);
    }
    m = tf::warp_max<32>(m);
    float acc = 0.0f;
    if (m != neg_inf()) {
        const float k = norm == TF_NORM_SOFTMAX ? 1.0f : 2.0f;
        for (int64_t t = lane; t < n_tiles; t += 32) {
            const float2 s = st[t];
            if (s.y != 0.0f) acc += scale_pow2(s.y, k * (s.x - m));
        }
    }
    sum = tf::warp_sum<32>(acc);
    E = m == neg_inf() ? kEmpty : m;
}

// The row factor after combining: output row i = base · Σ_t 2^(e_t - E)·(ĥ_t · V_t)
// for gelu_l2_norm and softmax; for l2_norm_gelu, S_ij = gelu(ĥ_ij · base · 2^(e_t - E)).
//   L2 norms: base = scale / (sqrt(sum) + eps·2^-E)  (= sqrt(n_ref)·2^E / (‖·‖ + eps)),
//             0 when the row is all zero (never 0/0)
//   softmax:  base = scale / sum                      (= n_ref·2^E / Σ_j 2^(A_ij·log2e)),
//             NaN when every score is -inf (0/0)
// NaN when sum is NaN (a poisoned row): every output of the row is then NaN.
__device__ __forceinline__ float row_base(int norm, float scale, float eps, float E, float sum) {
    if (norm == TF_NORM_SOFTMAX) return sum == 0.0f ? nan_f() : scale / sum;
    if (sum == 0.0f) return 0.0f;
    return scale / (sqrtf(sum) + ldexpf(eps, -(int)E));
}

// ------------------------------------------------------------ scores epilogue

// Applies the norm's element-wise part to one row of an f32 score tile held by a
// warp (lane owns columns 4·lane .. 4·lane+3 of the n-tile; `valid` columns exist):
// rewrites v[] with the values to store (0 past `valid`) and returns the tile's
// statistics entry (see above; (0, NaN) for a poisoned tile). Every branch is
// warp-uniform. Columns past `valid` may hold NaN (a NaN or inf of x times the zero
// padding of K_P): they never enter the statistics. T is the storage type of the
// scores: gelu_l2_norm's gelu is tf::gelu_stored_as<T> (the 12-instruction form for
// 16-bit storage, the exact erf for f32; tf/gelu.cuh states its bound).
template <typename T>
__device__ __forceinline__ float2 score_row(float (&v)[4], int lane, int valid, int norm) {
    bool ok[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) ok[j] = 4 * lane + j < valid;
    if (norm == TF_NORM_SOFTMAX) {
        // a = A·log2e rounded ONCE (__fmul_rn is never contracted into an fma), the
        // same value in the max and in the exponents: a - e <= 0 exactly, so ĥ <= 1
        // even where one ulp of A·log2e is huge (|A| ~ 1e30; an fma's unrounded
        // product could put the row's maximum 1e23 below e, i.e. at 2^-1e23 = 0).
        float a[4];
        float mx = neg_inf();
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            a[j] = __fmul_rn(v[j], kLog2e);
            if (ok[j]) mx = tf::max_nan(mx, a[j]);
        }
        mx = tf::warp_max<32>(mx);
        if (mx == neg_inf()) {  // every score -inf: an empty tile
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = 0.0f;
            return make_float2(kEmpty, 0.0f);
        }
        const bool finite = mx <= kFinite;  // false for NaN and +inf: a poisoned tile
        const float e = finite ? ceilf(mx) : 0.0f;
        float l = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            v[j] = ok[j] ? tf::exp2_approx(a[j] - e) : 0.0f;
            l += v[j];
        }
        l = tf::warp_sum<32>(l);
        return make_float2(e, finite ? l : nan_f());
    }
    if (norm == TF_NORM_GELU_L2_NORM) {
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = tf::gelu_stored_as<T>(v[j]);
    }
    float mx = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j)
        if (ok[j]) mx = tf::max_nan(mx, fabsf(v[j]));
    mx = tf::warp_max<32>(mx);
    if (mx == 0.0f) {
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = 0.0f;
        return make_float2(kEmpty, 0.0f);
    }
    const bool finite = mx <= kFinite;  // false for NaN and inf: a poisoned tile
    int e = 0;
    if (finite) {
        (void)frexpf(mx, &e);
        e = imax(e, -126);  // 2^-e stays a normal f32; |v·2^-e| <= 1 still holds
    }
    const float sc = ldexpf(1.0f, -e);
    float l = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        v[j] = ok[j] ? v[j] * sc : 0.0f;
        l += v[j] * v[j];
    }
    l = tf::warp_sum<32>(l);
    return make_float2((float)e, finite ? l : nan_f());
}

// Runs score_row over the rows [0, rows) of an f32 tile staged at `stage` (row stride
// kStageLd), one warp per row, and hands each finished row to `sink(r, lane, v, stat)`.
template <typename T, int WARPS, typename Sink>
__device__ __forceinline__ void scores_epilogue(const float* stage, int rows, int valid_cols, int norm, int warp,
                                                int lane, Sink&& sink) {
    for (int r = warp; r < rows; r += WARPS) {
        const float4 a = *reinterpret_cast<const float4*>(stage + r * kStageLd + 4 * lane);
        float v[4] = {a.x, a.y, a.z, a.w};
        const float2 st = score_row<T>(v, lane, valid_cols, norm);
        sink(r, lane, v, st);
    }
}

// Stores an m16n8 f32 accumulator fragment into a staged tile (rows g and g + 8,
// columns 2·(lane % 4) .. +1 of the fragment at (row0, col0)).
__device__ __forceinline__ void stage_fragment(float* stage, int row0, int col0, int lane, const float (&c)[4]) {
    const int r = row0 + lane / 4, col = col0 + 2 * (lane % 4);
    *reinterpret_cast<float2*>(stage + r * kStageLd + col) = make_float2(c[0], c[1]);
    *reinterpret_cast<float2*>(stage + (r + 8) * kStageLd + col) = make_float2(c[2], c[3]);
}

// ---------------------------------------------------------------- tile loads

// Issues cp.async copies of a ROWS x (CHUNKS·8) tile of 16-bit elements into the
// XOR-swizzled tile `s` (tf::Swizzle<CHUNKS>): element (r, c) comes from g[r·ld + c]
// for r < rows_valid and c < cols_valid, else is zero-filled (src-size < 16; a
// fully empty chunk reads nothing and its address is clamped to g). THREADS threads
// each copy ROWS·CHUNKS/THREADS chunks. Preconditions: g 16-byte aligned, ld a
// multiple of 8.
template <int ROWS, int CHUNKS, int THREADS, typename T>
__device__ __forceinline__ void load_tile(unsigned char* s, const T* g, int64_t ld, int rows_valid,
                                          int64_t cols_valid, int tid) {
    static_assert(sizeof(T) == 2, "16-bit tiles");
    using Sw = tf::Swizzle<CHUNKS>;
    constexpr int kPer = ROWS * CHUNKS / THREADS;
    static_assert((ROWS * CHUNKS) % THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
        const int c = tid + i * THREADS;
        const int r = c / CHUNKS, ch = c % CHUNKS;
        const int64_t left = cols_valid - ch * 8;
        const int bytes = r < rows_valid ? (left >= 8 ? 16 : left > 0 ? (int)left * 2 : 0) : 0;
        const T* src = bytes > 0 ? g + r * ld + ch * 8 : g;
        tf::cp_async_16(s + Sw::offset(r, ch), src, bytes);
    }
}

// A compile-time bool passed as a value (a generic lambda's `auto` parameter), so one
// lambda body gives two specialised copies of a loop.
template <bool B>
struct Flag {
    static constexpr bool value = B;
};
// The same for a norm (tf_norm), so that a lambda can be instantiated per norm.
template <int N>
struct Norm {
    static constexpr int value = N;
};

// The steady-state form of load_tile: the per-thread part of the address and residue
// arithmetic done ONCE, for a stream of tiles that differ only by a constant step of
// the source (the next k-tile). Thread tid copies the chunks (row tid / CHUNKS +
// i·kRowStep, chunk tid % CHUNKS), the same chunks load_tile gives it. kRowStep is a
// multiple of the swizzle's period, so every chunk of the thread lies at the same
// constant offset from its first one in shared memory, and kRowStep source rows
// after the previous one in global memory: one pointer per stream (registers are
// short in the products' loops). A chunk's source size (16, a partial chunk's
// bytes, or 0 past rows_valid / cols_valid) is fixed at construction; a chunk that
// reads nothing points at the first chunk instead (itself at row 0 / column 0 when
// that is past the residue), so that every address the stream forms stays inside
// the source for as long as its tiles are full ones.
// Usage: construct on the tile at k = 0, then per tile issue() into the stage and
// advance() by the step. (StreamBase: what the two streams share.)
template <int ROWS, int CHUNKS, int THREADS, typename T>
struct StreamBase {
    using Sw = tf::Swizzle<CHUNKS>;
    static constexpr int kPer = ROWS * CHUNKS / THREADS;
    static constexpr int kRowStep = THREADS / CHUNKS;
    static constexpr int kStepBytes = kRowStep * Sw::kRowBytes;
    static_assert(sizeof(T) == 2, "16-bit tiles");
    static_assert(THREADS % CHUNKS == 0 && ROWS % kRowStep == 0, "a thread keeps one chunk column");
    static_assert(kRowStep % (Sw::kGroup << Sw::kShift) == 0, "rows kRowStep apart share a swizzle");

    const T* src;  // the thread's first chunk in the current tile
    int soff;      // shared-memory offset of the thread's first chunk in a tile

    // Moves to the next tile, `elems` elements further on.
    __device__ __forceinline__ void advance(int64_t elems) { src += elems; }
};

template <int ROWS, int CHUNKS, int THREADS, typename T>
struct TileStream : StreamBase<ROWS, CHUNKS, THREADS, T> {
    using G = StreamBase<ROWS, CHUNKS, THREADS, T>;
    using typename G::Sw;
    using G::kPer, G::kRowStep, G::kStepBytes, G::src, G::soff;

    int64_t step;     // elements from one of the thread's chunks to the next
    int step32;       // the same as an int, when `narrow` (offsets from 32-bit products)
    bool narrow;      // every offset i·step of the stream fits an int of bytes
    int bytes[kPer];  // source size of each chunk

    __device__ __forceinline__ TileStream(const T* g, int64_t ld, int rows_valid, int64_t cols_valid, int tid) {
        const int r0 = tid / CHUNKS, ch = tid % CHUNKS;
        const int64_t left = cols_valid - ch * 8;
        const int col_bytes = left >= 8 ? 16 : left > 0 ? (int)left * 2 : 0;
        soff = Sw::offset(r0, ch);
        src = g + (r0 < rows_valid ? r0 : 0) * ld + (col_bytes > 0 ? ch * 8 : 0);
        step = kRowStep * ld;
        narrow = (kPer - 1) * step * (int64_t)sizeof(T) <= 0x7fffffff;
        step32 = narrow ? (int)step : 0;
#pragma unroll
        for (int i = 0; i < kPer; ++i) bytes[i] = r0 + i * kRowStep < rows_valid ? col_bytes : 0;
    }
    // Copies the current tile into the swizzled tile `s`. FULL: the caller knows that
    // no chunk of the block's tile has a residue and that the stream is `narrow`
    // (plain copies, no source sizes, 32-bit offsets).
    template <bool FULL>
    __device__ __forceinline__ void issue(unsigned char* s) const {
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            if (FULL)
                tf::cp_async_16(s + soff + i * kStepBytes, src + i * step32, 16);
            else
                tf::cp_async_16(s + soff + i * kStepBytes, src + (bytes[i] > 0 ? i : 0) * step, bytes[i]);
        }
    }
};

// A stream of whole-width tiles whose rows past rows_valid point at row
// rows_valid - 1. issue<true>() copies them (every copy a plain 16-byte one, with no
// source size to select: the tile's rows past rows_valid hold row rows_valid - 1);
// issue<false>() zero-fills them and reads nothing. Only for an operand whose rows
// past rows_valid are never read back (their products land in accumulator rows
// nobody stores). Thread tid copies the chunks load_tile gives it; chunk i sits
// off[i] elements after the first one. Preconditions: 1 <= rows_valid, every tile
// streamed has all CHUNKS·8 columns.
template <int ROWS, int CHUNKS, int THREADS, typename T>
struct ClampedRowStream : StreamBase<ROWS, CHUNKS, THREADS, T> {
    using G = StreamBase<ROWS, CHUNKS, THREADS, T>;
    using typename G::Sw;
    using G::kPer, G::kRowStep, G::kStepBytes, G::src, G::soff;

    int64_t off[kPer];  // elements from the first chunk to chunk i (off[0] = 0)
    int bytes[kPer];    // issue<false>'s source size of chunk i: 16, or 0 past rows_valid

    __device__ __forceinline__ ClampedRowStream(const T* g, int64_t ld, int rows_valid, int tid) {
        const int r0 = tid / CHUNKS, ch = tid % CHUNKS;
        const int first = r0 < rows_valid ? r0 : rows_valid - 1;
        soff = Sw::offset(r0, ch);
        src = g + first * ld + ch * 8;
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            const int r = r0 + i * kRowStep;
            off[i] = (int64_t)((r < rows_valid ? r : rows_valid - 1) - first) * ld;
            bytes[i] = r < rows_valid ? 16 : 0;
        }
    }
    template <bool REPEAT>
    __device__ __forceinline__ void issue(unsigned char* s) const {
#pragma unroll
        for (int i = 0; i < kPer; ++i) tf::cp_async_16(s + soff + i * kStepBytes, src + off[i], REPEAT ? 16 : bytes[i]);
    }
};

// One k16 step of a warp's MT x NT tile: acc[mi][nt] += A(mi)·B(nt) for the m16
// tiles mi < mts (a constant MT where no tile is skipped: no branch), with a[mi]
// an m16 x k16 A fragment (ldmatrix.x4) and b[np] the B fragments of n8 tiles
// 2np and 2np + 1 (ldmatrix.x4: tile 2np's k lo / hi, then tile 2np + 1's).
template <typename T, int MT, int NT>
__device__ __forceinline__ void mma_k16(float (&acc)[MT][NT][4], const uint32_t (&a)[MT][4],
                                        const uint32_t (&b)[NT / 2][4], int mts) {
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
        if (mi < mts) {
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                const uint32_t b0[2] = {b[np][0], b[np][1]};
                const uint32_t b1[2] = {b[np][2], b[np][3]};
                tf::mma_m16n8k16<T>(acc[mi][2 * np], a[mi], b0);
                tf::mma_m16n8k16<T>(acc[mi][2 * np + 1], a[mi], b1);
            }
        }
    }
}

// Zeroes an mma accumulator array of MT x NT m16n8 tiles.
template <int MT, int NT>
__device__ __forceinline__ void zero_acc(float (&acc)[MT][NT][4]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.0f;
}

// Prologue of a STAGES-deep cp.async ring over `steps` tiles: issues tiles
// 0 .. STAGES-2 that exist, one commit group per stage (empty groups past the end
// keep the main loop's cp_async_wait<STAGES - 2> accounting uniform).
template <int STAGES, typename Load>
__device__ __forceinline__ void ring_prologue(int steps, Load& load) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) load(s);
        tf::cp_async_commit();
    }
}

}  // namespace pat
}  // namespace tf
