"""Shared helpers of the command-line tests: a tiny training, and the one-error-line check."""
from stochnet.cli.main import main

# A standard mnist_cnn trained for one epoch on 32 images: a checkpoint in seconds.
TINY_TRAIN = ["train", "--method", "standard", "--model", "mnist_cnn", "--data", "mnist", "--epochs", "1",
              "--batch-size", "16", "--train-subset", "32", "--eval-batch-size", "500", "--device", "cpu",
              "--lr", "0.05"]


def tiny_checkpoint(folder):
    """Train :data:`TINY_TRAIN` into ``folder``; the checkpoint's path as a string."""
    assert main([*TINY_TRAIN, "--out", str(folder)]) == 0
    return str(folder / "checkpoint.pt")


def one_error_line(capsys, argv, match=""):
    """``stochnet argv`` exits with status 2 (argparse's errors included) and one ``stochnet: error:`` line
    holding ``match``, the last line of stderr, with no traceback; returns that line."""
    try:
        status = main(argv)
    except SystemExit as exit_info:  # what argparse's errors raise
        status = exit_info.code
    assert status == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("stochnet:")]
    assert len(errors) == 1 and errors[0] == captured.err.strip().splitlines()[-1], captured.err
    assert errors[0].startswith("stochnet: error: ") and match in errors[0], captured.err
    assert "Traceback" not in captured.err + captured.out
    return errors[0]
