// Smoothing on the GPU: noisy copies of a batch and the votes of their logits (rules in
// stochnet/ops/smoothing.py, entry points in smoothing_kernels.h).
//
// noisy_repeat: a thread loads four consecutive elements of one sample once and writes them,
// noised, into each of its copies; the copies of a sample are split over several threads only
// when batch * per_sample / 4 threads would not fill the GPU. When per_sample % 4 == 0 every
// copy's four elements are one Philox counter (16-byte / 8-byte vector accesses when aligned);
// otherwise they straddle two counters and the normals are picked out of both.
//
// vote, one warp per row (lanes stride over the classes):
//   prediction  the warp's argmax under torch.argmax's order, then one integer atomic add to
//               the sample's count: exact, so the result does not depend on the order.
//   weighted    rank r is the best logit ranking after rank r - 1 (a warp argmax per rank,
//               the row re-read from cache), and lane r adds 2^(31 - r) to a fixed-point
//               integer sum: exact and order-free too; a last pass scales it to float.
//   soft        one block per sample, so the float sums have a fixed order: its warps first
//               write each row's max and sum of exponentials to a scratch buffer, then take
//               tiles of 256 classes, each warp accumulating the probabilities of its rows
//               and the block adding the eight warp sums in order.
//   soft grad   one warp per row: max, sum of exponentials, <grad, p>, then the output.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/smoothing_kernels.h"
#include "philox.h"

