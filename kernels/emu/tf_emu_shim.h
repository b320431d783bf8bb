// tf_emu_shim.h: the CUDA vocabulary for kernels compiled as C++17 by g++ on the CPU
// SIMT emulator. build_emu.rs makes it the first include of every kernel source.
//
// Defines: the CUDA keywords (as nothing or GCC attributes), threadIdx & co. (per
// fiber), dim3 and the vector types, __half / __nv_bfloat16 (round-to-nearest-even
// conversions, arithmetic in f32/f64 rounded once), the math and bit intrinsics,
// __syncthreads and the warp collectives (real rendezvous in the runtime), atomics.
// Not defined: __CUDACC__ and __CUDA_ARCH__, so `#if defined(__CUDA_ARCH__)` code
// takes its host branch; TF_EMU is defined instead.
//
// Static `__shared__` declarations are rewritten by build_emu.rs into calls of
// tf_emu::static_shared (one poisoned window per block); a `__shared__` that reaches
// the compiler unrewritten (e.g. produced by a macro) is a compile error.
#pragma once
#define TF_EMU 1

#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <type_traits>

#include "tf_emu_api.h"

#pragma GCC diagnostic ignored "-Wunknown-pragmas"  // #pragma unroll

// ------------------------------------------------------------------ keywords

#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
#define __shared__                                                                                     \
    _Pragma("GCC error \"tf_emu: this __shared__ was not rewritten by build_emu.rs (declared through a " \
            "macro?); declare static shared variables directly in a .cu/.cuh under kernels/\"")
#if !defined(__has_builtin) || !__has_builtin(__builtin_assume)
#define __builtin_assume(x) ((void)0)
#endif

// threadIdx is per fiber; blockIdx, blockDim and gridDim per block.
#define threadIdx (*static_cast<const uint3*>(::tf_emu::t_thread_idx))
#define blockIdx (static_cast<const uint3&>(::tf_emu::t_block_ids->block_idx))
#define blockDim (static_cast<const dim3&>(::tf_emu::t_block_ids->block_dim))
#define gridDim (static_cast<const dim3&>(::tf_emu::t_block_ids->grid_dim))
static constexpr int warpSize = 32;

// ------------------------------------------------------------------ vector types

#define TF_EMU_VEC2(name, T, al)                                                                        \
    struct __attribute__((aligned(al))) name {                                                          \
        T x, y;                                                                                         \
    };                                                                                                  \
    static __forceinline__ name make_##name(T x, T y) { return name{x, y}; }
#define TF_EMU_VEC3(name, T)                                                                            \
    struct name {                                                                                       \
        T x, y, z;                                                                                      \
    };                                                                                                  \
    static __forceinline__ name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define TF_EMU_VEC4(name, T, al)                                                                        \
    struct __attribute__((aligned(al))) name {                                                          \
        T x, y, z, w;                                                                                   \
    };                                                                                                  \
    static __forceinline__ name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

TF_EMU_VEC2(char2, signed char, 2)
TF_EMU_VEC2(uchar2, unsigned char, 2)
TF_EMU_VEC4(char4, signed char, 4)
TF_EMU_VEC4(uchar4, unsigned char, 4)
TF_EMU_VEC2(short2, short, 4)
TF_EMU_VEC2(ushort2, unsigned short, 4)
TF_EMU_VEC4(short4, short, 8)
TF_EMU_VEC4(ushort4, unsigned short, 8)
TF_EMU_VEC2(int2, int, 8)
TF_EMU_VEC3(int3, int)
TF_EMU_VEC4(int4, int, 16)
TF_EMU_VEC2(uint2, unsigned int, 8)
TF_EMU_VEC4(uint4, unsigned int, 16)
TF_EMU_VEC2(float2, float, 8)
TF_EMU_VEC3(float3, float)
TF_EMU_VEC4(float4, float, 16)
TF_EMU_VEC2(longlong2, long long, 16)
TF_EMU_VEC2(ulonglong2, unsigned long long, 16)
TF_EMU_VEC2(double2, double, 16)
static __forceinline__ uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }
#undef TF_EMU_VEC2
#undef TF_EMU_VEC3
#undef TF_EMU_VEC4

// ------------------------------------------------------------------ bits

namespace tf_emu {
template <typename To, typename From>
static __forceinline__ To bit_cast(const From& f) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast of different sizes");
    To t;
    memcpy(&t, &f, sizeof(To));
    return t;
}

