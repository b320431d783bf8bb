// block.cu: the small kernels of the rest of the TokenFormer block
// (docs/tokenformer.md, "The TokenFormer block"), one section each:
//
//   layer_norm_*     y = (x - mean) / sqrt(var + eps) [* weight + bias] per row of
//                    x [t, d]: the block's LN (no affine) and the final LN (affine).
//                    f32 statistics, two passes (mean, then the biased variance).
//   rotary_*         GPT-NeoX rotate_half (non-interleaved) on the first rot_dim dims
//                    of each head of x [t, heads * head_dim], in place; row i at
//                    position pos_offset + i.
//   residual_add_*   y += x, both [t, d].
//   embedding_*      y[i, :] = table[tokens[i], :] (bit-exact gather).
//   head_copy_*      [t, heads, width] blocks copied bit-exactly to a row offset that
//                    may be read from device memory (the KV-cache append of a captured
//                    decode step, the head-dim padding copies).
//
// Thread mapping: 256-thread blocks everywhere.
// - layer norm: one warp per row (8 rows per block, the warps striding over the rows
//   when the grid is capped); each pass strides the row in
//   16-byte chunks (8 elements for f16/bf16, 4 for f32) when the pointers, strides
//   and d allow, else element by element; the sums reduce by warp butterflies
//   (tf/reduce.cuh), so every lane holds the statistics with no shared memory and no
//   barrier. Passes 2 and 3 re-read the row from L1/L2 (as llm.c's layernorm kernel 3).
// - rotary: one thread per rotated pair (row, head, j), grid-stride, j fastest so a
//   warp's loads of x1 and x2 are contiguous runs of `half` elements.
// - head copy: one warp per (pair, row, head), the lanes over its width.
// - residual add and embedding: one warp per row as well, the warps striding over the
//   rows (grid-stride) and the lanes over the row in 16-byte chunks (elements when
//   unaligned): no index division (64-bit division is a call that spilled on sm_80 in a
//   flat grid-stride version), and the token id is read once per row.
// Every index that can pass 2^31 is 64-bit.
//
// Rotary angle accuracy: θ = pos · inv_freq reaches 16000 rad at position 16000 for
// j = 0; an f32 product is off by up to half an ulp of θ (4.9e-4 rad) and sin/cos by as
// much: measured 2.7e-4 .. 5.7e-4 max abs error at positions 15999..16128 (relative
// Frobenius error 5e-5 .. 1.1e-4 on the rotated dims), 5x over the f32 tolerance of
// docs/design.md. So the host computes inv_freq[j] / 2π in f64 and passes it split into two
// floats (hi + lo); the kernel forms pos · hi exactly (the product plus its fma error),
// drops whole turns (p - rint(p) is exact), adds the small terms and calls sincosf on an
// angle in [-π, π]: 2.7e-7 max abs error at the same positions (relative 1e-7). Exact
// while pos < 2^24 (pos is an exact f32 integer); the host checks.
//
// Preconditions (checked by the host plan, crates/tf-host/src/ops/block.rs): shapes as
// in tf_kernels.h, rows inner-contiguous, outputs not aliasing inputs, token ids < vocab.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/reduce.cuh"

