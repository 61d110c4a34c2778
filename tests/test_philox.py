"""The Philox stream on every backend: words bit for bit against an independent numpy Philox and
the pure-torch reference, uniforms bit for bit, normals within a few ulp, offsets, the philox
tensor read where it lives, statistics of large samples (not under the Triton interpreter).
One backend only: the C++ ops' bad arguments (cpp, cuda), the Triton kernels' counter shift.

The C++ ops write into ``out`` (``stochnet::philox_*_out``); Triton's are stochnet.kernels.philox.
"""
import math

import numpy as np
import pytest
import scipy.stats
import torch

import stochnet  # noqa: F401  (registers torch.ops.stochnet)
from backends import AVAILABLE, SEEDS, philox_tensor, requires_cuda_kernels
from stochnet.ops import philox as reference

# (seed, offset, numel): seeds above 2**32 and up to 2**64 - 1, counters crossing 2**32 and at
# 2**40 or 2**62, numel neither a multiple of 4 nor of a block, and more than one block.
STREAMS = [(0, 0, 1), (123, 0, 1030), (2**35 + 11, 2**32 - 3, 77), (2**63 - 2, 5, 2053), (7, 2**40, 129),
           (2**64 - 1, 2**62, 9)]
ULP = 2.0**-23
KINDS = ["words", "uniform", "normal"]


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


def stream(backend, kind, seed, offset, numel, philox=None):
    """Elements [0, numel) of the stream (seed, offset) of ``kind`` from the backend, on the CPU;
    words as int32 (the uint32 bits). ``philox`` instead of (seed, offset): that tensor."""
    philox = philox_tensor(seed, offset) if philox is None else philox
    if backend.name == "triton":
        from stochnet.kernels import philox as kernels
        out = getattr(kernels, f"philox_{kind}")(philox, numel, backend.device)
    else:
        out = torch.empty(numel, dtype=torch.int32 if kind == "words" else torch.float32, device=backend.device)
        getattr(torch.ops.stochnet, f"philox_{kind}_out")(philox, out)
    assert out.dtype == (torch.int32 if kind == "words" else torch.float32) and out.shape == (numel,)
    return out.cpu()


def cpp_stream(kind, seed, offset, numel):
    return stream(AVAILABLE[0], kind, seed, offset, numel)


def skip_full_key_range(backend, seed):
    if seed >= 2**63 and backend.name != "triton":
        pytest.skip("the C++ ops take seeds below 2**63 (a non-negative int64)")


def within_ulps(actual, expected):
    """|actual - expected| <= 4 float32 ulp of max(|expected|, 1), elementwise."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs() / expected.abs().clamp_min(1.0)).max() <= 4 * ULP


def only(*names):
    """Run a test on the available backends of ``names`` only."""
    return pytest.mark.parametrize("backend", [b for b in AVAILABLE if b.name in names], ids=str)


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_words_bit_for_bit(backend, seed, offset, numel):
    skip_full_key_range(backend, seed)
    words = stream(backend, "words", seed, offset, numel).long() & 0xFFFFFFFF
    assert np.array_equal(words.numpy(), numpy_philox_words(seed, offset, numel))
    assert torch.equal(words, reference.philox_words(seed, offset, numel))


def test_known_answer(backend):
    # Philox4x32-10 known-answer vector of the Random123 distribution: counter 0, key 0.
    words = numpy_philox_words(0, 0, 4)
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert torch.equal(stream(backend, "words", 0, 0, 4).long() & 0xFFFFFFFF, torch.from_numpy(words))


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_uniforms_bit_for_bit(backend, seed, offset, numel):
    skip_full_key_range(backend, seed)
    uniforms = stream(backend, "uniform", seed, offset, numel)
    assert torch.equal(uniforms, reference.philox_uniform(seed, offset, numel))
    assert uniforms.min() >= 0 and uniforms.max() < 1


@pytest.mark.parametrize("seed,offset,numel", STREAMS)
def test_normals_within_few_ulp(backend, seed, offset, numel):
    skip_full_key_range(backend, seed)
    normals = stream(backend, "normal", seed, offset, numel)
    assert within_ulps(normals, reference.philox_normal(seed, offset, numel))
    if backend.name != "cpp" and seed < 2**63:  # and against the C++ CPU kernel itself
        assert within_ulps(normals, cpp_stream("normal", seed, offset, numel))


def test_offset_continues_the_stream(backend):
    """Offset k starts the stream 4 * k elements later: calls with successive offsets tile one stream."""
    whole = stream(backend, "normal", 5, 10, 4000)
    assert torch.equal(whole[1000:], stream(backend, "normal", 5, 10 + 250, 3000))
    words = stream(backend, "words", 7, 100, 64)
    tail = stream(backend, "words", 7, 108, 32)
    assert torch.equal(words[32:], tail)
    assert not torch.equal(words[:32], tail)


def test_philox_on_the_device_is_read_by_the_kernel(backend):
    """The kernels load (seed, offset) themselves: the tensor may already live on the data's device."""
    seed, offset = 2**35 + 11, 2**32 - 3
    on_device = philox_tensor(seed, offset).to(backend.device)
    for kind in KINDS:
        assert torch.equal(stream(backend, kind, None, None, 77, philox=on_device),
                           stream(backend, kind, seed, offset, 77))


