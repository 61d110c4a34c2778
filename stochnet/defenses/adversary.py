"""The adversarial training examples of a method, made on the unwrapped model."""
import torch

from ..attacks import FGSM, PGD
from ..modes import eval_mode


class Adversary:
    """``adversary(x, labels) -> x_adv`` as ``AdversarialOptions`` say.

    The attacks run ``model`` (the method's own module, never a DDP wrapper) in eval mode,
    restore its train/eval flags and take gradients w.r.t. the input only, so they leave
    no parameter gradients and change no BatchNorm statistic. ``mixed`` attacks the first
    ceil(B/2) samples with L-inf PGD and the rest with L2 PGD.
    """

    def __init__(self, model, options):
        linf = PGD(model, eps=options.eps, alpha=options.step_size, steps=options.steps, norm="linf",
                   random_start=options.random_start)
        l2 = PGD(model, eps=options.eps_l2, alpha=options.step_size_l2, steps=options.steps, norm="l2",
                 random_start=options.random_start)
        self.attacks = {"fgsm": [FGSM(model, eps=options.eps)], "pgd-linf": [linf], "pgd-l2": [l2],
                        "mixed": [linf, l2]}[options.attack]

    def __call__(self, x, labels):
        if len(self.attacks) == 1:
            return self.attacks[0](x, labels)
        linf, l2 = self.attacks
        half = (x.shape[0] + 1) // 2
        if half == x.shape[0]:  # a batch of one sample has no second half
            return linf(x, labels)
        return torch.cat([linf(x[:half], labels[:half]), l2(x[half:], labels[half:])])


def attack_targets(model, options, x, labels, clean_logits=None):
    """The labels an adversary moves ``x`` away from: ``labels``, or with
    ``options.attack_target == "prediction"`` the model's predictions on the clean batch (from
    ``clean_logits`` when the caller has them, else from ``model`` in eval mode)."""
    if options.attack_target == "label":
        return labels
    if clean_logits is not None:
        return clean_logits.detach().argmax(1)
    with eval_mode(model), torch.no_grad():
        return model(x).argmax(1)
