"""Noise injection ``y = x + theta * z``, ``z ~ N(0, 1)`` per element (Learn2Perturb, PNI, Gaussian noise).

``x`` is (N, C, *) and contiguous (other layouts are copied first); ``theta`` is a scalar, one
value per channel (C,), or one per element of the feature map (``x.shape[1:]``), and is
broadcast over the batch. Every element of every sample draws its own normal (the public
Learn2Perturb code shares one draw across the batch; we do not). Backward: ``dx = dy`` and
``dtheta = sum over the batch and broadcast dims of dy * z`` with ``z`` regenerated from
``philox``: nothing is saved for backward but theta and the (seed, offset) pair.

Ops: ``perturb(x, theta, philox)`` and ``perturb_backward(grad, theta, philox)`` (d theta), in
``stochnet::`` (C++) and ``stochnet_triton::``; fake and autograd registered here for both.
"""
import torch

from . import backend, checks
from .library import for_each_namespace
from .philox import normal_like, seed_pair


def theta_view(theta, x):
    """``theta`` shaped to broadcast against ``x``: () / (C,) / x.shape[1:] -> x.dim() dims."""
    if theta.numel() == 1:
        return theta.reshape((1,) * x.dim())
    if theta.dim() == 1 and theta.numel() == x.shape[1] and x.dim() > 1:
        return theta.view((1, -1) + (1,) * (x.dim() - 2))
    return theta.view((1,) + tuple(x.shape[1:]))


def reference(x, theta, seed, offset):
    """The semantics in pure torch, differentiable in x and theta by torch autograd."""
    x = x.contiguous()
    compute = checks.compute_dtype(x.dtype)
    z = normal_like(x, seed, offset).to(compute)
    return (x.to(compute) + theta_view(theta, x).to(compute) * z).to(x.dtype)


def reference_theta_grad(grad, theta, seed, offset):
    """``sum of grad * z`` reduced to theta's shape, accumulated in float64."""
    z = normal_like(grad, seed, offset).double()
    product = grad.double() * z
    target = theta_view(theta, grad)
    dims = [d for d in range(grad.dim()) if target.shape[d] == 1]
    return product.sum(dim=dims, keepdim=True).reshape(theta.shape).to(theta.dtype)


def _fake(x, theta, philox):
    checks.perturb(x, theta, "x")
    checks.philox(philox, x)
    return torch.empty_like(x)


def _fake_backward(grad, theta, philox):
    checks.perturb(grad, theta, "grad")
    checks.philox(philox, grad)
    return torch.empty_like(theta)


def _setup_context(ctx, inputs, output):
    _, theta, philox = inputs
    ctx.save_for_backward(theta, philox)


@for_each_namespace
def _register(namespace):
    ops = getattr(torch.ops, namespace)

    def backward(ctx, grad):
        theta, philox = ctx.saved_tensors
        grad_theta = ops.perturb_backward(grad.contiguous(), theta, philox) if ctx.needs_input_grad[1] else None
        return grad, grad_theta, None

    torch.library.register_fake(f"{namespace}::perturb", _fake)
    torch.library.register_fake(f"{namespace}::perturb_backward", _fake_backward)
    torch.library.register_autograd(f"{namespace}::perturb", backward, setup_context=_setup_context)


def perturb(x, theta, philox, backend_name):
    """Dispatch after validation (see :func:`stochnet.functional.perturb`)."""
    ops = backend.ops(backend_name, x.device)
    if ops is None:
        return reference(x, theta, *seed_pair(philox))
    return ops.perturb(x.contiguous(), theta.contiguous(), philox)
