// pattention_backward.cu: the backward of Pattention, Y = Θ(X·K_Pᵀ)·V_P: the norm's
// vector-Jacobian product (SIMT, f32 arithmetic) and the strided SIMT gemm. For f32
// storage every product runs on this gemm (a correct path, not a fast one); for
// f16 / bf16 the five products run on tensor cores (kernels/gemm_tc.cu) with S and
// dA rounded once to the storage type by the 16-bit norm kernels below. The VJP
// stays a kernel of its own: fused into dS's epilogue it would move no fewer bytes
// (docs/training.md, "The Pattention backward on the device").
//
// With A = X·K_Pᵀ and S = Θ(A) (tf-ref grad/pattention.rs has the derivation):
//   dS = dY·V_Pᵀ,  dA = VJP_Θ(A, dS),  dV_P = Sᵀ·dY,  dX = dA·K_P,  dK_P = dAᵀ·X.
// The host (tf-host ops/pattention_backward.rs) runs, in order:
//   gemm  A  = X·K_Pᵀ           gemm  dS = dY·V_Pᵀ
//   pattention_norm_backward: S and dA (f32: dA overwrites dS; 16-bit: both rounded)
//   gemm  dV_P = Sᵀ·dY          gemm  dX = dA·K_P          gemm  dK_P = dAᵀ·X
//
// gemm_{ta}_{tb}: C [m, n] f32 = Σ_l A(i, l)·B(j, l), with A(i, l) = a[i·a_rs + l·a_cs]
//   and B(j, l) = b[j·b_rs + l·b_cs]: a transposed operand is a swap of its two
//   strides. Grid (ceil(n / 16), ceil(m / 16)), 16 x 16 threads, one element of C
//   each; 16 x 16 tiles of A and B pass through shared memory (tails zero-filled),
//   the sum runs over l in order (deterministic).
// pattention_norm_backward_{f32,f16,bf16}: one block of 256 threads per row (blockIdx.x),
//   A read from the f32 recomputation or (l2_norm_gelu, kept) from the forward's
//   scaled scores ĥ·2^e (tf_kernels.h, tf_pnorm_backward_params):
//   the row statistic (the L2 norm scaled by the row's largest magnitude, so that
//   squares cannot overflow, or the softmax max and sum), then S and dA;
//   the block reductions add the 8 warps' partial sums in warp order. Rows of up
//   to 8192 elements are read once into registers (32 a thread at most); longer
//   rows are read again on every pass, with the same arithmetic in the same order.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/gelu.cuh"
#include "tf/reduce.cuh"

namespace tf_pattention_backward {

// ----------------------------------------------------------------------- gemm

constexpr int kTile = 16;

template <typename TA, typename TB>
__device__ __forceinline__ void gemm(const tf_gemm_params& p) {
    __shared__ float as[kTile][kTile + 1];
    __shared__ float bs[kTile][kTile + 1];
    const TA* a = reinterpret_cast<const TA*>(p.a);
    const TB* b = reinterpret_cast<const TB*>(p.b);
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t i0 = (int64_t)blockIdx.y * kTile, j0 = (int64_t)blockIdx.x * kTile;
    float acc = 0.0f;
    for (int64_t l0 = 0; l0 < p.k; l0 += kTile) {
        // thread (ty, tx) loads A(i0 + ty, l0 + tx) and B(j0 + ty, l0 + tx)
        const int64_t l = l0 + tx, ia = i0 + ty, jb = j0 + ty;
        as[ty][tx] = (ia < p.m && l < p.k) ? tf::to_float(a[ia * p.a_rs + l * p.a_cs]) : 0.0f;
        bs[ty][tx] = (jb < p.n && l < p.k) ? tf::to_float(b[jb * p.b_rs + l * p.b_cs]) : 0.0f;
        __syncthreads();
#pragma unroll
        for (int ll = 0; ll < kTile; ++ll) acc = fmaf(as[ty][ll], bs[tx][ll], acc);
        __syncthreads();
    }
    const int64_t i = i0 + ty, j = j0 + tx;
    if (i < p.m && j < p.n) reinterpret_cast<float*>(p.c)[i * p.c_rs + j] = acc;
}

// ------------------------------------------------------- the norm's backward

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* red) {
    return tf::block_reduce<kThreads, MAX>(v, red);
}

// gelu'(x) = Φ(x) + x·φ(x), Φ through erfc (no cancellation for x < 0); where
// x·φ(x) underflows (|x| > ~14) only Φ is left (and ±inf·0 would be NaN).
__device__ __forceinline__ float gelu_grad(float x) {
    const float cdf = 0.5f * erfcf(-x * 0.70710678118654752f);
    const float pdf = expf(-0.5f * x * x) * 0.39894228040143268f;
    return pdf == 0.0f ? cdf : cdf + x * pdf;
}

