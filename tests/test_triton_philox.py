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


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_words_match_reference(seed, offset, numel):
    words = triton_philox.philox_words(seed, offset, numel, DEVICE)
    assert words.dtype == torch.int32 and words.shape == (numel,)
    expected = reference.philox_words(seed, offset, numel, DEVICE)
    assert torch.equal(words.to(torch.int64) & 0xFFFFFFFF, expected)


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_uniforms_bit_identical(seed, offset, numel):
    uniforms = triton_philox.philox_uniform(seed, offset, numel, DEVICE)
    expected = reference.philox_uniform(seed, offset, numel, DEVICE)
    assert torch.equal(uniforms, expected)
    assert uniforms.min() >= 0 and uniforms.max() < 1


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_normals_within_ulps(seed, offset, numel):
    normals = triton_philox.philox_normal(seed, offset, numel, DEVICE)
    expected = reference.philox_normal(seed, offset, numel, DEVICE)
    torch.testing.assert_close(normals, expected, rtol=4 * 2**-23, atol=1e-6)


def test_offset_continues_the_stream():
    """Offset k starts the stream 4 * k elements later: calls with successive offsets tile one stream."""
    whole = triton_philox.philox_words(7, 100, 64, DEVICE)
    tail = triton_philox.philox_words(7, 108, 32, DEVICE)
    assert torch.equal(whole[32:], tail)
    assert not torch.equal(whole[:32], tail)


@pytest.mark.parametrize("seed,offset", [(-1, 0), (2**64, 0), (0, -1), (0, 2**63)])
def test_rejects_out_of_range_seed_and_offset(seed, offset):
    with pytest.raises(ValueError, match="seed|offset"):
        triton_philox.philox_words(seed, offset, 4, DEVICE)