// f32/f64 -> 16-bit float with round-to-nearest-even: MB mantissa bits, EB exponent
// bits. NaN gives the canonical 0x7fff (as cvt.rn does).
template <int MB, int EB>
static inline uint16_t round_from_double(double v) {
    const uint64_t bits = bit_cast<uint64_t>(v);
    const uint16_t sign = (uint16_t)((bits >> 48) & 0x8000u);
    const int bias = (1 << (EB - 1)) - 1;
    const uint16_t inf = (uint16_t)(sign | (((1u << EB) - 1u) << MB));
    if (v != v) return 0x7fff;
    const double a = fabs(v);
    if (a == 0.0) return sign;
    if (a == (double)INFINITY) return inf;
    int e;
    (void)frexp(a, &e);
    int E = e - 1;  // a in [2^E, 2^(E+1))
    const int emin = 1 - bias, emax = bias;
    if (E > emax) return inf;
    const int qexp = (E < emin ? emin : E) - MB;  // the quantum is 2^qexp
    const double scaled = ldexp(a, -qexp);
    double fl = floor(scaled);
    const double rem = scaled - fl;
    uint64_t n = (uint64_t)fl;
    if (rem > 0.5 || (rem == 0.5 && (n & 1u))) n++;
    if (E < emin) return (uint16_t)(sign | n);  // subnormal (n == 2^MB is the smallest normal)
    if (n == (1ull << (MB + 1))) {
        n >>= 1;
        E++;
    }
    if (E > emax) return inf;
    return (uint16_t)(sign | ((uint64_t)(E + bias) << MB) | (n - (1ull << MB)));
}

static inline uint16_t f32_to_f16(float f) {
    const uint32_t x = bit_cast<uint32_t>(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fff;                         // NaN
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);     // >= 65520: inf
    if (ax < 0x38800000u) {                                       // below 2^-14: subnormal or 0
        if (ax < 0x33000000u) return (uint16_t)sign;              // < 2^-25 (2^-25 ties to 0)
        const uint32_t e = ax >> 23;
        const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e;                          // 14..24
        uint32_t q = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    const uint32_t r = ax - 0x38000000u;  // rebias 127 -> 15
    uint32_t q = r >> 13;
    const uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

static inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t out;
    if (e == 0) {
        if (m == 0) {
            out = sign;
        } else {  // subnormal: m * 2^-24, exact in f32
            const float v = (float)m * 5.9604644775390625e-8f;
            out = sign | bit_cast<uint32_t>(v);
        }
    } else if (e == 31) {
        out = sign | 0x7f800000u | (m << 13);
    } else {
        out = sign | ((e + 112u) << 23) | (m << 13);
    }
    return bit_cast<float>(out);
}

static inline uint16_t f32_to_bf16(float f) {
    const uint32_t x = bit_cast<uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fff;  // NaN
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

static inline float bf16_to_f32(uint16_t b) { return bit_cast<float>((uint32_t)b << 16); }
}  // namespace tf_emu

// ------------------------------------------------------------------ __half

struct __half_raw {
    unsigned short x;
};
struct __half2_raw {
    unsigned short x, y;
};

struct __half {
    unsigned short __x;
    __half() = default;
    constexpr __half(const __half_raw& r) : __x(r.x) {}
    __half(float f) : __x(::tf_emu::f32_to_f16(f)) {}
    __half(double d) : __x(::tf_emu::round_from_double<10, 5>(d)) {}
    __half(int i) : __x(::tf_emu::round_from_double<10, 5>((double)i)) {}
    __half(unsigned int i) : __x(::tf_emu::round_from_double<10, 5>((double)i)) {}
    __half(long long i) : __x(::tf_emu::round_from_double<10, 5>((double)i)) {}
    __half(unsigned long long i) : __x(::tf_emu::round_from_double<10, 5>((double)i)) {}
    __half(short i) : __x(::tf_emu::round_from_double<10, 5>((double)i)) {}
    __half(unsigned short i) : __x(::tf_emu::round_from_double<10, 5>((double)i)) {}
    __half& operator=(const __half_raw& r) {
        __x = r.x;
        return *this;
    }
    operator float() const { return ::tf_emu::f16_to_f32(__x); }
    operator __half_raw() const { return __half_raw{__x}; }
};

struct __attribute__((aligned(4))) __half2 {
    __half x, y;
    __half2() = default;
    constexpr __half2(const __half& a, const __half& b) : x(a), y(b) {}
    constexpr __half2(const __half2_raw& r) : x(__half_raw{r.x}), y(__half_raw{r.y}) {}
    operator __half2_raw() const { return __half2_raw{x.__x, y.__x}; }
};
typedef __half half;
typedef __half2 half2;

// ------------------------------------------------------------------ __nv_bfloat16

struct __nv_bfloat16_raw {
    unsigned short x;
};
struct __nv_bfloat162_raw {
    unsigned short x, y;
};

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(::tf_emu::f32_to_bf16(f)) {}
    __nv_bfloat16(double d) : __x(::tf_emu::round_from_double<7, 8>(d)) {}
    __nv_bfloat16(int i) : __x(::tf_emu::round_from_double<7, 8>((double)i)) {}
    __nv_bfloat16(unsigned int i) : __x(::tf_emu::round_from_double<7, 8>((double)i)) {}
    __nv_bfloat16(long long i) : __x(::tf_emu::round_from_double<7, 8>((double)i)) {}
    __nv_bfloat16(unsigned long long i) : __x(::tf_emu::round_from_double<7, 8>((double)i)) {}
    __nv_bfloat16(short i) : __x(::tf_emu::round_from_double<7, 8>((double)i)) {}
    __nv_bfloat16(unsigned short i) : __x(::tf_emu::round_from_double<7, 8>((double)i)) {}
    __nv_bfloat16& operator=(const __nv_bfloat16_raw& r) {
        __x = r.x;
        return *this;
    }
    operator float() const { return ::tf_emu::bf16_to_f32(__x); }
    operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};

struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
    __nv_bfloat162() = default;
    constexpr __nv_bfloat162(const __nv_bfloat16& a, const __nv_bfloat16& b) : x(a), y(b) {}
    constexpr __nv_bfloat162(const __nv_bfloat162_raw& r)
        : x(__nv_bfloat16_raw{r.x}), y(__nv_bfloat16_raw{r.y}) {}
    operator __nv_bfloat162_raw() const { return __nv_bfloat162_raw{x.__x, y.__x}; }
};
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

static_assert(sizeof(__half) == 2 && sizeof(__half2) == 4, "half layout");
static_assert(sizeof(__nv_bfloat16) == 2 && sizeof(__nv_bfloat162) == 4, "bf16 layout");

// Conversions.
static __forceinline__ __half __float2half(float f) { return __half(f); }
static __forceinline__ __half __float2half_rn(float f) { return __half(f); }
static __forceinline__ __half __double2half(double d) { return __half(d); }
static __forceinline__ float __half2float(__half h) { return ::tf_emu::f16_to_f32(h.__x); }
static __forceinline__ __half __int2half_rn(int i) { return __half(i); }
static __forceinline__ __half __uint2half_rn(unsigned int i) { return __half(i); }
static __forceinline__ int __half2int_rn(__half h) { return (int)nearbyintf(__half2float(h)); }
static __forceinline__ int __half2int_rz(__half h) { return (int)__half2float(h); }
static __forceinline__ unsigned short __half_as_ushort(__half h) { return h.__x; }
static __forceinline__ short __half_as_short(__half h) { return (short)h.__x; }
static __forceinline__ __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
static __forceinline__ __half __short_as_half(short s) { return __half(__half_raw{(unsigned short)s}); }
static __forceinline__ __half2 __floats2half2_rn(float lo, float hi) { return __half2(__half(lo), __half(hi)); }
static __forceinline__ __half2 __float2half2_rn(float f) { return __half2(__half(f), __half(f)); }
static __forceinline__ __half2 __float22half2_rn(float2 f) { return __half2(__half(f.x), __half(f.y)); }
static __forceinline__ float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
static __forceinline__ float __low2float(__half2 h) { return __half2float(h.x); }
static __forceinline__ float __high2float(__half2 h) { return __half2float(h.y); }
static __forceinline__ __half __low2half(__half2 h) { return h.x; }
static __forceinline__ __half __high2half(__half2 h) { return h.y; }
static __forceinline__ __half2 __halves2half2(__half lo, __half hi) { return __half2(lo, hi); }
static __forceinline__ __half2 __half2half2(__half h) { return __half2(h, h); }
static __forceinline__ __half2 __lows2half2(__half2 a, __half2 b) { return __half2(a.x, b.x); }
static __forceinline__ __half2 __highs2half2(__half2 a, __half2 b) { return __half2(a.y, b.y); }
static __forceinline__ __half2 make_half2(__half x, __half y) { return __half2(x, y); }

