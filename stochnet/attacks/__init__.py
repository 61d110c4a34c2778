"""White-box attacks: ``x_adv = Attack(model, ...)(x, y)`` with inputs in [0, 1]."""
from .base import Attack
from .eot import EOTPGD
from .gradient import BIM, FGSM, MIM, PGD

__all__ = ["BIM", "EOTPGD", "FGSM", "MIM", "PGD", "Attack"]
