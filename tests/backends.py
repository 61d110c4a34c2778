"""The backends the op tests run on, as extension-cpp's tests pick devices.

One test file per op (test_<op>.py) takes the ``backend`` fixture (conftest.py): every
:data:`AVAILABLE` backend here, each a :class:`Backend` with the device its tensors live on.
``cpp`` runs on the CPU; ``triton`` on a GPU, or on CPU tensors under TRITON_INTERPRET=1 (set by
conftest.py without a GPU); ``cuda`` only where a GPU and stochnet's CUDA kernels are present.
The pure-torch reference is what every backend is compared with, so it is not one of them.
"""
import os
from dataclasses import dataclass

import pytest
import torch


def _cuda_built():
    if not torch.cuda.is_available():
        return False
    from stochnet import _C
    return _C.has_cuda()


CUDA_BUILT = _cuda_built()
TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
requires_cuda_kernels = pytest.mark.skipif(not CUDA_BUILT, reason="needs a CUDA device and stochnet's CUDA kernels")

# Philox (seed, offset) pairs; the last crosses into the counter's high word.
SEEDS = [(0, 0), (123456789, 7), (2**62 + 12345, 2**32 - 3)]


def philox_tensor(seed, offset):
    """(seed, offset) as the noise ops take it: an int64 CPU tensor of shape (2,); a seed of
    2**63 or more as its two's complement (the key's bits)."""
    return torch.tensor([seed - 2**64 if seed >= 2**63 else seed, offset], dtype=torch.int64)


@dataclass(frozen=True)
class Backend:
    name: str     # as ``backend=`` takes it: 'cpp', 'cuda' or 'triton'
    device: str   # where its tensors live

    @property
    def ops(self):
        """The op namespace that runs this backend (torch.ops.stochnet or stochnet_triton)."""
        from stochnet.ops.backend import ops
        return ops(self.name, torch.device(self.device))

    @property
    def interpreted(self):
        """Triton in its CPU interpreter: slow, so tests keep their sizes small there."""
        return self.name == "triton" and self.device == "cpu"

    def __str__(self):
        return self.name


def _available():
    found = [Backend("cpp", "cpu")]
    if torch.cuda.is_available() and not TRITON_INTERPRETED:
        found.append(Backend("triton", "cuda"))
    elif TRITON_INTERPRETED:
        found.append(Backend("triton", "cpu"))
    if CUDA_BUILT:
        found.append(Backend("cuda", "cuda"))
    return found


AVAILABLE = _available()
