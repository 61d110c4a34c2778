"""2-process ``stochnet eval`` on CPU (gloo), launched by torchrun and by ``mp.spawn``: each rank scores its
shard of the images, the counts are summed, and rank 0 alone prints one table and writes eval.json."""
import json
import os
import subprocess
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stochnet.cli.main import main
from stochnet.eval.distributed import shard_indices

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "mnist_cnn", "--data", "mnist", "--epochs", "1", "--batch-size", "16", "--eval-batch-size", "1000",
        "--device", "cpu"]
# Batches of one image: each image's passes are the same computation however the images are sharded.
EVAL = ["--attacks", "fgsm,bim", "--eps", "0.05", "--steps", "2", "--repeats", "2", "--batch-size", "1",
        "--device", "cpu"]
SCORES = ("clean_accuracy", "adversarial_accuracy", "asr", "clean_accuracy_std", "adversarial_accuracy_std",
          "asr_std", "per_repeat", "num_samples", "repeats", "stochastic")


@contextmanager
def _one_thread():
    """One intra-op thread, as the torchrun processes have (OMP_NUM_THREADS=1): faster on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A deterministic teacher (128 training images: it gets most of the 9 test images right) and a
    stochastic ANIS² student trained from it."""
    root = tmp_path_factory.mktemp("runs")
    teacher, student = root / "teacher" / "checkpoint.pt", root / "student" / "checkpoint.pt"
    with _one_thread():
        assert main(["train", "--method", "standard", *TINY, "--train-subset", "128", "--out", str(teacher.parent),
                     "--lr", "0.05"]) == 0
        assert main(["train", "--method", "anis2", *TINY, "--train-subset", "32", "--out", str(student.parent),
                     "--teacher", str(teacher), "--steps", "1", "--eps", "0.1", "--step-size", "0.1",
                     "--gamma-max", "0.5"]) == 0
    return teacher, student


def _torchrun_eval(argv, out):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "stochnet",
               "eval", *argv, "--out", str(out)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads((out / "eval.json").read_text())


def _one_process_eval(argv, out, capsys):
    with _one_thread():
        assert main(["eval", *argv, "--out", str(out)]) == 0
    return capsys.readouterr().out, json.loads((out / "eval.json").read_text())


def test_shards_are_contiguous_disjoint_and_cover_every_image():
    assert [list(shard_indices(5, r, 2)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [list(shard_indices(1, r, 2)) for r in range(2)] == [[0], []]
    assert [list(shard_indices(9, r, 1)) for r in range(1)] == [list(range(9))]
    for n, world in ((9, 2), (7, 3), (2, 4)):
        shards = [list(shard_indices(n, r, world)) for r in range(world)]
        assert sum(shards, []) == list(range(n))


def test_two_processes_gather_the_one_process_table(runs, tmp_path, capsys):
    teacher, student = runs
    argv = ["--checkpoint", str(teacher), "--checkpoint", str(student), *EVAL, "--limit", "9"]
    out, two = _torchrun_eval(argv, tmp_path / "two")
    _, one = _one_process_eval(argv, tmp_path / "one", capsys)
    # rank 0 alone prints: one table, one line per row, one 'wrote'
    assert out.count("clean %") == 1 and out.count("wrote ") == 1 and out.count("done in") == 4, out
    assert two["settings"]["processes"] == 2 and one["settings"]["processes"] == 1
    assert [(r["label"], r["attack"]) for r in two["rows"]] == [(r["label"], r["attack"]) for r in one["rows"]]
    for row_two, row_one in zip(two["rows"], one["rows"]):
        assert row_two["num_samples"] == row_one["num_samples"] == 9
        if not row_one["stochastic"]:  # the teacher: the same per-image results, so the same counts
            assert {k: row_two[k] for k in SCORES} == {k: row_one[k] for k in SCORES}, row_two["attack"]
        else:  # the student: the ranks draw their own noise, but the repeats agree
            assert row_two["stochastic"] and row_two["repeats"] == row_one["repeats"] == 2
            assert len(row_two["per_repeat"]["clean_accuracy"]) == 2
    teacher_rows = [r for r in one["rows"] if not r["stochastic"]]
    assert len(teacher_rows) == 2 and all(r["repeats"] == 1 for r in teacher_rows)
    # a budget that fools some right answers but not all, so the equality says something
    assert any(0 < r["adversarial_accuracy"] < r["clean_accuracy"] for r in teacher_rows)


def _eval_one_rank(rank, init_file, argv, log_dir):
    """Rank ``rank`` of a 2-process ``stochnet eval`` (the process group made here, as torchrun's
    environment would make it); what the rank prints goes to ``log_dir/rank<rank>.log``."""
    os.environ.update({"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        with open(Path(log_dir) / f"rank{rank}.log", "w") as log, redirect_stdout(log):
            assert main(["eval", *argv]) == 0
    finally:
        dist.destroy_process_group()


def test_a_rank_without_images_takes_part(runs, tmp_path, capsys):
    teacher, student = runs
    # one image on 2 ranks: rank 1's shard is empty, yet it joins every collective
    argv = ["--checkpoint", str(teacher), "--checkpoint", str(student), *EVAL, "--attacks", "fgsm", "--limit", "1"]
    mp.spawn(_eval_one_rank, args=(str(tmp_path / "init"), [*argv, "--out", str(tmp_path / "two")], str(tmp_path)),
             nprocs=2, join=True)
    assert (tmp_path / "rank1.log").read_text() == ""  # only rank 0 prints
    assert (tmp_path / "rank0.log").read_text().count("wrote ") == 1
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    _, one = _one_process_eval(argv, tmp_path / "one", capsys)
    teacher_two, student_two = two["rows"]
    assert teacher_two["num_samples"] == student_two["num_samples"] == 1 and two["settings"]["processes"] == 2
    assert {k: teacher_two[k] for k in SCORES} == {k: one["rows"][0][k] for k in SCORES}
    assert student_two["stochastic"] and student_two["repeats"] == 2
