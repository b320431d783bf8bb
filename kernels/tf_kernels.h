/*
 * tf_kernels.h: the C ABI shared by the .cu kernels and the Rust host.
 *
 * One params struct per kernel family, passed BY VALUE to the kernel
 * (`extern "C" __global__ void name(tf_xxx_params p)`). Rust mirrors this file
 * through bindgen: `cargo xtask bindgen` allowlists the `tf_*` names and writes
 * kernels/tf_kernels_sys.rs (committed; `cargo xtask test` fails while the two
 * disagree), so the layout cannot drift. Pointers are device addresses on CUDA and host addresses on the
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
    TF_INIT_NORMAL = 2, /* new rows ~ N(0, std) from Philox4x32-10 (docs/design.md) */
} tf_init;

/* ------------------------------------------------------------ pattention --- */

/* Row normalisation Θ of Pattention (docs/tokenformer.md), applied to A = X·K_Pᵀ. */
typedef enum tf_norm {
    TF_NORM_L2_NORM_GELU = 0, /* S = gelu(A·sqrt(n_ref) / (‖A_i‖ + eps)): the default */
    TF_NORM_GELU_L2_NORM = 1, /* G = gelu(A), S = G·sqrt(n_ref) / (‖G_i‖ + eps) */
    TF_NORM_SOFTMAX = 2,      /* S = n_ref·softmax(A_i) (eps unused) */
} tf_norm;

/* Width of one n-tile: the per-row statistics hold one entry per n-tile. */
#define TF_PATTENTION_TILE_N 128
/* T at or below which f16/bf16 take the decode path (kernels/pattention_decode.cu). */
#define TF_PATTENTION_DECODE_MAX_T 64
/* Every workspace region starts at a multiple of this many bytes. */
#define TF_PATTENTION_WS_ALIGN 256
/* Decode path, l2_norm_gelu: product 1 is split over d_in (split-K) into at most
 * TF_PATTENTION_SPLIT_CTAS / n_tiles (and at most TF_PATTENTION_MAX_SPLITS) slices
 * when its n-tiles alone would leave SMs idle; pattention_scores_reduce sums the
 * slices in a fixed order. The workspace holds this many slices. */
#define TF_PATTENTION_SPLIT_CTAS 264
#define TF_PATTENTION_MAX_SPLITS 16
/* Dynamic shared memory (bytes) of the pattention kernels (static_asserted by them). */
#define TF_PATTENTION_SMEM_MMA 69632        /* pattention_out_{f16,bf16} */
#define TF_PATTENTION_SMEM_SCORES 65536     /* pattention_scores_{f16,bf16} */
#define TF_PATTENTION_SMEM_SCORES_F32 34816 /* pattention_scores_f32 */
#define TF_PATTENTION_SMEM_OUT_F32 12800    /* pattention_out_f32 */
#define TF_PATTENTION_SMEM_DECODE 65536     /* pattention_decode_{f16,bf16} */
#define TF_PATTENTION_SMEM_OUT64 74240      /* pattention_out64_{f16,bf16} */

/* Params of every pattention kernel (kernels/pattention*.cu); one struct, by value.
 *
 * Workspace (ONE function of the shapes; tf-host's pattention_workspace_bytes
 * mirrors it): with n_tiles = ceil(n / 128), h_stride = round_up(n, 8),
 * R(b) = round_up(b, 256), decode = (storage is f16 or bf16) && t <= 64:
 *   h       at 0            R(t * h_stride * sizeof(storage))
 *   stats   next            R(t * n_tiles * 8)
 *   rowf    next            R(t * 8)
 *   partial next            decode ? R(max(n_tiles * t * d_out * 4,
 *                                         S * t * n_tiles * 128 * 4)) : 0
 * with S = min(TF_PATTENTION_MAX_SPLITS, max(1, ceil(TF_PATTENTION_SPLIT_CTAS / n_tiles))),
 * the most d_in slices product 1 can be split into. The slices' partial scores
 * (decode, l2_norm_gelu, k_splits > 1) live in `partial` until
 * pattention_scores_reduce has consumed them; the decode kernel's partial outputs
 * reuse the region after it.
 * total = the sum; the base is 256-byte aligned. */
