"""CIFAR-10 and CIFAR-100 read from the official "python version" archives, extracted into a folder."""
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError


@dataclass(frozen=True)
class CifarFormat:
    """Where one CIFAR variant keeps its files and under which keys."""

    title: str
    folder: str
    train_files: tuple
    test_file: str
    meta_file: str
    labels_key: str
    names_key: str
    num_classes: int
    mean: tuple
    std: tuple

    def how_to_get(self, data_dir):
        return (f"download the {self.title} python version from https://www.cs.toronto.edu/~kriz/cifar.html "
                f"and extract it into {data_dir} (it creates {self.folder}/)")


# mean and std: per channel over each training set's pixels, as widely published.
CIFAR10 = CifarFormat("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      "test_batch", "batches.meta", "labels", "label_names", 10,
                      (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100 = CifarFormat("CIFAR-100", "cifar-100-python", ("train",), "test", "meta", "fine_labels",
                       "fine_label_names", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

# Unpickling can run any code a file names; the official files need only these to rebuild
# numpy arrays (older and newer numpy module paths) and bytes written by Python 3.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR file holds only arrays, "
                                         f"lists and strings")
        return super().find_class(module, name)


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else value


def _read_pickle(path, fmt, data_dir):
    """The file's dict with str keys; the official files are Python 2 pickles, hence latin1 (as torchvision reads them)."""
    if not path.is_file():
        raise DataError(f"{fmt.title} file {path.name} not found: expected {path}; {fmt.how_to_get(data_dir)}")
    try:
        with open(path, "rb") as handle:
            content = _ArrayUnpickler(handle, encoding="latin1").load()
    except Exception as err:  # any failure to unpickle means the file is not a readable CIFAR file
        raise DataError(f"{fmt.title} file {path} is corrupt or not a CIFAR pickle ({type(err).__name__}: {err}); "
                        f"{fmt.how_to_get(data_dir)}") from err
    if not isinstance(content, dict):
        raise DataError(f"{fmt.title} file {path} holds a {type(content).__name__}, not the expected dict; "
                        f"{fmt.how_to_get(data_dir)}")
    return {_text(key): value for key, value in content.items()}


def _read_batch(path, fmt, data_dir):
    content = _read_pickle(path, fmt, data_dir)
    data, labels = content.get("data"), content.get(fmt.labels_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{fmt.title} file {path} has no uint8 'data' array of shape (N, 3072); "
                        f"{fmt.how_to_get(data_dir)}")
    if not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise DataError(f"{fmt.title} file {path} has no '{fmt.labels_key}' list of {data.shape[0]} labels; "
                        f"{fmt.how_to_get(data_dir)}")
    labels = torch.tensor(labels, dtype=torch.int64)
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < fmt.num_classes):
        raise DataError(f"{fmt.title} file {path} has labels outside 0..{fmt.num_classes - 1}; "
                        f"{fmt.how_to_get(data_dir)}")
    # Each row is the red, then green, then blue 32x32 plane, row-major.
    return torch.from_numpy(data.copy()).view(-1, 3, 32, 32), labels


def _read_class_names(path, fmt, data_dir):
    names = _read_pickle(path, fmt, data_dir).get(fmt.names_key)
    if not isinstance(names, list) or len(names) != fmt.num_classes:
        raise DataError(f"{fmt.title} file {path} has no '{fmt.names_key}' list of {fmt.num_classes} class "
                        f"names; {fmt.how_to_get(data_dir)}")
    return tuple(_text(name) for name in names)


def read_cifar(fmt, data_dir):
    """``(train_images, train_labels, test_images, test_labels, class_names)`` from ``data_dir/fmt.folder``.

    Images are uint8 (N, 3, 32, 32), labels int64. Any missing or unreadable file raises
    :class:`DataError` naming the file and how to get it.
    """
    data_dir = Path(data_dir)
    root = data_dir / fmt.folder
    if not root.is_dir():
        raise DataError(f"{fmt.title} folder not found: expected {root}; {fmt.how_to_get(data_dir)}")
    classes = _read_class_names(root / fmt.meta_file, fmt, data_dir)
    parts = [_read_batch(root / name, fmt, data_dir) for name in fmt.train_files]
    train_images = torch.cat([images for images, _ in parts])
    train_labels = torch.cat([labels for _, labels in parts])
    test_images, test_labels = _read_batch(root / fmt.test_file, fmt, data_dir)
    return train_images, train_labels, test_images, test_labels, classes
