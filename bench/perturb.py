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
        forward.append(harness.op_contender(name, kind, backend, _iteration(fn, x, theta), device, peak=False))
        with_backward.append(harness.op_contender(name, kind, backend, _iteration_with_backward(fn, x_grad, theta, dy),
                                                  device, saved=_iteration(fn, x_grad, theta)))
    _check_same_work(functions, x_grad, theta)

    title = f"{OP} {tuple(shape)} {harness.dtype_name(DTYPE)} theta {tuple(shape[1:])}"
    passes = (harness.Pass(f"{title} forward", "forward", forward, forward_bytes),
              harness.Pass(f"{title} forward+backward", "forward+backward", with_backward, backward_bytes))
    return harness.tensor_cases(x, passes, device, repeats=repeats, warmup=warmup, min_sample_s=min_sample_s,
                                theta_shape=list(shape[1:]))


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


def run(device, repeats, warmup, quick=False, min_sample_s=MIN_SAMPLE_S):
    """Benchmark every contender on every shape; the report :func:`harness.format_report` prints."""
    if device.type != "cpu":
        raise ValueError(f"the fused {OP} op has only a C++ CPU kernel so far, got device {device}")
    environment = harness.environment(device)
    functions = harness.op_functions({"cpp": fused_perturb}, eager_perturb)
    cases = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        cases += _bench_shape(shape, functions, device, repeats, warmup, min_sample_s)
    return harness.report(OP, environment, repeats, warmup, quick, cases, notes(device), theta=THETA)
