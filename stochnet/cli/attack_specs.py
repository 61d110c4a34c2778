"""``--attacks``: the names ``stochnet eval`` takes. The attacks themselves, their budgets and builders
live in :mod:`stochnet.attacks.registry`; :class:`AttackSettings`, :func:`make_attack` and
:func:`make_transfer_attack` are re-exported here.

``transfer-NAME`` is the attack NAME crafted on a source model and evaluated on the target.
"""
from ..attacks.registry import ATTACK_NAMES, TRANSFER_PREFIX, is_attack_name
from ..attacks.registry import AttackSettings, make_attack, make_transfer_attack  # noqa: F401 (re-exported)
from .errors import UsageError

_CHOICES = f"{', '.join(ATTACK_NAMES)}, or {TRANSFER_PREFIX}NAME for any of them"


def parse_attack_names(text):
    """``"fgsm,transfer-pgd"`` -> ("fgsm", "transfer-pgd"); an unknown name raises :class:`UsageError`
    listing the valid ones."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise UsageError(f"--attacks: name at least one attack of {_CHOICES}")
    unknown = [name for name in names if not is_attack_name(name)]
    if unknown:
        raise UsageError(f"--attacks: unknown attack(s) {', '.join(unknown)}; choose from {_CHOICES}")
    return names
