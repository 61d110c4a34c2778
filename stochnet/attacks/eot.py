"""EOT-PGD: PGD on the expectation of the loss over a randomized model's noise."""
import torch

from .base import check_count
from .gradient import PGD


class EOTPGD(PGD):
    """PGD whose gradient is the mean over ``eot_samples`` noise draws of a stochastic model
    (expectation over transformation, Athalye et al.).

    The copies go through the model as one batch of ``eot_samples * B`` inputs, so each step
    is a single forward and backward pass; the loss, and hence the gradient, is the average
    over copies. ``max_batch`` (None: no limit) caps the rows of one pass: the copies then go
    in as few passes as fit, whole copies of the batch each (at least one), and the gradients
    add up to the same average. On CPU, activations of 32 MB or more are fresh mappings of
    the C library that page-fault on every pass (measured: 8 copies of a 64-image CIFAR batch
    through a small CNN, one pass 269 ms, passes of 4 copies 171 ms; with PyTorch's
    ``THP_MEM_ALLOC_ENABLE=1`` 185 ms and 181 ms), so there a ``max_batch`` that keeps each
    pass's activations under that size is faster. Other arguments as in :class:`PGD`.
    """

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps=10, eot_samples=10, norm="linf",
                 random_start=True, restarts=1, clip=(0.0, 1.0), targeted=False, max_batch=None):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start,
                         restarts=restarts, clip=clip, targeted=targeted)
        self.eot_samples = check_count(eot_samples, "eot_samples")
        self.max_batch = None if max_batch is None else check_count(max_batch, "max_batch")

    def input_grad(self, x_adv, labels):
        x_adv = x_adv.detach().requires_grad_(True)
        batch, k = x_adv.shape[0], self.eot_samples
        per_pass = k if self.max_batch is None else max(1, min(k, self.max_batch // batch))
        grad = torch.zeros_like(x_adv)
        for done in range(0, k, per_pass):
            copies_now = min(per_pass, k - done)
            copies = x_adv.unsqueeze(0).expand(copies_now, *x_adv.shape).reshape(-1, *x_adv.shape[1:])
            loss = self.loss(self.model(copies), labels.repeat(copies_now)).sum() / k
            grad += torch.autograd.grad(loss, x_adv)[0]
        return grad
