"""``python -m bench [--op stoc_relu_ema] [--device cpu|cuda] [--repeats N] [--quick] [--huge-pages] [--json PATH]``

Prints one table per (shape, pass) and writes the report as JSON
(default ``bench/results/<op>-<device>[-hugepages].json``). The same cases run under pytest-benchmark
with ``pytest bench/ --benchmark-only`` (``bench/test_bench.py``).
"""
import argparse
import importlib
import os
import sys
from pathlib import Path

import torch

from stochnet.output import write_json
from stochnet.registry import Registry

from . import harness

# The benchmarks by op name: the module whose run(device, repeats, warmup, quick) makes the report.
OPS = Registry("bench op", {name: f"bench.{name}" for name in
                            ("stoc_relu_ema", "perturb", "pgd", "attacks", "train_step", "smoothing")})
RESULTS = Path(__file__).resolve().parent / "results"
# timed samples and untimed warm-up calls per contender: (default, with --quick)
REPEATS, WARMUP = (20, 3), (3, 1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark a fused stochnet op against eager PyTorch and torch.compile.")
    parser.add_argument("--op", choices=sorted(OPS), default="stoc_relu_ema")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed samples per contender (default {REPEATS[0]}; {REPEATS[1]} with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed calls per contender before timing "
                             f"(default {WARMUP[0]}; {WARMUP[1]} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and few repeats: a smoke test, not a measurement")
    parser.add_argument("--huge-pages", action="store_true",
                        help=f"CPU: run with {harness.THP_VARIABLE}=1, torch's switch that backs large "
                             "allocations with transparent huge pages (fewer page faults on fresh outputs)")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the report (default bench/results/<op>-<device>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def main(argv=None):
    """Run the benchmark, print its tables, write its JSON; returns (report, json path)."""
    args = parse_args(argv)
    if args.huge_pages and os.environ.get(harness.THP_VARIABLE) != "1":
        # torch reads the switch once, at its first allocation: start afresh with it set.
        os.execve(sys.executable, [sys.executable, "-m", "bench", *(sys.argv[1:] if argv is None else argv)],
                  {**os.environ, harness.THP_VARIABLE: "1"})
    if args.device == "cuda" or (args.device is None and torch.cuda.is_available()):
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    repeats = args.repeats if args.repeats is not None else REPEATS[args.quick]
    warmup = args.warmup if args.warmup is not None else WARMUP[args.quick]
    benchmark = importlib.import_module(OPS[args.op])
    report = benchmark.run(device, repeats=repeats, warmup=warmup, quick=args.quick)
    print(harness.format_report(report), flush=True)
    path = write_json(args.json or RESULTS / f"{args.op}-{device.type}{'-hugepages' if args.huge_pages else ''}.json",
                      report)
    print(f"wrote {path}")
    return report, path


if __name__ == "__main__":
    main()
