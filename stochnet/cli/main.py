"""``stochnet {train,eval,certify,bench}``: the command-line driver.

Every user error (unknown method, model or dataset, missing checkpoint or data folder, a
checkpoint that does not fit its model, a bad option value, an output folder that cannot be
written) and every OS error (a full disk) ends in one line ``stochnet: error: ...`` and exit
status 2, without a traceback.
"""
import argparse
import sys

from . import bench_command, certify_command, eval_command, train_command

COMMANDS = {"train": train_command, "eval": eval_command, "certify": certify_command, "bench": bench_command}
EXIT_USAGE = 2


class UsageError(Exception):
    """An error of the user's input: reported as one line, exit status 2."""


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
    try:
        return COMMANDS[args.command].run(args) or 0
    except KeyboardInterrupt:
        print("stochnet: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, OSError) as error:  # OSError: a missing file, a full disk, ...
        message = str(error).strip().splitlines()
        print(f"stochnet: error: {message[0] if message else type(error).__name__}", file=sys.stderr)
        return EXIT_USAGE
