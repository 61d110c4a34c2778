"""EOT-PGD: PGD on the expectation of the loss over a randomized model's noise."""
import torch

from .base import check_count
from .gradient import PGD


class EOTPGD(PGD):
    """PGD whose gradient is the mean over ``eot_samples`` noise draws of a stochastic model
    (expectation over transformation, Athalye et al.).

    The copies go through the model as one batch of ``eot_samples * B`` inputs, so each step
    is a single forward and backward pass; the loss, and hence the gradient, is the average
    over copies. Other arguments as in :class:`PGD`.
    """

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps=10, eot_samples=10, norm="linf",
                 random_start=True, restarts=1, clip=(0.0, 1.0), targeted=False):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start,
                         restarts=restarts, clip=clip, targeted=targeted)
        self.eot_samples = check_count(eot_samples, "eot_samples")

    def input_grad(self, x_adv, labels):
        x_adv = x_adv.detach().requires_grad_(True)
        k = self.eot_samples
        copies = x_adv.unsqueeze(0).expand(k, *x_adv.shape).reshape(k * x_adv.shape[0], *x_adv.shape[1:])
        loss = self.loss(self.model(copies), labels.repeat(k)).sum() / k
        (grad,) = torch.autograd.grad(loss, x_adv)
        return grad
