// Perturb on the GPU: y = x + theta[k(p)] * z_p and its theta gradient
// dtheta[k] = sum of grad_p * z_p over the elements with k(p) = k, where
// k(p) = (p / inner) % channels (see perturb_kernels.h for how scalar / channel / feature
// theta map onto (channels, inner)) and z_p is normal p of the stream (seed, offset).
//
// Work unit: four consecutive elements 4u .. 4u + 3 in memory order, i.e. one Philox counter
// (offset + u), so every normal is generated once; 16-byte (8-byte for 16-bit types) vector
// loads and stores when the pointers allow. Everything is computed in float32 (float64 for
// double); the product theta * z is rounded before the add (built with --fmad=false).
//
// Backward, deterministic (no atomics): a first kernel writes float64 partial sums to a
// workspace, a second merges them per theta entry in a fixed order. Two plans:
//   planes   inner >= 32 (channel theta on feature maps, and scalar theta as one plane of
//            numel elements): block b handles channel b / splits and a slice of that
//            channel's (plane, unit) items; a unit straddling two planes is read by both,
//            each taking its own elements; one block-reduced partial per block.
//   columns  inner < 32 (feature theta, channel theta on (N, C) or tiny maps): x is viewed as
//            rows of `width` elements, width a multiple of the period channels * inner
//            (widened to >= 1024 and to a multiple of 4 when the period is small), so column j
//            always maps to theta entry (j % period) / inner. A thread owns four adjacent
//            columns over a chunk of rows and writes one partial per column and chunk.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/perturb_kernels.h"
#include "philox.h"

namespace stochnet {
namespace gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kUnit = 4;
constexpr int kWarp = 32;
constexpr int kFinalizeThreads = 128;
constexpr int64_t kPlanesMinInner = 32;
constexpr int64_t kMinWidth = 1024;
constexpr int64_t kMinRowsPerChunk = 32;
constexpr int64_t kThreadFinalizeMax = 128;  // per-entry partial counts merged by one thread
constexpr int64_t kMaxGridY = 65535;

// Elements p0 + j, j in [lo, hi), of a; the others are zero. vec: the full-unit vector path.
template <typename T, typename A>
__device__ void load_part(const T* __restrict__ a, int64_t p0, int lo, int hi, bool vec, A (&v)[4]) {
  if (vec && lo == 0 && hi == kUnit) {
    Io<T>::load4(a + p0, v);
  } else {
#pragma unroll
    for (int j = 0; j < kUnit; ++j) v[j] = (j >= lo && j < hi) ? static_cast<A>(Io<T>::load(a + p0 + j)) : A(0);
  }
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024) in a fixed tree order; the
// result is valid in thread 0.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A warp_sums[kWarp];
#pragma unroll
  for (int delta = kWarp / 2; delta > 0; delta /= 2) v += __shfl_down_sync(0xFFFFFFFFu, v, delta);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / kWarp) ? warp_sums[lane] : A(0);
#pragma unroll
    for (int delta = kWarp / 2; delta > 0; delta /= 2) v += __shfl_down_sync(0xFFFFFFFFu, v, delta);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Forward: flat grid-stride over units.

