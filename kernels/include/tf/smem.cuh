// Dynamic shared memory, one spelling for CUDA and the emulator:
//
//   TF_DYNAMIC_SMEM(unsigned char, smem);   // inside the kernel (or a device function)
//   float* tile = reinterpret_cast<float*>(smem + offset);
//
// declares `smem`, usable as an array or a pointer, 16-byte aligned, of the size the
// launch requested. On CUDA it is `extern __shared__ __align__(16) T smem[]` (use one
// element type per name in a translation unit: nvcc rejects the same extern name with
// two types; `unsigned char` plus casts is the usual way). On the emulator it is a
// pointer to the block's dynamic region of the shared-memory window (poisoned with
// 0xFF bytes before each block), so use it inside functions only, and do not take
// its sizeof.
#pragma once
#include "tf/cuda_types.cuh"

#if defined(TF_EMU)
#define TF_DYNAMIC_SMEM(T, name) T* const name = static_cast<T*>(::tf_emu::dynamic_smem())
#else
#define TF_DYNAMIC_SMEM(T, name) extern __shared__ __align__(16) T name[]
#endif
