"""The CUDA smoothing kernels (csrc/cuda/smoothing_kernels.cu) against the pure-torch references.

Skips without a CUDA device or when stochnet was built without its CUDA sources.
"""
import pytest
import torch

from stochnet import functional
from stochnet.ops.smoothing import WEIGHTED_RANKS, reference_noisy_repeat, reference_vote, reference_vote_soft_grad
from cuda_device import SEEDS, philox_tensor, requires_cuda_kernels


pytestmark = requires_cuda_kernels

DEVICE = "cuda"
OPS = torch.ops.stochnet
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
MODES = ["prediction", "soft", "weighted"]
SIGMA = 0.5
# noisy_repeat tolerances (rtol, atol per unit of sigma): the normals match the reference to a
# few float32 ulp, then half / bfloat16 round the result.
Y_TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-5, 1e-5), torch.float16: (2e-3, 1e-3),
         torch.bfloat16: (1.6e-2, 1e-2)}
# (sample shape, m): per-sample sizes that are and are not multiples of 4 (copies starting off a
# Philox counter), 1-D x, one copy, and few samples of many copies (the copies split over threads).
SAMPLE_CASES = [
    ((3, 4, 5), 6),
    ((2, 3, 3), 3),
    ((5, 8), 1),
    ((5,), 3),
    ((1, 2, 2, 2), 2),
    ((7, 3, 7, 5), 5),
    ((1, 3), 1000),
    ((2, 6), 37),
    ((16, 3, 32, 32), 8),
]
# (B, m, K): odd sizes, one copy, one class, K past the 32 weighted ranks, K over one or several
# 256-class soft tiles, K = 1000, one sample of many copies.
VOTE_SHAPES = [(3, 5, 7), (1, 1, 1), (4, 1, 3), (2, 3, 33), (2, 3, 257), (3, 4, 300), (2, 2, 1000), (1, 1000, 10),
               (7, 64, 10)]


def _make(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.25).to(dtype).to(DEVICE)


def _misaligned(t):
    """A copy of t whose storage starts one element past a 16-byte boundary (scalar code path)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def _tied_logits(rows, classes, dtype, seed=0):
    """Small integers (many ties) with NaN, +-inf and -0.0 sprinkled in; a row of -inf and a row with a NaN."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randint(-2, 3, (rows, classes), generator=gen).to(torch.float64)
    special = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0], dtype=torch.float64)
    where = torch.rand(rows, classes, generator=gen) < 0.15
    picks = torch.randint(0, 4, (rows, classes), generator=gen)
    logits = torch.where(where, special[picks], logits)
    logits[0] = float("-inf")
    if rows > 1:
        logits[1, classes // 2] = float("nan")
    return logits.to(dtype).to(DEVICE)


def _check_noisy_repeat(x, m, sigma, seed, offset):
    y = OPS.noisy_repeat(x, m, sigma, philox_tensor(seed, offset))
    assert y.dtype == x.dtype and y.shape == (x.shape[0] * m,) + tuple(x.shape[1:]) and y.is_contiguous()
    rtol, atol = Y_TOL[x.dtype]
    torch.testing.assert_close(y, reference_noisy_repeat(x, m, sigma, seed, offset), rtol=rtol, atol=atol * sigma)
    return y


def _check_vote(logits, m, mode):
    votes = OPS.vote(logits, m, mode)
    expected = reference_vote(logits, m, mode)
    assert votes.dtype == expected.dtype and votes.shape == expected.shape
    if mode == "prediction":
        assert torch.equal(votes, expected)
    elif mode == "weighted":
        # The kernel adds the powers of two exactly, then rounds once: the float64 reference of the
        # same ranks (float64 holds every logit exactly) is exact, and rounds to the same value.
        exact = reference_vote(logits.double(), m, mode).to(votes.dtype)
        assert torch.equal(votes, exact)
        torch.testing.assert_close(votes, expected, rtol=1e-5, atol=0)
    else:
        torch.testing.assert_close(votes, expected, equal_nan=True)
    return votes


# --- noisy_repeat ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, m", SAMPLE_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_noisy_repeat_matches_reference(shape, m, dtype):
    _check_noisy_repeat(_make(shape, dtype), m, SIGMA, 123456789, 7)


@pytest.mark.parametrize("seed, offset", SEEDS)
@pytest.mark.parametrize("shape", [(3, 4, 5), (4, 2, 8)], ids=str)
def test_noisy_repeat_seeds(seed, offset, shape):
    _check_noisy_repeat(_make(shape, torch.float32), 5, 1.25, seed, offset)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4, 8), (3, 5, 3)], ids=str)
