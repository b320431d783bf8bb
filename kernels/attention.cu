// attention.cu: flash-style multi-head self-attention forward (FlashAttention-2
// structure) for TokenFormer.
//
// Computes, per batch b and head h, with s_ij = scale * q_i . k_j:
//   o_i   = sum_j softmax_j(s_ij + mask_ij) v_j            [B, T_q, H, D], storage dtype
//   lse_i = ln sum_j exp(s_ij + mask_ij)                   [B, H, T_q], f32
// mask_ij = -inf where key j is not visible: j >= T_k, or (causal) j > i + T_k - T_q
// (bottom-right alignment, so T_q = 1 against a KV cache sees every key). A row
// that sees no key (causal with T_q > T_k) gets o = 0 and lse = +inf.
//
// Layouts: q [B, T_q, H, D], k and v [B, T_k, H, D], o [B, T_q, H, D], each with
// its own int64 strides per axis (in elements; D contiguous), lse [B, H, T_q] f32
// with strides too. See tf_attn_params in tf_kernels.h.
//
// This file: f16 / bf16 on tensor cores, kernels attn_fwd_{f16,bf16}_hd{64,80,96,128}
// and their split-KV variants attn_fwd_split_*. f32 storage runs a SIMT path in
// attention_simt.cu; the split-KV merge is attention_combine.cu; shared helpers
// (masks, empty rows) in tf/attention_common.cuh.
//
//   grid (ceil(T_q / BM), B, H) (causal: query blocks in reverse, heaviest first),
//   128 threads = 4 warps. The CTA keeps its Q tile
//   (BM x D) in shared memory and streams K and V tiles (BN x D) through one K and
//   one V buffer, K blocks from last to first: V(n) is fetched (cp.async.cg, 16 B)
//   while S = Q K(n)^T runs, K(n-1) while O += P V(n) runs; the prologue fetches
//   Q, K(last) and V(last), the only block that can hold the T_k tail, so every
//   fetch inside the loop is a full tile without predicates. Per-thread addresses
//   are computed once before the loop: the cp.async sources move back BN rows per
//   block, the cp.async destination and the ldmatrix offsets stay, and the next
//   k16 step's swizzled ldmatrix offset is one XOR with a constant (step_offset). Warp w owns query rows
//   [w*BM/4, (w+1)*BM/4) of the tile: 32 rows = 2 m16 tiles, so the online-softmax
//   statistics live in the 4 lanes of a quad and no inter-warp reduction exists.
//   S and O accumulate in f32 registers (mma.sync m16n8k16); Q and K fragments come
//   from ldmatrix.x4, V fragments from ldmatrix.x4.trans; P is repacked from the S
//   accumulators into A fragments in registers (never stored). Shared tiles are
//   XOR-swizzled per 16-byte chunk (tf/swizzle.cuh): ldmatrix and the cp.async
//   writes are bank-conflict free, and head dim 80 runs EXACTLY (10 chunks a row,
//   5 k16 steps, no padding: swizzle chunk ^ ((row >> 2) & 1)), not in the 96 kernel.
//   Softmax in base 2: scale*log2(e) is folded into one FMA per score against the
//   row's reference max (of raw scores, hence scale > 0), row sums are reduced over
//   the quad only in the epilogue. The O rescale is a warp-uniform branch: it runs
//   only when a block raises the max of some row of the warp, so steady-state blocks
//   (no new max) skip it; the reference is always the exact running max, so
//   probabilities stay <= 1 and the largest is exactly 1, as in FA2. Causal: K
//   blocks past the last row's diagonal are never loaded; only blocks crossing the
//   diagonal or the T_k tail (K blocks [nb_mask, n_hi), computed once) evaluate
//   the mask. The epilogue stages O (already
//   divided by the row sum, in the storage type) through the warp's own rows of
//   the Q tile and writes 16-byte rows; rows >= T_q are never written.
//   Tile loads and step offsets: tf/attention_tiles.cuh. Tile choices in Traits
//   below (FlashAttention-2's, narrowed where they spill).
//
// Split-KV (attn_fwd_split_*, decode against a long KV cache): grid
//   (ceil(T_q / BM) * num_splits, B, H); split s of a query block runs K blocks
//   [s * per, (s + 1) * per) of its visible range and writes f32 o (normalised by
//   its own row sum) and its lse (-inf if it saw no key) to o_accum / lse_accum;
//   attn_combine_* merges them. The same body, a compile-time flag: a runtime flag
//   changed the unsplit kernels' register allocation (spills at hd 128, sm_90a).
//
// Preconditions (checked by the host plan, tf-host ops/attention.rs): head_dim
// matches the kernel; scale finite and > 0; t_q >= 1, t_k >= 0, B, H >= 1; q, k, v,
// o bases 16-byte aligned and their batch / sequence / head strides multiples of 8
// elements (lse: any f32 strides); dynamic shared memory Traits<HD>::kSmemBytes
// (<= 48 KB for every head dim); split kernels: num_splits in [1, 128] and scratch
// buffers of num_splits * B * H * t_q * (head_dim + 1) floats.
//
// Versions tried and their measured results: kernels/NOTES-attention.md.
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

