// The CUDA types every kernel and helper uses: __half, __nv_bfloat16 (+ the x2
// vectors), the vector types, fixed-width integers.
// - nvcc: <cuda_fp16.h>, <cuda_bf16.h>, <stdint.h>.
// - The CPU SIMT emulator (TF_EMU): nothing; its force-included shim
//   (kernels/emu/tf_emu_shim.h) defines all of it.
#pragma once
#if !defined(TF_EMU)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>
#endif
