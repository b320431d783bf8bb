// gemm_tc.cu: the backward's products on tensor cores. C [m, n] f32 = Σ_l A(i, l)·B(j, l)
// for 16-bit A and B (f16 or bf16, the same type), f32 accumulation, with each operand
// stored either row-wise, A(i, l) = a[i·a_rs + l] ("r": contiguous along the sum), or
// column-wise, A(i, l) = a[i + l·a_cs] ("c": the transpose of a row-major matrix,
// contiguous along i). The backward of Pattention needs all four pairs: A = X·K_Pᵀ
// and dS = dY·V_Pᵀ are (r, r), dX = dA·K_P is (r, c), dK_P = dAᵀ·X and
// dV_P = Sᵀ·dY are (c, c); the unembedding's backward is (r, c) and (c, c).
//
// Kernels gemm_tc_{f16,bf16}_{rr,rc,cr,cc} (A's layout, then B's), tf_gemm_params:
//   grid (ceil(n / 128), ceil(m / 128)), 128 threads = 4 warps in 2 x 2, CTA tile
//   128 x 128, warp tile 64 x 64 (4 m16 x 8 n8 mma.sync m16n8k16 tiles, 128 f32
//   accumulators a thread), k-step 32, 4-stage cp.async ring of 16 KB stages
//   (TF_GEMM_TC_SMEM). A row-wise operand's tile is [128][32] (64-byte rows, read
//   with ldmatrix.x4); a column-wise one's is [32][128] (256-byte rows, read with
//   ldmatrix.x4.trans, which hands each lane the transposed fragment). Both are
//   XOR-swizzled by 16-byte chunk (tf::Swizzle), so every ldmatrix phase and every
//   cp.async row hits distinct banks. Full k-tiles stream through precomputed copies
//   (tf::pat::TileStream); the partial last one (k % 32) goes through load_tile's
//   zero filling, and so do rows and columns past m and n. The fragments of k16
//   step 1 load before the mma of step 0. The epilogue writes C from the
//   accumulators (8-byte stores where C's row stride is even).
// Split over the sum (k_splits > 1, when the m x n tiles leave most SMs idle:
//   dK_P and dV_P sum over every token into small matrices): CTA z runs the same
//   main loop over k-steps [z·s, z·s + s) (s = split_k_tiles; only the last slice
//   can hold the partial k-step) and writes C (z = 0) or its own f32 partial
//   (z > 0); then gemm_tc_reduce: grid-stride over C's elements, 256 threads,
//   C += partial_1, += partial_2, ... in slice order (deterministic).
// Preconditions (the host's plan checks them, else it runs the SIMT gemm): both
// operands 16-byte aligned, their non-unit stride a multiple of 8 elements.
// Deterministic: every C element is one CTA's sum over l in k-step order.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/async.cuh"
#include "tf/mma.cuh"
#include "tf/smem.cuh"
#include "tf/swizzle.cuh"
#include "tf/pattention_common.cuh"

namespace tf_gemm_tc {

using namespace tf::pat;

// The tile of the forward's scores product (docs/kernel-design.md "Pattention":
// 128 x 128, k-step 32, 4 warps 2 x 2, 4 stages = 64 KB, 2 CTAs per SM on A100).
struct Traits {
    static constexpr int kBM = 128, kBN = 128, kBK = 32;
    static constexpr int kStages = 4;
    static constexpr int kWarpsM = 2, kWarpsN = 2;
    static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
    static constexpr int kWM = kBM / kWarpsM, kWN = kBN / kWarpsN;  // 64 x 64
    static constexpr int kMT = kWM / 16, kNT = kWN / 8;
    static constexpr int kKK = kBK / 16;  // k16 steps per stage
    static constexpr int kBytesA = kBM * kBK * 2, kBytesB = kBN * kBK * 2;
    static constexpr int kStageBytes = kBytesA + kBytesB;
    static constexpr int kSmemBytes = kStages * kStageBytes;
    static_assert(kSmemBytes == TF_GEMM_TC_SMEM, "tf_kernels.h states the launch's shared memory");
    static_assert(kBM == TF_GEMM_TC_TILE && kBN == TF_GEMM_TC_TILE, "tf_kernels.h states the tile");
    static_assert(kKK == 2 && kNT % 2 == 0, "two k16 steps a stage; ldmatrix.x4 loads pairs of n8 tiles");
};

// One operand's tiles: EXT rows (i or j) of the CTA by kBK of the sum. ROWWISE: stored
// [EXT][kBK] (the global rows are the operand's rows), else [kBK][EXT] (the global rows
// run along l). `g` is the CTA's first element (row i0 / j0, l = 0), `ld` the non-unit
// stride, `ext` the rows (i or j) left from i0 / j0, `k` the sum's length.
template <typename T, int EXT, bool ROWWISE>
struct Operand {
    static constexpr int kBK = Traits::kBK, kThreads = Traits::kThreads;
    static constexpr int kRows = ROWWISE ? EXT : kBK;
    static constexpr int kChunks = (ROWWISE ? kBK : EXT) / 8;
    using Sw = tf::Swizzle<kChunks>;
    using Stream = TileStream<kRows, kChunks, kThreads, T>;

