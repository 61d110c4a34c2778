"""Attacks: closed forms on linear models, budgets, strength ordering on a tiny MNIST CNN,
model-state hygiene, targeting, EOT batching and reproducibility."""
import pytest
import torch
from torch import nn

import stochnet
from stochnet.attacks import BIM, EOTPGD, FGSM, MIM, PGD
from mnist_models import TinyCNN, run_in_mixed_modes


def _view(v, x):
    return v.view(-1, *[1] * (x.dim() - 1)) if isinstance(v, torch.Tensor) else v


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _linear_binary(features=6):
    torch.manual_seed(1)
    model = nn.Linear(features, 2)
    x = 0.3 + 0.4 * torch.rand(8, features)
    y = torch.randint(0, 2, (8,))
    w = model.weight.detach()
    direction = (w[1 - y] - w[y]).sign()
    assert (direction != 0).all()
    return model, x, y, direction


def test_fgsm_linear_closed_form():
    model, x, y, direction = _linear_binary()
    x_adv = FGSM(model, eps=0.1)(x, y)
    assert torch.equal((x_adv - x).sign(), direction)
    torch.testing.assert_close(x_adv, x + 0.1 * direction, rtol=0, atol=1e-6)


def test_fgsm_multiclass_linear_closed_form():
    # For logits Wx + b, the cross-entropy gradient is W^T (softmax - onehot(y)).
    torch.manual_seed(2)
    model = nn.Linear(5, 4)
    x = 0.3 + 0.4 * torch.rand(16, 5)
    y = torch.randint(0, 4, (16,))
    with torch.no_grad():
        grad = (model(x).softmax(1) - nn.functional.one_hot(y, 4).float()) @ model.weight
    assert (grad.abs() > 1e-5).all()
    x_adv = FGSM(model, eps=0.05)(x, y)
    assert torch.equal((x_adv - x).sign(), grad.sign())
    torch.testing.assert_close(x_adv, x + 0.05 * grad.sign(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda m, eps: PGD(m, eps=eps, alpha=0.03, steps=10, random_start=False),
    lambda m, eps: PGD(m, eps=eps, alpha=0.03, steps=10, random_start=True),
    lambda m, eps: BIM(m, eps=eps, alpha=0.03, steps=10),
    lambda m, eps: MIM(m, eps=eps, alpha=0.03, steps=10),
], ids=["pgd", "pgd_random_start", "bim", "mim"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_linf_iterative_linear_reaches_the_corner(make, per_sample):
    # The gradient sign of a binary linear model is the same everywhere: every L-inf attack
    # with alpha * steps >= 2 eps ends at the corner x + eps * sign(w_other - w_y).
    model, x, y, direction = _linear_binary()
    eps = torch.linspace(0.02, 0.1, 8) if per_sample else 0.1
    x_adv = make(model, eps)(x, y)
    torch.testing.assert_close(x_adv, x + _view(torch.as_tensor(eps), x) * direction, rtol=0, atol=1e-6)


def test_pgd_l2_linear_closed_form():
    model, x, y, _ = _linear_binary()
    w = model.weight.detach()
    d = w[1 - y] - w[y]
    d = d / d.norm(dim=1, keepdim=True)
    x_adv = PGD(model, eps=0.2, alpha=0.05, steps=6, norm="l2", random_start=False)(x, y)
    torch.testing.assert_close(x_adv, x + 0.2 * d, rtol=0, atol=1e-5)


def test_eot_on_deterministic_model_equals_pgd():
    model, x, y, _ = _linear_binary()
    torch.manual_seed(3)
    a = PGD(model, eps=0.1, alpha=0.01, steps=4, norm="l2")(x, y)
    torch.manual_seed(3)
    b = EOTPGD(model, eps=0.1, alpha=0.01, steps=4, norm="l2", eot_samples=5)(x, y)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.manual_seed(3)
    chunked = EOTPGD(model, eps=0.1, alpha=0.01, steps=4, norm="l2", eot_samples=5, max_batch=2 * x.shape[0])(x, y)
    torch.testing.assert_close(a, chunked, rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda m: FGSM(m, eps=0.1),
    lambda m: BIM(m, eps=0.1, alpha=0.02, steps=5),
    lambda m: PGD(m, eps=0.1, alpha=0.02, steps=5),
    lambda m: PGD(m, eps=1.0, alpha=0.3, steps=5, norm="l2"),
    lambda m: PGD(m, eps=torch.linspace(0.0, 0.2, 32), alpha=0.05, steps=3),
    lambda m: MIM(m, eps=0.1, alpha=0.02, steps=5),
    lambda m: EOTPGD(m, eps=0.1, alpha=0.02, steps=3, eot_samples=2),
], ids=["fgsm", "bim", "pgd_linf", "pgd_l2", "pgd_per_sample_eps", "mim", "eot"])
def test_inside_budget_and_clip_range(cnn, mnist, make):
    x, y = mnist[1][0][:32], mnist[1][1][:32]
    atk = make(cnn)
    x_adv = atk(x, y)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    eps = atk.eps if isinstance(atk.eps, torch.Tensor) else torch.full((32,), float(atk.eps))
    size = delta.norm(dim=1) if atk.norm == "l2" else delta.abs().amax(1)
    assert (size <= eps + 1e-5).all()
    assert (delta != 0).any()


def test_accuracy_drops_and_pgd_at_least_as_strong_as_fgsm(cnn, mnist):
    x, y = mnist[1]
    clean = _accuracy(cnn, x, y)
    assert clean > 0.8
    fgsm = _accuracy(cnn, FGSM(cnn, eps=0.1)(x, y), y)
    torch.manual_seed(0)
    pgd = _accuracy(cnn, PGD(cnn, eps=0.1, alpha=0.025, steps=10)(x, y), y)
    mim = _accuracy(cnn, MIM(cnn, eps=0.1, alpha=0.025, steps=10)(x, y), y)
    l2 = _accuracy(cnn, PGD(cnn, eps=1.0, alpha=0.25, steps=10, norm="l2")(x, y), y)
    strong = _accuracy(cnn, PGD(cnn, eps=0.25, alpha=0.05, steps=10)(x, y), y)
    assert fgsm < clean - 0.3
    assert pgd <= fgsm and pgd < 0.4
    assert mim < clean - 0.3 and l2 < clean - 0.2
    assert strong < 0.05


def test_restarts_never_weaker_than_one_run(cnn, mnist):
    x, y = mnist[1][0][:100], mnist[1][1][:100]
    nll = nn.functional.cross_entropy
    torch.manual_seed(5)
    one = PGD(cnn, eps=0.08, alpha=0.02, steps=4)(x, y)
    torch.manual_seed(5)
    best = PGD(cnn, eps=0.08, alpha=0.02, steps=4, restarts=3)(x, y)
    with torch.no_grad():
        l1, lk = cnn(one), cnn(best)
    s1, sk = l1.argmax(1) != y, lk.argmax(1) != y
    assert (sk | ~s1).all()
    neither = ~s1 & ~sk
    assert (nll(lk, y, reduction="none") >= nll(l1, y, reduction="none") - 1e-6)[neither].all()
    assert sk.sum() >= s1.sum()


def test_mode_restored_and_no_parameter_grads(cnn, mnist):
    x, y = mnist[1][0][:16], mnist[1][1][:16]
    attacks = (FGSM(cnn), PGD(cnn, steps=2), MIM(cnn, steps=2), EOTPGD(cnn, steps=2, eot_samples=2))
    _, seen = run_in_mixed_modes(cnn, attacks, x, y)
    assert seen and not any(training for training, _ in seen)


def test_targeted_reaches_target_more_often_than_chance(cnn, mnist):
    x, y = mnist[1][0][:100], mnist[1][1][:100]
    target = (y + 1) % 10
    atk = PGD(cnn, eps=0.2, alpha=0.04, steps=10)
    atk.set_targeted(target)
    hit = (cnn(atk(x, y)).argmax(1) == target).float().mean().item()
    hit_y_as_target = (cnn(PGD(cnn, eps=0.2, alpha=0.04, steps=10, targeted=True)(x, target)).argmax(1)
                       == target).float().mean().item()
    assert hit > 0.5 and hit_y_as_target > 0.5
    atk.set_untargeted()
    assert (cnn(atk(x, y)).argmax(1) == target).float().mean().item() < hit


@pytest.fixture()
def stochastic_cnn(mnist):
    torch.manual_seed(0)
    model = TinyCNN(act=stochnet.nn.StocReLUEMA)
    model.features[1].gamma = 0.5
    model.train()
    x, y = mnist[0][0][:64], mnist[0][1][:64]
    nn.functional.cross_entropy(model(x), y).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad(set_to_none=True)
    assert (model.features[1].running_sigma > 0).all()
    return model.eval()


def test_eot_one_forward_per_step_with_eot_times_batch(stochastic_cnn, mnist):
    x, y = mnist[1][0][:5], mnist[1][1][:5]
    calls = []
    stochastic_cnn.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    EOTPGD(stochastic_cnn, eps=0.1, alpha=0.02, steps=3, eot_samples=4)(x, y)
    # the copy engine's probe runs the model on one and two rows first
    assert max(calls[:-3]) <= 2 and calls[-3:] == [20, 20, 20]
    calls.clear()
    EOTPGD(stochastic_cnn, eps=0.1, alpha=0.02, steps=2, eot_samples=5, max_batch=12)(x, y)
    # the 5 copies of at most 2 samples per pass: 5 samples in 3 passes, as even as they go (1, 2, 2)
    assert [c for c in calls if c > 2] == [5, 10, 10] * 2
    with pytest.raises(ValueError, match="max_batch"):
        EOTPGD(stochastic_cnn, max_batch=0)


def test_reproducible_under_manual_seed(stochastic_cnn, mnist):
    x, y = mnist[1][0][:8], mnist[1][1][:8]
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append([atk(x, y) for atk in (PGD(stochastic_cnn, steps=3, restarts=2),
                                           EOTPGD(stochastic_cnn, steps=2, eot_samples=3, norm="l2", eps=1.0))])
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    torch.manual_seed(8)
    assert not torch.equal(PGD(stochastic_cnn, steps=3, restarts=2)(x, y), outs[0][0])


def test_bad_arguments_raise_clear_errors():
    model = nn.Linear(4, 2)
    x, y = torch.rand(3, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="eps"):
        PGD(model, eps=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        PGD(model, alpha=0.0)
    with pytest.raises(ValueError, match="steps"):
        PGD(model, steps=0)
    with pytest.raises(ValueError, match="steps"):
        BIM(model, steps=2.5)
    with pytest.raises(ValueError, match="norm"):
        PGD(model, norm="l1")
    with pytest.raises(ValueError, match="restarts"):
        PGD(model, restarts=0)
    with pytest.raises(ValueError, match="eot_samples"):
        EOTPGD(model, eot_samples=0)
    with pytest.raises(ValueError, match="eps"):
        FGSM(model, eps=float("nan"))
    with pytest.raises(ValueError, match="x must lie in"):
        FGSM(model)(x * 2 + 0.5, y)
    with pytest.raises(ValueError, match="y must"):
        FGSM(model)(x, y[:2])
    with pytest.raises(ValueError, match="eps"):
        PGD(model, eps=torch.full((2,), 0.1))(x, y)
    with pytest.raises(ValueError, match="target_labels"):
        PGD(model).set_targeted(torch.zeros(2, dtype=torch.long))(x, y)