// Every element j of a row that thread threadIdx.x handles, in increasing j:
// j = tid + kThreads·i. kPer > 0: i < kPer, the whole row when n <= kThreads·kPer
// (the row then lives in registers, indexed by i); kPer = 0: any n, read from
// global memory on every pass. Both visit the same j in the same order, so sums
// come out bit for bit the same.
template <int kPer, typename F>
__device__ __forceinline__ void each(int64_t n, F f) {
    if constexpr (kPer > 0) {
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            const int64_t j = threadIdx.x + (int64_t)kThreads * i;
            if (j < n) f(i, j);
        }
    } else {
        for (int64_t j = threadIdx.x; j < n; j += kThreads) f(0, j);
    }
}

// The L2 norm of v(i, j) over the row, scaled by the largest magnitude (the
// statistic of tf-ref's l2_norm): the largest magnitude itself when it is 0 or
// not finite.
template <int kPer, typename F>
__device__ __forceinline__ float row_l2(int64_t n, float* red, F v) {
    float m = 0.0f;
    each<kPer>(n, [&](int i, int64_t j) { m = tf::max_nan(m, fabsf(v(i, j))); });
    m = block_reduce<true>(m, red);
    if (m == 0.0f || !isfinite(m)) return m;
    float q = 0.0f;
    each<kPer>(n, [&](int i, int64_t j) {
        const float u = v(i, j) / m;
        q = fmaf(u, u, q);
    });
    return m * sqrtf(block_reduce<false>(q, red));
}

// O: the type S and dA are written in (and the kept scores' type, when kept).
// f32: S to s, dA over dS (d); f16 / bf16:
// both rounded once, to s and da (rows ld_out apart), d then only scratch.
// kPer > 0: the row's A and dS are read once into registers (n <= kThreads·kPer)
// and every pass works on them; kPer = 0: each pass reads them again.
template <typename O, int kPer>
__device__ __forceinline__ void norm_backward(const tf_pnorm_backward_params& p) {
    __shared__ float red[kWarps];
    const int64_t row = blockIdx.x, off = row * p.ld;
    const float* a = reinterpret_cast<const float*>(p.a) + off;
    float* d = reinterpret_cast<float*>(p.d) + off;  // dS in (f32 S and dA: scratch)
    O* so = reinterpret_cast<O*>(p.s) + row * p.ld_out;
    O* dao = sizeof(O) == 4 ? reinterpret_cast<O*>(d) : reinterpret_cast<O*>(p.da) + row * p.ld_out;
    auto put_s = [&](int64_t j, float v) { so[j] = tf::from_float<O>(v); };
    auto put_da = [&](int64_t j, float v) { dao[j] = tf::from_float<O>(v); };
    const int64_t n = p.n;
    // A from the f32 recomputation, or from the forward's kept scaled scores:
    // ĥ·2^e exactly (a power of two; an empty tile's ĥ is 0 whatever its e)
    const O* kh = reinterpret_cast<const O*>(p.kept) + row * p.ld_kept;
    const int64_t n_tiles = (n + TF_PATTENTION_TILE_N - 1) / TF_PATTENTION_TILE_N;
    const float2* ks = reinterpret_cast<const float2*>(p.kept_stats) + row * n_tiles;
    auto load_a = [&](int64_t j) -> float {
        if (!p.kept) return a[j];
        const float h = tf::to_float<O>(kh[j]);
        const float e = ks[j / TF_PATTENTION_TILE_N].x;
        return h == 0.0f ? 0.0f : ldexpf(h, (int)e);
    };
    constexpr int kHeld = kPer > 0 ? kPer : 1;
    float ca[kHeld], cd[kHeld];  // the cached row (kPer > 0)
    if constexpr (kPer > 0) {
        each<kPer>(n, [&](int i, int64_t j) {
            ca[i] = load_a(j);
            cd[i] = d[j];
        });
    }
    auto A = [&](int i, int64_t j) -> float {
        if constexpr (kPer > 0) return ca[i];
        else return load_a(j);
    };
    auto D = [&](int i, int64_t j) -> float {
        if constexpr (kPer > 0) return cd[i];
        else return d[j];
    };
    auto set_d = [&](int i, int64_t j, float v) {
        if constexpr (kPer > 0) cd[i] = v;
        else d[j] = v;
    };
    if (p.norm == TF_NORM_SOFTMAX) {
        float mx = -INFINITY;
        each<kPer>(n, [&](int i, int64_t j) { mx = tf::max_nan(mx, A(i, j)); });
        mx = block_reduce<true>(mx, red);
        float l = 0.0f;
        each<kPer>(n, [&](int i, int64_t j) { l += expf(A(i, j) - mx); });
        const float f = p.scale / block_reduce<false>(l, red);
        float dot = 0.0f;
        each<kPer>(n, [&](int i, int64_t j) {
            const float sj = f * expf(A(i, j) - mx);
            put_s(j, sj);
            dot = fmaf(sj, D(i, j), dot);
        });
        const float mean = block_reduce<false>(dot, red) / p.scale;
        // S again, unrounded (the same f32 value as above)
        each<kPer>(n, [&](int i, int64_t j) { put_da(j, f * expf(A(i, j) - mx) * (D(i, j) - mean)); });
        return;
    }
    const bool l2_first = p.norm == TF_NORM_L2_NORM_GELU;
    // l2_norm_gelu normalises A, gelu_l2_norm normalises G = gelu(A)
    const float r = l2_first ? row_l2<kPer>(n, red, [&](int i, int64_t j) { return A(i, j); })
                             : row_l2<kPer>(n, red, [&](int i, int64_t j) { return tf::gelu(A(i, j)); });
    const float denom = r + p.eps;
    if (denom == 0.0f) {  // the forward's all-zero row: S = 0, dA = 0
        each<kPer>(n, [&](int, int64_t j) {
            put_s(j, 0.0f);
            put_da(j, 0.0f);
        });
        return;
    }
    // In the scale-free form, with v the normalised vector (A, or G = gelu(A)) and
    // u = v / r its unit vector: dv = c·(g − (r / D)·(u·g)·u), g = dÂ (l2_norm_gelu)
    // or dS (gelu_l2_norm). Every factor is O(1) or c, so rows of |A| ~ 1e±30 do not
    // under- or overflow f32 (c / (D·r) would), and n = 1 gives exactly 0.
    const float c = p.scale / denom;
    // u_j = v_j / r by division: exactly ±1 for a one-element row (a reciprocal
    // times v_j need not be)
    const float rr = r == 0.0f ? 1.0f : r;
    float dot = 0.0f;
    if (l2_first) {
        // S = gelu(c·A), dÂ = dS ⊙ gelu'(c·A) (kept in place of dS), dot = u·dÂ
        each<kPer>(n, [&](int i, int64_t j) {
            const float h = c * A(i, j);
            put_s(j, tf::gelu(h));
            set_d(i, j, D(i, j) * gelu_grad(h));
            dot = fmaf(A(i, j) / rr, D(i, j), dot);
        });
    } else {
        // S = c·G, dot = u·dS
        each<kPer>(n, [&](int i, int64_t j) {
            const float g = tf::gelu(A(i, j));
            put_s(j, c * g);
            dot = fmaf(g / rr, D(i, j), dot);
        });
    }
    const float coef = r / denom * block_reduce<false>(dot, red);  // 0 when r = 0
    if (l2_first) {
        each<kPer>(n, [&](int i, int64_t j) { put_da(j, c * (D(i, j) - coef * (A(i, j) / rr))); });
    } else {
        each<kPer>(n, [&](int i, int64_t j) {
            const float g = tf::gelu(A(i, j));
            put_da(j, c * (D(i, j) - coef * (g / rr)) * gelu_grad(A(i, j)));
        });
    }
}

