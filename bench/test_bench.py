"""``pytest bench/ --benchmark-only``: the cases of ``python -m bench`` through pytest-benchmark.

Each contender of each case an op module lists (``cases(device, quick)`` of perturb, pgd, smoothing,
stoc_relu_ema, train_step; :mod:`bench.cases`) is one benchmark, and the contenders of one case form
one group (the case's title and device), so pytest-benchmark's tables, ``--benchmark-compare``,
``--benchmark-histogram`` and ``--benchmark-save`` set them side by side. A case is built once for its
group: torch.compile'd contenders are compiled, and every contender is called ``python -m bench``'s
warm-up number of times, before its timing starts. Each benchmark's ``extra_info`` holds what the JSON
of ``python -m bench`` records of its case and row (sizes, dtype, backend, bytes moved, compile
seconds, saved and peak bytes) and, once timed, GB/s (or images/s) at the median.

Sizes are ``python -m bench``'s; ``--bench-quick`` takes its ``--quick`` shapes. ``--bench-device``
picks cpu, cuda or all (default): CUDA cases skip without a GPU, fused backends that do not run
here skip with the reason ``python -m bench`` reports. On CUDA every timed call ends with a
synchronize. The copy ``python -m bench`` times beside each case (its % copy column) is not a
benchmark here.
"""
import gc
import importlib
import re
from typing import NamedTuple

import pytest
import torch

from . import harness
from .__main__ import OPS, WARMUP
from .cases import Case, build_case

pytest.importorskip("pytest_benchmark")

# ``attacks`` (whole attacks, with robust accuracy and a time budget) stays with python -m bench
BENCHMARKED = ("perturb", "pgd", "smoothing", "stoc_relu_ema", "train_step")


class Contender(NamedTuple):
    """One benchmark: contender ``name`` of ``case`` (op ``op`` on ``device``)."""

    op: str
    device: torch.device
    case: Case
    name: str
    params: dict  # the op's settings (PARAMS of its module)
    warmup: int


def group_name(case, device):
    return f"{case.title} [{device.type}]"


def case_id(op, device, case):
    """``case``'s title as a test id: shapes as 4x8x6x6, words joined by '-', the op's name in front."""
    title = re.sub(r"\(([\d, ]+)\)", lambda match: "x".join(match.group(1).replace(",", " ").split()), case.title)
    words = [word for word in title.split() if word != "+"]
    if words[0] == op:
        words = words[1:]
    return "-".join([op, device.type, *words])


def _devices(config):
    chosen = config.getoption("bench_device")
    return ("cpu", "cuda") if chosen == "all" else (chosen,)


def _params(config):
    quick = config.getoption("bench_quick")
    params = []
    for op in BENCHMARKED:
        module = importlib.import_module(OPS[op])
        for device_type in (d for d in _devices(config) if d in module.DEVICES):
            if device_type == "cuda" and not torch.cuda.is_available():
                params.append(pytest.param(None, id=f"{op}-cuda", marks=pytest.mark.skip(reason="no CUDA device")))
                continue
            device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
            try:
                cases = module.cases(device, quick)
            except RuntimeError as error:  # e.g. no fused backend runs on this device
                params.append(pytest.param(None, id=f"{op}-{device_type}", marks=pytest.mark.skip(reason=str(error))))
                continue
            for case in cases:
                group = pytest.mark.benchmark(group=group_name(case, device))
                for name in case.names:
                    params.append(pytest.param(Contender(op, device, case, name, module.PARAMS, WARMUP[quick]),
                                               id=f"{case_id(op, device, case)}-{name}", marks=group))
                for name, reason in case.skipped.items():
                    params.append(pytest.param(None, id=f"{case_id(op, device, case)}-{name}",
                                               marks=[group, pytest.mark.skip(reason=f"{name}: {reason}")]))
    return params


def pytest_generate_tests(metafunc):
    if "contender" in metafunc.fixturenames:
        metafunc.parametrize("contender", _params(metafunc.config))


_built = {}  # the case built last (or the error building it): its contenders serve every test of its group


def _build(contender):
    key = (contender.op, contender.device, contender.case.title)
    if key not in _built:
        _built.clear()  # frees the previous case's tensors and models
        gc.collect()
        try:
            _built[key] = build_case(contender.case)
        except Exception as error:  # every test of the group reports it, the case is built once
            _built[key] = error
    built = _built[key]
    if isinstance(built, Exception):
        raise built
    return built


def test_op(benchmark, contender):
    built = _build(contender)
    case, device = contender.case, contender.device
    row = next(row for row in built.contenders if row.name == contender.name)
    benchmark.extra_info.update({"op": contender.op, "device": device.type, "title": case.title,
                                 "dtype": harness.dtype_name(built.copy_dtype), **case.fields,
                                 "bytes_moved": built.nbytes, **({"images": case.images} if case.images else {}),
                                 "contender": row.name, "kind": row.kind, **row.extra, **contender.params})
    step = row.fn
    if device.type == "cuda":
        def step(fn=row.fn):
            fn()
            harness.synchronize(device)
    if benchmark.enabled:  # --benchmark-disable: one call, no warm-up
        for _ in range(contender.warmup):
            step()
    benchmark(step)
    if benchmark.stats:
        median = benchmark.stats.stats.median
        if case.images:
            benchmark.extra_info["images_per_s"] = case.images / median
        else:
            benchmark.extra_info["gbps"] = built.nbytes / median / 1e9
