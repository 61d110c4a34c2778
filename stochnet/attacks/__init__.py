"""Attacks: ``x_adv = Attack(model, ...)(x, y)`` with inputs in [0, 1]."""
from .apgd import APGD, APGDT
from .autoattack import AutoAttack
from .base import Attack
from .boundary import Boundary
from .cw import CW
from .deepfool import DeepFool
from .eot import EOTPGD
from .gradient import BIM, FGSM, MIM, PGD
from .nattack import NAttack
from .smoothed import EPGD, SmoothPGD
from .square import Square
from .transfer import Transfer, transfer_success

__all__ = ["APGD", "APGDT", "Attack", "AutoAttack", "BIM", "Boundary", "CW", "DeepFool", "EOTPGD", "EPGD", "FGSM",
           "MIM", "NAttack", "PGD", "SmoothPGD", "Square", "Transfer", "transfer_success"]
