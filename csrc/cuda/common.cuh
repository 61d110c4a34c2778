// Device code shared by the CUDA kernels (no torch headers). Loads and stores: the compute type of each storage type, element
// and vector accesses that convert to and from it, and, for the host side of the launchers, the
// alignment test of the vector path and the dispatch on the runtime dtype; the kernels' load of
// their Philox (seed, offset) and the normals of a counter. No torch headers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"
#include "philox.h"

namespace stochnet {
namespace gpu {

// Everything is computed in float32, float64 for double.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// Elements between memory and the compute type: aligned vector accesses of four (load4 /
// store4) or eight (load8 / store8, 16-byte aligned) elements, single elements in load /
// store, and round (a store then a load). Half and bfloat16 round to nearest even.
template <typename T>
struct Io;

template <>
struct Io<float> {
  __device__ static void load4(const float* p, float (&v)[4]) {
    const float4 a = *reinterpret_cast<const float4*>(p);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
  }
  __device__ static void store4(float* p, const float (&v)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
  __device__ static void load8(const float* p, float (&v)[8]) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
  __device__ static void store8(float* p, const float (&v)[8]) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
  __device__ static float load(const float* p) { return *p; }
  __device__ static void store(float* p, float v) { *p = v; }
  __device__ static float round(float v) { return v; }
};

template <>
struct Io<double> {
  __device__ static void load4(const double* p, double (&v)[4]) {
    const double2 a = reinterpret_cast<const double2*>(p)[0];
    const double2 b = reinterpret_cast<const double2*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
  }
  __device__ static void store4(double* p, const double (&v)[4]) {
    reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
    reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
  }
  __device__ static void load8(const double* p, double (&v)[8]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const double2 a = reinterpret_cast<const double2*>(p)[i];
      v[2 * i] = a.x, v[2 * i + 1] = a.y;
    }
  }
  __device__ static void store8(double* p, const double (&v)[8]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) reinterpret_cast<double2*>(p)[i] = make_double2(v[2 * i], v[2 * i + 1]);
  }
  __device__ static double load(const double* p) { return *p; }
  __device__ static void store(double* p, double v) { *p = v; }
  __device__ static double round(double v) { return v; }
};

// Bit patterns of the 16-bit types <-> float.
template <typename T>
struct Bits16;

template <>
struct Bits16<__half> {
  __device__ static float to_float(uint32_t b) { return __half2float(__ushort_as_half(static_cast<unsigned short>(b))); }
  __device__ static uint32_t from_float(float v) { return __half_as_ushort(__float2half_rn(v)); }
};

template <>
struct Bits16<__nv_bfloat16> {
  __device__ static float to_float(uint32_t b) {
    return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(b)));
  }
  __device__ static uint32_t from_float(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};

// 16-bit types: a uint2 (uint4) holds four (eight) elements, element 2i in the low half of word i.
template <typename T>
struct Io16 {
  __device__ static void load4(const T* p, float (&v)[4]) {
    const uint2 r = *reinterpret_cast<const uint2*>(p);
    v[0] = Bits16<T>::to_float(r.x & 0xFFFFu);
    v[1] = Bits16<T>::to_float(r.x >> 16);
    v[2] = Bits16<T>::to_float(r.y & 0xFFFFu);
    v[3] = Bits16<T>::to_float(r.y >> 16);
  }
  __device__ static void store4(T* p, const float (&v)[4]) {
    const uint32_t w0 = Bits16<T>::from_float(v[0]) | (Bits16<T>::from_float(v[1]) << 16);
    const uint32_t w1 = Bits16<T>::from_float(v[2]) | (Bits16<T>::from_float(v[3]) << 16);
    *reinterpret_cast<uint2*>(p) = make_uint2(w0, w1);
  }
  __device__ static void load8(const T* p, float (&v)[8]) {
    const uint4 r = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = Bits16<T>::to_float(w[i] & 0xFFFFu);
      v[2 * i + 1] = Bits16<T>::to_float(w[i] >> 16);
    }
  }
  __device__ static void store8(T* p, const float (&v)[8]) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = Bits16<T>::from_float(v[2 * i]) | (Bits16<T>::from_float(v[2 * i + 1]) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
  __device__ static float load(const T* p) { return Bits16<T>::to_float(*reinterpret_cast<const unsigned short*>(p)); }
  __device__ static void store(T* p, float v) {
    *reinterpret_cast<unsigned short*>(p) = static_cast<unsigned short>(Bits16<T>::from_float(v));
  }
  __device__ static float round(float v) { return Bits16<T>::to_float(Bits16<T>::from_float(v)); }
};

