"""What the CUDA kernel tests share: the skip without a GPU or without the built CUDA kernels,
and the Philox (seed, offset) pairs they draw noise with."""
import pytest
import torch


def _cuda_built():
    if not torch.cuda.is_available():
        return False
    from stochnet import _C
    return _C.has_cuda()


requires_cuda_kernels = pytest.mark.skipif(not _cuda_built(), reason="needs a CUDA device and stochnet's CUDA kernels")

SEEDS = [(0, 0), (123456789, 7), (2**62 + 12345, 2**32 - 3)]  # the last crosses into the counter's high word


def philox_tensor(seed, offset):
    """(seed, offset) as the noise ops take it: an int64 CPU tensor of shape (2,)."""
    return torch.tensor([seed, offset], dtype=torch.int64)
