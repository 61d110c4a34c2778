// Plain C++ entry points to the CUDA kernels: raw pointers, sizes, (seed, offset) and a stream.
// No torch headers here, so the .cu files that implement them compile quickly with nvcc; the
// op layer (ops_cuda.cpp) validates arguments, allocates and picks the stream. Every
// function returns the first launch error (cudaSuccess when all kernels were queued).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace stochnet {
namespace gpu {

enum class DType : int { kFloat32, kFloat64, kFloat16, kBFloat16 };

// Word i of the stream (seed, offset) into out[i], i < numel (see philox.h).
cudaError_t philox_words(uint64_t seed, uint64_t offset, int32_t* out, int64_t numel, int sm_count,
                         cudaStream_t stream);

// Uniform i of the stream into out[i].
cudaError_t philox_uniform(uint64_t seed, uint64_t offset, float* out, int64_t numel, int sm_count,
                           cudaStream_t stream);

// Normal i of the stream into out[i].
cudaError_t philox_normal(uint64_t seed, uint64_t offset, float* out, int64_t numel, int sm_count,
                          cudaStream_t stream);

// StocReLU-EMA forward on a dense x viewed in memory order as (outer, channels, inner):
// planar (N, C, inner...) has inner = prod(shape[2:]), rows (channels-last, 2-D) inner = 1.
struct StocReluEmaArgs {
  DType dtype;     // of x and y
  const void* x;
  void* y;         // laid out like x
  uint8_t* mask;   // ceil(numel / 8) bytes, bit j of byte b = [x + noise > 0] of element 8b + j
  DType sigma_dtype;
  void* sigma;     // (channels,), float32 or x's dtype; updated in place in training
  int64_t numel;
  int64_t channels;
  int64_t inner;
  double gamma;
  double momentum;
  bool training;
  uint64_t seed;
  uint64_t offset;
  void* workspace;  // training: stoc_relu_ema_workspace_bytes() bytes, 8-byte aligned
  int sm_count;
};

// Scratch bytes the training forward needs for its per-channel Welford partials.
int64_t stoc_relu_ema_workspace_bytes(int64_t numel, int64_t channels, int64_t inner, int sm_count);

cudaError_t stoc_relu_ema_forward(const StocReluEmaArgs& args, cudaStream_t stream);

// grad_x = grad * mask for a dense grad of numel elements, mask packed as in the forward.
cudaError_t relu_mask_backward(DType dtype, const void* grad, const uint8_t* mask, void* grad_x, int64_t numel,
                               int sm_count, cudaStream_t stream);

}  // namespace gpu
}  // namespace stochnet
