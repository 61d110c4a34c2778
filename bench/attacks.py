"""Whole attacks, time and strength side by side: stochnet's PGD, EOT-PGD, APGD-CE with EOT and
AutoAttack(version="rand") against torchattacks' counterparts at equal budget, on trained MNIST models
(:mod:`bench.attack_models`), so that robust accuracy means something.

Cases (each on a small and a large batch of test images, the suite on ``suite_images``):

- ``pgd-10``: PGD-10 L-inf with random start on the deterministic CNN (torchattacks.PGD);
- ``eot-pgd-10x8``: EOT-PGD, 10 steps x 8 noise samples, on the Gaussian-input-noise model (torchattacks.EOTPGD);
- ``apgd-ce-20x8``: APGD-CE, 20 steps, EOT over 8 samples, on the ANIS² student (torchattacks.APGD(eot_iter=8));
- ``autoattack-rand``: stochnet's AutoAttack(version="rand") (APGD-CE then APGD-DLR, 100 steps, EOT 20) against
  torchattacks' APGD(loss="ce", steps=100, eot_iter=20) on the ANIS² student; one timed run each.

Every row has the median wall time, the robust accuracy of its output (the mean accuracy of the model on
x_adv over ``EVAL_PASSES`` seeded fresh-noise passes, the same seeds for every contender, averaged over the
last ``EVAL_RUNS`` attack runs: the same evaluation for ours and theirs) and its strength per second,
``fooled/s = (clean acc - robust acc) * batch / median``: images turned adversarial per second.

``python -m bench.attacks --checkpoint PATH [bench options]`` (or ``STOCHNET_BENCH_CHECKPOINT=PATH``) attacks a
``stochnet train`` checkpoint (the main job's ``runs/anis2/checkpoint.pt``) instead of the ANIS² student
trained here, at the eps it was trained with.
"""
import gc
import math
import os
import statistics
import sys
from dataclasses import dataclass

import torch

from stochnet.attacks import APGD, EOTPGD, PGD
from stochnet.copies import CopyEngine

try:
    from stochnet.attacks import AutoAttack
except ImportError:  # exported by stochnet.attacks once it lands there
    from stochnet.attacks.autoattack import AutoAttack

from . import attack_models, harness

OP = "attacks"
EPS = 0.15                # L-inf budget on MNIST images in [0, 1] (the trained models are neither broken nor immune)
CHECKPOINT_VARIABLE = "STOCHNET_BENCH_CHECKPOINT"
DTYPE = torch.float32
REFERENCES = ("torchattacks",)
EVAL_PASSES, EVAL_SEED, EVAL_RUNS = 8, 1000, 4
ATTACK_SEED = 0


@dataclass(frozen=True)
class Sizes:
    batches: tuple        # (small, large) test-image batches
    pgd_steps: int
    eot_steps: int
    eot_samples: int
    apgd_steps: int
    apgd_samples: int
    suite_images: int
    suite_steps: int
    suite_samples: int
    case_budget_s: float  # timing budget of one case: fewer repeats (at least MIN_REPEATS) beyond it


FULL = Sizes(batches=(32, 256), pgd_steps=10, eot_steps=10, eot_samples=8, apgd_steps=20, apgd_samples=8,
             suite_images=200, suite_steps=100, suite_samples=20, case_budget_s=40.0)
QUICK = Sizes(batches=(4, 8), pgd_steps=2, eot_steps=2, eot_samples=2, apgd_steps=3, apgd_samples=2,
              suite_images=6, suite_steps=3, suite_samples=2, case_budget_s=0.5)
MIN_REPEATS = 3
HEAVY_ROUND_S = 2.0   # a round of first calls this long: the first calls count as samples


def alpha_for(eps, steps):
    """Madry et al.'s PGD step, 2.5 eps / steps."""
    return 2.5 * eps / steps


