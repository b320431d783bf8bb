// Shared-memory tiles of the tensor-core attention kernels (attention.cu, the
// forward; attention_backward_tc.cu, the backward): cp.async loads of swizzled
// rows x head-dim tiles, the ldmatrix offset of a k16 step, and a register pin.
// `Tr` is the kernel's traits: kChunks (16-byte chunks a row, 8..16) and
// kThreads (128).
#pragma once
#include "tf/cuda_types.cuh"
#include "tf/async.cuh"
#include "tf/swizzle.cuh"
#include "tf/attention_common.cuh"

namespace tf_attn {

// An empty asm that "changes" x: the value becomes loop-carried for the compiler,
// so ptxas keeps it in its register instead of recomputing it from %tid in every
// K block (it did: ~8 instructions per block and operand at hd 64). Emits nothing.
__device__ __forceinline__ void keep_in_register(uint32_t& x) {
#if defined(__CUDA_ARCH__)
    asm volatile("" : "+r"(x));
#else
    (void)x;
#endif
}

// Issues the cp.async copies of a ROWS x HD tile (rows [0, rows_valid) of `g`, row
// stride `ld` elements) into the swizzled tile `s`; rows past rows_valid are
// zero-filled (their source address is clamped to `g`, never read).
// Thread mapping: 8 threads per row, 16 rows per pass; thread t copies chunks
// t % 8 and t % 8 + 8 (if the row has it) of rows t / 8 + 16 i. Rows 16 apart have
// the same swizzle, so a thread's shared offsets are one base plus constants and
// its global addresses one base plus multiples of 16 * ld.
template <typename Tr, int ROWS, typename T>
__device__ __forceinline__ void load_tile(unsigned char* s, const T* g, int64_t ld, int64_t rows_valid, int tid) {
    using Sw = tf::Swizzle<Tr::kChunks>;
    constexpr int kPasses = ROWS / 16;
    static_assert(ROWS % 16 == 0 && Tr::kThreads == 128, "16 rows of 8 threads per pass");
    static_assert(Tr::kChunks >= 8 && Tr::kChunks <= 16, "one or two chunks per thread and row");
    const int r0 = (tid >> 3) & 15, c0 = tid & 7;
    const int rv = (int)min64(rows_valid, ROWS);  // rows_valid >= 1: the tile starts inside the tensor
    const bool two = c0 + 8 < Tr::kChunks;
    unsigned char* st = s + Sw::offset(r0, c0);
    const T* gt = g + r0 * ld + c0 * 8;
    const int64_t ld16 = 16 * ld;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
        const bool ok = r0 + 16 * i < rv;
        const T* src = ok ? gt + i * ld16 : g;
        const int bytes = ok ? 16 : 0;
        tf::cp_async_16(st + 16 * i * Sw::kRowBytes, src, bytes);
        if (two) tf::cp_async_16(st + 16 * i * Sw::kRowBytes + 128, src + (ok ? 64 : 0), bytes);
    }
}

// This thread's place in load_tile's copy mapping (row r0 of 16, chunk
// c0 and, when the row has it, c0 + 8), for load_tile_full.
struct Lanes {
    int r0, c0;
    uint32_t soff;
    bool two;
};
template <typename Tr>
__device__ __forceinline__ Lanes lanes(int tid) {
    using Sw = tf::Swizzle<Tr::kChunks>;
    const int r0 = (tid >> 3) & 15, c0 = tid & 7;
    return {r0, c0, (uint32_t)Sw::offset(r0, c0), c0 + 8 < Tr::kChunks};
}

// The same copies for a tile whose ROWS rows all lie inside the tensor (every K/V
// block but the T_k tail): `st` is the thread's swizzled shared address (the tile
// plus Sw::offset(r0, c0)) and `gt` its global source (row r0, chunk c0), both
// computed once before the K-block loop; no predicate, no clamping.
template <typename Tr, int ROWS, typename T>
__device__ __forceinline__ void load_tile_full(unsigned char* st, const T* gt, int64_t ld16, bool two) {
    using Sw = tf::Swizzle<Tr::kChunks>;
    constexpr int kPasses = ROWS / 16;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
        tf::cp_async_16(st + 16 * i * Sw::kRowBytes, gt, 16);
        if (two) tf::cp_async_16(st + 16 * i * Sw::kRowBytes + 128, gt + 64, 16);
        gt += ld16;
    }
}

// Byte offset, inside a swizzled tile, of the 16-byte chunk 2 * step + j of a row
// when `off0` is that of chunk j (j in {0, 1}). The swizzle XORs the low
// log2(kGroup) bits of the chunk index with a function of the row, so chunk
// 2 * step + j lands at off0 with the chunk bits 1 .. log2(kGroup) - 1 flipped by
// step % (kGroup / 2), plus whole groups of kGroup chunks for step / (kGroup / 2):
// one LOP3 (or none) per step and per operand instead of recomputing the swizzle.
// Rows are multiples of kGroup chunks, so the XOR never reaches the row bits.
template <typename Sw>
__device__ __forceinline__ uint32_t step_offset(uint32_t off0, int step) {
    constexpr int kHalf = Sw::kGroup / 2;
    static_assert(kHalf >= 1, "head dims are multiples of 16: an even number of chunks a row");
    return (off0 ^ (uint32_t)(32 * (step % kHalf))) + (uint32_t)(32 * kHalf * (step / kHalf));
}

}  // namespace tf_attn