namespace tf_attn {

// ---------------------------------------------------------------------- traits

// Tile shape of the tensor-core kernel for one head dimension.
template <int HD, int BM, int BN>
struct TraitsBase {
    static constexpr int kHeadDim = HD;
    static constexpr int kBlockM = BM;      // query rows per CTA
    static constexpr int kBlockN = BN;      // keys per K/V tile
    static constexpr int kWarps = 4;
    static constexpr int kThreads = 32 * kWarps;
    static_assert(kThreads == TF_ATTN_THREADS, "the host launches TF_ATTN_THREADS threads");
    static constexpr int kWarpRows = BM / kWarps;   // query rows a warp owns
    static constexpr int kMTiles = kWarpRows / 16;  // m16 tiles per warp
    static constexpr int kChunks = HD / 8;          // 16-byte chunks per row
    static constexpr int kKSteps = HD / 16;         // k16 steps of S = Q K^T
    static constexpr int kNTilesS = BN / 8;         // n8 tiles of S per warp
    static constexpr int kNTilesO = HD / 8;         // n8 tiles of O per warp
    static constexpr int kPVSteps = BN / 16;        // k16 steps of O += P V
    static constexpr int kSmemQ = BM * HD * 2;      // bytes of the Q tile (16-bit storage)
    static constexpr int kSmemKV = BN * HD * 2;     // bytes of one K or V tile
    static constexpr int kSmemBytes = kSmemQ + 2 * kSmemKV;

