"""Whole attacks: throughput (images/s) of stochnet's PGD-10 (L-inf) and EOT-PGD (8 noise
samples, 10 steps) against the same attack written the usual eager way and, when installed,
against torchattacks' PGD / EOTPGD, on a small CIFAR-shaped CNN with Gaussian noise inside
(so the expectation over transformation matters).

The eager contender is a plain loop: forward, summed cross-entropy, ``torch.autograd.grad``,
``x + alpha * sign(grad)``, projection and clamp; its EOT averages ``eot_samples`` serial
forward/backward passes. stochnet's EOT-PGD runs the copies as one batch per step.
"""
import torch
import torch.nn.functional as nnf
from torch import nn

import stochnet
from stochnet.attacks import EOTPGD, PGD

from . import harness

OP = "attacks"
SHAPE = (64, 3, 32, 32)
QUICK_SHAPE = (2, 3, 32, 32)
STEPS, EOT_SAMPLES = 10, 8
QUICK_STEPS, QUICK_EOT_SAMPLES = 1, 2
EPS, ALPHA = 8 / 255, 2 / 255
NOISE_STD = 0.1
DTYPE = torch.float32
REFERENCES = ("eager", "torchattacks")


class SmallCNN(nn.Module):
    """Two conv layers with Gaussian noise (on in eval mode) after the first: CIFAR-shaped input."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), stochnet.nn.GaussianNoise(NOISE_STD), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(32 * 8 * 8, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def eager_pgd(model, x, y, steps, eot_samples=1):
    """PGD (L-inf, random start) the usual eager way; ``eot_samples`` > 1 averages that many
    serial forward/backward passes per step (EOT)."""
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        grad = torch.zeros_like(x)
        for _ in range(eot_samples):
            loss = nnf.cross_entropy(model(x_adv), y, reduction="sum")
            grad += torch.autograd.grad(loss, x_adv)[0]
        grad /= eot_samples
        x_adv = x_adv.detach() + ALPHA * grad.sign()
        x_adv = torch.clamp(x + torch.clamp(x_adv - x, -EPS, EPS), 0, 1)
    return x_adv.detach()


def _check_attack(name, out, x):
    delta = (out - x).abs()
    if out.shape != x.shape or delta.max() > EPS + 1e-6 or out.min() < 0 or out.max() > 1 or not (delta > 0).any():
        raise AssertionError(f"{name} does not return an L-inf attack of budget {EPS:.5f}: not the same work")


def _bench_attack(label, model, x, y, steps, eot_samples, device, repeats, warmup, skipped):
    if eot_samples == 1:
        ours = PGD(model, eps=EPS, alpha=ALPHA, steps=steps, norm="linf", random_start=True)
    else:
        ours = EOTPGD(model, eps=EPS, alpha=ALPHA, steps=steps, eot_samples=eot_samples, norm="linf",
                      random_start=True)
    functions = {"stochnet": ("fused", lambda: ours(x, y))}
    if eot_samples > 1:
        # The same attack with one copy of the batch per pass: the eager loop's pass structure.
        per_copy = EOTPGD(model, eps=EPS, alpha=ALPHA, steps=steps, eot_samples=eot_samples, norm="linf",
                          random_start=True, max_batch=x.shape[0])
        functions["stochnet max_batch=B"] = ("fused", lambda: per_copy(x, y))

    def eager():
        model.eval()
        with torch.enable_grad():
            return eager_pgd(model, x, y, steps, eot_samples)

    functions["eager"] = ("eager", eager)
    try:
        import torchattacks
    except ImportError as error:
        skipped.append({"name": f"torchattacks ({label})", "reason": f"not installed ({error})"})
    else:
        if eot_samples == 1:
            theirs = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)
        else:
            theirs = torchattacks.EOTPGD(model, eps=EPS, alpha=ALPHA, steps=steps, eot_iter=eot_samples,
                                         random_start=True)
        functions["torchattacks"] = ("torchattacks", lambda: theirs(x, y))
    for name, (_, fn) in functions.items():
        _check_attack(name, fn(), x)
    contenders = [harness.Contender(name, kind, fn) for name, (kind, fn) in functions.items()]
    batch_bytes = x.numel() * x.element_size()
    result = harness.per_image(harness.compare(contenders, device, nbytes=batch_bytes, copy_numel=x.numel(),
                                               copy_dtype=DTYPE, repeats=repeats, warmup=warmup,
                                               references=REFERENCES), x.shape[0])
    return {"title": f"{OP} {label} {tuple(x.shape)} {harness.dtype_name(DTYPE)}", "attack": label,
            "shape": list(x.shape), "steps": steps, "eot_samples": eot_samples,
            "forward_backward_per_image": steps * eot_samples, "pass": "attack", **result}


def _throughput_notes(cases):
    lines = []
    for case in cases:
        parts = []
        for row in case["results"]:
            ratios = ", ".join(f"{ref}/this {row[f'{ref}_over_this']:.2f}x" for ref in REFERENCES
                               if f"{ref}_over_this" in row and row["name"] != ref)
            parts.append(f"{row['name']} {row['images_per_s']:.0f} img/s" + (f" ({ratios})" if ratios else ""))
        lines.append(f"{case['attack']}: " + "; ".join(parts))
    return lines


def notes(device, steps, eot_samples, cases):
    lines = [
        "times: median over round-robin samples after warm-up, one whole attack of the batch per call; "
        "images/s = batch / median",
        "eager/this: the eager loop's median over this row's (above 1: this row is faster); "
        "torchattacks_over_this in the JSON likewise",
        f"model: 2 conv layers, GaussianNoise(std {NOISE_STD}) after the first (on in eval mode), random "
        f"weights; eps {EPS:.5f}, alpha {ALPHA:.5f}, {steps} steps, random start; EOT with {eot_samples} samples",
        "stochnet EOT-PGD: the copies as one batch of eot_samples * B per step (stochnet max_batch=B: one "
        "copy of the batch per pass); eager and torchattacks: eot_samples serial forward/backward passes per step",
        harness.SCALE_ONLY_NOTE,
    ]
    if device.type == "cpu":
        lines.append("CPU: absolute times are indicative, compare ratios")
    return lines + _throughput_notes(cases)


def run(device, repeats, warmup, quick=False):
    """Benchmark each attack's contenders; the report :func:`harness.format_report` prints."""
    environment = harness.environment(device)
    shape = QUICK_SHAPE if quick else SHAPE
    steps = QUICK_STEPS if quick else STEPS
    eot_samples = QUICK_EOT_SAMPLES if quick else EOT_SAMPLES
    torch.manual_seed(0)
    model = SmallCNN().to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(shape, device=device, dtype=DTYPE, generator=generator)
    y = torch.randint(0, 10, (shape[0],), device=device, generator=generator)
    skipped, cases = [], []
    cases.append(_bench_attack(f"pgd-{steps} linf", model, x, y, steps, 1, device, repeats, warmup, skipped))
    cases.append(_bench_attack(f"eot-pgd-{steps} x{eot_samples} linf", model, x, y, steps, eot_samples,
                               device, repeats, warmup, skipped))
    return harness.report(OP, environment, repeats, warmup, quick, cases, notes(device, steps, eot_samples, cases),
                          skipped=skipped, eps=EPS, alpha=ALPHA, steps=steps, eot_samples=eot_samples)
