"""Triton noisy_repeat / vote / vote_backward ops against the pure-torch reference and the C++ CPU ops."""
import os

import pytest
import torch

RUNNABLE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not RUNNABLE, reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1")

from torch._library.custom_ops import OPDEFS  # noqa: E402

from stochnet import functional  # noqa: E402
from stochnet.kernels import smoothing as kernels  # noqa: E402
from stochnet.ops.checks import VOTE_MODES  # noqa: E402
from stochnet.ops.library import triton_ops  # noqa: E402
from stochnet.ops.smoothing import reference_noisy_repeat, reference_vote, reference_vote_soft_grad  # noqa: E402

ops = triton_ops()
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
SEED, OFFSET = 2**35 + 11, 2**32 - 5  # the counter crosses 2**32 inside the call
PHILOX = torch.tensor([SEED, OFFSET])
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
MODES = pytest.mark.parametrize("mode", VOTE_MODES)
# Rows of the stream start off a Philox counter when the sample size is not a multiple of 4.
# (sample shape, m) pairs.
SAMPLE_CASES = [((3, 4, 5), 6), ((2, 3, 3), 3), ((5, 8), 1), ((5,), 3), ((1, 2, 2, 2), 2)]
# (B, m, K): odd sizes, one copy, one class, K past the 32 weighted ranks, K = 1000.
VOTE_SHAPES = [(3, 5, 7), (1, 1, 1), (4, 1, 3), (2, 3, 33), (2, 2, 1000)]


def _philox(seed, offset):
    """(seed, offset) as the ops take it; a seed of 2**63 or more as its two's complement (the key's bits)."""
    return torch.tensor([seed - 2**64 if seed >= 2**63 else seed, offset])


def _tensor(shape, dtype, salt=0):
    generator = torch.Generator().manual_seed(sum(shape) + salt)
    return torch.randn(shape, generator=generator, dtype=dtype).to(DEVICE)


def _tied_logits(rows, classes, dtype, salt=0):
    """Small integers (many ties), with NaN, +-inf and -0.0 sprinkled in; rows of one NaN / all -inf."""
    generator = torch.Generator().manual_seed(rows * classes + salt)
    logits = torch.randint(-2, 3, (rows, classes), generator=generator).to(dtype)
    special = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0], dtype=dtype)
    where = torch.rand(rows, classes, generator=generator) < 0.15
    picks = torch.randint(0, 4, (rows, classes), generator=generator)
    logits = torch.where(where, special[picks], logits)
    logits[0] = float("-inf")
    logits[1, classes // 2] = float("nan")
    return logits.to(DEVICE)


def _assert_votes_equal(votes, expected, mode):
    assert votes.dtype == expected.dtype and votes.shape == expected.shape
    if mode == "soft":
        torch.testing.assert_close(votes, expected, equal_nan=True)
    else:
        # Counts are integers and scores sums of powers of two: only the summation order may differ.
        torch.testing.assert_close(votes, expected, rtol=1e-6, atol=0)


@DTYPES
@pytest.mark.parametrize("shape, m", SAMPLE_CASES, ids=str)
def test_noisy_repeat_matches_reference(shape, m, dtype):
    x = _tensor(shape, dtype)
    y = ops.noisy_repeat(x, m, 0.25, PHILOX)
    assert y.dtype == dtype and y.shape == (shape[0] * m,) + shape[1:] and y.is_contiguous()
    # The stream is the same; only the libm of the normals may differ, by a few ulps.
    torch.testing.assert_close(y, reference_noisy_repeat(x, m, 0.25, SEED, OFFSET), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, m, tile, target_programs", [
    ((2, 21), 3, 8, 1024),  # 3 column blocks per sample, unaligned rows, one run per copy
    ((2, 20), 3, 8, 1),     # aligned rows, one program loops over all copies of its block
    ((2, 8), 7, 32, 1024),  # steps of 4 copies, 2 runs, the last one partly past m
], ids=str)
def test_noisy_repeat_with_column_blocks_and_split_copies(shape, m, tile, target_programs, monkeypatch):
    monkeypatch.setattr(kernels, "_TILE", tile)
    monkeypatch.setattr(kernels, "_TARGET_PROGRAMS", target_programs)
    x = _tensor(shape, torch.float64)
    torch.testing.assert_close(ops.noisy_repeat(x, m, 1.5, PHILOX),
                               reference_noisy_repeat(x, m, 1.5, SEED, OFFSET), rtol=1e-5, atol=1e-6)


