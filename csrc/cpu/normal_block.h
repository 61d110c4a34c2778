// Vectorized Philox4x32-10 normals for the CPU kernels.
//
// normal_block() produces the kBlock normals of kCounters consecutive Philox counters in
// element order (element 4k + j = word j of counter k), bit-identical words
// and the same uniforms as csrc/philox.h. The 32-bit high multiply and the 4 x kLanes
// transpose use the vector ISA the file is built for (AVX-512, AVX2, or a scalar
// fallback); log and sin/cos are polynomial (Cephes single-precision, ~1-2 ulp) written
// with at::vec so each ISA computes the same values.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "philox.h"

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace stochnet::cpu {

using VecF = at::vec::Vectorized<float>;
using VecI = at::vec::Vectorized<int32_t>;
using VecD = at::vec::Vectorized<double>;
constexpr int kLanes = VecF::size();
static_assert(2 * VecD::size() == kLanes, "widen() splits a float vector into two double vectors");

// ---- ISA-specific pieces ---------------------------------------------------------
#if defined(CPU_CAPABILITY_AVX512)
using RawI = __m512i;
inline RawI broadcast(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
inline RawI lane_counters(uint32_t lo) {
  return _mm512_add_epi32(broadcast(lo), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}
inline RawI mul_wide(RawI a, RawI m) { return _mm512_mul_epu32(a, m); }
inline RawI high_half(RawI p) { return _mm512_shuffle_epi32(p, _MM_PERM_CDAB); }
inline RawI interleave(RawI even, RawI odd) { return _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32)); }
inline RawI xor3(RawI a, RawI b, RawI c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }
inline void store_words(uint32_t* out, RawI w) { _mm512_storeu_si512(out, w); }
inline VecI as_vec(RawI w) { return VecI(w); }
// Bit l of the result = lane l of v is > 0 (NaN: 0).
inline uint32_t positive_lanes(const VecF& v) { return _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ); }
inline VecF select_lanes(uint32_t bits, const VecF& v) { return _mm512_maskz_mov_ps(static_cast<__mmask16>(bits), v); }
// Non-temporal store to a 64-byte aligned address: no read-for-ownership of the line.
inline void store_stream(float* p, const VecF& v) { _mm512_stream_ps(p, v); }
// Lanes [0, kLanes / 2) of v as doubles into low, the others into high.
inline void widen(const VecF& v, VecD& low, VecD& high) {
  low = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  high = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
// (n0, n1, n2, n3) with lane k = counter k -> out[4k + j] = nj[k].
inline void store_transposed(float* out, __m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 t0 = _mm512_unpacklo_ps(a, b), t1 = _mm512_unpackhi_ps(a, b);
  const __m512 t2 = _mm512_unpacklo_ps(c, d), t3 = _mm512_unpackhi_ps(c, d);
  const __m512 u0 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
  const __m512 u1 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
  const __m512 u2 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
  const __m512 u3 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
  const __m512 v0 = _mm512_shuffle_f32x4(u0, u1, 0x44), v1 = _mm512_shuffle_f32x4(u0, u1, 0xEE);
  const __m512 v2 = _mm512_shuffle_f32x4(u2, u3, 0x44), v3 = _mm512_shuffle_f32x4(u2, u3, 0xEE);
  _mm512_storeu_ps(out, _mm512_shuffle_f32x4(v0, v2, 0x88));
  _mm512_storeu_ps(out + 16, _mm512_shuffle_f32x4(v0, v2, 0xDD));
  _mm512_storeu_ps(out + 32, _mm512_shuffle_f32x4(v1, v3, 0x88));
  _mm512_storeu_ps(out + 48, _mm512_shuffle_f32x4(v1, v3, 0xDD));
}
#elif defined(CPU_CAPABILITY_AVX2)
using RawI = __m256i;
inline RawI broadcast(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
inline RawI lane_counters(uint32_t lo) {
  return _mm256_add_epi32(broadcast(lo), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline RawI mul_wide(RawI a, RawI m) { return _mm256_mul_epu32(a, m); }
inline RawI high_half(RawI p) { return _mm256_shuffle_epi32(p, 0xB1); }
inline RawI interleave(RawI even, RawI odd) { return _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA); }
inline RawI xor3(RawI a, RawI b, RawI c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
inline void store_words(uint32_t* out, RawI w) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), w); }
inline VecI as_vec(RawI w) { return VecI(w); }
inline uint32_t positive_lanes(const VecF& v) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ)));
}
inline VecF select_lanes(uint32_t bits, const VecF& v) {
  const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(broadcast(bits), lane_bit), lane_bit);
  return _mm256_and_ps(_mm256_castsi256_ps(on), v);
}
inline void store_stream(float* p, const VecF& v) { _mm256_stream_ps(p, v); }
inline void widen(const VecF& v, VecD& low, VecD& high) {
  low = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  high = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
}
inline void store_transposed(float* out, __m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 t0 = _mm256_unpacklo_ps(a, b), t1 = _mm256_unpackhi_ps(a, b);
  const __m256 t2 = _mm256_unpacklo_ps(c, d), t3 = _mm256_unpackhi_ps(c, d);
  const __m256 u0 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  const __m256 u1 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  const __m256 u2 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
  const __m256 u3 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
  _mm256_storeu_ps(out, _mm256_permute2f128_ps(u0, u1, 0x20));
  _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
  _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
  _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
}
#else
// Scalar fallback: one array lane at a time, with the same results.
struct RawI {
  uint32_t v[kLanes];
};
inline RawI broadcast(uint32_t x) {
  RawI r;
  for (int l = 0; l < kLanes; ++l) r.v[l] = x;
  return r;
}
inline RawI lane_counters(uint32_t lo) {
  RawI r;
  for (int l = 0; l < kLanes; ++l) r.v[l] = lo + static_cast<uint32_t>(l);
  return r;
}
// The 64-bit lane pieces below, on pairs of 32-bit lanes (low lane first).
inline RawI mul_wide(RawI a, RawI m) {
  for (int l = 0; l < kLanes; l += 2) {
    const uint64_t p = static_cast<uint64_t>(a.v[l]) * m.v[l];
    a.v[l] = static_cast<uint32_t>(p);
    a.v[l + 1] = static_cast<uint32_t>(p >> 32);
  }
  return a;
}
inline RawI high_half(RawI p) {
  for (int l = 0; l < kLanes; l += 2) p.v[l] = p.v[l + 1], p.v[l + 1] = 0;
  return p;
}
inline RawI interleave(RawI even, RawI odd) {
  for (int l = 0; l < kLanes; l += 2) even.v[l + 1] = odd.v[l];
  return even;
}
inline RawI xor3(RawI a, RawI b, RawI c) {
  for (int l = 0; l < kLanes; ++l) a.v[l] ^= b.v[l] ^ c.v[l];
  return a;
}
inline void store_words(uint32_t* out, RawI w) {
  for (int l = 0; l < kLanes; ++l) out[l] = w.v[l];
}
inline VecI as_vec(RawI w) { return VecI::loadu(w.v); }
inline uint32_t positive_lanes(const VecF& v) {
  alignas(64) float lanes[kLanes];
  v.store(lanes);
  uint32_t bits = 0;
  for (int l = 0; l < kLanes; ++l) bits |= static_cast<uint32_t>(lanes[l] > 0.0f) << l;
  return bits;
}
inline VecF select_lanes(uint32_t bits, const VecF& v) {
  alignas(64) float lanes[kLanes];
  v.store(lanes);
  for (int l = 0; l < kLanes; ++l) lanes[l] = ((bits >> l) & 1u) ? lanes[l] : 0.0f;
  return VecF::loadu(lanes);
}
inline void store_stream(float* p, const VecF& v) { v.store(p); }
inline void widen(const VecF& v, VecD& low, VecD& high) {
  alignas(64) double lanes[kLanes];
  for (int l = 0; l < kLanes; ++l) lanes[l] = v[l];
  low = VecD::loadu(lanes);
  high = VecD::loadu(lanes + VecD::size());
}
inline void store_transposed(float* out, const VecF& a, const VecF& b, const VecF& c, const VecF& d) {
  const VecF* n[4] = {&a, &b, &c, &d};
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < kLanes; ++l) out[4 * l + j] = (*n[j])[l];
}
#endif

