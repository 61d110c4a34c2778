// StocReLU-EMA on the CPU: one pass over x writes y, the packed 1-bit mask and (in
// training) per-channel shifted sums; then the EMA update of running_sigma.
//
// Work is split into blocks of kBlock elements aligned in memory order, so a block's
// normals come from one normal_block() call and its mask bytes belong to one thread.
// Statistics are sums of d = x - K_c and d^2, K_c the first value of channel c (numerically
// sound while K_c lies within a few std of the mean), taken in double as the reference's
// float64 std: a float d^2 overflows for |d| > 1.8e19. Float vectors are widened to two double
// vectors for the sums (float: per vector lane; float64 and planes narrower than a vector: per
// plane run).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "checks.h"
#include "cpu/normal_block.h"
#include "cpu/output_pool.h"

namespace stochnet::cpu {
namespace {

template <typename scalar_t>
struct ForwardArgs {
  const scalar_t* x;
  scalar_t* y;
  uint8_t* mask;
  int64_t numel, channels, inner;
  // Per channel: sqrt(gamma) * sigma_c and K_c, repeated to channels + kLanes entries so
  // that a vector starting at any column reads them contiguously.
  const scalar_t* scale;
  const scalar_t* shift;
  uint64_t seed, offset;
  bool stream;  // y is large and 64-byte aligned: write it with non-temporal stores
};

// Per-thread accumulators: per-column sums of the rows layout (folded to channels at the end)
// and totals per channel.
struct ChannelSums {
  std::vector<double> sum, sum_sq;  // channels + kLanes
  double* total;                    // 2 * channels: sum, sum of squares

  void fold(int64_t channels) {
    for (size_t i = 0; i < sum.size(); ++i) {
      total[2 * (i % channels)] += sum[i];
      total[2 * (i % channels) + 1] += sum_sq[i];
    }
  }
};

// Sums of the lanes of x - shift, in double: sum[0] / sum_sq[0] hold lanes [0, kLanes / 2).
struct LaneSums {
  VecD sum[2] = {VecD(0.0), VecD(0.0)};
  VecD sum_sq[2] = {VecD(0.0), VecD(0.0)};