template <typename T>
__global__ void __launch_bounds__(kThreads)
    perturb_forward_kernel(const T* __restrict__ x, DynamicRef theta, T* __restrict__ y, int64_t numel,
                           int64_t channels, int64_t inner, PhiloxArg philox, bool vec) {
  using A = typename AccOf<T>::type;
  const auto [seed, offset] = philox_unpack(philox);
  const int64_t units = (numel + kUnit - 1) / kUnit;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < units;
       u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p0 = kUnit * u;
    const int valid = static_cast<int>(numel - p0 < kUnit ? numel - p0 : kUnit);
    A xv[kUnit];
    load_part(x, p0, 0, valid, vec, xv);
    float z[kUnit];
    counter_normals(seed, offset + static_cast<uint64_t>(u), z);
    const int64_t q = p0 / inner;
    int64_t r = p0 - q * inner, c = q % channels;
    A out[kUnit];
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      const A noise = theta.load<A>(c) * static_cast<A>(z[j]);
      out[j] = xv[j] + noise;
      if (++r == inner) r = 0, c = c + 1 == channels ? 0 : c + 1;
    }
    if (vec && valid == kUnit) {
      Io<T>::store4(y + p0, out);
    } else {
#pragma unroll
      for (int j = 0; j < kUnit; ++j)
        if (j < valid) Io<T>::store(y + p0 + j, out[j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, planes plan. Block b handles channel c = b / splits and items
// [split * items_per_split, ...) of that channel's outer * units_per_plane items; item
// (n, k) is the k-th unit overlapping plane (n, c) = elements [(n * C + c) * inner, + inner).

template <typename T>
__global__ void __launch_bounds__(kThreads)
    perturb_backward_planes_kernel(const T* __restrict__ grad, int64_t channels, int64_t inner, int64_t outer,
                              int64_t units_per_plane, int64_t splits, int64_t items_per_split, PhiloxArg philox,
                              bool vec, double* __restrict__ partials) {
  using A = typename AccOf<T>::type;
  const auto [seed, offset] = philox_unpack(philox);
  const int64_t c = blockIdx.x / splits;
  const int64_t first = (blockIdx.x - c * splits) * items_per_split;
  const int64_t items = outer * units_per_plane;
  const int64_t last = first + items_per_split < items ? first + items_per_split : items;
  A acc = 0;
  for (int64_t f = first + threadIdx.x; f < last; f += blockDim.x) {
    const int64_t n = f / units_per_plane;
    const int64_t begin = (n * channels + c) * inner, end = begin + inner;
    const int64_t u = begin / kUnit + (f - n * units_per_plane);
    const int64_t p0 = kUnit * u;
    if (p0 >= end) continue;
    const int lo = p0 < begin ? static_cast<int>(begin - p0) : 0;
    const int hi = static_cast<int>(end - p0 < kUnit ? end - p0 : kUnit);
    A g[kUnit];
    load_part(grad, p0, lo, hi, vec, g);
    float z[kUnit];
    counter_normals(seed, offset + static_cast<uint64_t>(u), z);
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      const A prod = g[j] * static_cast<A>(z[j]);
      acc += (j >= lo && j < hi) ? prod : A(0);
    }
  }
  const A total = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = static_cast<double>(total);
}

// ---------------------------------------------------------------------------------------------
// Backward, columns plan. Thread t of the row owns columns 4t .. 4t + 3 (< width) and rows
// [blockIdx.y * rows_per_chunk, ...); element (r, j) is p = r * width + j (< numel). aligned:
// width % 4 == 0, so every row's four columns are one Philox counter.

template <typename T>
__global__ void __launch_bounds__(kThreads)
    perturb_backward_columns_kernel(const T* __restrict__ grad, int64_t numel, int64_t width, int64_t rows,
                               int64_t rows_per_chunk, PhiloxArg philox, bool aligned, bool vec,
                               double* __restrict__ partials) {
  using A = typename AccOf<T>::type;
  const auto [seed, offset] = philox_unpack(philox);
  const int64_t j0 = kUnit * (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x);
  if (j0 >= width) return;
  const int cols = static_cast<int>(width - j0 < kUnit ? width - j0 : kUnit);
  const int64_t first = blockIdx.y * rows_per_chunk;
  const int64_t last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
  A acc[kUnit] = {A(0), A(0), A(0), A(0)};
  for (int64_t r = first; r < last; ++r) {
    const int64_t base = r * width + j0;
    const int hi = static_cast<int>(numel - base < cols ? numel - base : cols);
    A g[kUnit];
    load_part(grad, base, 0, hi, vec && aligned, g);
    float z[kUnit];
    const uint64_t counter = offset + static_cast<uint64_t>(base / kUnit);
    if (aligned) {
      counter_normals(seed, counter, z);
    } else {
      const int shift = static_cast<int>(base % kUnit);
      float z8[8];
      float lo4[kUnit], hi4[kUnit] = {0.f, 0.f, 0.f, 0.f};
      counter_normals(seed, counter, lo4);
      if (shift + hi > kUnit) counter_normals(seed, counter + 1, hi4);
#pragma unroll
      for (int j = 0; j < kUnit; ++j) z8[j] = lo4[j], z8[kUnit + j] = hi4[j];
#pragma unroll
      for (int j = 0; j < kUnit; ++j) z[j] = pick8(z8, shift + j);
    }
#pragma unroll
    for (int j = 0; j < kUnit; ++j) acc[j] += g[j] * static_cast<A>(z[j]);
  }
#pragma unroll
  for (int j = 0; j < kUnit; ++j)
    if (j < cols) partials[blockIdx.y * width + j0 + j] = static_cast<double>(acc[j]);
}

// ---------------------------------------------------------------------------------------------
// Finalize: dtheta[k] = sum over t < per_k of partials[(t / run) * stride + k * run + t % run],
// in float64, in a fixed order.

__device__ __forceinline__ int64_t partial_index(int64_t t, int64_t k, int64_t run, int64_t stride) {
  const int64_t q = t / run;
  return q * stride + k * run + (t - q * run);
}

// One block per entry (many partials per entry).
__global__ void __launch_bounds__(kFinalizeThreads)
    finalize_block_kernel(const double* __restrict__ partials, int64_t per_k, int64_t run, int64_t stride,
                          DynamicRef out) {
  const int64_t k = blockIdx.x;
  double s = 0;
  for (int64_t t = threadIdx.x; t < per_k; t += blockDim.x) s += partials[partial_index(t, k, run, stride)];
  s = block_sum(s);
  if (threadIdx.x == 0) out.store(k, s);
}

// One thread per entry (few partials per entry, possibly many entries).
__global__ void __launch_bounds__(kFinalizeThreads)
    finalize_thread_kernel(const double* __restrict__ partials, int64_t entries, int64_t per_k, int64_t run,
                           int64_t stride, DynamicRef out) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= entries) return;
  double s = 0;
  for (int64_t t = 0; t < per_k; ++t) s += partials[partial_index(t, k, run, stride)];
  out.store(k, s);
}

