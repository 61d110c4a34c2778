// CUDA implementations of pgd_step / mim_step / random_start (schemas in
// csrc/ops.cpp): argument checks, allocation, device guard and stream here; the kernels live in
// pgd_kernels.cu behind pgd_kernels.h.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <cmath>

#include "checks.h"
#include "cuda/dtype.h"
#include "cuda/pgd_kernels.h"
#include "cuda/philox_arg.h"

namespace stochnet {
namespace {

// The CUDA-only part of the checks; the rest (shapes, contiguity, devices, eps / alpha, lo < hi,
// norm) is shared with the CPU implementation in checks.h.
void check_cuda_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_cuda(), name, " must be a CUDA tensor, got device ", x.device());
  gpu_dtype(x, name);
}

gpu::DType param_dtype(const at::Tensor& p) {
  return p.scalar_type() == at::kDouble ? gpu::DType::kFloat64 : gpu::DType::kFloat32;
}

gpu::PgdArgs base_args(const at::Tensor& x, const at::Tensor& eps, double lo, double hi) {
  gpu::PgdArgs a{};
  a.dtype = gpu_dtype(x, "x");
  a.batch = x.size(0);
  a.numel = x.numel();
  a.eps_dtype = param_dtype(eps);
  a.eps = eps.const_data_ptr();
  a.alpha_dtype = a.eps_dtype;
  a.alpha = a.eps;
  a.lo = lo;
  a.hi = hi;
  a.momentum_dtype = a.dtype;
  a.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return a;
}

at::Tensor workspace_for(const gpu::PgdArgs& a, const at::Tensor& x) {
  const int64_t bytes = gpu::pgd_workspace_bytes(a.batch, a.numel, a.sm_count);
  return at::empty({(bytes + 7) / 8}, x.options().dtype(at::kDouble));
}

// Inputs of the steps; alpha and the x pointers filled in.
gpu::PgdArgs step_args(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                       const at::Tensor& eps, const at::Tensor& alpha, double lo, double hi) {
  gpu::PgdArgs a = base_args(x_adv, eps, lo, hi);
  a.alpha_dtype = param_dtype(alpha);
  a.alpha = alpha.const_data_ptr();
  a.x_adv = x_adv.const_data_ptr();
  a.grad = grad.const_data_ptr();
  a.x_orig = x_orig.const_data_ptr();
  return a;
}

at::Tensor pgd_step_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                         const at::Tensor& eps, const at::Tensor& alpha, c10::string_view norm, double lo,
                         double hi) {
  check_pgd_step_args(x_adv, grad, x_orig, eps, alpha, lo, hi);
  check_cuda_input(x_adv, "x_adv");
  const bool l2 = is_l2_norm(norm);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  gpu::PgdArgs a = step_args(x_adv, grad, x_orig, eps, alpha, lo, hi);
  at::Tensor out = at::empty(x_adv.sizes(), x_adv.options());
  a.out = out.mutable_data_ptr();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (!l2) {
    C10_CUDA_CHECK(gpu::pgd_step_linf(a, stream));
  } else {
    at::Tensor workspace = workspace_for(a, x_adv);
    a.workspace = workspace.mutable_data_ptr();
    C10_CUDA_CHECK(gpu::pgd_step_l2(a, stream));
  }
  return out;
}

at::Tensor mim_step_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                         at::Tensor& momentum, const at::Tensor& eps, const at::Tensor& alpha, double mu,
                         double lo, double hi) {
  check_mim_step_args(x_adv, grad, x_orig, momentum, eps, alpha, lo, hi);
  check_cuda_input(x_adv, "x_adv");
  TORCH_CHECK(std::isfinite(mu), "mu must be finite, got ", mu);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  gpu::PgdArgs a = step_args(x_adv, grad, x_orig, eps, alpha, lo, hi);
  at::Tensor out = at::empty(x_adv.sizes(), x_adv.options());
  a.out = out.mutable_data_ptr();
  a.momentum_dtype = a.dtype;
  a.momentum = momentum.mutable_data_ptr();
  a.mu = mu;
  at::Tensor workspace = workspace_for(a, x_adv);
  a.workspace = workspace.mutable_data_ptr();
  C10_CUDA_CHECK(gpu::mim_step(a, at::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor random_start_cuda(const at::Tensor& x_orig, const at::Tensor& eps, c10::string_view norm, double lo,
                             double hi, const at::Tensor& philox) {
  check_random_start_args(x_orig, eps, lo, hi);
  const gpu::PhiloxArg philox_arg = gpu_philox(philox, x_orig.device());
  check_cuda_input(x_orig, "x_orig");
  const bool l2 = is_l2_norm(norm);
  const c10::cuda::CUDAGuard guard(x_orig.device());
  gpu::PgdArgs a = base_args(x_orig, eps, lo, hi);
  at::Tensor out = at::empty(x_orig.sizes(), x_orig.options());
  a.x_orig = x_orig.const_data_ptr();
  a.out = out.mutable_data_ptr();
  a.philox = philox_arg;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (!l2) {
    C10_CUDA_CHECK(gpu::random_start_linf(a, stream));
  } else {
    at::Tensor workspace = workspace_for(a, x_orig);
    a.workspace = workspace.mutable_data_ptr();
    C10_CUDA_CHECK(gpu::random_start_l2(a, stream));
  }
  return out;
}

}  // namespace
}  // namespace stochnet

TORCH_LIBRARY_IMPL(stochnet, CUDA, m) {
  m.impl("pgd_step", &stochnet::pgd_step_cuda);
  m.impl("mim_step", &stochnet::mim_step_cuda);
  m.impl("random_start", &stochnet::random_start_cuda);
}
