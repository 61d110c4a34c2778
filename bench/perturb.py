"""Noise injection (Learn2Perturb): the fused op against the same math in eager PyTorch and torch.compile.

Every contender does the same work per iteration: draw fresh normal noise and compute
``y = x + theta * z`` with a learnable theta of the feature-map shape (C, H, W);
forward+backward also computes ``dx`` and ``dtheta`` for a fixed ``dy``.
"""

import torch

import stochnet

from . import harness

OP = "perturb"
SHAPES = ((128, 64, 32, 32),)
QUICK_SHAPES = ((4, 8, 6, 6),)
DTYPE = torch.float32
THETA = 0.3
MIN_SAMPLE_S = 2e-3


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


def _bench_shape(shape, functions, device, repeats, warmup, min_sample_s):
    x = torch.randn(shape, device=device, dtype=DTYPE)
    x_grad = x.clone().requires_grad_()
    theta = torch.full(shape[1:], THETA, device=device, dtype=DTYPE, requires_grad=True)
    dy = torch.randn_like(x)  # allocated once: a fresh 33.5 MB buffer page-faults on CPU
    forward_bytes, backward_bytes = _bytes(x.numel(), theta.numel(), x.element_size())

    forward, with_backward = [], []
    for name, (kind, backend, fn) in functions.items():
        step = _iteration(fn, x, theta)
        step_backward = _iteration_with_backward(fn, x_grad, theta, dy)
        extra = {"backend": backend} if backend else {}
        extra_backward = dict(extra)
        if kind == "compiled":
            extra["compile_s"] = harness.compile_warmup(step)
            extra_backward["compile_s"] = harness.compile_warmup(step_backward)
        extra_backward["saved_bytes"] = harness.saved_tensor_bytes(_iteration(fn, x_grad, theta))
        peak = harness.peak_memory_bytes(step_backward, device)
        if peak is not None:
            extra_backward["peak_bytes"] = peak
        forward.append(harness.Contender(name, kind, step, extra))
        with_backward.append(harness.Contender(name, kind, step_backward, extra_backward))
    _check_same_work(functions, x_grad, theta)

    cases = []
    dtype = str(DTYPE).replace("torch.", "")
    for label, contenders, nbytes in (("forward", forward, forward_bytes),
                                      ("forward+backward", with_backward, backward_bytes)):
        result = harness.compare(contenders, device, nbytes=nbytes, copy_numel=x.numel(), copy_dtype=DTYPE,
                                 repeats=repeats, warmup=warmup, min_sample_s=min_sample_s)
        cases.append({"title": f"{OP} {tuple(shape)} {dtype} theta {tuple(shape[1:])} {label}",
                      "shape": list(shape), "theta_shape": list(shape[1:]), "dtype": dtype,
                      "numel": x.numel(), "element_size": x.element_size(), "pass": label, **result})
    return cases


def notes(device):
    lines = [
        "times: median over round-robin samples after warm-up; min and IQR beside it; "
        "torch.compile's compilation is excluded from timing and shown as compile s",
        "eager/this and compiled/this: that contender's median over this row's (above 1: this row is faster)",
        "GB/s counts the fused op's least traffic for every row: forward reads x and theta, writes y; "
        "forward+backward adds read dy, read theta, write dtheta (dx is dy returned as is: 0 bytes)",
        "% copy: GB/s over dst.copy_(src) of a same-size tensor into already-touched memory "
        "(read+write bytes), timed in the same round-robin",
        "saved: distinct storages autograd keeps for backward (saved_tensors_hooks); theta requires grad "
        "in both passes",
    ]
    if device.type == "cpu":
        lines.append("CPU: a fresh allocation of 32 MB or more page-faults on first touch (DESIGN.md); "
                     "every contender allocates its outputs (y; the noise for eager) per call, as training "
                     "does; dy is allocated once outside the timed region; absolute CPU times are "
                     "indicative, compare ratios")
    else:
        lines.append("peak: CUDA max_memory_allocated above the starting level during one forward+backward")
    return lines


def run(device, repeats, warmup, quick=False, min_sample_s=MIN_SAMPLE_S):
    """Benchmark every contender on every shape; the report :func:`harness.format_report` prints."""
    if device.type != "cpu":
        raise ValueError(f"the fused {OP} op has only a C++ CPU kernel so far, got device {device}")
    environment = harness.environment(device)
    functions = {"fused[cpp]": ("fused", "cpp", fused_perturb),
                 "eager": ("eager", None, eager_perturb),
                 # dynamic=False: each shape gets its own static-shape kernel, as a user's model would
                 "compiled": ("compiled", None, torch.compile(eager_perturb, dynamic=False))}
    cases = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        cases += _bench_shape(shape, functions, device, repeats, warmup, min_sample_s)
    return {"op": OP, "environment": environment, "repeats": repeats, "warmup": warmup,
            "quick": quick, "theta": THETA, "skipped": [], "notes": notes(device), "cases": cases}