typedef struct tf_pattention_params {
    tf_ptr x;              /* [t, d_in] storage type, rows x_row_stride elements apart */
    tf_ptr k_p;            /* [n, d_in] key tokens, rows k_row_stride elements apart */
    tf_ptr v_p;            /* [n, d_out] value tokens, rows v_row_stride elements apart */
    tf_ptr y;              /* [t, d_out] output, rows y_row_stride elements apart */
    tf_ptr h;              /* workspace [t, h_stride] storage type: scaled scores, then S */
    tf_ptr stats;          /* workspace [t, n_tiles] float2: (log2 scale, partial sum) per n-tile */
    tf_ptr rowf;           /* workspace [t] float2: (row factor r, row exponent E) */
    tf_ptr partial;        /* workspace [n_tiles, t, d_out] f32: decode partial outputs (else 0) */
    int64_t t;             /* rows of x and y (tokens), >= 1 */
    int64_t n;             /* parameter tokens: rows of k_p and v_p, >= 1 */
    int64_t d_in;          /* columns of x and k_p, >= 1 */
    int64_t d_out;         /* columns of v_p and y, >= 1 */
    int64_t x_row_stride;  /* elements between rows of x (16-bit: multiple of 8) */
    int64_t k_row_stride;  /* elements between rows of k_p (16-bit: multiple of 8) */
    int64_t v_row_stride;  /* elements between rows of v_p (16-bit: multiple of 8) */
    int64_t y_row_stride;  /* elements between rows of y (16-bit: multiple of 8) */
    int64_t h_stride;      /* elements between rows of h: round_up(n, 8) */
    int64_t n_tiles;       /* ceil(n / TF_PATTENTION_TILE_N): columns of stats */
    int64_t decode_cols;   /* decode: y columns per block, multiple of 128 (blockIdx.y picks the range) */
    float scale;           /* sqrt(n_ref) for the two L2 norms, n_ref for softmax */
    float eps;             /* added to the row norm (L2 norms), finite, >= 0 */
    int32_t norm;          /* tf_norm */
    int32_t k_splits;      /* product 1's d_in slices (blockIdx.z of pattention_scores); 1 = unsplit.
                            * > 1: pattention_scores writes f32 partial scores
                            * partial[z, i, j] (row stride n_tiles * 128) for its slice, and
                            * pattention_scores_reduce forms h and stats from their sum */
    int32_t split_k_tiles; /* k_splits > 1: 32-column k-tiles of d_in per slice (the last may have fewer) */
    int32_t reserved;      /* 0 */
    tf_ptr s;              /* pattention_rows, l2_norm_gelu: where S goes, [t, h_stride] storage type;
                            * 0 = over h (the default). Non-zero when the caller keeps h (the
                            * scaled A) for the backward: pattention_out then reads S from here
                            * (the host passes it as h to that launch) */
} tf_pattention_params;

/* ------------------------------------------------------------- attention --- */

/* Tiles of the attention kernels. The host computes grids and dynamic shared memory
 * from these; kernels/attention.cu builds its traits from them.
 *   f16/bf16: grid (ceil(t_q / TF_ATTN_BLOCK_M) * num_splits, B, H), smem (BLOCK_M + 2 BLOCK_N) * D * 2 B;
 *             combine: grid (ceil(B * H * t_q / TF_ATTN_COMBINE_ROWS), 1, 1), no smem.
 *   f32:      grid (ceil(t_q / TF_ATTN_F32_BLOCK_M), B, H), smem 4 * (BM (D+1) + BN (D+1)
 *             + BN D + BM (BN+1) + 3 BM) bytes with BM, BN the F32 tiles. */
#define TF_ATTN_THREADS 128         /* threads per block, every attention kernel */
#define TF_ATTN_BLOCK_M 128         /* f16/bf16: query rows per block */
#define TF_ATTN_BLOCK_N_HD64 64     /* f16/bf16: keys per K/V tile, head dim 64 */
#define TF_ATTN_BLOCK_N_HD80 64     /* ... head dim 80 */
#define TF_ATTN_BLOCK_N_HD96 64     /* ... head dim 96 */
#define TF_ATTN_BLOCK_N_HD128 32    /* ... head dim 128 */
#define TF_ATTN_F32_BLOCK_M 32      /* f32: query rows per block */
#define TF_ATTN_F32_BLOCK_N 16      /* f32: keys per K/V tile */
#define TF_ATTN_MAX_SPLITS 128      /* split-KV: most splits of one query block */
#define TF_ATTN_COMBINE_ROWS 4      /* split-KV combine (attn_combine_*): rows per 128-thread block, a warp each */
#define TF_ATTN_DECODE_ROWS 16      /* f16/bf16, t_q <= 16 (attn_decode_*): query rows per block */
#define TF_ATTN_DECODE_BLOCK_N 64   /* ... keys per K/V block, 16 a warp */
#define TF_ATTN_DECODE_STAGES_HD64 4  /* ... K/V ring stages (smem: stages * 4 * BLOCK_N * D bytes) */
#define TF_ATTN_DECODE_STAGES_HD80 4
#define TF_ATTN_DECODE_STAGES_HD96 3
#define TF_ATTN_DECODE_STAGES_HD128 3

/* Params of the attention kernels (kernels/attention.cu): the forward kernels
 * `attn_fwd_{f32,f16,bf16}_hd{64,80,96,128}` and, after a split-KV forward
 * (num_splits > 1), `attn_combine_{f16,bf16}`, which merges the partial results into
 * o and lse. Element (b, t, h, d) of q is at q + b*q_stride_b + t*q_stride_t +
 * h*q_stride_h + d: the head dimension is contiguous; strides are in elements. For
 * f16/bf16 every base is 16-byte aligned and every stride a multiple of 8 elements
 * (the host checks). */