    const T* g;
    int64_t ld;
    int ext;
    Stream stream;  // the full k-tiles, from l = 0

    __device__ __forceinline__ Operand(const T* g_, int64_t ld_, int ext_, int tid)
        : g(g_), ld(ld_), ext(ext_),
          stream(g_, ld_, ROWWISE ? ext_ : kBK, ROWWISE ? (int64_t)kBK : (int64_t)ext_, tid) {}

    // Copies k-tile kt into `s`: the next full tile of the stream (FULL: and no
    // row residue, every copy 16 bytes at a 32-bit offset), or the partial one at
    // l0 = kt·kBK, zero-filled past k.
    template <bool FULL>
    __device__ __forceinline__ void full(unsigned char* s) {
        stream.template issue<FULL>(s);
        stream.advance(ROWWISE ? (int64_t)kBK : kBK * ld);
    }
    __device__ __forceinline__ void partial(unsigned char* s, int64_t l0, int64_t k, int tid) const {
        if (ROWWISE)
            load_tile<kRows, kChunks, kThreads>(s, g + l0, ld, ext, k - l0, tid);
        else
            load_tile<kRows, kChunks, kThreads>(s, g + l0 * ld, ld, (int)min64(kBK, k - l0), ext, tid);
    }

    // The lane's ldmatrix address (byte offset in the tile) for the 16-row block
    // `base` (+ 16·b for block b: see at()) and k16 step kk. Matrix q = lane / 8 of the
    // x4 load: for the A operand (rows = m) (m lo, k lo), (m hi, k lo), (m lo, k hi),
    // (m hi, k hi); for B (rows = n) (n lo, k lo), (n lo, k hi), (n hi, k lo), (n hi, k hi).
    template <bool IS_A>
    __device__ __forceinline__ static int lane_offset(int base, int kk, int lane) {
        const int q = lane / 8, r = lane % 8;
        const int hi_mn = IS_A ? q % 2 : q / 2;  // second 8 rows of the 16
        const int hi_k = IS_A ? q / 2 : q % 2;   // second 8 of the k16 step
        if (ROWWISE) return Sw::offset(base + 8 * hi_mn + r, kk * 2 + hi_k);
        // [k][EXT] tile, read transposed: row = l, chunk = 8 rows of the operand
        return Sw::offset(kk * 16 + 8 * hi_k + r, base / 8 + hi_mn);
    }
    // Offset of 16-row block b from block 0's: rows 1 KB apart (a row-wise tile's
    // swizzle depends on the row's low bits only), or chunks 2b further on in a
    // column-wise tile, where the XOR swizzle touches the chunk's low 3 bits and
    // base / 8 + hi_mn has 2b clear in them: (c + 2b) ^ s = (c ^ s) ^ 2b.
    __device__ __forceinline__ static int at(int off, int b) {
        return ROWWISE ? off + b * 16 * Sw::kRowBytes : off ^ (b << 5);
    }
    __device__ __forceinline__ static void ldm(uint32_t (&r)[4], const unsigned char* p) {
        if (ROWWISE)
            tf::ldmatrix_x4(r, p);
        else
            tf::ldmatrix_x4_trans(r, p);
    }
};

template <typename T, bool A_ROWS, bool B_ROWS>
__device__ __forceinline__ void gemm_tc(const tf_gemm_params& p) {
    using Tr = Traits;
    using OpA = Operand<T, Tr::kBM, A_ROWS>;
    using OpB = Operand<T, Tr::kBN, B_ROWS>;
    TF_DYNAMIC_SMEM(unsigned char, smem);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wm = warp / Tr::kWarpsN, wn = warp % Tr::kWarpsN;
    const int64_t m0 = (int64_t)blockIdx.y * Tr::kBM, n0 = (int64_t)blockIdx.x * Tr::kBN;
    const int rows_a = (int)min64(Tr::kBM, p.m - m0), rows_b = (int)min64(Tr::kBN, p.n - n0);
    // This CTA's slice of the sum: [k_begin, k_begin + k_len) (all of it unsplit).
    const int64_t k_begin = p.k_splits > 1 ? (int64_t)blockIdx.z * p.split_k_tiles * Tr::kBK : 0;
    const int64_t k_len = p.k_splits > 1 ? min64((int64_t)p.split_k_tiles * Tr::kBK, p.k - k_begin) : p.k;
    const int64_t lda = A_ROWS ? p.a_rs : p.a_cs, ldb = B_ROWS ? p.b_rs : p.b_cs;
    const T* a = reinterpret_cast<const T*>(p.a) + m0 * (A_ROWS ? p.a_rs : 1) + k_begin * (A_ROWS ? 1 : lda);
    const T* b = reinterpret_cast<const T*>(p.b) + n0 * (B_ROWS ? p.b_rs : 1) + k_begin * (B_ROWS ? 1 : ldb);
    OpA opa(a, lda, rows_a, tid);
    OpB opb(b, ldb, rows_b, tid);
    const int k_tiles = (int)((k_len + Tr::kBK - 1) / Tr::kBK);
    const int k_full = (int)(k_len / Tr::kBK);

    auto load = [&](int kt, auto whole) {
        constexpr bool kWhole = decltype(whole)::value;
        unsigned char* s = smem + (kt % Tr::kStages) * Tr::kStageBytes;
        if (kt < k_full) {
            opa.template full<kWhole>(s);
            opb.template full<kWhole>(s + Tr::kBytesA);
        } else {
            opa.partial(s, (int64_t)kt * Tr::kBK, k_len, tid);
            opb.partial(s + Tr::kBytesA, (int64_t)kt * Tr::kBK, k_len, tid);
        }
    };

    int a_off[Tr::kKK], b_off[Tr::kKK];
#pragma unroll
    for (int kk = 0; kk < Tr::kKK; ++kk) {
        a_off[kk] = OpA::template lane_offset<true>(wm * Tr::kWM, kk, lane);
        b_off[kk] = OpB::template lane_offset<false>(wn * Tr::kWN, kk, lane);
    }

    float acc[Tr::kMT][Tr::kNT][4];
    zero_acc(acc);

    auto mma_stage = [&](const unsigned char* st) {
        uint32_t af[2][Tr::kMT][4], bf[2][Tr::kNT / 2][4];
        auto frags = [&](int kk, uint32_t(&fa)[Tr::kMT][4], uint32_t(&fb)[Tr::kNT / 2][4]) {
#pragma unroll
            for (int np = 0; np < Tr::kNT / 2; ++np)
                OpB::ldm(fb[np], st + Tr::kBytesA + OpB::at(b_off[kk], np));
#pragma unroll
            for (int mi = 0; mi < Tr::kMT; ++mi) OpA::ldm(fa[mi], st + OpA::at(a_off[kk], mi));
        };
        frags(0, af[0], bf[0]);
#pragma unroll
        for (int kk = 0; kk < Tr::kKK; ++kk) {
            if (kk + 1 < Tr::kKK) frags(kk + 1, af[(kk + 1) % 2], bf[(kk + 1) % 2]);
            mma_k16<T>(acc, af[kk % 2], bf[kk % 2], Tr::kMT);
        }
    };

    // Two forms of the main loop, decided once per CTA: WHOLE for a CTA with all
    // 128 rows of A and of B and `narrow` streams (plain 16-byte copies), else the
    // general one (per-copy source sizes).
    auto mainloop = [&](auto whole) {
        auto load_kt = [&](int kt) { load(kt, whole); };
        ring_prologue<Tr::kStages>(k_tiles, load_kt);
        for (int kt = 0; kt < k_tiles; ++kt) {
            tf::cp_async_wait<Tr::kStages - 2>();
            __syncthreads();  // tile kt landed for all; stage (kt - 1) % S is free
            if (kt + Tr::kStages - 1 < k_tiles) load(kt + Tr::kStages - 1, whole);
            tf::cp_async_commit();
            mma_stage(smem + (kt % Tr::kStages) * Tr::kStageBytes);
        }
    };
    if (rows_a == Tr::kBM && rows_b == Tr::kBN && opa.stream.narrow && opb.stream.narrow)
        mainloop(Flag<true>());
    else
        mainloop(Flag<false>());
    tf::cp_async_wait<0>();

    // C from the accumulators: lane (g, c) = (lane / 4, lane % 4) holds rows g and
    // g + 8, columns 2c and 2c + 1 of each m16n8 tile.
    // slice 0 (or the unsplit sum) to C, slice z > 0 to its partial [m, n]
    const bool to_c = blockIdx.z == 0;
    float* c = to_c ? reinterpret_cast<float*>(p.c) : reinterpret_cast<float*>(p.partial) + ((int64_t)blockIdx.z - 1) * p.m * p.n;
    const int64_t ldc = to_c ? p.c_rs : p.n;
    const bool pairs = (ldc % 2) == 0;
#pragma unroll
    for (int mi = 0; mi < Tr::kMT; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int64_t row = m0 + wm * Tr::kWM + mi * 16 + lane / 4 + 8 * h;
            if (row >= p.m) continue;
            float* crow = c + row * ldc;
#pragma unroll
            for (int nt = 0; nt < Tr::kNT; ++nt) {
                const int64_t col = n0 + wn * Tr::kWN + nt * 8 + 2 * (lane % 4);
                const float v0 = acc[mi][nt][2 * h], v1 = acc[mi][nt][2 * h + 1];
                if (pairs && col + 1 < p.n) {
                    *reinterpret_cast<float2*>(crow + col) = make_float2(v0, v1);
                } else {
                    if (col < p.n) crow[col] = v0;
                    if (col + 1 < p.n) crow[col + 1] = v1;
                }
            }
        }
    }
}

