"""Attacks on Gaussian-smoothed classifiers: EPGD and PGD on the soft-smoothed classifier.

Both take the base model and attack its smoothing with noise ``N(0, sigma^2)`` over ``m``
copies per sample, made by :func:`stochnet.functional.noisy_repeat` and run through
:class:`stochnet.copies.CopyEngine`, so every copy also draws the model's own noise anew and
the engine picks the passes. The noise is fresh at every step.
"""
import abc

import torch

from .. import functional as F
from ..copies import per_copy_mean
from ..smoothing.checks import check_backend, check_sigma
from .base import check_count
from .gradient import PGD


class _SmoothedPGD(PGD):
    def __init__(self, model, eps, alpha, steps, sigma, m=8, norm="linf", random_start=True, clip=(0.0, 1.0),
                 targeted=False, backend=None):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start,
                         clip=clip, targeted=targeted)
        self.sigma = check_sigma(sigma)
        self.m = check_count(m, "m")
        self.backend = check_backend(backend)

    def _noisy_copies(self, x, copies):
        return F.noisy_repeat(x, copies, self.sigma, backend=self.backend)

    def input_grad(self, x_adv, labels):
        grad, _, _ = self.engine.input_grad(x_adv, labels, self.m, self.smoothed_loss, make_rows=self._noisy_copies)
        return grad

    @abc.abstractmethod
    def smoothed_loss(self, logits, labels, copies):
        """Per-sample loss (B,) from the (B * copies, K) logits of the copies."""


class EPGD(_SmoothedPGD):
    """Expectation PGD (Smoothed Inference, Nemcovsky et al.): PGD whose gradient is that of
    the loss averaged over ``m`` noisy copies, each copy's cross-entropy taken separately
    (the mean of the losses, not the loss of the mean). Other arguments as in :class:`PGD`;
    ``backend`` selects the noise kernel.
    """

    def smoothed_loss(self, logits, labels, copies):
        return per_copy_mean(self.loss(logits, labels.repeat_interleave(copies)), copies)


class SmoothPGD(_SmoothedPGD):
    """PGD on the soft-smoothed classifier (Salman et al.'s SmoothAdv attack): the loss is the
    cross-entropy of the log of the mean softmax over ``m`` noisy copies
    (:func:`stochnet.functional.vote` in ``"soft"`` mode). Other arguments as in :class:`EPGD`.
    """

    def smoothed_loss(self, logits, labels, copies):
        mean_softmax = F.vote(logits, copies, "soft", backend=self.backend)
        log_probs = mean_softmax.clamp_min(torch.finfo(mean_softmax.dtype).tiny).log()
        ce = torch.nn.functional.nll_loss(log_probs, labels, reduction="none")
        return -ce if self.targeted else ce
