// Plain C++ entry points to the PGD / MIM / random-start kernels (csrc/cuda/pgd_kernels.cu):
// raw pointers, sizes, the Philox (seed, offset) and a stream, no torch headers. Every function
// returns the first launch error (cudaSuccess when all kernels were queued).
//
// All x-like tensors are dense (contiguous) with numel elements, viewed as (batch, d) with
// d = numel / batch elements per sample. The arithmetic follows stochnet/ops/pgd.py's references,
// rounding order included: each op in x's dtype (16-bit types computed in float32 and rounded
// after every op, as torch does), eps / alpha and the per-sample factors cast to x's dtype, the
// per-sample reductions and the factors derived from them in float64.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.h"

namespace stochnet {
namespace gpu {

struct PgdArgs {
  DType dtype;  // of x_adv, grad, x_orig and out
  int64_t batch;
  int64_t numel;
  const void* x_adv;
  const void* grad;
  const void* x_orig;
  void* out;
  DType eps_dtype;  // float32 or float64, (batch,)
  const void* eps;
  DType alpha_dtype;  // float32 or float64, (batch,)
  const void* alpha;
  double lo;
  double hi;
  // mim_step only: updated in place, of dtype (the only momentum_dtype accepted).
  DType momentum_dtype;
  void* momentum;
  double mu;
  // random_start only.
  PhiloxArg philox;
  // pgd_step_l2, mim_step, random_start_l2: pgd_workspace_bytes() bytes, 8-byte aligned.
  void* workspace;
  int sm_count;
};

// Scratch bytes the reducing ops need: float64 per-sample partials and per-sample factors.
int64_t pgd_workspace_bytes(int64_t batch, int64_t numel, int sm_count);

// delta = clamp(x_adv + alpha_b * sign(grad) - x_orig, -eps_b, eps_b); out = clamp(x_orig + delta, lo, hi).
cudaError_t pgd_step_linf(const PgdArgs& args, cudaStream_t stream);

// scale_b = alpha_b / max(||grad_b||, 1e-12); delta = (x_adv + grad * scale_b) - x_orig;
// delta *= min(1, eps_b / ||delta_b||) (unchanged when ||delta_b|| = 0); out = clamp(x_orig + delta).
// Norms accumulated in float64, merged in a fixed order (bitwise reproducible per sm_count).
cudaError_t pgd_step_l2(const PgdArgs& args, cudaStream_t stream);

// momentum <- mu * momentum + grad / max(mean_b |grad|, 1e-12) (in place), then the linf step
// along sign(momentum).
cudaError_t mim_step(const PgdArgs& args, cudaStream_t stream);

// out = clamp(x_orig + eps_b * (2 u_p - 1), lo, hi), u_p uniform p of the stream (seed, offset).
cudaError_t random_start_linf(const PgdArgs& args, cudaStream_t stream);

// out = clamp(x_orig + z_p * (eps_b * v_b^(1 / d) / ||z_b||), lo, hi), z_p normal p of the stream
// (seed, offset), v_b uniform b of the stream (seed, offset + ceil(numel / 4)).
cudaError_t random_start_l2(const PgdArgs& args, cudaStream_t stream);

}  // namespace gpu
}  // namespace stochnet
