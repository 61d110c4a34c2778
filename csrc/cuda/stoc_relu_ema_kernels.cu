// StocReLU-EMA on the GPU: y = relu(x + sqrt(gamma) * sigma[c] * z), the packed 1-bit mask,
// and in training the per-channel statistics of x gathered in the same pass, plus the mask
// backward.
//
// Work unit: eight consecutive elements in memory order (two Philox counters, one mask byte),
// so each mask byte is built in one thread and stored once, with 16-byte vector loads and
// stores when x and y are aligned. x is viewed as (outer, channels, inner) in memory order.
//
// Training gathers (count, mean, M2) per channel as Welford/Chan partials in a scratch buffer
// and a second small kernel merges them in double and updates sigma (it runs after the
// forward on the stream, so the noise uses the sigma from before the update). Threads
// accumulate in double, as the reference's float64 std (a float32 d * d overflows for
// |d| > 1.8e19), on x - x[0, c, 0] (the channel's first element, the same shift everywhere),
// so a mean far from zero costs no precision either. How the
// forward finds a thread's channels depends on the layout:
//   planes    inner >= 8: one block per (channel, slice of the planes of that channel); a
//             unit belongs to the plane holding its first element, which also computes the
//             few elements spilling into the next plane; one running Welford per thread.
//   periodic  inner < 8 (channels-last, (N, C)): a unit's channels repeat with period
//             lcm(C * inner, 8) elements, so a thread visiting units a whole period apart keeps
//             eight fixed channels and eight Welford accumulators; blocks merge over threadIdx.y.
//   columns   inner < 8 with too few periods to amortize the partials (few rows of many
//             channels): the eval kernel for y and mask, then a column-wise statistics pass.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/stoc_relu_ema_kernels.h"
#include "philox.h"

