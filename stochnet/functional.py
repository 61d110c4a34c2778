"""The public functional API: validated entry points to the fused ops (checks in stochnet.ops.checks)."""
import math

import torch

from .ops import checks
from .ops import perturb as _perturb
from .ops import pgd as _pgd
from .ops import smoothing as _smoothing
from .ops import stoc_relu_ema as _stoc_relu_ema
from .ops.philox import draw_seed


def _philox(philox, x):
    """The user's (seed, offset) tensor, checked, or a fresh one from the generator of x's device."""
    if philox is None:
        return draw_seed(x.device)
    checks.philox_values(philox, x)
    return philox


def stoc_relu_ema(x, running_sigma, gamma, momentum=0.5, training=True, backend=None, philox=None):
    """ANIS^2's stochastic ReLU with an EMA noise scale, fused in one pass.

    ``y = relu(x + sqrt(gamma) * running_sigma[c] * z)`` with ``z ~ N(0, 1)`` drawn fresh per
    element from the Philox stream. With ``training=True`` the same pass also updates
    ``running_sigma`` in place to ``(1 - momentum) * running_sigma + momentum * std_c(x)``
    (unbiased std over every dim but the channel dim 1); the noise uses the value from before
    the update. With ``training=False`` sigma is left unchanged and the noise stays on.

    Args:
        x: (N, C) or (N, C, *) input; float32/float64 on CPU, also float16/bfloat16 on GPU.
            Contiguous and channels-last inputs are read in place; others are copied.
        running_sigma: (C,) float tensor on x's device, updated in place in training.
        gamma: noise variance multiplier, >= 0.
        momentum: EMA weight of the new batch statistic, in [0, 1].
        backend: 'cpp', 'cuda', 'triton', 'torch' or None for the default of x's device.
        philox: optional int64 (seed, offset) tensor of shape (2,), on the CPU or on x's device;
            when None, drawn by :func:`stochnet.ops.draw_seed` from the generator of x's device, so
            ``torch.manual_seed`` (``torch.cuda.manual_seed`` on a GPU) makes runs reproducible.
    """
    checks.stoc_relu_ema(x, running_sigma, gamma, momentum, training)
    return _stoc_relu_ema.stoc_relu_ema(x, running_sigma, float(gamma), float(momentum), bool(training),
                                        _philox(philox, x), backend)


def perturb(x, theta, backend=None, philox=None):
    """Noise injection ``y = x + theta * z``, ``z ~ N(0, 1)`` drawn per element of every sample.

    Args:
        x: (N, C, *) input; float32/float64 on CPU, also float16/bfloat16 on GPU. Read in
            place when contiguous, else copied.
        theta: noise scale broadcast over the batch: a scalar (0-d or one element), one value
            per channel (C,), or the feature-map shape ``x.shape[1:]``; differentiable (its
            gradient is ``sum over the batch of dy * z`` with z regenerated, not stored).
        backend: 'cpp', 'cuda', 'triton', 'torch' or None for the default of x's device.
        philox: as :func:`stoc_relu_ema`.
    """
    checks.perturb(x, theta)
    return _perturb.perturb(x, theta, _philox(philox, x), backend)


def noisy_repeat(x, m, sigma, backend=None, philox=None):
    """``m`` noisy copies of every sample in one pass: (B, *) -> (B*m, *).

    Copy ``j`` of sample ``b`` (row ``b*m + j``) is ``x[b] + sigma * z`` with ``z ~ N(0, 1)``
    fresh per element from the Philox stream; each input element is read once. Backward:
    ``dx[b] = sum_j dy[b*m + j]``. No clamping: smoothing adds the noise in input space as
    Cohen et al. do.

    Args:
        x: (B, *) input; float32/float64 on CPU, also float16/bfloat16 on GPU; non-contiguous
            inputs are copied.
        m: copies per sample, an integer >= 1.
        sigma: noise std, a finite number >= 0.
        backend: 'cpp', 'cuda', 'triton', 'torch' or None for the default of x's device.
        philox: as :func:`stoc_relu_ema`.
    """
    checks.noisy_repeat(x, m, sigma)
    return _smoothing.noisy_repeat(x, int(m), float(sigma), _philox(philox, x), backend)


def vote(logits, m, mode="prediction", backend=None):
    """The votes of ``m`` copies per sample in one pass: logits (B*m, K) read as (B, m, K) -> (B, K).

    Modes (see :mod:`stochnet.ops.smoothing` for the exact rules):

    - ``"prediction"``: int64 counts of each copy's argmax class (ties as ``torch.argmax``).
    - ``"soft"``: mean of the copies' softmax, in the logits' dtype; differentiable.
    - ``"weighted"``: each copy adds ``2 ** -rank`` to the classes of its 32 largest logits by
      rank (rank 0 the largest); float32 scores (float64 for float64 logits).

    Args:
        logits: (B*m, K) floating tensor (rows of one sample's copies adjacent, as
            :func:`noisy_repeat` lays them out).
        m: copies per sample, an integer >= 1 that divides the number of rows.
        mode: 'prediction', 'soft' or 'weighted'.
        backend: 'cpp', 'cuda', 'triton', 'torch' or None for the default of the logits' device.
    """
    checks.vote(logits, m, mode)
    return _smoothing.vote(logits, int(m), mode, backend)


