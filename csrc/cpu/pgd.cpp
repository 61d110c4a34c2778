// PGD / MIM steps and the random start on the CPU (semantics: stochnet/ops/pgd.py).
//
// Inputs are contiguous (B, *) tensors. The work is split into tasks that each lie inside one
// sample and inside one chunk of kChunk elements aligned in memory order, so a task reads a
// single eps / alpha and, for the random start, whole Philox blocks. Per-sample sums are taken
// per task (partials in the input's precision over at most kFlushVectors vectors, then double)
// and added in task order: the result does not depend on the number of threads.
// Passes over memory: linf step 1 (read 3, write 1); l2 step 3 (grad norms; delta norms;
// write); MIM 2 (mean |grad|; momentum update and step); random start linf 1, l2 2 (normals
// written to the output with their norms, then scaled in place).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/normal_block.h"
#include "cpu/output_pool.h"

namespace stochnet::cpu {
namespace {

constexpr int64_t kChunk = 16384;
static_assert(kChunk % kBlock == 0, "a chunk must hold whole Philox blocks");
constexpr int kFlushVectors = 16;
constexpr double kMinNorm = 1e-12;

struct Task {
  int64_t sample, begin, end;
};

std::vector<Task> tasks_of(int64_t batch, int64_t per_sample) {
  std::vector<Task> tasks;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t stop = (b + 1) * per_sample;
    for (int64_t e = b * per_sample; e < stop;) {
      const int64_t next = std::min(stop, (e / kChunk + 1) * kChunk);
      tasks.push_back({b, e, next});
      e = next;
    }
  }
  return tasks;
}

// fn(task index) for every task, in parallel; with `stream`, each thread fences its stores.
template <typename Fn>
void for_tasks(const std::vector<Task>& tasks, int64_t per_sample, bool stream, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, kChunk / std::min(per_sample, kChunk));
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), grain, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) fn(t);
    if (stream) stream_fence();
  });
}

// Double sums per sample of the task partials `partial(task)`.
template <typename Fn>
std::vector<double> per_sample_sums(const std::vector<Task>& tasks, int64_t batch, int64_t per_sample,
                                    const Fn& partial) {
  std::vector<double> parts(tasks.size());
  for_tasks(tasks, per_sample, false, [&](int64_t t) { parts[t] = partial(tasks[t]); });
  std::vector<double> sums(batch, 0.0);
  for (size_t t = 0; t < tasks.size(); ++t) sums[tasks[t].sample] += parts[t];
  return sums;
}

// sum over [begin, end) of term(i), with vterm(i) the terms i .. i + lanes - 1 as a vector.
template <typename scalar_t, typename Term, typename VecTerm>
double sum_range(int64_t begin, int64_t end, const Term& term, const VecTerm& vterm) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t lanes = Vec::size();
  alignas(64) scalar_t partial[lanes];
  double total = 0.0;
  int64_t i = begin;
  while (i + lanes <= end) {
    Vec acc(scalar_t(0));
    for (int k = 0; k < kFlushVectors && i + lanes <= end; ++k, i += lanes) acc = acc + vterm(i);
    acc.store(partial);
    for (int64_t l = 0; l < lanes; ++l) total += partial[l];
  }
  for (; i < end; ++i) total += static_cast<double>(term(i));
  return total;
}

// out[i] = value(i) over [begin, end), vectors from vvalue(i); non-temporal stores when `stream`.
template <typename scalar_t, typename Value, typename VecValue>
void write_range(scalar_t* out, int64_t begin, int64_t end, bool stream, const Value& value, const VecValue& vvalue) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t lanes = Vec::size();
  int64_t i = begin;
  if (stream) {
    for (; i < end && reinterpret_cast<uintptr_t>(out + i) % (lanes * sizeof(scalar_t)) != 0; ++i) out[i] = value(i);
  }
  for (; i + lanes <= end; i += lanes) {
    const Vec v = vvalue(i);
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (stream) {
        store_stream(out + i, v);
        continue;
      }
    }
    v.store(out + i);
  }
  for (; i < end; ++i) out[i] = value(i);
}

template <typename scalar_t>
bool streamable(const scalar_t* out, int64_t numel) {
  return std::is_same_v<scalar_t, float> && numel * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamBytes &&
         reinterpret_cast<uintptr_t>(out) % 64 == 0;
}

template <typename scalar_t>
inline scalar_t clip(scalar_t v, scalar_t lo, scalar_t hi) {
  return std::min(std::max(v, lo), hi);
}

