"""Batched multi-sample smoothing: noisy copies of a batch in one pass, and their votes in one pass.

``noisy_repeat(x, m, sigma)``: x (B, *) contiguous -> (B*m, *), copy j of sample b is
``x[b] + sigma * z``; output element i (in memory order) takes normal i of the Philox stream.
Backward ``dx[b] = sum_j dy[b*m + j]`` is a plain reduction (torch's own, in every backend);
nothing is saved for it.

``vote(logits, m, mode)``: logits (B*m, K), read as (B, m, K), reduced to (B, K):

- ``"prediction"``: int64 counts of each sample's argmax class; ties and NaN resolved as
  ``torch.argmax`` does (the first maximal index; NaN counts as the maximum).
- ``"soft"``: mean over the m copies of ``softmax(logits)``, accumulated in float32 (float64
  for float64 logits), returned in the logits' dtype; differentiable. Its backward recomputes
  the softmax from the logits (saved as the op's input, no extra memory).
- ``"weighted"``: each copy adds ``2 ** -rank`` to the class of each of its ``WEIGHTED_RANKS``
  largest logits (rank 0 = the largest; equal logits rank by lower index first, NaN first as
  the largest). Ranks past ``WEIGHTED_RANKS`` add nothing: their weights (< 2**-31) are below
  float32 resolution of a vote that any top class receives. float32 scores (float64 for
  float64 logits).
"""
import torch

from . import backend as backends
from .devices import check_same_device
from .philox import check_philox, philox_normal, seed_pair

VOTE_MODES = ("prediction", "soft", "weighted")
WEIGHTED_RANKS = 32


def _kernel_module(name):
    if name in ("cpp", "cuda"):
        return torch.ops.stochnet
    from stochnet.kernels import smoothing as triton_kernels
    return triton_kernels


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_noisy_repeat(x, m, sigma, seed, offset):
    """The semantics in pure torch (differentiable in x by torch autograd)."""
    x = x.contiguous()
    batch, per_sample = x.shape[0], x[0].numel()
    compute = _compute_dtype(x.dtype)
    z = philox_normal(seed, offset, batch * m * per_sample, x.device).view(batch, m, per_sample)
    y = x.reshape(batch, 1, per_sample).to(compute) + sigma * z.to(compute)
    return y.to(x.dtype).view((batch * m,) + tuple(x.shape[1:]))


def reference_vote(logits, m, mode):
    """The semantics of :func:`vote` in pure torch (soft mode differentiable by torch autograd)."""
    rows, classes = logits.shape
    batch = rows // m
    compute = _compute_dtype(logits.dtype)
    if mode == "prediction":
        winners = logits.argmax(1).view(batch, m)
        counts = torch.zeros(batch, classes, dtype=torch.int64, device=logits.device)
        return counts.scatter_add_(1, winners, torch.ones_like(winners))
    if mode == "soft":
        probabilities = torch.softmax(logits.to(compute), dim=1)
        return probabilities.view(batch, m, classes).mean(1).to(logits.dtype)
    ranks = min(classes, WEIGHTED_RANKS)
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :ranks]
    weights = torch.pow(2.0, -torch.arange(ranks, dtype=compute, device=logits.device))
    scores = torch.zeros(rows, classes, dtype=compute, device=logits.device)
    scores.scatter_(1, order, weights.expand(rows, ranks))
    return scores.view(batch, m, classes).sum(1)


