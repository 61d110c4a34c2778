"""Multi-process training with 2 CPU processes (gloo): StocReLUEMA statistics pooled across ranks,
and ``torchrun -m stochnet train`` end to end."""
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stochnet.nn import StocReLUEMA
from stochnet.nn.stoc_relu_ema import sync_stoc_relu
from stochnet.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (4, 6)  # unequal on purpose: the pooled std weighs every value, not every rank


def _batches(step):
    generator = torch.Generator().manual_seed(step)
    return [torch.randn(n, 3, 5, 5, generator=generator) * (rank + 1) + rank for rank, n in enumerate(BATCH_SIZES)]


def _rank_main(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)  # each rank its own noise
        module = sync_stoc_relu(StocReLUEMA(3, gamma=1.0, momentum=0.5)).train()
        outputs, sigmas = [], []
        for step in range(2):
            x = _batches(step)[rank]
            outputs.append(module(x))
            sigmas.append(module.running_sigma.clone())
        torch.save({"outputs": outputs, "sigmas": sigmas, "x": [_batches(s)[rank] for s in range(2)]},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _pooled_std(step):
    x = torch.cat(_batches(step))
    return x.transpose(0, 1).reshape(3, -1).double().std(dim=1).float()


def test_running_sigma_is_reduced_across_ranks(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    first, second = _pooled_std(0), _pooled_std(1)
    for result in ranks:
        # the first batch sets sigma to the pooled std, the second applies the EMA
        torch.testing.assert_close(result["sigmas"][0], first, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result["sigmas"][1], 0.5 * first + 0.5 * second, rtol=1e-5, atol=1e-6)
        # the call's noise uses sigma from before the update: none on the very first batch
        assert torch.equal(result["outputs"][0], torch.relu(result["x"][0]))
        assert not torch.equal(result["outputs"][1], torch.relu(result["x"][1]))
    assert torch.equal(ranks[0]["sigmas"][1], ranks[1]["sigmas"][1])


def test_torchrun_trains_with_two_processes(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "stochnet",
               "train", "--method", "anis2", "--no-teacher-init", "--model", "mnist_cnn", "--data", "mnist",
               "--epochs", "1", "--batch-size", "8", "--train-subset", "32", "--eval-batch-size", "500",
               "--steps", "1", "--eps", "0.1", "--step-size", "0.1", "--device", "cpu", "--out", str(out)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # rank 0 alone logs: one shard of 16 images per rank, 2 steps of 8, reported once
    assert result.stderr.count("epoch 1/1 done") == 1 and result.stderr.count("epoch 1/1 step 2/2") == 1
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["args"]["world_size"] == 2 and state["history"][0]["images"] == 32
    rng = state["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    assert any(name.endswith("running_sigma") and value.abs().sum() > 0 for name, value in state["model"].items())
    assert (out / "metrics.json").is_file()
