// PGD / MIM steps and the random start on the GPU (see pgd_kernels.h for the formulas).
//
// Work unit: four consecutive elements 4u .. 4u + 3 in memory order, i.e. one Philox counter
// (offset + u) for the random start; 16-byte (8-byte for 16-bit types) vector loads and stores
// when the pointers allow. A unit may straddle two samples: the sample of element p is p / d,
// tracked per element. The arithmetic is the references' (stochnet/ops/pgd.py), op by op: float32
// (float64 for double) with the result of every op rounded to x's dtype, eps / alpha / per-sample
// factors cast to x's dtype; built with --fmad=false, so no product is fused into an add.
//
// Per-sample reductions (||grad_b||, ||delta_b||, mean_b |grad|, ||z_b||) are deterministic, no
// atomics: block (b, s) sums slice s of the units overlapping sample b (taking only sample b's
// elements) in float64 with a fixed tree and writes one partial; a finalize kernel (one warp
// per sample) merges the partials of each sample in a fixed order and writes the per-sample
// factors the elementwise kernel then applies.
//
// NaN, as the references: grad is read through load_grad, which takes a NaN entry as 0, and
// sign_of(NaN) = 0, so a NaN momentum entry takes no step.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/pgd_kernels.h"
#include "philox.h"

namespace stochnet {
namespace gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kUnit = 4;
constexpr int kWarp = 32;
constexpr int kFinalizeThreads = 128;
constexpr int64_t kUnitsPerThread = 4;  // a partial block takes at least this many units per thread
constexpr double kMinNorm = 1e-12;

// A (batch,) float32 / float64 tensor read through its runtime dtype.
struct ParamRef {
  const void* data;
  DType dtype;
  __device__ double load(int64_t b) const {
    return dtype == DType::kFloat64 ? static_cast<const double*>(data)[b]
                                    : static_cast<double>(static_cast<const float*>(data)[b]);
  }
};

// Elements p0 + j, j in [lo, hi), of a; the others are zero. vec: the full-unit vector path.
template <typename T, typename A>
__device__ void load_part(const T* a, int64_t p0, int lo, int hi, bool vec, A (&v)[4]) {
  if (vec && lo == 0 && hi == kUnit) {
    Io<T>::load4(a + p0, v);
  } else {
#pragma unroll
    for (int j = 0; j < kUnit; ++j) v[j] = (j >= lo && j < hi) ? static_cast<A>(Io<T>::load(a + p0 + j)) : A(0);
  }
}

// load_part of grad with NaN entries as 0.
template <typename T, typename A>
__device__ void load_grad(const T* grad, int64_t p0, int lo, int hi, bool vec, A (&g)[4]) {
  load_part(grad, p0, lo, hi, vec, g);
#pragma unroll
  for (int j = 0; j < kUnit; ++j) g[j] = g[j] == g[j] ? g[j] : A(0);
}

// Elements p0 + j, j < valid, of a.
template <typename T, typename A>
__device__ void store_part(T* a, int64_t p0, int valid, bool vec, const A (&v)[4]) {
  if (vec && valid == kUnit) {
    Io<T>::store4(a + p0, v);
  } else {
#pragma unroll
    for (int j = 0; j < kUnit; ++j)
      if (j < valid) Io<T>::store(a + p0 + j, v[j]);
  }
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024) in a fixed tree order; the
// result is valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[kWarp];
#pragma unroll
  for (int delta = kWarp / 2; delta > 0; delta /= 2) v += __shfl_down_sync(0xFFFFFFFFu, v, delta);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / kWarp) ? warp_sums[lane] : 0.0;
#pragma unroll
    for (int delta = kWarp / 2; delta > 0; delta /= 2) v += __shfl_down_sync(0xFFFFFFFFu, v, delta);
  }
  return v;
}