def test_noisy_repeat_misaligned_input(dtype, shape):
    _check_noisy_repeat(_misaligned(_make(shape, dtype)), 4, SIGMA, 42, 3)


@pytest.mark.parametrize("shape, m", [((256, 3, 32, 32), 16), ((7, 16000), 37)], ids=str)
def test_noisy_repeat_large_inputs_split_copies_in_chunks(shape, m):
    # Fewer threads than a large GPU holds: the copies of a sample split into chunks of several
    # copies (2 chunks of 8 for CIFAR; 4 copies a chunk and a last partial chunk for 7 x 16000 on
    # an H100) with one load of x per chunk.
    _check_noisy_repeat(_make(shape, torch.float32), m, 0.25, 2024, 11)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 8)], ids=str)
def test_noisy_repeat_zero_sigma_is_exact_copies(dtype, shape):
    x = _make(shape, dtype)
    assert torch.equal(OPS.noisy_repeat(x, 5, 0.0, philox_tensor(1, 2)), x.repeat_interleave(5, dim=0))


def test_noisy_repeat_is_deterministic_and_each_copy_draws_its_own_noise():
    x = _make((3, 2, 6), torch.float32)
    first = OPS.noisy_repeat(x, 4, SIGMA, philox_tensor(77, 5))
    assert torch.equal(first, OPS.noisy_repeat(x, 4, SIGMA, philox_tensor(77, 5)))
    assert not torch.equal(first, OPS.noisy_repeat(x, 4, SIGMA, philox_tensor(77, 6)))
    copies = first.view(3, 4, 12)
    assert not torch.equal(copies[:, 0], copies[:, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noisy_repeat_agrees_with_cpu_kernel(dtype):
    x = _make((3, 5, 7), dtype)
    y_cpu = OPS.noisy_repeat(x.cpu(), 3, SIGMA, philox_tensor(99, 4))
    y = OPS.noisy_repeat(x, 3, SIGMA, philox_tensor(99, 4))
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-5, atol=1e-5 * SIGMA)


def test_noisy_repeat_through_the_cuda_backend_with_autograd():
    philox = torch.tensor([31337, 5], dtype=torch.int64)
    x = _make((3, 2, 5), torch.float32).requires_grad_()
    y = functional.noisy_repeat(x, 4, SIGMA, backend="cuda", philox=philox)
    torch.testing.assert_close(y, reference_noisy_repeat(x, 4, SIGMA, 31337, 5), rtol=1e-5, atol=1e-5)
    grad = _make(tuple(y.shape), torch.float32, seed=3)
    (dx,) = torch.autograd.grad(y, x, grad)
    torch.testing.assert_close(dx, grad.view(3, 4, 2, 5).sum(1))


# --- vote -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, m, classes", VOTE_SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vote_matches_reference(batch, m, classes, mode, dtype):
    _check_vote(_make((batch * m, classes), dtype), m, mode)


@pytest.mark.parametrize("batch, m, classes", [(3, 5, 7), (2, 3, 40), (1, 4, 2), (2, 2, 300)], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vote_ties_nan_and_infinities_as_torch(batch, m, classes, mode, dtype):
    """argmax: the first maximum, NaN the largest; ranks: a stable descending sort, NaN first;
    softmax: rows with a NaN or an infinity are NaN. (2, 3, 40) has ties across the rank-32 cutoff."""
    _check_vote(_tied_logits(batch * m, classes, dtype), m, mode)


@pytest.mark.parametrize("mode", MODES)
def test_vote_misaligned_logits(mode):
    _check_vote(_misaligned(_make((4 * 3, 9), torch.float16)), 3, mode)


def test_prediction_counts_the_first_maximum_and_the_first_nan():
    nan = float("nan")
    logits = torch.tensor([[1.0, 3.0, 3.0], [nan, 5.0, nan], [-1.0, -0.0, 0.0], [2.0, 1.0, 2.0]], device=DEVICE)
    expected = torch.tensor([[1, 1, 0], [1, 1, 0]], device=DEVICE)
    assert torch.equal(OPS.vote(logits, 2, "prediction"), expected)


def test_weighted_vote_ranks_every_class_by_powers_of_two():
    logits = torch.tensor([[0.1, 3.0, -1.0, 3.0], [float("nan"), 0.0, 2.0, float("nan")]], device=DEVICE)
    # Row 0 ranks classes 1, 3, 0, 2 (equal logits by index); row 1 ranks the NaNs 0, 3 first, then 2, 1.
    expected = torch.tensor([[0.25 + 1.0, 1.0 + 0.125, 0.125 + 0.25, 0.5 + 0.5]], device=DEVICE)
    assert torch.equal(OPS.vote(logits, 2, "weighted"), expected)


def test_weighted_vote_stops_after_the_last_rank():
    # Decreasing logits: class k has rank k; ranks from WEIGHTED_RANKS on add nothing.
    classes = WEIGHTED_RANKS + 8
    logits = -torch.arange(classes, dtype=torch.float64, device=DEVICE).view(1, classes)
    scores = OPS.vote(logits, 1, "weighted")
    expected = torch.zeros(1, classes, dtype=torch.float64, device=DEVICE)
    expected[0, :WEIGHTED_RANKS] = 2.0 ** -torch.arange(WEIGHTED_RANKS, dtype=torch.float64, device=DEVICE)
    assert torch.equal(scores, expected)


@pytest.mark.parametrize("mode", ["soft", "weighted"])
def test_float_votes_are_deterministic(mode):
    logits = _make((5 * 100, 37), torch.float32, seed=6)
    first = OPS.vote(logits, 100, mode)
    for _ in range(2):
        assert torch.equal(OPS.vote(logits, 100, mode), first)


@pytest.mark.parametrize("mode", MODES)
def test_vote_agrees_with_cpu_kernel(mode):
    logits = _make((4 * 6, 45), torch.float32, seed=7)
    torch.testing.assert_close(OPS.vote(logits, 6, mode).cpu(), OPS.vote(logits.cpu(), 6, mode),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_vote_through_the_cuda_backend(mode):
    logits = _make((4 * 3, 7), torch.float32)
    votes = functional.vote(logits, 3, mode, backend="cuda")
    expected = functional.vote(logits, 3, mode, backend="torch")
    assert votes.dtype == expected.dtype
    torch.testing.assert_close(votes, expected)


# --- soft vote backward ---------------------------------------------------------------------------

@pytest.mark.parametrize("batch, m, classes", [(3, 5, 7), (2, 3, 33), (1, 2, 1000), (5, 1, 1), (1, 300, 10)],
                         ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_backward_matches_reference(batch, m, classes, dtype):
    logits = _make((batch * m, classes), dtype)
    grad = _make((batch, classes), dtype, seed=1)
    d_logits = OPS.vote_backward(grad, logits, m)
    assert d_logits.dtype == dtype and d_logits.shape == logits.shape
    torch.testing.assert_close(d_logits, reference_vote_soft_grad(grad, logits, m))


def test_soft_backward_nan_rows_stay_nan():
    logits = _tied_logits(2 * 3, 8, torch.float32)
    grad = _make((2, 8), torch.float32, seed=2)
    torch.testing.assert_close(OPS.vote_backward(grad, logits, 3), reference_vote_soft_grad(grad, logits, 3),
                               equal_nan=True)


def test_soft_vote_gradient_through_the_cuda_backend():
    logits = _make((4 * 3, 7), torch.float64).requires_grad_()
    grad = _make((4, 7), torch.float64, seed=4)
    (d_cuda,) = torch.autograd.grad(functional.vote(logits, 3, "soft", backend="cuda"), logits, grad)
    (d_torch,) = torch.autograd.grad(functional.vote(logits, 3, "soft", backend="torch"), logits, grad)
    torch.testing.assert_close(d_cuda, d_torch)


# --- argument checks ------------------------------------------------------------------------------

def test_rejects_bad_arguments():
    x = _make((2, 3, 4), torch.float32)
    with pytest.raises(RuntimeError, match="m must be >= 1"):
        OPS.noisy_repeat(x, 0, SIGMA, philox_tensor(0, 0))
    with pytest.raises(RuntimeError, match="sigma must be a finite number >= 0"):
        OPS.noisy_repeat(x, 2, -1.0, philox_tensor(0, 0))
    with pytest.raises(RuntimeError, match="sigma must be a finite number >= 0"):
        OPS.noisy_repeat(x, 2, float("nan"), philox_tensor(0, 0))
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        OPS.noisy_repeat(x.transpose(1, 2), 2, SIGMA, philox_tensor(0, 0))
    with pytest.raises(RuntimeError, match="x must be float32, float64, float16 or bfloat16"):
        OPS.noisy_repeat(x.to(torch.int32), 2, SIGMA, philox_tensor(0, 0))
    with pytest.raises(RuntimeError, match="x must not be empty"):
        OPS.noisy_repeat(x[:0], 2, SIGMA, philox_tensor(0, 0))
    with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
        OPS.noisy_repeat(x, 2, SIGMA, philox_tensor(0, 0).to(DEVICE))
    with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0"):
        OPS.noisy_repeat(x, 2, SIGMA, philox_tensor(0, -5))

    logits = _make((6, 5), torch.float32)
    with pytest.raises(RuntimeError, match="not divisible by m=4"):
        OPS.vote(logits, 4, "prediction")
    with pytest.raises(RuntimeError, match="m must be >= 1"):
        OPS.vote(logits, 0, "soft")
    with pytest.raises(RuntimeError, match="mode must be 'prediction', 'soft' or 'weighted'"):
        OPS.vote(logits, 3, "majority")
    with pytest.raises(RuntimeError, match=r"logits must have shape \(B\*m, K\)"):
        OPS.vote(logits.view(30), 3, "soft")
    with pytest.raises(RuntimeError, match="logits must be contiguous"):
        OPS.vote(_make((5, 6), torch.float32).t(), 3, "prediction")

    grad = _make((2, 5), torch.float32)
    with pytest.raises(RuntimeError, match=r"grad must have shape \(2, 5\)"):
        OPS.vote_backward(grad[:1], logits, 3)
    with pytest.raises(RuntimeError, match="grad must have logits' dtype"):
        OPS.vote_backward(grad.double(), logits, 3)
    with pytest.raises(RuntimeError, match="grad is on"):
        OPS.vote_backward(grad.cpu(), logits, 3)


# --- op registration ------------------------------------------------------------------------------

def test_opcheck():
    philox = philox_tensor(7, 3)
    x = _make((3, 2, 5), torch.float32).requires_grad_()
    torch.library.opcheck(OPS.noisy_repeat.default, (x, 4, SIGMA, philox))
    logits = _make((4 * 3, 7), torch.float32).requires_grad_()
    torch.library.opcheck(OPS.vote.default, (logits, 3, "soft"))
    for mode in ("prediction", "weighted"):
        torch.library.opcheck(OPS.vote.default, (logits.detach(), 3, mode))
    grad = _make((4, 7), torch.float32, seed=5)
    torch.library.opcheck(OPS.vote_backward.default, (grad, logits.detach(), 3))