    static_assert(HD % 16 == 0, "head dim must be a multiple of 16 (k16 steps, ldmatrix.x4 pairs of n8 tiles)");
    static_assert(BM % (16 * kWarps) == 0, "each warp owns whole m16 tiles");
    static_assert(BN % 16 == 0, "K/V tiles are whole k16 steps of P V");
    static_assert((BM * kChunks) % kThreads == 0 && (BN * kChunks) % kThreads == 0,
                  "tile loads give every thread the same number of 16-byte chunks");
    static_assert(kSmemBytes <= 227 * 1024, "shared memory per block at most 227 KB");
    static_assert(kMTiles * kNTilesO * 4 + kMTiles * kNTilesS * 4 <= 200,
                  "O and S accumulators must leave registers for fragments and addresses");
};

template <int HD> struct Traits;
// Every tile keeps warps at 32 query rows (2 m16 tiles: each K/V fragment read by
// ldmatrix feeds two mma) and is the largest BN with 0 spill bytes on sm_80 and sm_90a
// (ptxas 13.0). FlashAttention-2's sm_80 choices (128 x 128 for hd 64, 128 x 64 for
// 96 and 128) spill here: 24-36 B at hd 64, 60 B at hd 128 (FA2's own hd-128 kernel
// spills 172 B on sm_80, flash-attention issue #1630). Register counts move by ~20
// with unrelated edits (ptxas heuristics); current ones in NOTES-attention.md.
// hd 64: 128 x 64, 32 KB smem, 200-224 registers.
template <> struct Traits<64> : TraitsBase<64, TF_ATTN_BLOCK_M, TF_ATTN_BLOCK_N_HD64> {};
// hd 80: exact (not in the 96 kernel), 128 x 64, 40 KB, 223-240 registers.
template <> struct Traits<80> : TraitsBase<80, TF_ATTN_BLOCK_M, TF_ATTN_BLOCK_N_HD80> {};
// hd 96: FA2's 128 x 64, 48 KB, 252-255 registers (fallback if it spills: 128 x 32,
// 200-210 registers).
template <> struct Traits<96> : TraitsBase<96, TF_ATTN_BLOCK_M, TF_ATTN_BLOCK_N_HD96> {};
// hd 128: 128 x 32 (FA2's sm_86 non-causal tile), 48 KB, 248-255 registers
// (fallback: 64 x 64, 167 / 168 registers, but half the mma per ldmatrix).
template <> struct Traits<128> : TraitsBase<128, TF_ATTN_BLOCK_M, TF_ATTN_BLOCK_N_HD128> {};

// ------------------------------------------------------------- split-KV helpers

// (The online softmax's constants, split_row and write_empty_split: tf/attention_common.cuh.)

// A split's epilogue: o of its K range normalised by its own row sum, and that
// range's lse (-inf if the row saw none of its keys), in f32. `row0` is this
// lane's first row (tile row g of its warp, absolute).
template <int HD, int MT, int NTO>
__device__ __forceinline__ bool write_split_partials(const tf_attn_params& p, const float (&acc_o)[MT][NTO][4],
                                                     const float (&m_neg)[MT][2], const float (&row_sum)[MT][2],
                                                     int64_t row0, int split, int tq) {
    float* oa = reinterpret_cast<float*>(p.o_accum);
    float* la = reinterpret_cast<float*>(p.lse_accum);
    bool bad = false;  // any non-finite output of this thread
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const float l = tf::warp_sum<4>(row_sum[mt][hr]);
            // l == 0: no key of this split was visible, or all had -inf scores (weight
            // 0 in the combine either way); a NaN l makes o and lse NaN.
            const float inv = l == 0.0f ? 0.0f : 1.0f / l;
            const int64_t row = row0 + mt * 16 + hr * 8;
            if (row < p.t_q) {
                const int64_t at = split_row(p, split, row);
#pragma unroll
                for (int nt = 0; nt < NTO; ++nt) {
                    float2 v;
                    v.x = acc_o[mt][nt][2 * hr] * inv;
                    v.y = acc_o[mt][nt][2 * hr + 1] * inv;
                    bad |= nonfinite(v.x) || nonfinite(v.y);
                    *reinterpret_cast<float2*>(oa + at * HD + nt * 8 + 2 * tq) = v;
                }
                if (tq == 0) la[at] = l == 0.0f ? neg_inf() : -m_neg[mt][hr] * kLn2 + logf(l);
            }
        }
    }
    return bad;
}