// v rounded to T (identity for float / double): every op of the reference rounds its result to
// x's dtype; 16-bit types compute in float32 and round after each op as torch does.
template <typename T, typename A>
__device__ __forceinline__ A rnd(A v) {
  return Io<T>::round(v);
}

// A per-sample float64 value cast to T (as the reference's .to(x.dtype)), in the compute type.
template <typename T>
__device__ __forceinline__ typename AccOf<T>::type to_t(double v) {
  using A = typename AccOf<T>::type;
  return Io<T>::round(static_cast<A>(v));
}

// -1, 0 or 1; 0 for +-0 and NaN.
template <typename A>
__device__ __forceinline__ A sign_of(A g) {
  return g > A(0) ? A(1) : (g < A(0) ? A(-1) : A(0));
}

// torch.clamp(v, lo, hi) = min(max(v, lo), hi); NaN passes through.
template <typename A>
__device__ __forceinline__ A clamp_to(A v, A lo, A hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// The linf step of one element along direction s (a sign), alpha and eps already in T:
// clamp(x_orig + clamp((x_adv + alpha * s) - x_orig, -eps, eps), lo, hi).
template <typename T, typename A>
__device__ __forceinline__ A linf_step(A xa, A s, A xo, A alpha, A eps, A lo, A hi) {
  const A step = rnd<T>(alpha * s);
  const A delta = clamp_to(rnd<T>(rnd<T>(xa + step) - xo), -eps, eps);
  return clamp_to(rnd<T>(xo + delta), lo, hi);
}

// (x_adv + grad * scale) - x_orig of the l2 step, scale in T.
template <typename T, typename A>
__device__ __forceinline__ A l2_delta(A xa, A g, A xo, A scale) {
  return rnd<T>(rnd<T>(xa + rnd<T>(g * scale)) - xo);
}

// Sample index and position of element p of a (batch, d) view, stepped element by element.
struct SampleCursor {
  int64_t b, r, d;
  __device__ SampleCursor(int64_t p, int64_t d_) : b(p / d_), r(p - (p / d_) * d_), d(d_) {}
  __device__ void next() {
    if (++r == d) r = 0, ++b;
  }
};

__device__ __forceinline__ int64_t units_of(int64_t numel) { return (numel + kUnit - 1) / kUnit; }

#define STOCHNET_GRID_STRIDE_UNITS(u, units)                                                        \
  for (int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; u < (units); \
       u += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------------------------------------
// Elementwise kernels.

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pgd_linf_kernel(const T* __restrict__ xa, const T* __restrict__ grad, const T* __restrict__ xo,
                    T* __restrict__ out, ParamRef eps, ParamRef alpha, int64_t numel, int64_t d, double lo,
                    double hi, bool vec) {
  using A = typename AccOf<T>::type;
  const A lo_a = static_cast<A>(lo), hi_a = static_cast<A>(hi);
  STOCHNET_GRID_STRIDE_UNITS(u, units_of(numel)) {
    const int64_t p0 = kUnit * u;
    const int valid = static_cast<int>(numel - p0 < kUnit ? numel - p0 : kUnit);
    A a[kUnit], g[kUnit], o[kUnit], y[kUnit];
    load_part(xa, p0, 0, valid, vec, a);
    load_grad(grad, p0, 0, valid, vec, g);
    load_part(xo, p0, 0, valid, vec, o);
    SampleCursor c(p0, d);
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      y[j] = A(0);
      if (j < valid) {
        y[j] = linf_step<T>(a[j], sign_of(g[j]), o[j], to_t<T>(alpha.load(c.b)), to_t<T>(eps.load(c.b)), lo_a,
                            hi_a);
        c.next();
      }
    }
    store_part(out, p0, valid, vec, y);
  }
}

// scale[b] = alpha_b / max(||grad_b||, 1e-12), factor[b] = min(1, eps_b / ||delta_b||), float64.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    pgd_l2_kernel(const T* __restrict__ xa, const T* __restrict__ grad, const T* __restrict__ xo,
                  T* __restrict__ out, const double* __restrict__ scale, const double* __restrict__ factor,
                  int64_t numel, int64_t d, double lo, double hi, bool vec) {
  using A = typename AccOf<T>::type;
  const A lo_a = static_cast<A>(lo), hi_a = static_cast<A>(hi);
  STOCHNET_GRID_STRIDE_UNITS(u, units_of(numel)) {
    const int64_t p0 = kUnit * u;
    const int valid = static_cast<int>(numel - p0 < kUnit ? numel - p0 : kUnit);
    A a[kUnit], g[kUnit], o[kUnit], y[kUnit];
    load_part(xa, p0, 0, valid, vec, a);
    load_grad(grad, p0, 0, valid, vec, g);
    load_part(xo, p0, 0, valid, vec, o);
    SampleCursor c(p0, d);
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      y[j] = A(0);
      if (j < valid) {
        const A delta = l2_delta<T>(a[j], g[j], o[j], to_t<T>(scale[c.b]));
        y[j] = clamp_to(rnd<T>(o[j] + rnd<T>(delta * to_t<T>(factor[c.b]))), lo_a, hi_a);
        c.next();
      }
    }
    store_part(out, p0, valid, vec, y);
  }
}

