"""Fused PGD / MIM steps and the random start inside the eps ball.

All tensors are (B, *) and read in memory order (other layouts are copied to contiguous
first); ``eps`` and ``alpha`` reach the kernels as (B,) float32 (float64 for float64 inputs)
tensors, one budget per sample. The references below define the semantics, rounding order
included: arithmetic in the inputs' dtype with ``eps`` / ``alpha`` cast to it, per-sample
reductions (norms, mean |grad|) and the per-sample factors derived from them in float64.

- linf: ``delta = clamp(x_adv + alpha * sign(grad) - x_orig, -eps, eps)``,
  ``out = clamp(x_orig + delta, lo, hi)``.
- l2: ``scale = alpha / max(||grad||, 1e-12)``, ``delta = x_adv + grad * scale - x_orig``,
  ``out = clamp(x_orig + delta * min(1, eps / ||delta||), lo, hi)`` (factor 1 when the norm is 0).
- MIM: ``momentum <- mu * momentum + grad / max(mean |grad|, 1e-12)`` in place, then the
  linf step along ``sign(momentum)`` (torchattacks' MIFGSM).
- NaN: a NaN entry of ``grad`` counts as 0 (no step along it, no part of ||grad|| or of
  mean |grad|), and ``sign(NaN) = 0``, so a NaN momentum entry takes no step either: a NaN
  gradient never turns x_adv into NaN.
- MIM's ``momentum`` must share no memory with the other tensors (it is written while they are read).
- random start, linf: ``x + eps * (2u - 1)`` with ``u`` uniform ``i`` of the Philox stream;
  l2: normals ``z`` (element ``i`` of the stream) scaled per sample to the radius
  ``eps * v ** (1 / d)``, ``v`` uniform ``b`` of the stream at ``offset + ceil(numel / 4)``,
  ``d`` the elements per sample. Both clamped to ``[lo, hi]``.

None of these ops is differentiable: attacks call them under ``torch.no_grad``.

Ops: ``pgd_step``, ``mim_step`` (momentum mutated in place) and ``random_start``, in
``stochnet::`` (C++) and ``stochnet_triton::``, with the fakes registered here; every backend
calls its op directly, so an attack step costs one dispatcher call.
"""
import torch

from . import backend, checks
from .library import for_each_namespace
from .philox import philox_normal, philox_uniform, seed_pair

MIN_NORM = 1e-12


def _per_sample_view(values, x):
    """(B,) values as a (B, 1, ..., 1) view in x's dtype."""
    return values.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))


def _sample_sums(t):
    """float64 sums of ``t`` over every dim but the batch dim 0."""
    return t.double().reshape(t.shape[0], -1).sum(dim=1)


def _sign(t):
    """-1, 0 or 1 in t's dtype, 0 for +-0 and NaN."""
    return (t > 0).to(t.dtype) - (t < 0).to(t.dtype)


def _nan_as_zero(grad):
    return grad.masked_fill(grad.isnan(), 0)


def _linf_project(x_adv, step, x_orig, eps, lo, hi):
    eps_view = _per_sample_view(eps, x_orig)
    delta = torch.clamp((x_adv + step) - x_orig, -eps_view, eps_view)
    return torch.clamp(x_orig + delta, lo, hi)


def pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, lo, hi):
    """One PGD step in pure torch; eps, alpha: (B,) float tensors."""
    grad = _nan_as_zero(grad)
    if norm == "linf":
        step = _per_sample_view(alpha, x_adv) * _sign(grad)
        return _linf_project(x_adv, step, x_orig, eps, lo, hi)
    grad_norm = _sample_sums(grad.double() ** 2).sqrt()
    scale = alpha.double() / grad_norm.clamp_min(MIN_NORM)
    delta = (x_adv + grad * _per_sample_view(scale, x_adv)) - x_orig
    delta_norm = _sample_sums(delta.double() ** 2).sqrt()
    factor = torch.where(delta_norm > 0, (eps.double() / delta_norm).clamp_max(1.0),
                         torch.ones_like(delta_norm))
    return torch.clamp(x_orig + delta * _per_sample_view(factor, x_orig), lo, hi)


def mim_step_reference(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi):
    """One MIM step in pure torch; updates ``momentum`` in place and returns the new x_adv."""
    grad = _nan_as_zero(grad)
    per_sample = grad[0].numel()
    denom = (_sample_sums(grad.abs()) / per_sample).clamp_min(MIN_NORM)
    momentum.copy_(momentum * mu + grad / _per_sample_view(denom, grad))
    step = _per_sample_view(alpha, x_adv) * _sign(momentum)
    return _linf_project(x_adv, step, x_orig, eps, lo, hi)


