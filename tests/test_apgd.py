"""APGD / APGD-T: the checkpoint schedule and the DLR losses by value, strength against torchattacks'
APGD and APGDT (deterministic and EOT on a noisy model), compaction, reproducibility, bad input."""
import numpy as np
import pytest
import torch
from torch import nn

import stochnet
from stochnet.attacks import APGD, APGDT
from stochnet.attacks.apgd import _State, checkpoints
from stochnet.attacks.losses import dlr_loss, targeted_dlr_loss

torchattacks = pytest.importorskip("torchattacks")

N, STEPS = 100, 25
BUDGETS = {"linf": 0.1, "l2": 1.0}
THEIR_NORM = {"linf": "Linf", "l2": "L2"}


def _correct(model, x, y, seed=None):
    """The number of samples ``model`` classifies correctly (one noise draw of ``seed``)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        return (model(x).argmax(1) == y).sum().item()


def _batch(mnist, n=N):
    x, y = mnist[1]
    return x[:n], y[:n]


def test_checkpoints_of_100_steps():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (1.05 is past the end)
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


def test_checkpoints_of_few_steps_are_distinct_and_in_range():
    assert checkpoints(10) == [0, 3, 5, 6, 7, 8, 9, 10]
    assert checkpoints(1) == [0, 1]


def test_dlr_losses_on_hand_made_logits():
    logits = torch.tensor([[4.0, 1.0, 3.0, 0.0, 2.0], [0.0, 5.0, 1.0, 2.0, -1.0]])
    labels, targets = torch.tensor([0, 3]), torch.tensor([4, 2])
    # row 0: -(4 - 3) / (4 - 2); row 1: -(2 - 5) / (5 - 1)
    torch.testing.assert_close(dlr_loss(logits, labels), torch.tensor([-0.5, 0.75]))
    # row 0: -(4 - 2) / (4 - (2 + 1) / 2); row 1: -(2 - 1) / (5 - (1 + 0) / 2)
    torch.testing.assert_close(targeted_dlr_loss(logits, labels, targets), torch.tensor([-0.8, -1 / 4.5]))
    # invariant to a shift and a positive scale of the logits
    torch.testing.assert_close(dlr_loss(3 * logits - 7, labels), dlr_loss(logits, labels))
    torch.testing.assert_close(targeted_dlr_loss(3 * logits - 7, labels, targets),
                               targeted_dlr_loss(logits, labels, targets))


CASES = [
    # id, ours, theirs
    *[(f"apgd_{loss}_{norm}",
       lambda m, norm=norm, loss=loss: APGD(m, eps=BUDGETS[norm], norm=norm, steps=STEPS, loss=loss),
       lambda m, norm=norm, loss=loss: torchattacks.APGD(m, norm=THEIR_NORM[norm], eps=BUDGETS[norm], steps=STEPS,
                                                         loss=loss))
      for norm in ("linf", "l2") for loss in ("ce", "dlr")],
    # The top 3 other classes as targets (torchattacks: n_classes - 1 of them), to keep the test fast.
    *[(f"apgdt_{norm}",
       lambda m, norm=norm: APGDT(m, eps=BUDGETS[norm], norm=norm, steps=STEPS, n_target_classes=3),
       lambda m, norm=norm: torchattacks.APGDT(m, norm=THEIR_NORM[norm], eps=BUDGETS[norm], steps=STEPS, n_classes=4))
      for norm in ("linf", "l2")],
]


@pytest.mark.parametrize("ours, theirs", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_at_least_as_strong_as_torchattacks(cnn, mnist, ours, theirs):
    x, y = _batch(mnist)
    clean = _correct(cnn, x, y)
    torch.manual_seed(0)
    attack = ours(cnn)
    x_ours = attack(x, y)
    x_theirs = theirs(cnn)(x, y)  # torchattacks seeds torch itself (seed=0)
    ours_correct, theirs_correct = _correct(cnn, x_ours, y), _correct(cnn, x_theirs, y)
    assert theirs_correct < clean - 0.2 * N, "the reference attack should hurt: the comparison would be vacuous"
    assert ours_correct <= theirs_correct + 1, (ours_correct, theirs_correct, clean)
    p = float("inf") if attack.norm == "linf" else 2
    assert (x_ours - x).flatten(1).norm(p=p, dim=1).max() <= attack.eps * (1 + 1e-5)
    assert x_ours.min() >= 0 and x_ours.max() <= 1


@pytest.mark.parametrize("norm, loss", [("linf", "ce"), ("linf", "dlr")])  # AutoAttack's rand suite
def test_eot_at_least_as_strong_as_torchattacks(cnn, mnist, norm, loss):
    # A randomized model: Gaussian noise on the input of the trained CNN (on in eval mode). Its
    # attacks vary by a sample or two from seed to seed, so both are averaged over three seeds.
    model = nn.Sequential(stochnet.nn.GaussianNoise(0.15), cnn).eval()
    x, y = _batch(mnist)
    ours, theirs = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        x_ours = APGD(model, eps=BUDGETS[norm], norm=norm, steps=20, loss=loss, eot_samples=4)(x, y)
        x_theirs = torchattacks.APGD(model, norm=THEIR_NORM[norm], eps=BUDGETS[norm], steps=20, loss=loss,
                                     eot_iter=4, seed=seed)(x, y)
        # Both judged under the same fresh noise draws.
        ours.append(np.mean([_correct(model, x_ours, y, seed=100 + s) for s in range(4)]))
        theirs.append(np.mean([_correct(model, x_theirs, y, seed=100 + s) for s in range(4)]))
    clean = np.mean([_correct(model, x, y, seed=100 + s) for s in range(4)])
    assert np.mean(theirs) < clean - 0.2 * N
    assert np.mean(ours) <= np.mean(theirs) + 1, (ours, theirs, clean)


def test_checkpoint_halves_and_restarts_where_progress_is_too_slow(cnn):
    # Six steps since the last checkpoint; rho = 0.75 asks for 4.5 of them to raise the loss.
    # 0: 5 rises, best improved -> keeps; 1: 4 rises -> halves; 2: 5 rises but the best did not
    # improve and the step was not halved last time -> halves; 3: as 2, but halved last time -> keeps.
    x, x_best = torch.zeros(4, 3), torch.ones(4, 3)
    st = _State(step=torch.full((4,), 0.2), x=x, x_best=x_best, grad=x - 1, grad_best=x + 1,
                loss_prev=torch.zeros(4), best_loss=torch.tensor([2.0, 2.0, 1.0, 1.0]),
                best_at_check=torch.ones(4), increases=torch.tensor([5, 4, 5, 5]),
                reduced=torch.tensor([False, False, False, True]))
    APGD(cnn, eps=0.1)._checkpoint(st, 6)
    halved = torch.tensor([False, True, True, False])
    torch.testing.assert_close(st.step, torch.where(halved, 0.1, 0.2))
    torch.testing.assert_close(st.x, torch.where(halved[:, None], x_best, x))
    torch.testing.assert_close(st.grad, torch.where(halved[:, None], x + 1, x - 1))
    torch.testing.assert_close(st.loss_prev, torch.where(halved, st.best_loss, 0.0))
    assert st.reduced.tolist() == halved.tolist() and st.increases.tolist() == [0] * 4
    torch.testing.assert_close(st.best_at_check, st.best_loss)


def test_fooled_samples_leave_the_batch(cnn, mnist):
    x, y = _batch(mnist)
    rows = []
    hook = cnn.head.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    try:
        x_adv = APGD(cnn, eps=0.15, steps=20)(x, y)
    finally:
        hook.remove()
    assert _correct(cnn, x_adv, y) > 0, "some samples must survive: else the run ends early without compaction"
    # Without compaction: the clean pass, the start and 20 steps on every sample.
    assert sum(rows) < 0.5 * 22 * N, sum(rows)
    # On CPU a fooled sample leaves at once, not at the first checkpoint (step 5 of 20).
    assert checkpoints(20)[1] == 5
    steps = rows[rows.index(N) + 2:]  # after the probe's passes, the clean pass and the start
    assert steps[3] < steps[0], steps[:5]


def test_reproducible_under_manual_seed(cnn, mnist):
    model = nn.Sequential(stochnet.nn.GaussianNoise(0.15), cnn).eval()
    x, y = _batch(mnist, 32)
    outputs = []
    for _ in range(2):
        torch.manual_seed(5)
        outputs.append(APGD(model, eps=1.0, norm="l2", steps=10, loss="dlr", eot_samples=2, restarts=2)(x, y))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_seed_fixes_the_random_starts(cnn, mnist):
    x, y = _batch(mnist, 32)
    attack = APGD(cnn, eps=0.05, steps=5, seed=3)
    torch.manual_seed(0)
    first = attack(x, y)
    torch.manual_seed(1)
    torch.testing.assert_close(attack(x, y), first, rtol=0, atol=0)


def test_restores_modes_and_leaves_no_gradients(cnn, mnist):
    x, y = _batch(mnist, 16)
    cnn.train()
    cnn.features[1].eval()
    modes = [m.training for m in cnn.modules()]
    APGDT(cnn, eps=0.1, steps=5, n_target_classes=2, eot_samples=2)(x, y)
    assert [m.training for m in cnn.modules()] == modes
    assert all(p.grad is None for p in cnn.parameters())


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=0.0), "eps"), (dict(eps=-0.1), "eps"), (dict(eps=float("nan")), "eps"), (dict(eps=float("inf")), "eps"),
    (dict(eps="0.1"), "eps"), (dict(eps=torch.full((4,), 0.1)), "eps"),
    (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(steps=True), "steps"),
    (dict(eot_samples=0), "eot_samples"), (dict(restarts=0), "restarts"), (dict(n_target_classes=0), "n_target_classes"),
    (dict(loss="cw"), "loss"), (dict(norm="l1"), "norm"), (dict(rho=0.0), "rho"), (dict(rho=1.5), "rho"),
    (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(seed="0"), "seed"),
])
def test_bad_arguments_at_construction(cnn, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        APGD(cnn, **kwargs)


class _TwoClasses(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[:, :2]


class _Unflattened(_TwoClasses):
    def forward(self, x):
        return self.model(x)[:, None]


@pytest.mark.parametrize("case, match", [
    ("targets_past_classes", "n_target_classes"), ("label_too_large", "y"), ("negative_label", "y"),
    ("nan_input", "x must be finite"), ("outside_clip", "clip"), ("wrong_output_shape", "model must return"),
    ("dlr_two_classes", "dlr"), ("explicit_targets", "target"),
])
def test_bad_input_at_call(cnn, mnist, case, match):
    x, y = _batch(mnist, 4)
    attack = APGD(cnn, eps=0.1, steps=2)
    if case == "targets_past_classes":
        attack = APGDT(cnn, eps=0.1, steps=2, n_target_classes=10)
    elif case == "label_too_large":
        y = y.clone().fill_(10)
    elif case == "negative_label":
        y = y.clone().fill_(-1)
    elif case == "nan_input":
        x = x.clone()
        x[0, 0, 0, 0] = float("nan")
    elif case == "outside_clip":
        attack = APGD(cnn, eps=0.1, steps=2, clip=(0.1, 0.9))
    elif case == "wrong_output_shape":
        attack = APGD(_Unflattened(cnn), eps=0.1, steps=2)
    elif case == "dlr_two_classes":
        attack, y = APGD(_TwoClasses(cnn), eps=0.1, steps=2, loss="dlr"), y % 2
    with pytest.raises(ValueError, match=match):
        if case == "explicit_targets":
            attack.set_targeted(y)
        attack(x, y)