// kSplit: one split of a split-KV launch (f32 partials for attn_combine) instead of
// the whole K range (final o and lse).
template <typename T, int HD, bool kSplit>
__device__ __forceinline__ void attn_fwd_mma(const tf_attn_params& p) {
    using Tr = Traits<HD>;
    using Sw = tf::Swizzle<Tr::kChunks>;
    constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, MT = Tr::kMTiles;
    constexpr int NTS = Tr::kNTilesS, NTO = Tr::kNTilesO;

    TF_DYNAMIC_SMEM(unsigned char, smem);
    unsigned char* sQ = smem;
    unsigned char* sK = smem + Tr::kSmemQ;
    unsigned char* sV = sK + Tr::kSmemKV;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int b = blockIdx.y, h = blockIdx.z;
    // Split-KV: blockIdx.x = query block * num_splits + split; split s takes the K
    // blocks [s * per, (s + 1) * per) of the query block's visible range.
    const int splits = kSplit ? p.num_splits : 1;
    // Causal: query blocks heaviest first. CTAs start in blockIdx order (x fastest),
    // and under the mask the last query block sees the most keys, so x runs over the
    // query blocks from the last one down: the CTAs left for the tail of the launch
    // are the light first blocks of the last heads, not the heaviest ones.
    const int m_blocks = (int)(gridDim.x / splits);
    const int m_idx = (int)(blockIdx.x / splits), split = (int)(blockIdx.x % splits);
    const int m_block = p.causal ? m_blocks - 1 - m_idx : m_idx;
    const int64_t m0 = (int64_t)m_block * BM;
    const int n_visible = num_key_blocks(p, m0, BM, BN);
    int n_lo = 0, n_hi = n_visible;
    if (kSplit) {
        const int per = (n_visible + splits - 1) / splits;
        n_lo = split * per < n_visible ? split * per : n_visible;
        n_hi = n_lo + per < n_visible ? n_lo + per : n_visible;
    }
    if (n_hi <= n_lo) {  // block-uniform: no row of this CTA (split) sees a key
        if (kSplit) {
            write_empty_split<HD>(p, m0, BM, split, tid, Tr::kThreads);
        } else {
            write_empty_rows<T, HD>(p, m0, BM, tid, Tr::kThreads);
        }
        return;
    }

    const T* q = reinterpret_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h + m0 * p.q_stride_t;
    const T* k = reinterpret_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
    const T* v = reinterpret_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
    const int64_t diag = p.t_k - p.t_q;  // key j visible to row i iff j <= i + diag (causal)
    const float scale_log2 = p.scale * kLog2e;

    // Prologue: Q, the last K block and the last V block (the only ones that can
    // hold the T_k tail: rows past t_k are zero-filled by load_tile).
    load_tile<Tr, BM>(sQ, q, p.q_stride_t, p.t_q - m0, tid);
    {
        const int64_t n0 = (int64_t)(n_hi - 1) * BN;
        load_tile<Tr, BN>(sK, k + n0 * p.k_stride_t, p.k_stride_t, p.t_k - n0, tid);
        load_tile<Tr, BN>(sV, v + n0 * p.v_stride_t, p.v_stride_t, p.t_k - n0, tid);
        tf::cp_async_commit();
    }

    // Blocks [nb_mask, n_hi) cross the T_k tail (only the last one can) or the
    // causal diagonal (block nb does iff nb * BN + BN - 1 > m0 + diag) and evaluate
    // the mask; the blocks below it run the unmasked steady state.
    int nb_mask = (int64_t)n_hi * BN > p.t_k ? n_hi - 1 : n_hi;
    if (p.causal) {
        const int64_t x = m0 + diag - BN + 2;  // crosses iff nb * BN >= x
        const int64_t first = x <= 0 ? 0 : (x + BN - 1) / BN;
        if (first < nb_mask) nb_mask = (int)first;
    }

    // Per-thread addresses, computed once: cp.async destination (row r0, chunk c0
    // of a tile, load_tile's mapping) and sources of the next full K / V blocks,
    // moved back by BN rows per block; ldmatrix offsets of chunk 0 / 1 of the
    // thread's Q, K and V rows, moved along the head dim by step_offset.
    const int lr0 = (tid >> 3) & 15, lc0 = tid & 7;
    const bool ld_two = lc0 + 8 < Tr::kChunks;
    uint32_t ld_soff = (uint32_t)Sw::offset(lr0, lc0);
    const int64_t k_ld16 = 16 * p.k_stride_t, v_ld16 = 16 * p.v_stride_t;
    const int64_t k_blk = (int64_t)BN * p.k_stride_t, v_blk = (int64_t)BN * p.v_stride_t;
    const T* k_next = k + ((int64_t)(n_hi - 2) * BN + lr0) * p.k_stride_t + lc0 * 8;  // K(nb - 1) of the first block
    const T* v_next = v + ((int64_t)(n_hi - 2) * BN + lr0) * p.v_stride_t + lc0 * 8;  // V(nb) of the second block

    const int row_w = warp * Tr::kWarpRows;  // first tile row of this warp
    const int g = lane / 4, tq = lane % 4;   // mma groupID, threadID_in_group
    const int mi = lane / 8;                 // ldmatrix.x4: the matrix this lane addresses
    // A fragment of Q: lane l addresses row l % 16, chunk l / 16 (m-tile mt: + 16 rows,
    // same swizzle). K (B of S): matrices (keys +0..7, d lo), (+0..7, d hi),
    // (+8..15, d lo), (+8..15, d hi). V (.trans): (keys +0..7, d lo), (+8..15, d lo),
    // (+0..7, d hi), (+8..15, d hi). Rows 16 apart share the swizzle.
    uint32_t q_off = (uint32_t)Sw::offset(row_w + lane % 16, lane / 16);
    uint32_t k_off = (uint32_t)Sw::offset((mi >> 1) * 8 + lane % 8, mi & 1);
    uint32_t v_off = (uint32_t)Sw::offset((mi & 1) * 8 + lane % 8, mi >> 1);
    constexpr int kRow16 = 16 * Sw::kRowBytes;  // bytes of 16 tile rows

    float acc_o[MT][NTO][4];
    float m_neg[MT][2], row_sum[MT][2];  // -(reference max) * scale * log2 e, partial row sums
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < NTO; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) acc_o[mt][nt][i] = 0.0f;
        }
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            m_neg[mt][hr] = kNothingSeen;
            row_sum[mt][hr] = 0.0f;
        }
    }

    for (int nb = n_hi - 1; nb >= n_lo; --nb) {
        keep_in_register(ld_soff);
        keep_in_register(q_off);
        keep_in_register(k_off);
        keep_in_register(v_off);
        tf::cp_async_wait<0>();  // K(nb) and V(nb) (and Q) landed
        __syncthreads();         // ... for every thread; every warp is done with V(nb+1)
        if (nb < n_hi - 1) {     // V(nb): the last block's came with the prologue
            load_tile_full<Tr, BN>(sV + ld_soff, v_next, v_ld16, ld_two);
            tf::cp_async_commit();
            v_next -= v_blk;
        }

        // S = Q K^T for this warp's rows and the BN keys.
        float s[MT][NTS][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                for (int i = 0; i < 4; ++i) s[mt][nt][i] = 0.0f;
            }
        }
