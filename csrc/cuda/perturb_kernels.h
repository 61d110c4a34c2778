// Plain C++ entry points to the perturb kernels (csrc/cuda/perturb_kernels.cu): raw pointers,
// sizes, the Philox (seed, offset) and a stream, no torch headers. Every function returns the first
// launch error (cudaSuccess when all kernels were queued).
//
// theta is addressed through a (channels, inner) view of x in memory order: element p of x
// uses theta[(p / inner) % channels]. The op layer maps
//   scalar  theta (1 element)         -> channels = 1,            inner = numel
//   channel theta (C elements)        -> channels = C,            inner = prod(shape[2:])
//   feature theta (numel / N elements) -> channels = numel / N,   inner = 1
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace stochnet {
namespace gpu {

struct PerturbArgs {
  DType dtype;        // of x / grad (and y)
  DType theta_dtype;  // float32 or dtype
  int64_t numel;
  int64_t channels;
  int64_t inner;
  PhiloxArg philox;
  int sm_count;
};

// y = x + theta[(p / inner) % channels] * z_p, the product rounded before the add, y laid out
// like x (both dense, numel elements).
cudaError_t perturb_forward(const PerturbArgs& args, const void* x, const void* theta, void* y,
                            cudaStream_t stream);

// Scratch bytes perturb_backward needs (8-byte aligned) for its float64 partial sums.
int64_t perturb_backward_workspace_bytes(int64_t numel, int64_t channels, int64_t inner, int sm_count);

// dtheta[k] = sum of grad_p * z_p over the elements p with (p / inner) % channels == k, written
// in theta_dtype (channels entries). z is regenerated in the reduction; the partial sums are
// merged in a fixed order, so the result is bitwise reproducible for a given sm_count.
cudaError_t perturb_backward(const PerturbArgs& args, const void* grad, void* dtheta, void* workspace,
                             cudaStream_t stream);

}  // namespace gpu
}  // namespace stochnet
