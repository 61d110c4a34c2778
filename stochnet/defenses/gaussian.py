"""Gaussian data augmentation for randomized smoothing (Cohen, Rosenfeld, Kolter 2019)."""
import dataclasses

import torch.nn.functional as nnf

from .. import functional as F
from .base import Method
from .options import OptimizerOptions, option, require, with_default


@dataclasses.dataclass
class GaussianOptions(OptimizerOptions):
    """Cohen et al.'s CIFAR-10 training: noise sigma 0.25 (also 0.12, 0.5, 1.0 in the paper),
    SGD lr 0.1, momentum 0.9, weight decay 1e-4, lr x0.1 every 30 of 90 epochs (1/3, 2/3)."""

    lr_milestones: tuple = with_default(OptimizerOptions, "lr_milestones", (1 / 3, 2 / 3))
    sigma: float = option(0.25, "std of the Gaussian noise added to the inputs in [0, 1]")

    def __post_init__(self):
        super().__post_init__()
        require(self.sigma >= 0, "sigma", ">= 0", self.sigma)


class GaussianAugmentation(Method):
    """``loss = CE(f(x + sigma z), y)``, ``z ~ N(0, 1)`` per element, drawn by the fused
    ``stochnet.functional.perturb``. The noise goes on the [0, 1] input, before the model's own
    normalization, and is not clipped (as in Cohen et al.'s code); ``correct`` is on the
    noisy batch."""

    name = "gaussian"
    Options = GaussianOptions

    def loss(self, model, x, y):
        noisy = F.perturb(x, x.new_tensor(self.options.sigma))
        logits = model(noisy)
        return nnf.cross_entropy(logits, y), logits, y
