"""The Attack base class: input checks, eval mode handling, targeting, and the input gradient."""
import abc
import math
import numbers

import torch
import torch.nn.functional as nnf

from ..copies import CopyEngine
from ..modes import eval_mode
from ..ops.checks import count as check_count  # noqa: F401  (the attacks' count check)

NORMS = ("linf", "l2")
DROP_EVERY = 10  # on GPU, the steps between the syncs that drop fooled samples from an attack's batch


def steps_between_drops(x):
    """How often an iterative attack drops the samples it has fooled: on CPU every step (a host sync
    costs nothing there), on GPU every :data:`DROP_EVERY` steps."""
    return 1 if x.device.type == "cpu" else DROP_EVERY


def check_budget(value, name, allow_zero=True):
    """Validate eps / alpha: a finite number or a 1-D tensor of per-sample values."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or not value.is_floating_point():
            raise ValueError(f"{name} must be a float or a 1-D float tensor of per-sample values, "
                             f"got a tensor of shape {tuple(value.shape)} and dtype {value.dtype}")
        low = value.min().item() if value.numel() else 0.0
        high = value.max().item() if value.numel() else 0.0
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        low = high = float(value)
    else:
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} must be finite, got {value}")
    if low < 0 or (not allow_zero and low == 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def check_positive(value, name):
    """A finite number > 0 (a float option: eps of a one-budget attack, a learning rate, ...)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_seed(seed):
    """None (torch's default generator) or an int >= 0."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return seed


def check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


class Attack(abc.ABC):
    """Base of the attacks: ``x_adv = attack(x, y)`` with x in [0, 1] and y integer labels.

    During the call the model is in eval mode; the training flag of every submodule is
    restored afterwards. Gradients are taken w.r.t. the input only (``torch.autograd.grad``),
    so no ``.grad`` is ever left on the model's parameters. Randomness (random starts, noise
    inside stochastic models) comes from torch's default generator, so ``torch.manual_seed``
    makes an attack reproducible.

    Targeted mode: ``attack.set_targeted(target_labels)`` attacks towards fixed targets (y is
    still the true label), or construct with ``targeted=True`` and pass the targets as y.
    The loss is the summed cross-entropy (its negative when targeted), so the step size of a
    sample does not depend on the batch size.
    """

    def __init__(self, model, clip=(0.0, 1.0), targeted=False):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        lo, hi = clip
        if not (0.0 <= lo < hi <= 1.0):
            raise ValueError(f"clip must be (lo, hi) with 0 <= lo < hi <= 1, got {clip}")
        self.model = model
        self.clip = (float(lo), float(hi))
        self.targeted = bool(targeted)
        self.target_labels = None
        self._engine = None
        self._label_max = None  # the largest label of the current call, until checked against the classes

    def set_targeted(self, target_labels=None):
        """Attack towards ``target_labels`` (or towards y itself when None)."""
        if target_labels is not None and not isinstance(target_labels, torch.Tensor):
            raise TypeError(f"target_labels must be a tensor, got {type(target_labels).__name__}")
        self.targeted = True
        self.target_labels = target_labels
        return self

    def set_untargeted(self):
        self.targeted = False
        self.target_labels = None
        return self

    @property
    def engine(self):
        """The :class:`stochnet.copies.CopyEngine` that runs copies of inputs through the model: made on
        first use in a call (so it probes the model in the call's mode), new for every call."""
        if self._engine is None:
            self._engine = CopyEngine(self.model, max_rows=getattr(self, "max_batch", None))
        return self._engine

    def __call__(self, x, y):
        x, labels = self._check_inputs(x, y)
        self._engine = None
        with eval_mode(self.model), torch.enable_grad():
            x_adv = self.perturb(x, labels)
        return x_adv.detach()

    @abc.abstractmethod
    def perturb(self, x, labels):
        """Return the adversarial batch; ``labels`` are the targets in targeted mode."""

    def _check_inputs(self, x, y):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty batch of shape (B, ...), got {tuple(x.shape)}")
        # one host sync for the whole check: finiteness and range in a single tensor
        finite, low, high = torch.stack([torch.isfinite(x).all().to(x.dtype), x.min(), x.max()]).tolist()
        if not finite:
            raise ValueError("x must be finite: it holds NaN or inf")
        lo, hi = self.clip
        if low < lo or high > hi:
            where = "[0, 1] (normalization belongs inside the model)" if self.clip == (0.0, 1.0) else f"clip={self.clip}"
            raise ValueError(f"x must lie in {where}, got values in [{low:.4g}, {high:.4g}]")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != (x.shape[0],):
            raise ValueError(f"y must be an int64 tensor of shape ({x.shape[0]},), got "
                             f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
        labels = y
        if self.targeted and self.target_labels is not None:
            labels = self.target_labels
            if labels.dtype != torch.long or labels.shape != y.shape:
                raise ValueError(f"target_labels must be an int64 tensor of shape {tuple(y.shape)}, "
                                 f"got {labels.dtype} {tuple(labels.shape)}")
            labels = labels.to(y.device)
        for name, values in (("y", y), ("target_labels", labels)):
            if bool((values < 0).any()):
                raise ValueError(f"{name} must hold class labels >= 0, got {values.min().item()} (cross-entropy's "
                                 "ignore index -100 would leave such samples unattacked)")
        self._label_max = torch.maximum(y.max(), labels.max())
        return x.detach().contiguous(), labels

    def check_classes(self, logits, labels):
        """Once per call, on the first logits: the model returns (rows, K) and every label of the call
        (y and the targets) lies below K."""
        if self._label_max is None:
            return
        if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
            raise ValueError(f"model must return (batch, classes) logits; for {labels.shape[0]} inputs it returned "
                             f"{tuple(logits.shape)}")
        top = self._label_max.item()
        if top >= logits.shape[1]:
            raise ValueError(f"labels must lie in [0, {logits.shape[1]}) for a model of {logits.shape[1]} classes, "
                             f"got {top} in y{' or target_labels' if self.targeted else ''}")
        self._label_max = None

    def _per_sample(self, value, x):
        """A per-sample (B,) eps / alpha tensor moved to x's device; floats pass through."""
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            if value.shape[0] != x.shape[0]:
                raise ValueError(f"per-sample eps / alpha must have shape ({x.shape[0]},), got {tuple(value.shape)}")
            return value.to(device=x.device, dtype=x.dtype)
        return float(value) if isinstance(value, torch.Tensor) else value

    def loss(self, logits, labels):
        """Per-sample loss the attack ascends: CE, or -CE towards the target when targeted."""
        self.check_classes(logits, labels)
        ce = nnf.cross_entropy(logits, labels, reduction="none")
        return -ce if self.targeted else ce

    def input_grad(self, x_adv, labels):
        """Gradient of the summed loss w.r.t. the input only."""
        x_adv = x_adv.detach().requires_grad_(True)
        loss = self.loss(self.model(x_adv), labels).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        return grad

    def success(self, logits, labels):
        """Whether each sample is misclassified (untargeted) or classified as its target."""
        pred = logits.argmax(1)
        return pred == labels if self.targeted else pred != labels
