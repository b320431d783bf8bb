// emu_gelu.cu: emulator test kernel for the two GELU forms of tf/gelu.cuh
// (tests/gelu.rs). Emulator only: not part of the fatbin.
#include "tf_kernels.h"
#include "tf/cuda_types.cuh"
#include "tf/convert.cuh"
#include "tf/gelu.cuh"

namespace tf_test_activation {

// n elements, grid-stride; out0 = tf::gelu_storage16, out1 = tf::gelu (exact form).
//   mode 0: in0 f32 -> out0, out1 f32 (before any rounding to 16 bits)
//   mode 1: in0 f16 bits -> out0, out1 f16 bits, as the 16-bit passes compute them
//           (to_float, gelu, from_float)
//   mode 2: the same for bf16
template <typename T>
__device__ void through(const tf_test_params& p, int64_t i) {
    const float x = tf::to_float<T>(reinterpret_cast<const T*>(p.in0)[i]);
    reinterpret_cast<T*>(p.out0)[i] = tf::from_float<T>(tf::gelu_storage16(x));
    reinterpret_cast<T*>(p.out1)[i] = tf::from_float<T>(tf::gelu(x));
}

__device__ void gelu(const tf_test_params& p) {
    const int64_t stride = (int64_t)blockDim.x * gridDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        if (p.mode == 0) {
            const float x = reinterpret_cast<const float*>(p.in0)[i];
            reinterpret_cast<float*>(p.out0)[i] = tf::gelu_storage16(x);
            reinterpret_cast<float*>(p.out1)[i] = tf::gelu(x);
        } else if (p.mode == 1) {
            through<__half>(p, i);
        } else {
            through<__nv_bfloat16>(p, i);
        }
    }
}

}  // namespace tf_test_activation

extern "C" __global__ void tf_test_gelu(const tf_test_params p) { tf_test_activation::gelu(p); }