def pgd_step(x_adv, grad, x_orig, eps, alpha, norm="linf", clip=(0.0, 1.0), backend=None):
    """One PGD step with the projection onto the eps ball around ``x_orig``, fused in one op.

    linf: ``clamp(x_orig + clamp(x_adv + alpha * sign(grad) - x_orig, -eps, eps), lo, hi)``
    (one pass over memory). l2: step ``alpha * grad / ||grad||`` per sample, then the
    per-sample projection of the perturbation onto the L2 ball of radius eps, then the clip.
    A NaN entry of ``grad`` counts as 0: it moves nothing and adds nothing to the norm, so a
    NaN gradient never makes x_adv NaN.

    Args:
        x_adv, grad, x_orig: (B, *) tensors of one shape, device and dtype (float32/float64 on
            CPU, also float16/bfloat16 on GPU); non-contiguous inputs are copied.
        eps, alpha: the budget and step size, >= 0: floats or (B,) tensors (one per sample).
            eps must not exceed the diameter of the clip box: hi - lo (linf),
            (hi - lo) * sqrt(elements per sample) (l2).
        norm: 'linf' or 'l2'.
        clip: (lo, hi) range of valid inputs.
        backend: 'cpp', 'cuda', 'triton', 'torch' or None for the default of x's device.

    Returns a new tensor; the inputs are not modified.
    """
    checks.batched(x_adv, "x_adv")
    checks.like(grad, "grad", x_adv)
    checks.like(x_orig, "x_orig", x_adv)
    checks.norm(norm)
    lo, hi = checks.clip(clip)
    checks.budget(eps, "eps", x_adv, checks.eps_bound(norm, lo, hi, x_adv))
    checks.budget(alpha, "alpha", x_adv)
    return _pgd.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, lo, hi, backend)


def mim_step(x_adv, grad, x_orig, momentum, eps, alpha, mu=1.0, clip=(0.0, 1.0), backend=None):
    """One momentum iterative (MIM / MI-FGSM) step, fused.

    ``momentum <- mu * momentum + grad / max(mean |grad|, 1e-12)`` (mean over each sample)
    is updated IN PLACE; returns the linf step of ``x_adv`` along ``sign(momentum)``,
    projected onto the eps box around ``x_orig`` and clipped to ``clip``. NaN entries of ``grad``
    count as 0, and a NaN momentum entry takes no step (see :func:`pgd_step`).

    Args:
        momentum: contiguous tensor of x_adv's shape, dtype and device (zeros at the start), not
            requiring grad and sharing no memory with x_adv, grad or x_orig.
        mu: the momentum decay factor.
        Other arguments as :func:`pgd_step`.
    """
    checks.batched(x_adv, "x_adv")
    checks.like(grad, "grad", x_adv)
    checks.like(x_orig, "x_orig", x_adv)
    checks.momentum(momentum, x_adv)
    if momentum.requires_grad:
        raise ValueError("momentum must not require grad: it is updated in place and the step is not differentiable")
    if not torch.compiler.is_compiling():
        checks.momentum_unaliased(momentum, x_adv=x_adv, grad=grad, x_orig=x_orig)
    checks.number(mu, "mu")
    if not math.isfinite(mu):
        raise TypeError(f"mu must be a finite number, got {mu!r}")
    lo, hi = checks.clip(clip)
    checks.budget(eps, "eps", x_adv, hi - lo)
    checks.budget(alpha, "alpha", x_adv)
    return _pgd.mim_step(x_adv, grad, x_orig, momentum, eps, alpha, float(mu), lo, hi, backend)


def random_start(x_orig, eps, norm="linf", clip=(0.0, 1.0), backend=None, philox=None):
    """A random point of the eps ball around ``x_orig``, clipped to ``clip``.

    linf: ``x_orig + eps * (2u - 1)``, u uniform in [0, 1) per element. l2: uniform in the L2
    ball: a Gaussian direction per sample at radius ``eps * v ** (1 / d)`` (d elements per
    sample, v uniform). Noise from the Philox stream ``philox`` (see :func:`perturb`).

    Args:
        x_orig: (B, *) tensor; float32/float64 on CPU, also float16/bfloat16 on GPU.
        eps: float or (B,) tensor, >= 0 and at most the diameter of the clip box (see
            :func:`pgd_step`).
        norm, clip, backend: as :func:`pgd_step`.
        philox: as :func:`stoc_relu_ema`.
    """
    checks.batched(x_orig, "x_orig")
    checks.norm(norm)
    lo, hi = checks.clip(clip)
    checks.budget(eps, "eps", x_orig, checks.eps_bound(norm, lo, hi, x_orig))
    return _pgd.random_start(x_orig, eps, norm, lo, hi, _philox(philox, x_orig), backend)


__all__ = ["mim_step", "noisy_repeat", "perturb", "pgd_step", "random_start", "stoc_relu_ema", "vote"]
