"""The attacks by name (what ``stochnet eval --attacks`` runs), with per-dataset default budgets.

``ATTACKS`` is a :class:`stochnet.registry.Registry` of :class:`AttackSpec`: the norm of the
attack's budget and a builder. ``make_attack(name, model, data, num_classes, settings)`` builds one
with the budgets of :class:`AttackSettings`; ``transfer-NAME`` is the attack NAME crafted on a source
model and evaluated on the target (:func:`make_transfer_attack`).
"""
import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, NamedTuple

from ..registry import Registry
from .autoattack import AutoAttack
from .boundary import Boundary
from .cw import CW
from .deepfool import DeepFool
from .eot import EOTPGD
from .gradient import BIM, FGSM, MIM, PGD
from .transfer import Transfer

# L-inf and L2 budgets of the usual benchmarks: MNIST eps 0.3, CIFAR 8/255 (L2: 2.0 and 0.5).
DEFAULT_EPS = {"mnist": 0.3, "cifar10": 8 / 255, "cifar100": 8 / 255}
DEFAULT_EPS_L2 = {"mnist": 2.0, "cifar10": 0.5, "cifar100": 0.5}


@dataclass(frozen=True)
class AttackSettings:
    """What the user set on the command line; None means the dataset's default."""

    eps: float | None = None
    eps_l2: float | None = None
    alpha: float | None = None
    steps: int = 10
    eot_samples: int = 10
    cw_steps: int = 100
    queries: int = 500

    def linf(self, data):
        return DEFAULT_EPS[data] if self.eps is None else self.eps

    def l2(self, data):
        return DEFAULT_EPS_L2[data] if self.eps_l2 is None else self.eps_l2

    def step(self, eps):
        # Madry et al.'s rule: a step of 2.5 eps / steps lets PGD reach the boundary and move along it.
        return 2.5 * eps / self.steps if self.alpha is None else self.alpha


class AttackSpec(NamedTuple):
    """An attack by name: the norm of its budget ("linf", "l2", or None for minimum-norm attacks) and
    ``build(model, eps, settings, num_classes)``."""

    norm: str | None
    build: Callable


ATTACKS = Registry("attack", {
    "fgsm": AttackSpec("linf", lambda model, eps, s, k: FGSM(model, eps=eps)),
    "bim": AttackSpec("linf", lambda model, eps, s, k: BIM(model, eps=eps, alpha=s.step(eps), steps=s.steps)),
    "pgd": AttackSpec("linf", lambda model, eps, s, k: PGD(model, eps=eps, alpha=s.step(eps), steps=s.steps)),
    "pgd-l2": AttackSpec("l2", lambda model, eps, s, k: PGD(model, eps=eps, alpha=s.step(eps), steps=s.steps,
                                                            norm="l2")),
    "mim": AttackSpec("linf", lambda model, eps, s, k: MIM(model, eps=eps, alpha=s.step(eps), steps=s.steps)),
    "eot-pgd": AttackSpec("linf", lambda model, eps, s, k: EOTPGD(model, eps=eps, alpha=s.step(eps), steps=s.steps,
                                                                  eot_samples=s.eot_samples)),
    "cw": AttackSpec(None, lambda model, eps, s, k: CW(model, steps=s.cw_steps)),
    "deepfool": AttackSpec(None, lambda model, eps, s, k: DeepFool(model, num_classes=k)),
    "boundary": AttackSpec(None, lambda model, eps, s, k: Boundary(model, max_queries=s.queries)),
    # AutoAttack's own budgets (100 APGD steps, 5000 Square queries, EOT over 20 draws), not --steps
    "autoattack": AttackSpec("linf", lambda model, eps, s, k: AutoAttack(model, eps, version="standard")),
    "autoattack-rand": AttackSpec("linf", lambda model, eps, s, k: AutoAttack(model, eps, version="rand")),
})
ATTACK_NAMES = ATTACKS.names()


def _eps_text(defaults):
    def show(value):  # 0.3, but 8/255
        return f"{value:g}" if round(value, 4) == value else str(Fraction(value).limit_denominator(1000))

    text = {data: show(value) for data, value in defaults.items()}
    return f"eps {text['mnist']} MNIST / {text['cifar10']} CIFAR"


# The default budget of each attack, one line each: what ``stochnet eval --help`` lists.
_LINF, _L2 = _eps_text(DEFAULT_EPS), _eps_text(DEFAULT_EPS_L2)
_STEPS = f"{AttackSettings.steps} steps of 2.5 eps/steps"
ATTACK_BUDGETS = {
    "fgsm": f"L-inf, {_LINF}, one step of eps",
    "bim": f"L-inf, {_LINF}, {_STEPS}",
    "pgd": f"L-inf, {_LINF}, {_STEPS}, random start",
    "pgd-l2": f"L2, {_L2}, {_STEPS}, random start",
    "mim": f"L-inf, {_LINF}, {_STEPS}, momentum 1.0",
    "eot-pgd": f"L-inf, {_LINF}, {_STEPS} x EOT {AttackSettings.eot_samples}, random start",
    "cw": f"L2 minimum norm, 5 binary-search rounds x {AttackSettings.cw_steps} Adam steps",
    "deepfool": "L2 minimum norm, 50 steps, overshoot 0.02",
    "boundary": f"L2 minimum norm, decision-based, {AttackSettings.queries} queries per image",
    "autoattack": "L-inf, APGD-CE + APGD-T (100 steps) + Square (5000 queries)",
    "autoattack-rand": "L-inf, APGD-CE + APGD-DLR, 100 steps x EOT 20, 5 checks",
}
assert set(ATTACK_BUDGETS) == set(ATTACK_NAMES), "every attack needs its budget line"
TRANSFER_PREFIX = "transfer-"


def crafting_attack(name):
    """The white-box attack a transfer attack crafts its examples with (``"transfer-pgd"`` -> ``"pgd"``);
    None for a name without the transfer prefix."""
    return name[len(TRANSFER_PREFIX):] if name.startswith(TRANSFER_PREFIX) else None


def is_attack_name(name):
    """Whether ``name`` is an attack of :data:`ATTACKS` or ``transfer-NAME`` of one."""
    return (crafting_attack(name) or name) in ATTACKS


def make_attack(name, model, data, num_classes, settings, stochastic=True):
    """``(attack, eps)``: the attack ``name`` on ``model``; eps is None for minimum-norm attacks.

    On a deterministic model every noise draw is the same, so EOT-PGD takes one sample per step:
    the same attack as with ``eot_samples`` copies, at a fraction of the cost.
    """
    if crafting_attack(name) is not None:
        raise ValueError(f"{name} is a transfer attack: build it with make_transfer_attack")
    norm, build = ATTACKS.get(name)
    if not stochastic:
        settings = dataclasses.replace(settings, eot_samples=1)
    eps = {"linf": settings.linf, "l2": settings.l2}[norm](data) if norm is not None else None
    return build(model, eps, settings, num_classes), eps


def make_transfer_attack(name, source_model, data, num_classes, settings, source_stochastic=True):
    """``(attack, eps)`` for ``"transfer-NAME"``: :class:`Transfer` of the attack NAME on
    ``source_model`` (built as :func:`make_attack` builds it), whose examples ``robust_accuracy``
    then scores on the target model."""
    crafting = crafting_attack(name)
    if crafting is None:
        raise ValueError(f"{name!r} is not a transfer attack (expected {TRANSFER_PREFIX}NAME)")
    attack, eps = make_attack(crafting, source_model, data, num_classes, settings, source_stochastic)
    return Transfer(attack), eps