@dataclass(frozen=True)
class Case:
    attack: str           # the case's label
    model: str            # which model of bench.attack_models
    images: int
    steps: int
    eot_samples: int
    ours: object          # (model, eps, case) -> callable(x, y)
    theirs: object        # (torchattacks, model, eps, case) -> callable(x, y)
    theirs_name: str
    single_run: bool = False
    suite: bool = False
    extra: tuple = ()     # more torchattacks contenders: (row name, factory like ``theirs``)


def _ours_pgd(model, eps, case):
    return PGD(model, eps=eps, alpha=alpha_for(eps, case.steps), steps=case.steps, norm="linf", random_start=True)


def _theirs_pgd(ta, model, eps, case):
    return ta.PGD(model, eps=eps, alpha=alpha_for(eps, case.steps), steps=case.steps, random_start=True)


def _ours_eot(model, eps, case):
    return EOTPGD(model, eps=eps, alpha=alpha_for(eps, case.steps), steps=case.steps, eot_samples=case.eot_samples,
                  norm="linf", random_start=True)


def _theirs_eot(ta, model, eps, case):
    return ta.EOTPGD(model, eps=eps, alpha=alpha_for(eps, case.steps), steps=case.steps, eot_iter=case.eot_samples,
                     random_start=True)


def _ours_apgd(model, eps, case):
    return APGD(model, eps=eps, norm="linf", steps=case.steps, loss="ce", eot_samples=case.eot_samples)


def _theirs_apgd(ta, model, eps, case):
    return ta.APGD(model, norm="Linf", eps=eps, steps=case.steps, n_restarts=1, loss="ce", eot_iter=case.eot_samples)


def _ours_suite(model, eps, case):
    return AutoAttack(model, eps, norm="linf", version="rand", seed=ATTACK_SEED, steps=case.steps,
                      eot_samples=case.eot_samples)


def _theirs_suite(ta, model, eps, case):
    """torchattacks' own AutoAttack(version="rand"): APGD-CE then APGD-DLR with EOT 20 on the samples its single
    noisy pass still classifies correctly; its APGDs get torchattacks' default 10 steps, set here to the case's."""
    attack = ta.AutoAttack(model, norm="Linf", eps=eps, version="rand", n_classes=10, seed=ATTACK_SEED)
    for inner in attack._autoattack.attacks:
        inner.steps, inner.eot_iter = case.steps, case.eot_samples
    return attack


THEIRS_SUITE = "torchattacks autoattack-rand"


def cases_for(sizes):
    cases = []
    for images in sizes.batches:
        cases.append(Case(f"pgd-{sizes.pgd_steps}", "cnn", images, sizes.pgd_steps, 1, _ours_pgd, _theirs_pgd,
                          "PGD"))
    for images in sizes.batches:
        cases.append(Case(f"eot-pgd-{sizes.eot_steps}x{sizes.eot_samples}", "gauss", images, sizes.eot_steps,
                          sizes.eot_samples, _ours_eot, _theirs_eot, "EOTPGD"))
    for images in sizes.batches:
        cases.append(Case(f"apgd-ce-{sizes.apgd_steps}x{sizes.apgd_samples}", "anis2", images, sizes.apgd_steps,
                          sizes.apgd_samples, _ours_apgd, _theirs_apgd, "APGD-CE"))
    cases.append(Case("autoattack-rand", "anis2", sizes.suite_images, sizes.suite_steps, sizes.suite_samples,
                      _ours_suite, _theirs_apgd, f"APGD-CE {sizes.suite_steps} steps eot{sizes.suite_samples}",
                      single_run=True, suite=True, extra=((THEIRS_SUITE, _theirs_suite),)))
    return cases


def accuracies(model, x, y, passes):
    """Accuracy of ``model`` on (x, y) on each of ``passes`` seeded fresh-noise passes (seeds EVAL_SEED + i, the
    same for every contender); the caller's random stream is left alone."""
    values = []
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), torch.no_grad():
        for i in range(passes):
            torch.manual_seed(EVAL_SEED + i)
            values.append((model(x).argmax(1) == y).float().mean().item())
    return values