#pragma unroll
        for (int ks = 0; ks < Tr::kKSteps; ++ks) {
            const uint32_t qo = step_offset<Sw>(q_off, ks), ko = step_offset<Sw>(k_off, ks);
            uint32_t qa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) tf::ldmatrix_x4(qa[mt], sQ + qo + mt * kRow16);
#pragma unroll
            for (int np = 0; np < NTS / 2; ++np) {
                // Registers {0,1} are the B fragment of n-tile 2np, {2,3} of n-tile 2np+1.
                uint32_t kb[4];
                tf::ldmatrix_x4(kb, sK + ko + np * kRow16);
                const uint32_t b0[2] = {kb[0], kb[1]};
                const uint32_t b1[2] = {kb[2], kb[3]};
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    tf::mma_m16n8k16<T>(s[mt][2 * np], qa[mt], b0);
                    tf::mma_m16n8k16<T>(s[mt][2 * np + 1], qa[mt], b1);
                }
            }
        }

        // Mask only the blocks that cross the T_k tail or the causal diagonal. Row r
        // of the tile sees the block's local keys c < lim: lim = t_k - n0, and under
        // the causal mask at most (m0 + r + diag) - n0 + 1, clamped to [0, BN].
        if (nb >= nb_mask) {
            const int64_t n0 = (int64_t)nb * BN;
            const int lim_tail = (int)min64(p.t_k - n0, BN);  // >= 1: the block starts inside K
            // Causal limit of tile row row_w + g, clamped so the int offsets below stay exact.
            int64_t c64 = p.causal ? m0 + row_w + g + diag - n0 + 1 : (int64_t)BN;
            c64 = c64 < -Tr::kWarpRows ? -Tr::kWarpRows : (c64 > BN ? (int64_t)BN : c64);
            const int lim0 = (int)c64;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    int lim = p.causal ? lim0 + mt * 16 + hr * 8 : BN;
                    lim = lim < lim_tail ? lim : lim_tail;
#pragma unroll
                    for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                        for (int j = 0; j < 2; ++j) {
                            if (nt * 8 + 2 * tq + j >= lim) s[mt][nt][2 * hr + j] = neg_inf();
                        }
                    }
                }
            }
        }

        tf::cp_async_wait<0>();  // V(nb) landed
        __syncthreads();         // ... for every thread; every warp is done with K(nb)
        if (nb > n_lo) {         // K(nb - 1): never the tail block
            load_tile_full<Tr, BN>(sK + ld_soff, k_next, k_ld16, ld_two);
            tf::cp_async_commit();
            k_next -= k_blk;
        }

        // Online softmax with a skipped rescale. Each row keeps m_neg = -(m * scale * log2 e)
        // for its running max m (kNothingSeen before any finite score):
        // p = 2^(s * scale * log2 e + m_neg), one FFMA per score. The O rescale runs
        // only when the block raises the max of some row of the warp (a warp-uniform
        // branch); a block that raises none skips it. The reference is never stale:
        // a lazier one (moved only past a margin, e.g. 2^8) makes the largest p of a
        // row 2^x for a non-integer x instead of exactly 1, so the dominant terms pick
        // up a 16-bit rounding error the FA2 order avoids (NOTES-attention.md).
        bool need = false;
        float mxs[MT][2];  // the block's row maxima times scale * log2 e
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                float mx = fmaxf(s[mt][0][2 * hr], s[mt][0][2 * hr + 1]);
#pragma unroll
                for (int nt = 1; nt < NTS; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hr], s[mt][nt][2 * hr + 1]));
                mx = quad_max(mx);  // the quad holds the row
                mxs[mt][hr] = mx * scale_log2;
                // A finite max above the running max, or a first finite max
                // (m_neg = kNothingSeen); -inf (all masked) and NaN never move it.
                need |= mxs[mt][hr] + m_neg[mt][hr] > 0.0f;
            }
        }
        if (__any_sync(0xffffffffu, need)) {  // warp-uniform
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const float old = m_neg[mt][hr];
                    const float m_new = mxs[mt][hr] + old > 0.0f ? -mxs[mt][hr] : old;
                    // 1 for a row that keeps its reference; 0 after kNothingSeen.
                    const float corr = tf::exp2_approx(m_new - old);
                    m_neg[mt][hr] = m_new;
                    row_sum[mt][hr] *= corr;
#pragma unroll
                    for (int nt = 0; nt < NTO; ++nt) {
                        acc_o[mt][nt][2 * hr] *= corr;
                        acc_o[mt][nt][2 * hr + 1] *= corr;
                    }
                }
            }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                float sum = row_sum[mt][hr];
