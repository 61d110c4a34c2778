// CUDA implementations of perturb / perturb_backward (schemas in csrc/ops.cpp): argument checks,
// allocation, device guard and stream here; the kernels live in perturb_kernels.cu behind
// perturb_kernels.h.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/dtype.h"
#include "cuda/perturb_kernels.h"
#include "cuda/philox_arg.h"

namespace stochnet {
namespace {

// The (channels, inner) view of x in memory order under which element p uses
// theta[(p / inner) % channels] (see perturb_kernels.h), plus the rest of the launch args.
gpu::PerturbArgs perturb_args(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& philox,
                              const char* name) {
  check_perturb_args(x, theta, name);
  gpu::PerturbArgs a{};
  a.philox = gpu_philox(philox, x.device());
  a.dtype = gpu_dtype(x, name);
  a.theta_dtype = gpu_dtype(theta, "theta");
  a.numel = x.numel();
  const int64_t channels = x.size(1), features = a.numel / x.size(0);
  if (theta.numel() == 1) {
    a.channels = 1;
    a.inner = a.numel;
  } else if (theta.numel() == channels) {
    a.channels = channels;
    a.inner = features / channels;
  } else {
    a.channels = features;
    a.inner = 1;
  }
  a.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return a;
}

at::Tensor perturb_cuda(const at::Tensor& x, const at::Tensor& theta, const at::Tensor& philox) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const gpu::PerturbArgs a = perturb_args(x, theta, philox, "x");
  at::Tensor y = at::empty(x.sizes(), x.options());
  C10_CUDA_CHECK(gpu::perturb_forward(a, x.const_data_ptr(), theta.const_data_ptr(), y.mutable_data_ptr(),
                                      at::cuda::getCurrentCUDAStream()));
  return y;
}

at::Tensor perturb_backward_cuda(const at::Tensor& grad, const at::Tensor& theta, const at::Tensor& philox) {
  TORCH_CHECK(grad.is_cuda(), "grad must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(grad.device());
  const gpu::PerturbArgs a = perturb_args(grad, theta, philox, "grad");
  at::Tensor dtheta = at::empty(theta.sizes(), theta.options());
  const int64_t bytes = gpu::perturb_backward_workspace_bytes(a.numel, a.channels, a.inner, a.sm_count);
  at::Tensor workspace = at::empty({(bytes + 7) / 8}, grad.options().dtype(at::kDouble));
  C10_CUDA_CHECK(gpu::perturb_backward(a, grad.const_data_ptr(), dtheta.mutable_data_ptr(),
                                       workspace.mutable_data_ptr(), at::cuda::getCurrentCUDAStream()));
  return dtheta;
}

}  // namespace
}  // namespace stochnet

TORCH_LIBRARY_IMPL(stochnet, CUDA, m) {
  m.impl("perturb", &stochnet::perturb_cuda);
  m.impl("perturb_backward", &stochnet::perturb_backward_cuda);
}
