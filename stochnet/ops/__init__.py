"""torch.library custom ops over the C++, CUDA and Triton kernels, with pure-torch references."""
from stochnet import _C  # noqa: F401  (registers the C++ ops in torch.ops.stochnet)

from . import fake_registrations  # noqa: F401
from .backend import BACKENDS, get_backend, set_backend, use_backend
from .philox import draw_seed

__all__ = ["BACKENDS", "get_backend", "set_backend", "use_backend", "draw_seed"]
