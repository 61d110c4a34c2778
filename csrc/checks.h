// Argument checks shared by the CPU and CUDA implementations: every op validates its
// inputs here, before any kernel runs, so bad input is a clear error and never a crash.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

namespace stochnet {

// The layouts the kernels read in place.
enum class Layout {
  kPlanar,  // (N, C, inner...) contiguous: each (n, c) plane is one contiguous run
  kRows,    // (rows, C) with C fastest: channels-last 4-D, or 2-D (N, C)
};

inline Layout layout_of(const at::Tensor& x) {
  if (x.dim() == 2) return Layout::kRows;
  if (x.is_contiguous()) return Layout::kPlanar;
  return Layout::kRows;  // checked to be channels-last by check_dense
}

// The (seed, offset) of a noise op.
struct PhiloxPair {
  uint64_t seed;
  uint64_t offset;
};

// `philox` as stochnet.ops.philox.draw_seed makes it: an int64 tensor of shape (2,) holding
// (seed, offset) (stochnet/ops/checks.py checks the same in Python). The CPU ops take it on the
// CPU; the CUDA ops also on their data's device `device`, where the kernels load the values
// themselves (cuda/philox_arg.h), so the host never waits for them.
inline void check_philox(const at::Tensor& philox, const at::Device& device) {
  TORCH_CHECK_VALUE((philox.device().is_cpu() || philox.device() == device) && philox.scalar_type() == at::kLong &&
                        philox.dim() == 1 && philox.size(0) == 2,
                    "philox must be an int64 CPU tensor of shape (2,) holding (seed, offset)",
                    device.is_cpu() ? std::string() : ", or one on " + device.str(), ", got ", philox.scalar_type(),
                    " of shape ", philox.sizes(), " on ", philox.device());
}

// The (seed, offset) of a CPU philox, both >= 0, read on the host.
inline PhiloxPair philox_pair(const at::Tensor& philox) {
  check_philox(philox, at::kCPU);
  const int64_t* values = philox.const_data_ptr<int64_t>();
  const int64_t seed = values[0], offset = values[philox.stride(0)];
  TORCH_CHECK_VALUE(seed >= 0 && offset >= 0, "philox must hold a seed and an offset >= 0, got (", seed, ", ",
                    offset, ")");
  return {static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)};
}

inline void check_dense(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_contiguous() || (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)),
              name, " must be contiguous or channels-last (4-D)");
}

inline void check_stoc_relu_ema_args(const at::Tensor& x, const at::Tensor& running_sigma, double gamma,
                                     double momentum, bool training) {
  TORCH_CHECK(x.dim() >= 2, "x must have shape (N, C) or (N, C, *), got ", x.sizes());
  TORCH_CHECK(x.numel() > 0, "x must not be empty, got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be a floating tensor, got ", x.scalar_type());
  check_dense(x, "x");
  TORCH_CHECK(running_sigma.device() == x.device(), "running_sigma is on ", running_sigma.device(),
              " but x is on ", x.device());
  TORCH_CHECK(running_sigma.dim() == 1 && running_sigma.size(0) == x.size(1),
              "running_sigma must have shape (", x.size(1), ",), got ", running_sigma.sizes());
  TORCH_CHECK(running_sigma.scalar_type() == at::kFloat || running_sigma.scalar_type() == x.scalar_type(),
              "running_sigma must be float32 or x's dtype, got ", running_sigma.scalar_type());
  TORCH_CHECK(running_sigma.is_contiguous(), "running_sigma must be contiguous");
  TORCH_CHECK(gamma >= 0, "gamma must be >= 0, got ", gamma);
  TORCH_CHECK(momentum >= 0 && momentum <= 1, "momentum must be in [0, 1], got ", momentum);
  TORCH_CHECK(!training || x.numel() / x.size(1) > 1,
              "x must have more than one value per channel in training, got shape ", x.sizes());
}

inline void check_mask_backward_args(const at::Tensor& grad, const at::Tensor& mask) {
  TORCH_CHECK(grad.numel() > 0, "grad must not be empty");
  check_dense(grad, "grad");
  TORCH_CHECK(mask.scalar_type() == at::kByte, "mask must be uint8, got ", mask.scalar_type());
  TORCH_CHECK(mask.device() == grad.device(), "mask is on ", mask.device(), " but grad is on ", grad.device());
  TORCH_CHECK(mask.is_contiguous() && mask.numel() == (grad.numel() + 7) / 8,
              "mask must be a contiguous uint8 tensor of ", (grad.numel() + 7) / 8, " bytes, got ",
              mask.numel());
}

// perturb (`name` = "x") and perturb_backward (`name` = "grad"): a dense (N, C, *) tensor and a
// theta of 1, C or numel / N elements.
inline void check_perturb_args(const at::Tensor& x, const at::Tensor& theta, const char* name) {
  TORCH_CHECK(x.dim() >= 2, name, " must have shape (N, C, *), got ", x.sizes());
  TORCH_CHECK(x.numel() > 0, name, " must not be empty, got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, " must be a floating tensor, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(theta.device() == x.device(), "theta is on ", theta.device(), " but ", name, " is on ", x.device());
  TORCH_CHECK(theta.scalar_type() == at::kFloat || theta.scalar_type() == x.scalar_type(),
              "theta must be float32 or ", name, "'s dtype ", x.scalar_type(), ", got ", theta.scalar_type());
  TORCH_CHECK(theta.is_contiguous(), "theta must be contiguous");
  const int64_t channels = x.size(1), features = x.numel() / x.size(0);
  TORCH_CHECK(theta.numel() == 1 || theta.numel() == channels || theta.numel() == features,
              "theta must have 1, ", channels, " (per channel) or ", features, " (per feature-map element) "
              "elements for ", name, " of shape ", x.sizes(), ", got ", theta.numel());
}

// PGD ops: `t` (grad, x_orig, momentum) is contiguous and matches x_adv in shape, dtype and device.
inline void check_pgd_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), " but x_adv is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " must have x_adv's dtype ", x.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have x_adv's shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_pgd_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() >= 1, name, " must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK(x.numel() > 0, name, " must not be empty, got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, " must be a floating tensor, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
}

