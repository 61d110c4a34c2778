"""The C++ Philox stream: bit for bit against an independent numpy Philox, the torch reference
and the Triton kernel; normals within a few ulp; statistics of large samples."""
import os

import numpy as np
import pytest
import scipy.stats
import torch

import stochnet  # noqa: F401  (registers torch.ops.stochnet)
from stochnet.ops import philox as reference

TRITON = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
STREAMS = [(0, 0, 1), (123, 0, 1030), (2**35 + 11, 2**32 - 3, 77), (2**63 - 2, 5, 2053), (7, 2**40, 129)]
ULP = 2.0**-23


def numpy_philox_words(seed, offset, numel):
    """Philox4x32-10 (Salmon et al.) written independently with numpy uint64 arithmetic."""
    mask = np.uint64(0xFFFFFFFF)
    counters = np.uint64(offset) + np.arange((numel + 3) // 4, dtype=np.uint64)
    c = [counters & mask, counters >> np.uint64(32), np.zeros_like(counters), np.zeros_like(counters)]
    key = [np.uint64(seed) & mask, np.uint64(seed) >> np.uint64(32)]
    for _ in range(10):
        product_b = np.uint64(0xCD9E8D57) * c[2]
        product_a = np.uint64(0xD2511F53) * c[0]
        c = [(product_b >> np.uint64(32)) ^ c[1] ^ key[0], product_b & mask,
             (product_a >> np.uint64(32)) ^ c[3] ^ key[1], product_a & mask]
        key = [(key[0] + np.uint64(0x9E3779B9)) & mask, (key[1] + np.uint64(0xBB67AE85)) & mask]
    return np.stack(c, axis=1).reshape(-1)[:numel].astype(np.int64)


def cpp(op, seed, offset, numel, dtype):
    out = torch.empty(numel, dtype=dtype)
    getattr(torch.ops.stochnet, op)(torch.tensor([seed, offset]), out)
    return out


def triton_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_words_bit_for_bit(seed, offset, numel):
    words = cpp("philox_words_out", seed, offset, numel, torch.int32).long() & 0xFFFFFFFF
    assert np.array_equal(words.numpy(), numpy_philox_words(seed, offset, numel))
    assert torch.equal(words, reference.philox_words(seed, offset, numel))
    if TRITON:
        from stochnet.kernels import philox as triton_philox
        triton_words = triton_philox.philox_words(torch.tensor([seed, offset]), numel, triton_device())
        assert torch.equal(triton_words.cpu().long() & 0xFFFFFFFF, words)


def test_known_answer():
    # Philox4x32-10 known-answer vector of the Random123 distribution: counter 0, key 0.
    words = numpy_philox_words(0, 0, 4)
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert torch.equal(cpp("philox_words_out", 0, 0, 4, torch.int32).long() & 0xFFFFFFFF, torch.from_numpy(words))


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_uniforms_bit_for_bit(seed, offset, numel):
    uniforms = cpp("philox_uniform_out", seed, offset, numel, torch.float32)
    assert torch.equal(uniforms, reference.philox_uniform(seed, offset, numel))
    assert uniforms.min() >= 0 and uniforms.max() < 1


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_normals_within_few_ulp(seed, offset, numel):
    normals = cpp("philox_normal_out", seed, offset, numel, torch.float32)
    expected = reference.philox_normal(seed, offset, numel).double()
    error = (normals.double() - expected).abs() / expected.abs().clamp_min(1.0)
    assert error.max() <= 4 * ULP
    if TRITON:
        from stochnet.kernels import philox as triton_philox
        triton_normals = triton_philox.philox_normal(torch.tensor([seed, offset]), numel, triton_device())
        triton_normals = triton_normals.cpu().double()
        assert ((triton_normals - normals.double()).abs() / normals.double().abs().clamp_min(1.0)).max() <= 4 * ULP


def test_offset_continues_the_stream():
    whole = cpp("philox_normal_out", 5, 10, 4000, torch.float32)
    tail = cpp("philox_normal_out", 5, 10 + 250, 3000, torch.float32)
    assert torch.equal(whole[1000:], tail)


def test_normal_statistics():
    normals = cpp("philox_normal_out", 2024, 0, 1 << 20, torch.float32).double()
    assert abs(normals.mean().item()) < 5 / 1024  # 5 standard errors
    assert abs(normals.std().item() - 1) < 5 * (0.5 / (1 << 20)) ** 0.5 * 2
    assert scipy.stats.kstest(normals[: 1 << 16].numpy(), "norm").pvalue > 1e-4
    # Pairs from one Box-Muller draw are uncorrelated.
    pairs = normals.view(-1, 2)
    assert abs(torch.corrcoef(pairs.T)[0, 1].item()) < 5 / 724


def test_uniform_statistics():
    uniforms = cpp("philox_uniform_out", 99, 0, 1 << 18, torch.float32).double().numpy()
    assert scipy.stats.kstest(uniforms, "uniform").pvalue > 1e-4


def test_bad_output_tensor():
    with pytest.raises(RuntimeError, match="out must be a contiguous"):
        torch.ops.stochnet.philox_normal_out(torch.tensor([0, 0]), torch.empty(8, dtype=torch.float64))


@pytest.mark.parametrize("op", ["philox_words_out", "philox_uniform_out", "philox_normal_out"])
def test_bad_philox_tensor(op):
    out = torch.empty(8, dtype=torch.int32 if op == "philox_words_out" else torch.float32)
    for philox in (torch.tensor([0.0, 0.0]), torch.tensor([0, 0], dtype=torch.int32), torch.tensor([0, 0, 0]),
                   torch.tensor(0)):
        with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
            getattr(torch.ops.stochnet, op)(philox, out)
    with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0, got \(-1, 0\)"):
        getattr(torch.ops.stochnet, op)(torch.tensor([-1, 0]), out)