namespace stochnet {
namespace gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kUnit = 8;
constexpr int kWarp = 32;
constexpr int kPeriodicRows = 8;     // threadIdx.y extent of the periodic kernel (blockDim 32 x 8)
constexpr int kFinalizeThreads = 128;

struct Welford {
  double n, mean, m2;
};

// Elements [p0, p0 + valid) of x; the rest of v is zero. vec: x is 16-byte aligned.
template <typename T, typename A>
__device__ void load_unit(const T* __restrict__ x, int64_t p0, int valid, bool vec, A (&v)[8]) {
  if (vec && valid == kUnit) {
    Io<T>::load8(x + p0, v);
  } else {
#pragma unroll
    for (int j = 0; j < kUnit; ++j) v[j] = j < valid ? static_cast<A>(Io<T>::load(x + p0 + j)) : A(0);
  }
}

template <typename T, typename A>
__device__ void store_unit(T* __restrict__ y, int64_t p0, int valid, bool vec, const A (&v)[8]) {
  if (vec && valid == kUnit) {
    Io<T>::store8(y + p0, v);
  } else {
#pragma unroll
    for (int j = 0; j < kUnit; ++j)
      if (j < valid) Io<T>::store(y + p0 + j, v[j]);
  }
}

// Normals of elements 8u .. 8u + 7: counters offset + 2u and offset + 2u + 1.
__device__ void unit_normals(uint64_t seed, uint64_t offset, int64_t u, float (&z)[8]) {
  const uint64_t counter = offset + 2 * static_cast<uint64_t>(u);
  const Philox4 a = philox4x32_10(seed, counter);
  const Philox4 b = philox4x32_10(seed, counter + 1);
  box_muller(a.w[0], a.w[1], z[0], z[1]);
  box_muller(a.w[2], a.w[3], z[2], z[3]);
  box_muller(b.w[0], b.w[1], z[4], z[5]);
  box_muller(b.w[2], b.w[3], z[6], z[7]);
}

// y and mask byte of unit u: v = x + (scale * z) with the product rounded first (built with
// --fmad=false), y = v unless v < 0 (-0 and NaN pass through, as torch.relu), bit j = [v > 0].
template <typename T, typename A>
__device__ void noisy_relu_unit(const A (&xv)[8], const A (&scale)[8], uint64_t seed, uint64_t offset,
                                int64_t u, int valid, bool vec, T* __restrict__ y,
                                uint8_t* __restrict__ mask) {
  float z[kUnit];
  unit_normals(seed, offset, u, z);
  A out[kUnit];
  uint32_t bits = 0;
#pragma unroll
  for (int j = 0; j < kUnit; ++j) {
    const A noise = scale[j] * static_cast<A>(z[j]);
    const A v = xv[j] + noise;
    out[j] = v < A(0) ? A(0) : v;
    bits |= (j < valid && v > A(0)) ? (1u << j) : 0u;
  }
  store_unit(y, kUnit * u, valid, vec, out);
  mask[u] = static_cast<uint8_t>(bits);
}

// Chan et al.'s merge of (nb, mb, m2b) into (n, mean, m2).
__device__ void chan_merge(double& n, double& mean, double& m2, double nb, double mb, double m2b) {
  if (nb == 0.0) return;
  const double total = n + nb;
  const double delta = mb - mean;
  const double wb = nb / total;
  mean = mean + delta * wb;
  m2 = m2 + m2b + delta * delta * (n * wb);
  n = total;
}

__device__ void merge_into(Welford& a, const Welford& b) { chan_merge(a.n, a.mean, a.m2, b.n, b.mean, b.m2); }

// Merge of every thread's accumulator, blockDim.x a multiple of 32 (at most 1024); the result
// is valid in thread 0.
__device__ Welford block_merge(Welford w) {
  __shared__ Welford warp_sums[32];
#pragma unroll
  for (int delta = kWarp / 2; delta > 0; delta /= 2) {
    const Welford other{__shfl_down_sync(0xFFFFFFFFu, w.n, delta), __shfl_down_sync(0xFFFFFFFFu, w.mean, delta),
                        __shfl_down_sync(0xFFFFFFFFu, w.m2, delta)};
    merge_into(w, other);
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) warp_sums[warp] = w;
  __syncthreads();
  if (warp == 0) {
    w = lane < static_cast<int>(blockDim.x / kWarp) ? warp_sums[lane] : Welford{0, 0, 0};
#pragma unroll
    for (int delta = kWarp / 2; delta > 0; delta /= 2) {
      const Welford other{__shfl_down_sync(0xFFFFFFFFu, w.n, delta), __shfl_down_sync(0xFFFFFFFFu, w.mean, delta),
                          __shfl_down_sync(0xFFFFFFFFu, w.m2, delta)};
      merge_into(w, other);
    }
  }
  return w;
}

// Eval (and the y / mask half of the columns plan): flat grid-stride over units.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    noisy_relu_kernel(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ mask, DynamicRef sigma,
                      double sqrt_gamma, PhiloxArg philox, int64_t numel, int64_t channels, int64_t inner,
                      bool vec) {
  using A = typename AccOf<T>::type;
  const auto [seed, offset] = philox_unpack(philox);
  const A sg = static_cast<A>(sqrt_gamma);
  const int64_t units = (numel + kUnit - 1) / kUnit;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < units;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p0 = kUnit * u;
    const int valid = static_cast<int>(numel - p0 < kUnit ? numel - p0 : kUnit);
    A xv[kUnit];
    load_unit(x, p0, valid, vec, xv);
    const int64_t q = p0 / inner;
    int64_t r = p0 - q * inner, c = q % channels;
    A scale[kUnit];
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      scale[j] = sg * sigma.load<A>(c);
      if (++r == inner) r = 0, c = c + 1 == channels ? 0 : c + 1;
    }
    noisy_relu_unit(xv, scale, seed, offset, u, valid, vec, y, mask);
  }
}

