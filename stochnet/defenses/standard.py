"""Standard training: cross-entropy on the clean batch."""
import dataclasses

from .base import Method
from .options import OptimizerOptions


@dataclasses.dataclass
class StandardOptions(OptimizerOptions):
    """Defaults of He et al.'s CIFAR ResNets: SGD lr 0.1, momentum 0.9, weight decay 1e-4, lr x0.1
    at half and three quarters of training (32k and 48k of 64k iterations)."""


class Standard(Method):
    """Plain empirical risk minimisation: ``loss = CE(model(x), y)``."""

    name = "standard"
    Options = StandardOptions
