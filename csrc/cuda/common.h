// What every CUDA kernel file and its launchers share on the host side: the runtime dtype of a
// tensor, the (seed, offset) argument of the noise kernels and the integer helpers of the launch
// plans. No torch and no CUDA headers.
#pragma once
#include <cstdint>

namespace stochnet {
namespace gpu {

enum class DType : int { kFloat32, kFloat64, kFloat16, kBFloat16 };

// The (seed, offset) of a noise kernel, as PyTorch's PhiloxCudaState: with ptr null, the values
// the host read from a CPU philox tensor; else the kernel loads seed = ptr[0] and
// offset = ptr[stride] from a philox tensor on the device (philox_unpack in common.cuh), so the
// host never waits for it and the op can be captured in a CUDA graph.
struct PhiloxArg {
  const int64_t* ptr;
  int64_t stride;
  uint64_t seed;
  uint64_t offset;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t gcd64(int64_t a, int64_t b) {
  while (b != 0) {
    const int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace gpu
}  // namespace stochnet
