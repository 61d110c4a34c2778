// Noise injection on the CPU: y = x + theta * z (forward) and d theta = sum of grad * z over
// the positions that share a theta entry (backward), z regenerated from (seed, offset).
//
// Work is split into blocks of kBlock elements aligned in memory order, so a block's normals
// come from one normal_block() call. theta reaches the kernels in one of two forms:
//   runs:  theta index of position p is (p / inner) % channels, constant over runs of at least
//          kLanes elements (a scalar is channels = 1, inner = numel);
//   tiled: theta index of p is p % features, read from a table repeated to features + kLanes
//          entries so that a vector starting at any column reads it contiguously (per element
//          of the feature map, and per channel with planes narrower than a vector).
// Backward has no races: in runs, each thread adds partials in grad's precision over at most
// one block to its own double totals, merged at the end. In tiled, a large feature map is
// split into chunks of kChunk features, each owned by one thread that loops over the batch
// (O(features) memory, not O(threads * features)); a small one is accumulated per thread in
// memory order. Either way sums in grad's precision are flushed into double totals after
// about kFlushTerms terms per entry.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "cpu/normal_block.h"
#include "cpu/output_pool.h"

namespace stochnet::cpu {
namespace {

constexpr int64_t kFlushTerms = 64;
constexpr int64_t kGrainBlocks = 64;
constexpr int64_t kChunk = 4096;  // features per chunk of the backward by feature chunks

// How theta maps onto the memory positions of x (see the top of the file).
template <typename scalar_t>
struct ThetaMap {
  bool tiled;
  int64_t numel;
  int64_t inner, channels;        // runs
  int64_t features, fold;         // tiled: table entry f belongs to theta entry f / fold
  std::vector<scalar_t> table;    // runs: channels values; tiled: features + kLanes values
};

template <typename scalar_t>
ThetaMap<scalar_t> theta_map(const at::Tensor& x, const at::Tensor& theta) {
  const int64_t numel = x.numel(), channels = x.size(1), features = numel / x.size(0);
  const int64_t inner = features / channels;
  // theta in x's precision, as the reference computes (float32 theta is exact in double).
  const at::Tensor values = theta.to(x.scalar_type());
  const scalar_t* v = values.const_data_ptr<scalar_t>();
  ThetaMap<scalar_t> map{false, numel, numel, 1, features, 1, {}};
  if (theta.numel() == 1) {
    map.table.assign(1, v[0]);
  } else if (theta.numel() == channels && inner >= kLanes) {
    map.inner = inner;
    map.channels = channels;
    map.table.assign(v, v + channels);
  } else {
    map.tiled = true;
    map.fold = theta.numel() == features ? 1 : inner;
    map.table.resize(features + kLanes);
    for (int64_t i = 0; i < features + kLanes; ++i) map.table[i] = v[(i % features) / map.fold];
  }
  return map;
}

template <typename scalar_t>
bool streamable(const scalar_t* out, int64_t numel) {
  return std::is_same_v<scalar_t, float> && numel * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamBytes &&
         reinterpret_cast<uintptr_t>(out) % 64 == 0;
}

// The product is rounded to x's precision before the add, as in the reference (no FMA).
template <typename scalar_t>
inline scalar_t perturbed(scalar_t x, scalar_t theta, float z) {
  const scalar_t noise = theta * static_cast<scalar_t>(z);
  return x + noise;
}

inline void store(float* y, const VecF& v, bool stream) {
  if (stream) {
    store_stream(y, v);
  } else {
    v.store(y);
  }
}

// y[0, n) of one run with constant theta; `lane` is the run's position in its block.
template <typename scalar_t>
void forward_run(const scalar_t* x, scalar_t* y, const float* z, int64_t n, scalar_t theta, int64_t lane,
                 bool stream) {
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i < n && (lane + i) % kLanes != 0; ++i) y[i] = perturbed(x[i], theta, z[i]);
    const VecF t(theta);
    for (; i + kLanes <= n; i += kLanes) store(y + i, VecF::loadu(x + i) + t * VecF::loadu(z + i), stream);
  }
  for (; i < n; ++i) y[i] = perturbed(x[i], theta, z[i]);
}

