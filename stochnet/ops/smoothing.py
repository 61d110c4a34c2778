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

from . import backend, checks
from .library import for_each_namespace
from .philox import philox_normal, seed_pair

WEIGHTED_RANKS = 32


def reference_noisy_repeat(x, m, sigma, seed, offset):
    """The semantics in pure torch (differentiable in x by torch autograd)."""
    x = x.contiguous()
    batch, per_sample = x.shape[0], x[0].numel()
    compute = checks.compute_dtype(x.dtype)
    z = philox_normal(seed, offset, batch * m * per_sample, x.device).view(batch, m, per_sample)
    y = x.reshape(batch, 1, per_sample).to(compute) + sigma * z.to(compute)
    return y.to(x.dtype).view((batch * m,) + tuple(x.shape[1:]))


def reference_vote(logits, m, mode):
    """The semantics of :func:`vote` in pure torch (soft mode differentiable by torch autograd)."""
    rows, classes = logits.shape
    batch = rows // m
    compute = checks.compute_dtype(logits.dtype)
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
    compute = checks.compute_dtype(logits.dtype)
    rows, classes = logits.shape
    p = torch.softmax(logits.to(compute), dim=1).view(rows // m, m, classes)
    g = grad.to(compute).view(rows // m, 1, classes)
    dot = (p * g).sum(2, keepdim=True)
    return (p * (g - dot) / m).view(rows, classes).to(logits.dtype)


def _fake_noisy_repeat(x, m, sigma, philox):
    checks.noisy_repeat(x, m, sigma)
    checks.philox(philox, x)
    return x.new_empty((x.shape[0] * m,) + tuple(x.shape[1:]))


def _fake_vote(logits, m, mode):
    checks.vote(logits, m, mode)
    shape = (logits.shape[0] // m, logits.shape[1])
    if mode == "prediction":
        return logits.new_empty(shape, dtype=torch.int64)
    if mode == "soft":
        return logits.new_empty(shape)
    return logits.new_empty(shape, dtype=checks.compute_dtype(logits.dtype))


def _fake_vote_backward(grad, logits, m):
    checks.vote_backward(grad, logits, m)
    return torch.empty_like(logits)


def _noisy_repeat_setup(ctx, inputs, output):
    x, m = inputs[0], inputs[1]
    ctx.m, ctx.x_shape = m, x.shape


def _noisy_repeat_backward(ctx, grad):
    grad_x = grad.reshape(ctx.x_shape[0], ctx.m, -1).sum(1).view(ctx.x_shape)
    return grad_x, None, None, None


def _vote_setup(ctx, inputs, output):
    logits, m, mode = inputs
    if mode == "soft":
        ctx.save_for_backward(logits)
    ctx.m, ctx.mode = m, mode


@for_each_namespace
def _register(namespace):
    ops = getattr(torch.ops, namespace)

    def vote_backward(ctx, grad):
        if ctx.mode != "soft":
            raise RuntimeError(f"vote mode {ctx.mode!r} is not differentiable; only mode='soft' is")
        (logits,) = ctx.saved_tensors
        return ops.vote_backward(grad.contiguous(), logits, ctx.m), None, None

    torch.library.register_fake(f"{namespace}::noisy_repeat", _fake_noisy_repeat)
    torch.library.register_fake(f"{namespace}::vote", _fake_vote)
    torch.library.register_fake(f"{namespace}::vote_backward", _fake_vote_backward)
    torch.library.register_autograd(f"{namespace}::noisy_repeat", _noisy_repeat_backward,
                                    setup_context=_noisy_repeat_setup)
    torch.library.register_autograd(f"{namespace}::vote", vote_backward, setup_context=_vote_setup)


def noisy_repeat(x, m, sigma, philox, backend_name):
    """Dispatch after validation (see :func:`stochnet.functional.noisy_repeat`)."""
    ops = backend.ops(backend_name, x.device)
    if ops is None:
        return reference_noisy_repeat(x, m, sigma, *seed_pair(philox))
    return ops.noisy_repeat(x.contiguous(), m, sigma, philox)


def vote(logits, m, mode, backend_name):
    """Dispatch after validation (see :func:`stochnet.functional.vote`)."""
    ops = backend.ops(backend_name, logits.device)
    if mode != "soft":
        logits = logits.detach()
    if ops is None:
        return reference_vote(logits, m, mode)
    return ops.vote(logits.contiguous(), m, mode)
