"""DataBundle: a loaded data set with what a model needs to be built for it."""
from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass(frozen=True)
class DataBundle:
    """Train and test sets yielding ``(float32 CHW image in [0, 1], int64 label)``, and their description.

    ``mean`` / ``std`` (one value per channel) are for the model's ``Normalize`` layer;
    ``image_size`` is the side of the square images; ``classes`` the class names in label
    order; ``val`` a held-out part of the training data (None unless asked for).
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple
    std: tuple
    classes: tuple
    val: Dataset | None = None
