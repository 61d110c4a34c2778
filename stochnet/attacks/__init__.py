"""White-box attacks: ``x_adv = Attack(model, ...)(x, y)`` with inputs in [0, 1]."""
from .base import Attack
from .cw import CW
from .deepfool import DeepFool
from .eot import EOTPGD
from .gradient import BIM, FGSM, MIM, PGD
from .smoothed import EPGD, SmoothPGD
from .boundary import Boundary
from .transfer import Transfer, transfer_success
from .square import Square
from .nattack import NAttack

__all__ = ["BIM", "EOTPGD", "EPGD", "FGSM", "MIM", "PGD", "SmoothPGD", "Attack", "CW", "DeepFool", "Boundary", "Transfer", "transfer_success"]
__all__ += ["NAttack", "Square"]
