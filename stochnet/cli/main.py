"""``stochnet {train,eval,certify,bench}``: the command-line driver.

Every user error (unknown method, model or dataset, missing checkpoint or data folder, a
checkpoint that does not fit its model, a bad option value, an output folder that cannot be
written) and every OS error (a full disk) ends in one line ``stochnet: error: ...`` and exit
status 2, without a traceback. A user error is a :class:`UsageError` (what the commands raise for
the user's input, see :mod:`stochnet.cli.errors`), a ``CheckpointError`` or a ``DataError`` (a bad
checkpoint or data file), a ``SetupError`` (a value training's set-up rejected) or a
``RunFolderError`` (a --out in use or holding a run); any other exception is a bug and propagates
with its traceback.
"""
import argparse
import sys

from . import bench_command, certify_command, eval_command, train_command
from .errors import UsageError

COMMANDS = {"train": train_command, "eval": eval_command, "certify": certify_command, "bench": bench_command}
EXIT_USAGE = 2

def _user_errors():
    """The exception types that are the user's, reported as one line (OSError: a missing file, a full
    disk, ...); training's set-up reports the values it rejects as a ``SetupError``."""
    from ..data.errors import DataError
    from ..train import CheckpointError, SetupError
    from ..train.run_folder import RunFolderError

    return UsageError, CheckpointError, DataError, SetupError, RunFolderError, OSError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like every other error of the driver."""

    def error(self, message):
        print(f"stochnet: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser(argv):
    parser = Parser(prog="stochnet", description="Train, attack, certify and benchmark stochastic defenses.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}",
                                     parser_class=Parser)
    for command in COMMANDS.values():
        command.add_parser(commands, argv)
    return parser


def main(argv=None):
    """Run one command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    # 'stochnet bench' passes everything after it to 'python -m bench', options included.
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    user_errors = _user_errors()
    try:
        return COMMANDS[args.command].run(args) or 0
    except KeyboardInterrupt:
        print("stochnet: interrupted", file=sys.stderr)
        return 130
    except user_errors as error:
        message = str(error).strip().splitlines()
        print(f"stochnet: error: {message[0] if message else type(error).__name__}", file=sys.stderr)
        return EXIT_USAGE
