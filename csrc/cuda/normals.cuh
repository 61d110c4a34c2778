// Philox normals for the CUDA noise kernels (device code only; no torch headers): the four normals
// of one Philox counter, and a register-only pick from eight of them.
#pragma once
#include <cstdint>

#include "philox.h"

namespace stochnet {
namespace gpu {

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
