// XOR swizzle of 16-byte chunks in a shared-memory tile of rows, so that the
// 8 row addresses of one ldmatrix 8x8 matrix (8 consecutive rows, the same
// logical chunk) fall in 8 different 16-byte bank groups of a 128-byte line.
//
// A row holds kChunks 16-byte chunks and rows are packed (stride kChunks * 16
// bytes, no padding). Let G be the largest power of two dividing kChunks,
// capped at 8. Row r starts at bank group (r * kChunks) mod 8, which cycles
// through 8 / G values, so the rows r, r + 8/G, ... collide; XOR-ing the low
// log2(G) bits of the chunk index with (r / (8/G)) mod G separates them:
//   kChunks 8, 16 (head dim 64, 128): chunk ^ (r & 7)        (the usual one)
//   kChunks 12     (head dim 96):     chunk ^ ((r >> 1) & 3)
//   kChunks 10     (head dim 80):     chunk ^ ((r >> 2) & 1)
//   odd kChunks:                      identity (odd strides never collide)
// The XOR touches only bits below G and kChunks is a multiple of G, so every
// row is permuted within itself: the mapping is a bijection on the tile.
// Writers (cp.async) and readers (ldmatrix, epilogue) must both use it.
#pragma once

namespace tf {

template <int kChunks>
struct Swizzle {
    static_assert(kChunks > 0, "a row needs at least one 16-byte chunk");
    static constexpr int kGroup = (kChunks % 8 == 0) ? 8 : (kChunks % 4 == 0) ? 4 : (kChunks % 2 == 0) ? 2 : 1;
    static constexpr int kShift = (kGroup == 8) ? 0 : (kGroup == 4) ? 1 : (kGroup == 2) ? 2 : 0;
    static constexpr int kRowBytes = kChunks * 16;

    // Physical chunk of logical chunk `c` in row `r`.
    __device__ __forceinline__ static int chunk(int r, int c) { return c ^ ((r >> kShift) & (kGroup - 1)); }
    // Byte offset of logical chunk `c` of row `r` from the tile's start.
    __device__ __forceinline__ static int offset(int r, int c) { return r * kRowBytes + chunk(r, c) * 16; }
};

}  // namespace tf
