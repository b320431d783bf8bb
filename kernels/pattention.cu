// pattention.cu: Pattention (token-parameter attention) forward for TokenFormer.
//
// Computes Y = Θ(X·K_Pᵀ)·V_P (docs/tokenformer.md) for
//   X [t, d_in], K_P [n, d_in], V_P [n, d_out], Y [t, d_out] (row strides in elements),
//   Θ per row i of A = X·K_Pᵀ (tf_norm), with s = sqrt(n_ref), and eps >= 0:
//     l2_norm_gelu (default): S_ij = gelu(A_ij · s / (‖A_i‖ + eps))
//     gelu_l2_norm:           S_ij = G_ij · s / (‖G_i‖ + eps),  G = gelu(A)
//     softmax:                S_ij = n_ref · exp(A_ij - max_i) / Σ_k exp(A_ik - max_i)
//   gelu is the exact erf form (for f16/bf16 storage tf::gelu_storage16, within
//   2^-18·|gelu| + 2^-30 of it: tf/gelu.cuh); a row whose norm (+ eps) is zero gives
//   a zero row of S (never NaN); n_ref is the current n unless the host pins it.
//   Non-finite values follow the official formulas in IEEE arithmetic (as tf-ref): a
//   NaN or inf score (for softmax: NaN or +inf) makes its whole output row NaN, a -inf
//   softmax score weighs 0, NaN / inf in V_P reach their output column through the
//   products.
// Storage f16 / bf16 (tensor cores, f32 accumulation) or f32 (SIMT, f32 accumulation).
//
// Structure (docs/kernel-design.md "Pattention"): at TokenFormer widths (d_out 768-1536) a
// FlashAttention-style single kernel cannot keep its output row in registers, so:
//
//   tiled path (t > 64, and every f32 call), three launches:
//   1. pattention_scores_*  (pattention_scores.cu): A = X·K_Pᵀ on 128 x 128 tiles; the
//      epilogue applies the norm's element-wise part and writes ĥ [t, n] in the storage
//      type plus one statistics entry per (row, 128-column n-tile), [t, n_tiles] float2,
//      no atomics. Every stored tile is scaled by a POWER OF TWO 2^-e chosen from the
//      tile (|ĥ| <= 1): f16 cannot overflow however large A is, and all later rescaling
//      by 2^(e_t - E_i) is exact. (l2_norm_gelu's 16-bit tiles whose rows all have an
//      ordinary sum of squares, the common case, store A as it is: e = 0.)
//   2. pattention_rows_*    (here): one warp per row combines the statistics in a fixed
//      order into (r_i, E_i); for l2_norm_gelu it also rewrites the row of h in place:
//      S_ij = gelu(ĥ_ij · 2^(e_t - E_i) · s·2^E_i / (‖A_i‖ + eps)); or, when the caller
//      keeps h and the statistics for the backward (they are A: A_ij = ĥ_ij·2^e_t),
//      writes S to p.s, which product 3 then reads in h's place.
//   3. pattention_out_*     (pattention_out.cu): Y = S·V_P on 128 x 128 tiles, A operand
//      scaled per (row, n-tile) by 2^(e_t - E_i) (skipped for l2_norm_gelu), the row
//      factor r_i applied in the epilogue.
//
//   decode path (f16/bf16 and t <= 64; pattention_decode.cu): one CTA per (n-tile,
//   column range) computes its chunk's scores (or, for l2_norm_gelu, reads them back
//   from pattention_scores with the row norms) and an f32 partial product with V_P;
//   pattention_combine_* (here) sums the partials over n-tiles in a fixed order with
//   the exact power-of-two factors. gelu_l2_norm / softmax: 2 launches; l2_norm_gelu: 3,
//   or 4 when product 1 is split over d_in (too few n-tiles for the SMs: the scores
//   kernel's grid gains a z dimension of d_in slices, and pattention_scores_reduce_*
//   sums the slices' f32 partial scores in slice order, then runs the same epilogue).
//
// Why l2_norm_gelu stores (scaled) A and rewrites it (option (c) of docs/kernel-design.md):
// the norm must be known before the gelu. (a) running product 1 twice costs +50% of the
// FLOPs at d_in = d_out; (d) applying gelu while loading product 2's operand evaluates
// erf d_out/128 times per score (6-12x at TokenFormer widths, SIMT-bound); (b) the Gram
// form ‖A_i‖² = x_iᵀ(K_PᵀK_P)x_i cancels catastrophically when x is nearly orthogonal to
// the keys. Measured (kernels/NOTES-pattention.md; its appendix has the program): f32
// arithmetic on bf16-rounded inputs, 64 rows each, relative error of ‖A_i‖ against f64
// (median / max) and the relative Frobenius error of S = gelu(A·sqrt(n)/‖A_i‖):
//   random x, d 256, n 64:                 (b) 8e-8 / 3e-7   (c) 5e-8 / 2e-7   S: 2e-7 vs 1e-7
//   random x, d 256, n 1024:               (b) 1e-6 / 1e-6   (c) 2e-7 / 6e-7   S: 1e-6 vs 3e-7
//   x nearly orthogonal, d 256, n 64:      (b) 8e-3 / 3e-2   (c) 3e-6 / 1e-5   S: 1e-2 vs 3e-5
//   x nearly orthogonal, d 1024, n 256:    (b) 8e-2 / 1e-1   (c) 4e-6 / 9e-6   S: 1e-1 vs 8e-5
//   x nearly orthogonal, d 2048, n 512:    (b) 1e-1 / 2e-1   (c) 4e-6 / 1e-5   S: 2e-1 vs 1e-4
//   x scaled by 1e4 or 1e-4:               relative errors unchanged for both
// so (b) alone breaks the bf16 tolerance (1e-2) on such rows, and it needs a K_PᵀK_P
// cache invalidated by every update and growth.
// (c) costs one read + write of h (4·t·n bytes, ~60-80 µs at t = 16384, n = 4096 on an
// H100/H200 against a 0.28 ms floor) and is exact by construction: the norm is Σ A² of
// the very f32 accumulators that become ĥ. It is the default and the only variant here.
//
// Alignment (checked by the host, tf-host ops/pattention.rs): for f16/bf16, x, k_p,
// v_p and y 16-byte aligned and every row stride a multiple of 8 elements (16-byte
// cp.async rows); d_in, d_out, n and t need not be multiples of anything (partial
// 16-byte chunks are zero-filled through cp.async's src-size). f32: 4-byte aligned,
// any strides. The workspace (h, stats, rowf, partial) is laid out as described at
// tf_pattention_params in tf_kernels.h, base 256-byte aligned.
//
// Launch geometry (the host computes it; dynamic shared memory in bytes):
//   pattention_scores_{f16,bf16}  grid (n_tiles, ceil(t/128))        128 thr  69632
//     (decode, l2_norm_gelu, split) grid (n_tiles, 1, k_splits)      128 thr  69632
//   pattention_scores_reduce_*    grid (n_tiles, ceil(t/4))          128 thr  0
//   pattention_scores_f32         grid (n_tiles, ceil(t/64))         256 thr  34816
//   pattention_rows_*             grid (ceil(t/8))                   256 thr  0
//   pattention_out_{f16,bf16}     grid (ceil(d_out/128), ceil(t/128)) 128 thr 69632
//   pattention_out64_{f16,bf16}   grid (ceil(d_out/128), ceil(t/64))  128 thr 49664
//     (the host's out_rows picks it when 128-row CTAs would load the SMs unevenly)
//   pattention_out_f32            grid (ceil(d_out/128), ceil(t/64)) 256 thr  12800
//   pattention_decode_{f16,bf16}  grid (n_tiles, y_splits)           128 thr  65536
//   pattention_combine_{f16,bf16} grid (ceil(d_out/128), t)          128 thr  0
//
// Versions tried and rejected, with numbers: kernels/NOTES-pattention.md.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/gelu.cuh"
#include "tf/pattention_common.cuh"

