"""Smoke test of ``python -m bench``: the quick run completes in-process and its JSON holds
every field the benchmark promises, with positive finite numbers."""
import json
import math
import mmap
from pathlib import Path

import pytest
import torch

from bench import harness
from bench.__main__ import main
from bench.attacks import THEIRS_SUITE

CONTENDERS = {"fused[cpp]", "eager", "compiled"}
TIMING_FIELDS = ("median_s", "min_s", "q1_s", "q3_s", "gbps", "fraction_of_copy",
                 "eager_over_this", "compiled_over_this")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "stoc_relu_ema.json"
    report, written = main(["--op", "stoc_relu_ema", "--device", "cpu", "--quick", "--json", str(path)])
    assert Path(written) == path
    return report, json.loads(path.read_text())


def positive_finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_json_is_the_printed_report(quick_run):
    report, stored = quick_run
    assert stored == json.loads(json.dumps(report))


def test_environment_names_device_and_threads(quick_run):
    _, stored = quick_run
    assert stored["op"] == "stoc_relu_ema"
    assert stored["quick"] is True
    env = stored["environment"]
    assert env["device"] == "cpu"
    assert env["threads"] == torch.get_num_threads() >= 1
    assert env["name"]


def test_every_shape_has_forward_and_backward_cases(quick_run):
    _, stored = quick_run
    passes = [(tuple(case["shape"]), case["pass"]) for case in stored["cases"]]
    shapes = sorted({shape for shape, _ in passes})
    assert len(shapes) == 2 and {len(shape) for shape in shapes} == {2, 4}
    assert sorted(passes) == sorted((shape, p) for shape in shapes for p in ("forward", "forward+backward"))


def test_bytes_moved_follow_the_fused_op_traffic(quick_run):
    _, stored = quick_run
    for case in stored["cases"]:
        numel, size = case["numel"], case["element_size"]
        assert numel == math.prod(case["shape"]) and size == 4
        mask = (numel + 7) // 8
        forward = 2 * numel * size + mask
        expected = forward if case["pass"] == "forward" else forward + 2 * numel * size + mask
        assert case["bytes_moved"] == expected
        assert case["copy"]["bytes"] == 2 * numel * size
        assert positive_finite(case["copy"]["gbps"])
        assert positive_finite(case["copy"]["median_s"])


def test_rows_have_positive_finite_timings_and_ratios(quick_run):
    _, stored = quick_run
    for case in stored["cases"]:
        rows = {row["name"]: row for row in case["results"]}
        assert set(rows) == CONTENDERS
        for name, row in rows.items():
            for field in TIMING_FIELDS:
                assert positive_finite(row[field]), (case["title"], name, field, row.get(field))
            assert row["min_s"] <= row["median_s"]
            assert row["q1_s"] <= row["median_s"] <= row["q3_s"]
            assert row["iqr_s"] >= 0 and row["repeats"] == stored["repeats"]
            assert row["gbps"] == pytest.approx(case["bytes_moved"] / row["median_s"] / 1e9)
            assert row["fraction_of_copy"] == pytest.approx(row["gbps"] / case["copy"]["gbps"])
            assert row["eager_over_this"] == pytest.approx(rows["eager"]["median_s"] / row["median_s"])
        assert rows["eager"]["eager_over_this"] == pytest.approx(1.0)
        assert rows["fused[cpp]"]["backend"] == "cpp"
        assert positive_finite(rows["compiled"]["compile_s"])


def test_saved_bytes_fused_keeps_only_the_bit_mask(quick_run):
    _, stored = quick_run
    backward = [case for case in stored["cases"] if case["pass"] == "forward+backward"]
    assert backward
    for case in backward:
        rows = {row["name"]: row for row in case["results"]}
        assert rows["fused[cpp]"]["saved_bytes"] == (case["numel"] + 7) // 8
        assert rows["eager"]["saved_bytes"] == case["numel"] * case["element_size"]  # relu keeps y
        assert positive_finite(rows["compiled"]["saved_bytes"])
    for case in stored["cases"]:
        if case["pass"] == "forward":
            assert all("saved_bytes" not in row for row in case["results"])


def cpu_peak_available():
    return harness.peak_resident_bytes(lambda: None) is not None


