"""A DnCNN denoiser trained in front of a frozen classifier (the Dauphine student report's defense)."""
import dataclasses

import torch
import torch.nn.functional as nnf

from ..models import DenoisedClassifier, DnCNN
from .adversary import Adversary, attack_targets
from .base import Method
from .optim import make_optimizer
from .options import AdversarialOptions, option, require, with_default


@dataclasses.dataclass
class DenoiserOptions(AdversarialOptions):
    """The report's denoiser: DnCNN with 10 hidden blocks, trained on (attacked image, clean image)
    pairs. DnCNN's 64 channels. Unpublished, chosen here: Adam lr 1e-3 (DnCNN's public PyTorch
    code), no weight decay, lr x0.1 at half and three quarters; the examples by PGD-7 on the
    classifier, L-inf eps 8/255, step 2/255, random start (pass the eps the defense is meant for,
    e.g. --eps 0.3 on MNIST), adversarial pairs only (clean_weight 0)."""

    optimizer: str = with_default(AdversarialOptions, "optimizer", "adam")
    lr: float = with_default(AdversarialOptions, "lr", 1e-3)
    weight_decay: float = with_default(AdversarialOptions, "weight_decay", 0.0)
    clean_weight: float = option(0.0, "loss = clean_weight * MSE(denoise(x), x) + (1 - clean_weight) * "
                                 "MSE(denoise(x_adv), x): the weight of the clean pairs (x, x)")
    adv_start: int = option(0, "first epoch (0-based) with adversarial pairs; before it the denoiser learns "
                            "the clean pairs (x, x) only")
    denoiser_blocks: int = option(10, "hidden conv-BN-ReLU blocks of the DnCNN (the report's 10; DnCNN's "
                                  "17 layers are 15)")
    denoiser_width: int = option(64, "channels of the DnCNN's hidden layers (DnCNN's 64; fewer for quick runs)")

    def __post_init__(self):
        super().__post_init__()
        require(self.denoiser_blocks >= 0, "denoiser_blocks", ">= 0", self.denoiser_blocks)
        require(self.denoiser_width >= 1, "denoiser_width", ">= 1", self.denoiser_width)


class DenoiserTraining(Method):
    """A DnCNN (``stochnet.models.DnCNN``, as many channels as the images) in front of a trained,
    frozen classifier: the model is ``DenoisedClassifier(denoiser, classifier)``, so attacks on it
    go through the denoiser.

    - ``model`` is the trained classifier (``stochnet train --classifier CKPT``); it stays frozen
      and in eval mode, and the optimizer holds the denoiser's parameters only.
    - Each batch, the adversary (``attack``, ``eps``, ... as in adversarial training) attacks the
      classifier alone, without the denoiser; ``attack_target="prediction"`` attacks its
      predictions on the clean batch.
    - The loss is the mean squared error of the predicted residual,
      ``mean((residual(x_adv) - (x_adv - x))^2)``, which is the reconstruction error
      ``mean((denoise(x_adv) - x)^2)`` (``denoise(v) = v - residual(v)``); the denoised image is
      not clipped. With ``clean_weight`` w: ``w MSE(denoise(x), x) + (1 - w) MSE(denoise(x_adv), x)``;
      before ``adv_start`` (and with w = 1) only the clean pairs.
    - ``correct`` counts the classifier's right answers on the denoised batch the loss was
      computed on: the clean one when the loss has a clean term, else the adversarial one.
    """

    name = "denoiser"
    Options = DenoiserOptions
    needs_classifier = True

    def __init__(self, model, options, **kwargs):
        super().__init__(model, options, **kwargs)
        self.adversary = Adversary(self.model.classifier, options)

    def build_model(self, model, example_input, teacher_state):
        if example_input is None:
            raise ValueError("denoiser needs example_input (a sample batch): the DnCNN takes its channels")
        denoiser = DnCNN(example_input.shape[1], blocks=self.options.denoiser_blocks,
                         width=self.options.denoiser_width).to(example_input.device)
        return DenoisedClassifier(denoiser, model)

    def build_optimizers(self):
        return {"weights": make_optimizer(self.model.denoiser.parameters(), self.options)}

    def adversarial(self):
        """Whether this epoch trains on adversarial pairs."""
        return self.epoch >= self.options.adv_start and self.options.clean_weight < 1

    def loss(self, model, x, y):
        weight = self.options.clean_weight if self.adversarial() else 1.0
        terms, shown = [], None
        if weight > 0:
            shown = model(x, denoise_only=True)
            terms.append(weight * nnf.mse_loss(shown, x))
        if weight < 1:
            denoised = model(self.adversary(x, attack_targets(self.model.classifier, self.options, x, y)), denoise_only=True)
            terms.append((1 - weight) * nnf.mse_loss(denoised, x))
            shown = denoised if shown is None else shown
        with torch.no_grad():
            logits = self.model.classifier(shown)
        return sum(terms), logits, y