// Planes plan (inner >= 8). Block b handles channel b / splits and items
// [split * items_per_split, ...) of that channel's outer * units_per_plane items; item
// (n, k) is the k-th unit overlapping plane (n, c). The thread gathers the plane's elements
// of the unit; when the unit starts inside the plane it also computes y and mask for all
// eight elements (a spill lands in the next plane, channel c + 1 mod C, since inner >= 8).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    noisy_relu_planes_kernel(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ mask,
                             DynamicRef sigma, double sqrt_gamma, PhiloxArg philox, int64_t numel,
                             int64_t channels, int64_t inner, int64_t outer, int64_t units_per_plane,
                             int64_t splits, int64_t items_per_split, bool vec, Welford* __restrict__ partials) {
  using A = typename AccOf<T>::type;
  const auto [seed, offset] = philox_unpack(philox);
  const int64_t c = blockIdx.x / splits;
  const int64_t first = (blockIdx.x - c * splits) * items_per_split;
  const int64_t items = outer * units_per_plane;
  const int64_t last = first + items_per_split < items ? first + items_per_split : items;
  const A sg = static_cast<A>(sqrt_gamma);
  const A scale_here = sg * sigma.load<A>(c);
  const A scale_next = sg * sigma.load<A>(c + 1 == channels ? 0 : c + 1);
  const double shift = Io<T>::load(x + c * inner);
  double n = 0, mean = 0, m2 = 0;
  for (int64_t f = first + threadIdx.x; f < last; f += blockDim.x) {
    const int64_t plane_n = f / units_per_plane;
    const int64_t begin = (plane_n * channels + c) * inner, end = begin + inner;
    const int64_t u = begin / kUnit + (f - plane_n * units_per_plane);
    const int64_t p0 = kUnit * u;
    if (p0 >= end) continue;
    const int valid = static_cast<int>(numel - p0 < kUnit ? numel - p0 : kUnit);
    A xv[kUnit];
    load_unit(x, p0, valid, vec, xv);
    // This plane's elements of the unit: [lo, hi), hi <= valid.
    const int lo = p0 < begin ? static_cast<int>(begin - p0) : 0;
    const int hi = static_cast<int>(end - p0 < kUnit ? end - p0 : kUnit);
    double sum = 0;
#pragma unroll
    for (int j = 0; j < kUnit; ++j) sum += (j >= lo && j < hi) ? static_cast<double>(xv[j]) - shift : 0.0;
    const double count = hi - lo;
    const double unit_mean = sum / count;
    double unit_m2 = 0;
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      const double d = (static_cast<double>(xv[j]) - shift) - unit_mean;
      unit_m2 += (j >= lo && j < hi) ? d * d : 0.0;
    }
    chan_merge(n, mean, m2, count, unit_mean, unit_m2);
    if (lo == 0) {
      A scale[kUnit];
#pragma unroll
      for (int j = 0; j < kUnit; ++j) scale[j] = j < hi ? scale_here : scale_next;
      noisy_relu_unit(xv, scale, seed, offset, u, valid, vec, y, mask);
    }
  }
  const Welford total = block_merge(Welford{n, mean, m2});
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// Periodic plan (inner < 8). `phases` units make a whole number of periods, so unit
// g + k * phases holds the channels of slots 8g .. 8g + 7 for every k. Thread (x, y) of block
// (bx, by) takes phase g = 32 bx + x and k = 8 by + y, 8 by + y + 8 gridDim.y, ...; it keeps
// one Welford per slot, merged over threadIdx.y into partials[by * 8 phases + 8g + j].
template <typename T>
__global__ void __launch_bounds__(kWarp * kPeriodicRows)
    noisy_relu_periodic_kernel(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ mask,
                               DynamicRef sigma, double sqrt_gamma, PhiloxArg philox, int64_t numel,
                               int64_t channels, int64_t inner, int64_t phases, bool vec,
                               Welford* __restrict__ partials) {
  using A = typename AccOf<T>::type;
  const auto [seed, offset] = philox_unpack(philox);
  const int64_t g = blockIdx.x * static_cast<int64_t>(kWarp) + threadIdx.x;
  const bool active = g < phases;
  const int64_t units = (numel + kUnit - 1) / kUnit;
  const int64_t period = channels * inner;
  double mean[kUnit], m2[kUnit];
  int64_t count = 0;  // full units seen; slots j < tail also saw the last, partial unit
  int tail = 0;
#pragma unroll
  for (int j = 0; j < kUnit; ++j) mean[j] = 0, m2[j] = 0;
  if (active) {
    const A sg = static_cast<A>(sqrt_gamma);
    A scale[kUnit];
    double shift[kUnit];
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      const int64_t c = ((kUnit * g + j) % period) / inner;
      scale[j] = sg * sigma.load<A>(c);
      shift[j] = Io<T>::load(x + c * inner);
    }
    for (int64_t k = blockIdx.y * static_cast<int64_t>(kPeriodicRows) + threadIdx.y;;
         k += static_cast<int64_t>(gridDim.y) * kPeriodicRows) {
      const int64_t u = g + k * phases;
      if (u >= units) break;
      const int64_t p0 = kUnit * u;
      const int valid = static_cast<int>(numel - p0 < kUnit ? numel - p0 : kUnit);
      A xv[kUnit];
      load_unit(x, p0, valid, vec, xv);
      noisy_relu_unit(xv, scale, seed, offset, u, valid, vec, y, mask);
      if (valid == kUnit) ++count;
      else tail = valid;
      const double inv = 1.0 / static_cast<double>(valid == kUnit ? count : count + 1);
#pragma unroll
      for (int j = 0; j < kUnit; ++j) {
        if (j < valid) {
          const double v = static_cast<double>(xv[j]) - shift[j];
          const double d = v - mean[j];
          mean[j] += d * inv;
          m2[j] += d * (v - mean[j]);
        }
      }
    }
  }
  __shared__ Welford rows[kPeriodicRows][kWarp];
