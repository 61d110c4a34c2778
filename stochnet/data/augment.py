"""The standard CIFAR training augmentation, on tensors, drawing from torch's default generator."""
import torch
from torch.nn import functional as F


class RandomCropFlip:
    """Zero-pad a CHW image by ``padding``, crop it back to its size at a random place, flip it left-right with p = 0.5.

    This is ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` of the CIFAR ResNet
    papers. The crop offsets and the flip are drawn from torch's default generator, in that
    order, so ``torch.manual_seed`` (and DataLoader's per-worker seeding) makes it reproducible.
    """

    def __init__(self, padding=4):
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be an int >= 0, got {padding!r}")
        self.padding = padding

    def __call__(self, image):
        if image.dim() != 3:
            raise ValueError(f"RandomCropFlip expects one (C, H, W) image, got shape {tuple(image.shape)}")
        _, height, width = image.shape
        p = self.padding
        padded = F.pad(image, (p, p, p, p))
        top = int(torch.randint(0, 2 * p + 1, ()))
        left = int(torch.randint(0, 2 * p + 1, ()))
        crop = padded[:, top:top + height, left:left + width]
        if torch.rand(()) < 0.5:
            crop = crop.flip(-1)
        return crop.contiguous()

    def __repr__(self):
        return f"RandomCropFlip(padding={self.padding})"
