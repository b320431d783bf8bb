// pattention_out.cu: Pattention product 2, Y = S·V_P, reading the stored scores h
// with the per-(row, n-tile) and per-row factors of the statistics applied.
// The whole design is in pattention.cu.
//
// Computes, for row i and output column c:
//   y[i, c] = r_i · Σ_j q_{i,t(j)} · h[i, j] · v_p[j, c]
// with (r_i, E_i) = rowf[i] and q_{i,t} = 2^(e_{i,t} - E_i) (e from stats), a power of
// two <= 1, so scaling the 16-bit h operand by it is exact. For l2_norm_gelu h already
// holds S (pattention_rows rewrote it) and q = 1: the scaling is skipped entirely.
//
// f16 / bf16, kernels pattention_out_{f16,bf16}: grid (ceil(d_out / 128), ceil(t / 128)),
//   128 threads = 4 warps in 2 x 2, CTA tile 128 rows x 128 columns, warp tile 64 x 64
//   (pattention_out64_{f16,bf16}: grid (ceil(d_out / 128), ceil(t / 64)), 4 warps in
//   1 x 4, CTA tile 64 x 128, warp tile 64 x 32; otherwise the same code),
//   k-step 32 along n, 4-stage cp.async ring (16 KB a stage). h tiles: 64-byte rows,
//   swizzle chunk ^ ((row >> 1) & 3), ldmatrix.x4; V_P tiles: 32 rows of 256 bytes,
//   swizzle chunk ^ (row & 7), ldmatrix.x4.trans (V_P is K-major for mma's B operand).
//   q: every k-step lies inside one n-tile (128 = 4 k-steps). Thread tid computes q of
//   row tid for the NEXT n-tile (f16x2/bf16x2, prefetching the exponent after it) into
//   a two-slot table in shared memory past the pipeline; when an n-tile starts, each
//   thread reads q of its 8 rows from the table into registers. A fragments are then
//   multiplied by q (one HMUL2 per register: 16 per k16 step against 32 HMMA).
//   l2_norm_gelu (h holds final S, q = 1) skips the scaling in the full-tile loop; the
//   general loop multiplies by q = 1 instead, an exact no-op.
//   Main loop: cp.async sources and shared offsets (tf::pat::TileStream) and ldmatrix
//   offsets computed once; a full k-tile is 8 copies with pointers advanced by a
//   constant, only the partial last k-tile (n % 32) goes through load_tile's zero
//   filling. A fragments run one m16 tile ahead of the mma (registers are short:
//   128 accumulators). A CTA with no residue (128 rows of h, 128 columns of V_P) runs
//   a copy of the loop (one with q, one without) with plain 16-byte copies and no
//   per-m16-tile branch; in the others rows past t are zero-filled and warps skip m16
//   tiles wholly past t.
//   blockIdx.x runs over column blocks so resident CTAs share an h row block; V_P
//   stays in L2. The epilogue stages f32 accumulators in shared memory and writes 4
//   elements a lane (rows of 256 contiguous bytes).
//
// f32, kernel pattention_out_f32: SIMT path: grid (ceil(d_out / 128), ceil(t / 64)),
//   256 threads, 64 x 128 tile, k-step 16, 4 x 8 per thread; q applied while staging h.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/async.cuh"
#include "tf/mma.cuh"
#include "tf/smem.cuh"
#include "tf/swizzle.cuh"
#include "tf/pattention_common.cuh"