def test_normal_statistics(backend):
    if backend.interpreted:
        pytest.skip("too large for the Triton interpreter; its normals are the reference's")
    normals = stream(backend, "normal", 2024, 0, 1 << 20).double()
    assert abs(normals.mean().item()) < 5 / 1024  # 5 standard errors
    assert abs(normals.std().item() - 1) < 5 * (0.5 / (1 << 20)) ** 0.5 * 2
    assert scipy.stats.kstest(normals[: 1 << 16].numpy(), "norm").pvalue > 1e-4
    # Pairs from one Box-Muller draw are uncorrelated.
    pairs = normals.view(-1, 2)
    assert abs(torch.corrcoef(pairs.T)[0, 1].item()) < 5 / 724


def test_uniform_statistics(backend):
    if backend.interpreted:
        pytest.skip("too large for the Triton interpreter; its uniforms are the reference's")
    uniforms = stream(backend, "uniform", 99, 0, 1 << 18).double().numpy()
    assert scipy.stats.kstest(uniforms, "uniform").pvalue > 1e-4


@only("triton")
def test_triton_shift_moves_the_counter_inside_the_kernel(backend):
    """shift k reads the stream at offset + k, from the same philox tensor."""
    from stochnet.kernels import philox as kernels
    shifted = kernels.philox_uniform(philox_tensor(7, 100), 9, backend.device, shift=2**32)
    assert torch.equal(shifted.cpu(), reference.philox_uniform(7, 100 + 2**32, 9))


@only("cpp", "cuda")
def test_bad_output_tensor(backend):
    with pytest.raises(RuntimeError, match="out must be a contiguous"):
        torch.ops.stochnet.philox_normal_out(torch.tensor([0, 0]),
                                             torch.empty(8, dtype=torch.float64, device=backend.device))


@only("cpp", "cuda")
@pytest.mark.parametrize("kind", KINDS)
def test_bad_philox_tensor(backend, kind):
    op = getattr(torch.ops.stochnet, f"philox_{kind}_out")
    out = torch.empty(8, dtype=torch.int32 if kind == "words" else torch.float32, device=backend.device)
    for philox in (torch.tensor([0.0, 0.0]), torch.tensor([0, 0], dtype=torch.int32), torch.tensor([0, 0, 0]),
                   torch.tensor(0)):
        with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
            op(philox, out)
    with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0, got \(-1, 0\)"):
        op(torch.tensor([-1, 0]), out)


# ---- the CUDA Philox ops (csrc/cuda/philox*.cu) alone: larger streams and misaligned outputs ---------