// alpha * sign(g), sign(0) = sign(NaN) = 0.
template <typename scalar_t>
inline scalar_t sign_step(scalar_t g, scalar_t alpha) {
  return g > scalar_t(0) ? alpha : (g < scalar_t(0) ? -alpha : scalar_t(0));
}

template <typename scalar_t>
inline at::vec::Vectorized<scalar_t> sign_step(const at::vec::Vectorized<scalar_t>& g,
                                               const at::vec::Vectorized<scalar_t>& alpha) {
  const at::vec::Vectorized<scalar_t> zero(scalar_t(0));
  return (alpha & (g > zero)) - (alpha & (g < zero));
}

// grad with NaN entries as 0 (stochnet/ops/pgd.py): no step along them, no part of the per-sample
// sums. The linf step needs no mask: sign_step is 0 for NaN.
template <typename scalar_t>
inline scalar_t nan_as_zero(scalar_t g) {
  return g == g ? g : scalar_t(0);
}

template <typename scalar_t>
inline at::vec::Vectorized<scalar_t> nan_as_zero(const at::vec::Vectorized<scalar_t>& g) {
  return g & (g == g);
}

// The linf step of one element: clamp(x_orig + clamp(x_adv + step - x_orig, -eps, eps), lo, hi).
template <typename scalar_t>
inline scalar_t linf_project(scalar_t xa, scalar_t step, scalar_t xo, scalar_t eps, scalar_t lo, scalar_t hi) {
  return clip(xo + clip((xa + step) - xo, -eps, eps), lo, hi);
}

template <typename scalar_t, typename Vec = at::vec::Vectorized<scalar_t>>
inline Vec linf_project(const Vec& xa, const Vec& step, const Vec& xo, const Vec& eps, const Vec& lo,
                        const Vec& hi) {
  return at::vec::clamp(xo + at::vec::clamp((xa + step) - xo, Vec(scalar_t(0)) - eps, eps), lo, hi);
}

std::vector<double> per_sample_values(const at::Tensor& t) {
  const at::Tensor values = t.to(at::kDouble);
  const double* v = values.const_data_ptr<double>();
  return std::vector<double>(v, v + values.numel());
}

// The per-sample parameters in x's precision, as the reference casts them.
template <typename scalar_t>
std::vector<scalar_t> cast_values(const std::vector<double>& values) {
  return std::vector<scalar_t>(values.begin(), values.end());
}

struct Shape {
  int64_t batch, per_sample, numel;
};

Shape shape_of(const at::Tensor& x) { return {x.size(0), x.numel() / x.size(0), x.numel()}; }

template <typename scalar_t>
void linf_step(const scalar_t* xa, const scalar_t* g, const scalar_t* xo, const std::vector<scalar_t>& eps,
               const std::vector<scalar_t>& alpha, scalar_t lo, scalar_t hi, const Shape& shape, scalar_t* out) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const std::vector<Task> tasks = tasks_of(shape.batch, shape.per_sample);
  const bool stream = streamable(out, shape.numel);
  for_tasks(tasks, shape.per_sample, stream, [&](int64_t t) {
    const Task& task = tasks[t];
    const scalar_t e = eps[task.sample], a = alpha[task.sample];
    const Vec ve(e), va(a), vlo(lo), vhi(hi);
    write_range<scalar_t>(
        out, task.begin, task.end, stream,
        [&](int64_t i) { return linf_project(xa[i], sign_step(g[i], a), xo[i], e, lo, hi); },
        [&](int64_t i) {
          return linf_project<scalar_t>(Vec::loadu(xa + i), sign_step<scalar_t>(Vec::loadu(g + i), va),
                                        Vec::loadu(xo + i), ve, vlo, vhi);
        });
  });
}

