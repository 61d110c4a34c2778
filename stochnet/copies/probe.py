"""What a model's noise does, measured on one input row before the copies run.

The probe runs the model once on one row with hooks, then re-runs each module that declares no
noise coupling (and is not one of torch.nn's own deterministic layers) on two identical rows,
twice. Two identical rows that come out identical, while two passes differ, mean noise drawn
once per forward pass that stochnet does not know about: the copies of an input in one batch
would share it. The same pass records the largest activation per row, which bounds the rows a
pass may hold. Every probe pass runs under a forked RNG, so probing does not shift the random
stream of the caller.
"""
import dataclasses

import torch
from torch import nn

from .coupling import PER_PASS, copies_per_pass, noise_coupling


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    stochastic: bool                 # two passes over one input differ
    undeclared_per_pass: tuple       # names of modules with per-pass noise stochnet does not know
    per_pass_modules: tuple          # the declared per-pass noise modules
    activation_bytes_per_row: int    # the largest module output of one row
    saved_bytes_per_row: int         # all module outputs of one row (what a backward may keep)


def _differ(a, b):
    scale = 1.0 + max(a.abs().max().item(), b.abs().max().item()) if a.numel() else 1.0
    return not torch.allclose(a, b, rtol=0.0, atol=1e-5 * scale, equal_nan=True)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _duplicate_rows(value):
    """Every tensor of one row becomes two identical rows."""
    if isinstance(value, torch.Tensor):
        return value.repeat(2, *[1] * (value.dim() - 1)) if value.dim() and value.shape[0] == 1 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_duplicate_rows(v) for v in value)
    if isinstance(value, dict):
        return {k: _duplicate_rows(v) for k, v in value.items()}
    return value


def _is_candidate(module):
    """Modules that may hide noise: every module not declaring a coupling, except torch's own."""
    return noise_coupling(module) is None and not type(module).__module__.startswith("torch.")


def _rows_identical_passes_differ(fn, args, kwargs):
    with copies_per_pass(2):
        first = _tensors(fn(*args, **kwargs))
        second = _tensors(fn(*args, **kwargs))
    if not first or any(t.dim() == 0 or t.shape[0] != 2 for t in first):
        return False, False
    rows_differ = any(_differ(t[0], t[1]) for t in first)
    passes_differ = any(_differ(a, b) for a, b in zip(first, second))
    return not rows_differ, passes_differ


def probe(model, row):
    """Probe ``model`` (a module or any callable) on ``row``, a batch of one input."""
    row = row.detach()[:1]
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    captured, sizes, hooks = {}, [], []

    def capture(module, args, kwargs):
        captured.setdefault(module, (args, kwargs))

    def measure(module, args, output):
        sizes.extend(t.nelement() * t.element_size() for t in _tensors(output))

    for module in modules:
        if _is_candidate(module):
            hooks.append(module.register_forward_pre_hook(capture, with_kwargs=True))
        hooks.append(module.register_forward_hook(measure))
    with torch.random.fork_rng(devices=[row.device] if row.is_cuda else []), torch.no_grad():
        try:
            model(row)
        finally:
            for hook in hooks:
                hook.remove()
        names = {module: name or type(model).__name__ for name, module in model.named_modules()} if modules else {}
        undeclared = []
        for module, (args, kwargs) in captured.items():
            try:
                identical, differ = _rows_identical_passes_differ(module, _duplicate_rows(args), _duplicate_rows(kwargs))
            except Exception:  # a module that cannot run on a doubled batch is left to the whole-model check
                continue
            if identical and differ:
                undeclared.append(f"{names[module]} ({type(module).__name__})")
        pair = _duplicate_rows(row)
        identical, differ = _rows_identical_passes_differ(model, (pair,), {})
        if not modules and identical and differ:
            undeclared.append(getattr(model, "__name__", type(model).__name__))
    return ProbeResult(
        stochastic=differ or not identical,
        undeclared_per_pass=tuple(undeclared),
        per_pass_modules=tuple(m for m in modules if noise_coupling(m) == PER_PASS),
        activation_bytes_per_row=max(sizes, default=row.nelement() * row.element_size()),
        saved_bytes_per_row=sum(sizes),
    )
