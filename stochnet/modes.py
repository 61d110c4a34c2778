"""``eval_mode(model)``: run a model in eval mode and give every submodule its own train/eval flag back."""
import contextlib

from torch import nn


@contextlib.contextmanager
def eval_mode(model):
    """Inside, ``model`` and all its submodules are in eval mode; on exit, exceptions included, each
    submodule gets back the training flag it had on entry (so a model in train mode with a frozen,
    eval-mode part keeps both). A ``model`` that is not an ``nn.Module`` (a plain callable) is left
    alone. Yields ``model``.

    Example::

        with stochnet.modes.eval_mode(model), torch.no_grad():
            logits = model(x)
    """
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    modes = [module.training for module in modules]
    try:
        if modules:
            model.eval()
        yield model
    finally:
        for module, mode in zip(modules, modes):
            module.training = mode
