"""The smoothing ops noisy_repeat, vote and vote_backward on every backend (the ``backend`` fixture)
against the pure-torch reference: values, gradients, odd shapes and alignments, ties, NaN and
infinities, seeds and noise statistics, op registration, torch.compile and bad input. Then what
one backend alone has: large outputs, the C++ and the Triton kernels' own checks, Triton's tiling."""
import pytest
import scipy.stats
import torch

from backends import AVAILABLE, SEEDS, philox_tensor
from stochnet import functional as F
from stochnet.ops.checks import VOTE_MODES
from stochnet.ops.philox import philox_normal
from stochnet.ops.smoothing import WEIGHTED_RANKS, reference_noisy_repeat, reference_vote, reference_vote_soft_grad

# ---- sample inputs: every backend runs these; interpreted Triton (slow) the first few of each list

SEED, OFFSET = 2**40 + 3, 2**32 - 7  # the counter crosses 2**32 inside a call
PHILOX = philox_tensor(SEED, OFFSET)
SIGMA = 0.5
HALF = (torch.float16, torch.bfloat16)
CUDA_NOISE_TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-5, 1e-5), torch.float16: (2e-3, 1e-3),
                  torch.bfloat16: (1.6e-2, 1e-2)}
DTYPES = [torch.float32, torch.float64] + ([*HALF] if any(b.device == "cuda" for b in AVAILABLE) else [])
# noisy_repeat (sample shape, m): sample sizes that are and are not multiples of 4 (copies starting
# off a Philox counter), 1-D x, one copy, few samples of many copies (split over threads), samples
# narrower than a vector, copies not a multiple of the vector width, samples a multiple of the block.
NOISY_REPEAT = ([((3, 4, 5), 6), ((2, 3, 3), 3), ((5, 8), 1), ((5,), 3), ((1, 2, 2, 2), 2), ((1, 3), 1000),
                 ((2, 6), 37), ((7, 3, 7, 5), 5)]
                + [(shape, m) for shape in [(1,), (3, 1), (2, 5), (3, 17), (2, 3, 5, 7), (3, 3, 8, 8)]
                   for m in (1, 3, 8)])
NOISY_REPEAT_INTERPRETED = 5
# vote (B, m, K): odd sizes, one copy, one class, K past the 32 weighted ranks, K not a multiple of
# the vector width, K over one or several 256-class soft tiles, K = 1000, one sample of many copies.
VOTE = [(3, 5, 7), (1, 1, 1), (4, 1, 3), (2, 3, 33), (2, 2, 1000),
        (3, 5, 10), (2, 7, 17), (5, 2, 33), (2, 64, 10), (3, 3, 1000), (2, 3, 257), (3, 4, 300), (1, 1000, 10),
        (7, 64, 10)]
VOTE_INTERPRETED = 5
# vote_backward (B, m, K).
SOFT_GRAD = [(3, 5, 7), (2, 3, 33), (1, 2, 1000), (5, 1, 1), (4, 3, 7), (1, 1, 1), (3, 5, 10), (2, 4, 33),
             (2, 3, 1000), (1, 300, 10)]
SOFT_GRAD_INTERPRETED = 4


def sample_inputs(backend, cases, interpreted):
    """``cases``; only their first ``interpreted`` in the Triton interpreter."""
    return cases[:interpreted] if backend.interpreted else cases


def make(shape, dtype, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).to(device)