static __forceinline__ __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
static __forceinline__ __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
static __forceinline__ __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
static __forceinline__ float __bfloat162float(__nv_bfloat16 b) { return ::tf_emu::bf16_to_f32(b.__x); }
static __forceinline__ __nv_bfloat16 __int2bfloat16_rn(int i) { return __nv_bfloat16(i); }
static __forceinline__ unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
static __forceinline__ short __bfloat16_as_short(__nv_bfloat16 b) { return (short)b.__x; }
static __forceinline__ __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    return __nv_bfloat16(__nv_bfloat16_raw{u});
}
static __forceinline__ __nv_bfloat16 __short_as_bfloat16(short s) {
    return __nv_bfloat16(__nv_bfloat16_raw{(unsigned short)s});
}
static __forceinline__ __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162(__nv_bfloat16(lo), __nv_bfloat16(hi));
}
static __forceinline__ __nv_bfloat162 __float2bfloat162_rn(float f) {
    return __nv_bfloat162(__nv_bfloat16(f), __nv_bfloat16(f));
}
static __forceinline__ __nv_bfloat162 __float22bfloat162_rn(float2 f) {
    return __nv_bfloat162(__nv_bfloat16(f.x), __nv_bfloat16(f.y));
}
static __forceinline__ float2 __bfloat1622float2(__nv_bfloat162 h) {
    return float2{__bfloat162float(h.x), __bfloat162float(h.y)};
}
static __forceinline__ float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
static __forceinline__ float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
static __forceinline__ __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
static __forceinline__ __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
static __forceinline__ __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return __nv_bfloat162(lo, hi);
}
static __forceinline__ __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 h) { return __nv_bfloat162(h, h); }
static __forceinline__ __nv_bfloat162 __lows2bfloat162(__nv_bfloat162 a, __nv_bfloat162 b) {
    return __nv_bfloat162(a.x, b.x);
}
static __forceinline__ __nv_bfloat162 __highs2bfloat162(__nv_bfloat162 a, __nv_bfloat162 b) {
    return __nv_bfloat162(a.y, b.y);
}
static __forceinline__ __nv_bfloat162 make_bfloat162(__nv_bfloat16 x, __nv_bfloat16 y) {
    return __nv_bfloat162(x, y);
}

// Arithmetic: exact in f64 for the operands' precision, rounded once to the type
// (bf16 sums of far-apart magnitudes can round twice; within any test tolerance).
#define TF_EMU_H16_OPS(T, T2, TO_F)                                                                     \
    static __forceinline__ T __hadd(T a, T b) { return T((double)TO_F(a) + (double)TO_F(b)); }          \
    static __forceinline__ T __hsub(T a, T b) { return T((double)TO_F(a) - (double)TO_F(b)); }          \
    static __forceinline__ T __hmul(T a, T b) { return T((double)TO_F(a) * (double)TO_F(b)); }          \
    static __forceinline__ T __hdiv(T a, T b) { return T((double)TO_F(a) / (double)TO_F(b)); }          \
    static __forceinline__ T __hfma(T a, T b, T c) {                                                    \
        return T(fma((double)TO_F(a), (double)TO_F(b), (double)TO_F(c)));                               \
    }                                                                                                   \
    static __forceinline__ T __hneg(T a) { return T(-TO_F(a)); }                                        \
    static __forceinline__ T __habs(T a) { return T(fabsf(TO_F(a))); }                                  \
    static __forceinline__ T __hmax(T a, T b) { return T(fmaxf(TO_F(a), TO_F(b))); }                    \
    static __forceinline__ T __hmin(T a, T b) { return T(fminf(TO_F(a), TO_F(b))); }                    \
    static __forceinline__ bool __heq(T a, T b) { return TO_F(a) == TO_F(b); }                          \
    static __forceinline__ bool __hne(T a, T b) { return TO_F(a) != TO_F(b); }                          \
    static __forceinline__ bool __hlt(T a, T b) { return TO_F(a) < TO_F(b); }                           \
    static __forceinline__ bool __hle(T a, T b) { return TO_F(a) <= TO_F(b); }                          \
    static __forceinline__ bool __hgt(T a, T b) { return TO_F(a) > TO_F(b); }                           \
    static __forceinline__ bool __hge(T a, T b) { return TO_F(a) >= TO_F(b); }                          \
    static __forceinline__ bool __hisnan(T a) { return TO_F(a) != TO_F(a); }                            \
    static __forceinline__ int __hisinf(T a) { return isinf(TO_F(a)) ? (TO_F(a) > 0 ? 1 : -1) : 0; }    \
    static __forceinline__ T2 __hadd2(T2 a, T2 b) { return T2(__hadd(a.x, b.x), __hadd(a.y, b.y)); }    \
    static __forceinline__ T2 __hsub2(T2 a, T2 b) { return T2(__hsub(a.x, b.x), __hsub(a.y, b.y)); }    \
    static __forceinline__ T2 __hmul2(T2 a, T2 b) { return T2(__hmul(a.x, b.x), __hmul(a.y, b.y)); }    \
    static __forceinline__ T2 __h2div(T2 a, T2 b) { return T2(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }    \
    static __forceinline__ T2 __hfma2(T2 a, T2 b, T2 c) {                                               \
        return T2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y));                                        \
    }                                                                                                   \
    static __forceinline__ T2 __hneg2(T2 a) { return T2(__hneg(a.x), __hneg(a.y)); }                    \
    static __forceinline__ T2 __habs2(T2 a) { return T2(__habs(a.x), __habs(a.y)); }                    \
    static __forceinline__ T2 __hmax2(T2 a, T2 b) { return T2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }    \
    static __forceinline__ T2 __hmin2(T2 a, T2 b) { return T2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }    \
    static __forceinline__ T operator+(const T& a, const T& b) { return __hadd(a, b); }                 \
    static __forceinline__ T operator-(const T& a, const T& b) { return __hsub(a, b); }                 \
    static __forceinline__ T operator*(const T& a, const T& b) { return __hmul(a, b); }                 \
    static __forceinline__ T operator/(const T& a, const T& b) { return __hdiv(a, b); }                 \
    static __forceinline__ T& operator+=(T& a, const T& b) { return a = __hadd(a, b); }                 \
    static __forceinline__ T& operator-=(T& a, const T& b) { return a = __hsub(a, b); }                 \
    static __forceinline__ T& operator*=(T& a, const T& b) { return a = __hmul(a, b); }                 \
    static __forceinline__ T& operator/=(T& a, const T& b) { return a = __hdiv(a, b); }                 \
    static __forceinline__ T operator-(const T& a) { return __hneg(a); }                                \
    static __forceinline__ T operator+(const T& a) { return a; }                                        \
    static __forceinline__ bool operator==(const T& a, const T& b) { return __heq(a, b); }              \
    static __forceinline__ bool operator!=(const T& a, const T& b) { return __hne(a, b); }              \
    static __forceinline__ bool operator<(const T& a, const T& b) { return __hlt(a, b); }               \
    static __forceinline__ bool operator<=(const T& a, const T& b) { return __hle(a, b); }              \
    static __forceinline__ bool operator>(const T& a, const T& b) { return __hgt(a, b); }               \
    static __forceinline__ bool operator>=(const T& a, const T& b) { return __hge(a, b); }              \
    static __forceinline__ T2 operator+(const T2& a, const T2& b) { return __hadd2(a, b); }             \
    static __forceinline__ T2 operator-(const T2& a, const T2& b) { return __hsub2(a, b); }             \
    static __forceinline__ T2 operator*(const T2& a, const T2& b) { return __hmul2(a, b); }             \
    static __forceinline__ T2 operator/(const T2& a, const T2& b) { return __h2div(a, b); }             \
    static __forceinline__ T2& operator+=(T2& a, const T2& b) { return a = __hadd2(a, b); }             \
    static __forceinline__ T2& operator-=(T2& a, const T2& b) { return a = __hsub2(a, b); }             \
    static __forceinline__ T2& operator*=(T2& a, const T2& b) { return a = __hmul2(a, b); }             \
    static __forceinline__ T2 operator-(const T2& a) { return __hneg2(a); }

