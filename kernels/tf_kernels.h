/*
 * tf_kernels.h: the C ABI shared by the .cu kernels and the Rust host.
 *
 * One params struct per kernel family, passed BY VALUE to the kernel
 * (`extern "C" __global__ void name(tf_xxx_params p)`). Rust mirrors this file
 * through bindgen (build.rs allowlists the `tf_*` names), so the layout cannot
 * drift. Pointers are device addresses on CUDA and host addresses on the
 * emulator; they are declared as 64-bit integers (`tf_ptr`) so both sides agree
 * on size without pointer provenance rules on the Rust side.
 *
 * Plain C: no templates, no CUDA types, so bindgen and g++ read it as is.
 */
#ifndef TF_KERNELS_H
#define TF_KERNELS_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A device address (CUDA) or a host address (emulator). */
typedef uint64_t tf_ptr;

/* Storage types of tensors. Accumulation is always f32. */
typedef enum tf_dtype {
    TF_DTYPE_F32 = 0,
    TF_DTYPE_F16 = 1,
    TF_DTYPE_BF16 = 2,
} tf_dtype;

/* Initialisation of appended rows (growth). */
typedef enum tf_init {
    TF_INIT_ZEROS = 0,  /* new rows are 0 */
    TF_INIT_ROWS = 1,   /* new rows copied from `init_src` */
    TF_INIT_NORMAL = 2, /* new rows ~ N(0, std) from Philox4x32-10 (DESIGN.md) */
} tf_init;

/* ------------------------------------------------------------ pattention --- */

/* (pattention params: defined with kernels/pattention.cu) */

/* ------------------------------------------------------------- attention --- */

/* Params of the attention forward kernels `attn_fwd_{f32,f16,bf16}_hd{64,80,96,128}`
 * (kernels/attention.cu). Element (b, t, h, d) of q is at
 * q + b*q_stride_b + t*q_stride_t + h*q_stride_h + d: the head dimension is
 * contiguous; strides are in elements. For f16/bf16 every base is 16-byte aligned
 * and every stride a multiple of 8 elements (the host checks). */
typedef struct tf_attn_params {
    tf_ptr q;                /* [B, t_q, H, head_dim] storage dtype, input */
    tf_ptr k;                /* [B, t_k, H, head_dim] storage dtype, input */
    tf_ptr v;                /* [B, t_k, H, head_dim] storage dtype, input */
    tf_ptr o;                /* [B, t_q, H, head_dim] storage dtype, output */
    tf_ptr lse;              /* [B, H, t_q] f32 output: natural-log sum-exp of the scaled scores, +inf if no key */
    int64_t q_stride_b;      /* q: elements between batches */
    int64_t q_stride_t;      /* q: elements between sequence positions */
    int64_t q_stride_h;      /* q: elements between heads */
    int64_t k_stride_b;      /* k: elements between batches */
    int64_t k_stride_t;      /* k: elements between sequence positions */
    int64_t k_stride_h;      /* k: elements between heads */
    int64_t v_stride_b;      /* v: elements between batches */
    int64_t v_stride_t;      /* v: elements between sequence positions */
    int64_t v_stride_h;      /* v: elements between heads */
    int64_t o_stride_b;      /* o: elements between batches */
    int64_t o_stride_t;      /* o: elements between sequence positions */
    int64_t o_stride_h;      /* o: elements between heads */
    int64_t lse_stride_b;    /* lse: elements between batches */
    int64_t lse_stride_h;    /* lse: elements between heads */
    int64_t lse_stride_t;    /* lse: elements between query positions */
    int64_t t_q;             /* query sequence length (>= 1) */
    int64_t t_k;             /* key/value sequence length (>= 0) */
    int32_t batch;           /* B: gridDim.y */
    int32_t heads;           /* H: gridDim.z */
    int32_t head_dim;        /* D: 64, 80, 96 or 128, must match the kernel's name */
    int32_t causal;          /* 1: key j visible to query i iff j <= i + t_k - t_q (bottom right); 0: all */
    float scale;             /* softmax scale on q.k, finite and > 0 (1/sqrt(head_dim) by default) */
    int32_t _pad;            /* 0; keeps the size a multiple of 8 bytes */
} tf_attn_params;

/* ---------------------------------------------------------------- growth --- */

/* One tensor of a growth launch: rows [0, rows_old) of `src` are copied to `dst`
 * (unless src == 0 or src == dst: in-place growth inside spare capacity), and
 * rows [rows_old, rows_new) of `dst` are initialised per `init`. */
