"""Batched smoothing ops (noisy_repeat, vote) through the public API: the C++ backend against the
pure-torch reference (values and gradients), odd shapes, ties and NaN, noise statistics, op
registration, torch.compile, and bad input."""
import pytest
import scipy.stats
import torch

from stochnet import functional as F
from stochnet.ops.philox import philox_normal
from stochnet.ops.checks import VOTE_MODES

PHILOX = torch.tensor([2**40 + 3, 2**32 - 7])  # the counter crosses 2**32 inside a call
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]
X_SHAPES = [
    (1,),            # one element
    (3, 1),
    (2, 5),          # samples narrower than a vector
    (3, 17),         # copies not a multiple of the vector width
    (2, 3, 5, 7),
    (3, 3, 8, 8),    # samples a multiple of the block
]
VOTE_SHAPES = [      # (B, m, K)
    (1, 1, 1),
    (3, 5, 10),
    (2, 7, 17),      # K not a multiple of the vector width
    (5, 2, 33),      # more classes than weighted ranks
    (2, 64, 10),
    (3, 3, 1000),
]


def make(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def repeat(backend, x, m, sigma, philox=PHILOX):
    return F.noisy_repeat(x, m, sigma, backend=backend, philox=philox)


def assert_votes_match(votes, expected, mode):
    assert votes.dtype == expected.dtype and votes.shape == expected.shape
    if mode == "prediction":
        assert torch.equal(votes, expected)
    else:
        torch.testing.assert_close(votes, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


# ---- noisy_repeat ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("shape", X_SHAPES, ids=str)
def test_noisy_repeat_values_and_gradient_match_reference(shape, m, dtype):
    x = make(shape, dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = repeat("cpp", x, m, 0.7)
    y_ref = repeat("torch", x_ref, m, 0.7)
    assert y.shape == (shape[0] * m,) + shape[1:] and y.dtype == dtype
    # the normals agree with the reference to a few float32 ulp
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    grad = make(y.shape, dtype, seed=5)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(x.grad, grad.view(shape[0], m, -1).sum(1).view(shape))


def test_noisy_repeat_large_output_takes_the_streaming_store_path():
    x = make((8, 3, 32, 32), torch.float32)  # 96 copies: 9.4 MB written with non-temporal stores
    sigma, (seed, offset) = 0.25, PHILOX.tolist()
    y = repeat("cpp", x, 96, sigma).flatten()
    copies = x.repeat_interleave(96, dim=0).flatten()
    # windows of the reference stream (start a multiple of 4: counter offset + start // 4), one at
    # each end and one across a sample boundary, instead of all 2.4 M reference normals
    for start in (0, 3 * 32 * 32 * 96 - 1000, y.numel() - 1996):
        window = slice(start, start + 1996)
        z = philox_normal(seed, offset + start // 4, 1996)
        torch.testing.assert_close(y[window], copies[window] + sigma * z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_noisy_repeat_sigma_zero_gives_exact_copies(dtype):
    x = make((3, 2, 5, 5), dtype)
    assert torch.equal(repeat("cpp", x, 5, 0.0), x.repeat_interleave(5, dim=0))


def test_noisy_repeat_non_contiguous_input_is_copied():
    x = make((4, 3, 6, 10), torch.float32)[..., ::2]
    assert not x.is_contiguous()
    torch.testing.assert_close(repeat("cpp", x, 3, 0.5), repeat("torch", x.contiguous(), 3, 0.5),
                               rtol=1e-5, atol=1e-6)


def test_noisy_repeat_same_seed_same_output_fresh_noise_per_call():
    x = make((2, 3, 4, 4), torch.float32)
    assert torch.equal(repeat("cpp", x, 4, 0.5), repeat("cpp", x, 4, 0.5))
    assert not torch.equal(repeat("cpp", x, 4, 0.5), repeat("cpp", x, 4, 0.5, torch.tensor([11, 0])))
    torch.manual_seed(7)
    first, second = F.noisy_repeat(x, 4, 0.5), F.noisy_repeat(x, 4, 0.5)
    torch.manual_seed(7)
    assert torch.equal(first, F.noisy_repeat(x, 4, 0.5))
    assert not torch.equal(first, second)


def test_noisy_repeat_noise_statistics():
    sigma = 0.5
    x = torch.linspace(-1, 1, 3 * 32 * 32).view(1, 3, 32, 32).repeat(4, 1, 1, 1)
    y = repeat("cpp", x, 16, sigma).double()
    z = (y - x.double().repeat_interleave(16, dim=0)) / sigma
    assert abs(z.mean().item()) < 5 / z.numel() ** 0.5
    assert abs(z.std().item() - 1) < 0.01
    assert scipy.stats.kstest(z.flatten()[:20000].numpy(), "norm").pvalue > 1e-4
    copies = z.view(4, 16, -1)
    # every copy draws its own noise, uncorrelated with its neighbour's
    assert abs(torch.corrcoef(torch.stack([copies[0, 0], copies[0, 1]]))[0, 1].item()) < 0.1
    assert not torch.equal(copies[0, 0], copies[1, 0])


# ---- vote --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mode", VOTE_MODES)
@pytest.mark.parametrize("shape", VOTE_SHAPES, ids=str)
def test_vote_matches_reference(shape, mode, dtype):
    batch, m, classes = shape
    logits = make((batch * m, classes), dtype)
    votes = F.vote(logits, m, mode, backend="cpp")
    assert_votes_match(votes, F.vote(logits, m, mode, backend="torch"), mode)
    if mode == "prediction":
        assert votes.sum(1).tolist() == [m] * batch
    if mode == "soft":
        torch.testing.assert_close(votes.sum(1), torch.ones(batch, dtype=dtype))


@pytest.mark.parametrize("mode", VOTE_MODES)
@pytest.mark.parametrize("classes", [3, 10, 40, 1000])
def test_vote_ties_resolve_as_torch_argmax_and_stable_sort(classes, mode):
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randint(0, 4, (6 * 5, classes), generator=generator).float()  # exact ties everywhere
    logits[:5] = 1.0  # all-equal rows
    logits[5:10, -1] = logits[5:10].max(1).values  # a tie at the last index
    expected = F.vote(logits, 5, mode, backend="torch")
    assert_votes_match(F.vote(logits, 5, mode, backend="cpp"), expected, mode)
    if mode == "prediction":
        assert expected[0, 0] == 5  # all equal: the first index wins


@pytest.mark.parametrize("mode", VOTE_MODES)
@pytest.mark.parametrize("classes", [4, 10, 50])
def test_vote_nan_and_infinite_logits(classes, mode):
    logits = make((4 * 3, classes), torch.float32)
    logits[0, 1] = float("nan")
    logits[1, :] = float("nan")
    logits[2, 0] = logits[2, -1] = float("nan")  # two NaN: the first ranks first
    logits[3, 2] = float("-inf")
    logits[4, :] = 0.0
    logits[4, 1] = -0.0
    logits[5, 3] = float("inf")
    assert_votes_match(F.vote(logits, 3, mode, backend="cpp"), F.vote(logits, 3, mode, backend="torch"), mode)


def test_vote_non_contiguous_logits_are_copied():
    logits = make((10, 12), torch.float32).t()
    for mode in VOTE_MODES:
        assert_votes_match(F.vote(logits, 3, mode, backend="cpp"), F.vote(logits.contiguous(), 3, mode,
                                                                          backend="torch"), mode)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 10), (2, 4, 33), (2, 3, 1000)], ids=str)
def test_soft_vote_gradient_matches_reference(shape, dtype):
    batch, m, classes = shape
    logits = make((batch * m, classes), dtype).requires_grad_()
    logits_ref = logits.detach().clone().requires_grad_()
    grad = make((batch, classes), dtype, seed=3)
    F.vote(logits, m, "soft", backend="cpp").backward(grad)
    F.vote(logits_ref, m, "soft", backend="torch").backward(grad)
    torch.testing.assert_close(logits.grad, logits_ref.grad, rtol=1e-5, atol=1e-7)


def test_soft_vote_gradcheck_float64():
    logits = make((3 * 4, 7), torch.float64).requires_grad_()
    torch.autograd.gradcheck(lambda t: F.vote(t, 4, "soft", backend="cpp"), (logits,), eps=1e-6, atol=1e-7)


def test_prediction_and_weighted_votes_are_not_differentiable():
    logits = make((6, 5), torch.float32).requires_grad_()
    for mode in ("prediction", "weighted"):
        assert not F.vote(logits, 3, mode, backend="cpp").requires_grad


# ---- registration and compile ----------------------------------------------------------------

def test_opcheck():
    x = make((2, 3, 4, 5), torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.stochnet.noisy_repeat.default, (x, 3, 0.5, PHILOX))
    for mode in VOTE_MODES:
        logits = make((6, 10), torch.float32).requires_grad_(mode == "soft")
        torch.library.opcheck(torch.ops.stochnet.vote.default, (logits, 3, mode))
    torch.library.opcheck(torch.ops.stochnet.vote_backward.default,
                          (make((2, 10), torch.float32), make((6, 10), torch.float32), 3))


def test_compile_has_no_graph_break():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 5))

    def smoothed_scores(x):
        logits = model(F.noisy_repeat(x, 8, 0.25, backend="cpp"))
        return F.vote(logits, 8, "soft", backend="cpp"), F.vote(logits, 8, "prediction", backend="cpp")

    compiled = torch.compile(smoothed_scores, fullgraph=True, backend="aot_eager")
    x = make((3, 2, 4, 4), torch.float32).requires_grad_()
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


