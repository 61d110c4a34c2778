import warnings

import torch
import torch.distributed as dist
from torch import nn

from .. import functional as F
from ..copies.coupling import PER_ELEMENT


class StocReLUEMA(nn.Module):
    """ANIS^2's stochastic ReLU: ``relu(x + sqrt(gamma) * sigma_c * z)``, noise on in train and eval.

    ``running_sigma`` (a buffer) is the per-channel noise scale. It starts at 0, so the
    module adds no noise until it has seen a training batch; the first training batch sets
    it to that batch's channel std, and later batches update it by the EMA
    ``sigma <- (1 - momentum) * sigma + momentum * std_c(x)``. In eval mode sigma is frozen
    and the noise stays on. ``gamma`` is a plain attribute, so a schedule can raise it.

    A training batch whose std is not finite in a channel (NaN or inf in the input) leaves that
    channel's sigma as it was, so one bad batch does not make every later output NaN. The batches
    skipped so (in one channel or more) are counted in the buffer ``skipped_updates`` and the
    first one is reported as a RuntimeWarning: at once for CPU tensors; for CUDA tensors (and
    under torch.compile), where the check would cost a host sync per call, by
    :func:`warn_skipped_updates`, which the training loop calls after each epoch. A skipped batch
    still counts in ``num_batches_tracked``: if the very first batch is skipped, the next one
    enters the EMA from the initial sigma 0 instead of replacing it.

    Example::

        act = stochnet.nn.StocReLUEMA(64, gamma=0.1)
        y = act(torch.randn(8, 64, 32, 32))
    """

    noise_coupling = PER_ELEMENT
    # Version 2 added the buffer skipped_updates; state dicts of version 1 load with it at 0.
    _version = 2

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
        self.register_buffer("skipped_updates", torch.zeros((), dtype=torch.long))
        # Whether a skipped update has been reported (one warning per module).
        self._skip_reported = False
        # Mirrors num_batches_tracked > 0 as a Python bool: branching on it needs no .item(),
        # so torch.compile traces the module without a graph break.
        self.sigma_initialized = False
        # Set by sync_stoc_relu: pool the batch statistics over the ranks of a process group.
        self.sync = False
        self.process_group = None

    def reset_parameters(self):
        self.running_sigma.zero_()
        self.num_batches_tracked.zero_()
        self.skipped_updates.zero_()
        self.sigma_initialized = False
        self._skip_reported = False

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        version = local_metadata.get("version")
        if (version is None or version < 2) and prefix + "skipped_updates" not in state_dict:
            state_dict[prefix + "skipped_updates"] = torch.zeros((), dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
        self.sigma_initialized = bool(self.num_batches_tracked > 0)

    def forward(self, x):
        if not self.training:
            return F.stoc_relu_ema(x, self.running_sigma, self.gamma, self.momentum, False, self.backend)
        # The first batch replaces the zero initial sigma instead of averaging with it.
        momentum = self.momentum if self.sigma_initialized else 1.0
        previous = self.running_sigma.clone()
        if self.sync:
            y = self._synchronized_forward(x, momentum)
        else:
            y = F.stoc_relu_ema(x, self.running_sigma, self.gamma, momentum, True, self.backend)
        # Counted only once the op has accepted the batch: a rejected one changes no state.
        skipped = self._keep_finite(previous)
        self.sigma_initialized = True
        self.num_batches_tracked.add_(1)
        if not self._skip_reported and x.device.type == "cpu" and not torch.compiler.is_compiling() and bool(skipped):
            self._warn_skipped(repr(self), int(self.skipped_updates))
        return y

    def _keep_finite(self, previous):
        """Undo the update of every channel it made non-finite, on the device (no host sync);
        returns whether any channel was undone, as a 0-d bool tensor."""
        with torch.no_grad():
            finite = self.running_sigma.isfinite()
            self.running_sigma.copy_(torch.where(finite, self.running_sigma, previous))
            skipped = finite.logical_not().any()
            self.skipped_updates.add_(skipped)
        return skipped

    def _warn_skipped(self, name, count):
        self._skip_reported = True
        warnings.warn(f"{name}: {count} training batch(es) had a non-finite channel std (NaN or inf in the "
                      "input): their EMA updates were skipped and running_sigma kept; the buffer "
                      "skipped_updates counts them, and further skips are not reported", RuntimeWarning, stacklevel=3)

    def _synchronized_forward(self, x, momentum):
        """Training step whose EMA uses the std pooled over every rank's batch, like SyncBatchNorm.

        The call's noise uses sigma from before the update, as in the single-process op, so the
        fused op runs with ``training=False`` and the update follows.
        """
        y = F.stoc_relu_ema(x, self.running_sigma, self.gamma, momentum, False, self.backend)
        with torch.no_grad():
            std = pooled_channel_std(x.detach(), self.process_group)
            self.running_sigma.mul_(1 - momentum).add_(momentum * std.to(self.running_sigma.dtype))
        return y

    def extra_repr(self):
        return f"{self.num_features}, gamma={self.gamma}, momentum={self.momentum}"


def warn_skipped_updates(model):
    """Warn once for every :class:`StocReLUEMA` of ``model`` that skipped an update since it was
    built or last reset (see the class), naming the module; returns ``{name: skipped_updates}``
    of the modules with skips. Reads every counter in one device-to-host copy, so call it where
    the caller syncs anyway (the training loop does after each epoch)."""
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, StocReLUEMA)]
    if not modules:
        return {}
    device = modules[0][1].skipped_updates.device
    counts = torch.stack([m.skipped_updates.to(device) for _, m in modules]).tolist()
    for (name, module), count in zip(modules, counts):
        if count and not module._skip_reported:
            module._warn_skipped(f"{name or 'the model'} ({module!r})", count)
    return {name: count for (name, _), count in zip(modules, counts) if count}


def pooled_channel_std(x, process_group=None):
    """Unbiased per-channel std of ``x`` (every dim but 1) over the batches of all ranks of
    ``process_group`` (the default group when None; this process alone when torch.distributed
    is not initialized), from float64 per-rank counts, sums and sums of squares. A channel with a
    single value over all ranks gets std 0 (checking it would cost a device-to-host sync)."""
    dims = [d for d in range(x.dim()) if d != 1]
    values = x.double()
    count = torch.full((x.shape[1],), x.numel() // x.shape[1], dtype=torch.float64, device=x.device)
    stats = torch.stack([count, values.sum(dims), (values * values).sum(dims)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats, group=process_group)
    count, total, total_sq = stats
    variance = (total_sq - total * total / count) / (count - 1).clamp_min(1)
    return variance.clamp_min(0).sqrt()


def sync_stoc_relu(model, process_group=None):
    """Make every :class:`StocReLUEMA` of ``model`` pool its batch statistics over the ranks of
    ``process_group`` (default: the whole world) before its EMA update, as SyncBatchNorm does
    for BatchNorm; every rank then keeps the same ``running_sigma``. Returns ``model``.

    Each rank still draws its own noise. Outside an initialized process group the pooled
    statistics are this process's own, so a synchronized model also trains alone.
    """
    for module in model.modules():
        if isinstance(module, StocReLUEMA):
            module.sync = True
            module.process_group = process_group
    return model
