"""Smoke test of ``python -m bench --op train_step --quick``: teacher, fused student and eager
student train on the same batch, the report holds their throughput and ratios."""
import json
import math

import pytest
import torch

from bench import train_step
from bench.__main__ import main


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "train_step.json"
    report, _ = main(["--op", "train_step", "--device", "cpu", "--quick", "--repeats", "1", "--warmup", "0",
                      "--json", str(path)])
    return report, json.loads(path.read_text())


def test_every_model_has_the_three_contenders(quick_report):
    report, stored = quick_report
    assert stored["op"] == "train_step" and stored["target_step_over_teacher"] == pytest.approx(1.10)
    assert [case["model"] for case in stored["cases"]] == ["resnet20", "mnist_cnn"]
    for case in stored["cases"]:
        rows = {row["name"]: row for row in case["results"]}
        assert set(rows) == {"teacher", "fused", "eager"}
        for row in rows.values():
            assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
            assert row["step_over_teacher"] == pytest.approx(row["median_s"] / rows["teacher"]["median_s"])
            assert row["saved_bytes"] > 0
    assert any("fused" in note and "target" in note for note in stored["notes"])


def test_eager_student_is_the_fused_student_in_plain_pytorch():
    models = train_step._models("mnist_cnn", (4, 1, 28, 28), torch.device("cpu"))
    x = torch.rand(4, 1, 28, 28)
    train_step._check_same_work(models, x)
    eager = models["eager"]
    assert not any(isinstance(m, torch.nn.ReLU) for m in eager.modules())
    assert sum(isinstance(m, train_step.EagerStocReLUEMA) for m in eager.modules()) == 2


def test_same_work_check_catches_a_student_that_skips_the_statistics():
    models = train_step._models("mnist_cnn", (4, 1, 28, 28), torch.device("cpu"))
    for module in models["eager"].modules():
        if isinstance(module, train_step.EagerStocReLUEMA):
            module.momentum, module.initialized = 0.0, True  # sigma never moves
    with pytest.raises(AssertionError, match="running_sigma"):
        train_step._check_same_work(models, torch.rand(4, 1, 28, 28))
