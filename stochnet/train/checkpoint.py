"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, plain containers, numbers and strings, so loading it runs no
pickled code. Its keys: ``format``, ``epoch`` (epochs completed), ``args`` (the run's
arguments, enough to rebuild the model), ``model`` (state dict), ``noise`` (plain noise
attributes that are not in the state dict, such as StocReLUEMA's scheduled ``gamma``),
``method`` (optimizers, schedulers, schedules), ``rng`` (one entry per rank) and ``history``
(per-epoch metrics).
"""
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

FORMAT = "stochnet-checkpoint-v1"
NOISE_ATTRIBUTES = ("gamma",)


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
    return state