// y[0, n) of one block at memory position `begin` with the tiled table.
template <typename scalar_t>
void forward_tiled(const scalar_t* x, scalar_t* y, const float* z, int64_t n, int64_t begin,
                   const ThetaMap<scalar_t>& map, bool stream) {
  const scalar_t* table = map.table.data();
  int64_t col = begin % map.features, i = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i + kLanes <= n; i += kLanes) {
      store(y + i, VecF::loadu(x + i) + VecF::loadu(table + col) * VecF::loadu(z + i), stream);
      col += kLanes;
      if (col >= map.features) col %= map.features;
    }
  }
  for (; i < n; ++i) {
    y[i] = perturbed(x[i], table[col], z[i]);
    col = col + 1 == map.features ? 0 : col + 1;
  }
}

template <typename scalar_t>
void forward(const at::Tensor& x, const ThetaMap<scalar_t>& map, uint64_t seed, uint64_t offset, at::Tensor& y) {
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const int64_t numel = map.numel;
  const bool stream = streamable(yp, numel);
  at::parallel_for(0, (numel + kBlock - 1) / kBlock, kGrainBlocks, [&](int64_t first, int64_t last) {
    alignas(64) float z[kBlock];
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kBlock, end = std::min(begin + kBlock, numel);
      prefetch_ahead(xp, stream ? nullptr : yp, begin, numel);
      normal_block(seed, offset + static_cast<uint64_t>(begin / 4), z);
      if (map.tiled) {
        forward_tiled(xp + begin, yp + begin, z, end - begin, begin, map, stream);
        continue;
      }
      for (int64_t e = begin; e < end;) {
        const int64_t plane = e / map.inner;
        const int64_t run_end = std::min((plane + 1) * map.inner, end);
        forward_run(xp + e, yp + e, z + (e - begin), run_end - e, map.table[plane % map.channels], e - begin,
                    stream);
        e = run_end;
      }
    }
    if (stream) stream_fence();
  });
}

// sum of g * z over one run, in grad's precision.
template <typename scalar_t>
scalar_t run_sum(const scalar_t* g, const float* z, int64_t n, int64_t lane) {
  scalar_t sum = 0;
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i < n && (lane + i) % kLanes != 0; ++i) sum += g[i] * z[i];
    VecF acc(0.0f);
    for (; i + kLanes <= n; i += kLanes) acc = acc + VecF::loadu(g + i) * VecF::loadu(z + i);
    sum += at::vec::vec_reduce_all<float>(std::plus<VecF>(), acc);
  }
  for (; i < n; ++i) sum += g[i] * static_cast<scalar_t>(z[i]);
  return sum;
}

// tile[col + i] += g[i] * z[i] for one block at memory position `begin` (tile wraps at features).
template <typename scalar_t>
void tiled_sums(const scalar_t* g, const float* z, int64_t n, int64_t begin, int64_t features, scalar_t* tile) {
  int64_t col = begin % features, i = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i + kLanes <= n; i += kLanes) {
      (VecF::loadu(tile + col) + VecF::loadu(g + i) * VecF::loadu(z + i)).store(tile + col);
      col += kLanes;
      if (col >= features) col %= features;
    }
  }
  for (; i < n; ++i) {
    tile[col] += g[i] * static_cast<scalar_t>(z[i]);
    col = col + 1 == features ? 0 : col + 1;
  }
}

// Adds the tile into totals (entry i to i % features) and clears it.
template <typename scalar_t>
void flush(std::vector<scalar_t>& tile, double* totals, int64_t features) {
  for (size_t i = 0; i < tile.size(); ++i) {
    totals[static_cast<int64_t>(i) % features] += tile[i];
    tile[i] = scalar_t(0);
  }
}

// acc[0, n) += g[0, n) * z[0, n).
template <typename scalar_t>
void accumulate(const scalar_t* g, const float* z, int64_t n, scalar_t* acc) {
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i + kLanes <= n; i += kLanes)
      (VecF::loadu(acc + i) + VecF::loadu(g + i) * VecF::loadu(z + i)).store(acc + i);
  }
  for (; i < n; ++i) acc[i] += g[i] * static_cast<scalar_t>(z[i]);
}

