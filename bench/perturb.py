"""Noise injection (Learn2Perturb): the fused op against the same math in eager PyTorch and torch.compile.

Every contender does the same work per iteration: draw fresh normal noise and compute
``y = x + theta * z`` with a learnable theta of the feature-map shape (C, H, W);
forward+backward also computes ``dx`` and ``dtheta`` for a fixed ``dy``.
"""
import math

import torch

import stochnet

from . import harness
from .cases import Built, Case, tensor_fields, time_case

OP = "perturb"
SHAPES = ((128, 64, 32, 32),)
QUICK_SHAPES = ((4, 8, 6, 6),)
DTYPE = torch.float32
THETA = 0.3
MIN_SAMPLE_S = 2e-3
DEVICES = ("cpu",)  # where the benchmark runs
PARAMS = {"theta": THETA}  # the report's settings


def eager_perturb(x, theta):
    """The op written the usual way in eager PyTorch: what the fused kernel replaces."""
    return x + theta * torch.randn_like(x)


def fused_perturb(x, theta):
    return stochnet.functional.perturb(x, theta, backend="cpp")


def _iteration(fn, x, theta):
    return lambda: fn(x, theta)


def _iteration_with_backward(fn, x, theta, dy):
    def step():
        y = fn(x, theta)
        torch.autograd.grad(y, (x, theta), dy)
    return step


def _check_same_work(functions, x, theta):
    """Every contender adds noise of scale theta to every element and returns both gradients."""
    for name, (_, _, fn) in functions.items():
        y = fn(x, theta)
        if y.shape != x.shape:
            raise AssertionError(f"{name} returned shape {tuple(y.shape)} for x of shape {tuple(x.shape)}")
        scale = ((y - x) / theta).detach().std().item()
        if abs(scale - 1) > 0.1:
            raise AssertionError(f"{name} draws noise of std {scale:.3f} theta, not theta: not the same work")
        grads = torch.autograd.grad(y, (x, theta), torch.ones_like(y))
        if any(g is None or g.shape != t.shape for g, t in zip(grads, (x, theta))):
            raise AssertionError(f"{name} does not return dx and dtheta")


def _bytes(numel, features, element_size):
    """Least traffic of the fused op: forward reads x and theta, writes y; backward reads dy
    and theta and writes dtheta; dx is dy itself (the op returns it as is: no bytes)."""
    forward = 2 * numel * element_size + features * element_size
    return forward, forward + numel * element_size + 2 * features * element_size


def _shape_cases(shape, functions, device):
    """The forward and forward+backward cases on one shape; theta requires grad in both."""
    numel, features = math.prod(shape), math.prod(shape[1:])
    forward_bytes, backward_bytes = _bytes(numel, features, DTYPE.itemsize)

    def theta():
        return torch.full(shape[1:], THETA, device=device, dtype=DTYPE, requires_grad=True)

    def build_forward():
        x, t = torch.randn(shape, device=device, dtype=DTYPE), theta()
        contenders = [harness.op_contender(name, kind, backend, _iteration(fn, x, t), device, peak=False)
                      for name, (kind, backend, fn) in functions.items()]
        return Built(contenders, forward_bytes, numel, DTYPE)

    def build_with_backward():
        x_grad, t = torch.randn(shape, device=device, dtype=DTYPE, requires_grad=True), theta()
        dy = torch.randn_like(x_grad)  # allocated once: a fresh 33.5 MB buffer page-faults on CPU
        contenders = [harness.op_contender(name, kind, backend, _iteration_with_backward(fn, x_grad, t, dy), device,
                                           saved=_iteration(fn, x_grad, t))
                      for name, (kind, backend, fn) in functions.items()]
        _check_same_work(functions, x_grad, t)
        return Built(contenders, backward_bytes, numel, DTYPE)

    title = f"{OP} {tuple(shape)} {harness.dtype_name(DTYPE)} theta {tuple(shape[1:])}"
    return [Case(f"{title} {label}", tensor_fields(shape, DTYPE, label, theta_shape=list(shape[1:])),
                 tuple(functions), build)
            for label, build in (("forward", build_forward), ("forward+backward", build_with_backward))]


def notes(device):
    lines = harness.op_notes(
        "GB/s counts the fused op's least traffic for every row: forward reads x and theta, writes y; "
        "forward+backward adds read dy, read theta, write dtheta (dx is dy returned as is: 0 bytes)")
    lines.append("saved: distinct storages autograd keeps for backward (saved_tensors_hooks); theta requires grad "
                 "in both passes")
    if device.type == "cpu":
        lines.append(harness.fresh_outputs_note("y; the noise for eager"))
    lines.append(harness.peak_note(device, "one forward+backward"))
    return lines


def cases(device, quick=False):
    """Every case on ``device``, unbuilt (:class:`bench.cases.Case`)."""
    functions = harness.op_functions({"cpp": fused_perturb}, eager_perturb)
    return [case for shape in (QUICK_SHAPES if quick else SHAPES) for case in _shape_cases(shape, functions, device)]


def run(device, repeats, warmup, quick=False, min_sample_s=MIN_SAMPLE_S):
    """Benchmark every contender on every shape; the report :func:`harness.format_report` prints."""
    if device.type not in DEVICES:
        raise ValueError(f"the fused {OP} op has only a C++ CPU kernel so far, got device {device}")
    environment = harness.environment(device)
    timed = [time_case(case, device, repeats=repeats, warmup=warmup, min_sample_s=min_sample_s)
             for case in cases(device, quick)]
    return harness.report(OP, environment, repeats, warmup, quick, timed, notes(device), **PARAMS)
