"""The certification statistics against hand-computed values and scipy: the one-sided
Clopper-Pearson lower bound, the two-sided binomial test of PREDICT, and the radius."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from stochnet.smoothing import binomial_p_value, certified_radius, clopper_pearson_lower


@pytest.mark.parametrize("n,alpha", [(1, 0.05), (10, 0.001), (100, 0.001), (100000, 0.001), (7, 0.3)])
def test_all_successes_bound_is_alpha_to_one_over_n(n, alpha):
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-10)


def test_hand_computed_bounds():
    # k = 1 of n = 2: Beta(1, 2) has cdf 1 - (1 - p)^2, so the bound is 1 - sqrt(1 - alpha)
    assert clopper_pearson_lower(1, 2, 0.05) == pytest.approx(1 - math.sqrt(0.95), rel=1e-10)
    # k = n - 1: Beta(n - 1, 2) has cdf n p^(n-1) - (n-1) p^n; solve it for n = 3, alpha = 0.1
    bound = clopper_pearson_lower(2, 3, 0.1)
    assert 3 * bound**2 - 2 * bound**3 == pytest.approx(0.1, rel=1e-9)
    assert clopper_pearson_lower(0, 50, 0.01) == 0.0
    # 10 of 10 at alpha = 0.001 only just passes 1/2: Cohen's abstention threshold
    assert clopper_pearson_lower(10, 10, 0.001) == pytest.approx(0.501187, abs=1e-6)
    assert clopper_pearson_lower(9, 10, 0.001) < 0.5


def test_bounds_match_scipy_beta_vectorized():
    n = np.array([5, 20, 100, 1000, 100000])
    k = np.array([3, 19, 50, 990, 99000])
    alpha = 0.001
    np.testing.assert_allclose(clopper_pearson_lower(torch.tensor(k), n, alpha),
                               scipy.stats.beta.ppf(alpha, k, n - k + 1), rtol=1e-12)
    bounds = clopper_pearson_lower(np.arange(101), 100, 0.01)
    assert (np.diff(bounds) > 0).all() and (bounds < np.arange(101) / 100 + 1e-12).all()


@pytest.mark.parametrize("top,runner_up", [(10, 0), (9, 1), (20, 10), (5, 5), (0, 0), (1, 0), (60, 40), (3, 7)])
def test_p_value_matches_scipy_binomtest(top, runner_up):
    expected = scipy.stats.binomtest(top, top + runner_up).pvalue if top + runner_up else 1.0
    assert binomial_p_value(top, runner_up) == pytest.approx(expected, rel=1e-12)


def test_hand_computed_p_values():
    assert binomial_p_value(10, 0) == pytest.approx(2 * 0.5**10)
    assert binomial_p_value(9, 1) == pytest.approx(2 * 11 / 1024)
    assert binomial_p_value(5, 5) == 1.0
    np.testing.assert_allclose(binomial_p_value(torch.tensor([10, 9]), torch.tensor([0, 1])),
                               [2 * 0.5**10, 2 * 11 / 1024])


def test_radius_formula():
    assert certified_radius(0.5, scipy.stats.norm.cdf(1.0)) == pytest.approx(0.5)
    assert certified_radius(0.25, 0.5) == 0.0
    assert certified_radius(1.0, 0.975) == pytest.approx(1.959964, abs=1e-6)
    assert certified_radius(0.25, 0.3) < 0


@pytest.mark.parametrize("args,message", [
    ((5, 10, 0.0), "alpha"), ((5, 10, 1.0), "alpha"), ((5, 10, True), "alpha"),
    ((11, 10, 0.01), "successes <= trials"), ((0, 0, 0.01), "trials"),
    ((-1, 10, 0.01), "successes"), ((2.5, 10, 0.01), "successes"),
])
def test_bad_bound_arguments_raise(args, message):
    with pytest.raises(ValueError, match=message):
        clopper_pearson_lower(*args)


def test_bad_p_value_arguments_raise():
    with pytest.raises(ValueError, match="runner_up"):
        binomial_p_value(3, -1)
    with pytest.raises(ValueError, match="top"):
        binomial_p_value(np.array([1.5]), 1)
