"""The cases of the op benchmarks, one definition each for both front ends.

An op module's ``cases(device, quick)`` lists :class:`Case` s without building anything: a case
knows its title, the fields its JSON records, its contenders' names and how to build them.
``python -m bench`` times each case's contenders round-robin next to a copy (:func:`time_case`,
one table per case); ``pytest bench/`` times each contender as one pytest-benchmark benchmark in
the case's group (``bench/test_bench.py``).
"""
import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import torch

from . import harness


class Built(NamedTuple):
    """A case's contenders, ready to time (torch.compile'd ones compiled), and its traffic: the least
    bytes the fused op moves (``bytes_moved``) and the size of the copy timed next to it."""

    contenders: list
    nbytes: int
    copy_numel: int
    copy_dtype: torch.dtype


@dataclass
class Case:
    """One case of an op benchmark: one table of ``python -m bench``, one group of ``pytest bench/``.

    ``fields`` are the JSON case's fields between its title and its timings (shape, dtype, pass, ...);
    ``names`` the contenders ``build()`` returns, in order; ``references`` the contenders the ratios
    divide by; ``images``, when set, turns bytes per second into images per second (``images`` per
    call); ``skipped`` the contenders that do not run here, name -> reason.
    """

    title: str
    fields: dict
    names: tuple
    build: Callable[[], Built]
    references: tuple = harness.REFERENCES
    images: Optional[int] = None
    skipped: dict = field(default_factory=dict)


def tensor_fields(shape, dtype, label, **fields):
    """The fields of a case on one tensor: its shape, ``fields``, dtype, numel, element size and pass label."""
    return {"shape": list(shape), **fields, "dtype": harness.dtype_name(dtype), "numel": math.prod(shape),
            "element_size": dtype.itemsize, "pass": label}


def build_case(case):
    """``case.build()``, checked to return the contenders the case names."""
    built = case.build()
    names = tuple(contender.name for contender in built.contenders)
    if names != tuple(case.names):
        raise AssertionError(f"{case.title}: built contenders {names}, the case names {tuple(case.names)}")
    return built


def time_case(case, device, *, repeats, warmup, min_sample_s=0.0):
    """Build ``case`` and time its contenders next to a copy (:func:`harness.compare`): the case's JSON
    record, its title and fields, then the timings."""
    built = build_case(case)
    result = harness.compare(built.contenders, device, nbytes=built.nbytes, copy_numel=built.copy_numel,
                             copy_dtype=built.copy_dtype, repeats=repeats, warmup=warmup,
                             min_sample_s=min_sample_s, references=case.references)
    if case.images is not None:
        result = harness.per_image(result, case.images)
    return {"title": case.title, **case.fields, **result}


def skipped_contenders(cases):
    """The report's skipped contenders of ``cases``: name and reason, each once, in order."""
    reasons = {}
    for case in cases:
        for name, reason in case.skipped.items():
            reasons.setdefault(name, reason)
    return [{"name": name, "reason": reason} for name, reason in reasons.items()]