template <typename scalar_t>
void l2_step(const scalar_t* xa, const scalar_t* g, const scalar_t* xo, const std::vector<double>& eps,
             const std::vector<double>& alpha, scalar_t lo, scalar_t hi, const Shape& shape, scalar_t* out) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const std::vector<Task> tasks = tasks_of(shape.batch, shape.per_sample);
  const std::vector<double> grad_sq = per_sample_sums(tasks, shape.batch, shape.per_sample, [&](const Task& task) {
    return sum_range<scalar_t>(
        task.begin, task.end,
        [&](int64_t i) {
          const scalar_t v = nan_as_zero(g[i]);
          return v * v;
        },
        [&](int64_t i) {
          const Vec v = nan_as_zero(Vec::loadu(g + i));
          return v * v;
        });
  });
  std::vector<scalar_t> scale(shape.batch);
  for (int64_t b = 0; b < shape.batch; ++b)
    scale[b] = static_cast<scalar_t>(alpha[b] / std::max(std::sqrt(grad_sq[b]), kMinNorm));
  // delta = (x_adv + grad * scale) - x_orig, recomputed in the write pass rather than stored.
  const std::vector<double> delta_sq = per_sample_sums(tasks, shape.batch, shape.per_sample, [&](const Task& task) {
    const scalar_t s = scale[task.sample];
    const Vec vs(s);
    return sum_range<scalar_t>(
        task.begin, task.end,
        [&](int64_t i) {
          const scalar_t d = (xa[i] + nan_as_zero(g[i]) * s) - xo[i];
          return d * d;
        },
        [&](int64_t i) {
          const Vec d = (Vec::loadu(xa + i) + nan_as_zero(Vec::loadu(g + i)) * vs) - Vec::loadu(xo + i);
          return d * d;
        });
  });
  std::vector<scalar_t> factor(shape.batch);
  for (int64_t b = 0; b < shape.batch; ++b) {
    const double norm = std::sqrt(delta_sq[b]);
    factor[b] = static_cast<scalar_t>(norm > 0 ? std::min(1.0, eps[b] / norm) : 1.0);
  }
  const bool stream = streamable(out, shape.numel);
  for_tasks(tasks, shape.per_sample, stream, [&](int64_t t) {
    const Task& task = tasks[t];
    const scalar_t s = scale[task.sample], f = factor[task.sample];
    const Vec vs(s), vf(f), vlo(lo), vhi(hi);
    write_range<scalar_t>(
        out, task.begin, task.end, stream,
        [&](int64_t i) { return clip(xo[i] + ((xa[i] + nan_as_zero(g[i]) * s) - xo[i]) * f, lo, hi); },
        [&](int64_t i) {
          const Vec x0 = Vec::loadu(xo + i);
          const Vec d = (Vec::loadu(xa + i) + nan_as_zero(Vec::loadu(g + i)) * vs) - x0;
          return at::vec::clamp(x0 + d * vf, vlo, vhi);
        });
  });
}

template <typename scalar_t>
void mim_update(const scalar_t* xa, const scalar_t* g, const scalar_t* xo, scalar_t* m,
              const std::vector<scalar_t>& eps, const std::vector<scalar_t>& alpha, scalar_t mu, scalar_t lo,
              scalar_t hi, const Shape& shape, scalar_t* out) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const std::vector<Task> tasks = tasks_of(shape.batch, shape.per_sample);
  const std::vector<double> l1 = per_sample_sums(tasks, shape.batch, shape.per_sample, [&](const Task& task) {
    return sum_range<scalar_t>(
        task.begin, task.end, [&](int64_t i) { return std::abs(nan_as_zero(g[i])); },
        [&](int64_t i) { return nan_as_zero(Vec::loadu(g + i)).abs(); });
  });
  std::vector<scalar_t> denom(shape.batch);
  for (int64_t b = 0; b < shape.batch; ++b)
    denom[b] = static_cast<scalar_t>(std::max(l1[b] / static_cast<double>(shape.per_sample), kMinNorm));
  const bool stream = streamable(out, shape.numel);
  for_tasks(tasks, shape.per_sample, stream, [&](int64_t t) {
    const Task& task = tasks[t];
    const scalar_t e = eps[task.sample], a = alpha[task.sample], d = denom[task.sample];
    const Vec ve(e), va(a), vd(d), vmu(mu), vlo(lo), vhi(hi);
    write_range<scalar_t>(
        out, task.begin, task.end, stream,
        [&](int64_t i) {
          const scalar_t momentum = mu * m[i] + nan_as_zero(g[i]) / d;
          m[i] = momentum;
          return linf_project(xa[i], sign_step(momentum, a), xo[i], e, lo, hi);
        },
        [&](int64_t i) {
          const Vec momentum = vmu * Vec::loadu(m + i) + nan_as_zero(Vec::loadu(g + i)) / vd;
          momentum.store(m + i);
          return linf_project<scalar_t>(Vec::loadu(xa + i), sign_step<scalar_t>(momentum, va), Vec::loadu(xo + i),
                                        ve, vlo, vhi);
        });
  });
}

