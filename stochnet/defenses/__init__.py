"""The training methods of the driver: one class per method, built by name from a flat config.

``build_method(name, model, config, epochs=..., example_input=...)``
returns a :class:`Method` whose ``train_step(model, x, y)``, ``on_epoch_start(epoch)``,
``on_epoch_end(epoch)``, ``state_dict()`` and ``load_state_dict(state)`` the training loop
calls. :data:`METHODS` is the :class:`stochnet.registry.Registry` of the methods by name;
``METHODS[name].Options`` is the dataclass of the method's options (defaults from its
source; ``metadata["help"]`` on every field).
"""
from ..registry import Registry
from .adv import AdversarialTraining, AdvOptions
from .anis2 import ANIS2, ANIS2Options, anis2_gamma
from .base import Method
from .denoiser import DenoiserOptions, DenoiserTraining
from .gaussian import GaussianAugmentation, GaussianOptions
from .l2p import L2POptions, Learn2Perturb
from .options import AdversarialOptions, OptimizerOptions, parse_options
from .pni import PNIOptions, PNITraining
from .standard import Standard, StandardOptions
from .trades import Trades, TradesOptions

# name -> Method class
METHODS = Registry("method", {cls.name: cls for cls in (Standard, AdversarialTraining, Trades, PNITraining,
                                                        Learn2Perturb, ANIS2, GaussianAugmentation,
                                                        DenoiserTraining)})


def build_method(name, model, config, *, epochs, example_input, teacher_state=None):
    """The method ``name`` over ``model`` with the options in ``config`` (a flat dict of option
    name -> value; unset options take the method's defaults).

    ``example_input`` (a sample batch) gives the shapes of the noise modules of ``l2p`` and
    ``anis2`` and the channels of ``denoiser``'s DnCNN; ``teacher_state`` is the teacher's state
    dict for ``anis2``. pni, l2p and anis2 train a converted copy of ``model``; ``denoiser`` takes
    ``model`` as its frozen classifier and trains a denoiser in front of it: use ``method.model``
    (its state dict is the one to save).
    """
    cls = METHODS.get(name)
    options = parse_options(cls.Options, config)
    return cls(model, options, epochs=epochs, example_input=example_input, teacher_state=teacher_state)


__all__ = ["METHODS", "build_method", "Method", "OptimizerOptions", "AdversarialOptions", "parse_options",
           "Standard", "StandardOptions", "AdversarialTraining", "AdvOptions", "Trades",
           "TradesOptions", "PNITraining", "PNIOptions", "Learn2Perturb", "L2POptions", "ANIS2", "ANIS2Options",
           "anis2_gamma", "GaussianAugmentation", "GaussianOptions", "DenoiserTraining", "DenoiserOptions"]
