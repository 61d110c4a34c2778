import torch
from torch import nn

from .. import functional as F


class StocReLUEMA(nn.Module):
    """ANIS^2's stochastic ReLU: ``relu(x + sqrt(gamma) * sigma_c * z)``, noise on in train and eval.

    ``running_sigma`` (a buffer) is the per-channel noise scale. It starts at 0, so the
    module adds no noise until it has seen a training batch; the first training batch sets
    it to that batch's channel std, and later batches update it by the EMA
    ``sigma <- (1 - momentum) * sigma + momentum * std_c(x)``. In eval mode sigma is frozen
    and the noise stays on. ``gamma`` is a plain attribute, so a schedule can raise it.

    Example::

        act = stochnet.nn.StocReLUEMA(64, gamma=0.1)
        y = act(torch.randn(8, 64, 32, 32))
    """

    def __init__(self, num_features, gamma=0.1, momentum=0.5, backend=None):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.num_features = num_features
        self.gamma = gamma
        self.momentum = momentum
        self.backend = backend
        self.register_buffer("running_sigma", torch.zeros(num_features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        # Mirrors num_batches_tracked > 0 as a Python bool: branching on it needs no .item(),
        # so torch.compile traces the module without a graph break.
        self.sigma_initialized = False

    def reset_parameters(self):
        self.running_sigma.zero_()
        self.num_batches_tracked.zero_()
        self.sigma_initialized = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.sigma_initialized = bool(self.num_batches_tracked > 0)

    def forward(self, x):
        momentum = self.momentum
        if self.training:
            # The first batch replaces the zero initial sigma instead of averaging with it.
            if not self.sigma_initialized:
                momentum = 1.0
                self.sigma_initialized = True
            self.num_batches_tracked.add_(1)
        return F.stoc_relu_ema(x, self.running_sigma, self.gamma, momentum, self.training, self.backend)

    def extra_repr(self):
        return f"{self.num_features}, gamma={self.gamma}, momentum={self.momentum}"