@DTYPES
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 3)], ids=str)
def test_noisy_repeat_with_zero_sigma_is_exact_copies(shape, dtype):
    x = _tensor(shape, dtype)
    assert torch.equal(ops.noisy_repeat(x, 5, 0.0, PHILOX), x.repeat_interleave(5, dim=0))


def test_noisy_repeat_same_seed_same_noise_other_offset_other_noise():
    x = _tensor((3, 2, 6), torch.float32)
    first = ops.noisy_repeat(x, 4, 0.5, PHILOX)
    assert torch.equal(first, ops.noisy_repeat(x, 4, 0.5, PHILOX))
    assert not torch.equal(first, ops.noisy_repeat(x, 4, 0.5, _philox(SEED, OFFSET + 1)))
    copies = first.view(3, 4, 12)
    assert not torch.equal(copies[:, 0], copies[:, 1])  # every copy draws its own noise
    big_seed = 2**64 - 3  # the whole 64-bit key range
    torch.testing.assert_close(ops.noisy_repeat(x, 4, 0.5, _philox(big_seed, 0)),
                               reference_noisy_repeat(x, 4, 0.5, big_seed, 0), rtol=1e-5, atol=1e-6)


@DTYPES
@MODES
@pytest.mark.parametrize("batch, m, classes", VOTE_SHAPES, ids=str)
def test_vote_matches_reference(batch, m, classes, mode, dtype):
    logits = _tensor((batch * m, classes), dtype)
    _assert_votes_equal(ops.vote(logits, m, mode), reference_vote(logits, m, mode), mode)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on the NaN rows
@DTYPES
@MODES
@pytest.mark.parametrize("batch, m, classes", [(3, 5, 7), (2, 3, 40), (1, 4, 2)], ids=str)
def test_vote_ties_nan_and_infinities_as_torch(batch, m, classes, mode, dtype):
    """argmax: the first maximum, NaN the largest; ranks: a stable descending sort, NaN first;
    softmax: NaN rows stay NaN. (2, 3, 40) has ties across the rank-32 cutoff."""
    logits = _tied_logits(batch * m, classes, dtype)
    _assert_votes_equal(ops.vote(logits, m, mode), reference_vote(logits, m, mode), mode)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # softmax of the all -inf row is NaN
@MODES
def test_vote_with_several_row_tiles_per_sample(mode, monkeypatch):
    """A 32-element tile holds 2 rows of 10 (padded to 16) classes: 5 steps over 9 copies."""
    monkeypatch.setattr(kernels, "_TILE", 32)
    logits = _tied_logits(2 * 9, 10, torch.float32, salt=1)
    _assert_votes_equal(ops.vote(logits, 9, mode), reference_vote(logits, 9, mode), mode)


def test_weighted_vote_ranks_every_class_by_powers_of_two():
    logits = torch.tensor([[0.1, 3.0, -1.0, 3.0], [float("nan"), 0.0, 2.0, float("nan")]], device=DEVICE)
    # Row 0 ranks classes 1, 3, 0, 2 (equal logits by index); row 1 ranks the NaNs 0, 3 first, then 2, 1.
    expected = torch.tensor([[0.25 + 1.0, 1.0 + 0.125, 0.125 + 0.25, 0.5 + 0.5]], device=DEVICE)
    assert torch.equal(ops.vote(logits, 2, "weighted"), expected)


@DTYPES
@pytest.mark.parametrize("batch, m, classes", [(3, 5, 7), (2, 3, 33), (1, 2, 1000), (5, 1, 1)], ids=str)
def test_soft_backward_matches_reference(batch, m, classes, dtype):
    logits = _tensor((batch * m, classes), dtype)
    grad = _tensor((batch, classes), dtype, salt=1)
    d_logits = ops.vote_backward(grad, logits, m)
    assert d_logits.dtype == dtype and d_logits.shape == logits.shape
    torch.testing.assert_close(d_logits, reference_vote_soft_grad(grad, logits, m))


