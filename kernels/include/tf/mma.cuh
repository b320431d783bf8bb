// Tensor-core matrix products and shared-memory matrix loads: mma.sync m16n8k16 and
// ldmatrix. Fragment layouts: docs/ptx-fragments.md (the PTX ISA tables).
//
//   tf::mma_m16n8k16<T>(d, a, b);   // d += A*B; T = __half or __nv_bfloat16
//                                   // a[4]: A 16x16 row-major, b[2]: B 16x8 (k-major), d[4]: f32
//   tf::ldmatrix_x4(r, p);          // r[4] from four 8x8 b16 matrices; lane l gives row l%8
//                                   // of matrix l/8 (x2: lanes 0-15, x1: lanes 0-7)
//   tf::ldmatrix_x4_trans(r, p);    // the same, each matrix transposed
//
// Warp collectives: all 32 lanes of the warp execute the same call (.sync.aligned).
// ldmatrix row addresses are 16-byte aligned and in shared memory. If lane l passes
// &A[(l % 16) * ld + (l / 16) * 8] of a 16x16 row-major tile, ldmatrix_x4 gives
// exactly the mma A operand.
//
// CUDA: inline PTX (sm_80+). Emulator (TF_EMU): calls into kernels/emu, which checks
// addresses and the warp's convergence, and names the call site in its errors (the
// extra defaulted parameters exist only there). nvcc's host pass: empty bodies,
// never called.
#pragma once
#include "tf/cuda_types.cuh"

#if defined(TF_EMU)
#define TF_SITE_PARAM_FIRST const char *tf_site_file = __builtin_FILE(), int tf_site_line = __builtin_LINE()
#define TF_SITE_PARAM , TF_SITE_PARAM_FIRST
#define TF_SITE_ARGS tf_site_file, tf_site_line
#else
#define TF_SITE_PARAM_FIRST
#define TF_SITE_PARAM
#endif

namespace tf {

namespace detail {
template <typename A, typename B> struct same_type { static constexpr bool value = false; };
template <typename A> struct same_type<A, A> { static constexpr bool value = true; };

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif
}  // namespace detail

// D = A*B + D, mma.sync.aligned.m16n8k16.row.col.f32.{f16|bf16}.{f16|bf16}.f32.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2] TF_SITE_PARAM) {
    constexpr bool kF16 = detail::same_type<T, __half>::value;
    constexpr bool kBF16 = detail::same_type<T, __nv_bfloat16>::value;
    static_assert(kF16 || kBF16, "mma_m16n8k16<T>: T must be __half or __nv_bfloat16");
#if defined(__CUDA_ARCH__)
    if constexpr (kF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#elif defined(TF_EMU)
    ::tf_emu::mma_m16n8k16(kF16 ? 1 : 2, d, a, b, TF_SITE_ARGS);
#else
    (void)d, (void)a, (void)b;
#endif
}

// ldmatrix.sync.aligned.m8n8.x1.shared.b16: lanes 0-7 give the row addresses.
__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* smem TF_SITE_PARAM) {
#if defined(__CUDA_ARCH__)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(detail::smem_u32(smem))
                 : "memory");
#elif defined(TF_EMU)
    ::tf_emu::ldmatrix(1, false, r, smem, TF_SITE_ARGS);
#else
    (void)r, (void)smem;
#endif
}

// ldmatrix .x2: lanes 0-15 give the row addresses (matrix m: lanes 8m..8m+7).
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem TF_SITE_PARAM) {
#if defined(__CUDA_ARCH__)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(detail::smem_u32(smem))
                 : "memory");
#elif defined(TF_EMU)
    ::tf_emu::ldmatrix(2, false, r, smem, TF_SITE_ARGS);
#else
    (void)r, (void)smem;
#endif
}

// ldmatrix .x4: lanes 0-31 give the row addresses (matrix m: lanes 8m..8m+7).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem TF_SITE_PARAM) {
#if defined(__CUDA_ARCH__)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(detail::smem_u32(smem))
                 : "memory");
#elif defined(TF_EMU)
    ::tf_emu::ldmatrix(4, false, r, smem, TF_SITE_ARGS);
#else
    (void)r, (void)smem;
#endif
}

// ldmatrix .x1.trans: each 8x8 matrix transposed.
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* smem TF_SITE_PARAM) {
#if defined(__CUDA_ARCH__)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(detail::smem_u32(smem))
                 : "memory");
#elif defined(TF_EMU)
    ::tf_emu::ldmatrix(1, true, r, smem, TF_SITE_ARGS);
#else
    (void)r, (void)smem;
#endif
}

// ldmatrix .x2.trans.
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem TF_SITE_PARAM) {
#if defined(__CUDA_ARCH__)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(detail::smem_u32(smem))
                 : "memory");
#elif defined(TF_EMU)
    ::tf_emu::ldmatrix(2, true, r, smem, TF_SITE_ARGS);
#else
    (void)r, (void)smem;
#endif
}

// ldmatrix .x4.trans.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem TF_SITE_PARAM) {
#if defined(__CUDA_ARCH__)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(detail::smem_u32(smem))
                 : "memory");
#elif defined(TF_EMU)
    ::tf_emu::ldmatrix(4, true, r, smem, TF_SITE_ARGS);
#else
    (void)r, (void)smem;
#endif
}

}  // namespace tf