def _check_attack(name, out, x, eps):
    delta = (out - x).abs()
    if out.shape != x.shape or delta.max() > eps + 1e-5 or out.min() < 0 or out.max() > 1:
        raise AssertionError(f"{name} does not return an L-inf attack of budget {eps:.5f}: not the same work")


class _Recorder:
    """Calls ``attack(x, y)`` and keeps its last ``keep`` outputs (for the robust accuracy of the timed runs)."""

    def __init__(self, attack, x, y, keep=EVAL_RUNS):
        self.attack, self.x, self.y, self.keep = attack, x, y, keep
        self.outputs = []

    def __call__(self):
        out = self.attack(self.x, self.y)
        self.outputs.append(out)
        del self.outputs[:-self.keep]
        return out


def _timed_once(fn, device):
    return harness._sample(fn, device, 1)


def _timings(recorders, device, x, repeats, first_s):
    """Round-robin samples of every contender and of a copy of x (``harness.compare``'s rows, with images/s in
    place of bandwidth); ``first_s`` (name -> seconds of a call already made) are counted as first samples.
    Not harness.measure, which makes one more untimed call per contender: a second run of the suite."""
    copy_fn, copy_bytes = harness.copy_callable(x.numel(), DTYPE, device)
    fns = {**recorders, "copy": copy_fn}
    samples = {name: [first_s[name]] if name in first_s else [] for name in fns}
    copy_fn()
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for index in range(max(repeats, 1)):
            for name, fn in fns.items():
                if name == "copy" or index < repeats:
                    samples[name].append(_timed_once(fn, device))
    finally:
        if enabled:
            gc.enable()
    timings = {name: harness.Timing(tuple(values), 1) for name, values in samples.items()}
    copy = timings.pop("copy")
    rows = []
    for name, timing in timings.items():
        rows.append({"name": name, "kind": "fused" if name == "stochnet" else "torchattacks", **timing.to_dict(),
                     "images_per_s": x.shape[0] / timing.median})
    medians = {row["name"]: row["median_s"] for row in rows}
    for row in rows:
        for ref in REFERENCES:
            if ref in medians:
                row[f"{ref}_over_this"] = medians[ref] / row["median_s"]
    return {"bytes_moved": x.numel() * x.element_size(),
            "copy": {"bytes": copy_bytes, "gbps": copy_bytes / copy.median / 1e9, **copy.to_dict()},
            "results": rows}


def _peak(fn, device):
    """Runs ``fn`` once; returns the peak memory above the starting level during it on CUDA
    (``torch.cuda.max_memory_allocated``), None on CPU: memory freed by earlier calls stays resident in the C library's arenas, so an
    in-process resident high-water mark reads about 0 for every contender and compares nothing."""
    if device.type == "cuda":
        return harness.peak_memory_bytes(fn, device)
    fn()
    return None