def test_cpp_kernels_check_before_running():
    ops = torch.ops.stochnet
    philox = torch.tensor([0, 0])
    for args, match in [
        ((X, 0, 0.5, philox), "m must be >= 1, got 0"),
        ((X, 2, -1.0, philox), "sigma must be a finite number >= 0"),
        ((X, 2, float("nan"), philox), "sigma must be a finite number >= 0"),
        ((X[..., ::2], 2, 0.5, philox), "x must be contiguous"),
        ((X[0, 0, 0, 0], 2, 0.5, philox), "x must have a batch dimension"),
        ((X.half(), 2, 0.5, philox), "x must be float32 or float64 on CPU"),
        ((X, 2**62, 0.5, philox), "overflow the output size"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            ops.noisy_repeat(*args)
    for philox, match in [
        (philox.double(), r"philox must be an int64 CPU tensor of shape \(2,\)"),
        (philox.view(2, 1), r"philox must be an int64 CPU tensor of shape \(2,\)"),
        (torch.tensor([-3, 0]), r"philox must hold a seed and an offset >= 0, got \(-3, 0\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            ops.noisy_repeat(X, 2, 0.5, philox)
    for args, match in [
        ((LOGITS, 0, "soft"), "m must be >= 1, got 0"),
        ((LOGITS, 3, "soft"), "logits has 8 rows, not divisible by m=3"),
        ((LOGITS[0], 1, "soft"), r"logits must have shape \(B\*m, K\)"),
        ((LOGITS[:, :0], 1, "soft"), "logits must not be empty"),
        ((LOGITS.t(), 1, "soft"), "logits must be contiguous"),
        ((LOGITS.int(), 1, "soft"), "logits must be float32 or float64 on CPU"),
        ((LOGITS, 2, "majority"), "mode must be 'prediction', 'soft' or 'weighted', got 'majority'"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            ops.vote(*args)
    grad = make((4, 5), torch.float32)
    for args, match in [
        ((grad[:3], LOGITS, 2), r"grad must have shape \(4, 5\)"),
        ((grad.double(), LOGITS, 2), "grad must have logits' dtype"),
        ((make((5, 4), torch.float32).t(), LOGITS, 2), "grad must be contiguous"),
        ((grad, LOGITS, 3), "not divisible by m=3"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            ops.vote_backward(*args)