// The float32 Philox values (uniforms or normals) of one task's blocks, in x's precision,
// handed to fn(first, last, values) with values[j] the value of element first + j.
template <typename scalar_t, bool kNormal, typename Fn>
void for_random_blocks(const Task& task, uint64_t seed, uint64_t offset, const Fn& fn) {
  alignas(64) float raw[kBlock];
  alignas(64) scalar_t values[kBlock];
  for (int64_t block = task.begin / kBlock * kBlock; block < task.end; block += kBlock) {
    if constexpr (kNormal) {
      normal_block(seed, offset + static_cast<uint64_t>(block / 4), raw);
    } else {
      word_block<true>(seed, offset + static_cast<uint64_t>(block / 4), raw);
    }
    const int64_t first = std::max(task.begin, block), last = std::min(task.end, block + kBlock);
    if constexpr (std::is_same_v<scalar_t, float>) {
      fn(first, last, raw + (first - block));
    } else {
      for (int64_t j = first; j < last; ++j) values[j - first] = static_cast<scalar_t>(raw[j - block]);
      fn(first, last, values);
    }
  }
}

template <typename scalar_t>
void linf_random_start(const scalar_t* x, const std::vector<scalar_t>& eps, scalar_t lo, scalar_t hi,
                       uint64_t seed, uint64_t offset, const Shape& shape, scalar_t* out) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const std::vector<Task> tasks = tasks_of(shape.batch, shape.per_sample);
  const bool stream = streamable(out, shape.numel);
  for_tasks(tasks, shape.per_sample, stream, [&](int64_t t) {
    const Task& task = tasks[t];
    const scalar_t e = eps[task.sample];
    const Vec ve(e), vlo(lo), vhi(hi);
    // float32 u as the reference: r = 2u - 1 in float32, then x + eps * r in x's precision.
    auto r = [](float u) { return static_cast<scalar_t>(2.0f * u - 1.0f); };
    for_random_blocks<float, false>(task, seed, offset, [&](int64_t first, int64_t last, const float* u) {
      const float* ub = u - first;
      write_range<scalar_t>(
          out, first, last, stream, [&](int64_t i) { return clip(x[i] + e * r(ub[i]), lo, hi); },
          [&](int64_t i) {
            Vec rv;
            if constexpr (std::is_same_v<scalar_t, float>) {
              rv = VecF(2.0f) * VecF::loadu(ub + i) - VecF(1.0f);
            } else {
              alignas(64) scalar_t lanes[Vec::size()];
              for (int64_t l = 0; l < Vec::size(); ++l) lanes[l] = r(ub[i + l]);
              rv = Vec::loadu(lanes);
            }
            return at::vec::clamp(Vec::loadu(x + i) + ve * rv, vlo, vhi);
          });
    });
  });
}

template <typename scalar_t>
void l2_random_start(const scalar_t* x, const std::vector<double>& eps, scalar_t lo, scalar_t hi, uint64_t seed,
                     uint64_t offset, const Shape& shape, scalar_t* out) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const std::vector<Task> tasks = tasks_of(shape.batch, shape.per_sample);
  // Pass 1: the normals into out, and their squared norms per sample.
  const std::vector<double> z_sq = per_sample_sums(tasks, shape.batch, shape.per_sample, [&](const Task& task) {
    double total = 0.0;
    for_random_blocks<scalar_t, true>(task, seed, offset, [&](int64_t first, int64_t last, const scalar_t* z) {
      std::copy(z, z + (last - first), out + first);
      total += sum_range<scalar_t>(
          0, last - first, [&](int64_t i) { return z[i] * z[i]; },
          [&](int64_t i) {
            const Vec v = Vec::loadu(z + i);
            return v * v;
          });
    });
    return total;
  });
  // Radius eps * v ** (1 / d), v = uniform b of the stream after the normals' counters.
  const uint64_t radius_offset = offset + static_cast<uint64_t>((shape.numel + 3) / 4);
  std::vector<scalar_t> factor(shape.batch);
  for (int64_t b = 0; b < shape.batch; ++b) {
    const uint32_t word = philox4x32_10(seed, radius_offset + static_cast<uint64_t>(b / 4)).w[b % 4];
    const double radius =
        eps[b] * std::pow(static_cast<double>(uint_to_uniform(word)), 1.0 / static_cast<double>(shape.per_sample));
    const double norm = std::sqrt(z_sq[b]);
    factor[b] = static_cast<scalar_t>(norm > 0 ? radius / norm : 0.0);
  }
  for_tasks(tasks, shape.per_sample, false, [&](int64_t t) {
    const Task& task = tasks[t];
    const scalar_t f = factor[task.sample];
    const Vec vf(f), vlo(lo), vhi(hi);
    write_range<scalar_t>(
        out, task.begin, task.end, false, [&](int64_t i) { return clip(x[i] + out[i] * f, lo, hi); },
        [&](int64_t i) { return at::vec::clamp(Vec::loadu(x + i) + Vec::loadu(out + i) * vf, vlo, vhi); });
  });
}