#pragma unroll
                for (int nt = 0; nt < NTS; ++nt) {
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        // A masked score: 2^-inf = 0 (m_neg is finite).
                        const float e = tf::exp2_approx(fmaf(s[mt][nt][2 * hr + j], scale_log2, m_neg[mt][hr]));
                        s[mt][nt][2 * hr + j] = e;
                        sum += e;
                    }
                }
                row_sum[mt][hr] = sum;
            }
        }

        // O += P V: P's A fragments are the S accumulators of n-tiles 2ks, 2ks+1.
#pragma unroll
        for (int ks = 0; ks < Tr::kPVSteps; ++ks) {
            uint32_t pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                pa[mt][0] = tf::pack2<T>(s[mt][2 * ks][0], s[mt][2 * ks][1]);
                pa[mt][1] = tf::pack2<T>(s[mt][2 * ks][2], s[mt][2 * ks][3]);
                pa[mt][2] = tf::pack2<T>(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
                pa[mt][3] = tf::pack2<T>(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < NTO / 2; ++dp) {
                // Registers {0,1} = B of d-tile 2dp, {2,3} = B of 2dp+1 (v_off's matrices).
                uint32_t vb[4];
                tf::ldmatrix_x4_trans(vb, sV + step_offset<Sw>(v_off, dp) + ks * kRow16);
                const uint32_t b0[2] = {vb[0], vb[1]};
                const uint32_t b1[2] = {vb[2], vb[3]};
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    tf::mma_m16n8k16<T>(acc_o[mt][2 * dp], pa[mt], b0);
                    tf::mma_m16n8k16<T>(acc_o[mt][2 * dp + 1], pa[mt], b1);
                }
            }
        }
    }

    if (kSplit) {
        const bool bad = write_split_partials<HD, MT, NTO>(p, acc_o, m_neg, row_sum, m0 + row_w + g, split, tq);
        // Causal: a masked key's NaN / inf v may have reached a row through 0·v (above).
        if (p.causal && __syncthreads_or(bad)) {
            const int64_t at = split_row(p, split, m0);
            recompute_nonfinite_rows<HD>(p, q, k, v, reinterpret_cast<float*>(p.o_accum) + at * HD, (int64_t)HD,
                                         reinterpret_cast<const float*>(p.lse_accum) + at, 1, m0, (int64_t)n_lo * BN,
                                         min64((int64_t)n_hi * BN, p.t_k), warp, lane, Tr::kWarps,
                                         (int)min64(BM, p.t_q - m0));
        }
        return;
    }

    // Epilogue: quad-reduce the row sums, normalise, write lse and stage O in the
    // warp's own Q rows (only this warp ever read them; no cp.async is pending).
    float* lse = reinterpret_cast<float*>(p.lse) + b * p.lse_stride_b + h * p.lse_stride_h;
    bool bad = false;  // any non-finite output of this thread
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const float l = tf::warp_sum<4>(row_sum[mt][hr]);
            const int r = row_w + mt * 16 + g + hr * 8;
            const bool sees = row_sees_a_key(p, m0 + r);
            const float inv = inv_row_sum(l, sees);
