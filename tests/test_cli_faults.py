"""Faults around the ``stochnet`` command: output folders that cannot be written, a disk that fills
up, crafted or foreign checkpoints, non-finite weights. Each is one ``stochnet: error: ...`` line
with exit status 2, found before the compute is spent, and a written checkpoint stays intact."""
import errno

import pytest
import torch

from stochnet.cli import output
from stochnet.cli.main import main
from stochnet.train import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint

TINY = ["--method", "standard", "--model", "mnist_cnn", "--data", "mnist", "--batch-size", "16",
        "--train-subset", "32", "--eval-batch-size", "500", "--device", "cpu", "--lr", "0.05"]
CERTIFY = ["--sigma", "0.25", "--n0", "2", "--n", "4", "--limit", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def _one_error_line(capsys, argv, match):
    """The command fails with exit status 2 and one error line, the last (after any progress lines)."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("stochnet:")]
    assert errors == [captured.err.strip().splitlines()[-1]] and errors[0].startswith("stochnet: error: "), captured.err
    assert match in errors[0], errors[0]
    assert "Traceback" not in captured.err + captured.out


def _unwritable(tmp_path):
    """--out values that cannot be written and the error each gives."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    return [(a_file, "is a file, not a folder"), (a_file / "run", "cannot be written: Not a directory")]


def test_train_into_an_unwritable_out_fails_before_any_work(tmp_path, capsys):
    # the teacher does not exist either: the --out check comes first, before anything is loaded
    for out, match in _unwritable(tmp_path):
        _one_error_line(capsys, ["train", *TINY, "--epochs", "1", "--out", str(out),
                                 "--teacher", str(tmp_path / "none.pt")], match)


def test_certify_into_an_unwritable_out_fails_before_any_work(tmp_path, capsys):
    for out, match in _unwritable(tmp_path):
        _one_error_line(capsys, ["certify", "--checkpoint", str(tmp_path / "none.pt"), *CERTIFY, "--out", str(out)],
                        match)


def test_a_read_only_out_is_one_error_line(tmp_path, capsys, monkeypatch):
    def refuse(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(output.tempfile, "TemporaryFile", refuse)
    _one_error_line(capsys, ["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "run")],
                    "cannot be written: Permission denied")


def test_check_writable_creates_the_folder_and_leaves_nothing_in_it(tmp_path):
    folder = tmp_path / "a" / "b"
    output.check_writable(folder, "--out")
    assert folder.is_dir() and list(folder.iterdir()) == []
    with pytest.raises(ValueError, match="--out '.*a_file' is a file"):
        output.check_writable(_unwritable(tmp_path)[0][0], "--out")


def test_a_full_disk_is_one_error_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    real_save, saves = torch.save, []

    def fill_up(obj, stream):
        saves.append(obj["epoch"])
        if len(saves) > 1:
            stream.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, stream)

    monkeypatch.setattr(torch, "save", fill_up)
    _one_error_line(capsys, ["train", *TINY, "--epochs", "2", "--out", str(tmp_path)], "No space left on device")
    monkeypatch.undo()
    assert saves == [1, 2] and load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def _crafted(state, edit):
    state = {key: value for key, value in state.items() if key != "format"}
    edit(state)
    return state


CRAFTED = {
    "no_args": (lambda s: s.pop("args"), "args is missing"),
    "no_data_info": (lambda s: s["args"].pop("data_info"), "args.data_info is missing"),
    "negative_image_size": (lambda s: s["args"]["data_info"].update(image_size=-3),
                            "args.data_info.image_size must be an integer >= 1, got -3"),
    "args_a_list": (lambda s: s.update(args=[1, 2]), "args must be a dict, got list"),
    "weights_not_tensors": (lambda s: s["model"].update({"fc.weight": [0.0]}), "model must be a dict of tensors"),
    "mean_not_numbers": (lambda s: s["args"]["data_info"].update(mean="0.5"),
                         "args.data_info.mean must be a list of numbers, got '0.5'"),
    "noise_not_numbers": (lambda s: s.update(noise={"act": {"gamma": "high"}}), "noise must be a dict of"),
}


@pytest.mark.parametrize("edit,match", CRAFTED.values(), ids=CRAFTED.keys())
def test_a_crafted_checkpoint_is_one_error_line(checkpoint, tmp_path, capsys, edit, match):
    path = tmp_path / "crafted.pt"
    save_checkpoint(path, _crafted(load_checkpoint(checkpoint), edit))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    _one_error_line(capsys, ["certify", "--checkpoint", str(path), *CERTIFY, "--out", str(tmp_path / "out")], match)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_rejected_for_evaluation(checkpoint, tmp_path, capsys, value):
    state = load_checkpoint(checkpoint)
    state["model"]["fc.weight"][0, 0] = value
    path = tmp_path / "diverged.pt"
    save_checkpoint(path, _crafted(state, lambda s: None))
    with pytest.raises(CheckpointError, match="weights are not finite: 1 tensor.* 'fc.weight'"):
        model_from_checkpoint(load_checkpoint(path))
    _one_error_line(capsys, ["eval", "--checkpoint", str(path), "--attacks", "fgsm", "--limit", "4", "--device", "cpu",
                             "--out", str(tmp_path / "eval")], "weights are not finite")