// Rows of up to kThreads·32 = 8192 elements (every released config's token
// counts; 7168 at most) are held in registers: one read of A and dS instead of
// four and two (l2_norm_gelu).
template <typename O>
__device__ __forceinline__ void norm_backward_rows(const tf_pnorm_backward_params& p) {
    if (p.n <= kThreads * 4) {
        norm_backward<O, 4>(p);
    } else if (p.n <= kThreads * 8) {
        norm_backward<O, 8>(p);
    } else if (p.n <= kThreads * 16) {
        norm_backward<O, 16>(p);
    } else if (p.n <= kThreads * 32) {
        norm_backward<O, 32>(p);
    } else {
        norm_backward<O, 0>(p);
    }
}

}  // namespace tf_pattention_backward

// ------------------------------------------------------------------ entry points

extern "C" __global__ void __launch_bounds__(256) gemm_f32_f32(const tf_gemm_params p) {
    tf_pattention_backward::gemm<float, float>(p);
}
extern "C" __global__ void __launch_bounds__(256) gemm_f16_f16(const tf_gemm_params p) {
    tf_pattention_backward::gemm<__half, __half>(p);
}
extern "C" __global__ void __launch_bounds__(256) gemm_bf16_bf16(const tf_gemm_params p) {
    tf_pattention_backward::gemm<__nv_bfloat16, __nv_bfloat16>(p);
}
extern "C" __global__ void __launch_bounds__(256) gemm_f32_f16(const tf_gemm_params p) {
    tf_pattention_backward::gemm<float, __half>(p);
}
extern "C" __global__ void __launch_bounds__(256) gemm_f32_bf16(const tf_gemm_params p) {
    tf_pattention_backward::gemm<float, __nv_bfloat16>(p);
}

extern "C" __global__ void __launch_bounds__(256) pattention_norm_backward_f32(const tf_pnorm_backward_params p) {
    tf_pattention_backward::norm_backward_rows<float>(p);
}
extern "C" __global__ void __launch_bounds__(256) pattention_norm_backward_f16(const tf_pnorm_backward_params p) {
    tf_pattention_backward::norm_backward_rows<__half>(p);
}
extern "C" __global__ void __launch_bounds__(256) pattention_norm_backward_bf16(const tf_pnorm_backward_params p) {
    tf_pattention_backward::norm_backward_rows<__nv_bfloat16>(p);
}
