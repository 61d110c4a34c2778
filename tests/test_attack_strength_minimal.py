"""The minimal-perturbation attacks against the established libraries on the same tiny MNIST
CNN and the same clean-correct batch: stochnet's C&W-L2 and DeepFool against torchattacks' CW
and DeepFool, and stochnet's Boundary attack against foolbox's BoundaryAttack. "At least as
strong" means: succeeds on at least as many samples, with perturbations no larger (median L2
over the samples both attacks fool, within 1% for float rounding, 5% for the randomized
Boundary walk)."""
import numpy as np
import pytest
import torch

from stochnet.attacks import CW, Boundary, DeepFool

torchattacks = pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def setup(trained_cnn, mnist):
    x_test, y_test = (t[:100] for t in mnist[1])
    with torch.no_grad():
        correct = trained_cnn(x_test).argmax(1) == y_test
    return trained_cnn, x_test[correct], y_test[correct]


def _fooled_and_distance(model, x, x_adv, y):
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    return fooled, (x_adv - x).flatten(1).norm(dim=1)


def _compare(model, x, y, ours, theirs, slack=1.01):
    fooled_ours, dist_ours = _fooled_and_distance(model, x, ours, y)
    fooled_theirs, dist_theirs = _fooled_and_distance(model, x, theirs, y)
    assert fooled_theirs.sum() >= 3, "the reference attack must fool some samples: the comparison would be vacuous"
    assert fooled_ours.sum() >= fooled_theirs.sum(), (fooled_ours.sum().item(), fooled_theirs.sum().item())
    both = fooled_ours & fooled_theirs
    median_ours, median_theirs = dist_ours[both].median().item(), dist_theirs[both].median().item()
    assert median_ours <= median_theirs * slack, (median_ours, median_theirs)


def test_cw_at_least_as_strong_as_torchattacks(setup):
    cnn, x, y = setup
    x, y = x[:48], y[:48]
    # One c for both: torchattacks' CW has no binary search over c.
    ours = CW(cnn, c=5.0, kappa=0.0, steps=50, lr=0.05, binary_search_steps=1)(x, y)
    theirs = torchattacks.CW(cnn, c=5.0, kappa=0.0, steps=50, lr=0.05)(x, y)
    _compare(cnn, x, y, ours, theirs)


def test_deepfool_at_least_as_strong_as_torchattacks(setup):
    cnn, x, y = setup
    x, y = x[:24], y[:24]  # torchattacks' DeepFool takes one Jacobian per sample and step: slow
    ours = DeepFool(cnn, steps=50, overshoot=0.02, norm="l2")(x, y)
    theirs = torchattacks.DeepFool(cnn, steps=50, overshoot=0.02)(x, y)
    _compare(cnn, x, y, ours, theirs)


def test_boundary_at_least_as_strong_as_foolbox(setup):
    foolbox = pytest.importorskip("foolbox")
    cnn, x, y = setup
    x, y = x[:16], y[:16]
    torch.manual_seed(0)
    ours = Boundary(cnn, max_queries=10**6, steps=100)(x, y)
    torch.manual_seed(0)
    np.random.seed(0)
    _, theirs, _ = foolbox.attacks.BoundaryAttack(steps=100)(foolbox.PyTorchModel(cnn, bounds=(0, 1)), x, y,
                                                             epsilons=None)
    _compare(cnn, x, y, ours, theirs, slack=1.05)
