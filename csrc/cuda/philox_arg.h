// The kernels' gpu::PhiloxArg from an op's philox tensor, for the CUDA op layers (the op .cpp
// files). Uses torch headers, so include it from the .cpp files only, never from the .cu files.
#pragma once
#include <ATen/core/Tensor.h>

#include "checks.h"
#include "cuda/common.h"

namespace stochnet {

// `philox` for data on `device` (see check_philox): a CPU philox is read here; one on `device`
// is left to the kernels to load, so the op neither syncs nor reads a value the host may not
// have yet (as under CUDA-graph capture). Its values are not checked >= 0: that would need a sync.
inline gpu::PhiloxArg gpu_philox(const at::Tensor& philox, const at::Device& device) {
  check_philox(philox, device);
  if (!philox.device().is_cpu()) return {philox.const_data_ptr<int64_t>(), philox.stride(0), 0, 0};
  const auto [seed, offset] = philox_pair(philox);
  return {nullptr, 0, seed, offset};
}

}  // namespace stochnet
