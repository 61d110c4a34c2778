"""StocReLU-EMA (ANIS^2): ``y = relu(x + sqrt(gamma) * sigma[c] * z)``, ``z ~ N(0, 1)``.

In training the same pass accumulates the per-channel statistics of ``x`` and updates
``running_sigma <- (1 - momentum) * running_sigma + momentum * std_c(x)`` (unbiased std over
every dim but 1). The noise of a call uses ``running_sigma`` as it was *before* that call's
update. Backward is ``dx = dy * [x + noise > 0]`` from a packed 1-bit mask: the op saves
``ceil(numel / 8)`` bytes for backward and never the noise.
"""
import math

import torch

from . import backend as backends
from .layout import dense, pack_bits, unpack_bits
from .devices import check_same_device
from .philox import check_philox, normal_like, seed_pair


def _kernel_module(name):
    if name in ("cpp", "cuda"):
        return torch.ops.stochnet
    from stochnet.kernels import stoc_relu_ema as triton_kernels
    return triton_kernels


def reference(x, running_sigma, gamma, momentum, training, seed, offset):
    """The semantics in pure torch, differentiable by torch autograd. Returns (y, mask_bool)."""
    x = dense(x)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    channel_shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = (running_sigma.to(compute) * math.sqrt(gamma)).view(channel_shape)
    v = x.to(compute) + scale * normal_like(x, seed, offset).to(compute)
    if training:
        with torch.no_grad():
            dims = [d for d in range(x.dim()) if d != 1]
            std = x.detach().double().std(dim=dims)
            running_sigma.copy_((1 - momentum) * running_sigma.double() + momentum * std)
    return torch.relu(v).to(x.dtype), v > 0


@torch.library.custom_op("stochnet::stoc_relu_ema", mutates_args=())
def stoc_relu_ema_op(x: torch.Tensor, running_sigma: torch.Tensor, gamma: float, momentum: float, training: bool,
                     philox: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward on a dense ``x``: ``y`` (laid out like ``x``), the packed mask, the new sigma.

    Functional (sigma is returned, not updated in place) so that autograd can be registered;
    the (C,) copy back into the buffer costs nothing next to the pass over ``x``.
    """
    seed, offset = seed_pair(philox)
    sigma = running_sigma.clone()
    if backend == "torch":
        with torch.no_grad():
            y, flags = reference(x, sigma, gamma, momentum, training, seed, offset)
        return y, pack_bits(flags), sigma
    y, mask = _kernel_module(backend).stoc_relu_ema_fwd(x, sigma, gamma, momentum, training, seed, offset)
    return y, mask, sigma


@stoc_relu_ema_op.register_fake
def _(x, running_sigma, gamma, momentum, training, philox, backend):
    check_same_device("x", x, running_sigma=running_sigma)
    check_philox(philox)
    mask = x.new_empty(((x.numel() + 7) // 8,), dtype=torch.uint8)
    return torch.empty_like(x), mask, torch.empty_like(running_sigma)


@torch.library.custom_op("stochnet::stoc_relu_ema_backward", mutates_args=())
def stoc_relu_ema_backward_op(grad: torch.Tensor, mask: torch.Tensor, backend: str) -> torch.Tensor:
    """``grad * mask`` with the packed 1-bit mask; ``grad`` is dense and laid out like the forward's ``x``."""
    if backend == "torch":
        return grad * unpack_bits(mask, grad)
    return _kernel_module(backend).relu_mask_backward(grad, mask)


@stoc_relu_ema_backward_op.register_fake
def _(grad, mask, backend):
    check_same_device("grad", grad, mask=mask)
    return torch.empty_like(grad)


def _setup_context(ctx, inputs, output):
    x, backend = inputs[0], inputs[-1]
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(output[1])
    ctx.backend = backend
    ctx.layout = torch.empty_like(x, device="meta")


def _backward(ctx, grad_y, grad_mask, grad_sigma):
    (mask,) = ctx.saved_tensors
    if grad_y.stride() != ctx.layout.stride():
        grad_y = torch.empty_like(ctx.layout, device=grad_y.device, dtype=grad_y.dtype).copy_(grad_y)
    grad_x = stoc_relu_ema_backward_op(grad_y, mask, ctx.backend)
    return grad_x, None, None, None, None, None, None


torch.library.register_autograd("stochnet::stoc_relu_ema", _backward, setup_context=_setup_context)


class _EagerStocReLUEMA(torch.autograd.Function):
    """The same kernels as the custom op, for eager mode: the custom op's Python dispatch and
    autograd wrapping cost about 0.2 ms per call, a few percent of a small network's training
    step. ``running_sigma`` is updated in place by the kernel."""

    @staticmethod
    def forward(ctx, x, running_sigma, gamma, momentum, training, philox, backend):
        seed, offset = seed_pair(philox)
        y, mask = _kernel_module(backend).stoc_relu_ema_fwd(x, running_sigma, gamma, momentum, training, seed,
                                                              offset)
        ctx.mark_non_differentiable(mask)
        ctx.save_for_backward(mask)
        ctx.backend, ctx.shape, ctx.stride = backend, x.shape, x.stride()
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (mask,) = ctx.saved_tensors
        if grad_y.stride() != ctx.stride:
            grad_y = grad_y.new_empty_strided(ctx.shape, ctx.stride).copy_(grad_y)
        return _kernel_module(ctx.backend).relu_mask_backward(grad_y, mask), None, None, None, None, None, None


def stoc_relu_ema(x, running_sigma, gamma, momentum, training, philox, backend):
    """Dispatch after validation (see :func:`stochnet.functional.stoc_relu_ema`)."""
    name = backends.resolve(backend, x.device)
    if name == "torch":
        seed, offset = seed_pair(philox)
        return reference(x, running_sigma, gamma, momentum, training, seed, offset)[0]
    if not torch.compiler.is_compiling():
        return _EagerStocReLUEMA.apply(dense(x), running_sigma, gamma, momentum, training, philox, name)
    y, _, sigma = stoc_relu_ema_op(dense(x), running_sigma, gamma, momentum, training, philox, name)
    if training:
        with torch.no_grad():
            running_sigma.copy_(sigma)
    return y


__all__ = ["reference", "stoc_relu_ema", "stoc_relu_ema_op", "stoc_relu_ema_backward_op"]
