"""The public functional API: validated entry points to the fused ops."""
import math

import torch

from .ops import perturb as _perturb
from .ops import pgd as _pgd
from .ops import smoothing as _smoothing
from .ops import stoc_relu_ema as _stoc_relu_ema
from .ops.philox import check_philox, draw_seed

_CPU_DTYPES = (torch.float32, torch.float64)
_GPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_floating(x, name):
    allowed = _CPU_DTYPES if x.device.type == "cpu" else _GPU_DTYPES
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must have dtype {names} on {x.device.type}, got {x.dtype}")


def _philox(philox):
    """The user's (seed, offset) tensor, checked, or a fresh one from torch's default generator."""
    if philox is None:
        return draw_seed()
    check_philox(philox)
    return philox


def _check_number(value, name):
    """Not a tensor: the op takes it as a Python number, a tensor would silently lose its gradient."""
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a number, not a tensor: the op is not differentiable in it")


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
        philox: optional int64 (seed, offset) tensor of shape (2,); drawn from torch's
            default generator when None, so ``torch.manual_seed`` makes runs reproducible.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(running_sigma, torch.Tensor):
        raise TypeError(f"running_sigma must be a torch.Tensor, got {type(running_sigma).__name__}")
    _check_floating(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (N, C) or (N, C, *), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    if running_sigma.device != x.device:
        raise ValueError(f"running_sigma is on {running_sigma.device} but x is on {x.device}")
    if running_sigma.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"running_sigma must be float32 or x's dtype {x.dtype}, got {running_sigma.dtype}")
    if running_sigma.shape != (x.shape[1],):
        raise ValueError(f"running_sigma must have shape ({x.shape[1]},) for x with {x.shape[1]} "
                         f"channels, got {tuple(running_sigma.shape)}")
    if not running_sigma.is_contiguous():
        raise ValueError(f"running_sigma must be contiguous: it is updated in place, "
                         f"got strides {running_sigma.stride()}")
    _check_number(gamma, "gamma")
    _check_number(momentum, "momentum")
    if not (gamma >= 0):
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if not (0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if training and x.numel() // x.shape[1] < 2:
        raise ValueError(f"x must have more than one value per channel in training, got shape {tuple(x.shape)}")
    return _stoc_relu_ema.stoc_relu_ema(x, running_sigma, float(gamma), float(momentum), bool(training),
                                        _philox(philox), backend)


def perturb(x, theta, backend=None, philox=None):
    """Noise injection ``y = x + theta * z``, ``z ~ N(0, 1)`` drawn per element of every sample.

    Args:
        x: (N, C, *) input; float32/float64 on CPU, also float16/bfloat16 on GPU. Read in
            place when contiguous, else copied.
        theta: noise scale broadcast over the batch: a scalar (0-d or one element), one value
            per channel (C,), or the feature-map shape ``x.shape[1:]``; differentiable (its
            gradient is ``sum over the batch of dy * z`` with z regenerated, not stored).
        backend: 'cpp', 'cuda', 'triton', 'torch' or None for the default of x's device.
        philox: optional int64 (seed, offset) tensor of shape (2,); drawn from torch's default
            generator when None.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(theta, torch.Tensor):
        raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
    _check_floating(x, "x")
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty tensor of shape (N, C, *), got shape {tuple(x.shape)}")
    if theta.device != x.device:
        raise ValueError(f"theta is on {theta.device} but x is on {x.device}")
    if theta.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"theta must have x's dtype {x.dtype} or float32, got {theta.dtype}")
    scalar = theta.numel() == 1
    per_channel = theta.dim() == 1 and theta.shape[0] == x.shape[1]
    if not (scalar or per_channel or tuple(theta.shape) == tuple(x.shape[1:])):
        raise ValueError(f"theta must be a scalar, of shape ({x.shape[1]},) or of the feature-map shape "
                         f"{tuple(x.shape[1:])} to broadcast over x of shape {tuple(x.shape)}, "
                         f"got {tuple(theta.shape)}")
    return _perturb.perturb(x, theta, _philox(philox), backend)


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


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
        philox: optional int64 (seed, offset) tensor of shape (2,); drawn from torch's default
            generator when None.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    _check_floating(x, "x")
    if x.dim() < 1 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty tensor of shape (B, *), got shape {tuple(x.shape)}")
    _check_count(m, "m")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    return _smoothing.noisy_repeat(x, m, float(sigma), _philox(philox), backend)


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
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    _check_floating(logits, "logits")
    if logits.dim() != 2 or logits.numel() == 0:
        raise ValueError(f"logits must be a non-empty (B*m, K) tensor, got shape {tuple(logits.shape)}")
    _check_count(m, "m")
    if logits.shape[0] % m:
        raise ValueError(f"logits has {logits.shape[0]} rows, not divisible by m={m}: rows must be B*m")
    if mode not in _smoothing.VOTE_MODES:
        raise ValueError(f"mode must be one of {_smoothing.VOTE_MODES}, got {mode!r}")
    return _smoothing.vote(logits, m, mode, backend)


def _check_pgd_tensor(t, name, like=None, like_name="x_adv"):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if like is None:
        _check_floating(t, name)
        if t.dim() < 1 or t.numel() == 0:
            raise ValueError(f"{name} must be a non-empty tensor of shape (B, *), got shape {tuple(t.shape)}")
        return
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but {like_name} is on {like.device}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name} must have {like_name}'s dtype {like.dtype}, got {t.dtype}")
    if t.shape != like.shape:
        raise ValueError(f"{name} must have {like_name}'s shape {tuple(like.shape)}, got {tuple(t.shape)}")


def _check_clip(clip):
    if not (isinstance(clip, (tuple, list)) and len(clip) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in clip)):
        raise TypeError(f"clip must be a (lo, hi) pair of numbers, got {clip!r}")
    lo, hi = float(clip[0]), float(clip[1])
    if not lo < hi:
        raise ValueError(f"clip must have lo < hi, got {clip!r}")
    return lo, hi


def _check_budget(value, name, x, clip_range=None):
    """eps / alpha: a number or a (B,) floating tensor on x's device, >= 0 (and <= clip_range)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        if value.shape != (x.shape[0],):
            raise ValueError(f"{name} must be a number or a tensor of shape ({x.shape[0]},) (one per sample), "
                             f"got shape {tuple(value.shape)}")
        if value.device != x.device:
            raise ValueError(f"{name} is on {value.device} but the input is on {x.device}")
        low, high = value.min().item(), value.max().item()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        low = high = float(value)
    else:
        raise TypeError(f"{name} must be a float or a tensor of shape ({x.shape[0]},), got {type(value).__name__}")
    if not low >= 0:
        raise ValueError(f"{name} must be >= 0, got {low}")
    if clip_range is not None and high > clip_range:
        raise ValueError(f"{name} must not exceed the clip range ({clip_range}: hi - lo for linf, "
                         f"(hi - lo) * sqrt(elements per sample) for l2), got {high}")


def _check_norm(norm):
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


def _eps_bound(norm, lo, hi, x):
    """The largest meaningful eps: the diameter of the clip box in the attack's norm."""
    return (hi - lo) if norm == "linf" else (hi - lo) * math.sqrt(x[0].numel())


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
    _check_pgd_tensor(x_adv, "x_adv")
    _check_pgd_tensor(grad, "grad", x_adv)
    _check_pgd_tensor(x_orig, "x_orig", x_adv)
    _check_norm(norm)
    lo, hi = _check_clip(clip)
    _check_budget(eps, "eps", x_adv, _eps_bound(norm, lo, hi, x_adv))
    _check_budget(alpha, "alpha", x_adv)
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
    _check_pgd_tensor(x_adv, "x_adv")
    _check_pgd_tensor(grad, "grad", x_adv)
    _check_pgd_tensor(x_orig, "x_orig", x_adv)
    _check_pgd_tensor(momentum, "momentum", x_adv)
    if not momentum.is_contiguous():
        raise ValueError("momentum must be contiguous: it is updated in place")
    if momentum.requires_grad:
        raise ValueError("momentum must not require grad: it is updated in place and the step is not differentiable")
    if not (isinstance(mu, (int, float)) and not isinstance(mu, bool) and math.isfinite(mu)):
        raise TypeError(f"mu must be a finite number, got {mu!r}")
    lo, hi = _check_clip(clip)
    _check_budget(eps, "eps", x_adv, hi - lo)
    _check_budget(alpha, "alpha", x_adv)
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
        philox: optional int64 (seed, offset) tensor of shape (2,); drawn from torch's default
            generator when None, so ``torch.manual_seed`` makes starts reproducible.
    """
    _check_pgd_tensor(x_orig, "x_orig")
    _check_norm(norm)
    lo, hi = _check_clip(clip)
    _check_budget(eps, "eps", x_orig, _eps_bound(norm, lo, hi, x_orig))
    return _pgd.random_start(x_orig, eps, norm, lo, hi, _philox(philox), backend)


__all__ = ["mim_step", "noisy_repeat", "perturb", "pgd_step", "random_start", "stoc_relu_ema", "vote"]