namespace tf_pattention_out {

using namespace tf::pat;

// ---------------------------------------------------------------------- traits

// Product 2 tile: BM = 128, the same shape as product 1 (docs/kernel-design.md), 64 KB
// pipeline, 4 warps 2 x 2 of 64 x 64; or BM = 64 (pattention_out64_*), 48 KB, 4 warps
// 1 x 4 of 64 x 32, which the host picks when the 128-row grid would load a GPU's SMs
// unevenly (pattention.rs out_rows: e.g. 128 CTAs on A100's 108 SMs, where 20 SMs run
// two CTAs one after the other; 256 half-size CTAs put at most 3 halves on one SM).
template <int BM>
struct Traits {
    static constexpr int kBM = BM;             // rows (tokens) per CTA
    static constexpr int kBN = 128;            // output columns per CTA
    // parameter tokens per stage: 64 for the 64-row tile (its warps hold half the
    // HMMA of a k16 step, so a 32-token stage spreads the step's fixed cost over 32
    // HMMA only), 32 for the 128-row tile
    static constexpr int kBK = BM == 64 ? 64 : 32;
    static constexpr int kStages = BM == 64 ? 3 : 4;
    static constexpr int kWarpsM = BM / 64, kWarpsN = 4 / kWarpsM;
    static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
    static constexpr int kWM = kBM / kWarpsM, kWN = kBN / kWarpsN;
    static constexpr int kMT = kWM / 16, kNT = kWN / 8;
    static constexpr int kChunksA = kBK / 8;   // h tile: 4 chunks a row
    static constexpr int kChunksB = kBN / 8;   // V_P tile: 16 chunks a row
    static constexpr int kBytesA = kBM * kBK * 2;
    static constexpr int kBytesB = kBK * kBN * 2;
    static constexpr int kStageBytes = kBytesA + kBytesB;
    static constexpr int kPipeBytes = kStages * kStageBytes;
    static constexpr int kEpiBytes = kBM * kStageLd * 4;
    static constexpr int kStepsPerTile = kTileN / kBK;  // k-steps per statistics n-tile
    static constexpr int kQBytes = 2 * kBM * 4;         // q table: two n-tiles x kBM rows
    static constexpr int kSmemBytes = kPipeBytes + kQBytes > kEpiBytes ? kPipeBytes + kQBytes : kEpiBytes;

    static_assert(kStepsPerTile >= 2, "a q slot is rewritten only after a barrier separates its last read");
    static_assert(kPipeBytes + kQBytes <= kSmemBytes, "the q table lies past the pipeline (the epilogue reuses it)");