TF_EMU_H16_OPS(__half, __half2, __half2float)
TF_EMU_H16_OPS(__nv_bfloat16, __nv_bfloat162, __bfloat162float)
#undef TF_EMU_H16_OPS

// ------------------------------------------------------------------ math

static __forceinline__ float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static __forceinline__ double rsqrt(double x) { return 1.0 / sqrt(x); }
static __forceinline__ float rcbrtf(float x) { return 1.0f / cbrtf(x); }
// glibc declares __expf, __sinf ... itself (internal names), so these are macros.
namespace tf_emu {
static __forceinline__ float fast_exp10(float x) { return powf(10.0f, x); }
static __forceinline__ void fast_sincos(float x, float* s, float* c) {
    *s = sinf(x);
    *c = cosf(x);
}
}  // namespace tf_emu
#define __expf(x) expf(x)
#define __exp10f(x) ::tf_emu::fast_exp10(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __log10f(x) log10f(x)
#define __powf(x, y) powf(x, y)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __sincosf(x, s, c) ::tf_emu::fast_sincos(x, s, c)
static __forceinline__ float __fdividef(float a, float b) { return a / b; }
static __forceinline__ float __frcp_rn(float x) { return 1.0f / x; }
static __forceinline__ float __fsqrt_rn(float x) { return sqrtf(x); }
static __forceinline__ float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
static __forceinline__ float __fadd_rn(float a, float b) { return a + b; }
static __forceinline__ float __fsub_rn(float a, float b) { return a - b; }
static __forceinline__ float __fmul_rn(float a, float b) { return a * b; }
static __forceinline__ float __fdiv_rn(float a, float b) { return a / b; }
static __forceinline__ float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static __forceinline__ double __dadd_rn(double a, double b) { return a + b; }
static __forceinline__ double __dmul_rn(double a, double b) { return a * b; }
static __forceinline__ double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static __forceinline__ float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }

// min / max: exactly CUDA's overload set (crt/math_functions.h), so a call that is
// ambiguous for nvcc is ambiguous here too.
#define TF_EMU_MINMAX(R, A, B)                                                                          \
    static __forceinline__ R min(const A a, const B b) { return (R)a < (R)b ? (R)a : (R)b; }            \
    static __forceinline__ R max(const A a, const B b) { return (R)a > (R)b ? (R)a : (R)b; }
