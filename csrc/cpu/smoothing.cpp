// Randomized smoothing on the CPU: the noisy copies of a batch and their votes (rules in
// stochnet/ops/smoothing.py).
//
// noisy_repeat: out[b*m + j] = x[b] + sigma * z, element i of the output (memory order) taking
// normal i of the Philox stream (seed, offset).
//
// The output is written once, in memory order, in blocks of kBlock elements, so each block's
// normals come from one normal_block() call. A block splits into runs that each read one
// contiguous stretch of a sample (a run ends where a copy ends). A sample's m copies are
// consecutive, so x[b] comes from memory once and from the cache for the other copies.
//
// vote: logits (B*m, K) read as (B, m, K) reduced to (B, K) in one pass
// over the logits, and the soft vote's backward (rules in stochnet/ops/smoothing.py).
//
// Samples run in parallel; a thread reduces one sample's m rows straight into that sample's
// output row, so there are no races and no partial sums to merge. Each row is reduced to its
// argmax (prediction); its softmax, accumulated (soft); or its ranks, through a sorted insertion
// buffer of the top 32 on integer order keys (weighted). Long rows use at::vec, rows shorter than
// a vector scalar code; the exps of a group of rows run together in full vectors. A group stays
// in L1 between these steps: the logits are read from memory once.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
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
void repeat_with_noise(const at::Tensor& x, int64_t m, scalar_t sigma, uint64_t seed, uint64_t offset, at::Tensor& y) {
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

at::Tensor noisy_repeat(const at::Tensor& x, int64_t m, double sigma, const at::Tensor& philox) {
  check_noisy_repeat_args(x, m, sigma);
  const auto [seed, offset] = philox_pair(philox);
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes[0] *= m;
  at::Tensor y = pooled_empty(sizes, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "noisy_repeat", [&] {
    repeat_with_noise<scalar_t>(x, m, static_cast<scalar_t>(sigma), seed, offset, y);
  });
  return y;
}


using at::vec::Vectorized;

constexpr int kWeightedRanks = 32;           // WEIGHTED_RANKS of stochnet/ops/smoothing.py
constexpr int64_t kGrainLogits = 1 << 15;    // logits per parallel task, at least

// The CPU part of the vote checks; the rest is shared with the CUDA implementation in checks.h.
void check_cpu_dtype(const at::Tensor& logits, const char*) {
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
              "logits must be float32 or float64 on CPU, got ", logits.scalar_type());
}

int64_t grain_samples(int64_t m, int64_t classes) { return std::max<int64_t>(1, kGrainLogits / (m * classes)); }

// Rows shorter than a vector are reduced in scalar code: at::vec's partial loads cost more
// than the arithmetic there.
template <typename T>
bool short_row(int64_t classes) {
  return classes < Vectorized<T>::size();
}

template <typename T>
T row_max(const T* row, int64_t classes) {  // NaN when the row has one
  if (short_row<T>(classes)) {
    T best = row[0];
    for (int64_t k = 0; k < classes && !std::isnan(best); ++k) {
      best = std::isnan(row[k]) || row[k] > best ? row[k] : best;
    }
    return best;
  }
  return at::vec::reduce_all<T>(
      [](const Vectorized<T>& a, const Vectorized<T>& b) { return at::vec::maximum(a, b); }, row, classes);
}

template <typename T>
T row_sum(const T* row, int64_t classes) {
  if (short_row<T>(classes)) {
    T sum = 0;
    for (int64_t k = 0; k < classes; ++k) sum += row[k];
    return sum;
  }
  return at::vec::reduce_all<T>(std::plus<Vectorized<T>>(), row, classes);
}

// Logits as integers ordered as their ranks: larger values larger, -0 equal to +0, every NaN equal
// and above +inf (a stable descending sort then puts the lower index first among equals).
template <typename T>
using OrderKey = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;

template <typename T>
inline OrderKey<T> order_key(T value) {
  using Key = OrderKey<T>;
  if (std::isnan(value)) return std::numeric_limits<Key>::max();
  const T canonical = value + T(0);  // -0 + 0 = +0
  Key bits;
  std::memcpy(&bits, &canonical, sizeof(bits));
  return bits >= 0 ? bits : bits ^ std::numeric_limits<Key>::max();  // negatives: larger magnitude lower
}

