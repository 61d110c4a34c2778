"""``stochnet bench ...``: the repository's benchmarks, exactly as ``python -m bench ...`` runs them."""
import os
import subprocess
import sys
from pathlib import Path


def checkout_root():
    """The source checkout holding this stochnet package and its ``bench/`` folder, or None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "bench" / "__main__.py").is_file() else None


def add_parser(commands, argv):
    parser = commands.add_parser(
        "bench", help="run the repository's benchmarks (python -m bench)", add_help=False,
        description="Every argument goes to 'python -m bench' (see 'stochnet bench --help'); needs a source checkout.")
    return parser


def run(args):
    root = checkout_root()
    if root is None:
        raise FileNotFoundError("'stochnet bench' runs the benchmarks of a source checkout, and this stochnet "
                                f"is installed without one (no bench/ beside {Path(__file__).resolve().parents[1]})")
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), environment.get("PYTHONPATH")]))
    return subprocess.call([sys.executable, "-m", "bench", *args.bench_args], env=environment)