TF_EMU_MINMAX(int, int, int)
TF_EMU_MINMAX(unsigned int, unsigned int, unsigned int)
TF_EMU_MINMAX(unsigned int, int, unsigned int)
TF_EMU_MINMAX(unsigned int, unsigned int, int)
TF_EMU_MINMAX(long, long, long)
TF_EMU_MINMAX(unsigned long, unsigned long, unsigned long)
TF_EMU_MINMAX(unsigned long, long, unsigned long)
TF_EMU_MINMAX(unsigned long, unsigned long, long)
TF_EMU_MINMAX(long long, long long, long long)
TF_EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
TF_EMU_MINMAX(unsigned long long, long long, unsigned long long)
TF_EMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef TF_EMU_MINMAX
static __forceinline__ float min(const float a, const float b) { return fminf(a, b); }
static __forceinline__ float max(const float a, const float b) { return fmaxf(a, b); }
static __forceinline__ double min(const double a, const double b) { return fmin(a, b); }
static __forceinline__ double max(const double a, const double b) { return fmax(a, b); }
static __forceinline__ double min(const float a, const double b) { return fmin((double)a, b); }
static __forceinline__ double min(const double a, const float b) { return fmin(a, (double)b); }
static __forceinline__ double max(const float a, const double b) { return fmax((double)a, b); }
static __forceinline__ double max(const double a, const float b) { return fmax(a, (double)b); }
static __forceinline__ unsigned int umin(unsigned int a, unsigned int b) { return a < b ? a : b; }
static __forceinline__ unsigned int umax(unsigned int a, unsigned int b) { return a > b ? a : b; }

// Cache-hinted loads and stores: plain accesses on the CPU.
template <typename T> static __forceinline__ T __ldg(const T* p) { return *p; }
template <typename T> static __forceinline__ T __ldca(const T* p) { return *p; }
template <typename T> static __forceinline__ T __ldcg(const T* p) { return *p; }
template <typename T> static __forceinline__ T __ldcs(const T* p) { return *p; }
template <typename T> static __forceinline__ T __ldlu(const T* p) { return *p; }
template <typename T> static __forceinline__ T __ldcv(const T* p) { return *p; }
template <typename T> static __forceinline__ void __stcg(T* p, T v) { *p = v; }
template <typename T> static __forceinline__ void __stcs(T* p, T v) { *p = v; }
template <typename T> static __forceinline__ void __stwb(T* p, T v) { *p = v; }
template <typename T> static __forceinline__ void __stwt(T* p, T v) { *p = v; }

