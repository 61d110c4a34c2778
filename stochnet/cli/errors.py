"""The command line's user errors: what ``stochnet`` reports as one ``stochnet: error: ...`` line.

The commands raise :class:`UsageError` for a bad option value or input they find themselves, and
wrap each step that hands the user's values to the library (building an attack from ``--eps``,
choosing ``--device``, loading ``--data-dir``) in :func:`user_values`, so the library's ValueError
there becomes a UsageError. Any other ValueError is a bug and keeps its traceback.
"""
import contextlib


class UsageError(ValueError):
    """An error in the user's input (an option value, a file): reported as one line, exit status 2."""


@contextlib.contextmanager
def user_values():
    """Inside, a ValueError is the user's: the library rejected a value the command passed on from
    the command line. It is raised again as a :class:`UsageError` with the same message."""
    try:
        yield
    except UsageError:
        raise
    except ValueError as error:
        raise UsageError(str(error)) from error
