"""stochnet: fused kernels for stochastic adversarial defenses in PyTorch."""
import torch  # noqa: F401  (loads libc10 and libtorch before the extension)

from . import ops  # noqa: F401  (loads the extension and registers the ops)
from . import attacks, eval, functional, nn, smoothing
from .ops import BACKENDS, get_backend, release_cpu_output_pool, set_backend, use_backend

__version__ = "0.1.0"
__all__ = ["attacks", "eval", "functional", "nn", "ops", "smoothing", "BACKENDS", "get_backend", "set_backend", "use_backend",
           "release_cpu_output_pool"]
