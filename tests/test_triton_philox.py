"""The Triton Philox stream against the pure-torch reference, element by element."""
import os

import pytest
import torch

RUNNABLE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not RUNNABLE, reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1")

from stochnet.kernels import philox as triton_philox  # noqa: E402
from stochnet.ops import philox as reference  # noqa: E402

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

# (seed, offset, numel): seeds above 2**32 and 2**63, counters crossing 2**32, numel neither a
# multiple of 4 nor of the block size, and more than one block.
STREAMS = [
    (0, 0, 1),
    (123, 0, 1030),
    (2**35 + 11, 2**32 - 3, 77),
    (2**63 - 2, 5, 2053),
    (2**64 - 1, 2**62, 9),
]


def philox(seed, offset):
    """The (2,) int64 tensor of (seed, offset): a seed of 2**63 or more as its two's complement,
    whose bits the kernels take as the 64-bit key."""
    return torch.tensor([seed - 2**64 if seed >= 2**63 else seed, offset], dtype=torch.int64)


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_words_match_reference(seed, offset, numel):
    words = triton_philox.philox_words(philox(seed, offset), numel, DEVICE)
    assert words.dtype == torch.int32 and words.shape == (numel,)
    expected = reference.philox_words(seed, offset, numel, DEVICE)
    assert torch.equal(words.to(torch.int64) & 0xFFFFFFFF, expected)


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_uniforms_bit_identical(seed, offset, numel):
    uniforms = triton_philox.philox_uniform(philox(seed, offset), numel, DEVICE)
    expected = reference.philox_uniform(seed, offset, numel, DEVICE)
    assert torch.equal(uniforms, expected)
    assert uniforms.min() >= 0 and uniforms.max() < 1


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_normals_within_ulps(seed, offset, numel):
    normals = triton_philox.philox_normal(philox(seed, offset), numel, DEVICE)
    expected = reference.philox_normal(seed, offset, numel, DEVICE)
    torch.testing.assert_close(normals, expected, rtol=4 * 2**-23, atol=1e-6)


def test_offset_continues_the_stream():
    """Offset k starts the stream 4 * k elements later: calls with successive offsets tile one stream."""
    whole = triton_philox.philox_words(philox(7, 100), 64, DEVICE)
    tail = triton_philox.philox_words(philox(7, 108), 32, DEVICE)
    assert torch.equal(whole[32:], tail)
    assert not torch.equal(whole[:32], tail)


def test_shift_moves_the_counter_inside_the_kernel():
    """shift k reads the stream at offset + k, from the same philox tensor."""
    shifted = triton_philox.philox_uniform(philox(7, 100), 9, DEVICE, shift=2**32)
    assert torch.equal(shifted, reference.philox_uniform(7, 100 + 2**32, 9, DEVICE))


def test_philox_on_the_device_is_read_by_the_kernel():
    """The kernels load (seed, offset) themselves: the tensor may already live on the data's device."""
    words = triton_philox.philox_words(philox(2**35 + 11, 2**32 - 3).to(DEVICE), 77, DEVICE)
    assert torch.equal(words.to(torch.int64) & 0xFFFFFFFF, reference.philox_words(2**35 + 11, 2**32 - 3, 77, DEVICE))
