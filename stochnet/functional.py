"""The public functional API: validated entry points to the fused ops."""
import torch

from .ops import perturb as _perturb
from .ops import stoc_relu_ema as _stoc_relu_ema
from .ops.philox import draw_seed

_CPU_DTYPES = (torch.float32, torch.float64)
_GPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_floating(x, name):
    allowed = _CPU_DTYPES if x.device.type == "cpu" else _GPU_DTYPES
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must have dtype {names} on {x.device.type}, got {x.dtype}")


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
    if not (gamma >= 0):
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if not (0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if training and x.numel() // x.shape[1] < 2:
        raise ValueError(f"x must have more than one value per channel in training, got shape {tuple(x.shape)}")
    if philox is None:
        philox = draw_seed()
    return _stoc_relu_ema.stoc_relu_ema(x, running_sigma, float(gamma), float(momentum), bool(training),
                                        philox, backend)


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
    if philox is None:
        philox = draw_seed()
    return _perturb.perturb(x, theta, philox, backend)


__all__ = ["perturb", "stoc_relu_ema"]
