// Smoothing's noisy copies on the CPU: out[b*m + j] = x[b] + sigma * z, element i of the output
// (memory order) taking normal i of the Philox stream (seed, offset).
//
// The output is written once, in memory order, in blocks of kBlock elements, so each block's
// normals come from one normal_block() call. A block splits into runs that each read one
// contiguous stretch of a sample (a run ends where a copy ends). A sample's m copies are
// consecutive, so x[b] comes from memory once and from the cache for the other copies.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "cpu/normal_block.h"
#include "cpu/output_pool.h"

namespace stochnet::cpu {
namespace {

constexpr int64_t kGrainBlocks = 64;

void check_noisy_repeat_args(const at::Tensor& x, int64_t m, double sigma) {
  check_pgd_input(x, "x");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "x must be float32 or float64 on CPU, got ", x.scalar_type());
  check_noisy_repeat_copies(x, m, sigma);
}

template <typename scalar_t>
bool streamable(const scalar_t* out, int64_t numel) {
  return std::is_same_v<scalar_t, float> && numel * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamBytes &&
         reinterpret_cast<uintptr_t>(out) % 64 == 0;
}

// The product is rounded to x's precision before the add, as in the reference (no FMA).
template <typename scalar_t>
inline scalar_t noisy(scalar_t x, scalar_t sigma, float z) {
  const scalar_t noise = sigma * static_cast<scalar_t>(z);
  return x + noise;
}

// y[0, n) = x[0, n) + sigma * z[0, n); `lane` is the run's position in its block, so the
// vector stores start at vector-aligned output addresses (needed by the streaming stores).
template <typename scalar_t>
void noisy_run(const scalar_t* x, scalar_t* y, const float* z, int64_t n, scalar_t sigma, int64_t lane, bool stream) {
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i < n && (lane + i) % kLanes != 0; ++i) y[i] = noisy(x[i], sigma, z[i]);
    const VecF s(sigma);
    for (; i + kLanes <= n; i += kLanes) {
      const VecF v = VecF::loadu(x + i) + s * VecF::loadu(z + i);
      if (stream) {
        store_stream(y + i, v);
      } else {
        v.store(y + i);
      }
    }
  }
  for (; i < n; ++i) y[i] = noisy(x[i], sigma, z[i]);
}

template <typename scalar_t>
void noisy_repeat(const at::Tensor& x, int64_t m, scalar_t sigma, uint64_t seed, uint64_t offset, at::Tensor& y) {
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const int64_t per_sample = x.numel() / x.size(0), numel = y.numel();
  const bool stream = streamable(yp, numel);
  at::parallel_for(0, (numel + kBlock - 1) / kBlock, kGrainBlocks, [&](int64_t first, int64_t last) {
    alignas(64) float z[kBlock];
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kBlock, end = std::min(begin + kBlock, numel);
      normal_block(seed, offset + static_cast<uint64_t>(begin / 4), z);
      for (int64_t e = begin; e < end;) {
        const int64_t copy = e / per_sample, position = e - copy * per_sample;
        const int64_t run_end = std::min((copy + 1) * per_sample, end);
        noisy_run(xp + (copy / m) * per_sample + position, yp + e, z + (e - begin), run_end - e, sigma, e - begin,
                  stream);
        e = run_end;
      }
    }
    if (stream) stream_fence();
  });
}

at::Tensor noisy_repeat_fwd(const at::Tensor& x, int64_t m, double sigma, int64_t seed, int64_t offset) {
  check_noisy_repeat_args(x, m, sigma);
  check_seed(seed, offset);
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes[0] *= m;
  at::Tensor y = pooled_empty(sizes, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "noisy_repeat_fwd", [&] {
    noisy_repeat<scalar_t>(x, m, static_cast<scalar_t>(sigma), static_cast<uint64_t>(seed),
                           static_cast<uint64_t>(offset), y);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(stochnet, CPU, m) { m.impl("noisy_repeat_fwd", &noisy_repeat_fwd); }

}  // namespace stochnet::cpu
