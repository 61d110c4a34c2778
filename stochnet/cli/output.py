"""What the commands print and write: aligned text tables, JSON files, and the check that they can."""
import json
import math
import tempfile
from pathlib import Path


def check_writable(folder, option="--out"):
    """Create ``folder`` if needed and check that a file can be written in it, before a command
    spends its compute: raises ValueError naming ``option`` otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {str(folder)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{option} {str(folder)!r} cannot be written: {error.strerror or error}") from error


def format_table(rows, columns):
    """``rows`` as a table; ``columns`` is a sequence of (header, row -> cell text)."""
    cells = [[header for header, _ in columns]] + [[cell(row) for _, cell in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for number, line in enumerate(cells):
        lines.append("  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]))
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percent(value, std=None):
    """``97.30`` or ``97.30 ± 0.41`` (a fraction shown in percent); ``-`` for nan."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{100 * value:.2f}"
    return text if std is None else f"{text} ± {100 * std:.2f}"


def write_json(path, value):
    """Write ``value`` as JSON to ``path`` (parents created); nan and inf become null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(value), indent=2) + "\n")
    return path


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
