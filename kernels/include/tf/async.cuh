// Asynchronous global -> shared copies: cp.async (sm_80+).
//
//   tf::cp_async_16(smem_dst, gmem_src, src_bytes);  // cp.async.cg, 16 bytes
//   tf::cp_async_8(...); tf::cp_async_4(...);        // cp.async.ca, 8 / 4 bytes
//   tf::cp_async_commit();                           // close the current group
//   tf::cp_async_wait<N>();                          // wait until <= N recent groups pend
//
// Bytes past src_bytes (0..size) are zero-filled; src_bytes == 0 reads nothing (the
// usual predicated-off tail load). Destination and source are aligned to the copy
// size; the destination is in shared memory. Data is visible to the issuing thread
// after its wait, to other threads after the wait and a barrier.
//
// The emulator (TF_EMU) poisons the destination at issue and copies at the wait, so
// a read before the wait sees 0xFF bytes; it checks alignment and that the
// destination is inside the block's shared memory.
#pragma once
#include "tf/mma.cuh"

namespace tf {

namespace detail {
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ uint64_t global_u64(const void* p) {
    return static_cast<uint64_t>(__cvta_generic_to_global(p));
}
#endif
}  // namespace detail

// cp.async.cg.shared.global [dst], [src], 16, src_bytes.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes TF_SITE_PARAM) {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(detail::smem_u32(smem)),
                 "l"(detail::global_u64(gmem)), "r"(src_bytes)
                 : "memory");
#elif defined(TF_EMU)
    ::tf_emu::cp_async(smem, gmem, 16, src_bytes, TF_SITE_ARGS);
#else
    (void)smem, (void)gmem, (void)src_bytes;
#endif
}

// cp.async.ca.shared.global [dst], [src], 8, src_bytes.
__device__ __forceinline__ void cp_async_8(void* smem, const void* gmem, int src_bytes TF_SITE_PARAM) {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(detail::smem_u32(smem)),
                 "l"(detail::global_u64(gmem)), "r"(src_bytes)
                 : "memory");
#elif defined(TF_EMU)
    ::tf_emu::cp_async(smem, gmem, 8, src_bytes, TF_SITE_ARGS);
#else
    (void)smem, (void)gmem, (void)src_bytes;
#endif
}

// cp.async.ca.shared.global [dst], [src], 4, src_bytes.
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem, int src_bytes TF_SITE_PARAM) {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(detail::smem_u32(smem)),
                 "l"(detail::global_u64(gmem)), "r"(src_bytes)
                 : "memory");
#elif defined(TF_EMU)
    ::tf_emu::cp_async(smem, gmem, 4, src_bytes, TF_SITE_ARGS);
#else
    (void)smem, (void)gmem, (void)src_bytes;
#endif
}

// cp.async.commit_group: the copies issued since the last commit form one group.
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(TF_EMU)
    ::tf_emu::cp_async_commit();
#endif
}

// cp.async.wait_group N: every group but the N most recent committed ones is done.
template <int N>
__device__ __forceinline__ void cp_async_wait(TF_SITE_PARAM_FIRST) {
    static_assert(N >= 0, "cp_async_wait<N>: N >= 0");
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif defined(TF_EMU)
    ::tf_emu::cp_async_wait(N, TF_SITE_ARGS);
#endif
}

}  // namespace tf
