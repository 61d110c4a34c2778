"""Fused PGD step (L-inf): the fused op against the same math in eager PyTorch and torch.compile.

Every contender does one attack step's update of ``x_adv`` from a fixed gradient:
``clamp(x_orig + clamp(x_adv + alpha * sign(grad) - x_orig, -eps, eps), 0, 1)`` into a new tensor.
"""
import math

import torch

import stochnet

from . import harness
from .cases import Built, Case, tensor_fields, time_case

OP = "pgd"
SHAPES = ((128, 3, 32, 32), (128, 64, 32, 32))
QUICK_SHAPES = ((4, 3, 6, 6),)
DTYPE = torch.float32
EPS, ALPHA = 8 / 255, 2 / 255
MIN_SAMPLE_S = 2e-3
DEVICES = ("cpu",)  # where the benchmark runs
PARAMS = {"eps": EPS, "alpha": ALPHA}  # the report's settings


def eager_pgd_step(x_adv, grad, x_orig):
    """The step written the usual way in eager PyTorch (torchattacks' PGD): what the fused op replaces."""
    delta = torch.clamp(x_adv + ALPHA * grad.sign() - x_orig, min=-EPS, max=EPS)
    return torch.clamp(x_orig + delta, min=0.0, max=1.0)


def fused_pgd_step(x_adv, grad, x_orig):
    return stochnet.functional.pgd_step(x_adv, grad, x_orig, EPS, ALPHA, norm="linf", backend="cpp")


def _check_same_work(functions, x_adv, grad, x_orig):
    """Every contender computes the same step (up to rounding)."""
    expected = eager_pgd_step(x_adv, grad, x_orig)
    for name, (_, _, fn) in functions.items():
        out = fn(x_adv, grad, x_orig)
        if out.shape != expected.shape or not torch.allclose(out, expected, rtol=0, atol=1e-6):
            raise AssertionError(f"{name} does not compute the linf PGD step: not the same work")


def _shape_case(shape, functions, device):
    # read x_adv, grad and x_orig, write the new x_adv
    nbytes = 4 * math.prod(shape) * DTYPE.itemsize

    def build():
        generator = torch.Generator(device=device).manual_seed(0)
        x_orig = torch.rand(shape, device=device, dtype=DTYPE, generator=generator)
        noise = 2 * torch.rand(shape, device=device, dtype=DTYPE, generator=generator) - 1
        x_adv = (x_orig + EPS * noise).clamp(0, 1)
        grad = torch.randn(shape, device=device, dtype=DTYPE, generator=generator)
        _check_same_work(functions, x_adv, grad, x_orig)
        contenders = [harness.op_contender(name, kind, backend, (lambda fn=fn: fn(x_adv, grad, x_orig)), device)
                      for name, (kind, backend, fn) in functions.items()]
        return Built(contenders, nbytes, x_orig.numel(), DTYPE)

    title = f"{OP} linf step {tuple(shape)} {harness.dtype_name(DTYPE)}"
    return Case(title, tensor_fields(shape, DTYPE, "forward"), tuple(functions), build)


def notes(device):
    lines = harness.op_notes("GB/s counts the fused op's least traffic for every row: read x_adv, grad, x_orig, "
                             "write the new x_adv")
    lines.append(f"eps {EPS:.5f}, alpha {ALPHA:.5f} as Python floats (the fused op passes them as (B,) tensors)")
    if device.type == "cpu":
        lines.append("CPU: every contender allocates its output per call, as an attack loop does (DESIGN.md: "
                     "fresh 32 MB+ allocations page-fault; the fused op reuses pooled output buffers); "
                     "absolute CPU times are indicative, compare ratios")
    lines.append(harness.peak_note(device, "one step"))
    return lines


def cases(device, quick=False):
    """Every case on ``device``, unbuilt (:class:`bench.cases.Case`)."""
    functions = harness.op_functions({"cpp": fused_pgd_step}, eager_pgd_step)
    return [_shape_case(shape, functions, device) for shape in (QUICK_SHAPES if quick else SHAPES)]


def run(device, repeats, warmup, quick=False, min_sample_s=MIN_SAMPLE_S):
    """Benchmark every contender on every shape; the report :func:`harness.format_report` prints."""
    if device.type not in DEVICES:
        raise ValueError(f"the fused {OP} benchmark covers the C++ CPU kernel only so far, got device {device}")
    environment = harness.environment(device)
    timed = [time_case(case, device, repeats=repeats, warmup=warmup, min_sample_s=min_sample_s)
             for case in cases(device, quick)]
    return harness.report(OP, environment, repeats, warmup, quick, timed, notes(device), **PARAMS)