#pragma unroll
  for (int j = 0; j < kUnit; ++j) {
    rows[threadIdx.y][threadIdx.x] =
        Welford{static_cast<double>(count + (j < tail ? 1 : 0)), mean[j], m2[j]};
    __syncthreads();
    if (threadIdx.y == 0 && active) {
      Welford w = rows[0][threadIdx.x];
      for (int r = 1; r < kPeriodicRows; ++r) merge_into(w, rows[r][threadIdx.x]);
      partials[blockIdx.y * kUnit * phases + kUnit * g + j] = w;
    }
    __syncthreads();
  }
}

// Columns plan: thread `col` of chunk blockIdx.y gathers rows [chunk * rows_per_chunk, ...) of
// the memory column col (channel col / inner) into partials[chunk * period + col].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    column_stats_kernel(const T* __restrict__ x, int64_t rows, int64_t period, int64_t inner, int64_t rows_per_chunk,
                        Welford* __restrict__ partials) {
  const int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (col >= period) return;
  const int64_t first = blockIdx.y * rows_per_chunk;
  const int64_t last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
  const double shift = Io<T>::load(x + col / inner * inner);
  double n = 0, mean = 0, m2 = 0;
  for (int64_t r = first; r < last; ++r) {
    const double v = Io<T>::load(x + r * period + col) - shift;
    n += 1.0;
    const double d = v - mean;
    mean += d / n;
    m2 += d * (v - mean);
  }
  partials[blockIdx.y * period + col] = Welford{n, mean, m2};
}

// Block c merges channel c's partials, index (t / run) * stride + c * run + t % run for
// t < per_channel, and sets sigma[c] = (1 - momentum) * sigma[c] + momentum * std (unbiased).
__global__ void __launch_bounds__(kFinalizeThreads)
    update_sigma_kernel(const Welford* __restrict__ partials, int64_t per_channel, int64_t run, int64_t stride,
                        DynamicRef sigma, double momentum) {
  const int64_t c = blockIdx.x;
  Welford w{0, 0, 0};
  for (int64_t t = threadIdx.x; t < per_channel; t += blockDim.x) {
    const int64_t q = t / run;
    merge_into(w, partials[q * stride + c * run + (t - q * run)]);
  }
  w = block_merge(w);
  if (threadIdx.x == 0) {
    const double batch_std = sqrt(w.m2 / (w.n - 1.0));
    const double updated = (1.0 - momentum) * sigma.load<double>(c) + momentum * batch_std;
    sigma.store(c, updated);
  }
}

