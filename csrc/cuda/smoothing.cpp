// CUDA implementations of noisy_repeat / vote / vote_backward (schemas in csrc/ops.cpp):
// argument checks, allocation, device guard and stream here; the kernels live in
// smoothing_kernels.cu behind smoothing_kernels.h.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"
#include "cuda/dtype.h"
#include "cuda/philox_arg.h"
#include "cuda/smoothing_kernels.h"

namespace stochnet {
namespace {

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// A CUDA tensor of a supported dtype.
void check_cuda_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  gpu_dtype(t, name);
}

void check_noisy_repeat_input(const at::Tensor& x, int64_t m, double sigma) {
  TORCH_CHECK(x.dim() >= 1, "x must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK(x.numel() > 0, "x must not be empty, got shape ", x.sizes());
  check_cuda_dtype(x, "x");
  TORCH_CHECK(x.is_contiguous(), "x must be contiguous");
  check_noisy_repeat_copies(x, m, sigma);
}

// The vote checks shared with the CPU (checks.h), plus the CUDA kernels' class-count limit.
void check_cuda_logits(const at::Tensor& logits, int64_t m) {
  check_logits(logits, m, &check_cuda_dtype);
  TORCH_CHECK(logits.size(1) <= std::numeric_limits<int32_t>::max(), "logits must have at most 2^31 - 1 classes, "
              "got ", logits.size(1));
}

gpu::VoteArgs vote_args(const at::Tensor& logits, int64_t m) {
  gpu::VoteArgs a{};
  a.dtype = gpu_dtype(logits, "logits");
  a.logits = logits.const_data_ptr();
  a.batch = logits.size(0) / m;
  a.copies = m;
  a.classes = logits.size(1);
  a.sm_count = sm_count();
  return a;
}

at::Tensor noisy_repeat_cuda(const at::Tensor& x, int64_t m, double sigma, const at::Tensor& philox) {
  check_noisy_repeat_input(x, m, sigma);
  const gpu::PhiloxArg philox_arg = gpu_philox(philox, x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes[0] *= m;
  at::Tensor y = at::empty(sizes, x.options());
  gpu::NoisyRepeatArgs a{};
  a.dtype = gpu_dtype(x, "x");
  a.x = x.const_data_ptr();
  a.y = y.mutable_data_ptr();
  a.batch = x.size(0);
  a.per_sample = x.numel() / x.size(0);
  a.copies = m;
  a.sigma = sigma;
  a.philox = philox_arg;
  a.sm_count = sm_count();
  C10_CUDA_CHECK(gpu::noisy_repeat_forward(a, at::cuda::getCurrentCUDAStream()));
  return y;
}

at::Tensor vote_cuda(const at::Tensor& logits, int64_t m, c10::string_view mode) {
  check_cuda_logits(logits, m);
  const VoteMode kind = vote_mode(mode);
  const c10::cuda::CUDAGuard guard(logits.device());
  const gpu::VoteArgs a = vote_args(logits, m);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (kind == VoteMode::kPrediction) {
    at::Tensor counts = at::zeros({a.batch, a.classes}, logits.options().dtype(at::kLong));
    C10_CUDA_CHECK(gpu::vote_prediction(a, counts.mutable_data_ptr<int64_t>(), stream));
    return counts;
  }
  if (kind == VoteMode::kWeighted) {
    TORCH_CHECK(m <= (int64_t{1} << 32), "m must be at most 2^32 for mode 'weighted', got ", m);
    const at::ScalarType score_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor scores = at::empty({a.batch, a.classes}, logits.options().dtype(score_type));
    at::Tensor fixed_point = at::zeros({a.batch, a.classes}, logits.options().dtype(at::kLong));
    C10_CUDA_CHECK(gpu::vote_weighted(a, scores.mutable_data_ptr(),
                                      reinterpret_cast<uint64_t*>(fixed_point.mutable_data_ptr<int64_t>()), stream));
    return scores;
  }
  TORCH_CHECK(a.batch <= std::numeric_limits<int32_t>::max(), "mode 'soft' takes at most 2^31 - 1 samples, got ",
              a.batch);
  at::Tensor mean = at::empty({a.batch, a.classes}, logits.options());
  const int64_t bytes = gpu::vote_soft_workspace_bytes(a.dtype, logits.size(0));
  at::Tensor workspace = at::empty({(bytes + 7) / 8}, logits.options().dtype(at::kDouble));
  C10_CUDA_CHECK(gpu::vote_soft(a, mean.mutable_data_ptr(), workspace.mutable_data_ptr(), stream));
  return mean;
}

at::Tensor vote_backward_cuda(const at::Tensor& grad, const at::Tensor& logits, int64_t m) {
  check_cuda_logits(logits, m);
  check_soft_grad(grad, logits, m);
  const c10::cuda::CUDAGuard guard(logits.device());
  const gpu::VoteArgs a = vote_args(logits, m);
  at::Tensor grad_logits = at::empty(logits.sizes(), logits.options());
  C10_CUDA_CHECK(gpu::vote_soft_backward(a, grad.const_data_ptr(), grad_logits.mutable_data_ptr(),
                                         at::cuda::getCurrentCUDAStream()));
  return grad_logits;
}

}  // namespace
}  // namespace stochnet

TORCH_LIBRARY_IMPL(stochnet, CUDA, m) {
  m.impl("noisy_repeat", &stochnet::noisy_repeat_cuda);
  m.impl("vote", &stochnet::vote_cuda);
  m.impl("vote_backward", &stochnet::vote_backward_cuda);
}