typedef struct tf_attn_params {
    tf_ptr q;                /* [B, t_q, H, head_dim] storage dtype, input */
    tf_ptr k;                /* [B, t_k, H, head_dim] storage dtype, input */
    tf_ptr v;                /* [B, t_k, H, head_dim] storage dtype, input */
    tf_ptr o;                /* [B, t_q, H, head_dim] storage dtype, output */
    tf_ptr lse;              /* [B, H, t_q] f32 output: natural-log sum-exp of the scaled scores, +inf if no key */
    tf_ptr o_accum;          /* split-KV: [num_splits, B, H, t_q, head_dim] f32 partial o (0 if num_splits == 1) */
    tf_ptr lse_accum;        /* split-KV: [num_splits, B, H, t_q] f32 partial lse, -inf for no key (0 if unsplit) */
    tf_ptr t_k_dev;          /* 0, or an int32 in device memory read at run time as the key length, clamped to
                                [0, t_k] (t_k is then the keys' capacity): one captured launch serves every step
                                of a decode loop. attn_decode_* and attn_fwd_f32_* only; 0 for the others */
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
    int32_t num_splits;      /* f16/bf16: CTAs sharing one query block's K blocks (gridDim.x = m blocks * this); f32: 1 */
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

/* --------------------------------------------------------------- rownorm --- */

/* The normalisation Θ alone, in place on a score matrix A [t, n] (A -> S): the
 * middle step of the UNFUSED Pattention pipeline (product, norm, product) that
 * the benchmarks compare the fused kernels with. One block of 256 threads per
 * row; f32 statistics. Same math and conventions as tf_pattention_params. */
typedef struct tf_rownorm_params {
    tf_ptr a;                /* [t, n] storage type, rows row_stride elements apart: in and out */
    int64_t t;               /* rows */
    int64_t n;               /* columns (parameter tokens) */
    int64_t row_stride;      /* elements between rows */
    float scale;             /* sqrt(n_ref) for the L2 norms, n_ref for softmax */
    float eps;               /* added to the row norm (L2 norms) */
    int32_t norm;            /* tf_norm */
    int32_t reserved;        /* 0 */
} tf_rownorm_params;

/* ----------------------------------------------------------------- block --- */

/* The small kernels of the rest of the TokenFormer block (kernels/block.cu):
 * layer norm, partial rotary embedding, residual add, embedding gather. Every
 * tensor is [t, d] with contiguous rows `*_row_stride` elements apart. */

/* Rotated pairs per head the rotary params can hold: rot_dim <= 2 * this. */
#define TF_ROTARY_MAX_PAIRS 128
/* Positions (pos_offset + t) must stay below this: exact in f32. */
#define TF_ROTARY_MAX_POS 16777216

/* y = (x - mean) / sqrt(var + eps) [* weight + bias], per row, f32 statistics
 * (two passes, biased variance). One warp per row (grid-stride over rows). */
typedef struct tf_layer_norm_params {
    tf_ptr x;                /* [t, d] storage type, input */
    tf_ptr y;                /* [t, d] storage type, output (not aliasing x) */
    tf_ptr weight;           /* [d] storage type, affine scale; 0: none (scale 1) */
    tf_ptr bias;             /* [d] storage type, affine shift; 0: none (shift 0) */
    int64_t t;               /* rows */
    int64_t d;               /* columns, >= 1 */
    int64_t x_row_stride;    /* elements between rows of x */
    int64_t y_row_stride;    /* elements between rows of y */
    float eps;               /* added to the variance, finite, >= 0 */
    int32_t reserved;        /* 0 */
} tf_layer_norm_params;

/* GPT-NeoX rotate_half (non-interleaved) on the first rot_dim = 2*half dims of
 * each head of x [t, heads*head_dim], in place; row i at position pos_offset + i.
 * The angle of pair j is pos * inv_freq[j], inv_freq[j] = base^(-2j/rot_dim),
 * given in turns (inv_freq / 2pi, computed in f64 on the host) split into two
 * floats so that the kernel reduces the angle exactly. One thread per pair. */
typedef struct tf_rotary_params {
    tf_ptr x;                /* [t, heads*head_dim] storage type, in and out */
    tf_ptr pos_dev;          /* 0, or an int32 in device memory added to pos_offset at run time (clamped to
                                [0, pos_dev_max]): a captured decode step rotates at the cache's length */
    int64_t t;               /* rows */
    int64_t row_stride;      /* elements between rows of x */
    int64_t pos_offset;      /* position of row 0; pos_offset + pos_dev_max + t <= TF_ROTARY_MAX_POS */
    int64_t pos_dev_max;     /* largest value taken from pos_dev (0 when pos_dev is 0) */
    int32_t heads;           /* heads per row, >= 1 */
    int32_t head_dim;        /* elements per head, >= 2 * half */
    int32_t half;            /* rotated pairs per head: rot_dim / 2, 1..=TF_ROTARY_MAX_PAIRS */
    int32_t reserved;        /* 0 */
    float turns_hi[TF_ROTARY_MAX_PAIRS]; /* [half] f32(inv_freq[j] / 2pi); unused entries 0 */
    float turns_lo[TF_ROTARY_MAX_PAIRS]; /* [half] f32(inv_freq[j] / 2pi - turns_hi[j]) */
} tf_rotary_params;

/* y += x (the residual add), same shape [t, d], f32 sum rounded once. One warp per
 * row (grid-stride over rows), 16-byte chunks where aligned. */
typedef struct tf_residual_add_params {
    tf_ptr y;                /* [t, d] storage type, in and out */
    tf_ptr x;                /* [t, d] storage type, added (not aliasing y) */
    int64_t t;               /* rows */
    int64_t d;               /* columns */
    int64_t y_row_stride;    /* elements between rows of y */
    int64_t x_row_stride;    /* elements between rows of x */
} tf_residual_add_params;

/* y[i, :] = table[tokens[i], :] (token embedding gather; ids checked < vocab on
 * the host). One warp per row (grid-stride over rows), 16-byte chunks where
 * aligned; a bit-exact copy. */
typedef struct tf_embedding_params {
    tf_ptr table;            /* [vocab, d] storage type */
    tf_ptr tokens;           /* [t] uint32 token ids, each < vocab */
    tf_ptr y;                /* [t, d] storage type, output */
    int64_t t;               /* rows of y (tokens) */
    int64_t d;               /* columns */
    int64_t vocab;           /* rows of table */
    int64_t table_row_stride;/* elements between rows of table */
    int64_t y_row_stride;    /* elements between rows of y */
} tf_embedding_params;

/* Bit-exact copy of [t, heads, width] blocks: element (i, h, c) of src, at
 * i*src_row_stride + h*src_head_stride + c, goes to row row0 + i of dst, at
 * (row0 + i)*dst_row_stride + h*dst_head_stride + c. Up to two (src, dst) pairs
 * (K and V) in one launch. row0 = dst_row0, plus the int32 at row0_dev when that is
 * non-zero (read at run time: a captured decode step appends where the KV cache
 * ends); rows outside [0, dst_rows) are skipped. The KV-cache append and the
 * head-dim padding copies of the model's forward pass. One warp per (pair, row,
 * head), grid-stride, 16-byte chunks where aligned. pairs * t * heads < 2^31. */
typedef struct tf_head_copy_params {
    tf_ptr src[2];           /* storage type, read */
    tf_ptr dst[2];           /* storage type, written (not overlapping src) */
    tf_ptr row0_dev;         /* 0, or an int32 in device memory added to dst_row0 */
    int64_t dst_row0;        /* first dst row written (before row0_dev) */
    int64_t dst_rows;        /* rows dst holds */
    int64_t t;               /* rows copied */
    int64_t heads;           /* heads per row */
    int64_t width;           /* elements copied per head */
    int64_t src_row_stride;  /* elements between rows of src */
    int64_t src_head_stride; /* elements between heads of src */
    int64_t dst_row_stride;  /* elements between rows of dst */
    int64_t dst_head_stride; /* elements between heads of dst */
    int32_t pairs;           /* 1 or 2 */
    int32_t reserved;        /* 0 */
} tf_head_copy_params;

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

/* --------------------------------------------------- pattention backward --- */

/* C [m, n] f32 = sum over l < k of A(i, l) * B(j, l), A(i, l) = a[i * a_rs + l * a_cs],
 * B(j, l) = b[j * b_rs + l * b_cs] (a transposed operand is a swap of its strides);
 * kernels gemm_{f32_f32,f16_f16,bf16_bf16,f32_f16,f32_bf16} (A's, then B's element
 * type), f32 accumulation in order of l (kernels/pattention_backward.cu, SIMT), and
 * gemm_tc_{f16,bf16}_{rr,rc,cr,cc} (kernels/gemm_tc.cu, tensor cores: 16-bit A and
 * B, each row-wise "r" (its l stride 1) or column-wise "c" (its row stride 1), the
 * other stride a multiple of 8, 16-byte aligned). */
#define TF_GEMM_TC_TILE 128   /* rows and columns of C per CTA of gemm_tc_* */
#define TF_GEMM_TC_SMEM 65536 /* dynamic shared memory (bytes) of gemm_tc_* */
#define TF_GEMM_TC_MAX_SPLITS 16  /* split-K: at most this many slices */
#define TF_GEMM_TC_MIN_SPLIT_TILES 4 /* split-K: at least this many k-steps a slice */
typedef struct tf_gemm_params {
    tf_ptr a;                /* A's elements */
    tf_ptr b;                /* B's elements */
    tf_ptr c;                /* [m, n] f32, rows c_rs elements apart (output) */
    int64_t m, n, k;         /* k = 0 writes zeros */
    int64_t a_rs, a_cs;      /* strides of A(i, l) in elements */
    int64_t b_rs, b_cs;      /* strides of B(j, l) in elements */
    int64_t c_rs;            /* elements between rows of C */
    /* gemm_tc only: split over the sum (grid z = k_splits slices of split_k_tiles
     * k-steps of 32): slice 0 writes C, slice z > 0 its [m, n] f32 partial at
     * partial + (z - 1)·m·n, and gemm_tc_reduce adds the partials to C in slice
     * order. k_splits = 1: no partials (partial unused). */
    tf_ptr partial;
    int32_t k_splits, split_k_tiles;
} tf_gemm_params;

/* The backward of the row normalisation: given the scores A and dS (both [t, n]
 * f32, rows ld elements apart), writes S = Θ(A) and dA, one block per row: kernel
 * pattention_norm_backward_f32 writes f32 S to s and dA over dS; the kernels
 * pattention_norm_backward_{f16,bf16} write both rounded to 16 bits, to s and da
 * (rows ld_out elements apart), the operands of the tensor-core products.
 * kept != 0 (l2_norm_gelu only): A is read from the forward's kept scores instead
 * of a, A_ij = kept[i·ld_kept + j]·2^e with (e, l) = kept_stats[i·ceil(n / 128) + j / 128]
 * (the forward's h and stats: tf_pattention_params), kept in the kernel's type. */
typedef struct tf_pnorm_backward_params {
    tf_ptr a;                /* [t, n] f32 scores (input) */
    tf_ptr s;                /* [t, n] S = Θ(A) (output, the kernel's type) */
    tf_ptr d;                /* [t, n] f32: dS in (f32 kernel: dA out) */
    tf_ptr da;               /* [t, n] dA (output of the 16-bit kernels; f32: unused) */
    int64_t t, n, ld;        /* rows, columns, elements between rows of a and d */
    int64_t ld_out;          /* elements between rows of s and da (f32: ld) */
    float scale;             /* sqrt(n_ref) for the L2 norms, n_ref for softmax */
    float eps;               /* added to the row norm (L2 norms) */
    int32_t norm;            /* tf_norm */
    int32_t reserved;        /* 0 */
    tf_ptr kept;             /* 0, or the forward's scaled scores [t, ld_kept] (the kernel's type) */
    tf_ptr kept_stats;       /* with kept: the forward's [t, ceil(n / 128)] float2 statistics */
    int64_t ld_kept;         /* with kept: elements between rows of kept */
} tf_pnorm_backward_params;

/* ------------------------------------------------------- block backward --- */

/* The backward of layer norm (kernels/block_backward.cu), two launches with these
 * params: layer_norm_backward_* (one warp per row: dx and the row statistics) and
 * layer_norm_param_grads_* (one thread per column: dweight, dbias summed over the
 * rows in order). Gradients f32. */
typedef struct tf_layer_norm_backward_params {
    tf_ptr x;                /* [t, d] storage type: the forward's input */
    tf_ptr dy;               /* [t, d] storage type */
    tf_ptr weight;           /* [d] storage type, or 0 (scale 1) */
    tf_ptr dx;               /* [t, d] f32, rows d apart (output) */
    tf_ptr stats;            /* [t] float2 (mean, 1/sigma; 0 when sigma = 0): written, then read */
    tf_ptr dweight;          /* [d] f32 (output of the second launch) */
    tf_ptr dbias;            /* [d] f32 (output of the second launch) */
    int64_t t;               /* rows */
    int64_t d;               /* columns, >= 1 */
    int64_t x_row_stride;    /* elements between rows of x */
    int64_t dy_row_stride;   /* elements between rows of dy */
    float eps;               /* the forward's eps */
    int32_t reserved;        /* 0 */
} tf_layer_norm_backward_params;

/* dE[v, :] = sum of dx[i, :] over the positions i with tokens[i] = v, increasing i
 * (embedding_backward_*, one warp per vocab row). `table` holds vocab + 1 uint32
 * offsets `starts`, then the t positions sorted by id (stable): the positions of
 * id v are order[starts[v] .. starts[v + 1]). */
typedef struct tf_embedding_backward_params {
    tf_ptr dx;               /* [t, d] storage type */
    tf_ptr table;            /* uint32 [vocab + 1 + t]: starts, then order */
    tf_ptr de;               /* [vocab, d] f32, rows d apart (output) */
    int64_t t;               /* tokens */
    int64_t d;               /* columns */
    int64_t vocab;           /* rows of de */
    int64_t dx_row_stride;   /* elements between rows of dx */
} tf_embedding_backward_params;

/* dst[i] = src[i] rounded to the storage type (cast_f32_to_*, grid-stride): the
 * training chain's f32 gradients handed to ops that take the storage type. */
typedef struct tf_cast_params {
    tf_ptr src;              /* [n] f32 */
    tf_ptr dst;              /* [n] storage type (output, not aliasing src) */
    int64_t n;               /* elements */
} tf_cast_params;

/* Softmax cross-entropy of logits z [t, vocab] (cross_entropy_*, one block of 256
 * per row): loss[i] = max + ln(sum exp(z_i - max)) - z_i[target_i], and in place
 * z_ij <- (softmax(z_i)_j - [j = target_i]) * inv_t in the storage type. */
typedef struct tf_cross_entropy_params {
    tf_ptr logits;           /* [t, vocab] storage type, in: logits, out: gradient */
    tf_ptr targets;          /* [t] uint32, each < vocab */
    tf_ptr loss;             /* [t] f32 (output) */
    int64_t t;               /* rows */
    int64_t vocab;           /* columns, >= 1 */
    int64_t row_stride;      /* elements between rows of logits */
    float inv_t;             /* 1 / t: the mean's factor */
    int32_t reserved;        /* 0 */
} tf_cross_entropy_params;

/* --------------------------------------------------- attention backward --- */

/* Largest head dimension of the attention backward (kernels/attention_backward.cu). */
#define TF_ATTN_BACKWARD_MAX_D 256

/* Backward of attention (kernels/attention_backward.cu), two launches with these
 * params: attn_backward_dq_* (one warp per query row: dq and the row statistics)
 * and attn_backward_dkv_* (one warp per key row: dk, dv). Operand element
 * (b, t, h, c) at b*sb + t*st + h*sh + c; gradients f32, contiguous [B, T, H, D].
 * The same params serve attn_forward_rows_* (the training forward: one warp per
 * query row, o in f32; d_o, dq, dk, dv and stats unused). */
typedef struct tf_attn_backward_params {
    tf_ptr q;                /* [B, T_q, H, D] storage type */
    tf_ptr k;                /* [B, T_k, H, D] storage type */
    tf_ptr v;                /* [B, T_k, H, D] storage type */
    tf_ptr d_o;              /* [B, T_q, H, D] storage type: dL/do */
    tf_ptr dq;               /* [B, T_q, H, D] f32 (output) */
    tf_ptr dk;               /* [B, T_k, H, D] f32 (output of the second launch) */
    tf_ptr dv;               /* [B, T_k, H, D] f32 (output of the second launch) */
    tf_ptr stats;            /* [B, H, T_q] float2 (lse, D = do.o): written, then read */
    tf_ptr o;                /* [B, T_q, H, D] f32: attn_forward_rows' output */
    int64_t batch, t_q, t_k, heads, head_dim;
    int64_t q_sb, q_st, q_sh; /* strides of q (elements) */
    int64_t k_sb, k_st, k_sh; /* strides of k */
    int64_t v_sb, v_st, v_sh; /* strides of v */
    int64_t o_sb, o_st, o_sh; /* strides of d_o */
    float scale;             /* softmax scale on q.k, finite, > 0 */
    int32_t causal;          /* 1: bottom-right aligned causal mask */
} tf_attn_backward_params;

/* ------------------------------------- attention backward, tensor cores --- */

/* FlashAttention-2-style backward for f16 / bf16 (kernels/attention_backward_tc.cu),
 * head dims 64, 80, 96, 128, three launches with these params:
 *   attn_bwd_delta_{f16,bf16}: delta_i = do_i . o_i, a warp per row, any head_dim
 *     <= TF_ATTN_BACKWARD_MAX_D; grid-stride over B * H * t_q rows, 256 threads.
 *   attn_bwd_dkv_{t}_hd{D}: grid (ceil(t_k / TF_ATTN_BWD_BLOCK), B, H), dk and dv of
 *     the block's keys over every query that sees them.
 *   attn_bwd_dq_{t}_hd{D}: grid (ceil(t_q / TF_ATTN_BWD_BLOCK), B, H), dq of the
 *     block's queries over every key they see.
 * TF_ATTN_THREADS threads; dynamic shared memory
 *   4 * BLOCK * D + 8 * STEP * D + 16 * STEP bytes (STEP = TF_ATTN_BWD_STEP_HD{D}).
 * Operand element (b, t, h, c) at b*sb + t*st + h*sh + c: bases 16-byte aligned,
 * strides multiples of 8 elements. lse and delta [B, H, t_q] f32, contiguous;
 * gradients f32, contiguous [B, T, H, D]. */
#define TF_ATTN_BWD_BLOCK 64         /* rows a CTA owns (keys for dkv, queries for dq), 16 a warp */
#define TF_ATTN_BWD_STEP_HD64 64     /* rows streamed per step (queries for dkv, keys for dq) */
#define TF_ATTN_BWD_STEP_HD80 64
#define TF_ATTN_BWD_STEP_HD96 64
#define TF_ATTN_BWD_STEP_HD128 32
typedef struct tf_attn_bwd_params {
    tf_ptr q;                /* [B, T_q, H, D] storage type */
    tf_ptr k;                /* [B, T_k, H, D] storage type */
    tf_ptr v;                /* [B, T_k, H, D] storage type */
    tf_ptr o;                /* [B, T_q, H, D] storage type: the forward's output */
    tf_ptr d_o;              /* [B, T_q, H, D] storage type: dL/do */
    tf_ptr lse;              /* [B, H, T_q] f32: the forward's lse (+inf: the row sees no key) */
    tf_ptr delta;            /* [B, H, T_q] f32: written by attn_bwd_delta_*, read by the others */
    tf_ptr dq;               /* [B, T_q, H, D] f32 (output) */
    tf_ptr dk;               /* [B, T_k, H, D] f32 (output) */
    tf_ptr dv;               /* [B, T_k, H, D] f32 (output) */
    int64_t batch, t_q, t_k, heads, head_dim;
    int64_t q_sb, q_st, q_sh;    /* strides of q (elements) */
    int64_t k_sb, k_st, k_sh;    /* strides of k */
    int64_t v_sb, v_st, v_sh;    /* strides of v */
    int64_t o_sb, o_st, o_sh;    /* strides of o */
    int64_t do_sb, do_st, do_sh; /* strides of d_o */
    float scale;             /* softmax scale on q.k, finite, > 0 */
    int32_t causal;          /* 1: bottom-right aligned causal mask */
} tf_attn_bwd_params;

/* ----------------------------------------------------------------- adamw --- */

/* The fused AdamW step (kernels/adamw.cu) over a list of tensors, in three launches
 * that need no host sync between them:
 *   adamw_norm_partial  grid (num_chunks): per-chunk f32 sums of squares of the grads
 *   adamw_norm_final    grid (1): sums the partials in fixed order (f64) -> norm[0..2]
 *   adamw_update        grid (num_chunks): the update, reading the clip factor from norm
 * Chunk c belongs to the descriptor i with chunk_start[i] <= c < chunk_start[i + 1]
 * and covers its elements [(c - chunk_start[i]) * TF_ADAMW_CHUNK, + TF_ADAMW_CHUNK). */
#define TF_ADAMW_THREADS 256 /* threads per block, every adamw kernel */
#define TF_ADAMW_CHUNK 16384 /* elements per chunk (a multiple of 8) */

/* One tensor of an AdamW launch; every buffer holds `numel` contiguous elements. */
typedef struct tf_adamw_desc {
    tf_ptr param;            /* storage type: the copy written from the master (update) */
    tf_ptr grad;             /* f32: the gradient (before grad_scale) */
    tf_ptr master;           /* f32 master weights, in and out */
    tf_ptr m;                /* f32 first moment, in and out */
    tf_ptr v;                /* f32 second moment, in and out */
    int64_t numel;           /* elements, >= 1 */
    int64_t chunk_start;     /* index of its first chunk: the sum of ceil(numel / CHUNK) before it */
    int32_t dtype;           /* tf_dtype of param */
    int32_t decay;           /* 1: decoupled weight decay applies, 0: not */
} tf_adamw_desc;

/* Params of the three adamw kernels (one struct, by value). `norm` holds two f32:
 * the global norm N of the scaled gradients (grad_scale * grad), then the clip factor c = min(1, max_norm / (N + 1e-6))
 * (1 without clipping); adamw_update leaves everything untouched when N is not finite. */
typedef struct tf_adamw_params {
    tf_ptr descs;            /* tf_adamw_desc[num_descs] in device memory, chunk_start ascending */
    tf_ptr partial;          /* [num_chunks] f32 workspace: the per-chunk sums of squares */
    tf_ptr norm;             /* [2] f32: N and c (written by adamw_norm_final) */
    int64_t num_descs;       /* descriptors, >= 1 */
    int64_t num_chunks;      /* chunks of all descriptors: gridDim.x of the chunked kernels */
    float grad_scale;        /* every gradient is multiplied by it first (before the norm) */
    float max_norm;          /* clipping threshold; <= 0: no clipping (c = 1) */
    float lr;                /* this step's learning rate */
    float lr_wd;             /* lr * weight_decay (f64 product, rounded) */
    float beta1;             /* first-moment decay */
    float one_minus_beta1;   /* 1 - beta1 (computed in f64) */
    float beta2;             /* second-moment decay */
    float one_minus_beta2;   /* 1 - beta2 (computed in f64) */
    float inv_bc1;           /* 1 / (1 - beta1^t) (f64, rounded) */
    float inv_bc2;           /* 1 / (1 - beta2^t) (f64, rounded) */
    float eps;               /* added to sqrt(v_hat) */
} tf_adamw_params;

/* ------------------------------------------------------------- emulator --- */

/* Order in which the emulator runs the lanes of a warp between rendezvous. */
typedef enum tf_emu_lane_order {
    TF_EMU_ORDER_FORWARD = 0,
    TF_EMU_ORDER_REVERSE = 1,
    TF_EMU_ORDER_SHUFFLED = 2, /* a permutation drawn from `seed`, per block */
} tf_emu_lane_order;

/* How the emulator interleaves the warps of a block between __syncthreads. */
typedef enum tf_emu_warp_order {
    /* Warps take turns, one rendezvous (warp collective or barrier) each: no warp
     * gets more than one collective ahead of another (the default). */
    TF_EMU_WARPS_ROUND_ROBIN = 0,
    /* Warp-major: the first warp runs until every live lane of it waits at a
     * __syncthreads or has exited, then the next warp, ...: one warp runs ahead, so
     * a missing barrier between one warp's shared-memory reads and another warp's
     * overwrite (store or cp.async) shows up. Warps in ascending order. */
    TF_EMU_WARPS_AHEAD = 1,
    TF_EMU_WARPS_AHEAD_REVERSE = 2,  /* warp-major, last warp first */
    TF_EMU_WARPS_AHEAD_SHUFFLED = 3, /* warp-major, order drawn from `seed` at every barrier */
    TF_EMU_WARPS_MIXED = 4,          /* one of the four above per block, drawn from `seed` */
} tf_emu_warp_order;

/* The emulator's memory checks and profiler (bits of tf_emu_launch_args.checks;
 * TF_EMU_CHECK=race,mem,init,profile or =all in the environment adds them to every
 * launch). See kernels/emu/README.md. */
typedef enum tf_emu_check {
    TF_EMU_CHECK_RACE = 1,    /* shared-memory hazards with no barrier between */
    TF_EMU_CHECK_MEM = 2,     /* out of bounds, freed, misaligned accesses */
    TF_EMU_CHECK_INIT = 4,    /* reads of memory never written */
    TF_EMU_CHECK_PROFILE = 8, /* per-source-line memory requests (tf_emu_last_profile) */
} tf_emu_check;

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
    int32_t warp_order;          /* tf_emu_warp_order (0: round robin) */
    uint32_t timeout_ms;         /* watchdog: a worker whose threads make no progress (no
                                    rendezvous, no exit) this long stops the launch with an
                                    error; 0 = TF_EMU_TIMEOUT_S seconds, else 60 s */
    uint32_t checks;             /* tf_emu_check bits */
} tf_emu_launch_args;

