// The raw Philox stream on the GPU: words, uniforms and normals, one counter (four outputs)
// per thread step, for comparing every backend's generator element by element.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/philox_kernels.h"
#include "philox.h"

namespace stochnet {
namespace gpu {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t work, int sm_count) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  const int64_t cap = 8 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  return static_cast<int>(blocks < cap ? blocks : cap);
}

// The three views of one counter's output: raw words, uniforms and normals.
struct Words {
  using T = int32_t;
  __device__ static void fill(const Philox4& p, T (&v)[4]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = static_cast<int32_t>(p.w[j]);
  }
  __device__ static uint32_t bits(T v) { return static_cast<uint32_t>(v); }
};

struct Uniforms {
  using T = float;
  __device__ static void fill(const Philox4& p, T (&v)[4]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = uint_to_uniform(p.w[j]);
  }
  __device__ static uint32_t bits(T v) { return __float_as_uint(v); }
};

struct Normals {
  using T = float;
  __device__ static void fill(const Philox4& p, T (&v)[4]) {
    box_muller(p.w[0], p.w[1], v[0], v[1]);
    box_muller(p.w[2], p.w[3], v[2], v[3]);
  }
  __device__ static uint32_t bits(T v) { return __float_as_uint(v); }
};

// out[i] = element i of the stream; vec: out is 16-byte aligned, so a full counter's four
// values go out in one store.
template <typename S>
__global__ void __launch_bounds__(kThreads)
    philox_stream_kernel(PhiloxArg philox, typename S::T* __restrict__ out, int64_t numel, bool vec) {
  const auto [seed, offset] = philox_unpack(philox);
  const int64_t counters = (numel + 3) / 4;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < counters;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    typename S::T v[4];
    S::fill(philox4x32_10(seed, offset + static_cast<uint64_t>(k)), v);
    const int64_t first = 4 * k;
    if (vec && first + 4 <= numel) {
      reinterpret_cast<uint4*>(out)[k] = make_uint4(S::bits(v[0]), S::bits(v[1]), S::bits(v[2]), S::bits(v[3]));
    } else {
      for (int j = 0; j < 4 && first + j < numel; ++j) out[first + j] = v[j];
    }
  }
}

template <typename S>
cudaError_t launch_stream(PhiloxArg philox, typename S::T* out, int64_t numel, int sm_count, cudaStream_t stream) {
  if (numel <= 0) return cudaSuccess;
  const bool vec = reinterpret_cast<uintptr_t>(out) % 16 == 0;
  philox_stream_kernel<S><<<grid_for((numel + 3) / 4, sm_count), kThreads, 0, stream>>>(philox, out, numel, vec);
  return cudaGetLastError();
}

}  // namespace

cudaError_t philox_words(PhiloxArg philox, int32_t* out, int64_t numel, int sm_count, cudaStream_t stream) {
  return launch_stream<Words>(philox, out, numel, sm_count, stream);
}

cudaError_t philox_uniform(PhiloxArg philox, float* out, int64_t numel, int sm_count, cudaStream_t stream) {
  return launch_stream<Uniforms>(philox, out, numel, sm_count, stream);
}

cudaError_t philox_normal(PhiloxArg philox, float* out, int64_t numel, int sm_count, cudaStream_t stream) {
  return launch_stream<Normals>(philox, out, numel, sm_count, stream);
}

}  // namespace gpu
}  // namespace stochnet
