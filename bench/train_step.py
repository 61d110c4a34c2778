"""End to end: training-step throughput of an ANIS² student against its deterministic teacher.

Three contenders train the same model on the same batch, one SGD step (forward, cross-entropy,
backward, update) per iteration:

- ``teacher``: the deterministic model (ReLUs);
- ``fused``: the ANIS² student ``stochnet.nn.convert(teacher, "anis2")``, every ReLU a fused
  ``StocReLUEMA`` (noise, EMA statistics and the 1-bit backward mask in one pass);
- ``eager``: the same student with each StocReLUEMA written as a user would in plain PyTorch
  (:class:`EagerStocReLUEMA`: ``randn_like``, ``std`` over the channel's dims, the EMA, ``relu``).

The target: the fused student's step within 1.10x of the teacher's.
"""
import copy
import math

import torch
import torch.nn.functional as nnf
from torch import nn

import stochnet
from stochnet.models import build_model

from . import harness
from .cases import Built, Case, time_case

OP = "train_step"
# (model, batch shape): a CIFAR ResNet-20 and the MNIST CNN of the driver's main job
CASES = (("resnet20", (128, 3, 32, 32)), ("mnist_cnn", (128, 1, 28, 28)))
QUICK_CASES = (("resnet20", (2, 3, 32, 32)), ("mnist_cnn", (2, 1, 28, 28)))
GAMMA = 0.25
MOMENTUM = 0.5
LR = 0.01
DTYPE = torch.float32
TARGET = 1.10
CONTENDERS = ("teacher", "fused", "eager")  # the models of :func:`_models`, in order
DEVICES = ("cpu", "cuda")  # where the benchmark runs
PARAMS = {"gamma": GAMMA, "momentum": MOMENTUM, "target_step_over_teacher": TARGET}  # the report's settings


class EagerStocReLUEMA(nn.Module):
    """StocReLU-EMA the usual eager way: ``relu(x + sqrt(gamma) * sigma_c * randn_like(x))``, then
    in training ``sigma <- (1 - momentum) sigma + momentum std_c(x)`` (the first batch sets it)."""

    def __init__(self, running_sigma, gamma, momentum, initialized):
        super().__init__()
        self.register_buffer("running_sigma", running_sigma.clone())
        self.gamma, self.momentum, self.initialized = gamma, momentum, initialized

    def forward(self, x):
        channel = (1, -1) + (1,) * (x.dim() - 2)
        y = torch.relu(x + math.sqrt(self.gamma) * self.running_sigma.view(channel) * torch.randn_like(x))
        if self.training:
            with torch.no_grad():
                std = x.std(dim=[d for d in range(x.dim()) if d != 1])
                momentum = self.momentum if self.initialized else 1.0
                self.running_sigma.mul_(1 - momentum).add_(momentum * std)
                self.initialized = True
        return y


def eager_student(fused):
    """A copy of the fused student with every StocReLUEMA replaced by :class:`EagerStocReLUEMA`."""
    student = copy.deepcopy(fused)
    for parent in list(student.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, stochnet.nn.StocReLUEMA):
                setattr(parent, name, EagerStocReLUEMA(child.running_sigma, child.gamma, child.momentum,
                                                       child.sigma_initialized))
    return student


def _models(name, shape, device):
    torch.manual_seed(0)
    teacher = build_model(name, num_classes=10, in_channels=shape[1]).to(device)
    example = torch.rand(2, *shape[1:], device=device)
    fused = stochnet.nn.convert(teacher, "anis2", example_input=example, gamma=GAMMA, momentum=MOMENTUM)
    return {"teacher": teacher, "fused": fused, "eager": eager_student(fused)}


def _check_same_work(models, x):
    """With gamma = 0 both students compute the teacher's function and the same sigma updates:
    the contenders differ only in how they compute the noisy activations."""
    quiet = {}
    for name in ("teacher", "fused", "eager"):
        model = copy.deepcopy(models[name]).train()
        for module in model.modules():
            if hasattr(module, "gamma"):
                module.gamma = 0.0
        quiet[name] = model
        quiet[name + "_logits"] = model(x)
    for name in ("fused", "eager"):
        if not torch.allclose(quiet[name + "_logits"], quiet["teacher_logits"], rtol=1e-4, atol=1e-5):
            raise AssertionError(f"the {name} student at gamma 0 does not compute the teacher's function")
    fused_sigmas = [b for n, b in quiet["fused"].named_buffers() if n.endswith("running_sigma")]
    eager_sigmas = [b for n, b in quiet["eager"].named_buffers() if n.endswith("running_sigma")]
    if len(fused_sigmas) != len(eager_sigmas) or not fused_sigmas or not all(
            torch.allclose(f, e, rtol=1e-4, atol=1e-6) for f, e in zip(fused_sigmas, eager_sigmas)):
        raise AssertionError("the fused and eager students update running_sigma differently: not the same work")