// denom[b] = max(mean_b |grad|, 1e-12) (float64); momentum (x's dtype) updated in place as
// mu * m + grad / denom, then the linf step along its sign.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    mim_kernel(const T* __restrict__ xa, const T* __restrict__ grad, const T* __restrict__ xo, T* __restrict__ out,
               T* mom, ParamRef eps, ParamRef alpha, const double* __restrict__ denom, double mu, int64_t numel,
               int64_t d, double lo, double hi, bool vec) {
  using A = typename AccOf<T>::type;
  const A lo_a = static_cast<A>(lo), hi_a = static_cast<A>(hi);
  const A mu_a = static_cast<A>(mu);
  STOCHNET_GRID_STRIDE_UNITS(u, units_of(numel)) {
    const int64_t p0 = kUnit * u;
    const int valid = static_cast<int>(numel - p0 < kUnit ? numel - p0 : kUnit);
    A a[kUnit], g[kUnit], o[kUnit], m[kUnit], y[kUnit];
    load_part(xa, p0, 0, valid, vec, a);
    load_grad(grad, p0, 0, valid, vec, g);
    load_part(xo, p0, 0, valid, vec, o);
    load_part(static_cast<const T*>(mom), p0, 0, valid, vec, m);
    SampleCursor c(p0, d);
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      y[j] = A(0);
      if (j < valid) {
        m[j] = rnd<T>(rnd<T>(m[j] * mu_a) + rnd<T>(g[j] / to_t<T>(denom[c.b])));
        y[j] = linf_step<T>(a[j], sign_of(m[j]), o[j], to_t<T>(alpha.load(c.b)), to_t<T>(eps.load(c.b)), lo_a,
                            hi_a);
        c.next();
      }
    }
    store_part(mom, p0, valid, vec, m);
    store_part(out, p0, valid, vec, y);
  }
}

// x + eps * (2u - 1), (2u - 1) in float32 then cast to T.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    random_linf_kernel(const T* __restrict__ xo, T* __restrict__ out, ParamRef eps, int64_t numel, int64_t d,
                       double lo, double hi, PhiloxArg philox, bool vec) {
  using A = typename AccOf<T>::type;
  const auto [seed, offset] = philox_unpack(philox);
  const A lo_a = static_cast<A>(lo), hi_a = static_cast<A>(hi);
  STOCHNET_GRID_STRIDE_UNITS(u, units_of(numel)) {
    const int64_t p0 = kUnit * u;
    const int valid = static_cast<int>(numel - p0 < kUnit ? numel - p0 : kUnit);
    A o[kUnit], y[kUnit];
    load_part(xo, p0, 0, valid, vec, o);
    const Philox4 w = philox4x32_10(seed, offset + static_cast<uint64_t>(u));
    SampleCursor c(p0, d);
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      y[j] = A(0);
      if (j < valid) {
        const float r = 2.0f * uint_to_uniform(w.w[j]) - 1.0f;
        const A noise = rnd<T>(to_t<T>(eps.load(c.b)) * rnd<T>(static_cast<A>(r)));
        y[j] = clamp_to(rnd<T>(o[j] + noise), lo_a, hi_a);
        c.next();
      }
    }
    store_part(out, p0, valid, vec, y);
  }
}

