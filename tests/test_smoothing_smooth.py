"""The smoothed classifier: certification and abstention on models of known vote counts,
PREDICT's binomial test, sigma = 0, chunk-size independence of the votes, reproducibility,
eval-mode handling, the soft forward's gradient, and bad arguments."""
import io

import pytest
import scipy.stats
import torch
from torch import nn

import stochnet
from stochnet import functional as F
from stochnet.ops.philox import draw_seed
from stochnet.smoothing import ABSTAIN, Smooth
from stochnet.smoothing.sampling import NoisePlan
from stochnet.smoothing.smooth import _Progress


@pytest.fixture(params=["torch", "cpp"])
def backend(request):
    with stochnet.use_backend(request.param):
        yield request.param


class Constant(nn.Module):
    """Always the same class, whatever the noise."""

    def __init__(self, label, classes=10):
        super().__init__()
        self.logits = nn.functional.one_hot(torch.tensor(label), classes).float()

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


class NoiseArgmax(nn.Module):
    """The argmax of the first ``classes`` input elements: uniform over classes for a constant input."""

    def __init__(self, classes=10):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        return x.flatten(1)[:, :self.classes]


class RowPattern(nn.Module):
    """Class ``pattern[row % n]`` for model row ``row``: known counts when a chunk holds whole samples."""

    def __init__(self, pattern, classes=3):
        super().__init__()
        self.pattern = torch.tensor(pattern)
        self.classes = classes

    def forward(self, x):
        rows = torch.arange(x.shape[0]) % len(self.pattern)
        return nn.functional.one_hot(self.pattern[rows], self.classes).float()


def linear_model(features, classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes))


def test_constant_model_is_certified_with_the_expected_radius(backend):
    smooth = Smooth(Constant(3), sigma=0.5, num_samples=10)
    x = torch.rand(4, 1, 5, 5)
    n, alpha = 200, 0.001
    classes, radius = smooth.certify(x, n0=10, n=n, alpha=alpha)
    assert classes.tolist() == [3] * 4 and radius.dtype == torch.float32
    torch.testing.assert_close(radius, torch.full((4,), 0.5 * scipy.stats.norm.ppf(alpha ** (1 / n)),
                                                  dtype=torch.float32))
    assert smooth.predict(x, n=11, alpha=alpha).tolist() == [3] * 4   # p = 2 / 2^11 < alpha
    assert smooth.predict(x, n=10, alpha=alpha).tolist() == [ABSTAIN] * 4   # p = 2 / 2^10 > alpha


def test_uniform_random_class_abstains(backend):
    torch.manual_seed(0)
    smooth = Smooth(NoiseArgmax(10), sigma=0.5, num_samples=10, batch_size=64)
    x = torch.full((5, 1, 4, 4), 0.5)
    classes, radius = smooth.certify(x, n0=20, n=300, alpha=0.001)
    assert classes.tolist() == [ABSTAIN] * 5 and radius.tolist() == [0.0] * 5
    assert smooth.predict(x, n=300, alpha=0.001).tolist() == [ABSTAIN] * 5
    counts = smooth(x) * 10
    assert len(set(counts.argmax(1).tolist())) > 1   # the noise, not the input, picks the class


@pytest.mark.parametrize("alpha,expected", [(0.1, 0), (0.05, ABSTAIN)])
def test_predict_applies_the_two_sided_binomial_test(alpha, expected):
    pattern = [0] * 20 + [1] * 10 + [2] * 2   # counts 20 vs 10: binomtest p = 0.0987
    assert scipy.stats.binomtest(20, 30).pvalue == pytest.approx(0.0987, abs=1e-4)
    smooth = Smooth(RowPattern(pattern), sigma=0.1, num_samples=1, batch_size=64)
    assert smooth.predict(torch.rand(2, 3), n=len(pattern), alpha=alpha).tolist() == [expected] * 2


def test_certify_counts_the_class_of_the_selection_pass():
    # the n0 pass sees rows 0..3 (class 1 wins 3:1); the n pass's nA is class 1's count, 5 of 6
    smooth = Smooth(RowPattern([1, 1, 1, 0, 1, 1], classes=2), sigma=0.1, num_samples=1, batch_size=64)
    classes, radius = smooth.certify(torch.rand(1, 2), n0=4, n=6, alpha=0.2)
    p_lower = scipy.stats.beta.ppf(0.2, 5, 2)
    assert classes.tolist() == [1]
    assert radius.item() == pytest.approx(0.1 * scipy.stats.norm.ppf(p_lower), rel=1e-6)


def test_sigma_zero_equals_the_base_model(backend):
    model = linear_model(12)
    x = torch.rand(6, 3, 2, 2)
    with torch.no_grad():
        base = model(x)
    expected = base.argmax(1)
    for mode, scores in [("prediction", nn.functional.one_hot(expected, 4).float()),
                         ("soft", torch.softmax(base, 1))]:
        torch.testing.assert_close(Smooth(model, 0.0, 7, mode=mode, batch_size=5)(x), scores)
    assert torch.equal(Smooth(model, 0.0, 7, mode="weighted")(x).argmax(1), expected)
    smooth = Smooth(model, 0, 10)
    assert torch.equal(smooth.predict(x, n=10, alpha=0.01), expected)
    classes, radius = smooth.certify(x, n0=5, n=10, alpha=0.001)
    assert torch.equal(classes, expected) and radius.tolist() == [0.0] * 6


