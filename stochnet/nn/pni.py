"""PNI (parametric noise injection) on weights and activations, and fixed Gaussian noise."""
import torch
from torch import nn

from .. import functional as F
from ..copies.coupling import PER_ELEMENT, PER_PASS, check_rows, copies_in_pass

ALPHA_MODES = ("layer", "channel", "element")


def _check_alpha(alpha_mode, alpha_init):
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
    if not alpha_init >= 0:
        raise ValueError(f"alpha_init must be >= 0, got {alpha_init}")


class _PNIWeight:
    """Weight noise ``W + alpha * std(W) * z`` shared by :class:`PNIConv2d` and :class:`PNILinear`.

    ``std(W)`` is the std of the whole weight tensor, detached (as in the public PNI code);
    only ``alpha`` learns the noise scale. The noise is drawn afresh at every forward, in
    train and eval mode, and shared by the rows of the batch (``noise_coupling = PER_PASS``):
    inside the copy engine's pass of ``g`` copies per sample (:func:`stochnet.copies.copies_in_pass`)
    the layer draws ``g`` weights and row ``r`` uses weight ``r % g``, in one grouped call.
    """

    noise_coupling = PER_PASS

    def _init_alpha(self, alpha_mode, alpha_init, backend):
        _check_alpha(alpha_mode, alpha_init)
        if self.weight.numel() < 2:
            raise ValueError(f"PNI weight noise needs at least 2 weights for std(W), "
                             f"got weight of shape {tuple(self.weight.shape)}")
        self.alpha_mode = alpha_mode
        self.alpha_init = float(alpha_init)
        self.backend = backend
        shape = {"layer": (), "channel": self.weight.shape[:1], "element": self.weight.shape}[alpha_mode]
        self.alpha = nn.Parameter(torch.empty(shape, device=self.weight.device, dtype=self.weight.dtype))
        self.reset_alpha()

    def reset_alpha(self):
        with torch.no_grad():
            self.alpha.fill_(self.alpha_init)

    def reset_parameters(self):
        super().reset_parameters()
        # nn.Conv2d / nn.Linear call this from their constructor, before alpha exists.
        if getattr(self, "alpha", None) is not None:
            self.reset_alpha()

    def noisy_weight(self, draws=1):
        """``draws`` fresh noisy copies of the weight, (draws, *weight.shape) (the weight's own shape
        for one draw), differentiable in the weight and in alpha."""
        weight = self.weight
        rows = weight.reshape(1, weight.shape[0], -1)
        if draws > 1:
            rows = rows.expand(draws, *rows.shape[1:]).contiguous()
        theta = self.alpha * weight.detach().std()
        if self.alpha_mode == "element":
            theta = theta.reshape(rows.shape[1:])
        noisy = F.perturb(rows, theta, backend=self.backend)
        return noisy.view(weight.shape) if draws == 1 else noisy.view(draws, *weight.shape)

    def noise_bytes_per_copy(self):
        """Memory of one more weight draw: what a pass of one more copy per sample costs here."""
        return 2 * self.weight.nelement() * self.weight.element_size()

    @staticmethod
    def _copy_from(new, module):
        with torch.no_grad():
            new.weight.copy_(module.weight)
            if module.bias is not None:
                new.bias.copy_(module.bias)
        new.weight.requires_grad_(module.weight.requires_grad)
        if module.bias is not None:
            new.bias.requires_grad_(module.bias.requires_grad)
        new.train(module.training)
        return new