namespace tf_block {

constexpr int THREADS = 256;
constexpr int ROWS = THREADS / 32;  // layer norm, add, embedding: rows per block, a warp each

// ------------------------------------------------------------------ helpers

__device__ __forceinline__ bool aligned16(uint64_t addr) { return (addr & 15u) == 0; }

// Elements of T in one 16-byte chunk.
template <typename T> constexpr int vec16() { return 16 / (int)sizeof(T); }

// Whether [rows, d] at `addr` with `row_stride` can be read in 16-byte chunks.
template <typename T>
__device__ __forceinline__ bool vec_ok(uint64_t addr, int64_t row_stride, int64_t d) {
    constexpr int V = vec16<T>();
    return aligned16(addr) && row_stride % V == 0 && d % V == 0;
}

// Rows of the launch owned by this warp: warp w of block b takes rows b*8 + w,
// then strides by the grid's warps.
struct WarpRows {
    int64_t first, step;
    int lane;
};
__device__ __forceinline__ WarpRows warp_rows() {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    return WarpRows{(int64_t)blockIdx.x * ROWS + warp, (int64_t)gridDim.x * ROWS, lane};
}

// V consecutive elements at p as f32: one 16-byte access when V > 1.
template <typename T, int V>
__device__ __forceinline__ void load(const T* p, float (&f)[V]) {
    if constexpr (V == 1) {
        f[0] = tf::to_float<T>(p[0]);
    } else {
        static_assert(V * sizeof(T) == 16, "a vector access is 16 bytes");
        const uint4 u = *reinterpret_cast<const uint4*>(p);
        T e[V];
        memcpy(e, &u, 16);
#pragma unroll
        for (int k = 0; k < V; ++k) f[k] = tf::to_float<T>(e[k]);
    }
}

template <typename T, int V>
__device__ __forceinline__ void store(T* p, const float (&f)[V]) {
    if constexpr (V == 1) {
        p[0] = tf::from_float<T>(f[0]);
    } else {
        static_assert(V * sizeof(T) == 16, "a vector access is 16 bytes");
        T e[V];
#pragma unroll
        for (int k = 0; k < V; ++k) e[k] = tf::from_float<T>(f[k]);
        uint4 u;
        memcpy(&u, e, 16);
        *reinterpret_cast<uint4*>(p) = u;
    }
}

// ------------------------------------------------------------------ layer norm

// One row, by one warp; V elements per access.
template <typename T, int V>
__device__ void layer_norm_row(const tf_layer_norm_params& p, int64_t row, int lane) {
    const T* x = reinterpret_cast<const T*>(p.x) + row * p.x_row_stride;
    T* y = reinterpret_cast<T*>(p.y) + row * p.y_row_stride;
    const T* w = reinterpret_cast<const T*>(p.weight);
    const T* b = reinterpret_cast<const T*>(p.bias);
    const float n = (float)p.d;  // __fdividef (2 ulp): an IEEE division calls a slow path that spilled

    float s = 0.f;
    for (int64_t c = (int64_t)lane * V; c < p.d; c += 32 * V) {
        float f[V];
        load<T, V>(x + c, f);
#pragma unroll
        for (int k = 0; k < V; ++k) s += f[k];
    }
    const float mean = __fdividef(tf::warp_sum(s), n);

    float q = 0.f;
    for (int64_t c = (int64_t)lane * V; c < p.d; c += 32 * V) {
        float f[V];
        load<T, V>(x + c, f);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float e = f[k] - mean;
            q = fmaf(e, e, q);
        }
    }
    const float den = __fdividef(tf::warp_sum(q), n) + p.eps;
    const float rstd = den > 0.f ? rsqrtf(den) : 0.f;  // var + eps == 0: a zero row (as tf-ref)

    for (int64_t c = (int64_t)lane * V; c < p.d; c += 32 * V) {
        float f[V], g[V], h[V];
        load<T, V>(x + c, f);
        if (w != nullptr) {
            load<T, V>(w + c, g);
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k) g[k] = 1.f;
        }
        if (b != nullptr) {
            load<T, V>(b + c, h);
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k) h[k] = 0.f;
        }
#pragma unroll
        for (int k = 0; k < V; ++k) f[k] = fmaf((f[k] - mean) * rstd, g[k], h[k]);
        store<T, V>(y + c, f);
    }
}

template <typename T>
__device__ void layer_norm(const tf_layer_norm_params& p) {
    const WarpRows w = warp_rows();
    const bool vec = vec_ok<T>(p.x, p.x_row_stride, p.d) && vec_ok<T>(p.y, p.y_row_stride, p.d) &&
                     (p.weight == 0 || aligned16(p.weight)) && (p.bias == 0 || aligned16(p.bias));
    // Row loops are warp-uniform: the shuffles of the reductions always see full warps.
    for (int64_t r = w.first; r < p.t; r += w.step) {
        if (vec) {
            layer_norm_row<T, vec16<T>()>(p, r, w.lane);
        } else {
            layer_norm_row<T, 1>(p, r, w.lane);
        }
    }
}

// ------------------------------------------------------------------ rotary

constexpr float kTwoPi = 6.28318530717958647692f;

// sin and cos of 2π · pos · (hi + lo): pos · hi is split into its rounded value p and
// the exact error e (fma); p - rint(p) is exact; what remains is a fraction of a turn.
// __fmul_rn / __fsub_rn / __fadd_rn keep nvcc from contracting the steps into fmas
// (which would count e twice).
__device__ __forceinline__ void rotary_sincos(float pos, float hi, float lo, float* s, float* c) {
    const float p = __fmul_rn(pos, hi);
    const float e = fmaf(pos, hi, -p);
    const float frac = __fsub_rn(p, rintf(p));
    const float turns = __fadd_rn(frac, fmaf(pos, lo, e));
    sincosf(turns * kTwoPi, s, c);
}

