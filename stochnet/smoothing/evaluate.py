"""Evaluation of smoothed classifiers as JSON-ready dicts: accuracy over a grid of sigma and m
(clean and under attack, the ablation of the Smoothed Inference paper), and certified accuracy."""
import torch

from .checks import check_count, check_sigma
from .smooth import ABSTAIN, Smooth


def _check_values(values, name, check):
    """A non-empty list of ``values``, each passed through ``check(value, name)``."""
    values = list(values)
    if not values:
        raise ValueError(f"{name} must not be empty")
    return [check(value, name) for value in values]


def _batches(loader, device):
    for x, y in loader:
        yield (x, y) if device is None else (x.to(device), y.to(device))


def smoothed_accuracy_grid(model, loader, sigmas, ms, mode="prediction", attack_factory=None, batch_size=1000,
                           backend=None, device=None):
    """Accuracy of ``Smooth(model, sigma, m, mode)`` for every sigma in ``sigmas`` and m in ``ms``.

    The smoothed prediction is the argmax of the smoothed scores (lowest class on ties; no
    abstention), as in the Smoothed Inference paper. With ``attack_factory``, each cell also
    attacks every batch with ``attack_factory(model, sigma, m)`` (an attack ``(x, y) -> x_adv``,
    e.g. ``lambda model, sigma, m: EPGD(model, eps, alpha, steps, sigma, m)``) and scores the
    smoothed model on the result.

    Returns ``{"mode", "sigmas", "ms", "num_samples", "clean_accuracy"}`` (and
    ``"adversarial_accuracy"`` with an attack), the accuracies as lists indexed
    ``[sigma index][m index]``.
    """
    sigmas = _check_values(sigmas, "sigmas", check_sigma)
    ms = _check_values(ms, "ms", check_count)
    if attack_factory is not None and not callable(attack_factory):
        raise TypeError(f"attack_factory must be callable, got {type(attack_factory).__name__}")
    batches = list(_batches(loader, device))
    num_samples = sum(int(y.numel()) for _, y in batches)
    if num_samples == 0:
        raise ValueError("loader yielded no samples")
    clean = [[0.0] * len(ms) for _ in sigmas]
    adversarial = [[0.0] * len(ms) for _ in sigmas]
    for i, sigma in enumerate(sigmas):
        for j, m in enumerate(ms):
            smooth = Smooth(model, sigma, m, mode=mode, batch_size=batch_size, backend=backend)
            attack = attack_factory(model, sigma, m) if attack_factory is not None else None
            clean_correct = adversarial_correct = 0
            for x, y in batches:
                with torch.no_grad():
                    clean_correct += int((smooth(x).argmax(1) == y).sum())
                if attack is not None:
                    x_adv = attack(x, y)
                    with torch.no_grad():
                        adversarial_correct += int((smooth(x_adv).argmax(1) == y).sum())
            clean[i][j] = clean_correct / num_samples
            adversarial[i][j] = adversarial_correct / num_samples
    result = {"mode": mode, "sigmas": sigmas, "ms": ms, "num_samples": num_samples, "clean_accuracy": clean}
    if attack_factory is not None:
        result["adversarial_accuracy"] = adversarial
    return result


def certify_loader(smooth, loader, n0, n, alpha, device=None):
    """``smooth.certify`` over every batch: per-sample lists ``labels``, ``predictions``
    (-1 = abstain) and ``radii``, with the run's ``sigma``, ``n0``, ``n`` and ``alpha``."""
    if not isinstance(smooth, Smooth):
        raise TypeError(f"smooth must be a stochnet.smoothing.Smooth, got {type(smooth).__name__}")
    labels, predictions, radii = [], [], []
    for x, y in _batches(loader, device):
        classes, radius = smooth.certify(x, n0, n, alpha)
        labels += y.tolist()
        predictions += classes.tolist()
        radii += radius.tolist()
    return {"sigma": smooth.sigma, "n0": n0, "n": n, "alpha": alpha,
            "labels": labels, "predictions": predictions, "radii": radii}


def certified_accuracy(certification, radii):
    """The fraction of samples certified correct at L2 radius r, for each r in ``radii``:
    prediction == label and certified radius >= r (Cohen et al.'s certified accuracy curve).

    ``certification`` is a dict of :func:`certify_loader` (or any dict with equal-length
    ``labels``, ``predictions`` and ``radii`` lists). Returns ``{"radii", "certified_accuracy",
    "abstain_rate", "num_samples"}`` plus the certification's sigma / n0 / n / alpha if present.
    """
    missing = [key for key in ("labels", "predictions", "radii") if key not in certification]
    if missing:
        raise ValueError(f"certification lacks {missing}: pass the dict of certify_loader")
    labels = torch.as_tensor(certification["labels"], dtype=torch.int64)
    predictions = torch.as_tensor(certification["predictions"], dtype=torch.int64)
    certified = torch.as_tensor(certification["radii"], dtype=torch.float64)
    if not labels.numel() or labels.shape != predictions.shape or labels.shape != certified.shape:
        raise ValueError(f"certification must hold equal-length non-empty labels, predictions and radii, got "
                         f"{labels.numel()}, {predictions.numel()} and {certified.numel()}")
    radii = _check_values(radii, "radii", check_sigma)
    correct = predictions == labels
    result = {key: certification[key] for key in ("sigma", "n0", "n", "alpha") if key in certification}
    result.update({
        "radii": radii,
        "certified_accuracy": [float((correct & (certified >= r)).double().mean()) for r in radii],
        "abstain_rate": float((predictions == ABSTAIN).double().mean()),
        "num_samples": int(labels.numel()),
    })
    return result