/* Runs a kernel to completion on the emulator. Returns 0 on success; otherwise
 * a non-zero code and a NUL-terminated message in `err` (at most err_len bytes)
 * naming the kernel, block, thread and source location where known. */
int tf_emu_launch(const tf_emu_launch_args *args, char *err, size_t err_len);

/* Test hook: when `on`, the next fault the emulator handles faults again inside
 * its handler, which must end the process with a message (never recurse). */
void tf_emu_test_fault_in_handler(int on);

/* Emulator device memory: `bytes` zeroed bytes, 256-byte aligned, between two
 * 256-byte redzones that memcheck recognises. `initialized` 0 marks the bytes as
 * never written (initcheck reports reads of them until something writes them).
 * NULL when out of memory. */
void *tf_emu_malloc(size_t bytes, int initialized);
/* Frees a tf_emu_malloc allocation (NULL and unknown pointers are ignored); memcheck
 * reports later accesses of it as use after free. */
void tf_emu_free(void *ptr);
/* Calls of tf_emu_malloc so far in this process (failed ones included), counted
 * atomically: what tests read to see that a loop of launches allocates nothing. */
uint64_t tf_emu_alloc_count(void);
/* Marks bytes of a tf_emu_malloc allocation as written (initialized != 0) or not. */
void tf_emu_mark_initialized(const void *ptr, size_t bytes, int initialized);
/* The profile of the calling thread's last launch with TF_EMU_CHECK_PROFILE, as
 * tab-separated text (kernels/emu/profile.cpp); copies at most len - 1 bytes and a NUL,
 * returns its full length. */
