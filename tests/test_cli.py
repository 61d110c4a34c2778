"""The ``stochnet`` command: each subcommand's happy path on tiny data, and every user error
as one ``stochnet: error: ...`` line with exit status 2."""
import json

import pytest
import torch

from stochnet.cli import bench_command
from stochnet.cli.attack_specs import AttackSettings, make_attack, make_transfer_attack
from stochnet.cli.main import main
from stochnet.train import load_checkpoint, model_from_checkpoint, save_checkpoint

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


EVAL_TINY = ["--limit", "8", "--steps", "2", "--eot-samples", "2", "--repeats", "2", "--device", "cpu"]


def test_transfer_attacks_add_rows_to_the_table_and_json(runs, tmp_path, capsys):
    teacher, student = runs
    code = main(["eval", "--checkpoint", str(teacher / "checkpoint.pt"), "--checkpoint", str(student / "checkpoint.pt"),
                 "--attacks", "fgsm,transfer-pgd,transfer-fgsm", "--source-checkpoint", str(student / "checkpoint.pt"),
                 *EVAL_TINY, "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    table = out[out.index("model "):out.index("wrote ")].splitlines()[2:]  # the rows under header and rule
    assert [line.split()[3] for line in table] == ["fgsm", "transfer-pgd", "transfer-fgsm"] * 2
    assert "examples crafted on student (anis2 mnist_cnn)" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["settings"]["source_checkpoint"] == str(student / "checkpoint.pt")
    rows = {(row["label"].split()[0], row["attack"]): row for row in report["rows"]}
    # a deterministic target under a stochastic source's examples is scored over the repeats too
    assert rows["teacher", "fgsm"]["repeats"] == 1 and rows["teacher", "transfer-pgd"]["repeats"] == 2
    assert rows["student", "transfer-fgsm"]["repeats"] == 2
    for (target, attack), row in rows.items():
        transfer = attack.startswith("transfer-")
        assert row["source_checkpoint"] == (str(student / "checkpoint.pt") if transfer else None)
        assert row["source_stochastic"] is (True if transfer else None)
        assert row["eps"] == pytest.approx(0.3) and row["num_samples"] == 8
        assert 0 <= row["adversarial_accuracy"] <= 1 and {"clean_accuracy", "asr", "asr_std"} <= set(row)


def test_transfer_from_a_deterministic_model_onto_itself_is_the_white_box_attack(runs, tmp_path):
    teacher, _ = runs
    checkpoint = str(teacher / "checkpoint.pt")
    assert main(["eval", "--checkpoint", checkpoint, "--attacks", "pgd,transfer-pgd,fgsm,transfer-fgsm",
                 "--source-checkpoint", checkpoint, *EVAL_TINY, "--limit", "32", "--eps", "0.02",
                 "--out", str(tmp_path)]) == 0
    rows = {row["attack"]: row for row in json.loads((tmp_path / "eval.json").read_text())["rows"]}
    for attack in ("pgd", "fgsm"):
        white_box, transfer = rows[attack], rows["transfer-" + attack]
        assert transfer["repeats"] == white_box["repeats"] == 1 and transfer["source_stochastic"] is False
        for key in ("clean_accuracy", "adversarial_accuracy", "asr"):
            assert transfer[key] == white_box[key], (attack, key)
    # a small budget: PGD fools some of the right answers, not all, so the equality says something
    assert 0 < rows["pgd"]["adversarial_accuracy"] < rows["pgd"]["clean_accuracy"]


def test_a_transfer_attack_returns_the_crafting_attacks_examples_on_the_source(runs):
    teacher, _ = runs
    model = model_from_checkpoint(load_checkpoint(teacher / "checkpoint.pt"))
    x, y = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    settings = AttackSettings(steps=3)
    for name in ("pgd", "eot-pgd"):
        torch.manual_seed(1)
        white_box, eps = make_attack(name, model, "mnist", 10, settings, stochastic=False)
        expected = white_box(x, y)
        torch.manual_seed(1)
        transfer, transfer_eps = make_transfer_attack("transfer-" + name, model, "mnist", 10, settings, False)
        assert transfer_eps == eps == pytest.approx(0.3) and transfer.source_attack.model is model
        assert torch.equal(transfer(x, y), expected) and not torch.equal(expected, x)
    with pytest.raises(ValueError, match="not a transfer attack"):
        make_transfer_attack("pgd", model, "mnist", 10, settings)
    with pytest.raises(ValueError, match="is a transfer attack"):
        make_attack("transfer-pgd", model, "mnist", 10, settings)


def test_an_old_checkpoint_with_steps_per_epoch_still_evaluates_and_resumes(runs, tmp_path, capsys):
    teacher, _ = runs
    state = load_checkpoint(teacher / "checkpoint.pt")
    state["args"]["steps_per_epoch"] = 2  # written by stochnet before the argument was dropped
    save_checkpoint(tmp_path / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})
    assert main(["eval", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--attacks", "fgsm", *EVAL_TINY,
                 "--out", str(tmp_path / "eval")]) == 0
    assert main(["train", "--method", "standard", *TINY, "--out", str(tmp_path), "--lr", "0.05", "--resume"]) == 0
    assert "resuming" in capsys.readouterr().err


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
    (["eval", "--checkpoint", "/no/such/checkpoint.pt", "--attacks", "transfer-laser"], "transfer-laser"),
    (["eval", "--checkpoint", "/no/such/checkpoint.pt", "--attacks", "pgd,transfer-pgd"],
     "--attacks transfer-pgd needs --source-checkpoint"),
    (["eval", "--checkpoint", "/no/such/checkpoint.pt", "--source-checkpoint", "/no/such/source.pt"],
     "--source-checkpoint is used by transfer attacks only"),
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


def test_transfer_source_of_another_data_shape_or_missing_is_one_error_line(runs, tmp_path, capsys):
    teacher, student = runs
    state = load_checkpoint(teacher / "checkpoint.pt")
    state["args"]["data_info"].update(in_channels=3, image_size=32)
    save_checkpoint(tmp_path / "cifar.pt", {k: v for k, v in state.items() if k != "format"})
    target = ["eval", "--checkpoint", str(student / "checkpoint.pt"), "--attacks", "transfer-pgd", "--device", "cpu"]
    _one_error_line(capsys, [*target, "--source-checkpoint", str(tmp_path / "cifar.pt")],
                    "takes 3x32x32 images of 10 classes but --checkpoint")
    _one_error_line(capsys, [*target, "--source-checkpoint", str(tmp_path / "none.pt")], "does not exist")


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
