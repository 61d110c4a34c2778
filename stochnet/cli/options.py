"""Command-line options generated from an options dataclass: one ``--field-name`` per field."""
import argparse
import dataclasses
import typing


def add_dataclass_options(parser, options_class, title):
    """Add an argument group ``title`` with ``--name`` for every field of ``options_class``.

    Every option defaults to None (meaning: the dataclass's default, shown in the help), so
    the parsed config holds only what the user set. Values are parsed by the dataclass's own
    parser; booleans get ``--name`` / ``--no-name``, tuples take comma-separated numbers.
    Returns the field names.
    """
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(options_class)
    names = []
    for spec in dataclasses.fields(options_class):
        flag = "--" + spec.name.replace("_", "-")
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        # argparse formats help strings with %: a literal percent sign must be doubled
        help_text = f"{spec.metadata.get('help', '')} (default: {_show(default)})".replace("%", "%%")
        kind = hints[spec.name]
        if kind is bool:
            group.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(flag, dest=spec.name, default=None, choices=spec.metadata.get("choices"),
                               metavar=_metavar(kind, spec), help=help_text)
        names.append(spec.name)
    return names


def collect(namespace, names):
    """``{name: value}`` of the options the user set (those left at None are omitted)."""
    return {name: getattr(namespace, name) for name in names if getattr(namespace, name) is not None}


def _metavar(kind, spec):
    if spec.metadata.get("choices"):
        return None
    if kind is tuple:
        return "A,B,..."
    return getattr(kind, "__name__", "VALUE").upper()


def _show(value):
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