typedef struct tf_grow_desc {
    tf_ptr src;              /* [rows_old, cols] elements, row pitch src_pitch bytes */
    tf_ptr dst;              /* [rows_new, cols] elements, row pitch dst_pitch bytes */
    tf_ptr init_src;         /* TF_INIT_ROWS: [rows_new - rows_old, cols], pitch init_pitch bytes */
    int64_t rows_old;        /* rows kept, bit-for-bit */
    int64_t rows_new;        /* rows after growth, >= rows_old */
    int64_t cols;            /* elements per row */
    int64_t src_pitch;       /* bytes between rows of src */
    int64_t dst_pitch;       /* bytes between rows of dst */
    int64_t init_pitch;      /* bytes between rows of init_src */
    uint64_t seed;           /* TF_INIT_NORMAL: Philox key = (seed lo, seed hi) */
    float std;               /* TF_INIT_NORMAL: standard deviation */
    int32_t init;            /* tf_init */
    int32_t elem_bytes;      /* 2 or 4 */
    int32_t dtype;           /* tf_dtype */
} tf_grow_desc;

/* Params of the growth kernels: a list of descriptors, one launch for all. */
typedef struct tf_grow_params {
    tf_ptr descs;            /* tf_grow_desc[num_descs] in device memory */
    int64_t num_descs;       /* number of descriptors */
} tf_grow_params;

/* ---------------------------------------------------------------- linear --- */

/* y = x . w^T: the dense layer the benchmarks compare Pattention with. On CUDA
 * the host uses cuBLAS; this SIMT kernel serves the emulator (and is a
 * correctness fallback, not a fast path). */
typedef struct tf_linear_params {
    tf_ptr x;                /* [t, d_in] elements, row stride x_row_stride */
    tf_ptr w;                /* [d_out, d_in] elements, row stride w_row_stride */
    tf_ptr y;                /* [t, d_out] elements, row stride y_row_stride (output) */
    int64_t t;               /* rows of x and y */
    int64_t d_in;            /* reduction length */
    int64_t d_out;           /* columns of y, rows of w */
    int64_t x_row_stride;    /* elements between rows of x */
    int64_t w_row_stride;    /* elements between rows of w */
    int64_t y_row_stride;    /* elements between rows of y */
} tf_linear_params;

/* ------------------------------------------------------------- emulator --- */

/* Order in which the emulator runs the lanes of a warp between rendezvous. */
typedef enum tf_emu_lane_order {
    TF_EMU_ORDER_FORWARD = 0,
    TF_EMU_ORDER_REVERSE = 1,
    TF_EMU_ORDER_SHUFFLED = 2, /* a permutation drawn from `seed`, per block */
} tf_emu_lane_order;

/* One kernel launch on the CPU SIMT emulator. */
typedef struct tf_emu_launch_args {
    const char *kernel;          /* the kernel's extern "C" name */
    uint32_t grid[3];            /* gridDim.x, .y, .z */
    uint32_t block[3];           /* blockDim.x, .y, .z */
    uint32_t dynamic_smem_bytes; /* dynamic shared memory per block */
    const void *params;          /* the params struct, by address */
    size_t params_bytes;         /* its size: must equal the kernel's params size */
    int32_t lane_order;          /* tf_emu_lane_order */
    uint64_t seed;               /* lane-order seed */
    uint32_t os_threads;         /* worker OS threads for blocks; 0 = number of cores */
} tf_emu_launch_args;

/* Runs a kernel to completion on the emulator. Returns 0 on success; otherwise
 * a non-zero code and a NUL-terminated message in `err` (at most err_len bytes)
 * naming the kernel, block, thread and source location where known. */
int tf_emu_launch(const tf_emu_launch_args *args, char *err, size_t err_len);

/* Number of kernels the emulator knows, and the i-th kernel's name. */
size_t tf_emu_kernel_count(void);
const char *tf_emu_kernel_name(size_t i);

/* Limits the emulator enforces (same as an H100/H200): static shared memory,
 * dynamic shared memory opt-in maximum, threads per block. */
#define TF_EMU_MAX_STATIC_SMEM (48u * 1024u)
#define TF_EMU_MAX_DYNAMIC_SMEM (227u * 1024u)
#define TF_EMU_MAX_THREADS_PER_BLOCK 1024u

#ifdef __cplusplus
}
#endif

#endif /* TF_KERNELS_H */
