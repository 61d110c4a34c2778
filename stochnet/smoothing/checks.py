"""Argument checks shared by the smoothing API and the attacks on smoothed models."""
import math
import numbers

from ..ops.backend import BACKENDS
from ..ops.checks import count as check_count  # noqa: F401  (smoothing's count check)


def check_sigma(value, name="sigma"):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def check_backend(backend):
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    return backend