  static LaneSums load(const double* s, const double* s2) {
    return {{VecD::loadu(s), VecD::loadu(s + VecD::size())}, {VecD::loadu(s2), VecD::loadu(s2 + VecD::size())}};
  }
  void store(double* s, double* s2) const {
    for (int h = 0; h < 2; ++h) {
      sum[h].store(s + h * VecD::size());
      sum_sq[h].store(s2 + h * VecD::size());
    }
  }
  void add(const VecF& x, const VecF& shift) {
    VecD xd[2], kd[2];
    widen(x, xd[0], xd[1]);
    widen(shift, kd[0], kd[1]);
    for (int h = 0; h < 2; ++h) {
      const VecD d = xd[h] - kd[h];
      sum[h] = sum[h] + d;
      sum_sq[h] = at::vec::fmadd(d, d, sum_sq[h]);
    }
  }
  // Adds the lane sums to channel c's totals and clears them.
  void flush_to(double* total, int64_t c) {
    total[2 * c] += lane_total(sum[0] + sum[1]);
    total[2 * c + 1] += lane_total(sum_sq[0] + sum_sq[1]);
    *this = LaneSums{};
  }
  // The sum of v's lanes (at::vec's vec_reduce_all has no vector version for double, and its
  // fallback costs more than a small plane's work).
  static double lane_total(const VecD& v) {
    alignas(64) double lanes[VecD::size()];
    v.store(lanes);
    double total = 0;
    for (int l = 0; l < VecD::size(); ++l) total += lanes[l];
    return total;
  }
};

template <typename scalar_t>
inline void add_shifted(scalar_t x, scalar_t shift, double& sum, double& sum_sq) {
  const double d = static_cast<double>(x) - static_cast<double>(shift);
  sum += d;
  sum_sq += d * d;
}

// One element: y, mask bit and (in training) the shifted sums.
template <typename scalar_t, bool kTraining>
inline void scalar_step(const scalar_t x, scalar_t& y, float z, scalar_t scale, scalar_t shift, uint8_t* bits,
                        int bit, double& sum, double& sum_sq) {
  const scalar_t v = x + scale * static_cast<scalar_t>(z);
  y = v < scalar_t(0) ? scalar_t(0) : v;  // as torch.relu: -0 and NaN pass through
  if (v > scalar_t(0)) bits[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
  if constexpr (kTraining) add_shifted(x, shift, sum, sum_sq);
}

// y and the mask bits of kLanes elements at a lane-aligned position `bit` of the block; returns x.
inline VecF vector_step(const float* x, float* y, const float* z, const VecF& scale, uint8_t* bits, int bit,
                        bool stream) {
  const VecF zero(0.0f);
  const VecF xv = VecF::loadu(x);
  const VecF v = xv + scale * VecF::loadu(z);
  const VecF out = at::vec::clamp_min(v, zero);  // max(0, v): -0 and NaN pass through, as torch.relu
  if (stream) {
    store_stream(y, out);
  } else {
    out.store(y);
  }
  const uint32_t lanes = positive_lanes(v);
  std::memcpy(bits + bit / 8, &lanes, kLanes / 8);
  return xv;
}

// Elements [start, start + n) of one (n, c) plane, at position `bit` of their block, one at a
// time: float64, and float planes narrower than a vector.
template <typename scalar_t, bool kTraining>
void planar_run(const ForwardArgs<scalar_t>& a, int64_t start, int64_t n, int64_t channel, const float* z,
                int bit, uint8_t* bits, ChannelSums& sums) {
  const scalar_t* x = a.x + start;
  scalar_t* y = a.y + start;
  const scalar_t scale = a.scale[channel], shift = a.shift[channel];
  double sum = 0, sum_sq = 0;
  for (int64_t i = 0; i < n; ++i)
    scalar_step<scalar_t, kTraining>(x[i], y[i], z[i], scale, shift, bits, bit + i, sum, sum_sq);
  if constexpr (kTraining) {
    sums.total[2 * channel] += sum;
    sums.total[2 * channel + 1] += sum_sq;
  }
}

// Float planes of at least kLanes elements, a vector at a time: the shifted sums of the current
// channel stay in vector accumulators across vectors and blocks, and reach the channel's
// totals when the channel changes.
struct PlaneCursor {
  int64_t plane_end;      // where the plane of the next element ends
  int64_t plane_channel;  // that plane's channel
  int64_t channel = -1;   // the channel the accumulators hold
  LaneSums sums;

  // The cursor at memory position p (the one division; the loop steps without any).
  static PlaneCursor at(int64_t p, int64_t inner, int64_t channels) {
    const int64_t plane = p / inner;
    return {(plane + 1) * inner, plane % channels};
  }
  int64_t next_channel(int64_t channels) const { return plane_channel + 1 == channels ? 0 : plane_channel + 1; }
  void next_plane(int64_t inner, int64_t channels) {
    plane_end += inner;
    plane_channel = next_channel(channels);
  }

  void flush(double* total) {
    if (channel >= 0) sums.flush_to(total, channel);
  }
  // Points the accumulators at channel c.
  void select(int64_t c, double* total) {
    if (c == channel) return;
    flush(total);
    channel = c;
  }
};

// Block [begin, end) of a planar float tensor with a.inner >= kLanes. A vector that straddles
// two planes takes each lane's channel scale, and splits its sums between the two channels.
template <bool kTraining>
void planar_vector_block(const ForwardArgs<float>& a, int64_t begin, int64_t end, const float* z, uint8_t* bits,
                         PlaneCursor& cur, ChannelSums& sums) {
  const VecF lane = VecF::arange(0.0f, 1.0f);
  int64_t e = begin;
  for (; e + kLanes <= end; e += kLanes) {
    const int bit = static_cast<int>(e - begin);
    const int64_t c = cur.plane_channel;
    if (e + kLanes <= cur.plane_end) {
      const VecF xv = vector_step(a.x + e, a.y + e, z + bit, VecF(a.scale[c]), bits, bit, a.stream);
      if constexpr (kTraining) {
        cur.select(c, sums.total);
        cur.sums.add(xv, VecF(a.shift[c]));
      }
      if (e + kLanes == cur.plane_end) cur.next_plane(a.inner, a.channels);
      continue;
    }
    const int64_t next = cur.next_channel(a.channels);
    const VecF in_next = lane >= VecF(static_cast<float>(cur.plane_end - e));
    const VecF scale = VecF::blendv(VecF(a.scale[c]), VecF(a.scale[next]), in_next);
    const VecF xv = vector_step(a.x + e, a.y + e, z + bit, scale, bits, bit, a.stream);
    if constexpr (kTraining) {
      // A lane of the other channel is replaced by the shift, so it adds d = 0.
      const VecF shift(a.shift[c]), shift_next(a.shift[next]);
      cur.select(c, sums.total);
      cur.sums.add(VecF::blendv(xv, shift, in_next), shift);
      cur.select(next, sums.total);
      cur.sums.add(VecF::blendv(shift_next, xv, in_next), shift_next);
    }
    cur.next_plane(a.inner, a.channels);
  }
  // The tensor's last elements: fewer than kLanes <= inner, so inside its last plane.
  if (e < end)
    planar_run<float, kTraining>(a, e, end - e, cur.plane_channel, z + (e - begin), static_cast<int>(e - begin),
                                 bits, sums);
}

// Elements [start, start + n) of the rows layout (channel = position mod channels).
template <typename scalar_t, bool kTraining>
void rows_run(const ForwardArgs<scalar_t>& a, int64_t start, int64_t n, const float* z, int bit, uint8_t* bits,
              ChannelSums& sums) {
  const scalar_t* x = a.x + start;
  scalar_t* y = a.y + start;
  const int64_t channels = a.channels;
  int64_t col = start % channels;
  double* sum = sums.sum.data();
  double* sum_sq = sums.sum_sq.data();
  int64_t i = 0;
  auto scalar = [&](int64_t k) {
    scalar_step<scalar_t, kTraining>(x[k], y[k], z[k], a.scale[col], a.shift[col], bits, bit + k, sum[col],
                                     sum_sq[col]);
    col = col + 1 == channels ? 0 : col + 1;
  };
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i < n && (bit + i) % kLanes != 0; ++i) scalar(i);
    for (; i + kLanes <= n; i += kLanes) {
      const VecF xv = vector_step(x + i, y + i, z + i, VecF::loadu(a.scale + col), bits, bit + i, a.stream);
      if constexpr (kTraining) {
        LaneSums lanes = LaneSums::load(sum + col, sum_sq + col);
        lanes.add(xv, VecF::loadu(a.shift + col));
        lanes.store(sum + col, sum_sq + col);
      }
      col += kLanes;
      if (col >= channels) col %= channels;
    }
  }
  for (; i < n; ++i) scalar(i);
}

// Blocks [first, last) of the tensor, on one thread.
template <typename scalar_t, bool kTraining>
void forward_blocks(const ForwardArgs<scalar_t>& a, Layout layout, int64_t first, int64_t last, ChannelSums& sums) {
  alignas(64) float z[kBlock];
  uint8_t bits[kBlock / 8];
  const bool vector_planes = std::is_same_v<scalar_t, float> && layout == Layout::kPlanar && a.inner >= kLanes;
  PlaneCursor cur = vector_planes ? PlaneCursor::at(first * kBlock, a.inner, a.channels) : PlaneCursor{0, 0};
  for (int64_t block = first; block < last; ++block) {
    const int64_t begin = block * kBlock, end = std::min(begin + kBlock, a.numel);
    prefetch_ahead(a.x, a.stream ? nullptr : a.y, begin, a.numel);
    normal_block(a.seed, a.offset + static_cast<uint64_t>(begin / 4), z);
    std::memset(bits, 0, sizeof(bits));
    if (layout == Layout::kRows) {
      rows_run<scalar_t, kTraining>(a, begin, end - begin, z, 0, bits, sums);
    } else if (vector_planes) {
      if constexpr (std::is_same_v<scalar_t, float>) planar_vector_block<kTraining>(a, begin, end, z, bits, cur, sums);
    } else {
      for (int64_t e = begin; e < end;) {
        const int64_t plane = e / a.inner;
        const int64_t run_end = std::min((plane + 1) * a.inner, end);
        planar_run<scalar_t, kTraining>(a, e, run_end - e, plane % a.channels, z + (e - begin),
                                        static_cast<int>(e - begin), bits, sums);
        e = run_end;
      }
    }
    std::memcpy(a.mask + begin / 8, bits, static_cast<size_t>((end - begin + 7) / 8));
  }
  if (kTraining && layout == Layout::kRows) sums.fold(a.channels);
  if (kTraining && vector_planes) cur.flush(sums.total);
  if (a.stream) stream_fence();
}

template <typename scalar_t>
bool streamable(const scalar_t* out, int64_t numel) {
  return std::is_same_v<scalar_t, float> && numel * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamBytes &&
         reinterpret_cast<uintptr_t>(out) % 64 == 0;
}

// Repeats per-channel values to channels + kLanes entries (see ForwardArgs).
template <typename scalar_t>
std::vector<scalar_t> tiled(const std::vector<scalar_t>& values) {
  std::vector<scalar_t> out(values.size() + kLanes);
  for (size_t i = 0; i < out.size(); ++i) out[i] = values[i % values.size()];
  return out;
}

template <typename scalar_t>
void forward(const at::Tensor& x, at::Tensor& running_sigma, double gamma, double momentum, bool training,
             uint64_t seed, uint64_t offset, at::Tensor& y, at::Tensor& mask) {
  const Layout layout = layout_of(x);
  const int64_t channels = x.size(1), numel = x.numel();
  const int64_t inner = layout == Layout::kRows ? 1 : numel / (x.size(0) * channels);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();

  const at::Tensor sigma = running_sigma.to(at::kDouble).contiguous();
  const double* sigma_p = sigma.const_data_ptr<double>();
  // The reference rounds sqrt(gamma) and sigma to the compute precision before multiplying.
  const scalar_t root_gamma = static_cast<scalar_t>(std::sqrt(gamma));
  std::vector<scalar_t> scale(channels), shift(channels);
  for (int64_t c = 0; c < channels; ++c) {
    scale[c] = root_gamma * static_cast<scalar_t>(sigma_p[c]);
    shift[c] = xp[layout == Layout::kRows ? c : c * inner];
  }
  const std::vector<scalar_t> scale_tiled = tiled(scale), shift_tiled = tiled(shift);
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const ForwardArgs<scalar_t> args{xp,       yp,       mask.mutable_data_ptr<uint8_t>(),
                                   numel,    channels, inner,
                                   scale_tiled.data(), shift_tiled.data(), seed,
                                   offset,   streamable(yp, numel)};

  const int threads = at::get_num_threads();
  std::vector<double> totals(training ? static_cast<size_t>(threads) * 2 * channels : 0, 0.0);
  const int64_t blocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 64, [&](int64_t first, int64_t last) {
    ChannelSums sums;
    if (training) {
      sums.sum.assign(channels + kLanes, 0.0);
      sums.sum_sq.assign(channels + kLanes, 0.0);
      sums.total = totals.data() + static_cast<size_t>(at::get_thread_num()) * 2 * channels;
      forward_blocks<scalar_t, true>(args, layout, first, last, sums);
    } else {
      forward_blocks<scalar_t, false>(args, layout, first, last, sums);
    }
  });
  if (!training) return;

