"""The tiny image task the training-method tests share: four classes of 1x8x8 images, a small
CNN with BatchNorm, and the one-thread fixture that keeps its convolutions fast."""
import pytest
import torch
from torch import nn

CLASSES = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run far slower on two threads of a busy 2-core machine than on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net():
    """Conv+BN pairs in a Sequential (Learn2Perturb's injection sites), one ReLU per call site;
    BatchNorm's running statistics would move in train mode."""
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, CLASSES))


def tiny_data(n=128, seed=0, noise=0.15):
    """Four classes of 1x8x8 images in [0, 1]: a fixed template per class plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(CLASSES, 1, 8, 8, generator=g)
    y = torch.arange(n) % CLASSES
    x = (templates[y] + noise * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y