def reference_vote_soft_grad(grad, logits, m):
    """``d logits`` of the soft vote: ``p * (g - <g, p>) / m`` per copy, p its softmax."""
    compute = _compute_dtype(logits.dtype)
    rows, classes = logits.shape
    p = torch.softmax(logits.to(compute), dim=1).view(rows // m, m, classes)
    g = grad.to(compute).view(rows // m, 1, classes)
    dot = (p * g).sum(2, keepdim=True)
    return (p * (g - dot) / m).view(rows, classes).to(logits.dtype)


@torch.library.custom_op("stochnet::noisy_repeat", mutates_args=())
def noisy_repeat_op(x: torch.Tensor, m: int, sigma: float, philox: torch.Tensor, backend: str) -> torch.Tensor:
    """m noisy copies of every sample of a contiguous ``x`` in one pass."""
    seed, offset = seed_pair(philox)
    if backend == "torch":
        return reference_noisy_repeat(x, m, sigma, seed, offset)
    return _kernel_module(backend).noisy_repeat_fwd(x, m, sigma, seed, offset)


@noisy_repeat_op.register_fake
def _(x, m, sigma, philox, backend):
    check_philox(philox)
    return x.new_empty((x.shape[0] * m,) + tuple(x.shape[1:]))


def _noisy_repeat_setup(ctx, inputs, output):
    x, m, _, _, _ = inputs
    ctx.m = m
    ctx.x_shape = x.shape


def _noisy_repeat_backward(ctx, grad):
    batch = ctx.x_shape[0]
    grad_x = grad.reshape(batch, ctx.m, -1).sum(1).view(ctx.x_shape)
    return grad_x, None, None, None, None


torch.library.register_autograd("stochnet::noisy_repeat", _noisy_repeat_backward, setup_context=_noisy_repeat_setup)


@torch.library.custom_op("stochnet::vote", mutates_args=())
def vote_op(logits: torch.Tensor, m: int, mode: str, backend: str) -> torch.Tensor:
    """The (B, K) vote of contiguous (B*m, K) logits in one pass."""
    if backend == "torch":
        return reference_vote(logits, m, mode)
    return _kernel_module(backend).vote_fwd(logits, m, mode)


@vote_op.register_fake
def _(logits, m, mode, backend):
    shape = (logits.shape[0] // m, logits.shape[1])
    if mode == "prediction":
        return logits.new_empty(shape, dtype=torch.int64)
    if mode == "soft":
        return logits.new_empty(shape)
    return logits.new_empty(shape, dtype=_compute_dtype(logits.dtype))


@torch.library.custom_op("stochnet::vote_soft_grad", mutates_args=())
def vote_soft_grad_op(grad: torch.Tensor, logits: torch.Tensor, m: int, backend: str) -> torch.Tensor:
    """``d logits`` of the soft vote, softmax recomputed from the logits."""
    if backend == "torch":
        return reference_vote_soft_grad(grad, logits, m)
    return _kernel_module(backend).vote_soft_bwd(grad.contiguous(), logits, m)


@vote_soft_grad_op.register_fake
def _(grad, logits, m, backend):
    check_same_device("logits", logits, grad=grad)
    return torch.empty_like(logits)


def _vote_setup(ctx, inputs, output):
    logits, m, mode, backend = inputs
    if mode == "soft":
        ctx.save_for_backward(logits)
    ctx.m, ctx.mode, ctx.backend = m, mode, backend


def _vote_backward(ctx, grad):
    if ctx.mode != "soft":
        raise RuntimeError(f"vote mode {ctx.mode!r} is not differentiable; only mode='soft' is")
    (logits,) = ctx.saved_tensors
    return vote_soft_grad_op(grad, logits, ctx.m, ctx.backend), None, None, None


torch.library.register_autograd("stochnet::vote", _vote_backward, setup_context=_vote_setup)


def noisy_repeat(x, m, sigma, philox, backend):
    """Dispatch after validation (see :func:`stochnet.functional.noisy_repeat`)."""
    name = backends.resolve(backend, x.device)
    if name == "torch":
        return reference_noisy_repeat(x, m, sigma, *seed_pair(philox))
    return noisy_repeat_op(x.contiguous(), m, sigma, philox, name)


def vote(logits, m, mode, backend):
    """Dispatch after validation (see :func:`stochnet.functional.vote`)."""
    name = backends.resolve(backend, logits.device)
    if mode != "soft":
        logits = logits.detach()
    if name == "torch":
        return reference_vote(logits, m, mode)
    return vote_op(logits.contiguous(), m, mode, name)