@pytest.mark.parametrize("shape", [(5, 1, 4, 4), (4, 3), (3, 5), (3, 2, 3)], ids=str)   # D % 4: 0, 3, 1, 2
@pytest.mark.parametrize("n", [1, 6, 13])
@pytest.mark.parametrize("mode", ["prediction", "soft", "weighted"])
def test_votes_do_not_depend_on_batch_size(backend, shape, n, mode):
    x = torch.rand(shape)
    model = linear_model(x[0].numel())
    results = []
    for batch_size in [10**6, 1, 5, 2 * n + 1]:   # one chunk, single copies, split samples, whole samples
        torch.manual_seed(7)
        with torch.no_grad():
            results.append(Smooth(model, 0.3, n, mode=mode, batch_size=batch_size)(x))
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=1e-5, atol=1e-6)
    assert results[0].shape == (shape[0], 4)


@pytest.mark.parametrize("shape", [(3, 1, 4, 4), (3, 2, 3)], ids=str)
def test_votes_follow_the_noisy_repeat_layout(backend, shape):
    """With n * D a multiple of 4, the votes are those of one noisy_repeat(x, n) call."""
    x, n = torch.rand(shape), 8
    model = linear_model(x[0].numel())
    torch.manual_seed(3)
    philox = draw_seed()
    with torch.no_grad():
        expected = F.vote(model(F.noisy_repeat(x, n, 0.4, philox=philox)), n, "prediction")
    torch.manual_seed(3)
    counts = Smooth(model, 0.4, n, batch_size=3)(x) * n
    torch.testing.assert_close(counts, expected.float())


@pytest.mark.parametrize("per_sample", [1, 3, 4, 6])
@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_noise_plan_covers_every_copy_in_bounded_chunks(per_sample, batch_size):
    batch, n = 3, 13
    plan = NoisePlan(batch, n, per_sample, batch_size)
    copies = torch.zeros(batch, n, dtype=torch.int64)
    for first, samples, first_copy, count in plan.chunks:
        assert samples * count <= max(batch_size, 4)
        assert (first_copy * per_sample) % 4 == 0   # a chunk starts on a Philox counter
        copies[first:first + samples, first_copy:first_copy + count] += 1
    assert (copies == 1).all()


def test_reproducible_under_manual_seed(backend):
    model = linear_model(16)
    smooth = Smooth(model, 0.5, 50, batch_size=16)
    x = torch.rand(4, 1, 4, 4)
    torch.manual_seed(11)
    first = (smooth(x), smooth.predict(x, 40, 0.01), smooth.certify(x, 10, 40, 0.01))
    torch.manual_seed(11)
    second = (smooth(x), smooth.predict(x, 40, 0.01), smooth.certify(x, 10, 40, 0.01))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(smooth(x), first[0])   # fresh noise on the next call


def test_model_in_eval_mode_during_calls_and_modes_restored():
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout = nn.Dropout(0.5)
            self.linear = nn.Linear(4, 3)

        def forward(self, x):
            seen.append(self.training or self.dropout.training)
            return self.linear(self.dropout(x))

    model = Recorder()
    model.train()
    model.linear.eval()
    smooth = Smooth(model, 0.2, 5)
    x = torch.rand(2, 4)
    smooth(x)
    smooth.predict(x, 5, 0.5)
    smooth.certify(x, 5, 5, 0.5)
    assert seen and not any(seen)
    assert model.training and model.dropout.training and not model.linear.training


def test_soft_forward_is_differentiable_and_other_modes_are_not(backend):
    model = linear_model(12)
    x = torch.rand(2, 12, requires_grad=True)
    scores = Smooth(model, 0.25, 9, mode="soft", batch_size=4)(x)
    torch.testing.assert_close(scores.sum(1), torch.ones(2))
    (grad,) = torch.autograd.grad(scores[:, 0].sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0
    assert not Smooth(model, 0.25, 9)(x).requires_grad


def test_progress_bar_writes_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    progress = _Progress(3, "certify", delay=0)
    for _ in range(3):
        progress.step()
    progress.close()
    assert "certify" in terminal.getvalue() and "/3" in terminal.getvalue()


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(model=lambda x: x), TypeError, "model"),
    (dict(sigma=-0.1), ValueError, "sigma"),
    (dict(sigma=float("nan")), ValueError, "sigma"),
    (dict(sigma=True), ValueError, "sigma"),
    (dict(num_samples=0), ValueError, "num_samples"),
    (dict(num_samples=2.0), ValueError, "num_samples"),
    (dict(mode="hard"), ValueError, "mode"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(backend="numpy"), ValueError, "backend"),
])
def test_bad_constructor_arguments_raise(kwargs, error, message):
    arguments = dict(model=linear_model(4), sigma=0.25, num_samples=10)
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        Smooth(**arguments)


def test_bad_call_arguments_raise():
    smooth = Smooth(linear_model(4), 0.25, 10)
    x = torch.rand(2, 4)
    with pytest.raises(TypeError, match="x"):
        smooth(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="x"):
        smooth(torch.rand(4))
    with pytest.raises(ValueError, match="n "):
        smooth.predict(x, 0, 0.01)
    with pytest.raises(ValueError, match="alpha"):
        smooth.predict(x, 10, 1.5)
    with pytest.raises(ValueError, match="n0"):
        smooth.certify(x, -1, 10, 0.01)
    with pytest.raises(ValueError, match="alpha"):
        smooth.certify(x, 10, 10, 0)
    with pytest.raises(ValueError, match="model must return"):
        Smooth(nn.Flatten(0), 0.25, 10)(x)
