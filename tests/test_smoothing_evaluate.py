"""Evaluation helpers: the sigma x m accuracy grid (clean and under attack), certification of a
loader, certified accuracy at radii, and the JSON they write."""
import json

import pytest
import torch
from torch import nn

from stochnet.smoothing import Smooth, certified_accuracy, certify_loader, smoothed_accuracy_grid, write_json


@pytest.fixture(scope="module")
def task():
    """A linear model and two batches of its inputs, labelled so that it is right on 3 of every 4."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    x = torch.rand(12, 2, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 3
    return model, [(x[:7], y[:7]), (x[7:], y[7:])]


class Shift:
    """An 'attack' that records its cell and moves every input the same way."""

    def __init__(self, model, sigma, m, calls):
        calls.append((sigma, m))
        self.shift = 0.5

    def __call__(self, x, y):
        return (x + self.shift).clamp(0, 1)


def test_grid_structure_and_sigma_zero_row(task):
    model, loader = task
    calls = []
    result = smoothed_accuracy_grid(model, loader, sigmas=[0.0, 0.3], ms=[1, 4, 9], batch_size=8,
                                    attack_factory=lambda mdl, sigma, m: Shift(mdl, sigma, m, calls))
    assert set(result) == {"mode", "sigmas", "ms", "num_samples", "clean_accuracy", "adversarial_accuracy"}
    assert result["sigmas"] == [0.0, 0.3] and result["ms"] == [1, 4, 9] and result["num_samples"] == 12
    assert calls == [(s, m) for s in (0.0, 0.3) for m in (1, 4, 9)]   # one attack per cell
    for key in ("clean_accuracy", "adversarial_accuracy"):
        assert len(result[key]) == 2 and all(len(row) == 3 for row in result[key])
        assert all(0.0 <= a <= 1.0 for row in result[key] for a in row)
    assert result["clean_accuracy"][0] == [0.75] * 3   # no noise: the base model's accuracy
    x_all = torch.cat([x for x, _ in loader])
    y_all = torch.cat([y for _, y in loader])
    with torch.no_grad():
        shifted = (model((x_all + 0.5).clamp(0, 1)).argmax(1) == y_all).float().mean().item()
    assert result["adversarial_accuracy"][0] == [pytest.approx(shifted)] * 3
    json.dumps(result)


def test_grid_without_attack_and_other_modes(task):
    model, loader = task
    for mode in ("soft", "weighted"):
        result = smoothed_accuracy_grid(model, loader, sigmas=[0.0], ms=[2], mode=mode)
        assert result["mode"] == mode and "adversarial_accuracy" not in result
        assert result["clean_accuracy"] == [[0.75]]


def test_certified_accuracy_at_radii():
    certification = {"labels": [0, 1, 2, 3, 4], "predictions": [0, 1, -1, 2, 4], "radii": [0.5, 0.1, 0.0, 0.3, 0.0],
                     "sigma": 0.25}
    result = certified_accuracy(certification, [0.0, 0.1, 0.2, 0.6])
    assert result["certified_accuracy"] == pytest.approx([0.6, 0.4, 0.2, 0.0])
    assert result["abstain_rate"] == pytest.approx(0.2)
    assert result["num_samples"] == 5 and result["sigma"] == 0.25 and result["radii"] == [0.0, 0.1, 0.2, 0.6]


def test_certify_loader_and_json_round_trip(task, tmp_path):
    model, loader = task
    torch.manual_seed(1)
    certification = certify_loader(Smooth(model, 0.0, 1), loader, n0=5, n=20, alpha=0.01)
    assert len(certification["labels"]) == len(certification["predictions"]) == len(certification["radii"]) == 12
    assert certification["labels"] == torch.cat([y for _, y in loader]).tolist()
    # sigma = 0: every vote agrees, pA_lower = 0.01^(1/20) > 1/2, radius 0
    assert -1 not in certification["predictions"] and certification["radii"] == [0.0] * 12
    curve = certified_accuracy(certification, [0.0, 0.5])
    assert curve["certified_accuracy"] == [0.75, 0.0]
    path = tmp_path / "results" / "certify.json"
    write_json(path, {"certification": certification, "curve": curve})
    assert json.loads(path.read_text()) == {"certification": certification, "curve": curve}


def test_bad_arguments_raise(task):
    model, loader = task
    with pytest.raises(ValueError, match="sigmas"):
        smoothed_accuracy_grid(model, loader, sigmas=[], ms=[1])
    with pytest.raises(ValueError, match="sigmas"):
        smoothed_accuracy_grid(model, loader, sigmas=[-0.5], ms=[1])
    with pytest.raises(ValueError, match="ms"):
        smoothed_accuracy_grid(model, loader, sigmas=[0.1], ms=[0])
    with pytest.raises(TypeError, match="attack_factory"):
        smoothed_accuracy_grid(model, loader, sigmas=[0.1], ms=[1], attack_factory="pgd")
    with pytest.raises(ValueError, match="no samples"):
        smoothed_accuracy_grid(model, [], sigmas=[0.1], ms=[1])
    with pytest.raises(TypeError, match="smooth"):
        certify_loader(model, loader, 5, 10, 0.01)
    with pytest.raises(ValueError, match="radii"):
        certified_accuracy({"labels": [0], "predictions": [0], "radii": [0.1]}, [-1.0])
    with pytest.raises(ValueError, match="lacks"):
        certified_accuracy({"labels": [0]}, [0.0])
    with pytest.raises(ValueError, match="equal-length"):
        certified_accuracy({"labels": [0, 1], "predictions": [0], "radii": [0.1]}, [0.0])