#pragma unroll
            for (int nt = 0; nt < NTO; ++nt) {
                const float o0 = acc_o[mt][nt][2 * hr] * inv, o1 = acc_o[mt][nt][2 * hr + 1] * inv;
                bad |= m0 + r < p.t_q && (nonfinite(o0) || nonfinite(o1));
                const uint32_t packed = tf::pack2<T>(o0, o1);
                *reinterpret_cast<uint32_t*>(sQ + Sw::offset(r, nt) + tq * 4) = packed;
            }
            if (tq == 0 && m0 + r < p.t_q) {
                lse[(m0 + r) * p.lse_stride_t] = row_lse_log2(-m_neg[mt][hr], l, sees);
            }
        }
    }
    __syncwarp();
    T* o = reinterpret_cast<T*>(p.o) + b * p.o_stride_b + h * p.o_stride_h;
    constexpr int kWarpChunks = Tr::kWarpRows * Tr::kChunks;
#pragma unroll
    for (int i = 0; i < (kWarpChunks + 31) / 32; ++i) {
        const int idx = lane + i * 32;
        if (idx < kWarpChunks) {
            const int r = row_w + idx / Tr::kChunks, c = idx % Tr::kChunks;
            if (m0 + r < p.t_q) {
                *reinterpret_cast<uint4*>(o + (m0 + r) * p.o_stride_t + c * 8) =
                    *reinterpret_cast<const uint4*>(sQ + Sw::offset(r, c));
            }
        }
    }
    // Causal: a masked key's NaN / inf v may have reached a row through 0·v (above).
    if (p.causal && __syncthreads_or(bad)) {
        recompute_nonfinite_rows<HD>(p, q, k, v, o + m0 * p.o_stride_t, p.o_stride_t, lse + m0 * p.lse_stride_t,
                                     p.lse_stride_t, m0, (int64_t)n_lo * BN, min64((int64_t)n_hi * BN, p.t_k), warp,
                                     lane, Tr::kWarps, (int)min64(BM, p.t_q - m0));
    }
}

}  // namespace tf_attn

// ------------------------------------------------------------------ entry points

// One line per kernel (the emulator's build finds kernels by their `extern "C"
// __global__` text, so no macro). Dynamic shared memory Traits<HD>::kSmemBytes, from
// the TF_ATTN_* tiles of tf_kernels.h, which tf-host ops/attention.rs also reads.
extern "C" __global__ void __launch_bounds__(128) attn_fwd_f16_hd64(const tf_attn_params p) { tf_attn::attn_fwd_mma<__half, 64, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_f16_hd80(const tf_attn_params p) { tf_attn::attn_fwd_mma<__half, 80, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_f16_hd96(const tf_attn_params p) { tf_attn::attn_fwd_mma<__half, 96, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_f16_hd128(const tf_attn_params p) { tf_attn::attn_fwd_mma<__half, 128, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_bf16_hd64(const tf_attn_params p) { tf_attn::attn_fwd_mma<__nv_bfloat16, 64, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_bf16_hd80(const tf_attn_params p) { tf_attn::attn_fwd_mma<__nv_bfloat16, 80, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_bf16_hd96(const tf_attn_params p) { tf_attn::attn_fwd_mma<__nv_bfloat16, 96, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_bf16_hd128(const tf_attn_params p) { tf_attn::attn_fwd_mma<__nv_bfloat16, 128, false>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_split_f16_hd64(const tf_attn_params p) { tf_attn::attn_fwd_mma<__half, 64, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_split_f16_hd80(const tf_attn_params p) { tf_attn::attn_fwd_mma<__half, 80, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_split_f16_hd96(const tf_attn_params p) { tf_attn::attn_fwd_mma<__half, 96, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_split_f16_hd128(const tf_attn_params p) { tf_attn::attn_fwd_mma<__half, 128, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_split_bf16_hd64(const tf_attn_params p) { tf_attn::attn_fwd_mma<__nv_bfloat16, 64, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_split_bf16_hd80(const tf_attn_params p) { tf_attn::attn_fwd_mma<__nv_bfloat16, 80, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_split_bf16_hd96(const tf_attn_params p) { tf_attn::attn_fwd_mma<__nv_bfloat16, 96, true>(p); }
extern "C" __global__ void __launch_bounds__(128) attn_fwd_split_bf16_hd128(const tf_attn_params p) { tf_attn::attn_fwd_mma<__nv_bfloat16, 128, true>(p); }
