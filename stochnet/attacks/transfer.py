"""Transfer (black-box) attacks: craft on a source model, evaluate on a target model."""
import torch

from ..modes import eval_mode
from .base import Attack


def _predict(model, x):
    with eval_mode(model), torch.no_grad():
        return model(x).argmax(1)


def transfer_success(target_model, x, x_adv, y):
    """Accuracy of ``target_model`` on x and x_adv, and the attack success rate.

    Returns a dict with ``clean_accuracy``, ``adv_accuracy`` and ``asr`` (the fraction of the
    samples the target classifies correctly on x that it misclassifies on x_adv; 0 when none is
    correct). Evaluated in eval mode under ``torch.no_grad()``; the model's mode is restored.
    """
    if not callable(target_model):
        raise TypeError(f"target_model must be callable, got {type(target_model).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(x_adv, torch.Tensor) or x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must be tensors of the same shape, got "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(x_adv, 'shape', ()))}")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError(f"y must be a tensor of shape ({x.shape[0]},), got {tuple(getattr(y, 'shape', ()))}")
    clean = _predict(target_model, x) == y
    adv = _predict(target_model, x_adv) == y
    n_clean = int(clean.sum())
    return {
        "clean_accuracy": clean.float().mean().item(),
        "adv_accuracy": adv.float().mean().item(),
        "asr": (clean & ~adv).sum().item() / n_clean if n_clean else 0.0,
    }


class Transfer(Attack):
    """Transfer attack: ``Transfer(PGD(source_model, ...))(x, y)`` returns the examples crafted
    by ``source_attack`` on its own (source) model, meant for another, unseen target model.

    ``target_model`` (optional) is only used by :meth:`evaluate`, which also reports the
    target's accuracy and the attack success rate (see :func:`transfer_success`). Targeting is
    forwarded to the source attack.
    """

    def __init__(self, source_attack, target_model=None):
        if not isinstance(source_attack, Attack):
            raise TypeError(f"source_attack must be an Attack, got {type(source_attack).__name__}")
        if target_model is not None and not callable(target_model):
            raise TypeError(f"target_model must be callable, got {type(target_model).__name__}")
        super().__init__(source_attack.model, clip=source_attack.clip, targeted=source_attack.targeted)
        self.source_attack = source_attack
        self.target_model = target_model

    def set_targeted(self, target_labels=None):
        self.source_attack.set_targeted(target_labels)
        return super().set_targeted(target_labels)

    def set_untargeted(self):
        self.source_attack.set_untargeted()
        return super().set_untargeted()

    def perturb(self, x, labels):
        return self.source_attack.perturb(x, labels)

    def evaluate(self, x, y):
        """``(x_adv, report)`` with report = ``transfer_success(target_model, x, x_adv, y)``."""
        if self.target_model is None:
            raise ValueError("evaluate needs a target_model")
        x_adv = self(x, y)
        return x_adv, transfer_success(self.target_model, x, x_adv, y)