def misaligned(t):
    """A copy of t whose storage starts one element past a 16-byte boundary."""
    out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
    return out.copy_(t)


def _as_int32(words):
    """int64 words in [0, 2**32) from the reference, as the int32 bit patterns the op stores."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


@requires_cuda_kernels
@pytest.mark.parametrize("numel", [1, 3, 4, 5, 8, 1023, 4097, 100_003])
@pytest.mark.parametrize("seed,offset", SEEDS)
def test_cuda_philox_words_bit_exact(numel, seed, offset):
    out = torch.empty(numel, dtype=torch.int32, device="cuda")
    torch.ops.stochnet.philox_words_out(philox_tensor(seed, offset), out)
    assert torch.equal(out.cpu(), _as_int32(reference.philox_words(seed, offset, numel)))


@requires_cuda_kernels
def test_cuda_philox_misaligned_and_shaped_out():
    out = misaligned(torch.zeros(3, 7, dtype=torch.int32, device="cuda"))
    torch.ops.stochnet.philox_words_out(philox_tensor(99, 5), out)
    assert torch.equal(out.cpu().view(-1), _as_int32(reference.philox_words(99, 5, 21)))
    out = misaligned(torch.zeros(1001, dtype=torch.float32, device="cuda"))
    torch.ops.stochnet.philox_normal_out(philox_tensor(3, 11), out)
    torch.testing.assert_close(out.cpu(), reference.philox_normal(3, 11, 1001), rtol=4 * 2**-23, atol=1e-6)


@requires_cuda_kernels
@pytest.mark.parametrize("numel", [1, 3, 4, 6, 1023, 100_003])
@pytest.mark.parametrize("seed,offset", SEEDS)
def test_cuda_philox_uniform_bit_exact(numel, seed, offset):
    out = torch.empty(numel, dtype=torch.float32, device="cuda")
    torch.ops.stochnet.philox_uniform_out(philox_tensor(seed, offset), out)
    assert torch.equal(out.cpu(), reference.philox_uniform(seed, offset, numel))
    assert out.min().item() >= 0 and out.max().item() < 1


@requires_cuda_kernels
@pytest.mark.parametrize("numel", [1, 2, 3, 4, 7, 1023, 100_003])
@pytest.mark.parametrize("seed,offset", SEEDS)
def test_cuda_philox_normal_within_ulps(numel, seed, offset):
    out = torch.empty(numel, dtype=torch.float32, device="cuda")
    torch.ops.stochnet.philox_normal_out(philox_tensor(seed, offset), out)
    torch.testing.assert_close(out.cpu(), reference.philox_normal(seed, offset, numel), rtol=4 * 2**-23, atol=1e-6)


@requires_cuda_kernels
def test_cuda_philox_normal_statistics():
    out = torch.empty(1 << 20, dtype=torch.float32, device="cuda")
    torch.ops.stochnet.philox_normal_out(philox_tensor(2024, 0), out)
    assert abs(out.mean().item()) < 5e-3
    assert abs(out.std().item() - 1) < 5e-3
    # Kolmogorov-Smirnov distance against N(0, 1), 1.63 / sqrt(n) is the 1% critical value.
    z = out.double().sort().values
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    grid = torch.arange(1, z.numel() + 1, dtype=torch.float64, device="cuda") / z.numel()
    assert (cdf - grid).abs().max().item() < 1.63 / math.sqrt(z.numel())


@requires_cuda_kernels
def test_cuda_philox_out_rejects_bad_out():
    for op, out in [("philox_words_out", torch.empty(4, dtype=torch.float32, device="cuda")),
                    ("philox_uniform_out", torch.empty(4, dtype=torch.float64, device="cuda")),
                    ("philox_normal_out", torch.empty(4, 4, device="cuda").t())]:
        with pytest.raises(RuntimeError, match="out must be"):
            getattr(torch.ops.stochnet, op)(philox_tensor(0, 0), out)