def assert_cpu_peak_per_contender(stored, measured_pass):
    """Every row of the ``measured_pass`` cases has a CPU peak, the other passes none, and a note says
    what the peak measures."""
    if not cpu_peak_available():
        pytest.skip("no resettable resident high-water mark (/proc/self/clear_refs) here")
    for case in stored["cases"]:
        for row in case["results"]:
            if case["pass"] == measured_pass:
                assert isinstance(row["peak_bytes"], int) and row["peak_bytes"] >= 0, (case["title"], row)
            else:
                assert "peak_bytes" not in row
    assert any(note.startswith("peak: resident memory high-water mark") for note in stored["notes"])


def test_backward_rows_report_the_cpu_peak(quick_run):
    _, stored = quick_run
    assert_cpu_peak_per_contender(stored, "forward+backward")


def fresh_pages(nbytes):
    """An anonymous mapping of ``nbytes`` with every page touched: resident memory that no earlier
    allocation can supply (a malloc of that size may reuse free heap pages that are resident already)."""
    pages = mmap.mmap(-1, nbytes)
    for offset in range(0, nbytes, mmap.PAGESIZE):
        pages[offset] = 1
    return pages


def test_peak_resident_bytes_sees_a_fresh_allocation():
    if not cpu_peak_available():
        pytest.skip("no resettable resident high-water mark (/proc/self/clear_refs) here")
    nbytes = 48 * 2**20
    peak = harness.peak_resident_bytes(lambda: fresh_pages(nbytes).close())
    assert nbytes * 0.9 <= peak <= nbytes * 1.5


def test_cpu_peak_bytes_leaves_out_one_time_costs_of_a_first_call():
    if not cpu_peak_available():
        pytest.skip("no resettable resident high-water mark (/proc/self/clear_refs) here")
    nbytes = 48 * 2**20

    def first_call_costs():
        kept = []
        return lambda: kept or kept.append(fresh_pages(nbytes))  # allocated on the first call only

    assert harness.peak_resident_bytes(first_call_costs()) >= nbytes * 0.9
    assert harness.peak_bytes(first_call_costs(), torch.device("cpu")) < nbytes * 0.1


def test_peak_note_says_what_is_measured():
    assert harness.peak_note(torch.device("cpu"), "one step").startswith(
        "peak: resident memory high-water mark above the starting level during one step (VmHWM), after an "
        "untimed call")
    assert harness.peak_note(torch.device("cuda"), "one step") == \
        "peak: CUDA max_memory_allocated above the starting level during one step"


def test_report_orders_its_keys_and_copies_skipped():
    skipped = ({"name": "fused[triton]", "reason": "not built"},)
    report = harness.report("op", {"device": "cpu"}, 3, 1, True, ["case"], ["note"], skipped, eps=0.5, steps=2)
    assert list(report) == ["op", "environment", "repeats", "warmup", "quick", "eps", "steps", "skipped", "notes",
                            "cases"]
    assert report["skipped"] == list(skipped) and report["eps"] == 0.5 and report["cases"] == ["case"]


def test_per_image_replaces_bandwidth_with_images_per_second():
    result = {"results": [{"name": "a", "median_s": 0.5, "gbps": 1.0, "fraction_of_copy": 0.1}]}
    assert harness.per_image(result, 4)["results"] == [{"name": "a", "median_s": 0.5, "images_per_s": 8.0}]


def test_op_contender_compiles_and_measures():
    calls = []
    contender = harness.op_contender("compiled", "compiled", None, lambda: calls.append(1), torch.device("cpu"),
                                     saved=lambda: torch.relu(torch.ones(3, requires_grad=True)), peak=False)
    assert contender.name == "compiled" and len(calls) == 2  # compile_warmup calls it twice
    assert set(contender.extra) == {"compile_s", "saved_bytes"} and contender.extra["saved_bytes"] == 12
    fused = harness.op_contender("fused[cpp]", "fused", "cpp", lambda: None, torch.device("cpu"))
    assert fused.extra["backend"] == "cpp" and "compile_s" not in fused.extra
    assert ("peak_bytes" in fused.extra) == cpu_peak_available()


def test_op_functions_name_every_contender():
    eager = lambda x: x + 1  # noqa: E731
    functions = harness.op_functions({"cpp": abs, "triton": abs}, eager)
    assert list(functions) == ["fused[cpp]", "fused[triton]", "eager", "compiled"]
    assert functions["fused[cpp]"] == ("fused", "cpp", abs) and functions["eager"] == ("eager", None, eager)
    assert functions["compiled"][:2] == ("compiled", None)


