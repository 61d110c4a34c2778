// The torch dtype -> gpu::DType mapping shared by the CUDA op layers (the op .cpp files). Uses torch
// headers, so include it from the .cpp files only, never from the .cu files.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "cuda/common.h"

namespace stochnet {

// The kernel dtype of `t`; an error naming `name` for a dtype the CUDA kernels do not support.
inline gpu::DType gpu_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return gpu::DType::kFloat32;
    case at::kDouble:
      return gpu::DType::kFloat64;
    case at::kHalf:
      return gpu::DType::kFloat16;
    case at::kBFloat16:
      return gpu::DType::kBFloat16;
    default:
      TORCH_CHECK(false, name, " must be float32, float64, float16 or bfloat16 on CUDA, got ", t.scalar_type());
  }
}

}  // namespace stochnet