def test_soft_backward_with_row_tiles_across_samples(monkeypatch):
    """Tiles of 4 rows over samples of 3 copies: a tile mixes samples, the last tile is partial."""
    monkeypatch.setattr(kernels, "_TILE", 32)
    logits = _tensor((5 * 3, 6), torch.float64)
    grad = _tensor((5, 6), torch.float64, salt=2)
    torch.testing.assert_close(ops.vote_backward(grad, logits, 3), reference_vote_soft_grad(grad, logits, 3))


def test_noisy_repeat_reads_philox_on_the_data_device():
    x = _tensor((3, 2, 6), torch.float32)
    assert torch.equal(ops.noisy_repeat(x, 4, 0.5, PHILOX.to(DEVICE)), ops.noisy_repeat(x, 4, 0.5, PHILOX))


def test_noisy_repeat_through_the_triton_backend_with_autograd():
    x = _tensor((3, 2, 5), torch.float32).requires_grad_()
    y = functional.noisy_repeat(x, 4, 0.5, backend="triton", philox=PHILOX)
    torch.testing.assert_close(y, reference_noisy_repeat(x, 4, 0.5, SEED, OFFSET), rtol=1e-5, atol=1e-6)
    grad = _tensor(tuple(y.shape), torch.float32, salt=3)
    (dx,) = torch.autograd.grad(y, x, grad)
    torch.testing.assert_close(dx, grad.view(3, 4, 2, 5).sum(1))


@MODES
def test_vote_through_the_triton_backend(mode):
    logits = _tensor((4 * 3, 7), torch.float32)
    _assert_votes_equal(functional.vote(logits, 3, mode, backend="triton"),
                        functional.vote(logits, 3, mode, backend="torch"), mode)


def test_soft_vote_gradient_through_the_triton_backend():
    logits = _tensor((4 * 3, 7), torch.float64).requires_grad_()
    grad = _tensor((4, 7), torch.float64, salt=4)
    (d_triton,) = torch.autograd.grad(functional.vote(logits, 3, "soft", backend="triton"), logits, grad)
    (d_torch,) = torch.autograd.grad(functional.vote(logits, 3, "soft", backend="torch"), logits, grad)
    torch.testing.assert_close(d_triton, d_torch)


def _skip_without_fakes(*names):
    """Skip while stochnet.ops.smoothing registers no fake implementation for a Triton op of ``names``."""
    missing = [name for name in names
               if getattr(OPDEFS.get(f"stochnet_triton::{name}"), "_abstract_fn", None) is None]
    if missing:
        pytest.skip(f"stochnet.ops.smoothing registers no fake for stochnet_triton::{missing} yet")


def test_opcheck_noisy_repeat():
    _skip_without_fakes("noisy_repeat")
    for shape in [(3, 5), (2, 3, 4)]:
        torch.library.opcheck(ops.noisy_repeat, (_tensor(shape, torch.float32), 3, 0.5, PHILOX),
                              test_utils=("test_schema", "test_faketensor"))


@MODES
def test_opcheck_vote(mode):
    _skip_without_fakes("vote")
    torch.library.opcheck(ops.vote, (_tensor((2 * 3, 5), torch.float32), 3, mode),
                          test_utils=("test_schema", "test_faketensor"))


def test_opcheck_vote_backward():
    _skip_without_fakes("vote_backward")
    torch.library.opcheck(ops.vote_backward, (_tensor((2, 5), torch.float32), _tensor((2 * 3, 5), torch.float32), 3),
                          test_utils=("test_schema", "test_faketensor"))


def test_opcheck_with_autograd_registration():
    """Every opcheck test, autograd registration included, on inputs that require grad."""
    _skip_without_fakes("noisy_repeat", "vote", "vote_backward")
    torch.library.opcheck(ops.noisy_repeat, (_tensor((3, 5), torch.float32).requires_grad_(), 3, 0.5, PHILOX))
    logits = _tensor((2 * 3, 5), torch.float32)
    for mode in VOTE_MODES:
        torch.library.opcheck(ops.vote, (logits.clone().requires_grad_(mode == "soft"), 3, mode))
    torch.library.opcheck(ops.vote_backward, (_tensor((2, 5), torch.float32), logits, 3))


CPU_ONLY = pytest.mark.skipif(DEVICE != "cpu", reason="compares with the C++ CPU kernels on CPU tensors")


