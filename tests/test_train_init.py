"""``stochnet train --init CKPT``: every method that trains the classifier starts from a checkpoint's
weights (a noisy method keeps its own noise parameters at their initial values), or refuses in one line
(the denoiser refuses --init: tests/test_denoiser.py); ``--teacher`` is refused by a
method without a teacher instead of being silently ignored."""
import pytest
import torch

from stochnet.defenses import METHODS
from stochnet.train import CheckpointError, TrainRun, load_checkpoint, save_checkpoint, train
from cli_runs import one_error_line

TINY = dict(model="mnist_cnn", data="mnist", epochs=1, batch_size=16, train_subset=32, eval_batch_size=500,
            device="cpu")
TRAIN = ["train", "--model", "mnist_cnn", "--data", "mnist", "--epochs", "1", "--batch-size", "16",
         "--train-subset", "32", "--eval-batch-size", "500", "--device", "cpu"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 1-epoch standard checkpoint: weights that differ from any method's fresh initialization."""
    out = tmp_path_factory.mktemp("source")
    train(TrainRun(method="standard", out=str(out), options={"lr": 0.05}, **TINY))
    return str(out / "checkpoint.pt")


class _Stop(Exception):
    pass


def _weights_at_first_step(monkeypatch, method, run):
    """The method model's state dict when the first train_step begins (the run stops there)."""
    seen = {}

    def record(self, model, x, y):
        seen.update({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        raise _Stop

    monkeypatch.setattr(METHODS[method], "train_step", record)
    with pytest.raises(_Stop):
        train(run)
    return seen


def _cheap(method):
    fields = METHODS[method].Options.__dataclass_fields__
    return {"steps": 1} if "steps" in fields else {}


@pytest.mark.parametrize("method", sorted(name for name, cls in METHODS.items() if not cls.needs_classifier))
def test_init_starts_every_method_from_the_checkpoint_weights(method, source, tmp_path, monkeypatch):
    expected = load_checkpoint(source)["model"]
    run = TrainRun(method=method, out=str(tmp_path / "run"), init=source, seed=7, options=_cheap(method), **TINY)
    start = _weights_at_first_step(monkeypatch, method, run)
    assert set(expected) <= set(start)
    for key, value in expected.items():
        assert torch.equal(start[key], value), key
    if method in ("pni", "l2p", "anis2"):
        assert set(start) - set(expected)  # its own noise parameters / buffers, at their initial values
    if method == "pni":
        alphas = [v for k, v in start.items() if k.endswith("alpha")]
        assert alphas and all(torch.all(a == METHODS["pni"].Options().alpha_init) for a in alphas)


def test_without_init_a_method_starts_elsewhere(source, tmp_path, monkeypatch):
    expected = load_checkpoint(source)["model"]
    run = TrainRun(method="adv", out=str(tmp_path / "run"), seed=7, options={"steps": 1}, **TINY)
    start = _weights_at_first_step(monkeypatch, "adv", run)
    assert any(not torch.equal(start[k], v) for k, v in expected.items())


@pytest.mark.parametrize("method, extra", [("adv", []), ("pni", []), ("l2p", []), ("trades", []),
                                           ("standard", []), ("anis2", ["--no-teacher-init"])])
def test_teacher_on_a_method_without_one_isone_error_line(method, extra, source, tmp_path, capsys):
    out = tmp_path / "run"
    one_error_line(capsys, [*TRAIN, "--method", method, *extra, "--teacher", source, "--out", str(out)],
                    "--init CKPT")
    assert not (out / "checkpoint.pt").exists()


def test_init_and_teacher_together_are_refused(source, tmp_path, capsys):
    one_error_line(capsys, [*TRAIN, "--method", "anis2", "--teacher", source, "--init", source,
                             "--out", str(tmp_path / "run")], "pass one")


def test_init_from_a_noisy_checkpoint_isone_error_line(source, tmp_path, capsys):
    state = load_checkpoint(source)
    state["args"]["method"] = "pni"
    state["model"]["conv1.alpha"] = torch.tensor(0.25)
    noisy = tmp_path / "noisy.pt"
    save_checkpoint(noisy, state)
    one_error_line(capsys, [*TRAIN, "--method", "adv", "--init", str(noisy), "--out", str(tmp_path / "run")],
                    "does not fit the plain mnist_cnn")


def test_init_of_another_architecture_is_refused(source, tmp_path):
    run = TrainRun(method="standard", out=str(tmp_path / "run"), init=source, **{**TINY, "width": 0.5})
    with pytest.raises(CheckpointError, match="--init .* does not match this run's model"):
        train(run)


def test_resume_keeps_the_stored_init_and_refuses_another(source, tmp_path):
    out = tmp_path / "run"
    run = dict(method="standard", out=str(out), init=source, options={"lr": 0.05}, **{**TINY, "epochs": 2})

    def interrupt(epoch, summary):
        raise _Stop

    with pytest.raises(_Stop):
        train(TrainRun(**run), on_epoch_end=interrupt)
    assert load_checkpoint(out / "checkpoint.pt")["args"]["init"] == source
    with pytest.raises(CheckpointError, match="init"):
        train(TrainRun(**{**run, "init": str(tmp_path / "other.pt")}, resume=True))
    # Resuming without --init continues the run (the checkpoint's weights win) and keeps the field.
    train(TrainRun(**{**run, "init": None}, resume=True))
    assert load_checkpoint(out / "checkpoint.pt")["args"]["init"] == source


def test_resume_of_a_checkpoint_without_the_init_field(source, tmp_path):
    out = tmp_path / "run"
    run = dict(method="standard", out=str(out), options={"lr": 0.05}, **{**TINY, "epochs": 2})

    def interrupt(epoch, summary):
        raise _Stop

    with pytest.raises(_Stop):
        train(TrainRun(**run), on_epoch_end=interrupt)
    state = load_checkpoint(out / "checkpoint.pt")
    del state["args"]["init"]  # a checkpoint written before --init existed
    save_checkpoint(out / "checkpoint.pt", state)
    assert train(TrainRun(**run, resume=True))["epochs"] == 2