def tied_logits(rows, classes, dtype, device="cpu", seed=0):
    """Small integers (many ties) with NaN, +-inf and -0.0 sprinkled in; a row of -inf and a row with a NaN."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randint(-2, 3, (rows, classes), generator=generator).to(torch.float64)
    special = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0], dtype=torch.float64)
    where = torch.rand(rows, classes, generator=generator) < 0.15
    picks = torch.randint(0, 4, (rows, classes), generator=generator)
    logits = torch.where(where, special[picks], logits)
    logits[0] = float("-inf")
    if rows > 1:
        logits[1, classes // 2] = float("nan")
    return logits.to(dtype).to(device)


def special_logits(dtype, device):
    """(logits, m) full of exact ties, NaN, +-inf and -0.0; interpreted Triton takes the first 3."""
    # small integers with NaN, +-inf and -0.0 sprinkled in; (2, 3, 40) has ties across the rank-32 cutoff
    samples = [(tied_logits(batch * m, classes, torch.float64), m)
               for batch, m, classes in [(3, 5, 7), (2, 3, 40), (1, 4, 2), (2, 2, 300)]]
    for classes in [3, 10, 40, 1000]:
        logits = torch.randint(0, 4, (6 * 5, classes), generator=torch.Generator().manual_seed(classes)).double()
        logits[:5] = 1.0  # all-equal rows: the first index wins
        logits[5:10, -1] = logits[5:10].max(1).values  # a tie at the last index
        samples.append((logits, 5))
    for classes in [4, 10, 50]:
        logits = make((4 * 3, classes), torch.float64)
        logits[0, 1] = float("nan")
        logits[1, :] = float("nan")
        logits[2, 0] = logits[2, -1] = float("nan")  # two NaN: the first ranks first
        logits[3, 2] = float("-inf")
        logits[4, :] = 0.0
        logits[4, 1] = -0.0
        logits[5, 3] = float("inf")
        samples.append((logits, 3))
    return [(logits.to(dtype).to(device), m) for logits, m in samples]


def misaligned(t):
    """A copy of t whose storage starts one element past a 16-byte boundary (scalar code paths)."""
    out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
    return out.copy_(t)


def backends(keep):
    """Parametrise a test over the available backends that ``keep`` accepts instead of all of them."""
    return pytest.mark.parametrize("backend", [b for b in AVAILABLE if keep(b)], ids=str)


def on_device(backend, dtype):
    if dtype in HALF and backend.device == "cpu":
        pytest.skip("half precision runs on the GPU only")


def repeat(backend, x, m, sigma=SIGMA, philox=PHILOX):
    return F.noisy_repeat(x, m, sigma, backend=backend.name, philox=philox)


def noise_tolerance(backend, dtype, sigma):
    """The stream is the reference's; only the libm of the normals may differ, by a few float32 ulp
    (then half precision rounds). The CUDA kernels keep the bounds of their own old tests (atol per
    unit of sigma)."""
    if backend.name == "cuda":
        rtol, atol = CUDA_NOISE_TOL[dtype]
        return {"rtol": rtol, "atol": atol * sigma}
    return {} if dtype in HALF else {"rtol": 1e-5, "atol": 1e-6}


def assert_noisy_repeat_matches(backend, y, x, m, sigma, seed, offset):
    assert y.dtype == x.dtype and y.shape == (x.shape[0] * m,) + tuple(x.shape[1:]) and y.is_contiguous()
    torch.testing.assert_close(y, reference_noisy_repeat(x, m, sigma, seed, offset),
                               **noise_tolerance(backend, x.dtype, sigma))


def assert_votes_match(votes, expected, mode):
    """prediction: the same counts; weighted: sums of powers of two, only their order may differ;
    soft: within a few ulp, NaN where the reference is NaN."""
    assert votes.dtype == expected.dtype and votes.shape == expected.shape
    if mode == "prediction":
        assert torch.equal(votes, expected)
    elif mode == "weighted":
        torch.testing.assert_close(votes, expected, rtol=1e-6, atol=0)
    else:
        torch.testing.assert_close(votes, expected, equal_nan=True)
        if votes.dtype not in HALF:
            torch.testing.assert_close(votes, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


def check_vote(backend, logits, m, mode):
    votes = F.vote(logits, m, mode, backend=backend.name)
    assert_votes_match(votes, reference_vote(logits, m, mode), mode)
    if mode == "weighted" and backend.name == "cuda":
        # The CUDA kernel adds the powers of two exactly, then rounds once: as the float64 reference
        # of the same ranks (float64 holds every logit exactly) rounds.
        assert torch.equal(votes, reference_vote(logits.double(), m, mode).to(votes.dtype))
    return votes


# ---- noisy_repeat ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_repeat_values_and_gradient_match_reference(backend, dtype):
    on_device(backend, dtype)
    for shape, m in sample_inputs(backend, NOISY_REPEAT, NOISY_REPEAT_INTERPRETED):
        x = make(shape, dtype, backend.device).requires_grad_()
        y = repeat(backend, x, m)
        assert_noisy_repeat_matches(backend, y, x, m, SIGMA, SEED, OFFSET)
        grad = make(y.shape, dtype, backend.device, seed=5)
        (dx,) = torch.autograd.grad(y, x, grad)
        (dx_ref,) = torch.autograd.grad(reference_noisy_repeat(x, m, SIGMA, SEED, OFFSET), x, grad)
        torch.testing.assert_close(dx, dx_ref)
        torch.testing.assert_close(dx, grad.view(shape[0], m, -1).sum(1).view(shape))


def test_noisy_repeat_seeds(backend):
    for seed, offset in SEEDS:
        for shape in sample_inputs(backend, [(3, 4, 5), (4, 2, 8)], 1):
            x = make(shape, torch.float32, backend.device)
            y = backend.ops.noisy_repeat(x, 5, 1.25, philox_tensor(seed, offset))
            assert_noisy_repeat_matches(backend, y, x, 5, 1.25, seed, offset)


@backends(lambda b: not b.interpreted)  # alignment is a compiled kernel's concern
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_repeat_misaligned_input(backend, dtype):
    on_device(backend, dtype)
    for shape in [(3, 4, 8), (3, 5, 3)]:
        x = misaligned(make(shape, dtype, backend.device))
        assert_noisy_repeat_matches(backend, backend.ops.noisy_repeat(x, 4, SIGMA, PHILOX), x, 4, SIGMA, SEED, OFFSET)


@backends(lambda b: not b.interpreted)
def test_noisy_repeat_large_outputs(backend):
    """On the CPU, 9.4 MB are written with non-temporal stores; on a GPU, fewer threads than it holds
    split the copies of a sample into chunks (2 of 8 for CIFAR; 4 copies a chunk and a last partial
    chunk for 7 x 16000 on an H100) with one load of x per chunk."""
    x = make((8, 3, 32, 32), torch.float32, backend.device)
    y = repeat(backend, x, 96, 0.25).flatten()
    copies = x.repeat_interleave(96, dim=0).flatten()
    # windows of the reference stream (start a multiple of 4: counter offset + start // 4), one at
    # each end and one across a sample boundary, instead of all 2.4 M reference normals
    for start in (0, 3 * 32 * 32 * 96 - 1000, y.numel() - 1996):
        window = slice(start, start + 1996)
        z = philox_normal(SEED, OFFSET + start // 4, 1996, backend.device)
        torch.testing.assert_close(y[window], copies[window] + 0.25 * z, rtol=1e-5, atol=1e-6)
    if backend.device == "cuda":
        for shape, m, dtypes in [((16, 3, 32, 32), 8, DTYPES), ((256, 3, 32, 32), 16, [torch.float32]),
                                 ((7, 16000), 37, [torch.float32])]:
            for dtype in dtypes:
                x = make(shape, dtype, backend.device)
                y = backend.ops.noisy_repeat(x, m, 0.25, philox_tensor(2024, 11))
                assert_noisy_repeat_matches(backend, y, x, m, 0.25, 2024, 11)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_repeat_sigma_zero_gives_exact_copies(backend, dtype):
    on_device(backend, dtype)
    for shape in sample_inputs(backend, [(3, 4, 5), (2, 3, 3), (3, 2, 5, 5), (2, 8)], 2):
        x = make(shape, dtype, backend.device)
        assert torch.equal(repeat(backend, x, 5, 0.0), x.repeat_interleave(5, dim=0))


@backends(lambda b: not b.interpreted)  # the wrapper's copy, whatever runs after it
def test_noisy_repeat_non_contiguous_input_is_copied(backend):
    x = make((4, 3, 6, 10), torch.float32, backend.device)[..., ::2]
    assert not x.is_contiguous()
    torch.testing.assert_close(repeat(backend, x, 3), reference_noisy_repeat(x.contiguous(), 3, SIGMA, SEED, OFFSET),
                               rtol=1e-5, atol=1e-6)


def test_noisy_repeat_same_seed_same_output_fresh_noise_per_call(backend):
    x = make((3, 2, 6), torch.float32, backend.device)
    first = repeat(backend, x, 4)
    assert torch.equal(first, repeat(backend, x, 4))
    assert torch.equal(first, repeat(backend, x, 4, philox=PHILOX.to(backend.device)))  # the kernels load it
    assert not torch.equal(first, repeat(backend, x, 4, philox=philox_tensor(SEED, OFFSET + 1)))
    assert not torch.equal(first, repeat(backend, x, 4, philox=philox_tensor(11, 0)))
    copies = first.view(3, 4, 12)
    assert not torch.equal(copies[:, 0], copies[:, 1])  # every copy draws its own noise
    torch.manual_seed(7)
    first, second = F.noisy_repeat(x, 4, SIGMA, backend=backend.name), F.noisy_repeat(x, 4, SIGMA, backend=backend.name)
    torch.manual_seed(7)
    assert torch.equal(first, F.noisy_repeat(x, 4, SIGMA, backend=backend.name))
    assert not torch.equal(first, second)


@backends(lambda b: not b.interpreted)
def test_noisy_repeat_noise_statistics(backend):
    sigma = 0.5
    x = torch.linspace(-1, 1, 3 * 32 * 32, device=backend.device).view(1, 3, 32, 32).repeat(4, 1, 1, 1)
    y = repeat(backend, x, 16, sigma).double()
    z = ((y - x.double().repeat_interleave(16, dim=0)) / sigma).cpu()
    assert abs(z.mean().item()) < 5 / z.numel() ** 0.5
    assert abs(z.std().item() - 1) < 0.01
    assert scipy.stats.kstest(z.flatten()[:20000].numpy(), "norm").pvalue > 1e-4
    copies = z.view(4, 16, -1)
    # every copy draws its own noise, uncorrelated with its neighbour's
    assert abs(torch.corrcoef(torch.stack([copies[0, 0], copies[0, 1]]))[0, 1].item()) < 0.1
    assert not torch.equal(copies[0, 0], copies[1, 0])


# ---- vote --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", VOTE_MODES)
def test_vote_matches_reference(backend, mode, dtype):
    on_device(backend, dtype)
    for batch, m, classes in sample_inputs(backend, VOTE, VOTE_INTERPRETED):
        votes = check_vote(backend, make((batch * m, classes), dtype, backend.device), m, mode)
        if mode == "prediction":
            assert votes.sum(1).tolist() == [m] * batch
        if mode == "soft" and dtype not in HALF:
            torch.testing.assert_close(votes.sum(1), torch.ones(batch, dtype=dtype, device=backend.device))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy warns on the NaN rows
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", VOTE_MODES)
def test_vote_ties_nan_and_infinities_as_torch(backend, mode, dtype):
    """argmax: the first maximum, NaN the largest; ranks: a stable descending sort, NaN first;
    softmax: rows with a NaN or an infinity are NaN."""
    on_device(backend, dtype)
    for logits, m in sample_inputs(backend, special_logits(dtype, backend.device), 3):
        check_vote(backend, logits, m, mode)


@backends(lambda b: not b.interpreted)
@pytest.mark.parametrize("mode", VOTE_MODES)
def test_vote_misaligned_logits(backend, mode):
    dtype = torch.float16 if backend.device == "cuda" else torch.float32
    check_vote(backend, misaligned(make((4 * 3, 9), dtype, backend.device)), 3, mode)


@backends(lambda b: not b.interpreted)  # the wrapper's copy, whatever runs after it
@pytest.mark.parametrize("mode", VOTE_MODES)
def test_vote_non_contiguous_logits_are_copied(backend, mode):
    logits = make((10, 12), torch.float32, backend.device).t()
    assert_votes_match(F.vote(logits, 3, mode, backend=backend.name), reference_vote(logits.contiguous(), 3, mode),
                       mode)


def test_prediction_counts_the_first_maximum_and_the_first_nan(backend):
    nan = float("nan")
    logits = torch.tensor([[1.0, 3.0, 3.0], [nan, 5.0, nan], [-1.0, -0.0, 0.0], [2.0, 1.0, 2.0]], device=backend.device)
    assert torch.equal(backend.ops.vote(logits, 2, "prediction"),
                       torch.tensor([[1, 1, 0], [1, 1, 0]], device=backend.device))


def test_weighted_vote_ranks_every_class_by_powers_of_two(backend):
    logits = torch.tensor([[0.1, 3.0, -1.0, 3.0], [float("nan"), 0.0, 2.0, float("nan")]], device=backend.device)
    # Row 0 ranks classes 1, 3, 0, 2 (equal logits by index); row 1 ranks the NaNs 0, 3 first, then 2, 1.
    expected = torch.tensor([[0.25 + 1.0, 1.0 + 0.125, 0.125 + 0.25, 0.5 + 0.5]], device=backend.device)
    assert torch.equal(backend.ops.vote(logits, 2, "weighted"), expected)
    # Decreasing logits: class k has rank k; ranks from WEIGHTED_RANKS on add nothing.
    classes = WEIGHTED_RANKS + 8
    logits = -torch.arange(classes, dtype=torch.float64, device=backend.device).view(1, classes)
    expected = torch.zeros(1, classes, dtype=torch.float64, device=backend.device)
    expected[0, :WEIGHTED_RANKS] = 2.0 ** -torch.arange(WEIGHTED_RANKS, dtype=torch.float64, device=backend.device)
    assert torch.equal(backend.ops.vote(logits, 1, "weighted"), expected)


@backends(lambda b: not b.interpreted)
def test_float_votes_are_deterministic(backend):
    logits = make((5 * 100, 37), torch.float32, backend.device, seed=6)
    for mode in ("soft", "weighted"):
        first = backend.ops.vote(logits, 100, mode)
        for _ in range(2):
            assert torch.equal(backend.ops.vote(logits, 100, mode), first)


# ---- soft vote backward ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_soft_vote_gradient_matches_reference(backend, dtype):
    on_device(backend, dtype)
    for batch, m, classes in sample_inputs(backend, SOFT_GRAD, SOFT_GRAD_INTERPRETED):
        logits = make((batch * m, classes), dtype, backend.device).requires_grad_()
        grad = make((batch, classes), dtype, backend.device, seed=3)
        (d_logits,) = torch.autograd.grad(F.vote(logits, m, "soft", backend=backend.name), logits, grad)
        assert d_logits.dtype == dtype and d_logits.shape == logits.shape
        torch.testing.assert_close(d_logits, reference_vote_soft_grad(grad, logits.detach(), m))
        if dtype not in HALF:  # and torch's autograd of the reference
            (d_torch,) = torch.autograd.grad(F.vote(logits, m, "soft", backend="torch"), logits, grad)
            torch.testing.assert_close(d_logits, d_torch, rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy warns on the NaN rows
def test_soft_vote_backward_nan_rows_stay_nan(backend):
    logits = tied_logits(2 * 3, 8, torch.float32, backend.device)
    grad = make((2, 8), torch.float32, backend.device, seed=2)
    torch.testing.assert_close(backend.ops.vote_backward(grad, logits, 3), reference_vote_soft_grad(grad, logits, 3),
                               equal_nan=True)


@backends(lambda b: not b.interpreted)
def test_soft_vote_gradcheck_float64(backend):
    logits = make((3 * 4, 7), torch.float64, backend.device).requires_grad_()
    torch.autograd.gradcheck(lambda t: F.vote(t, 4, "soft", backend=backend.name), (logits,), eps=1e-6, atol=1e-7)


@backends(lambda b: not b.interpreted)  # the wrapper detaches the logits, whatever runs after it
def test_prediction_and_weighted_votes_are_not_differentiable(backend):
    logits = make((6, 5), torch.float32, backend.device).requires_grad_()
    for mode in ("prediction", "weighted"):
        assert not F.vote(logits, 3, mode, backend=backend.name).requires_grad


# ---- the backends against each other -----------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@backends(lambda b: b.name != "cpp")
def test_agrees_with_the_cpp_kernels(backend):
    cpp, device = torch.ops.stochnet, backend.device
    for dtype in (torch.float32, torch.float64):
        for shape in [(3, 4, 5), (2, 3, 3), (3, 5, 7)]:
            x = make(shape, dtype)
            torch.testing.assert_close(backend.ops.noisy_repeat(x.to(device), 3, SIGMA, PHILOX).cpu(),
                                       cpp.noisy_repeat(x, 3, SIGMA, PHILOX), **noise_tolerance(backend, dtype, SIGMA))
        samples = [(tied_logits(3 * 5, 40, dtype, seed=5), 5)]
        if dtype == torch.float32 and not backend.interpreted:
            samples.append((make((4 * 6, 45), dtype, seed=7), 6))
        for logits, m in samples:
            for mode in VOTE_MODES:
                assert_votes_match(backend.ops.vote(logits.to(device), m, mode).cpu(), cpp.vote(logits, m, mode), mode)
        logits, grad = make((3 * 5, 40), dtype), make((3, 40), dtype, seed=6)
        torch.testing.assert_close(backend.ops.vote_backward(grad.to(device), logits.to(device), 5).cpu(),
                                   cpp.vote_backward(grad, logits, 5))


# ---- registration and compile ------------------------------------------------------------------

def test_opcheck(backend):
    """Schema, fake tensors and autograd registration of every op, on inputs that require grad."""
    ops = backend.ops
    x = make((2, 3, 4, 5), torch.float32, backend.device).requires_grad_()
    torch.library.opcheck(ops.noisy_repeat.default, (x, 3, SIGMA, PHILOX))
    for shape in [(3, 5), (2, 3, 4)]:  # the fake's output shape
        torch.library.opcheck(ops.noisy_repeat.default, (make(shape, torch.float32, backend.device), 3, SIGMA, PHILOX),
                              test_utils=("test_schema", "test_faketensor"))
    for mode in VOTE_MODES:
        logits = make((6, 10), torch.float32, backend.device).requires_grad_(mode == "soft")
        torch.library.opcheck(ops.vote.default, (logits, 3, mode))
    torch.library.opcheck(ops.vote_backward.default, (make((2, 10), torch.float32, backend.device),
                                                      make((6, 10), torch.float32, backend.device), 3))


@backends(lambda b: not b.interpreted)  # the interpreted Triton ops are opaque to compile
def test_compile_has_no_graph_break(backend):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 5)).to(backend.device)

    def smoothed_scores(x):
        logits = model(F.noisy_repeat(x, 8, 0.25, backend=backend.name))
        return F.vote(logits, 8, "soft", backend=backend.name), F.vote(logits, 8, "prediction", backend=backend.name)

    compiled = torch.compile(smoothed_scores, fullgraph=True, backend="aot_eager")
    x = make((3, 2, 4, 4), torch.float32, backend.device).requires_grad_()
    torch.manual_seed(3)
    soft, counts = compiled(x)
    torch.manual_seed(3)
    soft_eager, counts_eager = smoothed_scores(x)
    torch.testing.assert_close(soft, soft_eager)
    assert torch.equal(counts, counts_eager) and counts.sum().item() == 3 * 8
    soft.sum().backward()
    assert x.grad is not None and model[1].weight.grad.abs().sum() > 0


# ---- bad input ---------------------------------------------------------------------------------

X = make((4, 3, 2, 2), torch.float32)
LOGITS = make((8, 5), torch.float32)


@pytest.mark.parametrize("call,error,match", [
    (lambda: F.noisy_repeat(X, 0, 0.5), ValueError, "m must be an integer >= 1, got 0"),
    (lambda: F.noisy_repeat(X, 2.0, 0.5), ValueError, "m must be an integer >= 1, got 2.0"),
    (lambda: F.noisy_repeat(X, True, 0.5), ValueError, "m must be an integer >= 1"),
    (lambda: F.noisy_repeat(X, 2, -0.1), ValueError, "sigma must be a finite number >= 0"),
    (lambda: F.noisy_repeat(X, 2, float("nan")), ValueError, "sigma must be a finite number >= 0"),
    (lambda: F.noisy_repeat(X, 2, float("inf")), ValueError, "sigma must be a finite number >= 0"),
    (lambda: F.noisy_repeat(X[0, 0, 0, 0], 2, 0.5), ValueError, r"x must be a non-empty tensor of shape \(B, \*\)"),
    (lambda: F.noisy_repeat(X[:0], 2, 0.5), ValueError, "x must be a non-empty tensor"),
    (lambda: F.noisy_repeat(X.int(), 2, 0.5), TypeError, "x must have dtype"),
    (lambda: F.noisy_repeat(X.tolist(), 2, 0.5), TypeError, "x must be a torch.Tensor"),
    (lambda: F.vote(LOGITS, 0), ValueError, "m must be an integer >= 1, got 0"),
    (lambda: F.vote(LOGITS, 1.5), ValueError, "m must be an integer >= 1, got 1.5"),
    (lambda: F.vote(LOGITS, 3), ValueError, "logits has 8 rows, not divisible by m=3"),
    (lambda: F.vote(LOGITS[0], 1), ValueError, r"logits must be a non-empty \(B\*m, K\) tensor"),
    (lambda: F.vote(LOGITS.view(2, 4, 5), 2), ValueError, r"logits must be a non-empty \(B\*m, K\) tensor"),
    (lambda: F.vote(LOGITS[:, :0], 2), ValueError, r"logits must be a non-empty \(B\*m, K\) tensor"),
    (lambda: F.vote(LOGITS.long(), 2), TypeError, "logits must have dtype"),
    (lambda: F.vote(LOGITS, 2, "majority"), ValueError, "mode must be one of"),
    (lambda: F.vote(LOGITS, 2, backend="fast"), ValueError, "backend must be one of"),
], ids=["m-zero", "m-float", "m-bool", "sigma-negative", "sigma-nan", "sigma-inf", "x-0d", "x-empty", "x-dtype",
        "x-not-tensor", "vote-m-zero", "vote-m-float", "rows-not-divisible", "logits-1d", "logits-3d",
        "logits-empty", "logits-dtype", "mode", "backend"])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@backends(lambda b: b.name in ("cpp", "cuda"))
def test_cpp_and_cuda_kernels_check_before_running(backend):
    """The C++ ops check their arguments themselves (csrc/checks.h), before any kernel runs."""
    ops, x, logits = torch.ops.stochnet, X.to(backend.device), LOGITS.to(backend.device)
    philox = torch.tensor([0, 0])
    if backend.device == "cpu":
        bad_x_dtype, bad_logits_dtype = (x.half(), "x must be float32 or float64 on CPU"), "float32 or float64 on CPU"
    else:
        bad_x_dtype = (x.int(), "x must be float32, float64, float16 or bfloat16")
        bad_logits_dtype = "float32, float64, float16 or bfloat16"
    for args, match in [
        ((x, 0, 0.5, philox), "m must be >= 1, got 0"),
        ((x, 2, -1.0, philox), "sigma must be a finite number >= 0"),
        ((x, 2, float("nan"), philox), "sigma must be a finite number >= 0"),
        ((x[..., ::2], 2, 0.5, philox), "x must be contiguous"),
        ((x[0, 0, 0, 0], 2, 0.5, philox), "x must have a batch dimension"),
        ((x[:0], 2, 0.5, philox), "x must not be empty"),
        ((bad_x_dtype[0], 2, 0.5, philox), bad_x_dtype[1]),
        ((x, 2**62, 0.5, philox), "overflow the output size"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            ops.noisy_repeat(*args)
    for philox, match in [
        (philox.double(), r"philox must be an int64 CPU tensor of shape \(2,\)"),
        (philox.view(2, 1), r"philox must be an int64 CPU tensor of shape \(2,\)"),
        (torch.tensor([-3, 0]), r"philox must hold a seed and an offset >= 0, got \(-3, 0\)"),
        (torch.tensor([0, -5]), r"philox must hold a seed and an offset >= 0, got \(0, -5\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            ops.noisy_repeat(x, 2, 0.5, philox)
    for args, match in [
        ((logits, 0, "soft"), "m must be >= 1, got 0"),
        ((logits, 3, "soft"), "logits has 8 rows, not divisible by m=3"),
        ((logits[0], 1, "soft"), r"logits must have shape \(B\*m, K\)"),
        ((logits[:, :0], 1, "soft"), "logits must not be empty"),
        ((logits.t(), 1, "soft"), "logits must be contiguous"),
        ((logits.int(), 1, "soft"), "logits must be " + bad_logits_dtype),
        ((logits, 2, "majority"), "mode must be 'prediction', 'soft' or 'weighted', got 'majority'"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            ops.vote(*args)
    grad = make((4, 5), torch.float32, backend.device)
    for args, match in [
        ((grad[:3], logits, 2), r"grad must have shape \(4, 5\)"),
        ((grad.double(), logits, 2), "grad must have logits' dtype"),
        ((make((5, 4), torch.float32, backend.device).t(), logits, 2), "grad must be contiguous"),
        ((grad, logits, 3), "not divisible by m=3"),
    ] + ([((grad.cpu(), logits, 2), "grad is on")] if backend.device == "cuda" else []):
        with pytest.raises(RuntimeError, match=match):
            ops.vote_backward(*args)


# ---- Triton alone: its checks and its tiling ---------------------------------------------------

TRITON = backends(lambda b: b.name == "triton")


@TRITON
def test_triton_ops_check_before_running(backend):
    """Through stochnet.ops.checks, plus the Triton kernels' own limits: errors name the argument."""
    ops, device = backend.ops, backend.device
    x = make((2, 3), torch.float32, device)
    logits = make((6, 4), torch.float32, device)
    grad = make((2, 4), torch.float32, device)
    for call, error, match in [
        (lambda: ops.noisy_repeat(x, 0, 0.5, PHILOX), ValueError, "m must be an integer >= 1"),
        (lambda: ops.vote(logits, 0, "soft"), ValueError, "m must be an integer >= 1"),
        (lambda: ops.noisy_repeat(x, 2, -0.1, PHILOX), ValueError, "sigma must be a finite number >= 0"),
        (lambda: ops.noisy_repeat(x, 2, float("nan"), PHILOX), ValueError, "sigma must be a finite number >= 0"),
        (lambda: ops.noisy_repeat(x, 2, 0.5, PHILOX.double()), ValueError, "philox must be an int64 tensor of shape"),
        (lambda: ops.noisy_repeat(x.t(), 2, 0.5, PHILOX), ValueError, "x must be contiguous"),
        (lambda: ops.noisy_repeat(x[:0], 2, 0.5, PHILOX), ValueError, "x must be a non-empty tensor"),
        (lambda: ops.noisy_repeat(x[0, 0], 2, 0.5, PHILOX), ValueError, "x must be a non-empty tensor of shape"),
        (lambda: ops.noisy_repeat(x.to(torch.int32), 2, 0.5, PHILOX), TypeError, "x must have dtype"),
        (lambda: ops.vote(logits, 4, "prediction"), ValueError, "not divisible by m=4"),
        (lambda: ops.vote(logits, 3, "hard"), ValueError, "mode must be one of"),
        (lambda: ops.vote(logits.view(-1), 3, "soft"), ValueError, r"logits must be a non-empty \(B\*m, K\) tensor"),
        (lambda: ops.vote(make((4, 6), torch.float32, device).t(), 3, "soft"), ValueError, "logits must be contiguous"),
        (lambda: ops.vote(torch.zeros(1, 32769, device=device), 1, "prediction"), ValueError, "at most 32768"),
        (lambda: ops.vote_backward(grad[:1], logits, 3), ValueError, r"grad must have shape \(2, 4\)"),
        (lambda: ops.vote_backward(grad.to(torch.int64), logits, 3), ValueError, "grad must have logits' dtype"),
        (lambda: ops.vote_backward(make((4, 2), torch.float32, device).t(), logits, 3), ValueError,
         "grad must be contiguous"),
        (lambda: ops.vote_backward(grad, logits, 4), ValueError, "not divisible by m=4"),
    ]:
        with pytest.raises(error, match=match):
            call()


