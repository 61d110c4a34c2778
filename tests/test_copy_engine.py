"""The copy engine: every copy of an input draws all of the model's noise anew, for every noise
module (per element and per pass, declared or not), in votes and in the EOT gradient."""
import warnings

import pytest
import torch
from torch import nn

import stochnet
from stochnet.attacks import EOTPGD
from stochnet.copies import CopyEngine, copies_per_pass, per_copy_mean, probe, repeat_rows
from stochnet.smoothing import Smooth


class RandnOncePerForward(nn.Module):
    """A user's noise stochnet does not know about: one draw shared by the whole batch."""

    def forward(self, x):
        return x + torch.randn(1, *x.shape[1:])


def _stoc_relu(features):
    act = stochnet.nn.StocReLUEMA(features, gamma=1.0)
    act.running_sigma.fill_(1.0)
    return act


NOISE = {
    "stoc_relu_ema": lambda: _stoc_relu(16),
    "perturbation": lambda: stochnet.nn.PerturbationInjection((16,), init=1.0),
    "gaussian": lambda: stochnet.nn.GaussianNoise(1.0),
    "pni_activation": lambda: stochnet.nn.PNI(alpha_init=1.0),
    "pni_linear": lambda: stochnet.nn.PNILinear(16, 16, alpha_init=1.0),
    "undeclared": RandnOncePerForward,
}


def _model(noise):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), NOISE[noise](), nn.Linear(16, 5)).eval()


def _conv_model():
    torch.manual_seed(0)
    return nn.Sequential(stochnet.nn.PNIConv2d(1, 4, 3, padding=1, alpha_init=1.0), nn.ReLU(), nn.Flatten(),
                         stochnet.nn.PNILinear(4 * 5 * 5, 5, alpha_init=1.0)).eval()