    static_assert(kTileN % kBK == 0, "a k-step never straddles two n-tiles (one q per step)");
    static_assert(kBN == 128, "the epilogue gives each lane 4 of 128 columns");
    static_assert(kBK % 16 == 0 && kNT % 2 == 0, "k16 steps; ldmatrix.x4.trans loads pairs of n8 tiles");
    static_assert(kThreads == 128 && (BM == 128 || BM == 64), "4 warps, 2 x 2 or 1 x 4");
    static_assert(kSmemBytes <= 227 * 1024, "shared memory per block at most 227 KB");
};

struct SimtTraits {
    static constexpr int kBM = 64, kBN = 128, kBK = 16, kThreads = 256;
    static constexpr int kTM = 4, kTN = 8;
    static constexpr int kLdA = kBM + 4;       // [kBK][kLdA] k-major h tile (q applied)
    static constexpr int kLdB = kBN;           // [kBK][kLdB] V_P tile, row-major
    static constexpr int kSmemBytes = (kBK * kLdA + kBK * kLdB + kBM) * 4;
    static_assert(kTileN % kBK == 0, "a k-step never straddles two n-tiles");
    static_assert((kBM / kTM) * (kBN / kTN) == kThreads, "one micro-tile per thread");
    static_assert(kSmemBytes <= 48 * 1024, "no opt-in needed");
};

static_assert(Traits<128>::kSmemBytes == TF_PATTENTION_SMEM_MMA, "tf_kernels.h states the launch's shared memory");
static_assert(Traits<64>::kSmemBytes == TF_PATTENTION_SMEM_OUT64, "tf_kernels.h states the launch's shared memory");
static_assert(SimtTraits::kSmemBytes == TF_PATTENTION_SMEM_OUT_F32, "tf_kernels.h states the launch's shared memory");

// --------------------------------------------------------- tensor-core kernel

template <typename T, int BM>
__device__ __forceinline__ void out_mma(const tf_pattention_params& p) {
    using Tr = Traits<BM>;
    using SwA = tf::Swizzle<Tr::kChunksA>;
    using SwB = tf::Swizzle<Tr::kChunksB>;
    TF_DYNAMIC_SMEM(unsigned char, smem);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wm = warp / Tr::kWarpsN, wn = warp % Tr::kWarpsN;
    const int64_t n0 = (int64_t)blockIdx.x * Tr::kBN;
    const int64_t m0 = (int64_t)blockIdx.y * Tr::kBM;
    const int rows_a = (int)min64(Tr::kBM, p.t - m0);
    const int mt_active = imin(Tr::kMT, imax(0, (rows_a - wm * Tr::kWM + 15) / 16));
    const T* gh = reinterpret_cast<const T*>(p.h) + m0 * p.h_stride;
    const T* gv = reinterpret_cast<const T*>(p.v_p) + n0;
    const int64_t cols_b = p.d_out - n0;
    const int k_tiles = (int)((p.n + Tr::kBK - 1) / Tr::kBK);
    const int k_full = (int)(p.n / Tr::kBK);  // k-tiles with no n residue
    const bool scaled = p.norm != TF_NORM_L2_NORM_GELU;
    const float2* stats = reinterpret_cast<const float2*>(p.stats);
    const float2* rowf = reinterpret_cast<const float2*>(p.rowf);

    // Full k-tiles stream through precomputed per-thread copies; the partial last one
    // (n % kBK != 0) goes through load_tile's zero filling. Tiles load in order.
    TileStream<Tr::kBM, Tr::kChunksA, Tr::kThreads, T> sh(gh, p.h_stride, rows_a, Tr::kBK, tid);
    TileStream<Tr::kBK, Tr::kChunksB, Tr::kThreads, T> sv(gv, p.v_row_stride, Tr::kBK, cols_b, tid);
    const int64_t v_step = Tr::kBK * p.v_row_stride;
    auto load = [&](int kt, auto full) {
        unsigned char* sa = smem + (kt % Tr::kStages) * Tr::kStageBytes;
        if (kt < k_full) {
            sh.template issue<decltype(full)::value>(sa);
            sv.template issue<decltype(full)::value>(sa + Tr::kBytesA);
            sh.advance(Tr::kBK);
            sv.advance(v_step);
        } else {
            const int64_t k0 = (int64_t)kt * Tr::kBK;
            load_tile<Tr::kBM, Tr::kChunksA, Tr::kThreads>(sa, gh + k0, p.h_stride, rows_a, p.n - k0, tid);
            load_tile<Tr::kBK, Tr::kChunksB, Tr::kThreads>(sa + Tr::kBytesA, gv + k0 * p.v_row_stride,
                                                           p.v_row_stride, (int)min64(Tr::kBK, p.n - k0), cols_b,
                                                           tid);
        }
    };

    // Each lane's ldmatrix rows, fixed for the whole loop (the swizzles depend on a
    // row's low bits only). A (h): one offset per k16 step, m16 tiles 1 KB apart.
    // B (V_P, 16 rows = 4 KB per k16 step): one offset per n8 pair np, matrices
    // (k lo, n8 tile 2np), (k hi, 2np), (k lo, 2np + 1), (k hi, 2np + 1).
    constexpr int kKK = Tr::kBK / 16;
    constexpr int kTileA16 = 16 * SwA::kRowBytes, kStepB16 = 16 * SwB::kRowBytes;
    int a_off[kKK], b_off[Tr::kNT / 2];
#pragma unroll
    for (int kk = 0; kk < kKK; ++kk) a_off[kk] = SwA::offset(wm * Tr::kWM + lane % 16, kk * 2 + lane / 16);
#pragma unroll
    for (int np = 0; np < Tr::kNT / 2; ++np) {
        const int m = lane / 8;
        b_off[np] = Tr::kBytesA + SwB::offset((m % 2) * 8 + lane % 8, wn * (Tr::kWN / 8) + 2 * np + m / 2);
    }

    // q = 2^(e_{i,t} - E_i) per row and n-tile, f16x2 / bf16x2. Thread tid computes
    // q of row tid (0 past t) for the next n-tile into a two-slot table in shared
    // memory past the pipeline, while the warps read the current n-tile's slot (see
    // the main loop); it keeps E_i and the next exponent it needs in registers. A
    // thread's fragments need q of its rows g + 8·j (j = 2·mi + hf: m16 tile mi, half
    // hf) of its warp's 64: a slot stores row r at (r % 8)·16 + r / 8, so those 8 are
    // contiguous (two 16-byte reads).
    uint32_t* sq = reinterpret_cast<uint32_t*>(smem + Tr::kPipeBytes);  // [2][kBM]
    const int64_t q_row = m0 + tid;
    const bool q_ok = scaled && q_row < p.t;
    const float q_row_e = q_ok ? rowf[q_row].y : 0.0f;
    float q_next_e = q_ok ? stats[q_row * p.n_tiles].x : kEmpty;
    // Writes q of n-tile `tile` into its slot and fetches the next tile's exponent
    // (threads past kBM rows, in the 64-row tile, have no row).
    const bool q_writer = Tr::kBM >= Tr::kThreads || tid < Tr::kBM;
    auto q_publish = [&](int64_t tile) {
        const float q = pow2_bits(pow2_exp(q_next_e - q_row_e));
        if (q_writer) sq[(tile % 2) * Tr::kBM + (tid % 8) * (Tr::kBM / 8) + tid / 8] = tf::pack2<T>(q, q);
        if (q_ok && tile + 1 < p.n_tiles) q_next_e = stats[q_row * p.n_tiles + tile + 1].x;
    };
    static_assert(Tr::kMT * 2 == 8 && Tr::kWM == 64, "a thread's rows: 8, one 16-byte pair of reads");
    // The 64-row tile scales h in shared memory instead: every warp of it loads all
    // 64 rows as A fragments, so scaling fragments costs one HMUL2 per HMMA. Each
    // thread scales the chunks it copied, after its own cp.async wait and before the
    // barrier that publishes the stage: q of its kPer rows (tid / kChunksA + i·kRowStep)
    // for the current n-tile, read from the slot at the n-tile's first step.
    constexpr bool kSmemQ = Tr::kBM == 64;
    using StreamA = TileStream<Tr::kBM, Tr::kChunksA, Tr::kThreads, T>;
    uint32_t qc[StreamA::kPer];
    auto scale_own = [&](unsigned char* st) {
#pragma unroll
        for (int i = 0; i < StreamA::kPer; ++i) {
            uint4* c = reinterpret_cast<uint4*>(st + sh.soff + i * StreamA::kStepBytes);
            uint4 v = *c;
            v.x = hmul2<T>(v.x, qc[i]);
            v.y = hmul2<T>(v.y, qc[i]);
            v.z = hmul2<T>(v.z, qc[i]);
            v.w = hmul2<T>(v.w, qc[i]);
            *c = v;
        }
    };
    uint32_t q2[Tr::kMT][2];  // q of the current n-tile, packed (1 for l2_norm_gelu)
#pragma unroll
    for (int mi = 0; mi < Tr::kMT; ++mi) q2[mi][0] = q2[mi][1] = tf::pack2<T>(1.0f, 1.0f);
    if (scaled) q_publish(0);  // read after the main loop's first barrier
    if (kSmemQ && scaled) __syncthreads();  // ... or before it, with kSmemQ

    float acc[Tr::kMT][Tr::kNT][4];
    zero_acc(acc);

    // One pipeline stage. Registers are short here (128 accumulators, 8 of packed q, 16
    // of copy sources), so only the A fragments run one m16 tile ahead of the mma.
    // `mts` m16 tiles take part (kMT, a constant, for a CTA with no rows past t: no
    // branch per tile). SCALE: the fragments take q (else they are used as loaded).
    auto mma_stage = [&](const unsigned char* st, int mts, auto scale) {
        auto frag_a = [&](int kk, int mi, uint32_t(&a)[4]) {
            tf::ldmatrix_x4(a, st + a_off[kk] + mi * kTileA16);
            if (decltype(scale)::value) {  // registers 0, 2: row g; 1, 3: row g + 8
                a[0] = hmul2<T>(a[0], q2[mi][0]);
                a[1] = hmul2<T>(a[1], q2[mi][1]);
                a[2] = hmul2<T>(a[2], q2[mi][0]);
                a[3] = hmul2<T>(a[3], q2[mi][1]);
            }
        };
#pragma unroll
        for (int kk = 0; kk < kKK; ++kk) {
            uint32_t bf[Tr::kNT / 2][4], af[2][4];
#pragma unroll
            for (int np = 0; np < Tr::kNT / 2; ++np)
                tf::ldmatrix_x4_trans(bf[np], st + b_off[np] + kk * kStepB16);
            if (0 < mts) frag_a(kk, 0, af[0]);
#pragma unroll
            for (int mi = 0; mi < Tr::kMT; ++mi) {
                if (mi + 1 < Tr::kMT && mi + 1 < mts) frag_a(kk, mi + 1, af[(mi + 1) % 2]);
                if (mi < mts) {
#pragma unroll
                    for (int np = 0; np < Tr::kNT / 2; ++np) {
                        const uint32_t b0[2] = {bf[np][0], bf[np][1]};
                        const uint32_t b1[2] = {bf[np][2], bf[np][3]};
                        tf::mma_m16n8k16<T>(acc[mi][2 * np], af[mi % 2], b0);
                        tf::mma_m16n8k16<T>(acc[mi][2 * np + 1], af[mi % 2], b1);
                    }
                }
            }
        }
    };

    // The main loop, in three forms decided once per CTA: FULL for a tile with no row
    // or column residue and `narrow` strides (every copy 16 bytes at a 32-bit offset,
    // every m16 tile computed), with or without the q scaling (SCALE: gelu_l2_norm and
    // softmax), else the general one, which always scales (q = 1 for l2_norm_gelu: an
    // exact no-op).
    auto mainloop = [&](auto full, auto scale) {
        constexpr bool kFull = decltype(full)::value;
        auto load_kt = [&](int kt) { load(kt, full); };
        ring_prologue<Tr::kStages>(k_tiles, load_kt);
        for (int kt = 0; kt < k_tiles; ++kt) {
            tf::cp_async_wait<Tr::kStages - 2>();
            if (kSmemQ && decltype(scale)::value && scaled) {
                if (kt % Tr::kStepsPerTile == 0) {  // a new n-tile: its slot, written a barrier ago
                    const int64_t tile = kt / Tr::kStepsPerTile;
                    const int r0 = tid / Tr::kChunksA;
#pragma unroll
                    for (int i = 0; i < StreamA::kPer; ++i) {
                        const int r = r0 + i * StreamA::kRowStep;
                        qc[i] = sq[(tile % 2) * Tr::kBM + (r % 8) * (Tr::kBM / 8) + r / 8];
                    }
                }
                scale_own(smem + (kt % Tr::kStages) * Tr::kStageBytes);
            }
            __syncthreads();
            if (kt + Tr::kStages - 1 < k_tiles) load(kt + Tr::kStages - 1, full);
            tf::cp_async_commit();
            if (kSmemQ && decltype(scale)::value && scaled && kt % Tr::kStepsPerTile == 0) {
                // the other slot was last read before this barrier (its n-tile's first step)
                const int64_t tile = kt / Tr::kStepsPerTile;
                if (tile + 1 < p.n_tiles) q_publish(tile + 1);
            }
            if (!kSmemQ && decltype(scale)::value && scaled && kt % Tr::kStepsPerTile == 0) {
                // Slot tile % 2 was written at least one barrier ago (before the loop or
                // at the previous n-tile's first step); the other slot was last read
                // kStepsPerTile >= 2 barriers ago, so it is free for the next tile.
                const int64_t tile = kt / Tr::kStepsPerTile;
                const uint4* sq_t = reinterpret_cast<const uint4*>(sq + (tile % 2) * Tr::kBM +
                                                                   (lane / 4) * (Tr::kBM / 8) + wm * (Tr::kWM / 8));
                const uint4 lo = sq_t[0], hi = sq_t[1];  // rows g + 8j, j = 0..3 and 4..7
                q2[0][0] = lo.x, q2[0][1] = lo.y, q2[1][0] = lo.z, q2[1][1] = lo.w;
                q2[2][0] = hi.x, q2[2][1] = hi.y, q2[3][0] = hi.z, q2[3][1] = hi.w;
                if (tile + 1 < p.n_tiles) q_publish(tile + 1);
            }
            mma_stage(smem + (kt % Tr::kStages) * Tr::kStageBytes, kFull ? Tr::kMT : mt_active,
                      Flag<decltype(scale)::value && !kSmemQ>());
        }
    };
    if (rows_a == Tr::kBM && cols_b >= Tr::kBN && sh.narrow && sv.narrow) {
        if (scaled)
            mainloop(Flag<true>(), Flag<true>());
        else
            mainloop(Flag<true>(), Flag<false>());
    } else {
        mainloop(Flag<false>(), Flag<true>());
    }
    tf::cp_async_wait<0>();
    __syncthreads();

    float* stage = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int mi = 0; mi < Tr::kMT; ++mi)
#pragma unroll
        for (int ni = 0; ni < Tr::kNT; ++ni)
            stage_fragment(stage, wm * Tr::kWM + mi * 16, wn * Tr::kWN + ni * 8, lane, acc[mi][ni]);
    __syncthreads();

