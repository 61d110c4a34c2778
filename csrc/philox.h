// Philox4x32-10, the one counter-based generator of stochnet, usable from host and device.
//
// Stream contract (the same in the C++, CUDA and Triton kernels):
//   key     = (lo32(seed), hi32(seed))
//   counter = (lo32(offset + i / 4), hi32(offset + i / 4), 0, 0)
//   element i of a call takes word i % 4 of that counter's output.
// This is Triton's tl.randint4x with an int64 offset. Uniforms and normals follow
// tl.rand4x / tl.randn4x: fold the sign bit of the int32 word, scale into [0, 1);
// Box-Muller on word pairs (0, 1) and (2, 3), u1 clamped to 1e-7.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define STOCHNET_HD __host__ __device__ __forceinline__
#else
#define STOCHNET_HD inline
#endif

namespace stochnet {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr int kPhiloxRounds = 10;
// Largest float with INT32_MAX * scale < 1 (Triton's uint_to_uniform_float).
constexpr float kUniformScale = 4.6566127342e-10f;
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kMinUniform = 1.0e-7f;

struct Philox4 {
  uint32_t w[4];
};

STOCHNET_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Ten rounds of Philox4x32 for the 128-bit counter (lo, hi, 0, 0) of `counter`.
STOCHNET_HD Philox4 philox4x32_10(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const uint32_t p0 = c0, p2 = c2;
    c0 = mulhi32(kPhiloxRoundB, p2) ^ c1 ^ k0;
    c2 = mulhi32(kPhiloxRoundA, p0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * p2;
    c3 = kPhiloxRoundA * p0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Word -> float in [0, 1): the int32 sign bit is folded (x < 0 -> ~x), then scaled.
STOCHNET_HD float uint_to_uniform(uint32_t word) {
  int32_t x = static_cast<int32_t>(word);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * kUniformScale;
}

// Box-Muller of one word pair with the accurate libm / libdevice functions.
STOCHNET_HD void box_muller(uint32_t w0, uint32_t w1, float& n0, float& n1) {
  float u1 = uint_to_uniform(w0);
  u1 = u1 > kMinUniform ? u1 : kMinUniform;
  const float th = kTwoPi * uint_to_uniform(w1);
  const float r = sqrtf(-2.0f * logf(u1));
  n0 = r * cosf(th);
  n1 = r * sinf(th);
}

// Normal number i of the stream (seed, offset).
STOCHNET_HD float philox_normal(uint64_t seed, uint64_t offset, uint64_t i) {
  const Philox4 p = philox4x32_10(seed, offset + i / 4);
  const unsigned j = static_cast<unsigned>(i % 4);
  float n0, n1;
  box_muller(p.w[j & 2u], p.w[(j & 2u) + 1], n0, n1);
  return (j & 1u) ? n1 : n0;
}

}  // namespace stochnet