  const double count = static_cast<double>(numel / channels);
  at::Tensor updated = at::empty({channels}, sigma.options());
  double* out = updated.mutable_data_ptr<double>();
  for (int64_t c = 0; c < channels; ++c) {
    double sum = 0, sum_sq = 0;
    for (int t = 0; t < threads; ++t) {
      sum += totals[static_cast<size_t>(t) * 2 * channels + 2 * c];
      sum_sq += totals[static_cast<size_t>(t) * 2 * channels + 2 * c + 1];
    }
    const double var = (sum_sq - sum * sum / count) / (count - 1);
    const double std = std::sqrt(var > 0 ? var : (var == var ? 0.0 : var));  // keep NaN
    out[c] = (1 - momentum) * sigma_p[c] + momentum * std;
  }
  running_sigma.copy_(updated);
}

// Functional in running_sigma (the schema allows autograd): returns (y, mask, the updated sigma).
std::tuple<at::Tensor, at::Tensor, at::Tensor> stoc_relu_ema(const at::Tensor& x, const at::Tensor& running_sigma,
                                                             double gamma, double momentum, bool training,
                                                             const at::Tensor& philox) {
  check_stoc_relu_ema_args(x, running_sigma, gamma, momentum, training);
  const auto [seed, offset] = philox_pair(philox);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "x must be float32 or float64 on CPU, got ", x.scalar_type());
  at::Tensor y = pooled_empty_like(x);
  at::Tensor mask = pooled_empty({(x.numel() + 7) / 8}, at::kByte);
  at::Tensor sigma = running_sigma.clone();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stoc_relu_ema",
                             [&] { forward<scalar_t>(x, sigma, gamma, momentum, training, seed, offset, y, mask); });
  return {y, mask, sigma};
}

