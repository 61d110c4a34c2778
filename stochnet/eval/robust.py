"""Robust accuracy and attack success rate of a model under an attack."""
import math

import torch

from ..modes import eval_mode

COUNT_KEYS = ("total", "clean_correct", "adv_correct", "flipped")
"""What :func:`robust_counts` counts per repeat: samples, clean-correct ones, adversarially correct
ones, and the clean-correct ones the attack turns into errors."""


def _std(values):
    """Sample standard deviation (n - 1); 0 for a single repeat."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def robust_accuracy(model, attack, loader, repeats=1, device=None):
    """Clean accuracy, adversarial accuracy and attack success rate of ``model`` under ``attack``.

    ``loader`` yields ``(x, y)`` batches with x in [0, 1]. ASR is
    ``P(f(x_adv) != y | f(x) = y)``: the fraction of the clean-correct samples that the attack
    turns into errors (nan when no sample is clean-correct). A stochastic model gives different
    answers on each pass, so the whole evaluation (clean predictions included) runs ``repeats``
    times; each value is reported as the mean over repeats with its sample std (0 for one repeat).
    The model is evaluated in eval mode and every submodule's mode is restored afterwards.

    Returns a dict with ``clean_accuracy``, ``adversarial_accuracy``, ``asr``, each with a
    ``_std`` twin, the per-repeat lists under ``per_repeat``, ``repeats`` and ``num_samples``.
    It is :func:`summarize_counts` of :func:`robust_counts`.
    """
    return summarize_counts(robust_counts(model, attack, loader, repeats=repeats, device=device))


def robust_counts(model, attack, loader, repeats=1, device=None, allow_empty=False, progress=None):
    """The counts behind :func:`robust_accuracy`: one dict per repeat with the integers
    :data:`COUNT_KEYS`. Counts of disjoint shards of a test set add up to the counts of the whole
    set, so processes that each evaluate a shard can sum them (``torch.distributed.all_reduce``)
    and summarize once. ``allow_empty`` lets a loader yield no samples (a shard of nothing): every
    count is then 0; otherwise an empty loader raises ValueError. ``progress`` (None: silent), if
    given, is called with the number of images of each batch once it is attacked and scored, e.g.
    :class:`stochnet.eval.progress.AttackProgress`."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if getattr(attack, "targeted", False):
        raise ValueError("attack must be untargeted: robust accuracy and ASR are measured against the true labels")
    if device is None and isinstance(model, torch.nn.Module):
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else None
    counts = []
    for _ in range(repeats):
        total = clean_correct = adv_correct = flipped = 0
        for x, y in loader:
            if device is not None:
                x, y = x.to(device), y.to(device)
            # Per batch: eval mode again even if the attack (any callable) left the model otherwise.
            with eval_mode(model):
                with torch.no_grad():
                    clean_ok = model(x).argmax(1) == y
                x_adv = attack(x, y)
                with torch.no_grad():
                    adv_ok = model(x_adv).argmax(1) == y
            total += y.numel()
            clean_correct += int(clean_ok.sum())
            adv_correct += int(adv_ok.sum())
            flipped += int((clean_ok & ~adv_ok).sum())
            if progress is not None:
                progress(y.numel())
        if total == 0 and not allow_empty:
            raise ValueError("loader yielded no samples")
        counts.append({"total": total, "clean_correct": clean_correct, "adv_correct": adv_correct,
                       "flipped": flipped})
    return counts


def summarize_counts(counts):
    """:func:`robust_accuracy`'s dict from per-repeat counts (a list of dicts with :data:`COUNT_KEYS`,
    e.g. summed over processes): the fractions of each repeat, their mean and sample std."""
    if not counts:
        raise ValueError("no repeats to summarize")
    if any(int(c["total"]) == 0 for c in counts):
        raise ValueError("loader yielded no samples")
    results = {"clean_accuracy": [], "adversarial_accuracy": [], "asr": []}
    for c in counts:
        total, clean_correct = int(c["total"]), int(c["clean_correct"])
        results["clean_accuracy"].append(clean_correct / total)
        results["adversarial_accuracy"].append(int(c["adv_correct"]) / total)
        results["asr"].append(int(c["flipped"]) / clean_correct if clean_correct else float("nan"))
    summary = {}
    for name, values in results.items():
        summary[name] = sum(values) / len(values)
        summary[name + "_std"] = _std(values)
    summary["per_repeat"] = results
    summary["repeats"] = len(counts)
    summary["num_samples"] = int(counts[-1]["total"])
    return summary
