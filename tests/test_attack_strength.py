"""Our attacks are at least as strong as torchattacks' reference implementations: on the same
tiny MNIST CNN, batch, eps, alpha and steps, the adversarial accuracy under stochnet's FGSM,
BIM, PGD (L-inf and L2), MIM and EOT-PGD is at most that under torchattacks' FGSM, BIM, PGD,
PGDL2, MIFGSM and EOTPGD (random-start and stochastic attacks: up to 1 sample / 0.5% worse)."""
import numpy as np
import pytest
import torch
from torch import nn

import stochnet
from stochnet.attacks import BIM, EOTPGD, FGSM, MIM, PGD

torchattacks = pytest.importorskip("torchattacks")

EPS, ALPHA, STEPS = 0.1, 0.025, 10
L2_EPS, L2_ALPHA = 1.0, 0.25


def _accuracy(model, x, y, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _margin(n):
    """1 sample or 0.5% of the batch, whichever is larger, as an accuracy."""
    return max(1.0 / n, 0.005) + 1e-9


CASES = [
    # id, ours, theirs, random (start or model noise)
    ("fgsm", lambda m: FGSM(m, eps=EPS), lambda m: torchattacks.FGSM(m, eps=EPS), False),
    ("bim", lambda m: BIM(m, eps=EPS, alpha=ALPHA, steps=STEPS),
     lambda m: torchattacks.BIM(m, eps=EPS, alpha=ALPHA, steps=STEPS), False),
    ("pgd_no_random_start_vs_bim", lambda m: PGD(m, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False),
     lambda m: torchattacks.BIM(m, eps=EPS, alpha=ALPHA, steps=STEPS), False),
    ("pgd_linf", lambda m: PGD(m, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True),
     lambda m: torchattacks.PGD(m, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True), True),
    ("pgd_l2_no_random_start", lambda m: PGD(m, eps=L2_EPS, alpha=L2_ALPHA, steps=STEPS, norm="l2",
                                              random_start=False),
     lambda m: torchattacks.PGDL2(m, eps=L2_EPS, alpha=L2_ALPHA, steps=STEPS, random_start=False), False),
    ("pgd_l2", lambda m: PGD(m, eps=L2_EPS, alpha=L2_ALPHA, steps=STEPS, norm="l2", random_start=True),
     lambda m: torchattacks.PGDL2(m, eps=L2_EPS, alpha=L2_ALPHA, steps=STEPS, random_start=True), True),
    ("mim", lambda m: MIM(m, eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0),
     lambda m: torchattacks.MIFGSM(m, eps=EPS, alpha=ALPHA, steps=STEPS, decay=1.0), False),
]


def _param(case):
    return pytest.param(*case[1:], id=case[0])


@pytest.mark.parametrize("ours, theirs, random", [_param(c) for c in CASES])
def test_at_least_as_strong_as_torchattacks(cnn, mnist, ours, theirs, random):
    x, y = mnist[1]
    clean = _accuracy(cnn, x, y)
    torch.manual_seed(0)
    ours_acc = _accuracy(cnn, ours(cnn)(x, y), y)
    torch.manual_seed(0)
    theirs_acc = _accuracy(cnn, theirs(cnn)(x, y), y)
    assert theirs_acc < clean - 0.2, "the reference attack should hurt: the comparison would be vacuous"
    margin = _margin(len(y)) if random else 1e-9
    assert ours_acc <= theirs_acc + margin, (ours_acc, theirs_acc, clean)


def test_eot_pgd_at_least_as_strong_as_torchattacks(cnn, mnist):
    # A randomized model: Gaussian noise on the input of the trained CNN (on in eval mode).
    model = nn.Sequential(stochnet.nn.GaussianNoise(0.15), cnn).eval()
    x, y = mnist[1]
    torch.manual_seed(0)
    ours = EOTPGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, eot_samples=4, random_start=True)(x, y)
    torch.manual_seed(0)
    theirs = torchattacks.EOTPGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, eot_iter=4, random_start=True)(x, y)
    # Evaluate both under the same noise draws: the mean accuracy over a few seeded passes.
    ours_acc = np.mean([_accuracy(model, ours, y, seed=s) for s in range(4)])
    theirs_acc = np.mean([_accuracy(model, theirs, y, seed=s) for s in range(4)])
    clean = np.mean([_accuracy(model, x, y, seed=s) for s in range(4)])
    assert theirs_acc < clean - 0.2
    assert ours_acc <= theirs_acc + _margin(len(y)), (ours_acc, theirs_acc, clean)