// factor[b] = eps_b * v_b^(1 / d) / ||z_b|| (0 when the norm is 0), float64; x + z * factor.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    random_l2_kernel(const T* __restrict__ xo, T* __restrict__ out, const double* __restrict__ factor,
                     int64_t numel, int64_t d, double lo, double hi, PhiloxArg philox, bool vec) {
  using A = typename AccOf<T>::type;
  const auto [seed, offset] = philox_unpack(philox);
  const A lo_a = static_cast<A>(lo), hi_a = static_cast<A>(hi);
  STOCHNET_GRID_STRIDE_UNITS(u, units_of(numel)) {
    const int64_t p0 = kUnit * u;
    const int valid = static_cast<int>(numel - p0 < kUnit ? numel - p0 : kUnit);
    A o[kUnit], y[kUnit];
    load_part(xo, p0, 0, valid, vec, o);
    float z[kUnit];
    counter_normals(seed, offset + static_cast<uint64_t>(u), z);
    SampleCursor c(p0, d);
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      y[j] = A(0);
      if (j < valid) {
        const A noise = rnd<T>(rnd<T>(static_cast<A>(z[j])) * to_t<T>(factor[c.b]));
        y[j] = clamp_to(rnd<T>(o[j] + noise), lo_a, hi_a);
        c.next();
      }
    }
    store_part(out, p0, valid, vec, y);
  }
}

// ---------------------------------------------------------------------------------------------
// Per-sample reductions. Block blockIdx.x = b * splits + s sums units
// [ub + s * chunk, min(ub + (s + 1) * chunk, ue)) of sample b, ub = floor(b d / 4),
// ue = ceil((b + 1) d / 4), taking only the elements of sample b.

enum Reduce : int {
  kGradSq,    // sum grad^2
  kGradAbs,   // sum |grad|
  kDeltaSq,   // sum delta^2, delta = (x_adv + grad * scale_b) - x_orig in T
  kNormalSq,  // sum z^2 of the stream (seed, offset)
};

template <typename T, int kMode>
__global__ void __launch_bounds__(kThreads)
    sample_partials_kernel(const T* __restrict__ xa, const T* __restrict__ grad, const T* __restrict__ xo,
                           const double* __restrict__ scale, int64_t d, int64_t splits, int64_t chunk,
                           PhiloxArg philox, bool vec, double* __restrict__ partials) {
  using A = typename AccOf<T>::type;
  const auto [seed, offset] = philox_unpack(philox);
  const int64_t b = blockIdx.x / splits, s = blockIdx.x - b * splits;
  const int64_t begin = b * d, end = begin + d;
  const int64_t ue = (end + kUnit - 1) / kUnit;
  const int64_t first = begin / kUnit + s * chunk;
  const int64_t last = first + chunk < ue ? first + chunk : ue;
  A sc = A(0);
  if constexpr (kMode == kDeltaSq) sc = to_t<T>(scale[b]);
  double acc = 0;
  for (int64_t u = first + threadIdx.x; u < last; u += blockDim.x) {
    const int64_t p0 = kUnit * u;
    const int lo = p0 < begin ? static_cast<int>(begin - p0) : 0;
    const int hi = static_cast<int>(end - p0 < kUnit ? end - p0 : kUnit);
    double v[kUnit];
    if constexpr (kMode == kNormalSq) {
      float z[kUnit];
      counter_normals(seed, offset + static_cast<uint64_t>(u), z);
#pragma unroll
      for (int j = 0; j < kUnit; ++j) v[j] = static_cast<double>(z[j]);
    } else if constexpr (kMode == kDeltaSq) {
      A a[kUnit], g[kUnit], o[kUnit];
      load_part(xa, p0, lo, hi, vec, a);
      load_grad(grad, p0, lo, hi, vec, g);
      load_part(xo, p0, lo, hi, vec, o);
#pragma unroll
      for (int j = 0; j < kUnit; ++j) v[j] = static_cast<double>(l2_delta<T>(a[j], g[j], o[j], sc));
    } else {
      A g[kUnit];
      load_grad(grad, p0, lo, hi, vec, g);
#pragma unroll
      for (int j = 0; j < kUnit; ++j) v[j] = static_cast<double>(g[j]);
    }
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      const double term = kMode == kGradAbs ? fabs(v[j]) : v[j] * v[j];
      acc += (j >= lo && j < hi) ? term : 0.0;
    }
  }
  const double total = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// One warp per sample: sum = partials[b * splits + 0 .. splits) in a fixed order, then
