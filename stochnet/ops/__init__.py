"""torch.library custom ops over the C++, CUDA and Triton kernels, with pure-torch references."""
import torch

from stochnet import _C  # noqa: F401  (registers the C++ ops in torch.ops.stochnet)

from . import fake_registrations  # noqa: F401
from .backend import BACKENDS, get_backend, set_backend, use_backend
from .philox import draw_seed


def release_cpu_output_pool():
    """Free the idle buffers the C++ ops keep for reuse as large CPU outputs; returns the bytes freed.

    The pool holds at most ``STOCHNET_CPU_POOL_MB`` (default 1024) idle MB; 0 turns it off.
    """
    return torch.ops.stochnet.release_cpu_output_pool()


__all__ = ["BACKENDS", "get_backend", "set_backend", "use_backend", "draw_seed", "release_cpu_output_pool"]
