// CUDA implementations of the Philox stream ops (schemas in csrc/ops.cpp): the stream element by
// element into a tensor, for the tests that compare every backend with the reference.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/philox_arg.h"
#include "cuda/philox_kernels.h"

namespace stochnet {
namespace {

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// out[i] = element i of the stream (seed, offset) for out a contiguous tensor of `dtype`.
template <typename T>
void fill_stream(const at::Tensor& philox, at::Tensor& out, at::ScalarType dtype, const char* name,
                 cudaError_t (*launch)(gpu::PhiloxArg, T*, int64_t, int, cudaStream_t)) {
  const gpu::PhiloxArg philox_arg = gpu_philox(philox, out.device());
  TORCH_CHECK(out.scalar_type() == dtype && out.is_contiguous(), "out must be a contiguous ", dtype,
              " tensor for ", name, ", got ", out.scalar_type());
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  C10_CUDA_CHECK(launch(philox_arg, out.mutable_data_ptr<T>(), out.numel(), sm_count(),
                        at::cuda::getCurrentCUDAStream()));
}

void philox_words_out_cuda(const at::Tensor& philox, at::Tensor& out) {
  fill_stream<int32_t>(philox, out, at::kInt, "philox_words_out", &gpu::philox_words);
}

void philox_uniform_out_cuda(const at::Tensor& philox, at::Tensor& out) {
  fill_stream<float>(philox, out, at::kFloat, "philox_uniform_out", &gpu::philox_uniform);
}

void philox_normal_out_cuda(const at::Tensor& philox, at::Tensor& out) {
  fill_stream<float>(philox, out, at::kFloat, "philox_normal_out", &gpu::philox_normal);
}

}  // namespace
}  // namespace stochnet

TORCH_LIBRARY_IMPL(stochnet, CUDA, m) {
  m.impl("philox_words_out", &stochnet::philox_words_out_cuda);
  m.impl("philox_uniform_out", &stochnet::philox_uniform_out_cuda);
  m.impl("philox_normal_out", &stochnet::philox_normal_out_cuda);
}