def test_table_prints_every_case(quick_run):
    report, _ = quick_run
    text = harness.format_report(report)
    assert text.count("\n== ") == len(report["cases"])
    for name in CONTENDERS:
        assert name in text


def test_saved_tensor_bytes_counts_distinct_storages():
    x = torch.randn(10, 7, requires_grad=True)
    assert harness.saved_tensor_bytes(lambda: torch.relu(x)) == 10 * 7 * 4
    assert harness.saved_tensor_bytes(lambda: x * x) == 10 * 7 * 4  # x saved twice, one storage
    assert harness.saved_tensor_bytes(lambda: x + 1) == 0


def test_timing_quartiles():
    timing = harness.Timing((4.0, 1.0, 3.0, 2.0, 5.0), inner=1)
    stats = timing.to_dict()
    assert (stats["median_s"], stats["min_s"], stats["q1_s"], stats["q3_s"]) == (3.0, 1.0, 2.0, 4.0)
    assert harness.Timing((2.0,), inner=3).to_dict()["iqr_s"] == 0.0


def test_perturb_quick_run(tmp_path):
    """The perturb benchmark runs quick, counts its traffic honestly and saves O(theta) for backward."""
    path = tmp_path / "perturb.json"
    report, _ = main(["--op", "perturb", "--device", "cpu", "--quick", "--json", str(path)])
    stored = json.loads(path.read_text())
    assert stored == json.loads(json.dumps(report)) and stored["op"] == "perturb"
    assert sorted(case["pass"] for case in stored["cases"]) == ["forward", "forward+backward"]
    for case in stored["cases"]:
        numel, size = case["numel"], case["element_size"]
        features = math.prod(case["theta_shape"])
        forward = 2 * numel * size + features * size
        expected = forward if case["pass"] == "forward" else forward + numel * size + 2 * features * size
        assert case["bytes_moved"] == expected
        rows = {row["name"]: row for row in case["results"]}
        assert set(rows) == CONTENDERS
        for name, row in rows.items():
            for field in TIMING_FIELDS:
                assert positive_finite(row[field]), (case["title"], name, field, row.get(field))
        if case["pass"] == "forward+backward":
            assert rows["fused[cpp]"]["saved_bytes"] == features * size + 2 * 8  # theta and (seed, offset)
            assert rows["eager"]["saved_bytes"] == numel * size  # the noise tensor
    assert_cpu_peak_per_contender(stored, "forward+backward")


def test_pgd_quick_run(tmp_path):
    """The PGD benchmark runs quick: one linf step per shape, its traffic and a CPU peak per contender."""
    path = tmp_path / "pgd.json"
    report, _ = main(["--op", "pgd", "--device", "cpu", "--quick", "--repeats", "1", "--warmup", "0",
                      "--json", str(path)])
    stored = json.loads(path.read_text())
    assert stored == json.loads(json.dumps(report)) and stored["op"] == "pgd"
    assert [case["pass"] for case in stored["cases"]] == ["forward"]
    for case in stored["cases"]:
        assert case["bytes_moved"] == 4 * case["numel"] * case["element_size"]
        rows = {row["name"]: row for row in case["results"]}
        assert set(rows) == CONTENDERS
        for name, row in rows.items():
            assert positive_finite(row["median_s"]) and positive_finite(row["gbps"]), (name, row)
    assert_cpu_peak_per_contender(stored, "forward")


ATTACK_CASES = ["pgd-2", "pgd-2", "eot-pgd-2x2", "eot-pgd-2x2", "apgd-ce-3x2", "apgd-ce-3x2", "autoattack-rand"]
ATTACK_MODELS = ["cnn", "cnn", "gauss", "gauss", "anis2", "anis2", "anis2"]


@pytest.fixture(scope="module")
def attacks_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "attacks.json"
    report, written = main(["--op", "attacks", "--device", "cpu", "--quick", "--repeats", "1", "--warmup", "0",
                            "--json", str(path)])
    assert Path(written) == path
    return report, json.loads(path.read_text())


def unit_interval(value):
    return isinstance(value, float) and 0.0 <= value <= 1.0


