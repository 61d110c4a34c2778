"""The attacks ``stochnet eval`` runs, by name, with per-dataset default budgets."""
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
}
ATTACK_NAMES = tuple(ATTACKS)


def parse_attack_names(text):
    """``"fgsm,pgd"`` -> ("fgsm", "pgd"); an unknown name raises ValueError listing the valid ones."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise ValueError(f"--attacks: name at least one attack of {', '.join(ATTACK_NAMES)}")
    unknown = [name for name in names if name not in ATTACKS]
    if unknown:
        raise ValueError(f"--attacks: unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACK_NAMES)}")
    return names


def make_attack(name, model, data, num_classes, settings, stochastic=True):
    """``(attack, eps)``: the attack ``name`` on ``model``; eps is None for minimum-norm attacks.

    On a deterministic model every noise draw is the same, so EOT-PGD takes one sample per step:
    the same attack as with ``eot_samples`` copies, at a fraction of the cost.
    """
    if not stochastic:
        settings = dataclasses.replace(settings, eot_samples=1)
    norm, build = ATTACKS[name]
    eps = {"linf": settings.linf, "l2": settings.l2}[norm](data) if norm is not None else None
    return build(model, eps, settings, num_classes), eps
