"""Turn a deterministic teacher into a stochastic student: ANIS², PNI or Learn2Perturb."""
import copy
from collections import OrderedDict

import torch
from torch import nn

from ..modes import eval_mode
from .perturbation import PerturbationInjection
from .pni import PNIConv2d, PNILinear
from .stoc_relu_ema import StocReLUEMA

_OPTIONS = {
    "anis2": {"gamma": 0.1, "momentum": 0.5},
    "pni": {"alpha_mode": "layer", "alpha_init": 0.25},
    "l2p": {"init": 0.25, "theta_min": 0.01},
}
KINDS = tuple(_OPTIONS)


class InjectionSite(nn.Identity):
    """Marks a place for Learn2Perturb's noise: the identity until ``convert(model, "l2p")``.

    There it becomes a :class:`PerturbationInjection` of the shape of what flows through it.
    A model with its own blocks (not torchvision's) places these where the noise belongs,
    for example after its stem and on each block's residual sum; a model that has any
    InjectionSite gets noise exactly there, and convert's ``(Conv2d, BatchNorm2d)`` rule for
    ``nn.Sequential`` is then off. It has no parameters, so the model's state dict is unchanged.
    """


class ResidualBlock(nn.Module):
    """A torchvision ``BasicBlock`` / ``Bottleneck`` with an injection point before its final ReLU.

    Computes exactly what the block computes, ``relu(body(x) + shortcut(x))``, with two
    changes that noise needs: ``noise`` (None for no noise) runs on the residual sum before
    the final activation, as Learn2Perturb places it, and every activation call site has its
    own module (``relu1`` ... ``relu_out``) where the block reuses one ``relu``, so that each
    can become a StocReLUEMA with its own statistics. The block's conv, bn and downsample
    modules are kept under their names, so the block's state-dict keys are unchanged.
    """

    def __init__(self, block, noise=None):
        super().__init__()
        self.depth = 3 if hasattr(block, "conv3") else 2
        for i in range(1, self.depth + 1):
            setattr(self, f"conv{i}", getattr(block, f"conv{i}"))
            setattr(self, f"bn{i}", getattr(block, f"bn{i}"))
        for i in range(1, self.depth):
            setattr(self, f"relu{i}", block.relu if i == 1 else copy.deepcopy(block.relu))
        self.downsample = block.downsample
        self.noise = noise
        self.relu_out = copy.deepcopy(block.relu)
        self.stride = block.stride
        self.train(block.training)

    def forward(self, x):
        out = x
        for i in range(1, self.depth + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            if i < self.depth:
                out = getattr(self, f"relu{i}")(out)
        identity = x if self.downsample is None else self.downsample(x)
        out += identity  # in place, as torchvision's blocks do: no fresh activation-sized tensor
        if self.noise is not None:
            out = self.noise(out)
        return self.relu_out(out)


def convert(model, kind, example_input=None, backend=None, **options):
    """A stochastic student built from a deep copy of ``model``; ``model`` itself is not modified.

    Every weight, bias and BatchNorm statistic of the teacher is kept (copied), and the
    student's modules keep the teacher's train/eval modes. With the noise scale set to zero
    (``gamma=0``, ``alpha_init=0``, or ``init=0, theta_min=0``) the student in eval mode
    returns the teacher's outputs exactly.

    Kinds and their options:

    - ``"anis2"`` (``gamma=0.1``, ``momentum=0.5``): every ``nn.ReLU`` becomes a
      :class:`StocReLUEMA` whose channel count is read from one forward pass on
      ``example_input`` (required). torchvision ResNet blocks first become
      :class:`ResidualBlock`, which gives each of their ReLU call sites its own module. Any
      other ReLU module must be called exactly once per forward.
    - ``"pni"`` (``alpha_mode="layer"``, ``alpha_init=0.25``): every ``nn.Conv2d`` /
      ``nn.Linear`` (exactly those types; subclasses may have their own forward and are left
      alone) becomes a :class:`PNIConv2d` / :class:`PNILinear` with the same weights.
    - ``"l2p"`` (``init=0.25``, ``theta_min=0.01``): :class:`PerturbationInjection` modules
      with per-element theta of the feature-map shape (read from a forward pass on
      ``example_input``, required; the student then expects inputs of that resolution).
      In a torchvision ResNet: one after the stem's conv+BN (inserted before ``model.relu``)
      and one per residual block, on the residual sum before the final ReLU (the block
      becomes a :class:`ResidualBlock`). In a model with :class:`InjectionSite` modules: each
      of them becomes one (torchvision blocks get the residual injection too). In other
      models: one after each ``(nn.Conv2d, nn.BatchNorm2d)`` pair of consecutive children of
      an ``nn.Sequential`` (torchvision blocks inside them get the residual injection too, and
      their ``downsample`` pairs none).

    ``backend`` is passed to every noise module. The shape-reading forward pass runs in eval
    mode under ``no_grad`` with torch's RNG state restored afterwards, so converting changes
    no BatchNorm statistic and no random stream.

    Example::

        teacher = torchvision.models.resnet18(num_classes=10)
        student = stochnet.nn.convert(teacher, "anis2", example_input=torch.rand(1, 3, 32, 32))
    """
    if kind not in _OPTIONS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    unknown = sorted(set(options) - set(_OPTIONS[kind]))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for kind {kind!r}; its options are "
                        f"{sorted(_OPTIONS[kind])} (plus example_input and backend)")
    settings = {**_OPTIONS[kind], **options}
    if kind != "pni" and example_input is None:
        raise ValueError(f"convert(model, {kind!r}) needs example_input=, a sample input batch: "
                         f"a forward pass on it gives the shapes of the new modules")
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    student = copy.deepcopy(model)
    if kind == "anis2":
        return _to_anis2(student, example_input, backend, **settings)
    if kind == "pni":
        return _to_pni(student, backend, **settings)
    return _to_l2p(student, example_input, backend, **settings)


