"""Multi-process training with 2 CPU processes (gloo): StocReLUEMA statistics pooled across ranks,
``torchrun -m stochnet train`` end to end, and resuming a checkpoint on another number of processes."""
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stochnet.nn import StocReLUEMA
from stochnet.nn.stoc_relu_ema import sync_stoc_relu
from stochnet.train import TrainRun, load_checkpoint, train

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


# ANIS² without a teacher, 2 epochs on 32 images: noise and PGD starts draw random numbers.
TINY_RUN = dict(method="anis2", model="mnist_cnn", data="mnist", epochs=2, batch_size=8, train_subset=32,
                eval_batch_size=500, seed=5, device="cpu",
                options={"teacher_init": False, "steps": 1, "eps": 0.1, "step_size": 0.1, "lr": 0.05})


class Interrupt(Exception):
    """Stops a run after its first epoch's checkpoint, as a crash would."""


def _stop_after_first_epoch(epoch, summary):
    raise Interrupt


def _train_one_rank(rank, init_file, out, resume, log_dir):
    """Rank ``rank`` of a 2-process run of TINY_RUN (the process group made here, as torchrun's env
    would make it); with ``resume`` False it stops after epoch 1. Rank 0's log goes to a file."""
    os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        with open(Path(log_dir) / f"rank{rank}.log", "w") as log:
            try:
                train(TrainRun(out=out, resume=resume, **TINY_RUN), stream=log,
                      on_epoch_end=None if resume else _stop_after_first_epoch)
            except Interrupt:
                pass
    finally:
        dist.destroy_process_group()


def _two_processes(tmp_path, out, resume):
    init_file = tmp_path / f"init-{'resume' if resume else 'start'}"
    mp.spawn(_train_one_rank, args=(str(init_file), str(out), resume, str(tmp_path)), nprocs=2, join=True)
    return (tmp_path / "rank0.log").read_text()


def _assert_finished(out, world_size):
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]
    assert state["args"]["world_size"] == world_size and len(state["rng"]) == world_size
    assert all(math.isfinite(h["loss"]) and h["images"] == 32 for h in state["history"])
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == world_size and len(metrics["history"]) == 2
    return state


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path):
    out = tmp_path / "run"
    _two_processes(tmp_path, out, resume=False)
    started = load_checkpoint(out / "checkpoint.pt")
    assert started["epoch"] == 1 and len(started["rng"]) == 2
    log = io.StringIO()
    train(TrainRun(out=str(out), resume=True, **TINY_RUN), stream=log)
    assert "resuming on 1 process(es) after 2: random streams are reseeded" in log.getvalue()
    state = _assert_finished(out, world_size=1)
    assert state["history"][0] == started["history"][0]  # the first epoch is kept, not redone
    assert any(not torch.equal(state["model"][k], started["model"][k]) for k in started["model"])


def test_a_one_process_checkpoint_resumes_under_two_processes(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(TrainRun(out=str(out), **TINY_RUN), stream=io.StringIO(), on_epoch_end=_stop_after_first_epoch)
    started = load_checkpoint(out / "checkpoint.pt")
    assert started["epoch"] == 1 and len(started["rng"]) == 1
    log = _two_processes(tmp_path, out, resume=True)
    assert log.count("resuming on 2 process(es) after 1: random streams are reseeded") == 1
    assert "epoch 1/2 step" not in log and "epoch 2/2 done" in log
    assert (tmp_path / "rank1.log").read_text() == ""  # only rank 0 logs
    state = _assert_finished(out, world_size=2)
    assert state["history"][0] == started["history"][0]
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
