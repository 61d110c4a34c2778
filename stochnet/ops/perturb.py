"""Noise injection ``y = x + theta * z``, ``z ~ N(0, 1)`` per element (Learn2Perturb, PNI, Gaussian noise).

``x`` is (N, C, *) and contiguous (other layouts are copied first); ``theta`` is a scalar, one
value per channel (C,), or one per element of the feature map (``x.shape[1:]``), and is
broadcast over the batch. Every element of every sample draws its own normal (the public
Learn2Perturb code shares one draw across the batch; we do not). Backward: ``dx = dy`` and
``dtheta = sum over the batch and broadcast dims of dy * z`` with ``z`` regenerated from
``(seed, offset)``: nothing is saved for backward but theta and the (seed, offset) pair.
"""
import torch

from . import backend as backends
from .devices import check_same_device
from .philox import check_philox, normal_like, seed_pair


def _kernel_module(name):
    if name in ("cpp", "cuda"):
        return torch.ops.stochnet
    from stochnet.kernels import perturb as triton_kernels
    return triton_kernels


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
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = normal_like(x, seed, offset).to(compute)
    return (x.to(compute) + theta_view(theta, x).to(compute) * z).to(x.dtype)


def reference_theta_grad(grad, theta, seed, offset):
    """``sum of grad * z`` reduced to theta's shape, accumulated in float64."""
    z = normal_like(grad, seed, offset).double()
    product = grad.double() * z
    target = theta_view(theta, grad)
    dims = [d for d in range(grad.dim()) if target.shape[d] == 1]
    return product.sum(dim=dims, keepdim=True).reshape(theta.shape).to(theta.dtype)


@torch.library.custom_op("stochnet::perturb", mutates_args=())
def perturb_op(x: torch.Tensor, theta: torch.Tensor, philox: torch.Tensor, backend: str) -> torch.Tensor:
    """Fused ``x + theta * z`` on a contiguous ``x``."""
    seed, offset = seed_pair(philox)
    if backend == "torch":
        return reference(x, theta, seed, offset)
    return _kernel_module(backend).perturb_fwd(x, theta.contiguous(), seed, offset)


@perturb_op.register_fake
def _(x, theta, philox, backend):
    check_same_device("x", x, theta=theta)
    check_philox(philox)
    return torch.empty_like(x)


@torch.library.custom_op("stochnet::perturb_theta_grad", mutates_args=())
def perturb_theta_grad_op(grad: torch.Tensor, theta: torch.Tensor, philox: torch.Tensor,
                          backend: str) -> torch.Tensor:
    """``d theta`` from ``grad`` with the noise regenerated: a fused reduction, no noise tensor."""
    seed, offset = seed_pair(philox)
    if backend == "torch":
        return reference_theta_grad(grad, theta, seed, offset)
    return _kernel_module(backend).perturb_bwd(grad.contiguous(), theta.contiguous(), seed, offset)


@perturb_theta_grad_op.register_fake
def _(grad, theta, philox, backend):
    check_same_device("grad", grad, theta=theta)
    check_philox(philox)
    return torch.empty_like(theta)


def _setup_context(ctx, inputs, output):
    _, theta, philox, backend = inputs
    ctx.save_for_backward(theta, philox)
    ctx.backend = backend


def _backward(ctx, grad):
    theta, philox = ctx.saved_tensors
    grad_theta = None
    if ctx.needs_input_grad[1]:
        grad_theta = perturb_theta_grad_op(grad, theta, philox, ctx.backend)
    return grad, grad_theta, None, None


torch.library.register_autograd("stochnet::perturb", _backward, setup_context=_setup_context)


def perturb(x, theta, philox, backend):
    """Dispatch after validation (see :func:`stochnet.functional.perturb`)."""
    name = backends.resolve(backend, x.device)
    if name == "torch":
        return reference(x, theta, *seed_pair(philox))
    return perturb_op(x.contiguous(), theta, philox, name)
