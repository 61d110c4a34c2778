"""The ``stochnet`` command's errors: the user's are one ``stochnet: error: ...`` line (exit status 2),
a bug inside the library keeps its traceback."""
import subprocess
import sys

import pytest

import stochnet.eval.robust
import stochnet.smoothing
import stochnet.train
from stochnet.cli.errors import UsageError, user_values
from stochnet.cli.main import main
from cli_runs import TINY_TRAIN, one_error_line, tiny_checkpoint

TRAIN = TINY_TRAIN


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("run"))


def _bug(*args, **kwargs):
    raise ValueError("an internal bug")


def test_user_values_turns_a_value_error_into_a_usage_error():
    with pytest.raises(UsageError, match="eps must be") as info:
        with user_values():
            raise ValueError("eps must be >= 0")
    assert isinstance(info.value.__cause__, ValueError) and isinstance(info.value, ValueError)
    with pytest.raises(TypeError):
        with user_values():
            raise TypeError("not a value error")


def test_a_bug_before_any_work_propagates(monkeypatch, tmp_path):
    monkeypatch.setattr(stochnet.train, "load_checkpoint", _bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["eval", "--checkpoint", str(tmp_path / "any.pt"), "--out", str(tmp_path / "eval")])


def test_a_bug_while_attacking_propagates(checkpoint, monkeypatch, tmp_path):
    monkeypatch.setattr(stochnet.eval.robust, "robust_counts", _bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["eval", "--checkpoint", checkpoint, "--attacks", "fgsm", "--limit", "4", "--device", "cpu",
              "--out", str(tmp_path / "eval")])


def test_a_bug_while_certifying_propagates(checkpoint, monkeypatch, tmp_path):
    monkeypatch.setattr(stochnet.smoothing.Smooth, "certify", _bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["certify", "--checkpoint", checkpoint, "--sigma", "0.25", "--n0", "2", "--n", "4", "--limit", "1",
              "--device", "cpu", "--out", str(tmp_path / "certify")])


@pytest.mark.parametrize("argv, match", [
    (["eval", "--attacks", "fgsm", "--eps", "-1"], "eps must be >= 0, got -1.0"),  # the attack checks it
    (["eval", "--attacks", "pgd", "--alpha", "nan"], "alpha must be finite"),
    (["eval", "--attacks", "fgsm", "--device", "tpu"], "--device must be cpu or cuda"),
    (["eval", "--attacks", "fgsm", "--steps", "0"], "--steps must be >= 1"),
    (["certify", "--sigma", "inf", "--n0", "2", "--n", "4"], "sigma must be a finite number"),
    (["certify", "--sigma", "0.25", "--radii", "a,b"], "--radii must be comma-separated numbers"),
])
def test_user_values_the_library_rejects_stay_one_line(checkpoint, tmp_path, capsys, argv, match):
    command, *rest = argv
    device = [] if "--device" in rest else ["--device", "cpu"]
    one_error_line(capsys, [command, "--checkpoint", checkpoint, *rest, *device, "--limit", "2",
                             "--out", str(tmp_path / "out")], match)


def test_the_command_shows_a_bugs_traceback(tmp_path):
    script = ("import sys, stochnet.train\n"
              "def bug(*args, **kwargs):\n    raise ValueError('an internal bug')\n"
              "stochnet.train.load_checkpoint = bug\n"
              "from stochnet.cli import main\n"
              f"sys.exit(main(['eval', '--checkpoint', 'any.pt', '--out', {str(tmp_path / 'eval')!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: an internal bug" in done.stderr
    assert "stochnet: error" not in done.stderr


def test_a_bug_while_training_propagates(monkeypatch, tmp_path):
    import stochnet.defenses.base
    monkeypatch.setattr(stochnet.defenses.base.Method, "train_step", _bug)
    with pytest.raises(ValueError, match="an internal bug") as info:
        main([*TRAIN, "--out", str(tmp_path / "run")])
    assert not isinstance(info.value, stochnet.train.SetupError)


@pytest.mark.parametrize("argv, match", [
    (["--lr", "-1"], "lr"),                       # the method's options
    (["--width", "0"], "width must be > 0"),      # TrainRun
    (["--device", "tpu"], "tpu"),                 # the device choice in the set-up
])
def test_training_values_the_library_rejects_stay_one_line(tmp_path, capsys, argv, match):
    one_error_line(capsys, [*TRAIN, *argv, "--out", str(tmp_path / "run")], match)
