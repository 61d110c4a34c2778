"""The fused ops: one schema each, C++ (CPU, CUDA) and Triton implementations, pure-torch references.

See :mod:`stochnet.ops.library` for how an op is declared and how a backend picks it.
"""
import torch

from . import perturb, pgd, smoothing, stoc_relu_ema  # noqa: F401  (register fakes and autograd)
from .backend import BACKENDS, get_backend, set_backend, use_backend
from .philox import draw_seed


def release_cpu_output_pool():
    """Free the idle buffers the C++ ops keep for reuse as large CPU outputs; returns the bytes freed.

    The pool holds at most ``STOCHNET_CPU_POOL_MB`` (default 1024) idle MB; 0 turns it off.
    """
    return torch.ops.stochnet.release_cpu_output_pool()


__all__ = ["BACKENDS", "get_backend", "set_backend", "use_backend", "draw_seed", "release_cpu_output_pool"]