//   kGradSq   -> s1[b] = alpha_b / max(sqrt(sum), 1e-12)                (the l2 step's scale)
//   kDeltaSq  -> s2[b] = min(1, eps_b / sqrt(sum)), 1 when the norm is 0  (the projection)
//   kGradAbs  -> s1[b] = max(sum / d, 1e-12)                              (MIM's denominator)
//   kNormalSq -> s1[b] = eps_b * v_b^(1 / d) / sqrt(sum), 0 when the norm is 0, v_b uniform b
//                of the stream (seed, offset + v_shift)
__global__ void __launch_bounds__(kFinalizeThreads)
    finalize_kernel(const double* __restrict__ partials, int64_t batch, int64_t splits, int mode, ParamRef eps,
                    ParamRef alpha, int64_t d, PhiloxArg philox, uint64_t v_shift, double* __restrict__ s1,
                    double* __restrict__ s2) {
  const auto [seed, offset] = philox_unpack(philox);
  const int64_t b = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (b >= batch) return;  // whole warps: blockDim.x is a multiple of 32
  double sum = 0;
  for (int64_t t = lane; t < splits; t += kWarp) sum += partials[b * splits + t];
#pragma unroll
  for (int delta = kWarp / 2; delta > 0; delta /= 2) sum += __shfl_down_sync(0xFFFFFFFFu, sum, delta);
  if (lane != 0) return;
  switch (mode) {
    case kGradSq:
      s1[b] = alpha.load(b) / fmax(sqrt(sum), kMinNorm);
      break;
    case kDeltaSq: {
      const double n = sqrt(sum);
      s2[b] = n > 0 ? fmin(eps.load(b) / n, 1.0) : 1.0;
      break;
    }
    case kGradAbs:
      s1[b] = fmax(sum / static_cast<double>(d), kMinNorm);
      break;
    default: {
      const double n = sqrt(sum);
      const Philox4 w = philox4x32_10(seed, offset + v_shift + static_cast<uint64_t>(b / kUnit));
      const double v = static_cast<double>(uint_to_uniform(w.w[b % kUnit]));
      const double radius = eps.load(b) * pow(v, 1.0 / static_cast<double>(d));
      s1[b] = n > 0 ? radius / n : 0.0;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.


struct ReducePlan {
  int64_t d, splits, chunk;
  int threads;
  int64_t partials;  // batch * splits
};

ReducePlan plan_reduce(int64_t batch, int64_t numel, int sm_count) {
  ReducePlan p{};
  p.d = numel / batch;
  const int64_t max_units = ceil_div(p.d, kUnit) + 1;  // units overlapping one sample, at most
  const int64_t target_blocks = 8 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  const int64_t splits = clamp64(ceil_div(target_blocks, batch), 1,
                                 clamp64(ceil_div(max_units, kThreads * kUnitsPerThread), 1, max_units));
  p.chunk = ceil_div(max_units, splits);
  p.splits = ceil_div(max_units, p.chunk);
  p.threads = static_cast<int>(clamp64(ceil_div(p.chunk, kWarp) * kWarp, kWarp, kThreads));
  p.partials = batch * p.splits;
  return p;
}

int flat_grid(int64_t numel, int sm_count) {
  const int64_t cap = 8 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  return static_cast<int>(clamp64(ceil_div(ceil_div(numel, kUnit), kThreads), 1, cap));
}

bool valid_args(const PgdArgs& a) { return a.batch > 0 && a.numel % a.batch == 0; }

// Workspace views: partials, then s1 and s2 (batch each).
struct Workspace {
  double* partials;
  double* s1;
  double* s2;
};

Workspace workspace_of(const PgdArgs& a, const ReducePlan& p) {
  double* w = static_cast<double*>(a.workspace);
  return Workspace{w, w + p.partials, w + p.partials + a.batch};
}

// Launches the partials kernel of `mode` then the finalize kernel.
template <typename T, int kMode>
cudaError_t reduce_samples(const PgdArgs& a, const ReducePlan& p, const Workspace& ws, bool vec,
                           cudaStream_t stream) {
  const ParamRef alpha{a.alpha, a.alpha_dtype}, eps{a.eps, a.eps_dtype};
  sample_partials_kernel<T, kMode><<<static_cast<unsigned>(p.partials), p.threads, 0, stream>>>(
      static_cast<const T*>(a.x_adv), static_cast<const T*>(a.grad), static_cast<const T*>(a.x_orig), ws.s1, p.d,
      p.splits, p.chunk, a.philox, vec, ws.partials);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const uint64_t v_shift = static_cast<uint64_t>(ceil_div(a.numel, kUnit));
  finalize_kernel<<<static_cast<unsigned>(ceil_div(a.batch * kWarp, kFinalizeThreads)), kFinalizeThreads, 0,
                    stream>>>(ws.partials, a.batch, p.splits, kMode, eps, alpha, p.d, a.philox, v_shift, ws.s1,
                              ws.s2);
  return cudaGetLastError();
}

}  // namespace

int64_t pgd_workspace_bytes(int64_t batch, int64_t numel, int sm_count) {
  if (batch <= 0 || numel <= 0) return 0;
  return (plan_reduce(batch, numel, sm_count).partials + 2 * batch) * static_cast<int64_t>(sizeof(double));
}

cudaError_t pgd_step_linf(const PgdArgs& a, cudaStream_t stream) {
  if (a.numel <= 0) return cudaSuccess;
  if (!valid_args(a)) return cudaErrorInvalidValue;
  return dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vec = vec_aligned<T>(a.x_adv) && vec_aligned<T>(a.grad) && vec_aligned<T>(a.x_orig) &&
                     vec_aligned<T>(a.out);
    pgd_linf_kernel<T><<<flat_grid(a.numel, a.sm_count), kThreads, 0, stream>>>(
        static_cast<const T*>(a.x_adv), static_cast<const T*>(a.grad), static_cast<const T*>(a.x_orig),
        static_cast<T*>(a.out), ParamRef{a.eps, a.eps_dtype}, ParamRef{a.alpha, a.alpha_dtype}, a.numel,
        a.numel / a.batch, a.lo, a.hi, vec);
    return cudaGetLastError();
  });
}

