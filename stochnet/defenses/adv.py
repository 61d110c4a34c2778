"""Adversarial training (Madry et al.) with FGSM, L-inf / L2 PGD or mixed-norm examples."""
import dataclasses

import torch.nn.functional as nnf

from .adversary import Adversary, attack_targets
from .base import Method
from .options import AdversarialOptions, with_default


@dataclasses.dataclass
class AdvOptions(AdversarialOptions):
    """Madry et al.'s CIFAR-10 recipe: PGD-7, L-inf eps 8/255, step 2/255, random start, trained
    on adversarial examples only (clean_weight 0); SGD lr 0.1, momentum 0.9, weight decay 2e-4,
    lr x0.1 at half and three quarters of training (40k and 60k of 80k iterations). L2: eps 0.5,
    step 0.1, as commonly used on CIFAR (the robustness library's setting)."""

    weight_decay: float = with_default(AdversarialOptions, "weight_decay", 2e-4)


class AdversarialTraining(Method):
    """Adversarial training: ``loss = w CE(f(x), y) + (1 - w) CE(f(x_adv), y)``, ``w = clean_weight``.

    Choices the sources leave open:

    - The clean forward (when ``w > 0``) runs first, in train mode, then the attack (eval mode,
      on the unwrapped model), then the adversarial forward in train mode: BatchNorm sees the
      clean and the adversarial batch separately, as in PNI's and Learn2Perturb's code.
    - ``attack_target="prediction"`` attacks the model's clean predictions instead of the labels
      (PNI's and Learn2Perturb's code); without a clean term they come from an extra
      eval-mode forward without gradients.
    - ``mixed``: the first ceil(B/2) samples of every batch get L-inf PGD, the rest L2 PGD.
    - Before ``adv_start`` (0-based epoch) and with ``clean_weight=1`` the loss is the clean CE.
    """

    name = "adv"
    Options = AdvOptions

    def __init__(self, model, options, **kwargs):
        super().__init__(model, options, **kwargs)
        self.adversary = Adversary(self.model, options)

    def adversarial(self):
        """Whether this epoch trains on adversarial examples."""
        return self.epoch >= self.options.adv_start and self.options.clean_weight < 1

    def loss(self, model, x, y):
        if not self.adversarial():
            return super().loss(model, x, y)
        weight = self.options.clean_weight
        clean_logits = model(x) if weight > 0 else None
        adv_logits = model(self.adversary(x, attack_targets(self.model, self.options, x, y, clean_logits)))
        loss = (1 - weight) * nnf.cross_entropy(adv_logits, y)
        if clean_logits is None:
            return loss, adv_logits, y
        return loss + weight * nnf.cross_entropy(clean_logits, y), clean_logits, y
