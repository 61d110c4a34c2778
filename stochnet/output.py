"""Results as files and text: ``write_json(path, value)`` and ``format_table(rows, columns)``.

The one JSON writer and the one table formatter of stochnet; the command line, the smoothing
evaluation and the benchmarks all use them.
"""
import json
import math
from pathlib import Path


def write_json(path, value):
    """Write ``value`` as indented JSON (two spaces, a final newline) to ``path``, creating its parent
    folders; nan and inf (not valid JSON) become null, tuples lists. Returns the path as a ``Path``."""
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


def format_table(rows, columns, rule=True):
    """``rows`` as an aligned text table: the first column left-aligned, the others right-aligned,
    two spaces between columns. ``columns`` is a sequence of ``(header, row -> cell text)``; ``rule``
    puts a line of dashes under the header."""
    cells = [[header for header, _ in columns]] + [[cell(row) for _, cell in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for number, line in enumerate(cells):
        lines.append("  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]))
        if number == 0 and rule:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