cudaError_t pgd_step_l2(const PgdArgs& a, cudaStream_t stream) {
  if (a.numel <= 0) return cudaSuccess;
  if (!valid_args(a)) return cudaErrorInvalidValue;
  const ReducePlan p = plan_reduce(a.batch, a.numel, a.sm_count);
  const Workspace ws = workspace_of(a, p);
  return dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool vec_in = vec_aligned<T>(a.x_adv) && vec_aligned<T>(a.grad) && vec_aligned<T>(a.x_orig);
    cudaError_t err = reduce_samples<T, kGradSq>(a, p, ws, vec_aligned<T>(a.grad), stream);
    if (err != cudaSuccess) return err;
    err = reduce_samples<T, kDeltaSq>(a, p, ws, vec_in, stream);
    if (err != cudaSuccess) return err;
    pgd_l2_kernel<T><<<flat_grid(a.numel, a.sm_count), kThreads, 0, stream>>>(
        static_cast<const T*>(a.x_adv), static_cast<const T*>(a.grad), static_cast<const T*>(a.x_orig),
        static_cast<T*>(a.out), ws.s1, ws.s2, a.numel, p.d, a.lo, a.hi, vec_in && vec_aligned<T>(a.out));
    return cudaGetLastError();
  });
}

cudaError_t mim_step(const PgdArgs& a, cudaStream_t stream) {
  if (a.numel <= 0) return cudaSuccess;
  if (!valid_args(a) || a.momentum_dtype != a.dtype) return cudaErrorInvalidValue;
  const ReducePlan p = plan_reduce(a.batch, a.numel, a.sm_count);
  const Workspace ws = workspace_of(a, p);
  return dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const cudaError_t err = reduce_samples<T, kGradAbs>(a, p, ws, vec_aligned<T>(a.grad), stream);
    if (err != cudaSuccess) return err;
    const bool vec = vec_aligned<T>(a.x_adv) && vec_aligned<T>(a.grad) && vec_aligned<T>(a.x_orig) &&
                     vec_aligned<T>(a.out) && vec_aligned<T>(a.momentum);
    mim_kernel<T><<<flat_grid(a.numel, a.sm_count), kThreads, 0, stream>>>(
        static_cast<const T*>(a.x_adv), static_cast<const T*>(a.grad), static_cast<const T*>(a.x_orig),
        static_cast<T*>(a.out), static_cast<T*>(a.momentum), ParamRef{a.eps, a.eps_dtype},
        ParamRef{a.alpha, a.alpha_dtype}, ws.s1, a.mu, a.numel, p.d, a.lo, a.hi, vec);
    return cudaGetLastError();
  });
}

