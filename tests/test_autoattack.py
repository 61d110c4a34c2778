"""AutoAttack: each attack runs on the samples still robust, the worst case per sample is kept,
robustness is judged on fresh noise, and the suite is at least as strong as torchattacks' one."""
import numpy as np
import pytest
import torch
from torch import nn

import stochnet
from stochnet.attacks import APGD, AutoAttack

EPS = 0.1


def _accuracy(model, x, y, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_standard_suite_on_a_deterministic_model(cnn, mnist):
    x, y = (t[:60] for t in mnist[1])
    attack = AutoAttack(cnn, EPS, steps=20, queries=200, seed=0)
    x_adv = attack(x, y)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    apgd_ce = _accuracy(cnn, APGD(cnn, EPS, steps=20)(x, y), y)
    robust = _accuracy(cnn, x_adv, y)
    assert robust <= apgd_ce
    # every sample the suite reports fooled is misclassified on the returned x_adv, and vice versa
    with torch.no_grad():
        correct = cnn(x_adv).argmax(1) == y
    clean = cnn(x).argmax(1) == y
    assert int(correct.sum()) == int(clean.sum()) - sum(attack.fooled_by.values())
    assert torch.equal(correct, attack.robust)


def test_each_attack_runs_only_on_the_samples_still_robust(cnn, mnist, monkeypatch):
    x, y = (t[:40] for t in mnist[1])
    attack = AutoAttack(cnn, EPS, steps=10, queries=100)
    sizes = []
    real = attack.attacks

    def recording():
        def record(inner):
            return lambda xs, ys: (sizes.append(xs.shape[0]), inner(xs, ys))[1]
        return [(name, record(inner)) for name, inner in real()]

    monkeypatch.setattr(attack, "attacks", recording)
    attack(x, y)
    with torch.no_grad():
        clean = int((cnn(x).argmax(1) == y).sum())
    assert sizes[0] == clean
    fooled = list(attack.fooled_by.values())
    for i in range(1, len(sizes)):
        assert sizes[i] == sizes[i - 1] - fooled[i - 1]


def test_rand_version_at_least_as_strong_as_torchattacks(cnn, mnist):
    torchattacks = pytest.importorskip("torchattacks")
    model = nn.Sequential(stochnet.nn.GaussianNoise(0.15), cnn).eval()
    x, y = (t[:60] for t in mnist[1])
    torch.manual_seed(0)
    ours = AutoAttack(model, EPS, version="rand", steps=10, eot_samples=4)(x, y)
    torch.manual_seed(0)
    theirs = torchattacks.APGD(model, eps=EPS, steps=10, eot_iter=4, loss="ce", n_restarts=1)(x, y)
    ours_acc = np.mean([_accuracy(model, ours, y, seed=s) for s in range(8)])
    theirs_acc = np.mean([_accuracy(model, theirs, y, seed=s) for s in range(8)])
    clean = np.mean([_accuracy(model, x, y, seed=s) for s in range(8)])
    assert theirs_acc < clean - 0.2, "the reference attack should hurt: the comparison would be vacuous"
    assert ours_acc <= theirs_acc + 1 / len(y), (ours_acc, theirs_acc, clean)


def test_standard_version_on_a_stochastic_model_warns(cnn, mnist):
    model = nn.Sequential(stochnet.nn.GaussianNoise(0.15), cnn).eval()
    x, y = (t[:8] for t in mnist[1])
    with pytest.warns(RuntimeWarning, match="version='rand'"):
        AutoAttack(model, EPS, steps=2, queries=10)(x, y)


def test_seed_makes_a_call_reproducible_and_leaves_the_callers_stream(cnn, mnist):
    model = nn.Sequential(stochnet.nn.GaussianNoise(0.15), cnn).eval()
    x, y = (t[:16] for t in mnist[1])
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    a = AutoAttack(model, EPS, version="rand", steps=3, eot_samples=2, seed=7)(x, y)
    assert torch.equal(torch.rand(3), expected)
    b = AutoAttack(model, EPS, version="rand", steps=3, eot_samples=2, seed=7)(x, y)
    assert torch.equal(a, b)


def test_bad_input(cnn):
    with pytest.raises(ValueError, match="version"):
        AutoAttack(cnn, EPS, version="plus")
    with pytest.raises(TypeError, match="eps must be a float"):
        AutoAttack(cnn, torch.full((3,), 0.1))
    with pytest.raises(ValueError, match="eps"):
        AutoAttack(cnn, 0.0)
    with pytest.raises(ValueError, match="norm"):
        AutoAttack(cnn, EPS, norm="l1")
    for name in ("steps", "queries", "eot_samples", "checks"):
        with pytest.raises(ValueError, match=name):
            AutoAttack(cnn, EPS, **{name: 0})
    with pytest.raises(TypeError, match="seed"):
        AutoAttack(cnn, EPS, seed=1.5)
