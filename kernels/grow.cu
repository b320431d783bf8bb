// grow.cu: the row-append growth copy of TokenFormer's parameter tokens.
//
// Computes, for each descriptor d of a list (one launch for a whole model):
//   dst[r, :] = src[r, :]              for r in [0, rows_old)   (bit-for-bit; skipped
//                                       when src == 0 or src == dst: in-place growth)
//   dst[r, :] = 0 | init_src[r - rows_old, :] | N(0, std)        for r in [rows_old, rows_new)
// The normal values come from Philox4x32-10 keyed by the seed, counter = element
// index r * cols + c of the grown tensor (tf/philox.cuh), the same stream as tf-ref.
//
// Thread mapping: grid (blocks_x, num_descs); blockIdx.y picks the descriptor and the
// blockDim.x * blocks_x threads of that row of blocks stride over its work. Copies move
// 16-byte chunks when every pointer, pitch and the row size are multiples of 16 (else
// element-sized chunks), each thread keeping UNROLL independent loads in flight; rows
// collapse into one span when both pitches equal the row size. Indices are 64-bit.
//
// Preconditions (checked by the host plan): elem_bytes in {2, 4}, rows_new >= rows_old,
// pitches >= cols * elem_bytes, pointers aligned to elem_bytes.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/philox.cuh"

namespace tf_grow {

constexpr int UNROLL = 4;

template <int W> struct Chunk;
template <> struct Chunk<16> { using type = uint4; };
template <> struct Chunk<4> { using type = uint32_t; };
template <> struct Chunk<2> { using type = uint16_t; };

// Rows of bytes: `rows` rows of `row_bytes`, at the given pitches. src == nullptr
// writes zeros.
struct Span {
    const unsigned char* src;
    unsigned char* dst;
    int64_t src_pitch, dst_pitch, rows, row_bytes;
};

__device__ __forceinline__ Span collapse(Span s) {
    if (s.rows > 1 && s.dst_pitch == s.row_bytes && (s.src == nullptr || s.src_pitch == s.row_bytes)) {
        s.row_bytes *= s.rows;
        s.src_pitch = s.dst_pitch = s.row_bytes;
        s.rows = 1;
    }
    return s;
}

template <int W>
__device__ void copy_span(const Span& s, int64_t tid, int64_t nthreads) {
    using V = typename Chunk<W>::type;
    const int64_t per_row = s.row_bytes / W;
    const int64_t total = s.rows * per_row;
    for (int64_t base = tid; base < total; base += UNROLL * nthreads) {
        V v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int64_t i = base + u * nthreads;
            if (i < total) {
                const int64_t r = i / per_row, c = i - r * per_row;
                if (s.src != nullptr) {
                    v[u] = *reinterpret_cast<const V*>(s.src + r * s.src_pitch + c * W);
                } else {
                    v[u] = V{};
                }
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int64_t i = base + u * nthreads;
            if (i < total) {
                const int64_t r = i / per_row, c = i - r * per_row;
                *reinterpret_cast<V*>(s.dst + r * s.dst_pitch + c * W) = v[u];
            }
        }
    }
}

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

__device__ void move(Span s, int elem_bytes, int64_t tid, int64_t nthreads) {
    s = collapse(s);
    if (s.rows == 0 || s.row_bytes == 0) return;
    const bool v16 = aligned16(s.dst) && (s.src == nullptr || (aligned16(s.src) && s.src_pitch % 16 == 0)) &&
                     s.dst_pitch % 16 == 0 && s.row_bytes % 16 == 0;
    if (v16) {
        copy_span<16>(s, tid, nthreads);
    } else if (elem_bytes == 4) {
        copy_span<4>(s, tid, nthreads);
    } else {
        copy_span<2>(s, tid, nthreads);
    }
}

template <typename T>
__device__ void normal_rows(const tf_grow_desc& d, int64_t tid, int64_t nthreads) {
    unsigned char* dst = reinterpret_cast<unsigned char*>(d.dst);
    const int64_t n = (d.rows_new - d.rows_old) * d.cols;
    for (int64_t i = tid; i < n; i += nthreads) {
        const int64_t r = d.rows_old + i / d.cols, c = i % d.cols;
        const float v = tf::philox_normal(d.seed, (uint64_t)(r * d.cols + c), d.std);
        *reinterpret_cast<T*>(dst + r * d.dst_pitch + c * (int64_t)sizeof(T)) = tf::from_float<T>(v);
    }
}

__device__ void grow_one(const tf_grow_desc& d, int64_t tid, int64_t nthreads) {
    const int64_t row_bytes = d.cols * d.elem_bytes;
    unsigned char* dst = reinterpret_cast<unsigned char*>(d.dst);
    if (d.src != 0 && d.src != d.dst) {
        move(Span{reinterpret_cast<const unsigned char*>(d.src), dst, d.src_pitch, d.dst_pitch, d.rows_old,
                  row_bytes},
             d.elem_bytes, tid, nthreads);
    }
    unsigned char* tail = dst + d.rows_old * d.dst_pitch;
    const int64_t new_rows = d.rows_new - d.rows_old;
    switch (d.init) {
        case TF_INIT_ZEROS:
            move(Span{nullptr, tail, 0, d.dst_pitch, new_rows, row_bytes}, d.elem_bytes, tid, nthreads);
            break;
        case TF_INIT_ROWS:
            move(Span{reinterpret_cast<const unsigned char*>(d.init_src), tail, d.init_pitch, d.dst_pitch,
                      new_rows, row_bytes},
                 d.elem_bytes, tid, nthreads);
            break;
        case TF_INIT_NORMAL:
            if (d.dtype == TF_DTYPE_F32) normal_rows<float>(d, tid, nthreads);
            else if (d.dtype == TF_DTYPE_F16) normal_rows<__half>(d, tid, nthreads);
            else normal_rows<__nv_bfloat16>(d, tid, nthreads);
            break;
        default:
            break;
    }
}

}  // namespace tf_grow

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(256) grow_rows(const tf_grow_params p) {
    const int64_t which = blockIdx.y;
    if (which >= p.num_descs) return;
    const tf_grow_desc d = reinterpret_cast<const tf_grow_desc*>(p.descs)[which];
    const int64_t nthreads = (int64_t)blockDim.x * gridDim.x;
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    tf_grow::grow_one(d, tid, nthreads);
}
