"""The ``stochnet`` command: each subcommand's happy path on tiny data, and every user error
as one ``stochnet: error: ...`` line with exit status 2."""
import json

import pytest
import torch

from stochnet.cli import bench_command
from stochnet.cli.main import main
from stochnet.train import load_checkpoint, save_checkpoint

TINY = ["--model", "mnist_cnn", "--data", "mnist", "--epochs", "1", "--batch-size", "16", "--train-subset", "32",
        "--eval-batch-size", "500", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A teacher and an ANIS² student trained from it, through the command line."""
    root = tmp_path_factory.mktemp("runs")
    teacher, student = root / "teacher", root / "student"
    assert main(["train", "--method", "standard", *TINY, "--out", str(teacher), "--lr", "0.05"]) == 0
    assert main(["train", "--method", "anis2", *TINY, "--out", str(student), "--teacher",
                 str(teacher / "checkpoint.pt"), "--steps", "1", "--eps", "0.1", "--step-size", "0.1",
                 "--gamma-max", "0.5"]) == 0
    return teacher, student


def test_train_writes_a_checkpoint_and_metrics(runs):
    teacher, student = runs
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["method"] == "anis2" and 0 <= metrics["test_accuracy"] <= 1 and len(metrics["history"]) == 1
    state = load_checkpoint(student / "checkpoint.pt")
    assert state["epoch"] == 1 and state["args"]["options"]["gamma_max"] == 0.5
    assert state["args"]["options"]["eps"] == pytest.approx(0.1)  # parsed values, not strings
    assert all(v["gamma"] == 0.5 for v in state["noise"].values()) and state["noise"]


def test_eval_prints_the_comparison_table_and_writes_json(runs, tmp_path, capsys):
    teacher, student = runs
    code = main(["eval", "--checkpoint", str(teacher / "checkpoint.pt"), "--checkpoint",
                 str(student / "checkpoint.pt"), "--attacks", "fgsm,pgd,eot-pgd", "--limit", "8", "--steps", "2",
                 "--eot-samples", "2", "--repeats", "2", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 0
    table = capsys.readouterr().out
    assert "clean %" in table and "robust %" in table and "ASR %" in table
    report = json.loads((tmp_path / "eval.json").read_text())
    rows = [(row["label"].split()[0], row["attack"], row["repeats"]) for row in report["rows"]]
    assert rows == [("teacher", "fgsm", 1), ("teacher", "pgd", 1), ("teacher", "eot-pgd", 1),
                    ("student", "fgsm", 2), ("student", "pgd", 2), ("student", "eot-pgd", 2)]
    assert all(row["eps"] == pytest.approx(0.3) and row["num_samples"] == 8 for row in report["rows"])
    assert "±" in table  # the stochastic student's mean ± std


def test_certify_reports_certified_accuracy_per_radius(runs, tmp_path, capsys):
    teacher, _ = runs
    code = main(["certify", "--checkpoint", str(teacher / "checkpoint.pt"), "--sigma", "0.25", "--n0", "8",
                 "--n", "32", "--alpha", "0.1", "--limit", "4", "--radii", "0,0.5", "--out", str(tmp_path),
                 "--device", "cpu"])
    assert code == 0
    report = json.loads((tmp_path / "certify.json").read_text())
    accuracies = [row["certified_accuracy"] for row in report["certified_accuracy"]]
    assert [row["radius"] for row in report["certified_accuracy"]] == [0.0, 0.5]
    assert 1 >= accuracies[0] >= accuracies[1] >= 0 and len(report["samples"]) == 4
    assert "certified acc %" in capsys.readouterr().out


def test_bench_runs_python_m_bench_from_the_checkout(monkeypatch):
    calls = []
    monkeypatch.setattr(bench_command.subprocess, "call", lambda argv, env: calls.append((argv, env)) or 0)
    assert main(["bench", "--op", "train_step", "--quick"]) == 0
    (argv, env), = calls
    assert argv[1:] == ["-m", "bench", "--op", "train_step", "--quick"]
    assert str(bench_command.checkout_root()) in env["PYTHONPATH"].split(":")


def _one_error_line(capsys, argv, match):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stochnet: error: "), captured.err
    assert match in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_bench_outside_a_checkout_is_one_error_line(monkeypatch, capsys):
    monkeypatch.setattr(bench_command, "checkout_root", lambda: None)
    _one_error_line(capsys, ["bench", "--quick"], "source checkout")


@pytest.mark.parametrize("argv, match", [
    (["train", "--method", "nope", *TINY, "--out", "x"], "invalid choice: 'nope'"),
    (["train", "--method", "standard", *TINY, "--model", "resnet1000", "--out", "x"], "resnet1000"),
    (["train", "--method", "standard", *TINY, "--data", "imagenet", "--out", "x"], "imagenet"),
    (["train", "--method", "standard", *TINY, "--lr", "fast", "--out", "x"], "lr"),
    (["train", "--method", "standard", *TINY, "--gamma-max", "1", "--out", "x"], "--gamma-max"),
    (["eval", "--checkpoint", "/no/such/checkpoint.pt"], "does not exist"),
    (["eval", "--checkpoint", "/no/such/checkpoint.pt", "--attacks", "fgsm,laser"], "laser"),
    (["certify", "--checkpoint", "/no/such/checkpoint.pt", "--sigma", "0.25"], "does not exist"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_are_one_line(capsys, argv, match):
    _one_error_line(capsys, argv, match)


def test_missing_data_folder_is_one_error_line(tmp_path, capsys):
    argv = ["train", "--method", "standard", "--model", "resnet20", "--data", "cifar10", "--data-dir",
            str(tmp_path / "nothing"), "--epochs", "1", "--out", str(tmp_path / "run")]
    _one_error_line(capsys, argv, "nothing")


def test_checkpoint_that_does_not_fit_its_model_is_one_error_line(runs, tmp_path, capsys):
    teacher, _ = runs
    state = load_checkpoint(teacher / "checkpoint.pt")
    state["args"]["model"] = "basicnet"
    save_checkpoint(tmp_path / "wrong.pt", {k: v for k, v in state.items() if k != "format"})
    _one_error_line(capsys, ["eval", "--checkpoint", str(tmp_path / "wrong.pt")], "do not fit")


def test_teacher_of_another_architecture_is_one_error_line(runs, tmp_path, capsys):
    teacher, _ = runs
    state = load_checkpoint(teacher / "checkpoint.pt")
    state["args"]["model"] = "basicnet"
    save_checkpoint(tmp_path / "teacher.pt", {k: v for k, v in state.items() if k != "format"})
    argv = ["train", "--method", "anis2", *TINY, "--out", str(tmp_path / "run"), "--teacher",
            str(tmp_path / "teacher.pt")]
    _one_error_line(capsys, argv, "does not match")


def test_resume_without_a_checkpoint_starts_afresh_and_model_weights_are_saved(tmp_path, capsys):
    assert main(["train", "--method", "standard", *TINY, "--out", str(tmp_path), "--resume"]) == 0
    assert "starting afresh" in capsys.readouterr().err
    assert isinstance(load_checkpoint(tmp_path / "checkpoint.pt")["model"]["fc.weight"], torch.Tensor)
