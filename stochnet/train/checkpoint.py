"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, plain containers, numbers and strings, so loading it runs no
pickled code. Its keys: ``format``, ``epoch`` (epochs completed), ``args`` (the run's
arguments, enough to rebuild the model), ``model`` (state dict), ``noise`` (plain noise
attributes that are not in the state dict, such as StocReLUEMA's scheduled ``gamma``),
``method`` (optimizers, schedulers, schedules), ``rng`` (one entry per rank) and ``history``
(per-epoch metrics). A run trained in front of a frozen classifier (``--method denoiser``) also
stores that classifier's run arguments in ``args.classifier_args``; its weights are in ``model``.
:func:`load_checkpoint` checks these parts (``SCHEMA``, and ``ARGS_SCHEMA`` for the classifier's
arguments) before any command reads them.
"""
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

FORMAT = "stochnet-checkpoint-v1"
NOISE_ATTRIBUTES = ("gamma",)


def _count(low):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _of(kind):
    return lambda v: isinstance(v, kind)


def _numbers(v):
    return isinstance(v, list) and all(_number(item) for item in v)


def _tensors(v):
    return isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values())


def _noise(v):
    return isinstance(v, dict) and all(isinstance(values, dict) and all(_number(x) for x in values.values())
                                       for values in v.values())


# What the commands read from a checkpoint: dotted key -> (what it must be, check). A parent
# key comes before its children.
SCHEMA = {
    "epoch": ("an integer >= 0", _count(0)),
    "args": ("a dict", _of(dict)),
    "model": ("a dict of tensors", _tensors),
    "noise": ("a dict of {attribute: number} dicts", _noise),
    "method": ("a dict", _of(dict)),
    "rng": ("a list", _of(list)),
    "history": ("a list", _of(list)),
    "args.method": ("a string", _of(str)),
    "args.model": ("a string", _of(str)),
    "args.data": ("a string", _of(str)),
    "args.data_dir": ("a string or None", lambda v: v is None or isinstance(v, str)),
    "args.epochs": ("an integer >= 1", _count(1)),
    "args.width": ("a number > 0", lambda v: _number(v) and v > 0),
    "args.options": ("a dict", _of(dict)),
    "args.data_info": ("a dict", _of(dict)),
    "args.data_info.num_classes": ("an integer >= 1", _count(1)),
    "args.data_info.in_channels": ("an integer >= 1", _count(1)),
    "args.data_info.image_size": ("an integer >= 1", _count(1)),
    "args.data_info.mean": ("a list of numbers", _numbers),
    "args.data_info.std": ("a list of numbers", _numbers),
}
# The rules of SCHEMA's ``args.*``, for run arguments stored inside a checkpoint (``args.classifier_args``).
ARGS_SCHEMA = {key[len("args."):]: rule for key, rule in SCHEMA.items() if key.startswith("args.")}


def non_finite_tensors(state_dict):
    """The names of the floating-point tensors of ``state_dict`` that hold NaN or inf, in order."""
    return [name for name, t in state_dict.items() if t.is_floating_point() and not t.isfinite().all()]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not a stochnet checkpoint."""


def capture_rng_state():
    """This process's RNG states (torch CPU and CUDA, python, numpy) as tensors and plain values."""
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": [version, torch.tensor(words, dtype=torch.int64), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)]}
    state["cuda"] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return state


def restore_rng_state(state):
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    version, words, gauss = state["python"]
    random.setstate((version, tuple(int(w) for w in words.tolist()), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def noise_attributes(model):
    """``{module name: {attribute: value}}`` for plain noise attributes a schedule changes."""
    found = {}
    for name, module in model.named_modules():
        values = {a: getattr(module, a) for a in NOISE_ATTRIBUTES
                  if isinstance(getattr(module, a, None), (int, float)) and not isinstance(getattr(module, a), bool)}
        if values:
            found[name] = values
    return found


def apply_noise_attributes(model, attributes):
    modules = dict(model.named_modules())
    for name, values in attributes.items():
        if name not in modules:
            raise CheckpointError(f"the checkpoint sets noise attributes of module {name!r}, which the model lacks")
        for attribute, value in values.items():
            setattr(modules[name], attribute, value)


def save_checkpoint(path, state):
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then os.replace,
    so a crash leaves either the old checkpoint or the new one, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({"format": FORMAT, **state}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {type(error).__name__}: "
                              f"{(str(error).splitlines() or [''])[0]}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a stochnet checkpoint (expected format {FORMAT!r})")
    _check_schema(state, path, SCHEMA)
    if "classifier_args" in state["args"]:
        classifier = state["args"]["classifier_args"]
        if not isinstance(classifier, dict):
            raise CheckpointError(f"checkpoint {str(path)!r} is malformed: args.classifier_args must be a dict, "
                                  f"got {_describe(classifier)}")
        _check_schema(classifier, path, ARGS_SCHEMA, "args.classifier_args.")
    return state


def _check_schema(state, path, schema, where=""):
    for key, (expected, check) in schema.items():
        *parents, name = key.split(".")
        holder = state
        for parent in parents:
            holder = holder[parent]
        if name not in holder:
            raise CheckpointError(f"checkpoint {str(path)!r} is malformed: {where}{key} is missing")
        if not check(holder[name]):
            raise CheckpointError(f"checkpoint {str(path)!r} is malformed: {where}{key} must be {expected}, "
                                  f"got {_describe(holder[name])}")


def _describe(value):
    text = repr(value) if isinstance(value, (int, float, str)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."
