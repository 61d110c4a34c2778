"""The attacks ``stochnet eval`` runs, by name, with per-dataset default budgets.

``transfer-NAME`` is the attack NAME crafted on a source model and evaluated on the target.
"""
import dataclasses
from dataclasses import dataclass

from .. import attacks

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


# name -> (the norm of its budget, None for minimum-norm attacks; builder(model, eps, settings, num_classes))
ATTACKS = {
    "fgsm": ("linf", lambda model, eps, s, k: attacks.FGSM(model, eps=eps)),
    "bim": ("linf", lambda model, eps, s, k: attacks.BIM(model, eps=eps, alpha=s.step(eps), steps=s.steps)),
    "pgd": ("linf", lambda model, eps, s, k: attacks.PGD(model, eps=eps, alpha=s.step(eps), steps=s.steps)),
    "pgd-l2": ("l2", lambda model, eps, s, k: attacks.PGD(model, eps=eps, alpha=s.step(eps), steps=s.steps, norm="l2")),
    "mim": ("linf", lambda model, eps, s, k: attacks.MIM(model, eps=eps, alpha=s.step(eps), steps=s.steps)),
    "eot-pgd": ("linf", lambda model, eps, s, k: attacks.EOTPGD(model, eps=eps, alpha=s.step(eps), steps=s.steps,
                                                                eot_samples=s.eot_samples)),
    "cw": (None, lambda model, eps, s, k: attacks.CW(model, steps=s.cw_steps)),
    "deepfool": (None, lambda model, eps, s, k: attacks.DeepFool(model, num_classes=k)),
    "boundary": (None, lambda model, eps, s, k: attacks.Boundary(model, max_queries=s.queries)),
    # AutoAttack's own budgets (100 APGD steps, 5000 Square queries, EOT over 20 draws), not --steps
    "autoattack": ("linf", lambda model, eps, s, k: attacks.AutoAttack(model, eps, version="standard")),
    "autoattack-rand": ("linf", lambda model, eps, s, k: attacks.AutoAttack(model, eps, version="rand")),
}
ATTACK_NAMES = tuple(ATTACKS)
TRANSFER_PREFIX = "transfer-"
_CHOICES = f"{', '.join(ATTACK_NAMES)}, or {TRANSFER_PREFIX}NAME for any of them"


def crafting_attack(name):
    """The white-box attack a transfer attack crafts its examples with (``"transfer-pgd"`` -> ``"pgd"``);
    None for a name without the transfer prefix."""
    return name[len(TRANSFER_PREFIX):] if name.startswith(TRANSFER_PREFIX) else None


def parse_attack_names(text):
    """``"fgsm,transfer-pgd"`` -> ("fgsm", "transfer-pgd"); an unknown name raises ValueError listing the valid ones."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise ValueError(f"--attacks: name at least one attack of {_CHOICES}")
    unknown = [name for name in names if (crafting_attack(name) or name) not in ATTACKS]
    if unknown:
        raise ValueError(f"--attacks: unknown attack(s) {', '.join(unknown)}; choose from {_CHOICES}")
    return names


def make_attack(name, model, data, num_classes, settings, stochastic=True):
    """``(attack, eps)``: the attack ``name`` on ``model``; eps is None for minimum-norm attacks.

    On a deterministic model every noise draw is the same, so EOT-PGD takes one sample per step:
    the same attack as with ``eot_samples`` copies, at a fraction of the cost.
    """
    if crafting_attack(name) is not None:
        raise ValueError(f"{name} is a transfer attack: build it with make_transfer_attack")
    if not stochastic:
        settings = dataclasses.replace(settings, eot_samples=1)
    norm, build = ATTACKS[name]
    eps = {"linf": settings.linf, "l2": settings.l2}[norm](data) if norm is not None else None
    return build(model, eps, settings, num_classes), eps


def make_transfer_attack(name, source_model, data, num_classes, settings, source_stochastic=True):
    """``(attack, eps)`` for ``"transfer-NAME"``: ``attacks.Transfer`` of the attack NAME on
    ``source_model`` (built as :func:`make_attack` builds it), whose examples ``robust_accuracy``
    then scores on the target model."""
    crafting = crafting_attack(name)
    if crafting is None:
        raise ValueError(f"{name!r} is not a transfer attack (expected {TRANSFER_PREFIX}NAME)")
    attack, eps = make_attack(crafting, source_model, data, num_classes, settings, source_stochastic)
    return attacks.Transfer(attack), eps