// torch.argmax of a row: the first maximal index, or the first NaN.
template <typename T>
int64_t argmax(const T* row, int64_t classes) {
  if (classes < 2 * Vectorized<T>::size()) {  // scalar; order keys make NaN the largest
    OrderKey<T> best = order_key(row[0]);
    for (int64_t k = 1; k < classes; ++k) best = std::max(best, order_key(row[k]));
    int64_t k = 0;
    while (order_key(row[k]) != best) ++k;
    return k;
  }
  const T best = row_max(row, classes);  // vector max, then the first index that holds it
  const bool nan = std::isnan(best);
  int64_t k = 0;
  while (nan ? !std::isnan(row[k]) : row[k] != best) ++k;
  return k;
}

// Rows per softmax group: the exps of a group are evaluated together in full vectors, so short
// rows do not each pay for a partial vector; a group stays within L1.
int64_t softmax_group(int64_t classes) { return std::max<int64_t>(1, 1024 / classes); }

// p = softmax of each of `rows` rows (NaN for a row with a NaN, as torch.softmax).
template <typename T>
void softmax_rows(const T* logits, int64_t rows, int64_t classes, T* p) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = logits + r * classes;
    const T max = row_max(row, classes);
    for (int64_t k = 0; k < classes; ++k) p[r * classes + k] = row[k] - max;
  }
  at::vec::map([](const Vectorized<T>& x) { return x.exp(); }, p, p, rows * classes);
  for (int64_t r = 0; r < rows; ++r) {
    const T inverse = T(1) / row_sum(p + r * classes, classes);
    for (int64_t k = 0; k < classes; ++k) p[r * classes + k] *= inverse;
  }
}

// The first `ranks` logits of a row by rank, kept sorted as the row streams by; a later logit
// enters only above a strictly lower key, so equal keys keep the lower index first.
template <typename Key>
struct TopRanks {
  int ranks, count = 0;
  Key keys[kWeightedRanks];
  int64_t indices[kWeightedRanks];

  bool full() const { return count == ranks; }
  Key last() const { return keys[count - 1]; }

  void offer(Key key, int64_t index) {
    int n = count;
    if (n == ranks) {
      if (key <= keys[n - 1]) return;
      --n;  // the last one drops out
    }
    int p = n;
    for (; p > 0 && key > keys[p - 1]; --p) {
      keys[p] = keys[p - 1];
      indices[p] = indices[p - 1];
    }
    keys[p] = key;
    indices[p] = index;
    count = n + 1;
  }
};

// scores[k] += 2^-rank of logit k, for the top min(K, 32) logits of the row.
template <typename T>
void add_rank_weights(const T* row, int64_t classes, const T* weights, OrderKey<T>* keys, T* scores) {
  constexpr int64_t kSpan = 16;  // keys tested at once against the buffer's last entry
  for (int64_t k = 0; k < classes; ++k) keys[k] = order_key(row[k]);
  if (classes <= kWeightedRanks) {  // every logit is ranked: count what ranks above it, branch-free
    for (int64_t k = 0; k < classes; ++k) {
      int rank = 0;
      for (int64_t i = 0; i < k; ++i) rank += keys[i] >= keys[k];
      for (int64_t i = k + 1; i < classes; ++i) rank += keys[i] > keys[k];
      scores[k] += weights[rank];
    }
    return;
  }
  TopRanks<OrderKey<T>> top{kWeightedRanks};
  for (int64_t k = 0; k < classes;) {
    // Once the buffer is full, most spans of a long row hold nothing above its last entry.
    if (top.full() && k + kSpan <= classes) {
      bool candidate = false;
      for (int64_t i = k; i < k + kSpan; ++i) candidate |= keys[i] > top.last();
      if (candidate) {
        for (int64_t i = k; i < k + kSpan; ++i) top.offer(keys[i], i);
      }
      k += kSpan;
      continue;
    }
    top.offer(keys[k], k);
    ++k;
  }
  for (int r = 0; r < top.count; ++r) scores[top.indices[r]] += weights[r];
}