size_t tf_emu_last_profile(char *buf, size_t len);

/* Number of kernels the emulator knows, and the i-th kernel's name. */
size_t tf_emu_kernel_count(void);
const char *tf_emu_kernel_name(size_t i);

/* Limits the emulator enforces (same as an H100/H200): static shared memory,
 * dynamic shared memory opt-in maximum, threads per block. */
#define TF_EMU_MAX_STATIC_SMEM (48u * 1024u)
#define TF_EMU_MAX_DYNAMIC_SMEM (227u * 1024u)
#define TF_EMU_MAX_THREADS_PER_BLOCK 1024u

/* ------------------------------------------------- emulator test kernels --- */

/* Params of the emulator-only test kernels in kernels/test/ (tests/emulator.rs;
 * not part of the fatbin). One generic struct: each kernel's comment says what
 * its inputs, outputs, `n`, `mode` and `arg` mean. */
typedef struct tf_test_params {
    tf_ptr in0;    /* input buffers */
    tf_ptr in1;
    tf_ptr in2;
    tf_ptr out0;   /* output buffers */
    tf_ptr out1;
    tf_ptr out2;
    int64_t n;     /* an element count or iteration count */
    int32_t mode;  /* the kernel's variant */
    int32_t arg;   /* a variant argument */
} tf_test_params;

#ifdef __cplusplus
}
#endif

#endif /* TF_KERNELS_H */
