"""Hostile inputs to the attacks: one clear error naming the argument, before any step runs."""
import pytest
import torch
from torch import nn

from stochnet.attacks import EOTPGD, MIM, PGD, FGSM


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()


X, Y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 1])
ATTACKS = [lambda m: PGD(m, eps=0.1, steps=2), lambda m: EOTPGD(m, eps=0.1, steps=2, eot_samples=2),
           lambda m: MIM(m, eps=0.1, steps=2), lambda m: FGSM(m, eps=0.1)]


@pytest.mark.parametrize("make", ATTACKS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_are_rejected(make, value):
    x = X.clone()
    x[1, 0, 0, 0] = value
    with pytest.raises(ValueError, match="x must be finite"):
        make(_model())(x, Y)


@pytest.mark.parametrize("make", ATTACKS)
def test_labels_outside_the_classes_are_rejected(make):
    with pytest.raises(ValueError, match="ignore index"):
        make(_model())(X, torch.tensor([0, -100, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*got 3"):
        make(_model())(X, torch.tensor([0, 1, 3, 2]))


def test_target_labels_outside_the_classes_are_rejected():
    attack = PGD(_model(), eps=0.1, steps=2).set_targeted(torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match="got 7"):
        attack(X, Y)


def test_inputs_outside_the_clip_range_are_rejected_not_clamped():
    with pytest.raises(ValueError, match=r"clip=\(0.2, 0.8\)"):
        PGD(_model(), eps=0.1, steps=2, clip=(0.2, 0.8))(X, Y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_beyond_the_clip_box_quotes_the_users_value(norm):
    with pytest.raises(ValueError, match=r"eps must be at most .* got 1e\+39"):
        PGD(_model(), eps=1e39, steps=2, norm=norm)(X, Y)


def test_a_model_with_the_wrong_output_shape_is_named():
    with pytest.raises(ValueError, match=r"model must return \(batch, classes\) logits"):
        PGD(lambda x: x.flatten(), eps=0.1, steps=2)(X, Y)