@CPU_ONLY
@DTYPES
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 3)], ids=str)
def test_noisy_repeat_agrees_with_cpp_kernel(shape, dtype):
    x = _tensor(shape, dtype)
    torch.testing.assert_close(ops.noisy_repeat(x, 3, 0.5, PHILOX), torch.ops.stochnet.noisy_repeat(x, 3, 0.5, PHILOX),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@CPU_ONLY
@DTYPES
@MODES
def test_vote_and_soft_backward_agree_with_cpp_kernel(mode, dtype):
    logits = _tied_logits(3 * 5, 40, dtype, salt=5)
    _assert_votes_equal(ops.vote(logits, 5, mode), torch.ops.stochnet.vote(logits, 5, mode), mode)
    if mode == "soft":
        finite = _tensor((3 * 5, 40), dtype)
        grad = _tensor((3, 40), dtype, salt=6)
        torch.testing.assert_close(ops.vote_backward(grad, finite, 5),
                                   torch.ops.stochnet.vote_backward(grad, finite, 5))


@pytest.mark.skipif(DEVICE == "cpu", reason="half precision runs on the GPU only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype):
    x = _tensor((3, 4, 5), dtype)
    torch.testing.assert_close(ops.noisy_repeat(x, 3, 0.5, PHILOX),
                               reference_noisy_repeat(x, 3, 0.5, SEED, OFFSET))
    logits = _tensor((4 * 3, 10), dtype)
    for mode in VOTE_MODES:
        votes = ops.vote(logits, 3, mode)
        expected = reference_vote(logits, 3, mode)
        assert votes.dtype == expected.dtype
        torch.testing.assert_close(votes, expected)
    grad = _tensor((4, 10), dtype, salt=1)
    torch.testing.assert_close(ops.vote_backward(grad, logits, 3), reference_vote_soft_grad(grad, logits, 3))


def test_rejects_bad_arguments():
    """Through stochnet.ops.checks, plus the Triton kernels' own limits: errors name the argument."""
    x = _tensor((2, 3), torch.float32)
    logits = _tensor((6, 4), torch.float32)
    grad = _tensor((2, 4), torch.float32)
    with pytest.raises(ValueError, match="m must be an integer >= 1"):
        ops.noisy_repeat(x, 0, 0.5, PHILOX)
    with pytest.raises(ValueError, match="m must be an integer >= 1"):
        ops.vote(logits, 0, "soft")
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        ops.noisy_repeat(x, 2, -0.1, PHILOX)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        ops.noisy_repeat(x, 2, float("nan"), PHILOX)
    with pytest.raises(ValueError, match="philox must be an int64 tensor of shape"):
        ops.noisy_repeat(x, 2, 0.5, PHILOX.double())
    with pytest.raises(ValueError, match="x must be contiguous"):
        ops.noisy_repeat(x.t(), 2, 0.5, PHILOX)
    with pytest.raises(ValueError, match="x must be a non-empty tensor"):
        ops.noisy_repeat(x[:0], 2, 0.5, PHILOX)
    with pytest.raises(ValueError, match="x must be a non-empty tensor of shape"):
        ops.noisy_repeat(x[0, 0], 2, 0.5, PHILOX)
    with pytest.raises(TypeError, match="x must have dtype"):
        ops.noisy_repeat(x.to(torch.int32), 2, 0.5, PHILOX)
    with pytest.raises(ValueError, match="not divisible by m=4"):
        ops.vote(logits, 4, "prediction")
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.vote(logits, 3, "hard")
    with pytest.raises(ValueError, match=r"logits must be a non-empty \(B\*m, K\) tensor"):
        ops.vote(logits.view(-1), 3, "soft")
    with pytest.raises(ValueError, match="logits must be contiguous"):
        ops.vote(_tensor((4, 6), torch.float32).t(), 3, "soft")
    with pytest.raises(ValueError, match="at most 32768"):
        ops.vote(torch.zeros(1, 32769, device=DEVICE), 1, "prediction")
    with pytest.raises(ValueError, match=r"grad must have shape \(2, 4\)"):
        ops.vote_backward(grad[:1], logits, 3)
    with pytest.raises(ValueError, match="grad must have logits' dtype"):
        ops.vote_backward(grad.to(torch.int64), logits, 3)
    with pytest.raises(ValueError, match="grad must be contiguous"):
        ops.vote_backward(_tensor((4, 2), torch.float32).t(), logits, 3)
    with pytest.raises(ValueError, match="not divisible by m=4"):
        ops.vote_backward(grad, logits, 4)
