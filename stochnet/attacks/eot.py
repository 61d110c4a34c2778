"""EOT-PGD: PGD on the expectation of the loss over a randomized model's noise."""
from ..copies import per_copy_mean
from .base import check_count
from .gradient import PGD


class EOTPGD(PGD):
    """PGD whose gradient is the mean over ``eot_samples`` noise draws of a stochastic model
    (expectation over transformation, Athalye et al.).

    The copies go through :class:`stochnet.copies.CopyEngine`: every copy draws all of the model's
    noise anew (per-pass weight noise such as PNI's included), the engine picks the rows of a
    pass itself (on CPU, passes whose activations stay under the size that page-faults; on GPU,
    as many as memory holds), and a deterministic model takes one copy, since every draw is the
    same. The loss, hence the gradient, is the average over copies. ``max_batch`` (None: the
    engine decides) caps the rows of one pass. Other arguments as in :class:`PGD`.
    """

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps=10, eot_samples=10, norm="linf",
                 random_start=True, restarts=1, clip=(0.0, 1.0), targeted=False, max_batch=None):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start,
                         restarts=restarts, clip=clip, targeted=targeted)
        self.eot_samples = check_count(eot_samples, "eot_samples")
        self.max_batch = None if max_batch is None else check_count(max_batch, "max_batch")

    def _copies_loss(self, logits, labels, copies):
        return per_copy_mean(self.loss(logits, labels.repeat_interleave(copies)), copies)

    def input_grad(self, x_adv, labels):
        grad, _, _ = self.engine.input_grad(x_adv, labels, self.eot_samples, self._copies_loss)
        return grad