template <typename T>
void reduce_votes(const at::Tensor& logits, int64_t m, VoteMode mode, at::Tensor& out) {
  const T* lp = logits.const_data_ptr<T>();
  const int64_t classes = logits.size(1), batch = logits.size(0) / m, group = softmax_group(classes);
  T weights[kWeightedRanks];
  for (int r = 0; r < kWeightedRanks; ++r) weights[r] = std::ldexp(T(1), -r);
  at::parallel_for(0, batch, grain_samples(m, classes), [&](int64_t first, int64_t last) {
    std::vector<T> p(mode == VoteMode::kSoft ? group * classes : 0);
    std::vector<OrderKey<T>> keys(mode == VoteMode::kWeighted ? classes : 0);
    for (int64_t b = first; b < last; ++b) {
      const T* rows = lp + b * m * classes;
      if (mode == VoteMode::kPrediction) {
        int64_t* counts = out.mutable_data_ptr<int64_t>() + b * classes;
        for (int64_t j = 0; j < m; ++j) ++counts[argmax(rows + j * classes, classes)];
        continue;
      }
      T* scores = out.mutable_data_ptr<T>() + b * classes;
      if (mode == VoteMode::kWeighted) {
        for (int64_t j = 0; j < m; ++j) add_rank_weights(rows + j * classes, classes, weights, keys.data(), scores);
        continue;
      }
      for (int64_t j = 0; j < m; j += group) {
        const int64_t count = std::min(group, m - j);
        softmax_rows(rows + j * classes, count, classes, p.data());
        for (int64_t r = 0; r < count; ++r) {
          for (int64_t k = 0; k < classes; ++k) scores[k] += p[r * classes + k];
        }
      }
      for (int64_t k = 0; k < classes; ++k) scores[k] /= static_cast<T>(m);
    }
  });
}

// d logits = p * (g - <g, p>) / m per row, p the row's softmax and g its sample's grad row.
template <typename T>
void soft_grad(const at::Tensor& grad, const at::Tensor& logits, int64_t m, at::Tensor& out) {
  const T* lp = logits.const_data_ptr<T>();
  const T* gp = grad.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  const int64_t classes = logits.size(1), batch = logits.size(0) / m, group = softmax_group(classes);
  const T copies = static_cast<T>(m);
  at::parallel_for(0, batch, grain_samples(m, classes), [&](int64_t first, int64_t last) {
    std::vector<T> p(group * classes);
    for (int64_t b = first; b < last; ++b) {
      const T* g = gp + b * classes;
      for (int64_t j = 0; j < m; j += group) {
        const int64_t count = std::min(group, m - j), row0 = b * m + j;
        softmax_rows(lp + row0 * classes, count, classes, p.data());
        for (int64_t r = 0; r < count; ++r) {
          const T* pr = p.data() + r * classes;
          T* o = op + (row0 + r) * classes;
          T dot = 0;
          for (int64_t k = 0; k < classes; ++k) dot += pr[k] * g[k];
          for (int64_t k = 0; k < classes; ++k) o[k] = pr[k] * (g[k] - dot) / copies;
        }
      }
    }
  });
}

at::Tensor vote(const at::Tensor& logits, int64_t m, c10::string_view mode) {
  check_logits(logits, m, &check_cpu_dtype);
  const VoteMode vote_as = vote_mode(mode);
  const auto dtype = vote_as == VoteMode::kPrediction ? at::kLong : logits.scalar_type();
  at::Tensor out = at::zeros({logits.size(0) / m, logits.size(1)}, logits.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "vote", [&] { reduce_votes<scalar_t>(logits, m, vote_as, out); });
  return out;
}

at::Tensor vote_backward(const at::Tensor& grad, const at::Tensor& logits, int64_t m) {
  check_logits(logits, m, &check_cpu_dtype);
  check_soft_grad(grad, logits, m);
  at::Tensor out = at::empty(logits.sizes(), logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "vote_backward",
                             [&] { soft_grad<scalar_t>(grad, logits, m, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(stochnet, CPU, m) {
  m.impl("noisy_repeat", &noisy_repeat);
  m.impl("vote", &vote);
  m.impl("vote_backward", &vote_backward);
}

}  // namespace stochnet::cpu
