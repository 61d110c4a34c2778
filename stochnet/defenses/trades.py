"""TRADES (Zhang et al. 2019): clean cross-entropy plus beta times the KL divergence to the
model's own prediction on an adversarial point that maximizes that divergence."""
import dataclasses

import torch
import torch.nn.functional as nnf

from .. import functional as F
from ..modes import eval_mode
from .base import Method
from .options import OptimizerOptions, option, require, with_default


@dataclasses.dataclass
class TradesOptions(OptimizerOptions):
    """TRADES's CIFAR-10 settings: beta 6, L-inf eps 8/255 (0.031), 10 steps, start at
    x + 0.001 N(0, 1); SGD lr 0.1, momentum 0.9, weight decay 2e-4, lr x0.1 at 75% and 90% of
    training (epochs 75 and 90 of 100). The step is 2/255 (the code's 0.007 is 1.8/255)."""

    weight_decay: float = with_default(OptimizerOptions, "weight_decay", 2e-4)
    lr_milestones: tuple = with_default(OptimizerOptions, "lr_milestones", (0.75, 0.9))
    beta: float = option(6.0, "weight of the KL robustness term")
    eps: float = option(8 / 255, "L-inf budget of the inner maximization")
    step_size: float = option(2 / 255, "step size of the inner maximization")
    steps: int = option(10, "steps of the inner maximization")
    start_std: float = option(0.001, "std of the Gaussian random start around x")

    def __post_init__(self):
        super().__post_init__()
        require(self.beta >= 0, "beta", ">= 0", self.beta)
        require(0 <= self.eps <= 1, "eps", "in [0, 1]", self.eps)
        require(self.step_size > 0, "step_size", "> 0", self.step_size)
        require(self.steps >= 1, "steps", ">= 1", self.steps)
        require(self.start_std >= 0, "start_std", ">= 0", self.start_std)


class Trades(Method):
    """``loss = CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))`` (batch mean).

    The inner maximization runs the unwrapped model in eval mode (as TRADES's code) and
    ascends the summed KL with fused L-inf PGD steps (``stochnet.functional.pgd_step``) from
    ``x + start_std * z``; the clean target distribution is computed once per batch (TRADES's
    code recomputes it every step, which for a deterministic model in eval mode is the same).
    The outer loss differentiates through both terms, in train mode; ``correct`` is on x.
    """

    name = "trades"
    Options = TradesOptions

    def loss(self, model, x, y):
        x_adv = self.inner_maximization(x)
        logits = model(x)
        adv_logits = model(x_adv)
        kl = nnf.kl_div(nnf.log_softmax(adv_logits, 1), nnf.softmax(logits, 1), reduction="batchmean")
        return nnf.cross_entropy(logits, y) + self.options.beta * kl, logits, y

    def inner_maximization(self, x):
        o = self.options
        x = x.detach()
        with eval_mode(self.model), torch.enable_grad():
            with torch.no_grad():
                target = nnf.softmax(self.model(x), 1)
            x_adv = F.perturb(x, x.new_tensor(o.start_std)) if o.start_std > 0 else x
            for _ in range(o.steps):
                x_adv = x_adv.detach().requires_grad_(True)
                kl = nnf.kl_div(nnf.log_softmax(self.model(x_adv), 1), target, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
                x_adv = F.pgd_step(x_adv.detach(), grad, x, o.eps, o.step_size, norm="linf")
        return x_adv.detach()