def _engine(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        engine = CopyEngine(model)
        engine.is_stochastic(torch.zeros(1, *INPUT[_kind(model)]))
    return engine


INPUT = {"dense": (8,), "conv": (1, 5, 5)}


def _kind(model):
    return "conv" if isinstance(model[0], nn.Conv2d) else "dense"


CASES = [pytest.param(lambda n=n: _model(n), id=n) for n in NOISE] + [pytest.param(_conv_model, id="pni_conv")]


@pytest.mark.parametrize("make", CASES)
def test_batched_copies_spread_like_independent_passes(make):
    model = make()
    x0 = torch.rand(1, *INPUT[_kind(model)])
    n = 400
    torch.manual_seed(1)
    with torch.no_grad():
        batched = _engine(model).logits(repeat_rows(x0, n), n)
        independent = torch.cat([model(x0) for _ in range(n)])
    ratio = batched.std(0) / independent.std(0)
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio
    assert (batched.mean(0) - independent.mean(0)).abs().max() < 0.25 * independent.std(0).max()


def test_a_plain_batch_shares_per_pass_noise():
    # Why the engine exists: one pass of copies through PNI gives every copy the same weights.
    model = _model("pni_linear")
    with torch.no_grad():
        plain = model(repeat_rows(torch.rand(1, 8), 50))
    assert plain.std(0).max() == 0


@pytest.mark.parametrize("noise", ["pni_linear", "undeclared", "stoc_relu_ema"])
def test_smooth_votes_match_independent_passes(noise):
    model = _model(noise)
    x0 = torch.rand(1, 8)
    n = 600
    torch.manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        votes = Smooth(model, sigma=0.0, num_samples=n)(x0)[0]
    with torch.no_grad():
        independent = torch.bincount(torch.cat([model(x0) for _ in range(n)]).argmax(1), minlength=5) / n
    assert (votes > 0).sum() >= 2, votes            # the noise spreads the votes: the comparison is not vacuous
    assert (votes - independent).abs().sum() / 2 < 0.1, (votes, independent)


def _distance(a, b):
    return (a - b).norm().item()


@pytest.mark.parametrize("make", CASES)
def test_eot_gradient_is_the_mean_over_independent_draws(make):
    model = make()
    torch.manual_seed(3)
    x = torch.rand(6, *INPUT[_kind(model)])
    y = torch.randint(0, 5, (6,))
    k = 64

    def loss(logits, labels, copies):
        return per_copy_mean(nn.functional.cross_entropy(logits, labels.repeat_interleave(copies), reduction="none"),
                             copies)

    def independent_mean():
        total = torch.zeros_like(x)
        for _ in range(k):
            xs = x.clone().requires_grad_()
            total += torch.autograd.grad(nn.functional.cross_entropy(model(xs), y, reduction="sum"), xs)[0]
        return total / k

    eot, _, logits = _engine(model).input_grad(x, y, k, loss)
    assert logits.shape == (6, k, 5)
    reference, other = independent_mean(), independent_mean()
    # the engine's EOT mean is as close to an independent mean as another independent mean is; one draw
    # (or 64 copies sharing one draw) is sqrt(64 / 2) times farther, so the test tells them apart
    spread = _distance(other, reference)
    assert _distance(eot, reference) < 1.6 * spread
    single = x.clone().requires_grad_()
    one_draw = torch.autograd.grad(nn.functional.cross_entropy(model(single), y, reduction="sum"), single)[0]
    assert _distance(one_draw, reference) > 3 * spread


def test_undeclared_per_pass_noise_is_found_and_warned_once():
    model = _model("undeclared")
    engine = CopyEngine(model)
    with pytest.warns(RuntimeWarning, match=r"1 \(RandnOncePerForward\)"):
        engine.logits(torch.rand(4, 8), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.logits(torch.rand(4, 8), 2)
    assert engine.copies_per_group == 1


def test_declared_models_probe_clean():
    for noise in ("stoc_relu_ema", "pni_linear", "pni_activation"):
        result = probe(_model(noise), torch.rand(1, 8))
        assert result.stochastic and not result.undeclared_per_pass
    result = probe(nn.Sequential(nn.Linear(8, 5)).eval(), torch.rand(1, 8))
    assert not result.stochastic and not result.per_pass_modules


def test_probe_does_not_shift_the_random_stream():
    model = _model("stoc_relu_ema")
    torch.manual_seed(4)
    expected = torch.rand(3)
    torch.manual_seed(4)
    probe(model, torch.zeros(1, 8))
    assert torch.equal(torch.rand(3), expected)


def test_deterministic_model_takes_one_copy():
    model = nn.Sequential(nn.Linear(8, 5)).eval()
    x, y = torch.rand(3, 8), torch.tensor([0, 1, 2])
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    grad, loss, logits = CopyEngine(model).input_grad(
        x, y, 10, lambda out, labels, c: per_copy_mean(nn.functional.cross_entropy(out, labels.repeat_interleave(c),
                                                                                  reduction="none"), c))
    assert logits.shape == (3, 1, 5) and calls[-1] == 3
    xs = x.clone().requires_grad_()
    expected = torch.autograd.grad(nn.functional.cross_entropy(model(xs), y, reduction="sum"), xs)[0]
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("max_rows", [1, 3, 7, 100])
def test_passes_split_without_changing_a_deterministic_result(max_rows):
    model = nn.Sequential(nn.Linear(8, 5)).eval()
    rows = torch.rand(12, 8)
    with torch.no_grad():
        torch.testing.assert_close(CopyEngine(model, max_rows=max_rows).logits(rows, 4), model(rows))


def test_pni_copy_groups_use_one_draw_per_copy():
    conv = stochnet.nn.PNIConv2d(3, 4, 3, padding=1, alpha_init=1.0, alpha_mode="channel")
    x = torch.randn(6, 3, 5, 5)
    torch.manual_seed(5)
    with copies_per_pass(3):
        out = conv(x)
    torch.manual_seed(5)
    weights = conv.noisy_weight(3)
    expected = torch.cat([nn.functional.conv2d(x[r:r + 1], weights[r % 3], conv.bias, padding=1) for r in range(6)])
    torch.testing.assert_close(out, expected)
    with copies_per_pass(4), pytest.raises(ValueError, match="multiple of 4 rows"):
        conv(x)


def test_eot_pgd_on_pni_averages_independent_weight_draws():
    # Before the engine, every EOT copy of a PNI model shared one weight draw.
    model = _conv_model()
    torch.manual_seed(6)
    x, y = torch.rand(4, 1, 5, 5), torch.randint(0, 5, (4,))
    attack = EOTPGD(model, eps=0.1, alpha=0.02, steps=1, eot_samples=8)
    seen = []
    model[3].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    attack(x, y)
    step = seen[-1].view(4, 8, 5)
    assert (step.std(1) > 0).all()


def test_bad_input():
    model = nn.Sequential(nn.Linear(8, 5)).eval()
    with pytest.raises(ValueError, match="whole samples of 3 copies"):
        CopyEngine(model).logits(torch.rand(4, 8), 3)
    with pytest.raises(ValueError, match="max_rows"):
        CopyEngine(model, max_rows=0)
    with pytest.raises(TypeError, match="model must be callable"):
        CopyEngine(3)
    with pytest.raises(ValueError, match=r"model must return \(rows, classes\)"):
        CopyEngine(lambda x: x.sum()).logits(torch.rand(4, 8), 2)