// Double sums per feature-map element, each chunk of kChunk features owned by one thread.
template <typename scalar_t>
std::vector<double> backward_by_features(const scalar_t* gp, const ThetaMap<scalar_t>& map, uint64_t seed,
                                         uint64_t offset) {
  const int64_t features = map.features, batch = map.numel / features;
  std::vector<double> sums(features, 0.0);
  at::parallel_for(0, (features + kChunk - 1) / kChunk, 1, [&](int64_t first, int64_t last) {
    std::vector<scalar_t> tile(kChunk);
    alignas(64) float z[kBlock];
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t f0 = chunk * kChunk, width = std::min(kChunk, features - f0);
      std::fill(tile.begin(), tile.end(), scalar_t(0));
      for (int64_t n = 0; n < batch; ++n) {
        const int64_t p0 = n * features + f0, p1 = p0 + width;
        for (int64_t block = p0 / kBlock; block * kBlock < p1; ++block) {
          const int64_t begin = block * kBlock;
          const int64_t lo = std::max(begin, p0), hi = std::min(begin + kBlock, p1);
          normal_block(seed, offset + static_cast<uint64_t>(begin / 4), z);
          accumulate(gp + lo, z + (lo - begin), hi - lo, tile.data() + (lo - p0));
        }
        if ((n + 1) % kFlushTerms == 0 || n + 1 == batch) {
          for (int64_t f = 0; f < width; ++f) {
            sums[f0 + f] += tile[f];
            tile[f] = scalar_t(0);
          }
        }
      }
    }
  });
  return sums;
}

// Double sums per theta entry, in theta's element order.
template <typename scalar_t>
std::vector<double> backward(const at::Tensor& grad, const ThetaMap<scalar_t>& map, int64_t entries, uint64_t seed,
                             uint64_t offset) {
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const int64_t numel = map.numel;
  if (map.tiled && map.features >= kChunk * at::get_num_threads()) {
    const std::vector<double> sums = backward_by_features(gp, map, seed, offset);
    std::vector<double> out(entries, 0.0);
    for (int64_t f = 0; f < map.features; ++f) out[f / map.fold] += sums[f];
    return out;
  }
  const int64_t width = map.tiled ? map.features : map.channels;  // per-thread totals
  const int threads = at::get_num_threads();
  std::vector<double> totals(static_cast<size_t>(threads) * width, 0.0);
  // Blocks between flushes: about kFlushTerms terms per tile entry.
  const int64_t flush_blocks = std::max<int64_t>(1, kFlushTerms * map.features / kBlock);
  at::parallel_for(0, (numel + kBlock - 1) / kBlock, kGrainBlocks, [&](int64_t first, int64_t last) {
    double* total = totals.data() + static_cast<size_t>(at::get_thread_num()) * width;
    std::vector<scalar_t> tile(map.tiled ? map.features + kLanes : 0, scalar_t(0));
    alignas(64) float z[kBlock];
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kBlock, end = std::min(begin + kBlock, numel);
      prefetch_ahead<scalar_t>(gp, nullptr, begin, numel);
      normal_block(seed, offset + static_cast<uint64_t>(begin / 4), z);
      if (map.tiled) {
        tiled_sums(gp + begin, z, end - begin, begin, map.features, tile.data());
        if ((block - first + 1) % flush_blocks == 0) flush(tile, total, map.features);
        continue;
      }
      for (int64_t e = begin; e < end;) {
        const int64_t plane = e / map.inner;
        const int64_t run_end = std::min((plane + 1) * map.inner, end);
        total[plane % map.channels] += run_sum(gp + e, z + (e - begin), run_end - e, e - begin);
        e = run_end;
      }
    }
    if (map.tiled) flush(tile, total, map.features);
  });
  std::vector<double> out(entries, 0.0);
  for (int t = 0; t < threads; ++t) {
    const double* total = totals.data() + static_cast<size_t>(t) * width;
    for (int64_t i = 0; i < width; ++i) out[map.tiled ? i / map.fold : i % entries] += total[i];
  }
  return out;
}

void check_cpu_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64 on CPU, got ", t.scalar_type());
}

at::Tensor perturb(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& philox) {
  check_perturb_args(x, theta, "x");
  const auto [seed, offset] = philox_pair(philox);
  check_cpu_dtype(x, "x");
  at::Tensor y = pooled_empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "perturb", [&] {
    forward<scalar_t>(x, theta_map<scalar_t>(x, theta), seed, offset, y);
  });
  return y;
}

at::Tensor perturb_backward(const at::Tensor& grad, const at::Tensor& theta, const at::Tensor& philox) {
  check_perturb_args(grad, theta, "grad");
  const auto [seed, offset] = philox_pair(philox);
  check_cpu_dtype(grad, "grad");
  at::Tensor sums = at::empty(theta.sizes(), theta.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "perturb_backward", [&] {
    const std::vector<double> values = backward<scalar_t>(grad, theta_map<scalar_t>(grad, theta), theta.numel(), seed,
                                                          offset);
    std::copy(values.begin(), values.end(), sums.mutable_data_ptr<double>());
  });
  return sums.to(theta.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(stochnet, CPU, m) {
  m.impl("perturb", &perturb);
  m.impl("perturb_backward", &perturb_backward);
}

}  // namespace stochnet::cpu