// C += the k_splits - 1 partials, in slice order.
__device__ __forceinline__ void reduce(const tf_gemm_params& p) {
    const int64_t total = p.m * p.n;
    const float* part = reinterpret_cast<const float*>(p.partial);
    float* c = reinterpret_cast<float*>(p.c);
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = e / p.n, col = e % p.n;
        float v = c[row * p.c_rs + col];
        for (int z = 1; z < p.k_splits; ++z) v += part[(z - 1) * total + e];
        c[row * p.c_rs + col] = v;
    }
}

}  // namespace tf_gemm_tc

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(256) gemm_tc_reduce(const tf_gemm_params p) {
    tf_gemm_tc::reduce(p);
}
extern "C" __global__ void __launch_bounds__(128) gemm_tc_f16_rr(const tf_gemm_params p) {
    tf_gemm_tc::gemm_tc<__half, true, true>(p);
}
extern "C" __global__ void __launch_bounds__(128) gemm_tc_f16_rc(const tf_gemm_params p) {
    tf_gemm_tc::gemm_tc<__half, true, false>(p);
}
extern "C" __global__ void __launch_bounds__(128) gemm_tc_f16_cr(const tf_gemm_params p) {
    tf_gemm_tc::gemm_tc<__half, false, true>(p);
}
extern "C" __global__ void __launch_bounds__(128) gemm_tc_f16_cc(const tf_gemm_params p) {
    tf_gemm_tc::gemm_tc<__half, false, false>(p);
}
extern "C" __global__ void __launch_bounds__(128) gemm_tc_bf16_rr(const tf_gemm_params p) {
    tf_gemm_tc::gemm_tc<__nv_bfloat16, true, true>(p);
}
extern "C" __global__ void __launch_bounds__(128) gemm_tc_bf16_rc(const tf_gemm_params p) {
    tf_gemm_tc::gemm_tc<__nv_bfloat16, true, false>(p);
}
extern "C" __global__ void __launch_bounds__(128) gemm_tc_bf16_cr(const tf_gemm_params p) {
    tf_gemm_tc::gemm_tc<__nv_bfloat16, false, true>(p);
}
extern "C" __global__ void __launch_bounds__(128) gemm_tc_bf16_cc(const tf_gemm_params p) {
    tf_gemm_tc::gemm_tc<__nv_bfloat16, false, false>(p);
}
