"""Learn2Perturb: learned feature-map noise, its regularizer, and the two-optimizer split."""
import math

import torch
from torch import nn

from .. import functional as F
from ..copies.coupling import PER_ELEMENT


def _shape_tuple(shape):
    if isinstance(shape, int):
        return (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be (C, H, W), (C,) or () as a tuple, got {shape!r}") from None
    if len(shape) not in (0, 1, 3) or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"shape must be (C, H, W), (C,) or () with positive sizes, got {shape}")
    return shape


class PerturbationInjection(nn.Module):
    """Learn2Perturb's perturbation injection: ``y = x + theta * z``, ``z ~ N(0, 1)`` per element.

    ``theta`` is a learnable Parameter of ``shape``: the feature-map shape ``(C, H, W)`` (one
    scale per element, as in the paper), ``(C,)`` (one per channel) or ``()`` (one for the
    layer). It is broadcast over the batch and every sample draws its own noise. The noise
    stays on in eval mode: Learn2Perturb perturbs at inference too. Call :meth:`clamp_`
    after every optimizer step to keep ``theta >= theta_min`` as the public code does.

    Example::

        noise = stochnet.nn.PerturbationInjection((64, 32, 32))
        y = noise(torch.randn(8, 64, 32, 32))
        optimizer.step(); noise.clamp_()
    """

    noise_coupling = PER_ELEMENT

    def __init__(self, shape, init=0.25, theta_min=0.01, backend=None):
        super().__init__()
        if not init >= 0:
            raise ValueError(f"init must be >= 0, got {init}")
        if not theta_min >= 0:
            raise ValueError(f"theta_min must be >= 0, got {theta_min}")
        self.shape = _shape_tuple(shape)
        self.init = float(init)
        self.theta_min = float(theta_min)
        self.backend = backend
        self.theta = nn.Parameter(torch.empty(self.shape))
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            self.theta.fill_(self.init)

    @torch.no_grad()
    def clamp_(self):
        """Clamp ``theta`` to ``>= theta_min`` in place; returns the module."""
        self.theta.clamp_(min=self.theta_min)
        return self

    def forward(self, x):
        return F.perturb(x, self.theta, backend=self.backend)

    def extra_repr(self):
        return f"{self.shape}, init={self.init}, theta_min={self.theta_min}"


def harmonic_tau(noisy_epochs):
    """Learn2Perturb's annealing ``tau = H_k = 1 + 1/2 + ... + 1/k`` for ``k = noisy_epochs``.

    ``k`` counts the epochs with noise on, the current one included, so it starts at 1 and
    ``tau`` is never 0 (the public code divides by ``H_0 = 0`` at the first noisy epoch).
    """
    if isinstance(noisy_epochs, bool) or not isinstance(noisy_epochs, int):
        raise TypeError(f"noisy_epochs must be an int, got {type(noisy_epochs).__name__}")
    if noisy_epochs < 1:
        raise ValueError(f"noisy_epochs must be >= 1 (the first noisy epoch is 1), got {noisy_epochs}")
    return math.fsum(1.0 / i for i in range(1, noisy_epochs + 1))


def _injection_modules(model_or_modules):
    modules = model_or_modules.modules() if isinstance(model_or_modules, nn.Module) else model_or_modules
    return [m for m in modules if isinstance(m, PerturbationInjection)]


def learn2perturb_regularizer(model_or_modules, noisy_epochs):
    """Learn2Perturb's regularizer ``g(theta) = -sum(sqrt(theta)) / tau`` over every injection module.

    Args:
        model_or_modules: a model (its PerturbationInjection submodules are used) or an
            iterable of modules (the PerturbationInjection ones among them are used).
        noisy_epochs: epochs with noise on so far, current one included (>= 1); ``tau`` is
            :func:`harmonic_tau` of it, so the pull toward more noise fades as training goes on.

    Returns a differentiable scalar tensor to add to the loss, scaled by the paper's
    ``gamma`` (1e-4): ``loss = ce + 1e-4 * learn2perturb_regularizer(model, k)``. Minimizing it
    grows theta. Its gradient ``-1 / (2 tau sqrt(theta))`` is infinite at ``theta = 0``, so
    keep ``theta_min > 0`` (the default 0.01) and call ``clamp_`` after each step.
    """
    tau = harmonic_tau(noisy_epochs)
    modules = _injection_modules(model_or_modules)
    if not modules:
        raise ValueError("learn2perturb_regularizer found no PerturbationInjection modules")
    return sum(-m.theta.sqrt().sum() for m in modules) / tau


def theta_parameters(model):
    """The ``theta`` Parameters of every PerturbationInjection module of ``model``, in module order."""
    return [m.theta for m in _injection_modules(model)]


def split_learn2perturb_params(model):
    """``(weights, thetas)``: the Parameters for Learn2Perturb's two optimizers.

    ``thetas`` are the noise scales of the PerturbationInjection modules (SGD without weight
    decay in the paper); ``weights`` are every other Parameter of ``model``. Each Parameter
    appears once even when shared.
    """
    thetas = theta_parameters(model)
    theta_ids = {id(t) for t in thetas}
    weights = [p for p in model.parameters() if id(p) not in theta_ids]
    return weights, thetas
