"""robust_accuracy: clean / adversarial accuracy and ASR = P(f(x_adv) != y | f(x) = y) on toy
cases with known answers, mean and std over repeats, mode restoration."""
import math

import pytest
import torch
from torch import nn

from stochnet.attacks import FGSM
from stochnet.eval import robust_accuracy


class Logits(nn.Module):
    """The input is the logits; a counter lets a test make the model 'stochastic'."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


class TableAttack:
    """Replaces each sample by a fixed adversarial row (looked up by the sample's first value)."""

    targeted = False

    def __init__(self, table):
        self.table = table

    def __call__(self, x, y):
        return torch.stack([self.table[round(float(row[0]), 3)] for row in x])


def _batches():
    # Labels 0,0,1,1,0. Clean predictions (argmax of the row): 0,0,1,0,1 -> samples 0,1,2 correct.
    x = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    y = torch.tensor([0, 0, 1, 1, 0])
    # The attack flips sample 0 (correct -> wrong) and sample 3 (wrong -> right); 1, 2, 4 unchanged.
    adv = {0.9: torch.tensor([0.4, 0.6]), 0.8: x[1], 0.3: x[2], 0.6: torch.tensor([0.1, 0.9]), 0.2: x[4]}
    return [(x[:2], y[:2]), (x[2:], y[2:])], TableAttack(adv)


def test_known_values_and_asr_definition():
    loader, attack = _batches()
    result = robust_accuracy(Logits(), attack, loader)
    assert result["num_samples"] == 5 and result["repeats"] == 1
    assert result["clean_accuracy"] == pytest.approx(3 / 5)
    # Adversarially correct: samples 1, 2 and 3 (the attack fixed 3).
    assert result["adversarial_accuracy"] == pytest.approx(3 / 5)
    # ASR counts only clean-correct samples: 1 of {0, 1, 2} flipped; not 1 - adv/clean = 0.
    assert result["asr"] == pytest.approx(1 / 3)
    assert result["clean_accuracy_std"] == result["asr_std"] == 0.0


class Flaky(nn.Module):
    """A model whose answers change between passes, like a stochastic one: the first
    ``honest_calls`` passes return the input as logits, later ones predict class 1 for all."""

    def __init__(self, honest_calls):
        super().__init__()
        self.honest_calls = honest_calls
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x if self.calls <= self.honest_calls else torch.tensor([0.0, 1.0]).expand_as(x)


def test_mean_and_std_over_repeats():
    x = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    y = torch.tensor([0, 1, 0, 0])
    identity = TableAttack({round(float(r[0]), 3): r for r in x})
    # One batch per repeat, two passes (clean and adversarial) per batch: repeat 1 sees the
    # honest model (all correct), repeat 2 a model that always says 1 (clean and adv 1/4).
    result = robust_accuracy(Flaky(honest_calls=2), identity, [(x, y)], repeats=2)
    assert result["per_repeat"]["clean_accuracy"] == [1.0, 0.25]
    assert result["clean_accuracy"] == pytest.approx(0.625)
    assert result["clean_accuracy_std"] == pytest.approx(math.sqrt(2 * 0.375 ** 2))
    assert result["per_repeat"]["asr"] == [0.0, 0.0]
    assert result["adversarial_accuracy"] == pytest.approx(0.625)


def test_asr_is_nan_without_clean_correct_samples():
    x = torch.tensor([[0.9, 0.1]])
    result = robust_accuracy(Logits(), TableAttack({0.9: x[0]}), [(x, torch.tensor([1]))])
    assert result["clean_accuracy"] == 0.0 and math.isnan(result["asr"])


def test_modes_restored_and_bad_arguments():
    loader, attack = _batches()
    model = nn.Sequential(Logits(), nn.Identity())
    model.train()
    model[1].eval()
    robust_accuracy(model, attack, loader)
    assert model.training and model[0].training and not model[1].training
    with pytest.raises(ValueError, match="repeats"):
        robust_accuracy(model, attack, loader, repeats=0)
    with pytest.raises(ValueError, match="no samples"):
        robust_accuracy(model, attack, [])
    attack.targeted = True
    with pytest.raises(ValueError, match="untargeted"):
        robust_accuracy(model, attack, loader)


def test_with_a_real_attack_on_a_linear_model():
    # x in [0, 1]^2, logits (x0 - x1, x1 - x0): FGSM with eps 0.3 flips every sample whose margin
    # |x0 - x1| is below 0.6, so on the grid below exactly the two near-boundary samples flip.
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    x = torch.tensor([[0.5, 0.4], [0.6, 0.5], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 0, 1])
    result = robust_accuracy(model, FGSM(model, eps=0.3), [(x, y)])
    assert result["clean_accuracy"] == 1.0
    assert result["adversarial_accuracy"] == pytest.approx(0.5)
    assert result["asr"] == pytest.approx(0.5)
