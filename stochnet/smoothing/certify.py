"""The statistics of Cohen et al.'s PREDICT and CERTIFY, vectorized over a batch.

Inputs are counts (tensors, arrays or numbers); outputs are float64 numpy arrays.
"""
import importlib

import numpy as np

from .checks import check_alpha


def _stats():
    """scipy.stats, imported on first use: it takes over a second, too much for ``import stochnet``."""
    return importlib.import_module("scipy.stats")

def _counts(values, name):
    array = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    if array.dtype.kind not in "iu" or (array < 0).any():
        raise ValueError(f"{name} must be non-negative integer counts, got {array!r}")
    return array.astype(np.int64)


def clopper_pearson_lower(successes, trials, alpha):
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound of a binomial proportion.

    ``Beta(alpha; k, n - k + 1)`` quantile for k successes in n trials, 0 when k = 0;
    ``alpha ** (1 / n)`` when k = n. Equals statsmodels'
    ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``, which Cohen et al. use.
    """
    k, n = _counts(successes, "successes"), _counts(trials, "trials")
    alpha = check_alpha(alpha)
    if (n < 1).any() or (k > n).any():
        raise ValueError(f"need 1 <= trials and successes <= trials, got successes={k!r}, trials={n!r}")
    with np.errstate(invalid="ignore"):
        bound = _stats().beta.ppf(alpha, k, n - k + 1)
    return np.where(k == 0, 0.0, bound)


def binomial_p_value(top, runner_up):
    """Two-sided p-value of the binomial test of ``top`` successes in ``top + runner_up`` trials at p = 1/2.

    The binomial with p = 1/2 is symmetric, so it is ``min(1, 2 * P[X <= min(top, runner_up)])``,
    the same as ``scipy.stats.binomtest(top, top + runner_up).pvalue``; 1 when both are 0.
    """
    top, runner_up = _counts(top, "top"), _counts(runner_up, "runner_up")
    total = top + runner_up
    tail = _stats().binom.cdf(np.minimum(top, runner_up), total, 0.5)
    return np.minimum(1.0, 2.0 * tail)


def certified_radius(sigma, p_lower):
    """The certified L2 radius ``sigma * Phi^-1(pA_lower)`` (negative below pA = 1/2)."""
    return sigma * _stats().norm.ppf(np.asarray(p_lower, dtype=np.float64))