@TRITON
def test_triton_noisy_repeat_takes_the_whole_64_bit_key(backend):
    x = make((3, 2, 6), torch.float32, backend.device)
    big_seed = 2**64 - 3  # as its two's complement: the C++ ops take seeds < 2**63 only
    assert_noisy_repeat_matches(backend, backend.ops.noisy_repeat(x, 4, SIGMA, philox_tensor(big_seed, 0)), x, 4, SIGMA,
                                big_seed, 0)


def _tiles(monkeypatch, tile, target_programs=1024):
    from stochnet.kernels import smoothing as kernels
    monkeypatch.setattr(kernels, "_TILE", tile)
    monkeypatch.setattr(kernels, "_TARGET_PROGRAMS", target_programs)


@TRITON
@pytest.mark.parametrize("shape, m, tile, target_programs", [
    ((2, 21), 3, 8, 1024),  # 3 column blocks per sample, unaligned rows, one run per copy
    ((2, 20), 3, 8, 1),     # aligned rows, one program loops over all copies of its block
    ((2, 8), 7, 32, 1024),  # steps of 4 copies, 2 runs, the last one partly past m
], ids=str)
def test_triton_noisy_repeat_with_column_blocks_and_split_copies(backend, shape, m, tile, target_programs,
                                                                 monkeypatch):
    _tiles(monkeypatch, tile, target_programs)
    x = make(shape, torch.float64, backend.device)
    assert_noisy_repeat_matches(backend, backend.ops.noisy_repeat(x, m, 1.5, PHILOX), x, m, 1.5, SEED, OFFSET)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # softmax of the all -inf row is NaN
@TRITON
@pytest.mark.parametrize("mode", VOTE_MODES)
def test_triton_vote_with_several_row_tiles_per_sample(backend, mode, monkeypatch):
    """A 32-element tile holds 2 rows of 10 (padded to 16) classes: 5 steps over 9 copies."""
    _tiles(monkeypatch, 32)
    check_vote(backend, tied_logits(2 * 9, 10, torch.float32, backend.device, seed=1), 9, mode)


@TRITON
def test_triton_soft_backward_with_row_tiles_across_samples(backend, monkeypatch):
    """Tiles of 4 rows over samples of 3 copies: a tile mixes samples, the last tile is partial."""
    _tiles(monkeypatch, 32)
    logits = make((5 * 3, 6), torch.float64, backend.device)
    grad = make((5, 6), torch.float64, backend.device, seed=2)
    torch.testing.assert_close(backend.ops.vote_backward(grad, logits, 3), reference_vote_soft_grad(grad, logits, 3))
