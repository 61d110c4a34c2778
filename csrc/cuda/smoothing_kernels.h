// Plain C++ entry points to the smoothing kernels (csrc/cuda/smoothing_kernels.cu): raw pointers,
// sizes, (seed, offset) and a stream, no torch headers. Every function returns the first launch
// error (cudaSuccess when all kernels were queued), cudaErrorInvalidValue for sizes the op layer
// should have rejected. The rules are those of stochnet/ops/smoothing.py.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace stochnet {
namespace gpu {

// WEIGHTED_RANKS of stochnet/ops/smoothing.py: the ranks that receive a weighted vote.
constexpr int kWeightedRanks = 32;

struct NoisyRepeatArgs {
  DType dtype;         // of x and y
  const void* x;       // (batch, per_sample), dense
  void* y;             // (batch * copies, per_sample), dense
  int64_t batch;
  int64_t per_sample;
  int64_t copies;
  double sigma;
  PhiloxArg philox;
  int sm_count;
};

// y[b * copies + j] = x[b] + sigma * z, element i of y (memory order) taking normal i of the
// stream (seed, offset); the product is rounded before the add.
cudaError_t noisy_repeat_forward(const NoisyRepeatArgs& args, cudaStream_t stream);

// Logits (batch * copies, classes), dense, read as (batch, copies, classes).
struct VoteArgs {
  DType dtype;  // of the logits
  const void* logits;
  int64_t batch;
  int64_t copies;
  int64_t classes;
  int sm_count;
};

// counts (batch, classes), zero-filled by the caller: += 1 at each row's argmax (the first
// maximal index, the first NaN when there is one).
cudaError_t vote_prediction(const VoteArgs& args, int64_t* counts, cudaStream_t stream);

// scores (batch, classes), float32 (float64 for float64 logits): each row adds 2^-rank to its
// min(classes, kWeightedRanks) first classes by rank. `fixed_point` is a zero-filled scratch of
// batch * classes words, where the votes add up exactly in units of 2^-31; copies <= 2^32.
cudaError_t vote_weighted(const VoteArgs& args, void* scores, uint64_t* fixed_point, cudaStream_t stream);

// Scratch bytes vote_soft needs (8-byte aligned): each row's max and sum of exponentials.
int64_t vote_soft_workspace_bytes(DType dtype, int64_t rows);

// mean (batch, classes) in the logits' dtype: the mean over the copies of softmax(row),
// accumulated in float32 (float64), in a fixed order.
cudaError_t vote_soft(const VoteArgs& args, void* mean, void* workspace, cudaStream_t stream);

// grad_logits (batch * copies, classes) in the logits' dtype from grad (batch, classes) of the
// same dtype: p * (grad[b] - <grad[b], p>) / copies per row, p the row's softmax.
cudaError_t vote_soft_backward(const VoteArgs& args, const void* grad, void* grad_logits, cudaStream_t stream);

}  // namespace gpu
}  // namespace stochnet
