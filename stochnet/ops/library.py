"""Where the ops live, and how a backend picks them.

Every op has one schema: ``stochnet::<op>`` (csrc/ops.cpp) with C++ implementations that the
dispatcher picks by device (CPU, CUDA), and the same schema as ``stochnet_triton::<op>``
(kernels/<op>.py). Each op module (stochnet/ops/<op>.py) registers its fake implementation and
autograd once per namespace through :func:`for_each_namespace`; the Triton namespace is loaded
(with triton itself) on first use. Choosing a backend picks a namespace: :func:`ops_for`.
"""
import importlib
import os

import torch

from stochnet import _C  # noqa: F401  (defines torch.ops.stochnet)

CPP, TRITON = "stochnet", "stochnet_triton"
TRITON_MODULES = ("perturb", "smoothing", "pgd", "stoc_relu_ema")
_registrations = []
_triton_loaded = False


def triton_interpreted():
    return os.environ.get("TRITON_INTERPRET") == "1"


def for_each_namespace(register):
    """Decorator: ``register(namespace)`` now for the C++ ops, and for the Triton ops once loaded."""
    _registrations.append(register)
    register(CPP)
    if _triton_loaded:
        register(TRITON)
    return register


def triton_op(qualname, mutates_args=()):
    """Declare a Triton op: ``torch.library.triton_op``, so that torch.compile sees the kernels.

    Under TRITON_INTERPRET=1 (Triton on CPU tensors, for tests) it is an opaque custom op instead:
    compile cannot trace the interpreter. The schema is the C++ op's of the same name
    (csrc/ops.cpp), so that both namespaces agree by construction.
    """
    name = qualname.split("::")[1]
    declared = str(getattr(torch.ops.stochnet, name).default._schema)
    schema = declared[declared.index("("):]
    define = torch.library.custom_op if triton_interpreted() else torch.library.triton_op
    return define(qualname, mutates_args=mutates_args, schema=schema)


def triton_ops():
    """``torch.ops.stochnet_triton``, its ops defined and registered on first use."""
    global _triton_loaded
    if not _triton_loaded:
        for name in TRITON_MODULES:
            importlib.import_module(f"stochnet.kernels.{name}")
        _triton_loaded = True
        for register in _registrations:
            register(TRITON)
    return torch.ops.stochnet_triton


def ops_for(backend):
    """The op namespace of a resolved backend name; None for 'torch' (the references)."""
    if backend in ("cpp", "cuda"):
        return torch.ops.stochnet
    if backend == "triton":
        return triton_ops()
    return None