// ---------------------------------------------------------------------------------------------
// Host side.


struct BwdPlan {
  bool planes;
  int64_t partials;
  // planes
  int64_t outer, units_per_plane, splits, items_per_split;
  int threads;
  // columns
  int64_t width, rows, chunks, rows_per_chunk;
  // finalize view of the partials
  int64_t per_k, run, stride;
};

BwdPlan plan_backward(int64_t numel, int64_t channels, int64_t inner, int sm_count) {
  const int64_t target_blocks = 8 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  const int64_t period = channels * inner;
  BwdPlan p{};
  if (inner >= kPlanesMinInner) {
    // A plane starting at residue a (mod 4) overlaps (a + inner - 1) / 4 + 1 units; the
    // residues of plane starts are the multiples of gcd(inner, 4).
    int64_t most = 0;
    for (int64_t a = 0; a < kUnit; a += gcd64(inner, kUnit)) {
      const int64_t overlap = (a + inner - 1) / kUnit + 1;
      most = overlap > most ? overlap : most;
    }
    p.planes = true;
    p.outer = numel / period;
    p.units_per_plane = most;
    const int64_t items = p.outer * most;
    const int64_t splits = clamp64(ceil_div(target_blocks, channels), 1, ceil_div(items, kThreads));
    p.items_per_split = ceil_div(items, splits);
    p.splits = ceil_div(items, p.items_per_split);
    p.threads = static_cast<int>(clamp64(ceil_div(p.items_per_split, kWarp) * kWarp, kWarp, kThreads));
    p.partials = channels * p.splits;
    p.per_k = p.splits;
    p.run = p.splits;
    p.stride = 0;
    return p;
  }
  p.planes = false;
  p.width = period;
  if (period < kMinWidth) {
    const int64_t quantum = kUnit / gcd64(period, kUnit);  // makes the width a multiple of 4
    p.width = period * (ceil_div(ceil_div(kMinWidth, period), quantum) * quantum);
  }
  p.rows = ceil_div(numel, p.width);
  const int64_t row_threads = ceil_div(p.width, kUnit);
  p.chunks = clamp64(ceil_div(target_blocks * kThreads, row_threads), 1,
                     clamp64(p.rows / kMinRowsPerChunk, 1, kMaxGridY));
  p.rows_per_chunk = ceil_div(p.rows, p.chunks);
  p.chunks = ceil_div(p.rows, p.rows_per_chunk);
  p.partials = p.chunks * p.width;
  p.run = inner;
  p.stride = period;
  p.per_k = p.partials / period * inner;
  return p;
}