    T* gy = reinterpret_cast<T*>(p.y);
    const int64_t c0 = n0 + 4 * lane;
    for (int r = warp; r < rows_a; r += Tr::kThreads / 32) {
        const int64_t row = m0 + r;
        const float rf = rowf[row].x;
        const float4 a = *reinterpret_cast<const float4*>(stage + r * kStageLd + 4 * lane);
        const float v[4] = {a.x * rf, a.y * rf, a.z * rf, a.w * rf};
        T* dst = gy + row * p.y_row_stride + c0;
        if (c0 + 3 < p.d_out) {
            store4<T>(dst, v);
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (c0 + j < p.d_out) dst[j] = tf::from_float<T>(v[j]);
        }
    }
}

// ------------------------------------------------------------------ SIMT kernel

__device__ __forceinline__ void out_simt(const tf_pattention_params& p) {
    using Tr = SimtTraits;
    TF_DYNAMIC_SMEM(unsigned char, smem);
    float* sa = reinterpret_cast<float*>(smem);  // [kBK][kLdA]
    float* sb = sa + Tr::kBK * Tr::kLdA;         // [kBK][kLdB]
    float* sq = sb + Tr::kBK * Tr::kLdB;         // [kBM]: q of each row for the current n-tile

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int64_t n0 = (int64_t)blockIdx.x * Tr::kBN;
    const int64_t m0 = (int64_t)blockIdx.y * Tr::kBM;
    const int rows_a = (int)min64(Tr::kBM, p.t - m0);
    const int cols_b = (int)min64(Tr::kBN, p.d_out - n0);
    const bool scaled = p.norm != TF_NORM_L2_NORM_GELU;
    const float* gh = reinterpret_cast<const float*>(p.h) + m0 * p.h_stride;
    const float* gv = reinterpret_cast<const float*>(p.v_p) + n0;
    const float2* stats = reinterpret_cast<const float2*>(p.stats);
    const float2* rowf = reinterpret_cast<const float2*>(p.rowf);

    float acc[Tr::kTM][Tr::kTN];
#pragma unroll
    for (int i = 0; i < Tr::kTM; ++i)
#pragma unroll
        for (int j = 0; j < Tr::kTN; ++j) acc[i][j] = 0.0f;

    for (int64_t k0 = 0; k0 < p.n; k0 += Tr::kBK) {
        if (k0 % kTileN == 0) {
            if (tid < Tr::kBM) {
                const int64_t row = m0 + tid;
                float q = 0.0f;
                if (row < p.t) q = scaled ? pow2_neg(stats[row * p.n_tiles + k0 / kTileN].x - rowf[row].y) : 1.0f;
                sq[tid] = q;
            }
            __syncthreads();
        }
        for (int e = tid; e < Tr::kBM * Tr::kBK; e += Tr::kThreads) {
            const int r = e / Tr::kBK, k = e % Tr::kBK;
            sa[k * Tr::kLdA + r] = (r < rows_a && k0 + k < p.n) ? gh[r * p.h_stride + k0 + k] * sq[r] : 0.0f;
        }
        for (int e = tid; e < Tr::kBK * Tr::kBN; e += Tr::kThreads) {
            const int k = e / Tr::kBN, c = e % Tr::kBN;
            sb[k * Tr::kLdB + c] = (c < cols_b && k0 + k < p.n) ? gv[(k0 + k) * p.v_row_stride + c] : 0.0f;
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

    float* gy = reinterpret_cast<float*>(p.y);
#pragma unroll
    for (int i = 0; i < Tr::kTM; ++i) {
        const int r = ty * Tr::kTM + i;
        if (r < rows_a) {
            const float rf = rowf[m0 + r].x;
#pragma unroll
            for (int j = 0; j < Tr::kTN; ++j) {
                const int c = tx + 16 * j;
                if (c < cols_b) gy[(m0 + r) * p.y_row_stride + n0 + c] = acc[i][j] * rf;
            }
        }
    }
}

}  // namespace tf_pattention_out

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(128, 2) pattention_out_f16(const tf_pattention_params p) {
    tf_pattention_out::out_mma<__half, 128>(p);
}
extern "C" __global__ void __launch_bounds__(128, 2) pattention_out_bf16(const tf_pattention_params p) {
    tf_pattention_out::out_mma<__nv_bfloat16, 128>(p);
}
extern "C" __global__ void __launch_bounds__(128, 2) pattention_out64_f16(const tf_pattention_params p) {
    tf_pattention_out::out_mma<__half, 64>(p);
}
extern "C" __global__ void __launch_bounds__(128, 2) pattention_out64_bf16(const tf_pattention_params p) {
    tf_pattention_out::out_mma<__nv_bfloat16, 64>(p);
}
extern "C" __global__ void __launch_bounds__(256) pattention_out_f32(const tf_pattention_params p) {
    tf_pattention_out::out_simt(p);
}
