"""The Method base class: one training method's model, optimizers, schedules and state."""

import torch
import torch.nn.functional as nnf
from torch import nn

from ..ops.checks import count as _check_count
from .optim import lr_at, make_optimizer, milestone_epochs, set_lr
from .options import OptimizerOptions


class Method:
    """A training method: ``train_step`` on each batch, ``on_epoch_start`` / ``on_epoch_end``
    around each epoch, ``state_dict`` / ``load_state_dict`` for checkpoints.

    Epochs are 0-based (``range(epochs)``). Every schedule (learning rate, warm-ups, ANIS²'s
    gamma) is a pure function of the epoch, so calling ``on_epoch_start`` again for the epoch
    a resumed run was interrupted in changes nothing. ``state_dict`` holds the optimizers and
    the schedule position; with the model's own state dict and torch's RNG state it lets a
    fresh Method continue a run exactly, mid-epoch included.

    Subclasses set ``name`` and ``Options`` and override ``build_model``,
    ``build_optimizers``, ``apply_schedule`` and ``loss``.
    """

    name = None
    Options = OptimizerOptions
    # Whether ``model`` is a trained classifier that the method keeps frozen and trains a module in
    # front of (``stochnet train --classifier CKPT``), instead of the architecture to train.
    needs_classifier = False

    def __init__(self, model, options, *, epochs, example_input=None, teacher_state=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(options, self.Options):
            raise TypeError(f"options must be a {self.Options.__name__}, got {type(options).__name__}")
        if example_input is not None and not isinstance(example_input, torch.Tensor):
            raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
        self.options = options
        self.epochs = _check_count(epochs, "epochs", 1)
        self.model = self.build_model(model, example_input, teacher_state)
        self.optimizers = self.build_optimizers()
        self.milestones = milestone_epochs(options.lr_milestones, self.epochs)
        self.epoch = 0
        self.apply_schedule(0)

    # -- what subclasses define ---------------------------------------------------------

    @classmethod
    def epoch_schedules(cls, options, epochs):
        """The schedules whose shape depends on the run's total ``epochs``, as ``{name: layout}``
        (the layout for ``epochs``, 1-based epoch numbers); empty when none does. The base: the lr
        milestones when one is a fraction of the epochs."""
        if not any(m < 1 for m in options.lr_milestones):
            return {}
        drops = ", ".join(str(m + 1) for m in milestone_epochs(options.lr_milestones, epochs))
        return {"lr milestones": f"lr x{options.lr_gamma:g} from epoch(s) {drops}"}

    @classmethod
    def uses_teacher(cls, options):
        """Whether ``build_model`` reads ``teacher_state`` under ``options``; the base: no."""
        return False

    def build_model(self, model, example_input, teacher_state):
        """The module to train; the base trains ``model`` itself."""
        return model

    def build_optimizers(self):
        """``{name: optimizer}``; the base: one over every parameter with the shared options."""
        return {"weights": make_optimizer(self.model.parameters(), self.options)}

    def apply_schedule(self, epoch):
        """Set everything that depends on the epoch; must be idempotent."""
        lr = lr_at(epoch, self.options.lr, self.milestones, self.options.lr_gamma)
        for optimizer in self.optimizers.values():
            set_lr(optimizer, lr)

    def loss(self, model, x, y):
        """``(loss, logits, labels)``: the training loss and the logits whose accuracy is reported."""
        logits = model(x)
        return nnf.cross_entropy(logits, y), logits, y

    # -- the interface the training loop calls ------------------------------------------

    def train_step(self, model, x, y):
        """One optimization step on ``(x, y)``; returns ``{"loss", "correct", "count"}``.

        ``model`` is ``self.model`` or a DistributedDataParallel wrapping it: the training
        forward and backward go through it, attacks use ``self.model``. ``correct`` counts
        the right predictions of the logits the loss was computed on: the clean batch when
        the loss has a clean term, else the adversarial (or noisy) batch.
        """
        self.check_batch(model, x, y)
        model.train()
        loss, logits, labels = self.loss(model, x, y)
        self.step(loss)
        return self.metrics(loss, logits, labels)

    @staticmethod
    def metrics(loss, logits, labels):
        correct = (logits.detach().argmax(1) == labels).sum()
        # One device-to-host copy for both numbers.
        loss_value, correct_value = torch.stack([loss.detach().float(), correct.float()]).tolist()
        return {"loss": loss_value, "correct": int(correct_value), "count": int(labels.shape[0])}

    def step(self, loss):
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self.optimizers.values():
            optimizer.step()

    def on_epoch_start(self, epoch):
        self.epoch = self._check_epoch(epoch)
        self.apply_schedule(self.epoch)

    def on_epoch_end(self, epoch):
        self._check_epoch(epoch)

    def state_dict(self):
        return {"method": self.name, "epoch": self.epoch,
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state):
        self.check_state(state)
        if set(state["optimizers"]) != set(self.optimizers):
            raise ValueError(f"state has optimizers {sorted(state['optimizers'])}, expected {sorted(self.optimizers)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.epoch = self._check_epoch(state["epoch"])
        self.apply_schedule(self.epoch)

    # -- helpers ------------------------------------------------------------------------

    def check_state(self, state):
        if not isinstance(state, dict) or state.get("method") != self.name:
            found = state.get("method") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state is not a {self.name!r} method state (found {found!r})")
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise ValueError(f"{self.name!r} method state lacks {missing}")

    def _check_epoch(self, epoch):
        epoch = _check_count(epoch, "epoch", 0)
        if epoch >= self.epochs:
            raise ValueError(f"epoch must be in [0, {self.epochs}) (0-based, epochs={self.epochs}), got {epoch}")
        return epoch

    def check_batch(self, model, x, y):
        if model is not self.model and getattr(model, "module", None) is not self.model:
            raise ValueError("model must be method.model or a DistributedDataParallel wrapping it")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty floating-point batch (B, ...), got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != (x.shape[0],):
            raise ValueError(f"y must be an int64 tensor of shape ({x.shape[0]},), got "
                             f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
