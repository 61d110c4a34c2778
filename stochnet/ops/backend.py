"""Which implementation runs a fused op: chosen per call, globally, or by the tensor's device.

``cpp``    C++ CPU kernels (default for CPU tensors)
``cuda``   C++/CUDA kernels
``triton`` Triton kernels (default for CUDA tensors; CPU tensors under TRITON_INTERPRET=1)
``torch``  the pure-torch reference that defines every op's semantics

:func:`resolve` validates the choice against the device; :func:`stochnet.ops.library.ops_for`
turns it into the op namespace that runs it.
"""
import contextlib

from .library import ops_for, triton_interpreted

BACKENDS = ("cpp", "cuda", "triton", "torch")
_global_backend = None


def set_backend(name):
    """Use ``name`` for every op call that does not pass ``backend=``; ``None`` restores the default."""
    global _global_backend
    _global_backend = _check(name, "name") if name is not None else None


def get_backend():
    return _global_backend


@contextlib.contextmanager
def use_backend(name):
    """Context manager form of :func:`set_backend`."""
    previous = _global_backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _check(name, argument):
    if name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {BACKENDS}, got {name!r}")
    return name


def resolve(backend, device):
    """The backend to run on ``device`` (a torch.device), validated."""
    name = backend if backend is not None else _global_backend
    if name is None:
        return "cpp" if device.type == "cpu" else "triton"
    _check(name, "backend")
    if name == "cpp" and device.type != "cpu":
        raise ValueError(f"backend 'cpp' runs on CPU tensors, got a tensor on {device}")
    if name == "cuda" and device.type != "cuda":
        raise ValueError(f"backend 'cuda' runs on CUDA tensors, got a tensor on {device}")
    if name == "triton" and device.type == "cpu" and not triton_interpreted():
        raise ValueError("backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 "
                         "set before stochnet is imported")
    return name


def ops(backend, device):
    """The op namespace that runs ``backend`` on ``device``; None for 'torch' (the references)."""
    return ops_for(resolve(backend, device))