def random_start_reference(x_orig, eps, norm, lo, hi, seed, offset):
    """A random point of the eps ball around ``x_orig`` (contiguous), clamped to [lo, hi]."""
    numel, batch = x_orig.numel(), x_orig.shape[0]
    if norm == "linf":
        u = philox_uniform(seed, offset, numel, x_orig.device)
        r = (2 * u - 1).to(x_orig.dtype).view(x_orig.shape)
        return torch.clamp(x_orig + _per_sample_view(eps, x_orig) * r, lo, hi)
    z = philox_normal(seed, offset, numel, x_orig.device).view(x_orig.shape)
    z_norm = _sample_sums(z.double() ** 2).sqrt()
    v = philox_uniform(seed, offset + (numel + 3) // 4, batch, x_orig.device).double()
    radius = eps.double() * v ** (1.0 / (numel // batch))
    factor = torch.where(z_norm > 0, radius / z_norm, torch.zeros_like(z_norm))
    return torch.clamp(x_orig + z.to(x_orig.dtype) * _per_sample_view(factor, x_orig), lo, hi)


def _fake_pgd_step(x_adv, grad, x_orig, eps, alpha, norm, lo, hi):
    checks.pgd_step(x_adv, grad, x_orig, eps, alpha, norm)
    return torch.empty_like(x_adv, memory_format=torch.contiguous_format)


def _fake_mim_step(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi):
    checks.pgd_step(x_adv, grad, x_orig, eps, alpha, "linf")
    checks.momentum(momentum, x_adv)
    return torch.empty_like(x_adv, memory_format=torch.contiguous_format)


def _fake_random_start(x_orig, eps, norm, lo, hi, philox):
    checks.batched(x_orig, "x_orig")
    checks.per_sample(eps, "eps", x_orig)
    checks.norm(norm)
    checks.philox(philox, x_orig)
    return torch.empty_like(x_orig, memory_format=torch.contiguous_format)


@for_each_namespace
def _register(namespace):
    torch.library.register_fake(f"{namespace}::pgd_step", _fake_pgd_step)
    torch.library.register_fake(f"{namespace}::mim_step", _fake_mim_step)
    torch.library.register_fake(f"{namespace}::random_start", _fake_random_start)


def per_sample_tensor(value, x):
    """eps / alpha as the (B,) tensor the kernels take: float32, or float64 for float64 x."""
    dtype = checks.compute_dtype(x.dtype)
    if isinstance(value, torch.Tensor):
        return value.to(device=x.device, dtype=dtype).contiguous()
    return torch.full((x.shape[0],), float(value), dtype=dtype, device=x.device)


def pgd_step(x_adv, grad, x_orig, eps, alpha, norm, lo, hi, backend_name):
    """Dispatch after validation (see :func:`stochnet.functional.pgd_step`)."""
    ops = backend.ops(backend_name, x_adv.device)
    x_adv, grad, x_orig = x_adv.contiguous(), grad.contiguous(), x_orig.contiguous()
    eps, alpha = per_sample_tensor(eps, x_adv), per_sample_tensor(alpha, x_adv)
    if ops is None:
        return pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, lo, hi)
    return ops.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, lo, hi)


def mim_step(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi, backend_name):
    """Dispatch after validation (see :func:`stochnet.functional.mim_step`); momentum is contiguous."""
    ops = backend.ops(backend_name, x_adv.device)
    x_adv, grad, x_orig = x_adv.contiguous(), grad.contiguous(), x_orig.contiguous()
    eps, alpha = per_sample_tensor(eps, x_adv), per_sample_tensor(alpha, x_adv)
    if ops is None:
        return mim_step_reference(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi)
    return ops.mim_step(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi)


def random_start(x_orig, eps, norm, lo, hi, philox, backend_name):
    """Dispatch after validation (see :func:`stochnet.functional.random_start`)."""
    ops = backend.ops(backend_name, x_orig.device)
    x_orig = x_orig.contiguous()
    eps = per_sample_tensor(eps, x_orig)
    if ops is None:
        return random_start_reference(x_orig, eps, norm, lo, hi, *seed_pair(philox))
    return ops.random_start(x_orig, eps, norm, lo, hi, philox)