// eps / alpha: contiguous (B,) float32 or float64 tensors on the device of x (x_adv or x_orig).
inline void check_per_sample(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), " but the input is on ", x.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(0) && t.is_contiguous(), name,
              " must be a contiguous tensor of shape (", x.size(0), ",), got ", t.sizes());
}

inline void check_clip(double lo, double hi) { TORCH_CHECK(lo < hi, "clip must have lo < hi, got (", lo, ", ", hi, ")"); }

inline bool is_l2_norm(c10::string_view norm) {
  TORCH_CHECK(norm == "linf" || norm == "l2", "norm must be 'linf' or 'l2', got '", std::string(norm), "'");
  return norm == "l2";
}

// MIM writes momentum while it reads `t` (x_adv, grad, x_orig): they must not share memory.
inline void check_unaliased(const at::Tensor& momentum, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(!momentum.is_alias_of(t), "momentum shares memory with ", name,
                    ": it is updated in place, pass a separate tensor");
}

inline void check_pgd_step_args(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                                const at::Tensor& eps, const at::Tensor& alpha, double lo, double hi) {
  check_pgd_input(x_adv, "x_adv");
  check_pgd_like(grad, x_adv, "grad");
  check_pgd_like(x_orig, x_adv, "x_orig");
  check_per_sample(eps, x_adv, "eps");
  check_per_sample(alpha, x_adv, "alpha");
  check_clip(lo, hi);
}

// mim_step: the pgd_step checks, and a momentum like x_adv that shares memory with none of the inputs.
inline void check_mim_step_args(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                                const at::Tensor& momentum, const at::Tensor& eps, const at::Tensor& alpha,
                                double lo, double hi) {
  check_pgd_step_args(x_adv, grad, x_orig, eps, alpha, lo, hi);
  check_pgd_like(momentum, x_adv, "momentum");
  check_unaliased(momentum, x_adv, "x_adv");
  check_unaliased(momentum, grad, "grad");
  check_unaliased(momentum, x_orig, "x_orig");
}

// random_start: x_orig, its (B,) eps and the clip (the philox is checked where it is read).
inline void check_random_start_args(const at::Tensor& x_orig, const at::Tensor& eps, double lo, double hi) {
  check_pgd_input(x_orig, "x_orig");
  check_per_sample(eps, x_orig, "eps");
  check_clip(lo, hi);
}

// Smoothing ops (noisy_repeat, vote, vote_backward). The dtype (and device) rules differ
// per backend: each passes its own check, or runs it before these.

// noisy_repeat, after the backend's checks of x (non-empty, batched, dtype, contiguous).
inline void check_noisy_repeat_copies(const at::Tensor& x, int64_t m, double sigma) {
  TORCH_CHECK(m >= 1, "m must be >= 1, got ", m);
  TORCH_CHECK(m <= std::numeric_limits<int64_t>::max() / x.numel(), "m = ", m, " copies of x of shape ", x.sizes(),
              " overflow the output size");
  TORCH_CHECK(std::isfinite(sigma) && sigma >= 0, "sigma must be a finite number >= 0, got ", sigma);
}

// logits (B*m, K) of the vote ops; `check_dtype(logits, "logits")` is the backend's device / dtype check.
inline void check_logits(const at::Tensor& logits, int64_t m, void (*check_dtype)(const at::Tensor&, const char*)) {
  TORCH_CHECK(logits.dim() == 2, "logits must have shape (B*m, K), got ", logits.sizes());
  TORCH_CHECK(logits.numel() > 0, "logits must not be empty, got shape ", logits.sizes());
  check_dtype(logits, "logits");
  TORCH_CHECK(logits.is_contiguous(), "logits must be contiguous");
  TORCH_CHECK(m >= 1, "m must be >= 1, got ", m);
  TORCH_CHECK(logits.size(0) % m == 0, "logits has ", logits.size(0), " rows, not divisible by m=", m,
              ": rows must be B*m");
}

// grad (B, K) of vote_backward, for logits already checked by check_logits.
inline void check_soft_grad(const at::Tensor& grad, const at::Tensor& logits, int64_t m) {
  TORCH_CHECK(grad.device() == logits.device(), "grad is on ", grad.device(), " but logits is on ", logits.device());
  TORCH_CHECK(grad.scalar_type() == logits.scalar_type(), "grad must have logits' dtype ", logits.scalar_type(),
              ", got ", grad.scalar_type());
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == logits.size(0) / m && grad.size(1) == logits.size(1),
              "grad must have shape (", logits.size(0) / m, ", ", logits.size(1), "), got ", grad.sizes());
  TORCH_CHECK(grad.is_contiguous(), "grad must be contiguous");
}

enum class VoteMode { kPrediction, kSoft, kWeighted };

inline VoteMode vote_mode(c10::string_view mode) {
  if (mode == "prediction") return VoteMode::kPrediction;
  if (mode == "soft") return VoteMode::kSoft;
  TORCH_CHECK(mode == "weighted", "mode must be 'prediction', 'soft' or 'weighted', got '", std::string(mode), "'");
  return VoteMode::kWeighted;
}

}  // namespace stochnet
