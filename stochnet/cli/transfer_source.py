"""The source model of ``stochnet eval``'s transfer attacks: the model their examples are crafted on."""
from dataclasses import dataclass

import torch

from .errors import UsageError

# What a model's inputs and outputs look like: a source must agree with every target on them.
_DATA_SHAPE = ("in_channels", "image_size", "num_classes")


@dataclass(frozen=True)
class Source:
    """A loaded source checkpoint: its path, the run arguments stored in it, and the rebuilt model;
    ``classifier_of`` is True for the bare classifier inside a checkpoint trained in front of one
    (``args`` are then the classifier's)."""

    path: str
    args: dict
    model: torch.nn.Module
    classifier_of: bool = False


def load_source(path, target_states, device):
    """The source checkpoint at ``path`` as a :class:`Source` on ``device``, after checking that it
    takes the input shape and predicts the classes of every ``(path, state)`` in ``target_states``."""
    from ..train import load_checkpoint, model_from_checkpoint

    state = load_checkpoint(path)
    for target_path, target_state in target_states:
        source_shape, target_shape = _data_shape(state), _data_shape(target_state)
        if source_shape != target_shape:
            raise UsageError(f"--source-checkpoint {path} takes {_describe(source_shape)} but --checkpoint "
                             f"{target_path} takes {_describe(target_shape)}: a transfer attack needs the "
                             "same input shape and classes")
    return Source(path=str(path), args=state["args"], model=model_from_checkpoint(state, device))


def _data_shape(state):
    info = state["args"]["data_info"]
    return tuple(info[key] for key in _DATA_SHAPE)


def _describe(shape):
    channels, size, classes = shape
    return f"{channels}x{size}x{size} images of {classes} classes"


def has_classifier(state):
    """Whether a loaded checkpoint holds a frozen classifier behind another module (``--method denoiser``)."""
    return "classifier_args" in state["args"]


def classifier_source(path, state, model):
    """The bare classifier of the checkpoint at ``path`` (loaded as ``state``; ``model`` is the
    ``stochnet.models.DenoisedClassifier`` rebuilt from it) as a :class:`Source`: transfer examples
    crafted on it alone, without the denoiser in front."""
    return Source(path=str(path), args=state["args"]["classifier_args"], model=model.classifier, classifier_of=True)
