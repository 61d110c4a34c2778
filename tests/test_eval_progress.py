"""``stochnet eval`` as a person expects it: a progress line per attack on stderr, and ``--help``
listing every attack with its default budget; the library itself stays silent."""
import re

import pytest
import torch

from stochnet.attacks.registry import ATTACKS
from stochnet.cli.main import main
from stochnet.eval.robust import robust_counts
from cli_runs import tiny_checkpoint

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("run"))


def test_help_lists_every_attack_with_its_budget(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    listed = dict(re.findall(r"^  (\S+):\s+(\S.*)$", text, flags=re.M))
    for name in ATTACKS.names():
        assert name in listed, text
        assert re.search(r"L-inf|L2", listed[name]), listed[name]
    assert "8/255" in listed["pgd"] and "random start" in listed["pgd"]
    assert "EOT 20" in listed["autoattack-rand"] and "500 queries" in listed["boundary"]


def test_eval_writes_progress_lines_to_stderr(checkpoint, tmp_path, capsys):
    capsys.readouterr()
    argv = ["eval", "--checkpoint", checkpoint, "--limit", "4", "--attacks", "fgsm,pgd", "--steps", "2",
            "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    for name in ("fgsm", "pgd"):
        lines = [line for line in captured.err.splitlines() if f" {name}: " in line]
        assert lines, captured.err
        assert all("img/s" in line and "ETA" in line for line in lines), lines
        assert "4/4 images" in lines[-1], lines  # deterministic model: one repeat of 4 images
    assert "img/s" not in captured.out  # the table and "wrote ..." stay alone on stdout


def test_robust_counts_without_a_callback_prints_nothing(capsys):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    loader = [(torch.rand(2, 4), torch.tensor([0, 1])), (torch.rand(2, 4), torch.tensor([2, 0]))]
    counts = robust_counts(model, lambda x, y: x, loader, repeats=2)
    assert [c["total"] for c in counts] == [4, 4]
    assert capsys.readouterr() == ("", "")
    seen = []
    robust_counts(model, lambda x, y: x, loader, repeats=2, progress=seen.append)
    assert seen == [2, 2, 2, 2]
