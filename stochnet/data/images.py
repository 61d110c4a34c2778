"""A Dataset over uint8 images held in memory."""
import torch
from torch.utils.data import Dataset


class ImageDataset(Dataset):
    """uint8 images ``(N, C, H, W)`` and labels; item ``i`` is ``(float32 image / 255, int64 label)``.

    Images stay uint8 in memory (a quarter of float32) and are scaled per item;
    ``transform`` (for example :class:`RandomCropFlip`) runs on the scaled image.
    ``images`` and ``labels`` are public for code that wants whole batches at once.
    """

    def __init__(self, images, labels, transform=None):
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor of shape (N, C, H, W), got "
                             f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be an int64 tensor of shape ({images.shape[0]},), got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        image = self.images[index].to(torch.float32).div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]
