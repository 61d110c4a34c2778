"""What the commands print and write: aligned text tables, JSON files, and the check that they can.

``format_table`` and ``write_json`` are :mod:`stochnet.output`'s, the one table formatter and JSON
writer of the package.
"""
import math
import tempfile
from pathlib import Path

from ..output import format_table, write_json
from .errors import UsageError

__all__ = ["check_writable", "format_table", "percent", "write_json"]


def check_writable(folder, option="--out"):
    """Create ``folder`` if needed and check that a file can be written in it, before a command
    spends its compute: raises :class:`UsageError` (a ValueError) naming ``option`` otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {str(folder)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"{option} {str(folder)!r} cannot be written: {error.strerror or error}") from error


def percent(value, std=None):
    """``97.30`` or ``97.30 ± 0.41`` (a fraction shown in percent); ``-`` for nan."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{100 * value:.2f}"
    return text if std is None else f"{text} ± {100 * std:.2f}"