template <typename T>
__device__ void rotary(const tf_rotary_params& p) {
    T* x = reinterpret_cast<T*>(p.x);
    int64_t pos0 = p.pos_offset;
    if (p.pos_dev != 0) {
        const int64_t add = *reinterpret_cast<const int32_t*>(p.pos_dev);
        pos0 += add < 0 ? 0 : (add > p.pos_dev_max ? p.pos_dev_max : add);
    }
    const int64_t per_row = (int64_t)p.heads * p.half;
    const int64_t total = p.t * per_row;
    const int64_t nthreads = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += nthreads) {
        const int64_t row = i / per_row;
        const int rem = (int)(i - row * per_row);
        const int head = rem / p.half, j = rem - head * p.half;
        float s, c;
        rotary_sincos((float)(pos0 + row), p.turns_hi[j], p.turns_lo[j], &s, &c);
        T* h = x + row * p.row_stride + (int64_t)head * p.head_dim;
        const float a = tf::to_float<T>(h[j]), b = tf::to_float<T>(h[j + p.half]);
        h[j] = tf::from_float<T>(a * c - b * s);
        h[j + p.half] = tf::from_float<T>(b * c + a * s);
    }
}

// ------------------------------------------------------------------ residual add

template <typename T, int V>
__device__ void add_rows(const tf_residual_add_params& p) {
    const WarpRows w = warp_rows();
    for (int64_t r = w.first; r < p.t; r += w.step) {
        T* y = reinterpret_cast<T*>(p.y) + r * p.y_row_stride;
        const T* x = reinterpret_cast<const T*>(p.x) + r * p.x_row_stride;
        for (int64_t c = (int64_t)w.lane * V; c < p.d; c += 32 * V) {
            float a[V], b[V];
            load<T, V>(y + c, a);
            load<T, V>(x + c, b);
#pragma unroll
            for (int k = 0; k < V; ++k) a[k] += b[k];
            store<T, V>(y + c, a);
        }
    }
}

template <typename T>
__device__ void residual_add(const tf_residual_add_params& p) {
    if (vec_ok<T>(p.y, p.y_row_stride, p.d) && vec_ok<T>(p.x, p.x_row_stride, p.d)) {
        add_rows<T, vec16<T>()>(p);
    } else {
        add_rows<T, 1>(p);
    }
}

// ------------------------------------------------------------------ embedding

// Raw chunks of W bytes: the gather copies bits, never converts.
template <int W> struct Chunk;
template <> struct Chunk<16> { using type = uint4; };
template <> struct Chunk<4> { using type = uint32_t; };
template <> struct Chunk<2> { using type = uint16_t; };

template <typename T, int V>
__device__ void gather_rows(const tf_embedding_params& p) {
    using C = typename Chunk<V * (int)sizeof(T)>::type;
    const WarpRows w = warp_rows();
    const uint32_t* tokens = reinterpret_cast<const uint32_t*>(p.tokens);
    for (int64_t r = w.first; r < p.t; r += w.step) {
        const int64_t id = tokens[r];
        if (id >= p.vocab) continue;  // never: the host refuses such ids
        const T* src = reinterpret_cast<const T*>(p.table) + id * p.table_row_stride;
        T* dst = reinterpret_cast<T*>(p.y) + r * p.y_row_stride;
        for (int64_t c = (int64_t)w.lane * V; c < p.d; c += 32 * V)
            *reinterpret_cast<C*>(dst + c) = *reinterpret_cast<const C*>(src + c);
    }
}

template <typename T>
__device__ void embedding(const tf_embedding_params& p) {
    if (vec_ok<T>(p.table, p.table_row_stride, p.d) && vec_ok<T>(p.y, p.y_row_stride, p.d)) {
        gather_rows<T, vec16<T>()>(p);
    } else {
        gather_rows<T, 1>(p);
    }
}

// ------------------------------------------------------------------ head copy

// Whether [t, heads, width] at `addr` with these strides can move in 16-byte chunks.
template <typename T>
__device__ __forceinline__ bool heads_vec_ok(uint64_t addr, int64_t row_stride, int64_t head_stride,
                                             int64_t width) {
    constexpr int V = vec16<T>();
    return aligned16(addr) && row_stride % V == 0 && head_stride % V == 0 && width % V == 0;
}