def _replace_all(model, replacements):
    """Swap modules by identity (``{id(old): new}``) wherever they are registered; returns the root."""
    if id(model) in replacements:
        return replacements[id(model)]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in replacements:
                setattr(parent, name, replacements[id(child)])
    return model


def _wrap_blocks(model):
    """Every torchvision BasicBlock / Bottleneck of ``model`` as a ResidualBlock; returns the root."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    blocks = {id(m): ResidualBlock(m) for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))}
    return _replace_all(model, blocks)


def _trace(model, example_input, modules, inputs):
    """``{id(module): [tensor, ...]}``: each module's input (``inputs=True``) or output per call."""
    seen = {id(m): [] for m in modules}

    def record(module, args, output):
        value = args[0] if inputs else output
        seen[id(module)].append(value if isinstance(value, torch.Tensor) else None)

    hooks = [m.register_forward_hook(record) for m in modules]
    try:
        with eval_mode(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _module_names(model):
    return {id(m): name or "<root>" for name, m in model.named_modules(remove_duplicate=False)}


def _to_anis2(model, example_input, backend, gamma, momentum):
    model = _wrap_blocks(model)
    relus = list({id(m): m for m in model.modules() if isinstance(m, nn.ReLU)}.values())
    if not relus:
        raise ValueError("convert(model, 'anis2'): the model has no nn.ReLU to replace")
    names = _module_names(model)
    calls = _trace(model, example_input, relus, inputs=True)
    replacements = {}
    for relu in relus:
        seen = calls[id(relu)]
        name = names[id(relu)]
        if len(seen) != 1:
            raise ValueError(f"convert(model, 'anis2'): ReLU {name!r} was called {len(seen)} times in the "
                             f"forward pass on example_input; each ReLU must be called exactly once "
                             f"(use one nn.ReLU per call site) to get its own noise statistics")
        x = seen[0]
        if x is None or x.dim() < 2:
            raise ValueError(f"convert(model, 'anis2'): ReLU {name!r} got an input that is not an "
                             f"(N, C, *) tensor")
        new = StocReLUEMA(x.shape[1], gamma=gamma, momentum=momentum, backend=backend).to(x.device)
        replacements[id(relu)] = new.train(relu.training)
    return _replace_all(model, replacements)


def _to_pni(model, backend, alpha_mode, alpha_init):
    replacements = {}
    for module in model.modules():
        if type(module) is nn.Conv2d:
            replacements[id(module)] = PNIConv2d.from_module(module, alpha_mode, alpha_init, backend)
        elif type(module) is nn.Linear:
            replacements[id(module)] = PNILinear.from_module(module, alpha_mode, alpha_init, backend)
    if not replacements:
        raise ValueError("convert(model, 'pni'): the model has no nn.Conv2d or nn.Linear to replace")
    return _replace_all(model, replacements)


def _sequential_pairs(model, skip):
    """``(sequential, name of the BatchNorm2d)`` for each (Conv2d, BatchNorm2d) pair of children."""
    pairs = []
    for module in model.modules():
        if not isinstance(module, nn.Sequential) or id(module) in skip:
            continue
        children = list(module.named_children())
        for (_, first), (name, second) in zip(children, children[1:]):
            if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
                pairs.append((module, name))
    return pairs


def _to_l2p(model, example_input, backend, init, theta_min):
    from torchvision.models import ResNet

    model = _wrap_blocks(model)
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    stem = isinstance(model, ResNet)
    marked = [m for m in model.modules() if isinstance(m, InjectionSite)]
    skip = {id(b.downsample) for b in blocks if b.downsample is not None}
    pairs = [] if stem or marked else _sequential_pairs(model, skip)
    sites = blocks + marked + [getattr(seq, name) for seq, name in pairs] + ([model.bn1] if stem else [])
    if not sites:
        raise ValueError("convert(model, 'l2p') found no place for a PerturbationInjection: no torchvision "
                         "ResNet block, no InjectionSite and no (Conv2d, BatchNorm2d) pair in an nn.Sequential")
    names = _module_names(model)
    outputs = _trace(model, example_input, sites, inputs=False)

    def injection(site):
        seen = outputs[id(site)]
        if len(seen) != 1 or seen[0] is None or seen[0].dim() < 2:
            raise ValueError(f"convert(model, 'l2p'): {names[id(site)]!r} must be called once per forward "
                             f"with an (N, C, *) output, got {len(seen)} call(s) on example_input")
        y = seen[0]
        noise = PerturbationInjection(tuple(y.shape[1:]), init=init, theta_min=theta_min, backend=backend)
        return noise.to(device=y.device, dtype=y.dtype).train(site.training)

    for block in blocks:
        block.noise = injection(block)
    model = _replace_all(model, {id(site): injection(site) for site in marked})
    for seq, name in pairs:
        children = list(seq.named_children())
        noise = injection(getattr(seq, name))
        # Rebuilt in place (not a new Sequential) so subclasses and existing child names survive.
        seq._modules.clear()
        for child_name, child in children:
            seq.add_module(child_name, child)
            if child_name == name:
                seq.add_module(f"{name}_noise", noise)
    if stem:
        model.relu = nn.Sequential(OrderedDict(noise=injection(model.bn1), relu=model.relu))
        model.relu.train(model.training)
    return model
