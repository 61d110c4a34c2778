"""The run folder of ``stochnet train``: a folder that holds a run is refused unless --resume or
--overwrite, --overwrite replaces the old run only once the new one starts, and one training at a
time holds a folder (a lock the OS drops however the holder ends, under torchrun taken by rank 0)."""
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from stochnet.cli.main import main
from stochnet.train import TrainRun, load_checkpoint, loop
from stochnet.train.distributed import Ranks
from stochnet.train.run_folder import RunFolderError, claim_run_folder
from cli_runs import one_error_line

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train", "--method", "standard", "--model", "mnist_cnn", "--data", "mnist", "--epochs", "1",
        "--batch-size", "16", "--train-subset", "32", "--eval-batch-size", "500", "--device", "cpu", "--lr", "0.05"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run's folder (checkpoint.pt and metrics.json)."""
    out = tmp_path_factory.mktemp("finished")
    assert main([*TINY, "--out", str(out)]) == 0
    return out


def _copy(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _no_data_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the data was loaded")
    monkeypatch.setattr(loop, "load_data", refuse)


def test_a_folder_holding_a_run_is_refused_before_any_work_unless_resumed(finished, tmp_path, capsys, monkeypatch):
    out = _copy(finished, tmp_path)
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.json")}
    with monkeypatch.context() as patch:
        _no_data_loading(patch)
        line = one_error_line(capsys, [*TINY, "--seed", "1", "--out", str(out)])
    assert "--out" in line and str(out) in line and "--resume" in line and "--overwrite" in line
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json"]  # the lock is gone too

    metrics_only = tmp_path / "metrics_only"
    metrics_only.mkdir()
    shutil.copy(out / "metrics.json", metrics_only)
    with monkeypatch.context() as patch:
        _no_data_loading(patch)
        assert "already holds a run (metrics.json)" in one_error_line(capsys, [*TINY, "--out", str(metrics_only)])

    assert main([*TINY, "--out", str(out), "--resume"]) == 0  # today's behaviour: continues the run
    assert "resuming" in capsys.readouterr().err


def test_overwrite_replaces_the_run_only_once_the_new_one_starts(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.json")}
    # A set-up that fails (a teacher that does not exist) leaves the old run as it was.
    line = one_error_line(capsys, ["train", "--method", "anis2", *TINY[3:], "--teacher", str(tmp_path / "none.pt"),
                                "--out", str(out), "--overwrite"])
    assert "does not exist" in line
    assert {name: (out / name).read_bytes() for name in before} == before
    assert main([*TINY, "--seed", "7", "--out", str(out), "--overwrite"]) == 0
    assert "--overwrite: removed the previous run's checkpoint.pt, metrics.json" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.pt")["args"]["seed"] == 7
    assert (out / "metrics.json").read_bytes() != before["metrics.json"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json"]


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    line = one_error_line(capsys, [*TINY, "--out", str(tmp_path), "--resume", "--overwrite"])
    assert "--resume" in line and "--overwrite" in line
    with pytest.raises(ValueError, match="--resume and --overwrite exclude each other"):
        TrainRun(method="standard", model="mnist_cnn", data="mnist", epochs=1, batch_size=8, out=str(tmp_path),
                 resume=True, overwrite=True)


def _hold_lock(folder):
    """Lock ``folder`` as another training would (an open file description of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return descriptor


@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]], ids=["plain", "resume", "overwrite"])
def test_a_folder_another_training_holds_is_refused_with_any_flag(tmp_path, capsys, monkeypatch, flag):
    out = tmp_path / "run"
    descriptor = _hold_lock(out)
    try:
        with monkeypatch.context() as patch:
            _no_data_loading(patch)
            line = one_error_line(capsys, [*TINY, "--out", str(out), *flag])
        assert "another training" in line and "--out" in line and str(out) in line
    finally:
        os.close(descriptor)
    # Released, the folder is free: a lock file left behind and files of no run are no run.
    (out / "notes.txt").write_text("kept\n")
    assert main([*TINY, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json", "notes.txt"]


TRAIN_AND_WAIT = """
import sys, time
from pathlib import Path
from stochnet.train import TrainRun, train

def wait(epoch, summary):
    Path(sys.argv[2]).write_text("checkpoint written")
    time.sleep(120)

train(TrainRun(method="standard", model="mnist_cnn", data="mnist", epochs=2, batch_size=16, train_subset=32,
               eval_batch_size=500, device="cpu", out=sys.argv[1], options={"lr": 0.05}), on_epoch_end=wait)
"""


def test_a_second_training_is_refused_while_the_first_runs_and_a_killed_one_frees_the_folder(tmp_path, capsys):
    out, flag = tmp_path / "run", tmp_path / "first-epoch-done"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-c", TRAIN_AND_WAIT, str(out), str(flag)], env=environment, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first training did not finish its first epoch"
            time.sleep(0.2)
        before = (out / "checkpoint.pt").read_bytes()
        for flags in ([], ["--resume"], ["--overwrite"]):
            line = one_error_line(capsys, [*TINY, "--epochs", "2", "--out", str(out), *flags])
            assert "is in use: another training" in line and f"pid {first.pid}" in line
        assert (out / "checkpoint.pt").read_bytes() == before
    finally:
        os.kill(first.pid, signal.SIGKILL)  # a crash: the lock file stays, the lock does not
        first.wait()
    assert (out / ".lock").exists()
    assert main([*TINY, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert "resuming" in capsys.readouterr().err and load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    assert not (out / ".lock").exists()


def _claim_on_rank(rank, init_file, folders, results):
    """Rank ``rank`` of 2 claims each of ``folders`` as the training loop does; writes what it saw."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        outcomes = []
        for folder in folders:
            run = TrainRun(method="standard", model="mnist_cnn", data="mnist", epochs=1, batch_size=8, out=folder)
            try:
                with claim_run_folder(run, Ranks(rank=rank, world_size=2)):
                    outcomes.append("claimed")
                    dist.barrier()  # both ranks inside: rank 1 took no lock of its own
            except RunFolderError as error:
                outcomes.append(f"refused: {error}")
        dist.barrier()  # still talking to each other: no rank hung or left early
        Path(results, f"rank{rank}.txt").write_text("\n".join(outcomes))
    finally:
        dist.destroy_process_group()


def test_under_two_processes_rank_0_alone_locks_and_every_rank_gets_its_verdict(tmp_path):
    held, free = tmp_path / "held", tmp_path / "free"
    descriptor = _hold_lock(held)
    try:
        mp.spawn(_claim_on_rank, args=(str(tmp_path / "init"), [str(held), str(free)], str(tmp_path)), nprocs=2,
                 join=True)
    finally:
        os.close(descriptor)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text().splitlines() for r in range(2)]
    assert outcomes[0] == outcomes[1], outcomes
    refused, claimed = outcomes[0]
    assert refused.startswith("refused: ") and "another training" in refused and claimed == "claimed"
    assert list(free.iterdir()) == []  # the lock released and its file removed