class PNIConv2d(_PNIWeight, nn.Conv2d):
    """``nn.Conv2d`` with PNI weight noise ``W + alpha * std(W) * z``, on in train and eval.

    Takes nn.Conv2d's arguments plus ``alpha_mode`` ("layer": one scalar alpha, "channel":
    one per output channel, "element": one per weight), ``alpha_init`` (0.25 in the paper)
    and ``backend``. Exclude ``alpha`` from weight decay (:func:`pni_param_groups`).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None,
                 alpha_mode="layer", alpha_init=0.25, backend=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_alpha(alpha_mode, alpha_init, backend)

    @classmethod
    def from_module(cls, conv, alpha_mode="layer", alpha_init=0.25, backend=None):
        """A PNIConv2d with ``conv``'s configuration and a copy of its weight and bias."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                  device=conv.weight.device, dtype=conv.weight.dtype,
                  alpha_mode=alpha_mode, alpha_init=alpha_init, backend=backend)
        return _PNIWeight._copy_from(new, conv)

    def forward(self, x):
        copies = copies_in_pass()
        if copies == 1:
            return self._conv_forward(x, self.noisy_weight(), self.bias)
        # Copy j of every sample convolves with its own draw: the copies of a sample become channel
        # groups of one grouped convolution, (s, g * C, H, W) with g * groups groups.
        check_rows(x.shape[0], copies, type(self).__name__)
        weight = self.noisy_weight(copies).flatten(0, 1)
        bias = None if self.bias is None else self.bias.repeat(copies)
        stacked = x.reshape(x.shape[0] // copies, copies * x.shape[1], *x.shape[2:])
        if self.padding_mode != "zeros":
            stacked = nn.functional.pad(stacked, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        out = nn.functional.conv2d(stacked, weight, bias, self.stride, padding, self.dilation, self.groups * copies)
        return out.reshape(x.shape[0], self.out_channels, *out.shape[2:])

    def extra_repr(self):
        return f"{super().extra_repr()}, alpha_mode={self.alpha_mode}, alpha_init={self.alpha_init}"


class PNILinear(_PNIWeight, nn.Linear):
    """``nn.Linear`` with PNI weight noise ``W + alpha * std(W) * z``, on in train and eval.

    Takes nn.Linear's arguments plus ``alpha_mode`` ("layer", "channel": one alpha per
    output feature, "element": one per weight), ``alpha_init`` and ``backend``.
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None,
                 alpha_mode="layer", alpha_init=0.25, backend=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_alpha(alpha_mode, alpha_init, backend)

    @classmethod
    def from_module(cls, linear, alpha_mode="layer", alpha_init=0.25, backend=None):
        """A PNILinear with ``linear``'s configuration and a copy of its weight and bias."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        new = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype,
                  alpha_mode=alpha_mode, alpha_init=alpha_init, backend=backend)
        return _PNIWeight._copy_from(new, linear)

    def forward(self, x):
        copies = copies_in_pass()
        if copies == 1:
            return nn.functional.linear(x, self.noisy_weight(), self.bias)
        # Copy j of every sample multiplies its own draw: one batched matmul over the g draws.
        check_rows(x.shape[0], copies, type(self).__name__)
        by_copy = x.reshape(x.shape[0] // copies, copies, -1, self.in_features).transpose(0, 1)
        out = torch.matmul(by_copy.flatten(1, 2), self.noisy_weight(copies).transpose(1, 2))
        out = out.view(copies, x.shape[0] // copies, -1, self.out_features).transpose(0, 1)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self):
        return f"{super().extra_repr()}, alpha_mode={self.alpha_mode}, alpha_init={self.alpha_init}"


class PNI(nn.Module):
    """PNI activation noise ``y = x + alpha * std(x) * z``, on in train and eval.

    ``std(x)`` is the std of the whole input batch, detached. ``alpha_mode`` "layer" learns
    one scalar; "channel" one per channel (``num_features`` = C); "element" one per element
    of the feature map (``num_features`` = ``x.shape[1:]``, e.g. ``(C, H, W)``). Every element
    draws its own noise (``noise_coupling = PER_ELEMENT``).
    """

    noise_coupling = PER_ELEMENT

    def __init__(self, alpha_mode="layer", num_features=None, alpha_init=0.25, backend=None):
        super().__init__()
        _check_alpha(alpha_mode, alpha_init)
        if alpha_mode == "layer":
            shape = ()
        elif num_features is None:
            raise ValueError(f"num_features is required for alpha_mode={alpha_mode!r}")
        elif alpha_mode == "channel":
            if not isinstance(num_features, int) or num_features < 1:
                raise ValueError(f"num_features must be a positive int for alpha_mode='channel', "
                                 f"got {num_features!r}")
            shape = (num_features,)
        else:
            shape = (num_features,) if isinstance(num_features, int) else tuple(num_features)
            if not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
                raise ValueError(f"num_features must be the feature-map shape x.shape[1:] for "
                                 f"alpha_mode='element', got {num_features!r}")
        self.alpha_mode = alpha_mode
        self.num_features = num_features
        self.alpha_init = float(alpha_init)
        self.backend = backend
        self.alpha = nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            self.alpha.fill_(self.alpha_init)

    def forward(self, x):
        if x.numel() < 2:
            raise ValueError(f"PNI needs at least 2 elements in x for std(x), got shape {tuple(x.shape)}")
        return F.perturb(x, self.alpha * x.detach().std(), backend=self.backend)

    def extra_repr(self):
        features = "" if self.num_features is None else f", num_features={self.num_features}"
        return f"alpha_mode={self.alpha_mode}{features}, alpha_init={self.alpha_init}"


class GaussianNoise(nn.Module):
    """Fixed Gaussian noise ``y = x + std * z``; no parameters.

    ``std`` (>= 0) is a float buffer, so it follows ``.to()`` and is saved in the state
    dict. ``train`` / ``eval`` choose the modes in which the noise is on; in the others the
    module returns ``x`` itself. Every element draws its own noise.
    """

    noise_coupling = PER_ELEMENT

    def __init__(self, std, train=True, eval=True, backend=None):
        super().__init__()
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std}")
        # Not named train / eval: those are nn.Module methods.
        self.noise_in_train = bool(train)
        self.noise_in_eval = bool(eval)
        self.backend = backend
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x):
        if not (self.noise_in_train if self.training else self.noise_in_eval):
            return x
        return F.perturb(x, self.std, backend=self.backend)

    def extra_repr(self):
        return f"std={self.std.item()}, train={self.noise_in_train}, eval={self.noise_in_eval}"


def pni_param_groups(model, weight_decay):
    """Optimizer param groups with weight decay on every Parameter but the PNI ``alpha`` ones.

    Returns ``[{"params": others, "weight_decay": weight_decay}, {"params": alphas,
    "weight_decay": 0.0}]`` (empty groups left out); an ``alpha`` is any Parameter whose
    name ends in ``alpha``, as in PNIConv2d, PNILinear and PNI. Pass it to any optimizer:
    ``torch.optim.SGD(pni_param_groups(model, 3e-4), lr=0.1, momentum=0.9)``.
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if name.rsplit(".", 1)[-1] == "alpha" else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]