cudaError_t random_start_linf(const PgdArgs& a, cudaStream_t stream) {
  if (a.numel <= 0) return cudaSuccess;
  if (!valid_args(a)) return cudaErrorInvalidValue;
  return dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    random_linf_kernel<T><<<flat_grid(a.numel, a.sm_count), kThreads, 0, stream>>>(
        static_cast<const T*>(a.x_orig), static_cast<T*>(a.out), ParamRef{a.eps, a.eps_dtype}, a.numel,
        a.numel / a.batch, a.lo, a.hi, a.philox, vec_aligned<T>(a.x_orig) && vec_aligned<T>(a.out));
    return cudaGetLastError();
  });
}

cudaError_t random_start_l2(const PgdArgs& a, cudaStream_t stream) {
  if (a.numel <= 0) return cudaSuccess;
  if (!valid_args(a)) return cudaErrorInvalidValue;
  const ReducePlan p = plan_reduce(a.batch, a.numel, a.sm_count);
  const Workspace ws = workspace_of(a, p);
  cudaError_t err = reduce_samples<float, kNormalSq>(a, p, ws, false, stream);
  if (err != cudaSuccess) return err;
  return dispatch(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    random_l2_kernel<T><<<flat_grid(a.numel, a.sm_count), kThreads, 0, stream>>>(
        static_cast<const T*>(a.x_orig), static_cast<T*>(a.out), ws.s1, a.numel, p.d, a.lo, a.hi, a.philox,
        vec_aligned<T>(a.x_orig) && vec_aligned<T>(a.out));
    return cudaGetLastError();
  });
}

}  // namespace gpu
}  // namespace stochnet