void check_cpu_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64 on CPU, got ", t.scalar_type());
}

at::Tensor pgd_step(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                    const at::Tensor& eps, const at::Tensor& alpha, c10::string_view norm, double lo, double hi) {
  check_pgd_step_args(x_adv, grad, x_orig, eps, alpha, lo, hi);
  check_cpu_dtype(x_adv, "x_adv");
  const bool l2 = is_l2_norm(norm);
  at::Tensor out = pooled_empty(x_adv.sizes(), x_adv.scalar_type());
  const std::vector<double> eps_values = per_sample_values(eps), alpha_values = per_sample_values(alpha);
  AT_DISPATCH_FLOATING_TYPES(x_adv.scalar_type(), "pgd_step", [&] {
    const scalar_t *xa = x_adv.const_data_ptr<scalar_t>(), *g = grad.const_data_ptr<scalar_t>(),
                   *xo = x_orig.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const auto low = static_cast<scalar_t>(lo), high = static_cast<scalar_t>(hi);
    if (l2) {
      l2_step<scalar_t>(xa, g, xo, eps_values, alpha_values, low, high, shape_of(x_adv), o);
    } else {
      linf_step<scalar_t>(xa, g, xo, cast_values<scalar_t>(eps_values), cast_values<scalar_t>(alpha_values), low,
                          high, shape_of(x_adv), o);
    }
  });
  return out;
}

at::Tensor mim_step(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                    at::Tensor& momentum, const at::Tensor& eps, const at::Tensor& alpha, double mu, double lo,
                    double hi) {
  check_mim_step_args(x_adv, grad, x_orig, momentum, eps, alpha, lo, hi);
  check_cpu_dtype(x_adv, "x_adv");
  at::Tensor out = pooled_empty(x_adv.sizes(), x_adv.scalar_type());
  const std::vector<double> eps_values = per_sample_values(eps), alpha_values = per_sample_values(alpha);
  AT_DISPATCH_FLOATING_TYPES(x_adv.scalar_type(), "mim_step", [&] {
    mim_update<scalar_t>(x_adv.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                       x_orig.const_data_ptr<scalar_t>(), momentum.mutable_data_ptr<scalar_t>(),
                       cast_values<scalar_t>(eps_values), cast_values<scalar_t>(alpha_values),
                       static_cast<scalar_t>(mu), static_cast<scalar_t>(lo), static_cast<scalar_t>(hi),
                       shape_of(x_adv), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor random_start(const at::Tensor& x_orig, const at::Tensor& eps, c10::string_view norm, double lo,
                        double hi, const at::Tensor& philox) {
  check_random_start_args(x_orig, eps, lo, hi);
  const auto [seed, offset] = philox_pair(philox);
  check_cpu_dtype(x_orig, "x_orig");
  const bool l2 = is_l2_norm(norm);
  at::Tensor out = pooled_empty(x_orig.sizes(), x_orig.scalar_type());
  const std::vector<double> eps_values = per_sample_values(eps);
  AT_DISPATCH_FLOATING_TYPES(x_orig.scalar_type(), "random_start", [&] {
    const scalar_t* x = x_orig.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const auto low = static_cast<scalar_t>(lo), high = static_cast<scalar_t>(hi);
    if (l2) {
      l2_random_start<scalar_t>(x, eps_values, low, high, seed, offset, shape_of(x_orig), o);
    } else {
      linf_random_start<scalar_t>(x, cast_values<scalar_t>(eps_values), low, high, seed, offset, shape_of(x_orig), o);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(stochnet, CPU, m) {
  m.impl("pgd_step", &pgd_step);
  m.impl("mim_step", &mim_step);
  m.impl("random_start", &random_start);
}

}  // namespace stochnet::cpu