def _train_step(model, optimizer, x, y):
    def step():
        optimizer.zero_grad(set_to_none=True)
        nnf.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


def _case(name, shape, device):
    def build():
        generator = torch.Generator(device=device).manual_seed(0)
        x = torch.rand(shape, device=device, dtype=DTYPE, generator=generator)
        y = torch.randint(0, 10, (shape[0],), device=device, generator=generator)
        models = _models(name, shape, device)
        _check_same_work(models, x)
        contenders = []
        for label, model in models.items():
            model.train()
            step = _train_step(model, torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9), x, y)
            step()  # the students' first batch sets sigma: time the steady state
            extra = {"saved_bytes": harness.saved_tensor_bytes(lambda: nnf.cross_entropy(model(x), y))}
            peak = harness.peak_memory_bytes(step, device)
            if peak is not None:
                extra["peak_bytes"] = peak
            contenders.append(harness.Contender(label, "fused" if label == "fused" else "eager", step, extra))
        return Built(contenders, x.numel() * x.element_size(), x.numel(), DTYPE)

    return Case(f"{OP} {name} {tuple(shape)} {harness.dtype_name(DTYPE)}",
                {"model": name, "shape": list(shape), "pass": "train step"}, CONTENDERS, build,
                references=("eager", "teacher"), images=shape[0])


def _time_case(case, device, repeats, warmup):
    timed = time_case(case, device, repeats=repeats, warmup=warmup)
    for row in timed["results"]:
        row["step_over_teacher"] = 1.0 / row["teacher_over_this"]
    return timed


def _summary(cases):
    lines = []
    for case in cases:
        rows = {row["name"]: row for row in case["results"]}
        fused, eager = rows["fused"]["step_over_teacher"], rows["eager"]["step_over_teacher"]
        verdict = "meets" if fused <= TARGET else "misses"
        lines.append(f"{case['model']}: images/s teacher {rows['teacher']['images_per_s']:.0f}, fused student "
                     f"{rows['fused']['images_per_s']:.0f}, eager student {rows['eager']['images_per_s']:.0f}; "
                     f"step time over the teacher's: fused {fused:.3f}x ({verdict} the {TARGET:.2f}x target), "
                     f"eager {eager:.3f}x")
    return lines


def notes(device, cases):
    lines = [
        "one iteration = one SGD step (forward, cross-entropy, backward, update) on the same batch; median "
        "over round-robin samples after warm-up; images/s = batch / median",
        f"students: ANIS² (gamma {GAMMA}, EMA momentum {MOMENTUM}) converted from the teacher; fused = "
        "stochnet.nn.StocReLUEMA, eager = randn_like + std + EMA + relu in plain PyTorch",
        "eager/this: the eager student's median over this row's; step_over_teacher in the JSON: this row's "
        "median over the teacher's",
        "saved: distinct storages autograd keeps for backward during the forward and loss (weights included)",
        harness.SCALE_ONLY_NOTE,
    ]
    if device.type == "cuda":
        lines.append(harness.peak_note(device, "one training step"))
    else:
        lines.append("CPU: absolute times are indicative, compare ratios; peak memory is a CUDA statistic")
    return lines + _summary(cases)


def cases(device, quick=False):
    """Every (model, batch) case on ``device``, unbuilt (:class:`bench.cases.Case`)."""
    return [_case(name, shape, device) for name, shape in (QUICK_CASES if quick else CASES)]


def run(device, repeats, warmup, quick=False):
    """Benchmark the three contenders on every (model, batch); the report :func:`harness.format_report` prints."""
    environment = harness.environment(device)
    timed = [_time_case(case, device, repeats, warmup) for case in cases(device, quick)]
    return harness.report(OP, environment, repeats, warmup, quick, timed, notes(device, timed), **PARAMS)
