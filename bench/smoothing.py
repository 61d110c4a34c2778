"""Batched smoothing: m noisy copies of a batch and their vote, the fused ops against the same math
in eager PyTorch and torch.compile.

Every contender does one smoothing step's work per iteration: build the (B*m, C, H, W) noisy copies
of x (fresh normal noise of std SIGMA) and reduce a given (B*m, K) logits tensor to the (B, K) vote
of one mode. The logits are fixed, no model runs: the benchmark times the ops, not a network.
"""

import torch

import stochnet
from stochnet.ops.checks import VOTE_MODES
from stochnet.ops.smoothing import WEIGHTED_RANKS

from . import harness
from .cases import Built, Case, time_case

OP = "smoothing"
SHAPES = ((128, 3, 32, 32),)
QUICK_SHAPES = ((4, 3, 6, 6),)
COPIES, QUICK_COPIES = 64, 4
CLASSES = 10
SIGMA = 0.25
DTYPE = torch.float32
MIN_SAMPLE_S = 2e-3
DEVICES = ("cpu",)  # where the benchmark runs
PARAMS = {"sigma": SIGMA}  # the report's settings


def eager_noisy_repeat(x, m):
    """The copies written the usual way in eager PyTorch: what the fused kernel replaces."""
    copies = x.repeat_interleave(m, dim=0)
    return copies + SIGMA * torch.randn_like(copies)


def eager_vote_prediction(logits, m):
    """Counts of each copy's argmax class (bincount per sample, as a scatter_add)."""
    batch, classes = logits.shape[0] // m, logits.shape[1]
    winners = logits.argmax(1).view(batch, m)
    counts = torch.zeros(batch, classes, dtype=torch.int64, device=logits.device)
    return counts.scatter_add_(1, winners, torch.ones_like(winners))


def eager_vote_soft(logits, m):
    return torch.softmax(logits, dim=1).view(-1, m, logits.shape[1]).mean(1)


def eager_vote_weighted(logits, m):
    """2^-rank for the top ranks of each row, from a stable descending sort."""
    rows, classes = logits.shape
    ranks = min(classes, WEIGHTED_RANKS)
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :ranks]
    weights = torch.pow(2.0, -torch.arange(ranks, dtype=logits.dtype, device=logits.device))
    scores = torch.zeros_like(logits).scatter_(1, order, weights.expand(rows, ranks))
    return scores.view(-1, m, classes).sum(1)


EAGER_VOTES = {"prediction": eager_vote_prediction, "soft": eager_vote_soft, "weighted": eager_vote_weighted}


def eager_smoothing(mode):
    vote = EAGER_VOTES[mode]
    return lambda x, logits, m: (eager_noisy_repeat(x, m), vote(logits, m))


def fused_smoothing(mode):
    functional = stochnet.functional
    return lambda x, logits, m: (functional.noisy_repeat(x, m, SIGMA, backend="cpp"),
                                 functional.vote(logits, m, mode, backend="cpp"))


def _check_same_work(functions, x, logits, m, mode):
    """Every contender draws noise of std SIGMA around each copy and returns the reference vote."""
    expected = stochnet.functional.vote(logits, m, mode, backend="torch")
    copies = x.repeat_interleave(m, dim=0)
    for name, (_, _, fn) in functions.items():
        noisy, votes = fn(x, logits, m)
        scale = ((noisy - copies) / SIGMA).std().item()
        if noisy.shape != copies.shape or abs(scale - 1) > 0.1:
            raise AssertionError(f"{name} draws noise of std {scale:.3f} sigma around {tuple(noisy.shape)} "
                                 f"copies: not the same work")
        if votes.dtype != expected.dtype or not torch.allclose(votes, expected, rtol=1e-5, atol=1e-6):
            raise AssertionError(f"{name} does not return the {mode} vote: not the same work")


def _bytes(x, logits, m, votes):
    """Least traffic of the fused ops: read x, write the m copies, read the logits, write the vote."""
    return x.numel() * x.element_size() * (1 + m) + logits.numel() * logits.element_size() + \
        votes.numel() * votes.element_size()


def _shape_cases(shape, m, device):
    """One case per vote mode on one shape: the copies and the vote of fixed logits."""
    dtype = harness.dtype_name(DTYPE)

    def inputs():
        generator = torch.Generator(device=device).manual_seed(0)
        x = torch.rand(shape, device=device, dtype=DTYPE, generator=generator)
        logits = 3 * torch.randn(shape[0] * m, CLASSES, device=device, dtype=DTYPE, generator=generator)
        return x, logits

    def mode_case(mode):
        functions = harness.op_functions({"cpp": fused_smoothing(mode)}, eager_smoothing(mode))

        def build():
            x, logits = inputs()
            contenders = [harness.op_contender(name, kind, backend, (lambda fn=fn: fn(x, logits, m)), device)
                          for name, (kind, backend, fn) in functions.items()]
            _check_same_work(functions, x, logits, m, mode)
            votes = stochnet.functional.vote(logits, m, mode, backend="torch")
            return Built(contenders, _bytes(x, logits, m, votes), x.numel() * m, DTYPE)

        return Case(f"noisy_repeat {tuple(shape)} x{m} + vote[{mode}] K={CLASSES} {dtype}",
                    {"shape": list(shape), "copies": m, "classes": CLASSES, "mode": mode, "dtype": dtype,
                     "sigma": SIGMA}, tuple(functions), build)

    return [mode_case(mode) for mode in VOTE_MODES]


def notes(device):
    lines = harness.op_notes(
        "one iteration: m noisy copies of x (fresh noise) and the vote of a fixed (B*m, K) logits tensor; "
        "GB/s counts the fused ops' least traffic for every row: read x, write the copies, read the logits, "
        "write the vote", copied="a tensor the size of the copies")
    peak = harness.peak_note(device, "one iteration")
    if device.type == "cpu":
        peak += ("; timed iterations reuse the pool's buffers, as repeated smoothing calls do, while eager and "
                 "compiled allocate their intermediates afresh (DESIGN.md: fresh 32 MB+ allocations page-fault); "
                 "absolute CPU times are indicative, compare ratios")
    return lines + [peak]


def cases(device, quick=False):
    """Every case on ``device``, unbuilt (:class:`bench.cases.Case`)."""
    m = QUICK_COPIES if quick else COPIES
    return [case for shape in (QUICK_SHAPES if quick else SHAPES) for case in _shape_cases(shape, m, device)]


def run(device, repeats, warmup, quick=False, min_sample_s=MIN_SAMPLE_S):
    """Benchmark every contender for every vote mode; the report :func:`harness.format_report` prints."""
    if device.type not in DEVICES:
        raise ValueError(f"the {OP} benchmark times the C++ CPU kernels, got device {device}")
    environment = harness.environment(device)
    timed = [time_case(case, device, repeats=repeats, warmup=warmup, min_sample_s=min_sample_s)
             for case in cases(device, quick)]
    return harness.report(OP, environment, repeats, warmup, quick, timed, notes(device), **PARAMS)