template <typename scalar_t>
void mask_backward(const scalar_t* grad, const uint8_t* mask, scalar_t* out, int64_t numel) {
  const bool stream = streamable(out, numel);
  at::parallel_for(0, (numel + kBlock - 1) / kBlock, 256, [&](int64_t first, int64_t last) {
    int64_t i = first * kBlock;
    const int64_t end = std::min(last * kBlock, numel);
    if constexpr (std::is_same_v<scalar_t, float>) {
      for (; i + kLanes <= end; i += kLanes) {
        uint32_t bits = 0;
        std::memcpy(&bits, mask + i / 8, kLanes / 8);
        const VecF selected = select_lanes(bits, VecF::loadu(grad + i));
        if (stream) {
          store_stream(out + i, selected);
        } else {
          selected.store(out + i);
        }
      }
      if (stream) stream_fence();
    }
    for (; i < end; ++i) out[i] = ((mask[i / 8] >> (i % 8)) & 1) ? grad[i] : scalar_t(0);
  });
}

at::Tensor stoc_relu_ema_backward(const at::Tensor& grad, const at::Tensor& mask) {
  check_mask_backward_args(grad, mask);
  TORCH_CHECK(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kDouble,
              "grad must be float32 or float64 on CPU, got ", grad.scalar_type());
  at::Tensor out = pooled_empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "stoc_relu_ema_backward", [&] {
    mask_backward<scalar_t>(grad.const_data_ptr<scalar_t>(), mask.const_data_ptr<uint8_t>(),
                            out.mutable_data_ptr<scalar_t>(), grad.numel());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(stochnet, CPU, m) {
  m.impl("stoc_relu_ema", &stoc_relu_ema);
  m.impl("stoc_relu_ema_backward", &stoc_relu_ema_backward);
}

}  // namespace stochnet::cpu