def _std(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _bench_case(case, model, stochastic, x, y, eps, device, repeats, warmup, budget_s, skipped, ta):
    passes = EVAL_PASSES if stochastic else 1
    clean = accuracies(model, x, y, passes)
    clean_acc = sum(clean) / len(clean)
    label = f"{case.attack} B={case.images}"
    recorders = {"stochnet": _Recorder(case.ours(model, eps, case), x, y)}
    if ta is None:
        skipped.append({"name": f"torchattacks ({label})", "reason": "torchattacks is not installed"})
    else:
        recorders["torchattacks"] = _Recorder(case.theirs(ta, model, eps, case), x, y)
        for name, factory in case.extra:
            recorders[name] = _Recorder(factory(ta, model, eps, case), x, y)
    # The first call of each contender, from the same seed: the suite's one timed run; for the other cases a
    # warm-up that sizes the repeats, and for calls of seconds (where warming up changes nothing) the first sample.
    first_s, peak = {}, {}
    for name, recorder in recorders.items():
        torch.manual_seed(ATTACK_SEED)
        if case.single_run:  # the one timed run is also the one whose peak memory is measured
            peak[name] = _peak(lambda: first_s.__setitem__(name, _timed_once(recorder, device)), device)
        else:
            first_s[name] = _timed_once(recorder, device)
    per_round = sum(first_s.values())
    samples = max(1, min(repeats, max(MIN_REPEATS, math.floor(budget_s / per_round))))
    if case.single_run:
        result = _timings(recorders, device, x, 0, first_s)
    elif per_round > HEAVY_ROUND_S:
        result = _timings(recorders, device, x, samples - 1, first_s)
    else:
        for _ in range(max(0, warmup - 1)):
            for recorder in recorders.values():
                recorder()
        result = _timings(recorders, device, x, samples, {})
    for row in result["results"]:
        recorder = recorders[row["name"]]
        for out in recorder.outputs:
            _check_attack(row["name"], out, x, eps)
        runs = [accuracies(model, out, y, passes) for out in recorder.outputs]
        flat = [value for run in runs for value in run]
        row["robust_acc"] = sum(flat) / len(flat)
        row["robust_acc_std"] = _std(flat)
        row["robust_acc_runs"] = len(runs)
        row["fooled_per_s"] = (clean_acc - row["robust_acc"]) * x.shape[0] / row["median_s"]
        row["first_call_s"] = first_s[row["name"]]
        if case.single_run or device.type == "cuda":  # one more call only where it measures something
            row["peak_bytes"] = peak[row["name"]] if case.single_run else _peak(recorder, device)
        if case.suite and row["name"] == "stochnet":
            row["fooled_by"] = dict(getattr(recorder.attack, "fooled_by", {}))
    rows = {row["name"]: row for row in result["results"]}
    for row in result["results"]:
        if row["name"] != "stochnet":
            row["this_over_ours_time"] = row["median_s"] / rows["stochnet"]["median_s"]
            row["ours_minus_this_robust_acc"] = rows["stochnet"]["robust_acc"] - row["robust_acc"]
    summary = {}
    if "torchattacks" in rows:
        ours, theirs = rows["stochnet"], rows["torchattacks"]
        summary = {"theirs_over_ours_time": theirs["median_s"] / ours["median_s"],
                   "ours_minus_theirs_robust_acc": ours["robust_acc"] - theirs["robust_acc"],
                   "ours_over_theirs_fooled_per_s": (ours["fooled_per_s"] / theirs["fooled_per_s"]
                                                     if theirs["fooled_per_s"] > 0 else None)}
        summary["target"] = _target(case, summary, x.shape[0])
    title = (f"{OP} {label} on {case.model} ({'stochastic' if stochastic else 'deterministic'}) "
             f"{tuple(x.shape)} {harness.dtype_name(DTYPE)} vs torchattacks {case.theirs_name}"
             + "".join(f" and {name}" for name, _ in case.extra)
             + (" | one timed run each" if case.single_run else ""))
    return {"title": title, "attack": case.attack, "model": case.model, "stochastic": stochastic,
            "shape": list(x.shape), "images": x.shape[0], "steps": case.steps, "eot_samples": case.eot_samples,
            "torchattacks_attack": case.theirs_name, "single_run": case.single_run,
            "eval_passes": passes, "clean_acc": clean_acc, "clean_acc_std": _std(clean),
            "pass": "attack", **summary, **result}


def _target(case, summary, images):
    """Whether the case meets issue 12's target: at least as fast as torchattacks at equal budget; the suite at
    least as strong (robust accuracy no higher; one sample of slack, as the strength tests allow) in at most
    half the wall time."""
    if case.suite:
        stronger = summary["ours_minus_theirs_robust_acc"] <= 1 / images + 1e-9
        faster = summary["theirs_over_ours_time"] >= 2.0
        return {"rule": "robust acc <= torchattacks' + 1 sample, time <= 1/2 of torchattacks'",
                "stronger": stronger, "fast_enough": faster, "met": stronger and faster}
    faster = summary["theirs_over_ours_time"] >= 1.0
    return {"rule": "time <= torchattacks' at equal budget", "fast_enough": faster, "met": faster}


_SUMMARY_COLUMNS = (
    ("case", "case", str),
    ("contender", "name", str),
    ("median s", "median_s", lambda v: f"{v:.3f}"),
    ("reps", "repeats", str),
    ("img/s", "images_per_s", lambda v: f"{v:.1f}"),
    ("clean acc", "clean_acc", lambda v: f"{100 * v:.1f}%"),
    ("robust acc", "robust_acc", lambda v: f"{100 * v:.1f}%"),
    ("+-", "robust_acc_std", lambda v: f"{100 * v:.1f}"),
    ("fooled/s", "fooled_per_s", lambda v: f"{v:.1f}"),
    ("peak MB", "peak_bytes", lambda v: f"{v / 2**20:.0f}"),
    ("this/ours time", "this_over_ours_time", lambda v: f"{v:.2f}x"),
    ("ours-this rob", "ours_minus_this_robust_acc", lambda v: f"{100 * v:+.1f} pt"),
    ("target", "target_met", lambda v: "met" if v else "MISSED"),
)


def summary_table(cases):
    rows = []
    for case in cases:
        for row in case["results"]:
            line = {"case": f"{case['attack']} B={case['images']} {case['model']}", "clean_acc": case["clean_acc"],
                    **row}
            if row["name"] == "torchattacks" and "target" in case:
                line["target_met"] = case["target"]["met"]
            rows.append(line)
    return harness.format_table(rows, _SUMMARY_COLUMNS)


def notes(device, eps, sizes, models, cases):
    lines = [
        "summary (ours = stochnet):\n" + summary_table(cases),
        "times: median over round-robin samples, one whole attack of the batch per call, after one seeded call "
        f"per contender that sizes the repeats (as many as fit {sizes.case_budget_s:g} s per case, at least "
        f"{MIN_REPEATS}, at most --repeats) and is a warm-up, or the first sample where a round of them takes over "
        f"{HEAVY_ROUND_S:g} s; the autoattack-rand case is that one seeded, timed run per contender (reps 1)",
        f"robust acc: mean accuracy on x_adv over {EVAL_PASSES} seeded fresh-noise passes of the model (1 for the "
        f"deterministic CNN; the same seeds for every contender), averaged over the last {EVAL_RUNS} attack runs "
        "(the calls above); +- is the std over those passes and runs; clean acc likewise on x",
        "fooled/s = (clean acc - robust acc) * batch / median: images turned adversarial per second (strength per "
        "second); on each torchattacks row, this/ours time = its median over stochnet's (above 1: stochnet is "
        "faster) and ours-this rob = stochnet's robust acc minus its (below 0: stochnet is stronger); target: issue "
        "12's, against the row named torchattacks (at least as fast; the suite: robust acc at most 1 sample higher "
        "in at most half the time)",
        f"eps {eps:g} L-inf; PGD / EOT-PGD alpha 2.5 eps / steps, random start; APGD: step 2 eps, momentum 0.75, "
        "halving at checkpoints (both libraries); stochnet's APGD and AutoAttack drop a sample once every copy of "
        "a step is fooled (on CPU at once, on GPU every 10 steps and at the checkpoints), torchattacks' keep "
        "attacking it: same budget per robust sample",
        "autoattack-rand: stochnet AutoAttack(version='rand') runs APGD-CE then APGD-DLR (each EOT "
        f"{sizes.suite_samples}, {sizes.suite_steps} steps) on the samples still robust, judged on 5 fresh draws; "
        f"the target's counterpart is torchattacks' APGD-CE of the same budget alone; '{THEIRS_SUITE}' is "
        f"torchattacks.AutoAttack(version='rand') (APGD-CE then APGD-DLR, EOT {sizes.suite_samples}, the samples "
        f"still correct on one noisy pass), its APGDs' steps raised from torchattacks' default 10 to "
        f"{sizes.suite_steps}: the same suite",
        "peak MB: CUDA max_memory_allocated above the starting level during one call of the attack (after the timed "
        "calls; for autoattack-rand, its timed run); not measured on CPU, where memory freed by earlier calls stays "
        "resident in the C library's arenas and an in-process high-water mark reads about 0 for every contender",
        "models: " + ", ".join(f"{key} {value:.1f}" if key.endswith("_s") else f"{key} {value:g}"
                               if isinstance(value, float) else f"{key} {value}" for key, value in models.items()),
        harness.SCALE_ONLY_NOTE,
    ]
    if device.type == "cpu":
        lines.append("CPU: absolute times are indicative, compare ratios measured in the same run")
    return lines


def run(device, repeats, warmup, quick=False, checkpoint=None):
    """Build and train the models, then benchmark every case; the report :func:`harness.format_report` prints."""
    environment = harness.environment(device)
    sizes = QUICK if quick else FULL
    checkpoint = checkpoint or os.environ.get(CHECKPOINT_VARIABLE) or None
    eps = EPS
    ckpt_model = ckpt_info = None
    if checkpoint:
        from stochnet.train import CheckpointError
        try:
            ckpt_model, ckpt_info = attack_models.checkpoint_model(checkpoint, device)
        except CheckpointError as error:
            raise SystemExit(f"python -m bench --op attacks: error: {error}") from error
        eps = float(ckpt_info.get("train_eps", EPS))
    models = attack_models.build_models(quick, eps, device)
    info = dict(models.source)
    if ckpt_model is not None:
        models.anis2 = ckpt_model
        info.update({f"anis2 from {key}": value for key, value in ckpt_info.items()})
    _, _, x_test, y_test = attack_models.mnist_split()
    x_test, y_test = x_test.to(device), y_test.to(device)
    try:
        import torchattacks as ta
    except ImportError:
        ta = None
    skipped, cases = [], []
    stochastic = {}
    for name in ("cnn", "gauss", "anis2"):  # what the copy engine's probe finds (two passes differ, or not)
        with torch.no_grad():
            stochastic[name] = CopyEngine(getattr(models, name)).is_stochastic(x_test[:1])
    for case in cases_for(sizes):
        x, y = x_test[:case.images].contiguous(), y_test[:case.images]
        cases.append(_bench_case(case, getattr(models, case.model), stochastic[case.model], x, y, eps, device,
                                 repeats, warmup, sizes.case_budget_s, skipped, ta))
    return harness.report(OP, environment, repeats, warmup, quick, cases, notes(device, eps, sizes, info, cases),
                          skipped=skipped, eps=eps, models=info, eval_passes=EVAL_PASSES, eval_runs=EVAL_RUNS,
                          batches=list(sizes.batches), suite_images=sizes.suite_images)


def main(argv=None):
    """``python -m bench.attacks [--checkpoint PATH] [python -m bench options]``: the attacks benchmark on a
    checkpoint's model (``--checkpoint`` sets :data:`CHECKPOINT_VARIABLE` and hands the rest to ``python -m bench``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--checkpoint" in argv:
        at = argv.index("--checkpoint")
        if at + 1 >= len(argv):
            raise SystemExit("python -m bench.attacks: error: --checkpoint needs a path")
        os.environ[CHECKPOINT_VARIABLE] = argv[at + 1]
        del argv[at:at + 2]
    from .__main__ import main as bench_main
    return bench_main(["--op", OP, *argv])


if __name__ == "__main__":
    main()
