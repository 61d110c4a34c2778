// Plain C++ entry points to the Philox stream kernels (philox_kernels.cu); no torch headers.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace stochnet {
namespace gpu {

// Word i of the stream (seed, offset) into out[i], i < numel (see philox.h).
cudaError_t philox_words(PhiloxArg philox, int32_t* out, int64_t numel, int sm_count, cudaStream_t stream);

// Uniform i of the stream into out[i].
cudaError_t philox_uniform(PhiloxArg philox, float* out, int64_t numel, int sm_count, cudaStream_t stream);

// Normal i of the stream into out[i].
cudaError_t philox_normal(PhiloxArg philox, float* out, int64_t numel, int sm_count, cudaStream_t stream);

}  // namespace gpu
}  // namespace stochnet