// Bit reinterpretation and integer intrinsics.
static __forceinline__ float __int_as_float(int i) { return ::tf_emu::bit_cast<float>(i); }
static __forceinline__ int __float_as_int(float f) { return ::tf_emu::bit_cast<int>(f); }
static __forceinline__ float __uint_as_float(unsigned int u) { return ::tf_emu::bit_cast<float>(u); }
static __forceinline__ unsigned int __float_as_uint(float f) { return ::tf_emu::bit_cast<unsigned int>(f); }
static __forceinline__ double __longlong_as_double(long long i) { return ::tf_emu::bit_cast<double>(i); }
static __forceinline__ long long __double_as_longlong(double d) { return ::tf_emu::bit_cast<long long>(d); }
static __forceinline__ int __popc(unsigned int x) { return __builtin_popcount(x); }
static __forceinline__ int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static __forceinline__ int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
static __forceinline__ int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static __forceinline__ int __ffs(int x) { return __builtin_ffs(x); }
static __forceinline__ int __ffsll(long long x) { return __builtin_ffsll(x); }
static __forceinline__ unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
static __forceinline__ unsigned long long __brevll(unsigned long long x) {
    return ((unsigned long long)__brev((unsigned int)x) << 32) | __brev((unsigned int)(x >> 32));
}
static __forceinline__ unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
static __forceinline__ int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static __forceinline__ unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static __forceinline__ long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
static __forceinline__ unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned int)((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
}
static __forceinline__ unsigned int __funnelshift_l(unsigned int lo, unsigned int hi, unsigned int s) {
    return (unsigned int)((((unsigned long long)hi << 32 | lo) << (s & 31u)) >> 32);
}
static __forceinline__ unsigned int __funnelshift_r(unsigned int lo, unsigned int hi, unsigned int s) {
    return (unsigned int)(((unsigned long long)hi << 32 | lo) >> (s & 31u));
}
static __forceinline__ long long clock64() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

// ------------------------------------------------------------------ synchronisation

#define TF_EMU_SITE const char *tf_emu_file = __builtin_FILE(), int tf_emu_line = __builtin_LINE()

static __forceinline__ void __syncthreads(TF_EMU_SITE) { ::tf_emu::syncthreads(0, 0, tf_emu_file, tf_emu_line); }
static __forceinline__ int __syncthreads_count(int pred, TF_EMU_SITE) {
    return ::tf_emu::syncthreads(1, pred, tf_emu_file, tf_emu_line);
}
static __forceinline__ int __syncthreads_and(int pred, TF_EMU_SITE) {
    return ::tf_emu::syncthreads(2, pred, tf_emu_file, tf_emu_line);
}
static __forceinline__ int __syncthreads_or(int pred, TF_EMU_SITE) {
    return ::tf_emu::syncthreads(3, pred, tf_emu_file, tf_emu_line);
}
static __forceinline__ void __syncwarp(unsigned int mask = 0xffffffffu, TF_EMU_SITE) {
    (void)::tf_emu::warp_op(::tf_emu::OP_SYNCWARP, mask, 0, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static __forceinline__ void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static __forceinline__ void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static __forceinline__ void __nanosleep(unsigned int) { ::tf_emu::yield(); }
static __forceinline__ unsigned int __activemask() { return ::tf_emu::activemask(); }
[[noreturn]] static __forceinline__ void __trap(TF_EMU_SITE) { ::tf_emu::trap("__trap()", tf_emu_file, tf_emu_line); }
[[noreturn]] static __forceinline__ void __brkpt(TF_EMU_SITE) { ::tf_emu::trap("__brkpt()", tf_emu_file, tf_emu_line); }

// Shuffles: any trivially copyable type of at most 8 bytes (int, unsigned, float,
// double, long long, __half2, __nv_bfloat162 ...). A source lane outside the mask
// gives all-ones bits (undefined on a GPU).
namespace tf_emu {
template <typename T>
static __forceinline__ T shfl(int op, unsigned int mask, T var, int arg, int width, const char* file, int line) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "shuffles move trivially copyable values of at most 8 bytes");
    uint64_t v = 0;
    memcpy(&v, &var, sizeof(T));
    const uint64_t r = warp_op(op, mask, v, arg, width, file, line);
    T out;
    memcpy(&out, &r, sizeof(T));
    return out;
}
}  // namespace tf_emu

template <typename T>
static __forceinline__ T __shfl_sync(unsigned int mask, T var, int src_lane, int width = warpSize, TF_EMU_SITE) {
    return ::tf_emu::shfl(::tf_emu::OP_SHFL_IDX, mask, var, src_lane, width, tf_emu_file, tf_emu_line);
}
template <typename T>
static __forceinline__ T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize,
                                        TF_EMU_SITE) {
    return ::tf_emu::shfl(::tf_emu::OP_SHFL_UP, mask, var, (int)delta, width, tf_emu_file, tf_emu_line);
}
template <typename T>
static __forceinline__ T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize,
                                          TF_EMU_SITE) {
    return ::tf_emu::shfl(::tf_emu::OP_SHFL_DOWN, mask, var, (int)delta, width, tf_emu_file, tf_emu_line);
}
template <typename T>
static __forceinline__ T __shfl_xor_sync(unsigned int mask, T var, int lane_mask, int width = warpSize,
                                         TF_EMU_SITE) {
    return ::tf_emu::shfl(::tf_emu::OP_SHFL_XOR, mask, var, lane_mask, width, tf_emu_file, tf_emu_line);
}
static __forceinline__ unsigned int __ballot_sync(unsigned int mask, int pred, TF_EMU_SITE) {
    return (unsigned int)::tf_emu::warp_op(::tf_emu::OP_BALLOT, mask, pred != 0, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ int __any_sync(unsigned int mask, int pred, TF_EMU_SITE) {
    return (int)::tf_emu::warp_op(::tf_emu::OP_ANY, mask, pred != 0, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ int __all_sync(unsigned int mask, int pred, TF_EMU_SITE) {
    return (int)::tf_emu::warp_op(::tf_emu::OP_ALL, mask, pred != 0, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ unsigned int __reduce_add_sync(unsigned int mask, unsigned int v, TF_EMU_SITE) {
    return (unsigned int)::tf_emu::warp_op(::tf_emu::OP_REDUCE_ADD, mask, v, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ int __reduce_add_sync(unsigned int mask, int v, TF_EMU_SITE) {
    return (int)::tf_emu::warp_op(::tf_emu::OP_REDUCE_ADD, mask, (uint32_t)v, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ unsigned int __reduce_min_sync(unsigned int mask, unsigned int v, TF_EMU_SITE) {
    return (unsigned int)::tf_emu::warp_op(::tf_emu::OP_REDUCE_MIN_U, mask, v, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ unsigned int __reduce_max_sync(unsigned int mask, unsigned int v, TF_EMU_SITE) {
    return (unsigned int)::tf_emu::warp_op(::tf_emu::OP_REDUCE_MAX_U, mask, v, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ int __reduce_min_sync(unsigned int mask, int v, TF_EMU_SITE) {
    return (int)::tf_emu::warp_op(::tf_emu::OP_REDUCE_MIN_I, mask, (uint32_t)v, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ int __reduce_max_sync(unsigned int mask, int v, TF_EMU_SITE) {
    return (int)::tf_emu::warp_op(::tf_emu::OP_REDUCE_MAX_I, mask, (uint32_t)v, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ unsigned int __reduce_and_sync(unsigned int mask, unsigned int v, TF_EMU_SITE) {
    return (unsigned int)::tf_emu::warp_op(::tf_emu::OP_REDUCE_AND, mask, v, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ unsigned int __reduce_or_sync(unsigned int mask, unsigned int v, TF_EMU_SITE) {
    return (unsigned int)::tf_emu::warp_op(::tf_emu::OP_REDUCE_OR, mask, v, 0, 32, tf_emu_file, tf_emu_line);
}
static __forceinline__ unsigned int __reduce_xor_sync(unsigned int mask, unsigned int v, TF_EMU_SITE) {
    return (unsigned int)::tf_emu::warp_op(::tf_emu::OP_REDUCE_XOR, mask, v, 0, 32, tf_emu_file, tf_emu_line);
}
template <typename T>
static __forceinline__ unsigned int __match_any_sync(unsigned int mask, T v, TF_EMU_SITE) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "__match_any_sync of a scalar");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    return (unsigned int)::tf_emu::warp_op(::tf_emu::OP_MATCH_ANY, mask, bits, 0, 32, tf_emu_file, tf_emu_line);
}

// ------------------------------------------------------------------ atomics
// Blocks run concurrently on several OS threads: global-memory atomics are real.

namespace tf_emu {
template <typename T, typename F>
static __forceinline__ T atomic_rmw(T* addr, F f) {
    using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
    static_assert(sizeof(T) == sizeof(U), "atomics on 4- and 8-byte values");
    U* p = reinterpret_cast<U*>(addr);
    U old = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        const T nv = f(bit_cast<T>(old));
        if (__atomic_compare_exchange_n(p, &old, bit_cast<U>(nv), true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) break;
    }
    return bit_cast<T>(old);
}
}  // namespace tf_emu

#define TF_EMU_ATOMIC_INT(T)                                                                            \
    static __forceinline__ T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); } \
    static __forceinline__ T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); } \
    static __forceinline__ T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); } \
    static __forceinline__ T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }   \
    static __forceinline__ T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); } \
    static __forceinline__ T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); } \
    static __forceinline__ T atomicMax(T* p, T v) {                                                      \
        return ::tf_emu::atomic_rmw(p, [v](T o) { return o > v ? o : v; });                              \
    }                                                                                                    \
    static __forceinline__ T atomicMin(T* p, T v) {                                                      \
        return ::tf_emu::atomic_rmw(p, [v](T o) { return o < v ? o : v; });                              \
    }                                                                                                    \
    static __forceinline__ T atomicCAS(T* p, T cmp, T v) {                                               \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);              \
        return cmp;                                                                                      \
    }
TF_EMU_ATOMIC_INT(int)
TF_EMU_ATOMIC_INT(unsigned int)
TF_EMU_ATOMIC_INT(long long)
TF_EMU_ATOMIC_INT(unsigned long long)
#undef TF_EMU_ATOMIC_INT
static __forceinline__ float atomicAdd(float* p, float v) {
    return ::tf_emu::atomic_rmw(p, [v](float o) { return o + v; });
}
static __forceinline__ double atomicAdd(double* p, double v) {
    return ::tf_emu::atomic_rmw(p, [v](double o) { return o + v; });
}
static __forceinline__ float atomicExch(float* p, float v) {
    return ::tf_emu::atomic_rmw(p, [v](float) { return v; });
}
static __forceinline__ unsigned int atomicInc(unsigned int* p, unsigned int lim) {
    return ::tf_emu::atomic_rmw(p, [lim](unsigned int o) { return o >= lim ? 0u : o + 1u; });
}
static __forceinline__ unsigned int atomicDec(unsigned int* p, unsigned int lim) {
    return ::tf_emu::atomic_rmw(p, [lim](unsigned int o) { return (o == 0u || o > lim) ? lim : o - 1u; });
}
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd
#define atomicMax_block atomicMax
#define atomicMin_block atomicMin
#define atomicExch_block atomicExch
#define atomicCAS_block atomicCAS
