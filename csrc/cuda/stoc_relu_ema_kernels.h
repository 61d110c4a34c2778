// Plain C++ entry points to the StocReLU-EMA kernels (stoc_relu_ema_kernels.cu): raw pointers,
// sizes, (seed, offset) and a stream; no torch headers, so the .cu file compiles quickly with nvcc.
// The op layer (stoc_relu_ema.cpp) validates, allocates and picks the stream. Every function
// returns the first launch error (cudaSuccess when all kernels were queued).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace stochnet {
namespace gpu {

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
  PhiloxArg philox;
  void* workspace;  // training: stoc_relu_ema_workspace_bytes() bytes, 8-byte aligned
  int sm_count;
};

// Scratch bytes the training forward needs for its per-channel Welford partials.
int64_t stoc_relu_ema_workspace_bytes(int64_t numel, int64_t channels, int64_t inner, int sm_count);

cudaError_t stoc_relu_ema_forward(const StocReluEmaArgs& args, cudaStream_t stream);

// grad_x = mask ? grad : 0 for a dense grad of numel elements, mask packed as in the forward.
cudaError_t stoc_relu_ema_backward(DType dtype, const void* grad, const uint8_t* mask, void* grad_x, int64_t numel,
                               int sm_count, cudaStream_t stream);

}  // namespace gpu
}  // namespace stochnet
