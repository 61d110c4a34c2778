"""Data sets by name: images in [0, 1] with their labels, normalization statistics and shapes."""
from .augment import RandomCropFlip
from .bundle import DataBundle
from .errors import DataError
from .images import ImageDataset
from .load import DATASETS, load_data

__all__ = ["load_data", "DATASETS", "DataBundle", "DataError", "ImageDataset", "RandomCropFlip"]