int flat_grid(int64_t work, int sm_count) {
  const int64_t cap = 8 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  return static_cast<int>(clamp64(ceil_div(work, kThreads), 1, cap));
}

bool valid_view(const PerturbArgs& a) {
  return a.channels > 0 && a.inner > 0 && a.numel % (a.channels * a.inner) == 0;
}

}  // namespace

cudaError_t perturb_forward(const PerturbArgs& a, const void* x, const void* theta, void* y, cudaStream_t stream) {
  if (a.numel <= 0) return cudaSuccess;
  if (!valid_view(a)) return cudaErrorInvalidValue;
  return dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vec = vec_aligned<T>(x) && vec_aligned<T>(y);
    const DynamicRef th{const_cast<void*>(theta), a.theta_dtype};
    perturb_forward_kernel<T><<<flat_grid(ceil_div(a.numel, kUnit), a.sm_count), kThreads, 0, stream>>>(
        static_cast<const T*>(x), th, static_cast<T*>(y), a.numel, a.channels, a.inner, a.philox, vec);
    return cudaGetLastError();
  });
}

int64_t perturb_backward_workspace_bytes(int64_t numel, int64_t channels, int64_t inner, int sm_count) {
  if (numel <= 0 || channels <= 0 || inner <= 0) return 0;
  return plan_backward(numel, channels, inner, sm_count).partials * static_cast<int64_t>(sizeof(double));
}

cudaError_t perturb_backward(const PerturbArgs& a, const void* grad, void* dtheta, void* workspace,
                             cudaStream_t stream) {
  if (a.numel <= 0) return cudaSuccess;  // the op layer zero-fills dtheta
  if (!valid_view(a)) return cudaErrorInvalidValue;
  const BwdPlan p = plan_backward(a.numel, a.channels, a.inner, a.sm_count);
  double* partials = static_cast<double*>(workspace);
  const cudaError_t err = dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* g = static_cast<const T*>(grad);
    const bool vec = vec_aligned<T>(grad);
    if (p.planes) {
      perturb_backward_planes_kernel<T><<<static_cast<unsigned>(a.channels * p.splits), p.threads, 0, stream>>>(
          g, a.channels, a.inner, p.outer, p.units_per_plane, p.splits, p.items_per_split, a.philox, vec, partials);
    } else {
      const dim3 grid(static_cast<unsigned>(ceil_div(ceil_div(p.width, kUnit), kThreads)),
                      static_cast<unsigned>(p.chunks));
      perturb_backward_columns_kernel<T><<<grid, kThreads, 0, stream>>>(g, a.numel, p.width, p.rows, p.rows_per_chunk,
                                                                   a.philox, p.width % kUnit == 0, vec, partials);
    }
    return cudaGetLastError();
  });
  if (err != cudaSuccess) return err;
  const DynamicRef out{dtheta, a.theta_dtype};
  if (p.per_k <= kThreadFinalizeMax) {
    finalize_thread_kernel<<<static_cast<unsigned>(ceil_div(a.channels, kFinalizeThreads)), kFinalizeThreads, 0,
                             stream>>>(partials, a.channels, p.per_k, p.run, p.stride, out);
  } else {
    finalize_block_kernel<<<static_cast<unsigned>(a.channels), kFinalizeThreads, 0, stream>>>(
        partials, p.per_k, p.run, p.stride, out);
  }
  return cudaGetLastError();
}

}  // namespace gpu
}  // namespace stochnet