// Orders the non-temporal stores of this thread before what follows.
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// Outputs at least this large are written with non-temporal stores: they do not fit in the
// cache anyway, and skipping the read-for-ownership saves a third of the memory traffic.
constexpr int64_t kStreamBytes = 8 << 20;

// ---- ISA-independent pieces --------------------------------------------------------
// Each step below runs on kGroups independent vectors side by side: the polynomial and
// Philox chains are latency-bound, and interleaving them keeps the vector units busy.
constexpr int kGroups = 2;

#define STOCHNET_FOR_GROUPS(g) _Pragma("GCC unroll 4") for (int g = 0; g < kGroups; ++g)
#define STOCHNET_FOR_HALVES(h) _Pragma("GCC unroll 8") for (int h = 0; h < 2 * kGroups; ++h)

// The four Philox words of counters base + k, k < kGroups * kLanes: w[g][j] lane l is word j
// of counter base + g * kLanes + l. The counters must not carry across 2**32 (see block_carries).
//
// The rounds run in 64-bit lanes: the even counters of a group sit in one vector and the odd
// ones in another, each word in the low half of a 64-bit lane, so one widening multiply gives
// a word's product whole (high half = mulhi, low half = the next low word). The high halves
// of the lanes carry junk that the multiplies ignore; interleave() keeps the low halves.
inline void philox_lanes(uint64_t seed, uint64_t base, RawI w[kGroups][4]) {
  constexpr int kHalves = 2 * kGroups;  // h = 2g + parity
  RawI c0[kHalves], c1[kHalves], c2[kHalves], c3[kHalves];
  STOCHNET_FOR_HALVES(h) {
    c0[h] = lane_counters(static_cast<uint32_t>(base) + static_cast<uint32_t>((h / 2) * kLanes + h % 2));
    c1[h] = broadcast(static_cast<uint32_t>(base >> 32));
    c2[h] = c3[h] = broadcast(0);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const RawI round_a = broadcast(kPhiloxRoundA), round_b = broadcast(kPhiloxRoundB);
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const RawI key0 = broadcast(k0), key1 = broadcast(k1);
    STOCHNET_FOR_HALVES(h) {
      const RawI product_b = mul_wide(c2[h], round_b), product_a = mul_wide(c0[h], round_a);
      c0[h] = xor3(high_half(product_b), c1[h], key0);
      c2[h] = xor3(high_half(product_a), c3[h], key1);
      c1[h] = product_b;
      c3[h] = product_a;
    }
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  STOCHNET_FOR_GROUPS(g) {
    w[g][0] = interleave(c0[2 * g], c0[2 * g + 1]), w[g][1] = interleave(c1[2 * g], c1[2 * g + 1]);
    w[g][2] = interleave(c2[2 * g], c2[2 * g + 1]), w[g][3] = interleave(c3[2 * g], c3[2 * g + 1]);
  }
}

constexpr int kCounters = kGroups * kLanes;  // Philox counters per block
constexpr int kBlock = 4 * kCounters;        // elements per block

// The kernels compute a block's normals, then read and write its elements. Fetching the lines
// of the block kPrefetchBlocks ahead before that compute lets the memory traffic overlap it: the
// hardware prefetcher alone leaves the loads and the stores' line fills waiting after it
// (StocReLU-EMA's training pass at (128, 16, 28, 28), single-threaded: 1.5-1.65x the time of its
// normals alone with this, 1.8-1.9x without).
constexpr int64_t kPrefetchBlocks = 4;

// Called before computing the normals of the block at `begin`: prefetches the block
// kPrefetchBlocks ahead, in[] for reading and, unless out is null, out[] for writing (both
// indexed by memory position, numel elements in all).
template <typename T>
inline void prefetch_ahead(const T* in, T* out, int64_t begin, int64_t numel) {
  const int64_t ahead = begin + kPrefetchBlocks * kBlock, end = std::min<int64_t>(ahead + kBlock, numel);
  for (int64_t i = ahead; i < end; i += 64 / static_cast<int64_t>(sizeof(T))) {
    __builtin_prefetch(in + i, 0, 3);
    if (out != nullptr) __builtin_prefetch(out + i, 1, 3);
  }
}

inline bool block_carries(uint64_t base) {
  return static_cast<uint32_t>(base) > UINT32_MAX - static_cast<uint32_t>(kCounters - 1);
}

inline VecF uniform(const VecI& word) {
  const VecI folded = word ^ (word >> VecI(31));  // x < 0 -> ~x
  return at::vec::convert_to_fp_of_same_size<float>(folded) * VecF(kUniformScale);
}

// Natural log for x in [1e-7, 1) (positive normal floats), Cephes logf; in place.
inline void log_positive(VecF x[kGroups]) {
  VecF e[kGroups], m[kGroups], z[kGroups], p[kGroups];
  STOCHNET_FOR_GROUPS(g) {
    // x = 2^e * (1 + m) with 1 + m in [sqrt(1/2), sqrt(2)): shift the exponent split point
    // to sqrt(1/2) by integer arithmetic on the bits.
    const VecI bits = at::vec::cast<int32_t>(x[g]) - VecI(0x3f3504f3);
    e[g] = at::vec::convert_to_fp_of_same_size<float>(bits >> VecI(23));
    m[g] = at::vec::cast<float>((bits & VecI(0x007fffff)) + VecI(0x3f3504f3)) - VecF(1.0f);
    z[g] = m[g] * m[g];
    p[g] = VecF(7.0376836292e-2f);
  }
  constexpr float kCoefficients[] = {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f,
                                     -1.6668057665e-1f, 2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f};
  for (float coefficient : kCoefficients) STOCHNET_FOR_GROUPS(g) p[g] = at::vec::fmadd(p[g], m[g], VecF(coefficient));
  STOCHNET_FOR_GROUPS(g) {
    VecF y = p[g] * m[g] * z[g];
    y = at::vec::fmadd(e[g], VecF(-2.12194440e-4f), y);
    y = at::vec::fmadd(z[g], VecF(-0.5f), y);
    x[g] = at::vec::fmadd(e[g], VecF(0.693359375f), m[g] + y);
  }
}

// sin and cos of x in [0, 2 pi], Cephes sinf / cosf with one shared octant reduction.
inline void sincos_0_2pi(const VecF x[kGroups], VecF s[kGroups], VecF c[kGroups]) {
  STOCHNET_FOR_GROUPS(g) {
    // Octant j (even) of x; r = x - j * pi / 4 in [-pi/4, pi/4] by a three-part Cody-Waite reduction.
    VecI j = at::vec::convert_to_int_of_same_size((x[g] * VecF(1.27323954473516f)).floor());
    j = (j + VecI(1)) & VecI(~1);
    const VecF jf = at::vec::convert_to_fp_of_same_size<float>(j);
    VecF r = at::vec::fmadd(jf, VecF(-0.78515625f), x[g]);
    r = at::vec::fmadd(jf, VecF(-2.4187564849853515625e-4f), r);
    r = at::vec::fmadd(jf, VecF(-3.77489497744594108e-8f), r);
    const VecF z = r * r;
    VecF sp = at::vec::fmadd(VecF(-1.9515295891e-4f), z, VecF(8.3321608736e-3f));
    sp = at::vec::fmadd(sp, z, VecF(-1.6666654611e-1f));
    sp = at::vec::fmadd(sp * z, r, r);
    VecF cp = at::vec::fmadd(VecF(2.443315711809948e-5f), z, VecF(-1.388731625493765e-3f));
    cp = at::vec::fmadd(cp, z, VecF(4.166664568298827e-2f));
    cp = at::vec::fmadd(cp * z, z, at::vec::fmadd(z, VecF(-0.5f), VecF(1.0f)));
    // Quadrant q = j / 2: sin = S, C, -S, -C and cos = C, -S, -C, S for q = 0, 1, 2, 3;
    // bit 1 of j swaps, bit 2 of j (of j + 2) is the sign of sin (of cos).
    const VecF swap = at::vec::cast<float>((j << VecI(30)) >> VecI(31));
    s[g] = VecF::blendv(sp, cp, swap) ^ at::vec::cast<float>((j & VecI(4)) << VecI(29));
    c[g] = VecF::blendv(cp, sp, swap) ^ at::vec::cast<float>(((j + VecI(2)) & VecI(4)) << VecI(29));
  }
}

// Box-Muller of word pairs (w0, w1) -> normals (n0, n1), as tl.randn4x.
inline void box_muller(const RawI w0[kGroups], const RawI w1[kGroups], VecF n0[kGroups], VecF n1[kGroups]) {
  VecF r[kGroups], th[kGroups], s[kGroups], c[kGroups];
  STOCHNET_FOR_GROUPS(g) {
    r[g] = at::vec::clamp_min(uniform(as_vec(w0[g])), VecF(kMinUniform));  // never NaN
    th[g] = VecF(kTwoPi) * uniform(as_vec(w1[g]));
  }
  log_positive(r);
  sincos_0_2pi(th, s, c);
  STOCHNET_FOR_GROUPS(g) {
    r[g] = (VecF(-2.0f) * r[g]).sqrt();
    n0[g] = r[g] * c[g];
    n1[g] = r[g] * s[g];
  }
}

// z[0 .. kBlock) = the normals of Philox counters base .. base + kCounters - 1 in element
// order (element 4k + j = normal j of counter base + k).
inline void normal_block(uint64_t seed, uint64_t base, float* z) {
  if (block_carries(base)) {
    for (int i = 0; i < kBlock; ++i) z[i] = philox_normal(seed, base, static_cast<uint64_t>(i));
    return;
  }
  RawI w[kGroups][4], w0[kGroups], w1[kGroups], w2[kGroups], w3[kGroups];
  philox_lanes(seed, base, w);
  STOCHNET_FOR_GROUPS(g) { w0[g] = w[g][0], w1[g] = w[g][1], w2[g] = w[g][2], w3[g] = w[g][3]; }
  VecF n0[kGroups], n1[kGroups], n2[kGroups], n3[kGroups];
  box_muller(w0, w1, n0, n1);
  box_muller(w2, w3, n2, n3);
  STOCHNET_FOR_GROUPS(g) store_transposed(z + 4 * kLanes * g, n0[g], n1[g], n2[g], n3[g]);
}

// The words (kUniform = false) or uniforms of counters base .. base + kCounters - 1 in
// element order; words are stored through float lanes bit for bit.
template <bool kUniform>
inline void word_block(uint64_t seed, uint64_t base, void* out) {
  float* o = static_cast<float*>(out);
  if (block_carries(base)) {
    for (int i = 0; i < kBlock; ++i) {
      const uint32_t word = philox4x32_10(seed, base + i / 4).w[i % 4];
      if constexpr (kUniform) {
        o[i] = uint_to_uniform(word);
      } else {
        std::memcpy(o + i, &word, sizeof(word));
      }
    }
    return;
  }
  RawI w[kGroups][4];
  philox_lanes(seed, base, w);
  STOCHNET_FOR_GROUPS(g) {
    VecF v[4];
    for (int j = 0; j < 4; ++j) v[j] = kUniform ? uniform(as_vec(w[g][j])) : at::vec::cast<float>(as_vec(w[g][j]));
    store_transposed(o + 4 * kLanes * g, v[0], v[1], v[2], v[3]);
  }
}

#undef STOCHNET_FOR_GROUPS
#undef STOCHNET_FOR_HALVES

}  // namespace stochnet::cpu
