"""``stochnet train`` as a person expects: --model and --data default to the built-in mnist_cnn /
mnist, and --resume may change --epochs (to at least the epochs done), with one warning line when
the method lays a schedule out on the total epochs."""
import shutil

import pytest

from stochnet.cli.main import main
from stochnet.train import load_checkpoint
from cli_runs import one_error_line

TINY = ["--batch-size", "16", "--train-subset", "32", "--eval-batch-size", "500", "--device", "cpu"]
# --model and --data given, so the resume tests test the resume alone.
EXPLICIT = ["--model", "mnist_cnn", "--data", "mnist"]
ANIS2 = ["train", "--method", "anis2", *EXPLICIT, *TINY, "--no-teacher-init", "--steps", "1", "--eps", "0.1",
         "--step-size", "0.05", "--lr", "0.05"]


@pytest.fixture(scope="module")
def anis2_run(tmp_path_factory):
    """A 2-epoch anis2 run (its folder), copied by each test that resumes it."""
    out = tmp_path_factory.mktemp("anis2") / "run"
    assert main([*ANIS2, "--epochs", "2", "--out", str(out)]) == 0
    return out


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_model_and_data_default_to_mnist_cnn_on_mnist(tmp_path, capsys):
    assert main(["train", "--method", "standard", *TINY, "--epochs", "1", "--out", str(tmp_path)]) == 0
    args = load_checkpoint(tmp_path / "checkpoint.pt")["args"]
    assert (args["model"], args["data"], args["epochs"]) == ("mnist_cnn", "mnist", 1)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "default: mnist_cnn" in capsys.readouterr().out


def test_resume_extends_the_epochs_and_lays_the_schedules_out_again(anis2_run, tmp_path, capsys):
    out = _copy(anis2_run, tmp_path)
    capsys.readouterr()
    assert main([*ANIS2, "--epochs", "4", "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "--epochs 2 -> 4" in line]
    assert len(warnings) == 1, err
    assert "lr milestones and gamma ramp of --method anis2" in warnings[0] and "epochs 3-4" in warnings[0]
    assert "now laid out for 4 (lr x0.1 from epoch(s) 3, 4; gamma 0 + 0.0625" in warnings[0]
    assert "resuming" in err and "after epoch 2/4" in err
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["epoch"] == 4 and checkpoint["args"]["epochs"] == 4
    assert [h["epoch"] for h in checkpoint["history"]] == [1, 2, 3, 4]
    # The method is rebuilt for 4 epochs: gamma ends at gamma_max (the 2-epoch ramp would be at 0.5).
    assert checkpoint["method"]["gamma"] == pytest.approx(0.25)
    lr = checkpoint["method"]["optimizers"]["weights"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.05 * 0.1 ** 2)


def test_resume_with_more_epochs_and_no_epoch_dependent_schedule_warns_nothing(tmp_path, capsys):
    standard = ["train", "--method", "standard", *EXPLICIT, *TINY, "--lr-milestones", "5", "--out", str(tmp_path)]
    assert main([*standard, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*standard, "--epochs", "2", "--resume"]) == 0
    assert "--epochs 1 -> 2" not in capsys.readouterr().err
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2


def test_resume_with_fewer_epochs_than_done_is_oneone_error_line(anis2_run, tmp_path, capsys):
    out = _copy(anis2_run, tmp_path)
    before = (out / "checkpoint.pt").read_bytes()
    line = one_error_line(capsys, [*ANIS2, "--epochs", "1", "--out", str(out), "--resume"])
    assert "--epochs 1 is fewer than the 2 epoch(s)" in line and "another run" not in line
    assert (out / "checkpoint.pt").read_bytes() == before


def test_resume_still_refuses_other_changes(anis2_run, tmp_path, capsys):
    out = _copy(anis2_run, tmp_path)
    line = one_error_line(capsys, [*ANIS2, "--epochs", "4", "--out", str(out), "--resume", "--seed", "7"])
    assert "another run" in line
    changed = line.split("changed:", 1)[1]
    assert "seed" in changed and "epochs" not in changed
