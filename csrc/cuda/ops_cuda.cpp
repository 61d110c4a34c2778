// CUDA implementations of the stochnet ops (schemas in csrc/ops.cpp): argument checks,
// allocation, device guard and stream here; the kernels live in the .cu files behind
// launchers.h.
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
#include "cuda/launchers.h"

namespace stochnet {
namespace {

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// out[i] = element i of the stream (seed, offset) for out a contiguous tensor of `dtype`.
template <typename T>
void fill_stream(int64_t seed, int64_t offset, at::Tensor& out, at::ScalarType dtype, const char* name,
                 cudaError_t (*launch)(uint64_t, uint64_t, T*, int64_t, int, cudaStream_t)) {
  check_seed(seed, offset);
  TORCH_CHECK(out.scalar_type() == dtype && out.is_contiguous(), "out must be a contiguous ", dtype,
              " tensor for ", name, ", got ", out.scalar_type());
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  C10_CUDA_CHECK(launch(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), out.mutable_data_ptr<T>(),
                        out.numel(), sm_count(), at::cuda::getCurrentCUDAStream()));
}

void philox_words_out_cuda(int64_t seed, int64_t offset, at::Tensor& out) {
  fill_stream<int32_t>(seed, offset, out, at::kInt, "philox_words_out", &gpu::philox_words);
}

void philox_uniform_out_cuda(int64_t seed, int64_t offset, at::Tensor& out) {
  fill_stream<float>(seed, offset, out, at::kFloat, "philox_uniform_out", &gpu::philox_uniform);
}

void philox_normal_out_cuda(int64_t seed, int64_t offset, at::Tensor& out) {
  fill_stream<float>(seed, offset, out, at::kFloat, "philox_normal_out", &gpu::philox_normal);
}

std::tuple<at::Tensor, at::Tensor> stoc_relu_ema_fwd_cuda(const at::Tensor& x, at::Tensor& running_sigma, double gamma,
                                                          double momentum, bool training, int64_t seed,
                                                          int64_t offset) {
  check_stoc_relu_ema_args(x, running_sigma, gamma, momentum, training);
  check_seed(seed, offset);
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
  args.sigma = running_sigma.mutable_data_ptr();
  args.numel = numel;
  args.channels = channels;
  args.inner = inner;
  args.gamma = gamma;
  args.momentum = momentum;
  args.training = training;
  args.seed = static_cast<uint64_t>(seed);
  args.offset = static_cast<uint64_t>(offset);
  args.workspace = training ? workspace.mutable_data_ptr() : nullptr;
  args.sm_count = sms;
  C10_CUDA_CHECK(gpu::stoc_relu_ema_forward(args, at::cuda::getCurrentCUDAStream()));
  return {y, mask};
}

at::Tensor relu_mask_backward_cuda(const at::Tensor& grad, const at::Tensor& mask) {
  check_mask_backward_args(grad, mask);
  const gpu::DType dtype = gpu_dtype(grad, "grad");
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor grad_x = at::empty_like(grad);
  C10_CUDA_CHECK(gpu::relu_mask_backward(dtype, grad.const_data_ptr(), mask.const_data_ptr<uint8_t>(), grad_x.mutable_data_ptr(),
                                         grad.numel(), sm_count(), at::cuda::getCurrentCUDAStream()));
  return grad_x;
}

}  // namespace
}  // namespace stochnet

TORCH_LIBRARY_IMPL(stochnet, CUDA, m) {
  m.impl("philox_words_out", &stochnet::philox_words_out_cuda);
  m.impl("philox_uniform_out", &stochnet::philox_uniform_out_cuda);
  m.impl("philox_normal_out", &stochnet::philox_normal_out_cuda);
  m.impl("stoc_relu_ema_fwd", &stochnet::stoc_relu_ema_fwd_cuda);
  m.impl("relu_mask_backward", &stochnet::relu_mask_backward_cuda);
}