def test_attacks_quick_run_has_every_case_ours_against_torchattacks(attacks_run):
    """The attacks benchmark runs quick: PGD, EOT-PGD and APGD-CE-EOT on a small and a large batch and the
    AutoAttack(rand) suite, stochnet against torchattacks (when installed), on the trained models."""
    report, stored = attacks_run
    assert stored == json.loads(json.dumps(report)) and stored["op"] == "attacks" and stored["quick"] is True
    cases = stored["cases"]
    assert [case["attack"] for case in cases] == ATTACK_CASES
    assert [case["model"] for case in cases] == ATTACK_MODELS
    small, large = stored["batches"]
    assert small < large
    assert [case["images"] for case in cases] == [small, large] * 3 + [stored["suite_images"]]
    assert [case["stochastic"] for case in cases] == [False, False] + [True] * 5
    assert [case["eval_passes"] for case in cases] == [1, 1] + [stored["eval_passes"]] * 5
    assert [case["single_run"] for case in cases] == [False] * 6 + [True]
    assert all(case["eot_samples"] >= 2 for case in cases[2:]) and cases[0]["eot_samples"] == 1
    try:
        import torchattacks  # noqa: F401
        expected = {"stochnet", "torchattacks"}
    except ImportError:
        expected = {"stochnet"}
        assert len(stored["skipped"]) == len(cases)
    for case in cases:
        suite = {THEIRS_SUITE} if case["single_run"] and "torchattacks" in expected else set()
        assert {row["name"] for row in case["results"]} == expected | suite, case["title"]
        assert case["shape"][0] == case["images"]
    text = harness.format_report(report)
    assert text.count("\n== ") == len(cases)
    assert "summary (ours = stochnet)" in text and "robust acc" in text and "fooled/s" in text


def test_attacks_rows_have_times_robust_accuracy_and_strength_per_second(attacks_run):
    _, stored = attacks_run
    for case in stored["cases"]:
        assert unit_interval(case["clean_acc"]), case["title"]
        for row in case["results"]:
            where = (case["title"], row["name"])
            for field in ("median_s", "min_s", "images_per_s", "first_call_s"):
                assert positive_finite(row[field]), (where, field, row.get(field))
            assert row["images_per_s"] == pytest.approx(case["images"] / row["median_s"])
            assert row["min_s"] <= row["median_s"]
            assert 1 <= row["repeats"] <= (1 if case["single_run"] else max(1, stored["repeats"]) + 1)
            assert unit_interval(row["robust_acc"]), where
            assert unit_interval(row["robust_acc_std"]) and 1 <= row["robust_acc_runs"] <= stored["eval_runs"]
            assert math.isfinite(row["fooled_per_s"])
            assert row["fooled_per_s"] == pytest.approx(
                (case["clean_acc"] - row["robust_acc"]) * case["images"] / row["median_s"])
        if case["single_run"]:
            assert all(row["repeats"] == 1 and row["median_s"] == row["first_call_s"] for row in case["results"])


def test_attacks_ratios_and_targets_are_ours_against_theirs(attacks_run):
    _, stored = attacks_run
    for case in stored["cases"]:
        rows = {row["name"]: row for row in case["results"]}
        if "torchattacks" not in rows:
            continue
        ours, theirs = rows["stochnet"], rows["torchattacks"]
        assert case["theirs_over_ours_time"] == pytest.approx(theirs["median_s"] / ours["median_s"])
        assert ours["torchattacks_over_this"] == pytest.approx(case["theirs_over_ours_time"])
        assert theirs["torchattacks_over_this"] == pytest.approx(1.0)
        assert case["ours_minus_theirs_robust_acc"] == pytest.approx(ours["robust_acc"] - theirs["robust_acc"])
        for name, row in rows.items():
            if name != "stochnet":
                assert row["this_over_ours_time"] == pytest.approx(row["median_s"] / ours["median_s"])
                assert row["ours_minus_this_robust_acc"] == pytest.approx(ours["robust_acc"] - row["robust_acc"])
        target = case["target"]
        assert target["fast_enough"] == (case["theirs_over_ours_time"] >= (2.0 if case["single_run"] else 1.0))
        if case["single_run"]:
            assert target["met"] == (target["fast_enough"] and target["stronger"])
        else:
            assert target["met"] == target["fast_enough"]


def test_attacks_models_are_trained_and_stochastic_where_they_should_be(attacks_run):
    """The quick models learned something: clean accuracy well above chance on the deterministic CNN, evaluated
    once (the copy engine's probe finds it deterministic, the gauss and ANIS² models stochastic: the cases'
    ``stochastic`` flags above)."""
    _, stored = attacks_run
    assert stored["models"]["models"] == "trained here"
    cases = stored["cases"]
    assert cases[1]["clean_acc"] >= 0.5
    assert all(case["clean_acc_std"] == 0.0 for case in cases[:2])