namespace tf_pattention {

using namespace tf::pat;

constexpr int kRowsWarps = 8;      // rows (warps) per CTA of pattention_rows
constexpr int kCombineCols = 128;  // output columns (threads) per CTA of pattention_combine

// One warp per row: combine the row's statistics; l2_norm_gelu rewrites h in place
// (or writes S to p.s, leaving h, the scaled A, to a backward that keeps it).
template <typename T>
__device__ __forceinline__ void rows(const tf_pattention_params& p) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * kRowsWarps + warp;
    if (row >= p.t) return;  // whole warps; no block barrier in this kernel
    const float2* st = reinterpret_cast<const float2*>(p.stats) + row * p.n_tiles;
    float2* rowf = reinterpret_cast<float2*>(p.rowf);
    float E, sum;
    combine_row(st, p.n_tiles, p.norm, lane, E, sum);
    const float base = row_base(p.norm, p.scale, p.eps, E, sum);
    if (p.norm != TF_NORM_L2_NORM_GELU) {
        if (lane == 0) rowf[row] = make_float2(base, E);
        return;
    }
    // 16 bytes (8 or 4 elements) a lane; a group never straddles an n-tile.
    constexpr int kVec = 16 / sizeof(T);
    static_assert(kTileN % kVec == 0, "vector groups stay inside one n-tile");
    const T* h = reinterpret_cast<const T*>(p.h) + row * p.h_stride;
    // S over h, or (the caller keeps h for the backward) into p.s
    T* out = reinterpret_cast<T*>(p.s ? p.s : p.h) + row * p.h_stride;
    for (int64_t c = (int64_t)lane * kVec; c < p.n; c += 32 * kVec) {
        const float2 s = st[c / kTileN];
        // An empty tile's factor is base·2^(kEmpty - E) = 0 (NaN for a poisoned row).
        const float f = scale_pow2(base, s.x - E);
        uint4 u = *reinterpret_cast<const uint4*>(h + c);
        T e[kVec];
        memcpy(e, &u, 16);
#pragma unroll
        for (int j = 0; j < kVec; ++j) e[j] = tf::from_float<T>(tf::gelu_stored_as<T>(tf::to_float<T>(e[j]) * f));
        memcpy(&u, e, 16);
        *reinterpret_cast<uint4*>(out + c) = u;
    }
    if (lane == 0) rowf[row] = make_float2(1.0f, 0.0f);
}