template <typename T, int V>
__device__ void copy_heads(const tf_head_copy_params& p, int64_t row0) {
    using C = typename Chunk<V * (int)sizeof(T)>::type;
    const WarpRows w = warp_rows();
    // (pair, row, head) items in 32 bits (the host checks pairs * t * heads < 2^31).
    const int per_pair = (int)(p.t * p.heads), heads = (int)p.heads;
    for (int64_t it = w.first; it < (int64_t)per_pair * p.pairs; it += w.step) {
        const int pair = (int)it / per_pair, rem = (int)it - pair * per_pair;
        const int i = rem / heads, h = rem - i * heads;
        const int64_t row = row0 + i;
        if (row < 0 || row >= p.dst_rows) continue;  // warp-uniform
        const T* src = reinterpret_cast<const T*>(pair == 0 ? p.src[0] : p.src[1]) + i * p.src_row_stride +
                       h * p.src_head_stride;
        T* dst = reinterpret_cast<T*>(pair == 0 ? p.dst[0] : p.dst[1]) + row * p.dst_row_stride +
                 h * p.dst_head_stride;
        for (int64_t c = (int64_t)w.lane * V; c < p.width; c += 32 * V)
            *reinterpret_cast<C*>(dst + c) = *reinterpret_cast<const C*>(src + c);
    }
}

template <typename T>
__device__ void head_copy(const tf_head_copy_params& p) {
    const int64_t row0 = p.dst_row0 + (p.row0_dev != 0 ? *reinterpret_cast<const int32_t*>(p.row0_dev) : 0);
    // (indices into the params struct are constants: a runtime index would copy it
    // to local memory)
    const bool vec = heads_vec_ok<T>(p.src[0], p.src_row_stride, p.src_head_stride, p.width) &&
                     heads_vec_ok<T>(p.dst[0], p.dst_row_stride, p.dst_head_stride, p.width) &&
                     (p.pairs < 2 || (heads_vec_ok<T>(p.src[1], p.src_row_stride, p.src_head_stride, p.width) &&
                                      heads_vec_ok<T>(p.dst[1], p.dst_row_stride, p.dst_head_stride, p.width)));
    if (vec) {
        copy_heads<T, vec16<T>()>(p, row0);
    } else {
        copy_heads<T, 1>(p, row0);
    }
}

}  // namespace tf_block

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(256) layer_norm_f32(const tf_layer_norm_params p) {
    tf_block::layer_norm<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) layer_norm_f16(const tf_layer_norm_params p) {
    tf_block::layer_norm<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) layer_norm_bf16(const tf_layer_norm_params p) {
    tf_block::layer_norm<__nv_bfloat16>(p);
}

// __grid_constant__: the frequency tables are indexed by a runtime j, which would
// otherwise copy the 1 KB struct to local memory.
extern "C" __global__ void __launch_bounds__(256) rotary_f32(const __grid_constant__ tf_rotary_params p) {
    tf_block::rotary<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) rotary_f16(const __grid_constant__ tf_rotary_params p) {
    tf_block::rotary<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) rotary_bf16(const __grid_constant__ tf_rotary_params p) {
    tf_block::rotary<__nv_bfloat16>(p);
}

extern "C" __global__ void __launch_bounds__(256) residual_add_f32(const tf_residual_add_params p) {
    tf_block::residual_add<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) residual_add_f16(const tf_residual_add_params p) {
    tf_block::residual_add<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) residual_add_bf16(const tf_residual_add_params p) {
    tf_block::residual_add<__nv_bfloat16>(p);
}

extern "C" __global__ void __launch_bounds__(256) embedding_f32(const tf_embedding_params p) {
    tf_block::embedding<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) embedding_f16(const tf_embedding_params p) {
    tf_block::embedding<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) embedding_bf16(const tf_embedding_params p) {
    tf_block::embedding<__nv_bfloat16>(p);
}

extern "C" __global__ void __launch_bounds__(256) head_copy_f32(const tf_head_copy_params p) {
    tf_block::head_copy<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) head_copy_f16(const tf_head_copy_params p) {
    tf_block::head_copy<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) head_copy_bf16(const tf_head_copy_params p) {
    tf_block::head_copy<__nv_bfloat16>(p);
}