// grad_x = bit ? grad : 0, a select (as torch.relu's backward): a NaN / inf gradient where the bit is 0 gives 0.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    stoc_relu_ema_backward_kernel(const T* __restrict__ grad, const uint8_t* __restrict__ mask, T* __restrict__ out,
                              int64_t numel, bool vec) {
  using A = typename AccOf<T>::type;
  const int64_t units = (numel + kUnit - 1) / kUnit;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < units;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p0 = kUnit * u;
    const int valid = static_cast<int>(numel - p0 < kUnit ? numel - p0 : kUnit);
    const uint32_t bits = mask[u];
    A g[kUnit];
    load_unit(grad, p0, valid, vec, g);
#pragma unroll
    for (int j = 0; j < kUnit; ++j) g[j] = ((bits >> j) & 1u) ? g[j] : A(0);
    store_unit(out, p0, valid, vec, g);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: plans and launchers.

enum class StatsKind { kPlanes, kPeriodic, kColumns };

struct StatsPlan {
  StatsKind kind;
  int64_t partials;
  // planes
  int64_t units_per_plane, splits, items_per_split;
  int threads;
  // periodic
  int64_t phases, grid_x, grid_y;
  // columns
  int64_t chunks, rows_per_chunk;
  // update_sigma_kernel's view of the partials
  int64_t per_channel, run, stride;
};


constexpr int64_t kMaxGridY = 65535;

StatsPlan plan_stats(int64_t numel, int64_t channels, int64_t inner, int sm_count) {
  const int64_t target_blocks = 8 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  const int64_t period = channels * inner;
  const int64_t outer = numel / period;
  StatsPlan p{};
  if (inner >= kUnit) {
    // A plane starting at residue a (mod 8) overlaps (a + inner - 1) / 8 + 1 units; the
    // residues of plane starts are the multiples of gcd(inner, 8).
    int64_t most = 0;
    for (int64_t a = 0; a < kUnit; a += gcd64(inner, kUnit)) {
      const int64_t overlap = (a + inner - 1) / kUnit + 1;
      most = overlap > most ? overlap : most;
    }
    const int64_t items = outer * most;
    const int64_t splits = clamp64(ceil_div(target_blocks, channels), 1, ceil_div(items, kThreads));
    p.kind = StatsKind::kPlanes;
    p.units_per_plane = most;
    p.items_per_split = ceil_div(items, splits);
    p.splits = ceil_div(items, p.items_per_split);
    p.threads = static_cast<int>(clamp64(ceil_div(p.items_per_split, kWarp) * kWarp, kWarp, kThreads));
    p.partials = channels * p.splits;
    p.per_channel = p.splits;
    p.run = p.splits;
    p.stride = 0;
    return p;
  }
  const int64_t units = ceil_div(numel, kUnit);
  // Units per period lcm(period, 8) / 8, widened to a multiple of the warp while that is cheap.
  const int64_t base = period / gcd64(period, kUnit);
  const int64_t phases = base < kWarp ? base / gcd64(base, kWarp) * kWarp : base;
  const int64_t grid_x = ceil_div(phases, kWarp);
  const int64_t laps = ceil_div(units, phases);
  // At least eight units per thread, so the partials stay under 1/64 of the elements.
  const int64_t grid_y = clamp64(ceil_div(target_blocks, grid_x), 1,
                                 clamp64(laps / (kPeriodicRows * 8), 1, kMaxGridY));
  const int64_t partials = grid_y * kUnit * phases;
  p.run = inner;
  p.stride = period;
  if (partials * 16 <= numel && grid_x <= INT32_MAX) {
    p.kind = StatsKind::kPeriodic;
    p.phases = phases;
    p.grid_x = grid_x;
    p.grid_y = grid_y;
    p.partials = partials;
    p.per_channel = partials / channels;
    return p;
  }
  // At least 32 rows per chunk, so the partials stay under 1/32 of the elements.
  const int64_t chunks = clamp64(ceil_div(target_blocks * kThreads, period), 1, clamp64(outer / 32, 1, kMaxGridY));
  p.kind = StatsKind::kColumns;
  p.rows_per_chunk = ceil_div(outer, chunks);
  p.chunks = ceil_div(outer, p.rows_per_chunk);
  p.partials = p.chunks * period;
  p.per_channel = p.chunks * inner;
  return p;
}

int flat_grid(int64_t work, int sm_count) {
  const int64_t cap = 8 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  return static_cast<int>(clamp64(ceil_div(work, kThreads), 1, cap));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
cudaError_t launch_forward(const StocReluEmaArgs& a, cudaStream_t stream) {
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  const DynamicRef sigma{a.sigma, a.sigma_dtype};
  const double sqrt_gamma = sqrt(a.gamma);
  const bool vec = aligned16(a.x) && aligned16(a.y);
  const int64_t units = ceil_div(a.numel, kUnit);
  if (!a.training) {
    noisy_relu_kernel<T><<<flat_grid(units, a.sm_count), kThreads, 0, stream>>>(
        x, y, a.mask, sigma, sqrt_gamma, a.philox, a.numel, a.channels, a.inner, vec);
    return cudaGetLastError();
  }
  const StatsPlan p = plan_stats(a.numel, a.channels, a.inner, a.sm_count);
  Welford* partials = static_cast<Welford*>(a.workspace);
  const int64_t period = a.channels * a.inner;
  switch (p.kind) {
    case StatsKind::kPlanes:
      noisy_relu_planes_kernel<T><<<static_cast<unsigned>(a.channels * p.splits), p.threads, 0, stream>>>(
          x, y, a.mask, sigma, sqrt_gamma, a.philox, a.numel, a.channels, a.inner, a.numel / period,
          p.units_per_plane, p.splits, p.items_per_split, vec, partials);
      break;
    case StatsKind::kPeriodic:
      noisy_relu_periodic_kernel<T>
          <<<dim3(static_cast<unsigned>(p.grid_x), static_cast<unsigned>(p.grid_y)), dim3(kWarp, kPeriodicRows), 0,
             stream>>>(x, y, a.mask, sigma, sqrt_gamma, a.philox, a.numel, a.channels, a.inner, p.phases,
                       vec, partials);
      break;
    case StatsKind::kColumns:
      noisy_relu_kernel<T><<<flat_grid(units, a.sm_count), kThreads, 0, stream>>>(
          x, y, a.mask, sigma, sqrt_gamma, a.philox, a.numel, a.channels, a.inner, vec);
      if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
      column_stats_kernel<T>
          <<<dim3(static_cast<unsigned>(ceil_div(period, kThreads)), static_cast<unsigned>(p.chunks)), kThreads, 0,
             stream>>>(x, a.numel / period, period, a.inner, p.rows_per_chunk, partials);
      break;
  }
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  update_sigma_kernel<<<static_cast<unsigned>(a.channels), kFinalizeThreads, 0, stream>>>(
      partials, p.per_channel, p.run, p.stride, sigma, a.momentum);
  return cudaGetLastError();
}

}  // namespace

int64_t stoc_relu_ema_workspace_bytes(int64_t numel, int64_t channels, int64_t inner, int sm_count) {
  return plan_stats(numel, channels, inner, sm_count).partials * static_cast<int64_t>(sizeof(Welford));
}

cudaError_t stoc_relu_ema_forward(const StocReluEmaArgs& args, cudaStream_t stream) {
  if (args.numel <= 0) return cudaSuccess;
  return dispatch(args.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_forward<T>(args, stream);
  });
}

cudaError_t stoc_relu_ema_backward(DType dtype, const void* grad, const uint8_t* mask, void* grad_x, int64_t numel,
                               int sm_count, cudaStream_t stream) {
  if (numel <= 0) return cudaSuccess;
  const bool vec = aligned16(grad) && aligned16(grad_x);
  return dispatch(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    stoc_relu_ema_backward_kernel<T><<<flat_grid(ceil_div(numel, kUnit), sm_count), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), mask, static_cast<T*>(grad_x), numel, vec);
    return cudaGetLastError();
  });
}

}  // namespace gpu
}  // namespace stochnet