template <>
struct Io<__half> : Io16<__half> {};
template <>
struct Io<__nv_bfloat16> : Io16<__nv_bfloat16> {};

// Byte alignment of a four-element vector access of T.
template <typename T>
inline constexpr uintptr_t kVecAlign = 4 * sizeof(T) < 16 ? 4 * sizeof(T) : 16;

template <typename T>
inline bool vec_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % kVecAlign<T> == 0;
}

// A small float tensor of runtime dtype (theta, running_sigma: float32 or x's dtype), read and
// written element by element.
struct DynamicRef {
  void* data;
  DType dtype;

  template <typename A>
  __device__ A load(int64_t k) const {
    switch (dtype) {
      case DType::kFloat64:
        return static_cast<A>(static_cast<const double*>(data)[k]);
      case DType::kFloat16:
        return static_cast<A>(__half2float(static_cast<const __half*>(data)[k]));
      case DType::kBFloat16:
        return static_cast<A>(__bfloat162float(static_cast<const __nv_bfloat16*>(data)[k]));
      default:
        return static_cast<A>(static_cast<const float*>(data)[k]);
    }
  }

  // As torch's .to() / copy_ from float64: half and bfloat16 round through float32.
  __device__ void store(int64_t k, double v) const {
    switch (dtype) {
      case DType::kFloat64:
        static_cast<double*>(data)[k] = v;
        break;
      case DType::kFloat16:
        static_cast<__half*>(data)[k] = __float2half_rn(static_cast<float>(v));
        break;
      case DType::kBFloat16:
        static_cast<__nv_bfloat16*>(data)[k] = __float2bfloat16_rn(static_cast<float>(v));
        break;
      default:
        static_cast<float*>(data)[k] = static_cast<float>(v);
    }
  }
};

template <typename T>
struct Tag {
  using type = T;
};

// f(Tag<T>{}) for the storage type T of `dtype`.
template <typename F>
cudaError_t dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat64:
      return f(Tag<double>{});
    case DType::kFloat16:
      return f(Tag<__half>{});
    case DType::kBFloat16:
      return f(Tag<__nv_bfloat16>{});
    case DType::kFloat32:
      return f(Tag<float>{});
  }
  return cudaErrorInvalidValue;
}

// Philox: the (seed, offset) of a kernel, the four normals of one counter, and a register-only
// pick from eight.

struct SeedOffset {
  uint64_t seed;
  uint64_t offset;
};

// The kernel's (seed, offset) (see PhiloxArg); each noise kernel calls it once, at its top.
__device__ inline SeedOffset philox_unpack(const PhiloxArg& p) {
  if (p.ptr == nullptr) return {p.seed, p.offset};
  return {static_cast<uint64_t>(p.ptr[0]), static_cast<uint64_t>(p.ptr[p.stride])};
}

// The four normals of Philox counter `counter`: elements 4 * (counter - offset) + 0..3.
__device__ inline void counter_normals(uint64_t seed, uint64_t counter, float (&z)[4]) {
  const Philox4 a = philox4x32_10(seed, counter);
  box_muller(a.w[0], a.w[1], z[0], z[1]);
  box_muller(a.w[2], a.w[3], z[2], z[3]);
}

// z[i] for a runtime i < 8 without local memory.
__device__ inline float pick8(const float (&z)[8], int i) {
  float v = z[0];
#pragma unroll
  for (int k = 1; k < 8; ++k) v = i == k ? z[k] : v;
  return v;
}

}  // namespace gpu
}  // namespace stochnet
