"""Attacks on smoothed models: EPGD (mean of the per-copy losses) and SmoothPGD (loss of the
mean softmax) follow their loss definitions, stay inside the eps ball and the clip range, and
lower the smoothed accuracy of a small trained MNIST CNN."""
import pytest
import torch
from torch import nn

from stochnet import functional as F
from stochnet.attacks import EPGD, SmoothPGD
from stochnet.smoothing import Smooth

EPS, ALPHA, STEPS, SIGMA, M = 0.1, 0.025, 8, 0.1, 8


def _smoothed_accuracy(model, x, y, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        return (Smooth(model, SIGMA, 32)(x).argmax(1) == y).float().mean().item()


def _loss_gradient(model, x, y, loss_of_copies, seed):
    torch.manual_seed(seed)
    x = x.clone().requires_grad_()
    logits = model(F.noisy_repeat(x, M, SIGMA))
    (grad,) = torch.autograd.grad(loss_of_copies(logits, y).sum(), x)
    return grad


def test_epgd_gradient_averages_the_per_copy_losses(cnn, mnist):
    x, y = (t[:100] for t in mnist[1])
    x, y = x[:6], y[:6]

    def mean_of_losses(logits, labels):
        return nn.functional.cross_entropy(logits, labels.repeat_interleave(M), reduction="none").view(-1, M).mean(1)

    torch.manual_seed(5)
    grad = EPGD(cnn, EPS, ALPHA, STEPS, SIGMA, m=M).input_grad(x, y)
    torch.testing.assert_close(grad, _loss_gradient(cnn, x, y, mean_of_losses, seed=5))


def test_smooth_pgd_gradient_is_that_of_the_mean_softmax(cnn, mnist):
    x, y = (t[:100] for t in mnist[1])
    x, y = x[:6], y[:6]

    def loss_of_mean(logits, labels):
        mean = torch.softmax(logits, 1).view(-1, M, logits.shape[1]).mean(1)
        return nn.functional.nll_loss(mean.log(), labels, reduction="none")

    torch.manual_seed(5)
    grad = SmoothPGD(cnn, EPS, ALPHA, STEPS, SIGMA, m=M).input_grad(x, y)
    torch.testing.assert_close(grad, _loss_gradient(cnn, x, y, loss_of_mean, seed=5), rtol=1e-4, atol=1e-6)
    epgd_grad = EPGD(cnn, EPS, ALPHA, STEPS, SIGMA, m=M)
    torch.manual_seed(5)
    assert not torch.allclose(grad, epgd_grad.input_grad(x, y))   # the order of mean and log matters


@pytest.mark.parametrize("attack_class", [EPGD, SmoothPGD])
@pytest.mark.parametrize("norm,eps,alpha", [("linf", EPS, ALPHA), ("l2", 1.5, 0.4)])
def test_attack_stays_in_ball_and_lowers_smoothed_accuracy(cnn, mnist, attack_class, norm, eps, alpha):
    x, y = (t[:100] for t in mnist[1])
    cnn.train()
    torch.manual_seed(1)
    x_adv = attack_class(cnn, eps, alpha, STEPS, SIGMA, m=M, norm=norm)(x, y)
    assert cnn.training   # the caller's mode is restored
    cnn.eval()
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    clean, adversarial = _smoothed_accuracy(cnn, x, y), _smoothed_accuracy(cnn, x_adv, y)
    assert clean >= 0.75
    assert adversarial <= clean - 0.3, (clean, adversarial)


def test_targeted_epgd_moves_towards_the_target(cnn, mnist):
    x, y = (t[:100] for t in mnist[1])
    target = (y + 1) % 10
    torch.manual_seed(2)
    x_adv = EPGD(cnn, 0.2, 0.04, 10, SIGMA, m=M, targeted=True).set_targeted(target)(x, y)
    torch.manual_seed(0)
    with torch.no_grad():
        hits = (Smooth(cnn, SIGMA, 32)(x_adv).argmax(1) == target).float().mean().item()
    assert hits >= 0.3


@pytest.mark.parametrize("kwargs,message", [
    (dict(sigma=-1.0), "sigma"), (dict(sigma=float("inf")), "sigma"), (dict(m=0), "m "),
    (dict(eps=-0.1), "eps"), (dict(steps=0), "steps"), (dict(norm="l1"), "norm"), (dict(backend="gpu"), "backend"),
])
def test_bad_arguments_raise(kwargs, message):
    arguments = dict(model=nn.Linear(4, 2), eps=EPS, alpha=ALPHA, steps=2, sigma=SIGMA, m=M)
    arguments.update(kwargs)
    for attack_class in (EPGD, SmoothPGD):
        with pytest.raises(ValueError, match=message):
            attack_class(**arguments)