// y[i, c] = r_i · Σ_chunk 2^(e_chunk - E_i) · partial[chunk, i, c], chunks in order.
// Every warp combines row i's statistics itself (identical results, no barrier).
template <typename T>
__device__ __forceinline__ void combine(const tf_pattention_params& p) {
    const int lane = threadIdx.x % 32;
    const int64_t row = blockIdx.y;
    const int64_t col = (int64_t)blockIdx.x * kCombineCols + threadIdx.x;
    const bool scaled = p.norm != TF_NORM_L2_NORM_GELU;
    const float2* st = reinterpret_cast<const float2*>(p.stats) + row * p.n_tiles;
    float E = 0.0f, base = 1.0f;
    if (scaled) {
        float sum;
        combine_row(st, p.n_tiles, p.norm, lane, E, sum);
        base = row_base(p.norm, p.scale, p.eps, E, sum);
    }
    if (col >= p.d_out) return;
    const float* part = reinterpret_cast<const float*>(p.partial) + row * p.d_out + col;
    const int64_t chunk_stride = p.t * p.d_out;
    float acc = 0.0f;
    for (int64_t c = 0; c < p.n_tiles; ++c) {
        const float q = scaled ? pow2_neg(st[c].x - E) : 1.0f;
        acc = fmaf(q, part[c * chunk_stride], acc);
    }
    reinterpret_cast<T*>(p.y)[row * p.y_row_stride + col] = tf::from_float<T>(acc * base);
}

}  // namespace tf_pattention

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(256) pattention_rows_f32(const tf_pattention_params p) {
    tf_pattention::rows<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) pattention_rows_f16(const tf_pattention_params p) {
    tf_pattention::rows<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) pattention_rows_bf16(const tf_pattention_params p) {
    tf_pattention::rows<__nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(128) pattention_combine_f16(const tf_pattention_params p) {
    tf_pattention::combine<__half>(p);
}
extern "C" __global__ void __launch_bounds__(128) pattention_combine_bf16(const tf_pattention_params p) {
    tf_pattention::combine<__nv_bfloat16>(p);
}
