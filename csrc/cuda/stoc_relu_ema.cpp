// CUDA implementations of stoc_relu_ema and its backward (schemas in csrc/ops.cpp): argument
// checks, allocation, device guard and stream here; the kernels live in stoc_relu_ema_kernels.cu.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "checks.h"
#include "cuda/dtype.h"
#include "cuda/philox_arg.h"
#include "cuda/stoc_relu_ema_kernels.h"

namespace stochnet {
namespace {

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// Functional in running_sigma, as on the CPU: returns (y, mask, the updated sigma).
std::tuple<at::Tensor, at::Tensor, at::Tensor> stoc_relu_ema_cuda(const at::Tensor& x, const at::Tensor& running_sigma,
                                                                  double gamma, double momentum, bool training,
                                                                  const at::Tensor& philox) {
  check_stoc_relu_ema_args(x, running_sigma, gamma, momentum, training);
  const gpu::PhiloxArg philox_arg = gpu_philox(philox, x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t numel = x.numel();
  const int64_t channels = x.size(1);
  // Memory order is (outer, C, inner): inner = prod(shape[2:]) when planar, 1 for rows.
  const int64_t inner = layout_of(x) == Layout::kPlanar ? numel / (x.size(0) * channels) : 1;
  gpu::StocReluEmaArgs args{};
  args.dtype = gpu_dtype(x, "x");
  args.sigma_dtype = gpu_dtype(running_sigma, "running_sigma");
  at::Tensor y = at::empty_like(x);
  at::Tensor mask = at::empty({(numel + 7) / 8}, x.options().dtype(at::kByte));
  at::Tensor workspace;
  const int sms = sm_count();
  if (training) {
    workspace = at::empty({gpu::stoc_relu_ema_workspace_bytes(numel, channels, inner, sms)},
                          x.options().dtype(at::kByte));
  }
  args.x = x.const_data_ptr();
  args.y = y.mutable_data_ptr();
  args.mask = mask.mutable_data_ptr<uint8_t>();
  at::Tensor sigma = running_sigma.clone();
  args.sigma = sigma.mutable_data_ptr();
  args.numel = numel;
  args.channels = channels;
  args.inner = inner;
  args.gamma = gamma;
  args.momentum = momentum;
  args.training = training;
  args.philox = philox_arg;
  args.workspace = training ? workspace.mutable_data_ptr() : nullptr;
  args.sm_count = sms;
  C10_CUDA_CHECK(gpu::stoc_relu_ema_forward(args, at::cuda::getCurrentCUDAStream()));
  return {y, mask, sigma};
}

at::Tensor stoc_relu_ema_backward_cuda(const at::Tensor& grad, const at::Tensor& mask) {
  check_mask_backward_args(grad, mask);
  const gpu::DType dtype = gpu_dtype(grad, "grad");
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor grad_x = at::empty_like(grad);
  C10_CUDA_CHECK(gpu::stoc_relu_ema_backward(dtype, grad.const_data_ptr(), mask.const_data_ptr<uint8_t>(), grad_x.mutable_data_ptr(),
                                         grad.numel(), sm_count(), at::cuda::getCurrentCUDAStream()));
  return grad_x;
}

}  // namespace
}  // namespace stochnet

TORCH_LIBRARY_IMPL(stochnet, CUDA, m) {
  m.impl("stoc_relu_ema", &stochnet::stoc_relu_ema_cuda);
  m.impl("stoc_relu_ema_backward", &stochnet::stoc_relu_ema_backward_cuda);
}
