"""Smoke test of ``pytest bench/`` (the pytest-benchmark front end of the op benchmarks): on the quick
shapes, CPU only, one round per benchmark, it passes and reports one group per case of ``python -m bench``
with the contenders of that case, each with the case's sizes and traffic in its extra_info."""
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from bench import train_step
from bench.__main__ import OPS
from bench.test_bench import BENCHMARKED, group_name

ROOT = Path(__file__).resolve().parents[1]
OP_CONTENDERS = ("fused[cpp]", "eager", "compiled")
GROUPS = 12  # perturb 2, pgd 1, smoothing 3 vote modes, stoc_relu_ema 2 shapes x 2 passes, train_step 2 models


def expected_groups():
    """Group -> contender names, from the op modules' quick cases on CPU."""
    import importlib

    cpu = torch.device("cpu")
    return {group_name(case, cpu): set(case.names)
            for op in BENCHMARKED for case in importlib.import_module(OPS[op]).cases(cpu, quick=True)}


def test_pytest_bench_quick_cpu_reports_every_case_as_a_group(tmp_path):
    report = tmp_path / "bench.json"
    command = [sys.executable, "-m", "pytest", "bench/", "--bench-quick", "--bench-device", "cpu", "--benchmark-only",
               "--benchmark-min-rounds=1", "--benchmark-max-time=0", f"--benchmark-json={report}",
               "-p", "no:cacheprovider"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "skipped" not in run.stdout.splitlines()[-1]

    benchmarks = json.loads(report.read_text())["benchmarks"]
    groups = {}
    for bench in benchmarks:
        groups.setdefault(bench["group"], set()).add(bench["extra_info"]["contender"])
    expected = expected_groups()
    assert len(expected) == GROUPS and groups == expected
    assert all(names == set(train_step.CONTENDERS if name.startswith("train_step") else OP_CONTENDERS)
               for name, names in groups.items())

    for bench in benchmarks:
        info, where = bench["extra_info"], bench["fullname"]
        assert bench["stats"]["median"] > 0, where
        assert info["device"] == "cpu" and info["dtype"] == "float32" and info["bytes_moved"] > 0, where
        assert bench["group"] == f"{info['title']} [cpu]" and info["shape"], where
        rate = info["images_per_s"] if info["op"] == "train_step" else info["gbps"]
        assert math.isfinite(rate) and rate > 0, where
        if info["contender"] == "compiled":
            assert info["compile_s"] >= 0, where
        if info["contender"] == "fused[cpp]":
            assert info["backend"] == "cpp", where
