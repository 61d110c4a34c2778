"""Per-channel input normalization as the first layer of a model, so that models take inputs in [0, 1]."""
import math

import torch
from torch import nn


def _channel_values(values, name):
    try:
        values = tuple(float(v) for v in values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of per-channel numbers, got {values!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers, got {values}")
    return values


class Normalize(nn.Module):
    """``(x - mean[c]) / std[c]`` over the channels of an NCHW batch; the identity when both are None.

    Attacks and noise work on inputs in [0, 1]; keeping the dataset's normalization inside the
    model lets them bound perturbations in pixel space. ``mean`` and ``std`` are buffers, so
    a checkpoint carries the normalization its model was trained with.
    """

    def __init__(self, mean=None, std=None):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError(f"mean and std must be given together or both left None, got mean={mean!r}, std={std!r}")
        if mean is None:
            self.register_buffer("mean", None)
            self.register_buffer("std", None)
            return
        mean, std = _channel_values(mean, "mean"), _channel_values(std, "std")
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have one value per channel each, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be > 0 in every channel, got {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    @property
    def num_channels(self):
        """How many channels the normalization expects (None when it is the identity)."""
        return None if self.mean is None else self.mean.shape[1]

    def forward(self, x):
        if self.mean is None:
            return x
        return (x - self.mean) / self.std

    def extra_repr(self):
        if self.mean is None:
            return "identity"
        return f"mean={tuple(self.mean.flatten().tolist())}, std={tuple(self.std.flatten().tolist())}"
