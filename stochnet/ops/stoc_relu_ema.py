"""StocReLU-EMA (ANIS^2): ``y = relu(x + sqrt(gamma) * sigma[c] * z)``, ``z ~ N(0, 1)``.

In training the same pass accumulates the per-channel statistics of ``x`` and updates
``running_sigma <- (1 - momentum) * running_sigma + momentum * std_c(x)`` (unbiased std over
every dim but 1). The noise of a call uses ``running_sigma`` as it was *before* that call's
update. Backward is ``dx = dy * [x + noise > 0]`` from a packed 1-bit mask: the op saves
``ceil(numel / 8)`` bytes for backward and never the noise.

Ops: ``stoc_relu_ema(x, running_sigma, gamma, momentum, training, philox) -> (y, mask, sigma)``
(functional: the new sigma is returned, and copied into the buffer here, so that autograd can be
registered on the op) and ``stoc_relu_ema_backward(grad, mask)``, in ``stochnet::`` (C++) and
``stochnet_triton::``; fake and autograd registered here for both.
"""
import math

import torch

from . import backend, checks
from .layout import dense, pack_bits, unpack_bits
from .library import for_each_namespace
from .philox import normal_like, seed_pair


def reference(x, running_sigma, gamma, momentum, training, seed, offset):
    """The semantics in pure torch, differentiable by torch autograd. Returns (y, mask_bool)."""
    x = dense(x)
    compute = checks.compute_dtype(x.dtype)
    channel_shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = (running_sigma.to(compute) * math.sqrt(gamma)).view(channel_shape)
    v = x.to(compute) + scale * normal_like(x, seed, offset).to(compute)
    if training:
        with torch.no_grad():
            dims = [d for d in range(x.dim()) if d != 1]
            std = x.detach().double().std(dim=dims)
            running_sigma.copy_((1 - momentum) * running_sigma.double() + momentum * std)
    return torch.relu(v).to(x.dtype), v > 0


def reference_backward(grad, mask):
    """``grad`` where the packed 1-bit mask of :func:`pack_bits` is set, else 0 (a select, as
    torch.relu's backward: a NaN or inf gradient where the bit is 0 gives 0)."""
    return grad.masked_fill(~unpack_bits(mask, grad), 0)


def _fake(x, running_sigma, gamma, momentum, training, philox):
    checks.stoc_relu_ema(x, running_sigma, gamma, momentum, training)
    checks.philox(philox, x)
    mask = x.new_empty(((x.numel() + 7) // 8,), dtype=torch.uint8)
    return torch.empty_like(x), mask, torch.empty_like(running_sigma)


def _fake_backward(grad, mask):
    checks.mask_backward(grad, mask)
    return torch.empty_like(grad)


def _save_mask(ctx, x, mask):
    ctx.save_for_backward(mask)
    ctx.shape, ctx.stride = x.shape, x.stride()


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2])
    _save_mask(ctx, inputs[0], output[1])


def _backward_of(ops):
    def backward(ctx, grad_y, grad_mask, grad_sigma):
        (mask,) = ctx.saved_tensors
        if grad_y.stride() != ctx.stride:  # the mask is in the memory order of the forward's x
            grad_y = grad_y.new_empty_strided(ctx.shape, ctx.stride).copy_(grad_y)
        return ops.stoc_relu_ema_backward(grad_y, mask), None, None, None, None, None
    return backward


_BACKWARDS = {}


@for_each_namespace
def _register(namespace):
    backward = _BACKWARDS[namespace] = _backward_of(getattr(torch.ops, namespace))
    torch.library.register_fake(f"{namespace}::stoc_relu_ema", _fake)
    torch.library.register_fake(f"{namespace}::stoc_relu_ema_backward", _fake_backward)
    torch.library.register_autograd(f"{namespace}::stoc_relu_ema", backward, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The op with the same setup and backward as its registered autograd, minus the registered
    autograd's Python wrapping (and its two extra outputs: sigma is copied into the buffer here),
    which costs about 30 us per training call of a 32x16x8x8 float32 batch on one CPU thread,
    a quarter of the op's cost at that size."""

    @staticmethod
    def forward(ctx, x, running_sigma, gamma, momentum, training, philox, namespace):
        with torch._C._AutoDispatchBelowAutograd():
            output = getattr(torch.ops, namespace).stoc_relu_ema(x, running_sigma, gamma, momentum, training, philox)
        if training:
            running_sigma.copy_(output[2])
        _save_mask(ctx, x, output[1])
        ctx.namespace = namespace
        return output[0]

    @staticmethod
    def backward(ctx, grad_y):
        return _BACKWARDS[ctx.namespace](ctx, grad_y, None, None) + (None,)


def stoc_relu_ema(x, running_sigma, gamma, momentum, training, philox, backend_name):
    """Dispatch after validation (see :func:`stochnet.functional.stoc_relu_ema`)."""
    ops = backend.ops(backend_name, x.device)
    if ops is None:
        return reference(x, running_sigma, gamma, momentum, training, *seed_pair(philox))[0]
    x = dense(x)
    if not torch.compiler.is_compiling():
        return _Eager.apply(x, running_sigma, gamma, momentum, training, philox, ops.name)
    y, _, sigma = ops.stoc_relu_ema(x, running_sigma, gamma, momentum, training, philox)
    if training:
        with torch.no_grad():
            running_sigma.copy_(sigma)
    return y


__all__ = ["reference", "reference_backward", "stoc_relu_ema"]