namespace stochnet {
namespace gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr int kUnit = 4;
constexpr int kSoftTile = kThreads;                 // classes per soft-vote tile, one per thread
constexpr int kSoftChunks = kSoftTile / kWarp;      // classes per lane in a tile
constexpr int kTopShift = kWeightedRanks - 1;       // rank r weighs 2^(kTopShift - r) units
constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int64_t kMaxWeightedCopies = int64_t{1} << 32;  // keeps copies * 2^31 < 2^64

static_assert(kSoftChunks * kWarp == kSoftTile, "a soft tile is kSoftChunks classes per lane");
static_assert(kWeightedRanks == kWarp, "lane r holds the class of rank r");

__device__ float exp_of(float v) { return expf(v); }
__device__ double exp_of(double v) { return exp(v); }

// Normals of output elements o .. o + valid - 1 into z[0, valid).
__device__ void normals_at(uint64_t seed, uint64_t offset, int64_t o, int valid, float (&z)[kUnit]) {
  const uint64_t counter = offset + static_cast<uint64_t>(o / kUnit);
  const int shift = static_cast<int>(o % kUnit);
  if (shift == 0) {
    counter_normals(seed, counter, z);
    return;
  }
  float lo[kUnit], hi[kUnit] = {0.f, 0.f, 0.f, 0.f};
  counter_normals(seed, counter, lo);
  if (shift + valid > kUnit) counter_normals(seed, counter + 1, hi);
  float both[2 * kUnit];
#pragma unroll
  for (int j = 0; j < kUnit; ++j) both[j] = lo[j], both[kUnit + j] = hi[j];
#pragma unroll
  for (int j = 0; j < kUnit; ++j) z[j] = pick8(both, shift + j);
}

// ---------------------------------------------------------------------------------------------
// noisy_repeat. Item (sample b, chunk c, unit u) writes elements 4u .. 4u + 3 of copies
// [c * copies_per_chunk, ...) of sample b; items of one (b, c) are adjacent, so a warp's stores
// to one copy are contiguous.

template <typename T>
__global__ void __launch_bounds__(kThreads)
    noisy_repeat_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t per_sample, int64_t copies,
                        int64_t units, int64_t chunks, int64_t copies_per_chunk, int64_t items, double sigma,
                        PhiloxArg philox, bool vec) {
  using A = typename AccOf<T>::type;
  const auto [seed, offset] = philox_unpack(philox);
  const A scale = static_cast<A>(sigma);
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < items;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t group = item / units, u = item - group * units;
    const int64_t b = group / chunks, chunk = group - b * chunks;
    const int64_t d0 = kUnit * u;
    const int valid = static_cast<int>(per_sample - d0 < kUnit ? per_sample - d0 : kUnit);
    const T* src = x + b * per_sample + d0;
    A xv[kUnit];
    if (vec) {
      Io<T>::load4(src, xv);
    } else {
#pragma unroll
      for (int j = 0; j < kUnit; ++j) xv[j] = j < valid ? static_cast<A>(Io<T>::load(src + j)) : A(0);
    }
    const int64_t first = chunk * copies_per_chunk;
    const int64_t last = first + copies_per_chunk < copies ? first + copies_per_chunk : copies;
    for (int64_t copy = first; copy < last; ++copy) {
      const int64_t o = (b * copies + copy) * per_sample + d0;
      float z[kUnit];
      normals_at(seed, offset, o, valid, z);
      A out[kUnit];
#pragma unroll
      for (int j = 0; j < kUnit; ++j) {
        const A noise = scale * static_cast<A>(z[j]);
        out[j] = xv[j] + noise;
      }
      if (vec) {
        Io<T>::store4(y + o, out);
      } else {
#pragma unroll
        for (int j = 0; j < kUnit; ++j)
          if (j < valid) Io<T>::store(y + o + j, out[j]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Warp reductions; the butterfly leaves the same value in every lane.

// A logit and its class. ranks_before is torch.sort(descending=True, stable=True)'s order (and
// torch.argmax's first pick): NaN first, then larger values, equal values by lower class.
// index < 0 marks "no candidate", which ranks after everything.
template <typename A>
struct Ranked {
  A value;
  int index;
};

template <typename A>
__device__ bool ranks_before(const Ranked<A>& a, const Ranked<A>& b) {
  if (b.index < 0) return a.index >= 0;
  if (a.index < 0) return false;
  const bool a_nan = isnan(a.value), b_nan = isnan(b.value);
  if (a_nan || b_nan) return a_nan && (!b_nan || a.index < b.index);
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

template <typename A>
__device__ Ranked<A> warp_first(Ranked<A> r) {
#pragma unroll
  for (int delta = kWarp / 2; delta > 0; delta /= 2) {
    const Ranked<A> other{__shfl_xor_sync(kFullMask, r.value, delta), __shfl_xor_sync(kFullMask, r.index, delta)};
    if (ranks_before(other, r)) r = other;
  }
  return r;
}

template <typename A>
__device__ A warp_sum(A v) {
#pragma unroll
  for (int delta = kWarp / 2; delta > 0; delta /= 2) v += __shfl_xor_sync(kFullMask, v, delta);
  return v;
}

// max(a, b), NaN when either is NaN (as torch.softmax's max).
template <typename A>
__device__ A nan_max(A a, A b) {
  return (b > a || isnan(b)) ? b : a;
}

template <typename A>
__device__ A warp_max(A v) {
#pragma unroll
  for (int delta = kWarp / 2; delta > 0; delta /= 2) v = nan_max(v, __shfl_xor_sync(kFullMask, v, delta));
  return v;
}

// A row's max and sum of exp(x - max), in every lane of the warp.
template <typename A>
struct RowStats {
  A max, sum;
};

template <typename T, typename A = typename AccOf<T>::type>
__device__ RowStats<A> row_stats(const T* __restrict__ row, int64_t classes, int lane) {
  A max = -INFINITY;
  for (int64_t k = lane; k < classes; k += kWarp) max = nan_max(max, static_cast<A>(Io<T>::load(row + k)));
  max = warp_max(max);
  A sum = 0;
  for (int64_t k = lane; k < classes; k += kWarp) sum += exp_of(static_cast<A>(Io<T>::load(row + k)) - max);
  return RowStats<A>{max, warp_sum(sum)};
}

// ---------------------------------------------------------------------------------------------
// prediction and weighted: one warp per row, rank r's class in lane r; lanes r < ranks add
// 1 << (shift - r) to acc[sample, class].

template <typename T>
__global__ void __launch_bounds__(kThreads)
    vote_rank_kernel(const T* __restrict__ logits, int64_t rows, int64_t copies, int classes, int ranks, int shift,
                     unsigned long long* __restrict__ acc) {
  using A = typename AccOf<T>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp; row < rows;
       row += stride) {
    const T* __restrict__ x = logits + row * classes;
    Ranked<A> previous{A(0), -1};
    int mine = -1;
    for (int r = 0; r < ranks; ++r) {
      Ranked<A> best{A(0), -1};
      for (int64_t k = lane; k < classes; k += kWarp) {
        const Ranked<A> c{static_cast<A>(Io<T>::load(x + k)), static_cast<int>(k)};
        if ((r == 0 || ranks_before(previous, c)) && ranks_before(c, best)) best = c;
      }
      previous = warp_first(best);
      if (lane == r) mine = previous.index;
    }
    if (lane < ranks) atomicAdd(acc + (row / copies) * classes + mine, 1ull << (shift - lane));
  }
}

template <typename A>
__device__ A units_to_float(unsigned long long v);
template <>
__device__ float units_to_float<float>(unsigned long long v) {
  return __ull2float_rn(v) * (1.0f / 2147483648.0f);  // exact: a power of two, no underflow
}
template <>
__device__ double units_to_float<double>(unsigned long long v) {
  return __ull2double_rn(v) * (1.0 / 2147483648.0);
}

template <typename A>
__global__ void __launch_bounds__(kThreads)
    fixed_point_to_float_kernel(const unsigned long long* __restrict__ acc, A* __restrict__ out, int64_t numel) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = units_to_float<A>(acc[i]);
}

// ---------------------------------------------------------------------------------------------
// soft: block b reduces sample b; stats holds (max, sum) per row.

template <typename T>
__global__ void __launch_bounds__(kThreads)
    vote_soft_kernel(const T* __restrict__ logits, int64_t copies, int64_t classes,
                     typename AccOf<T>::type* __restrict__ stats, T* __restrict__ mean) {
  using A = typename AccOf<T>::type;
  __shared__ A warp_partials[kWarpsPerBlock][kSoftTile];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t first_row = blockIdx.x * copies;
  for (int64_t j = warp; j < copies; j += kWarpsPerBlock) {
    const int64_t row = first_row + j;
    const RowStats<A> s = row_stats(logits + row * classes, classes, lane);
    if (lane == 0) {
      stats[2 * row] = s.max;
      stats[2 * row + 1] = s.sum;
    }
  }
  __syncthreads();  // also makes the block's global stats visible to all its warps
  for (int64_t tile = 0; tile < classes; tile += kSoftTile) {
    A acc[kSoftChunks];
#pragma unroll
    for (int c = 0; c < kSoftChunks; ++c) acc[c] = A(0);
    for (int64_t j = warp; j < copies; j += kWarpsPerBlock) {
      const int64_t row = first_row + j;
      const A max = stats[2 * row], sum = stats[2 * row + 1];
      const T* __restrict__ x = logits + row * classes + tile;
#pragma unroll
      for (int c = 0; c < kSoftChunks; ++c) {
        const int64_t k = c * kWarp + lane;
        if (tile + k < classes) acc[c] += exp_of(static_cast<A>(Io<T>::load(x + k)) - max) / sum;
      }
    }
#pragma unroll
    for (int c = 0; c < kSoftChunks; ++c) warp_partials[warp][c * kWarp + lane] = acc[c];
    __syncthreads();
    const int64_t k = tile + threadIdx.x;
    if (k < classes) {
      A total = 0;
#pragma unroll
      for (int w = 0; w < kWarpsPerBlock; ++w) total += warp_partials[w][threadIdx.x];
      Io<T>::store(mean + blockIdx.x * classes + k, total / static_cast<A>(copies));
    }
    __syncthreads();
  }
}

// soft grad: one warp per row.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    vote_soft_backward_kernel(const T* __restrict__ grad, const T* __restrict__ logits, T* __restrict__ out,
                              int64_t rows, int64_t copies, int64_t classes) {
  using A = typename AccOf<T>::type;
  const int lane = threadIdx.x % kWarp;
  const A scale = static_cast<A>(copies);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp; row < rows;
       row += stride) {
    const T* __restrict__ x = logits + row * classes;
    const T* __restrict__ g = grad + (row / copies) * classes;
    const RowStats<A> s = row_stats(x, classes, lane);
    A dot = 0;
    for (int64_t k = lane; k < classes; k += kWarp) {
      const A p = exp_of(static_cast<A>(Io<T>::load(x + k)) - s.max) / s.sum;
      dot += p * static_cast<A>(Io<T>::load(g + k));
    }
    dot = warp_sum(dot);
    for (int64_t k = lane; k < classes; k += kWarp) {
      const A p = exp_of(static_cast<A>(Io<T>::load(x + k)) - s.max) / s.sum;
      const A centered = static_cast<A>(Io<T>::load(g + k)) - dot;
      const A scaled = p * centered;
      Io<T>::store(out + row * classes + k, scaled / scale);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.


// Blocks resident at once (8 blocks of 256 threads per SM), the cap of the grid-stride grids.
int64_t resident_blocks(int sm_count) { return 8 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1); }

unsigned grid_for(int64_t blocks, int sm_count) {
  return static_cast<unsigned>(clamp64(blocks, 1, resident_blocks(sm_count)));
}

bool valid_vote(const VoteArgs& a) {
  return a.batch > 0 && a.copies > 0 && a.classes > 0 && a.classes <= INT32_MAX;
}

cudaError_t launch_ranks(const VoteArgs& a, int ranks, int shift, unsigned long long* acc, cudaStream_t stream) {
  const int64_t rows = a.batch * a.copies;
  return dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    vote_rank_kernel<T><<<grid_for(ceil_div(rows, kWarpsPerBlock), a.sm_count), kThreads, 0, stream>>>(
        static_cast<const T*>(a.logits), rows, a.copies, static_cast<int>(a.classes), ranks, shift, acc);
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t noisy_repeat_forward(const NoisyRepeatArgs& a, cudaStream_t stream) {
  if (a.batch <= 0 || a.per_sample <= 0 || a.copies <= 0) return cudaErrorInvalidValue;
  const int64_t units = ceil_div(a.per_sample, kUnit);
  // Split the copies only as far as it takes to give every resident thread an item.
  const int64_t chunks_wanted = ceil_div(resident_blocks(a.sm_count) * kThreads, a.batch * units);
  const int64_t copies_per_chunk = ceil_div(a.copies, clamp64(chunks_wanted, 1, a.copies));
  const int64_t chunks = ceil_div(a.copies, copies_per_chunk);
  const int64_t items = a.batch * chunks * units;
  return dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vec = a.per_sample % kUnit == 0 && vec_aligned<T>(a.x) && vec_aligned<T>(a.y);
    noisy_repeat_kernel<T><<<grid_for(ceil_div(items, kThreads), a.sm_count), kThreads, 0, stream>>>(
        static_cast<const T*>(a.x), static_cast<T*>(a.y), a.per_sample, a.copies, units, chunks, copies_per_chunk,
        items, a.sigma, a.philox, vec);
    return cudaGetLastError();
  });
}

cudaError_t vote_prediction(const VoteArgs& a, int64_t* counts, cudaStream_t stream) {
  if (!valid_vote(a)) return cudaErrorInvalidValue;
  return launch_ranks(a, 1, 0, reinterpret_cast<unsigned long long*>(counts), stream);
}

cudaError_t vote_weighted(const VoteArgs& a, void* scores, uint64_t* fixed_point, cudaStream_t stream) {
  if (!valid_vote(a) || a.copies > kMaxWeightedCopies) return cudaErrorInvalidValue;
  const int ranks = static_cast<int>(a.classes < kWeightedRanks ? a.classes : kWeightedRanks);
  auto* acc = reinterpret_cast<unsigned long long*>(fixed_point);
  const cudaError_t err = launch_ranks(a, ranks, kTopShift, acc, stream);
  if (err != cudaSuccess) return err;
  const int64_t numel = a.batch * a.classes;
  const unsigned grid = grid_for(ceil_div(numel, kThreads), a.sm_count);
  if (a.dtype == DType::kFloat64) {
    fixed_point_to_float_kernel<double><<<grid, kThreads, 0, stream>>>(acc, static_cast<double*>(scores), numel);
  } else {
    fixed_point_to_float_kernel<float><<<grid, kThreads, 0, stream>>>(acc, static_cast<float*>(scores), numel);
  }
  return cudaGetLastError();
}

int64_t vote_soft_workspace_bytes(DType dtype, int64_t rows) {
  const int64_t element = dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  return 2 * rows * element;
}

cudaError_t vote_soft(const VoteArgs& a, void* mean, void* workspace, cudaStream_t stream) {
  if (!valid_vote(a) || a.batch > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = typename AccOf<T>::type;
    vote_soft_kernel<T><<<static_cast<unsigned>(a.batch), kThreads, 0, stream>>>(
        static_cast<const T*>(a.logits), a.copies, a.classes, static_cast<A*>(workspace), static_cast<T*>(mean));
    return cudaGetLastError();
  });
}

cudaError_t vote_soft_backward(const VoteArgs& a, const void* grad, void* grad_logits, cudaStream_t stream) {
  if (!valid_vote(a)) return cudaErrorInvalidValue;
  const int64_t rows = a.batch * a.copies;
  return dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    vote_soft_backward_kernel<T><<<grid_for(ceil_div(rows, kWarpsPerBlock), a.sm_count), kThreads, 0, stream>>>(
        static_cast<const T*>(grad), static_cast<const T*>(a.logits), static_cast<T*>(grad_logits), rows, a.copies,
        a.classes);
    return cudaGetLastError();
  });
}

}  // namespace gpu
}  // namespace stochnet
