"""Options of ``pytest bench/`` (pytest-benchmark front end of the op benchmarks, ``bench/test_bench.py``).

A plain ``pytest`` from the repository root collects ``tests/`` only (``testpaths``), never these.
"""
import os
import platform

import torch

from . import harness


def pytest_addoption(parser):
    group = parser.getgroup("stochnet bench", "stochnet op benchmarks (bench/test_bench.py)")
    group.addoption("--bench-quick", action="store_true",
                    help="tiny shapes, as python -m bench --quick: a smoke test, not a measurement")
    group.addoption("--bench-device", choices=("cpu", "cuda", "all"), default="all",
                    help="the devices to benchmark on (default all: CUDA cases skip without a GPU)")


def pytest_benchmark_update_machine_info(config, machine_info):
    """What ``python -m bench`` records of the environment beyond pytest-benchmark's machine info
    (no load average: it would make every saved run's machine info differ)."""
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "huge_page_allocations": os.environ.get(harness.THP_VARIABLE) == "1"}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    machine_info["stochnet_bench"] = info
