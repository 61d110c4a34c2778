"""StocReLU-EMA (ANIS^2): the fused op against the same math in eager PyTorch and torch.compile.

Every contender does the same work per iteration: draw fresh normal noise, compute
``y = relu(x + sqrt(gamma) * sigma[c] * z)`` and update ``sigma`` in place to the EMA of
the per-channel std of ``x``; forward+backward also computes ``dx`` for a fixed ``dy``.
"""
import math

import torch

import stochnet
from stochnet.ops.backend import triton_interpreted

from . import harness
from .cases import Built, Case, skipped_contenders, tensor_fields, time_case

OP = "stoc_relu_ema"
SHAPES = ((128, 64, 32, 32), (4096, 1024))
QUICK_SHAPES = ((4, 8, 6, 6), (64, 16))
DTYPE = torch.float32
GAMMA = 0.25
MOMENTUM = 0.5
FUSED_BACKENDS = {"cpu": ("cpp",), "cuda": ("triton", "cuda")}
MIN_SAMPLE_S = 2e-3
DEVICES = ("cpu", "cuda")  # where the benchmark runs
PARAMS = {"gamma": GAMMA, "momentum": MOMENTUM}  # the report's settings


def eager_stoc_relu_ema(x, sigma, gamma, momentum):
    """The op written the usual way in eager PyTorch: what the fused kernel replaces."""
    channel = (1, -1) + (1,) * (x.dim() - 2)
    z = torch.randn_like(x)
    y = torch.relu(x + math.sqrt(gamma) * sigma.view(channel) * z)
    with torch.no_grad():
        std = x.std(dim=[d for d in range(x.dim()) if d != 1])
        sigma.mul_(1 - momentum).add_(momentum * std)
    return y


def fused_stoc_relu_ema(backend):
    def call(x, sigma, gamma, momentum):
        return stochnet.functional.stoc_relu_ema(x, sigma, gamma, momentum, training=True, backend=backend)
    return call


def fused_backends(device):
    """The fused backends that run on ``device`` and a {name: reason} of those skipped."""
    available, skipped = [], {}
    for name in FUSED_BACKENDS[device.type]:
        if name == "triton" and triton_interpreted():
            skipped[name] = "TRITON_INTERPRET=1: interpreter timings mean nothing"
            continue
        x = torch.randn(4, 3, 2, 2, device=device, dtype=DTYPE)
        try:
            fused_stoc_relu_ema(name)(x, torch.ones(3, device=device), GAMMA, MOMENTUM)
        except Exception as error:  # an unbuilt backend is reported and skipped, not fatal
            skipped[name] = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        else:
            available.append(name)
    if not available:
        raise RuntimeError(f"no fused {OP} backend runs on {device}: {skipped}")
    return available, skipped


def _iteration(fn, x, sigma):
    return lambda: fn(x, sigma, GAMMA, MOMENTUM)


def _iteration_with_backward(fn, x, sigma, dy):
    def step():
        y = fn(x, sigma, GAMMA, MOMENTUM)
        torch.autograd.grad(y, x, dy)
    return step


def _check_same_work(functions, x):
    """Every contender updates sigma alike from the same start: none skips the statistics."""
    results = {}
    for name, (_, _, fn) in functions.items():
        sigma = torch.ones(x.shape[1], device=x.device)
        y = fn(x, sigma, GAMMA, MOMENTUM)
        if y.shape != x.shape:
            raise AssertionError(f"{name} returned shape {tuple(y.shape)} for x of shape {tuple(x.shape)}")
        results[name] = sigma
    for name, sigma in results.items():
        if not torch.allclose(sigma, results["eager"], rtol=1e-4, atol=1e-6):
            raise AssertionError(f"{name} updates running_sigma differently from eager: not the same work")


def _bytes(numel, element_size):
    """Least traffic of the fused op: forward reads x, writes y and the 1-bit mask;
    backward reads dy and the mask and writes dx."""
    mask = (numel + 7) // 8
    forward = 2 * numel * element_size + mask
    return forward, forward + 2 * numel * element_size + mask


def _shape_cases(shape, functions, skipped, device):
    """The forward and forward+backward cases on one shape; every contender updates its own sigma."""
    numel = math.prod(shape)
    forward_bytes, backward_bytes = _bytes(numel, DTYPE.itemsize)

    def build_forward():
        x = torch.randn(shape, device=device, dtype=DTYPE)
        contenders = [harness.op_contender(name, kind, backend, _iteration(fn, x, torch.ones(shape[1], device=device)),
                                           device, peak=False)
                      for name, (kind, backend, fn) in functions.items()]
        _check_same_work(functions, x)
        return Built(contenders, forward_bytes, numel, DTYPE)

    def build_with_backward():
        x_grad = torch.randn(shape, device=device, dtype=DTYPE, requires_grad=True)
        dy = torch.randn_like(x_grad)  # allocated once: a fresh 33.5 MB buffer page-faults on CPU
        contenders = []
        for name, (kind, backend, fn) in functions.items():
            sigma = torch.ones(shape[1], device=device)
            contenders.append(harness.op_contender(name, kind, backend, _iteration_with_backward(fn, x_grad, sigma, dy),
                                                   device, saved=_iteration(fn, x_grad, sigma)))
        return Built(contenders, backward_bytes, numel, DTYPE)

    title = f"{OP} {tuple(shape)} {harness.dtype_name(DTYPE)}"
    return [Case(f"{title} {label}", tensor_fields(shape, DTYPE, label), tuple(functions), build, skipped=skipped)
            for label, build in (("forward", build_forward), ("forward+backward", build_with_backward))]


def notes(device):
    lines = harness.op_notes(
        "GB/s counts the fused op's least traffic for every row: forward reads x, writes y and a "
        "numel/8-byte mask; forward+backward adds read dy, read mask, write dx")
    lines.append("saved: distinct storages autograd keeps for backward (saved_tensors_hooks)")
    if device.type == "cpu":
        lines.append(harness.fresh_outputs_note("y; dx with backward"))
    lines.append(harness.peak_note(device, "one forward+backward"))
    return lines


def cases(device, quick=False):
    """Every case on ``device``, unbuilt (:class:`bench.cases.Case`); probes which fused backends run there."""
    backends, skipped = fused_backends(device)
    functions = harness.op_functions({name: fused_stoc_relu_ema(name) for name in backends}, eager_stoc_relu_ema)
    skipped = {f"fused[{name}]": reason for name, reason in skipped.items()}
    return [case for shape in (QUICK_SHAPES if quick else SHAPES)
            for case in _shape_cases(shape, functions, skipped, device)]


def run(device, repeats, warmup, quick=False, min_sample_s=MIN_SAMPLE_S):
    """Benchmark every contender on every shape; the report :func:`harness.format_report` prints."""
    environment = harness.environment(device)
    op_cases = cases(device, quick)
    timed = [time_case(case, device, repeats=repeats, warmup=warmup, min_sample_s=min_sample_s) for case in op_cases]
    return harness.report(OP, environment, repeats, warmup, quick, timed, notes(device),
                          skipped=skipped_contenders(op_cases), **PARAMS)
