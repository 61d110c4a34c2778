"""The training loop: plain progress lines off a terminal, atomic checkpoints loaded with
weights_only, RNG capture, the (seed, epoch) data order, and exact resume after an interrupt."""
import io
import json
import random

import numpy as np
import pytest
import torch

from stochnet.train import CheckpointError, TrainRun, load_checkpoint, save_checkpoint, train
from stochnet.train.checkpoint import capture_rng_state, restore_rng_state
from stochnet.train.distributed import epoch_order
from stochnet.train.progress import EpochProgress

# ANIS² without a teacher: noise, random PGD starts and the data order all draw random numbers.
TINY_ANIS2 = dict(method="anis2", model="mnist_cnn", data="mnist", epochs=2, batch_size=16, train_subset=48,
                  eval_batch_size=500, seed=3, device="cpu",
                  options={"teacher_init": False, "steps": 1, "eps": 0.1, "step_size": 0.05, "lr": 0.05})


def test_progress_prints_plain_lines_off_a_terminal():
    stream = io.StringIO()
    progress = EpochProgress(epoch=0, epochs=3, steps=4, stream=stream, log_every=0.5)
    for loss, correct in ((2.0, 1), (1.0, 3), (1.0, 2), (0.0, 4)):
        progress.update(loss, correct, 4)
    summary = progress.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(" loss")[0] for line in lines] == ["epoch 1/3 step 2/4", "epoch 1/3 step 4/4"]
    assert "\r" not in stream.getvalue() and all("acc" in line and "img/s" in line for line in lines)
    assert summary["loss"] == pytest.approx(1.0) and summary["accuracy"] == pytest.approx(10 / 16)
    assert summary["images"] == 16 and summary["images_per_s"] > 0


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_a_tqdm_bar_on_a_terminal():
    stream = Terminal()
    progress = EpochProgress(epoch=1, epochs=2, steps=3, stream=stream)
    for _ in range(3):
        progress.update(0.5, 2, 4)
    progress.close()
    text = stream.getvalue()
    assert "\r" in text and "epoch 2/2" in text and "3/3" in text and "img/s" in text
    assert "step 3/3" not in text  # no plain log lines besides the bar


def test_progress_of_other_ranks_is_silent():
    stream = io.StringIO()
    progress = EpochProgress(0, 1, 2, stream=stream, enabled=False)
    progress.update(1.0, 1, 2)
    progress.update(1.0, 1, 2)
    assert progress.close()["images"] == 4 and stream.getvalue() == ""


def _state(epoch):
    """The smallest state load_checkpoint accepts."""
    info = {"num_classes": 10, "in_channels": 1, "image_size": 28, "mean": [0.5], "std": [0.5]}
    args = {"method": "standard", "model": "x", "data": "mnist", "data_dir": None, "epochs": 2, "width": 1.0,
            "options": {"lr": 0.1}, "data_info": info}
    return {"epoch": epoch, "args": args, "model": {"w": torch.arange(3.0)}, "noise": {}, "method": {},
            "rng": [capture_rng_state()], "history": []}


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    state = _state(2)
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0)) and loaded["args"] == state["args"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(1))

    def crash(obj, stream):
        stream.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(2))
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


class Payload:
    """Not a tensor, container or number: weights_only refuses to unpickle it."""


def test_loading_refuses_pickled_code_and_foreign_files(tmp_path):
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "stochnet-checkpoint-v1", "payload": Payload()}, unsafe)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(unsafe)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a stochnet checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip():
    state = capture_rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand(2)
    restore_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_epoch_order_depends_on_seed_and_epoch_and_shards_cover_the_data():
    assert epoch_order(10, seed=1, epoch=0) == epoch_order(10, seed=1, epoch=0)
    assert epoch_order(10, seed=1, epoch=0) != epoch_order(10, seed=1, epoch=1)
    assert epoch_order(10, seed=1, epoch=0) != epoch_order(10, seed=2, epoch=0)
    shards = [epoch_order(11, 5, 3, rank, 3) for rank in range(3)]
    assert [len(shard) for shard in shards] == [4, 4, 4]
    assert set(sum(shards, [])) == set(range(11))


def _weights(out):
    return load_checkpoint(out / "checkpoint.pt")["model"]


def test_resume_after_an_interrupt_gives_the_uninterrupted_weights(tmp_path):
    whole = tmp_path / "whole"
    metrics = train(TrainRun(out=str(whole), **TINY_ANIS2), stream=io.StringIO())

    class Interrupt(Exception):
        pass

    def interrupt(epoch, summary):
        raise Interrupt

    cut = tmp_path / "cut"
    with pytest.raises(Interrupt):
        train(TrainRun(out=str(cut), **TINY_ANIS2), stream=io.StringIO(), on_epoch_end=interrupt)
    assert load_checkpoint(cut / "checkpoint.pt")["epoch"] == 1
    log = io.StringIO()
    resumed = train(TrainRun(out=str(cut), resume=True, **TINY_ANIS2), stream=log)
    assert "resuming" in log.getvalue() and "epoch 1/2 step" not in log.getvalue()

    expected, got = _weights(whole), _weights(cut)
    assert expected.keys() == got.keys() and any(key.endswith("running_sigma") for key in got)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert [(h["loss"], h["accuracy"]) for h in resumed["history"]] == \
        [(h["loss"], h["accuracy"]) for h in metrics["history"]]
    stored = json.loads((cut / "metrics.json").read_text())
    assert stored["test_accuracy"] == resumed["test_accuracy"] and len(stored["history"]) == 2


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    run = dict(TINY_ANIS2, epochs=1)
    train(TrainRun(out=str(tmp_path), **run), stream=io.StringIO())
    with pytest.raises(CheckpointError, match="batch_size"):  # (more epochs extend the run: not another one)
        train(TrainRun(out=str(tmp_path), resume=True, **dict(run, batch_size=run["batch_size"] * 2)),
              stream=io.StringIO())


def test_training_improves_over_the_start(tmp_path):
    run = dict(method="standard", model="mnist_cnn", data="mnist", epochs=2, batch_size=32, train_subset=256,
               device="cpu", options={"lr": 0.05})
    metrics = train(TrainRun(out=str(tmp_path), **run), stream=io.StringIO())
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    assert metrics["test_accuracy"] > 0.3  # ten classes: chance is 0.1
