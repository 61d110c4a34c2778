"""Randomized smoothing: the smoothed classifier, certification statistics and evaluation grids."""
from .certify import binomial_p_value, certified_radius, clopper_pearson_lower
from ..output import write_json
from .evaluate import certified_accuracy, certify_loader, smoothed_accuracy_grid
from .smooth import ABSTAIN, Smooth

__all__ = ["ABSTAIN", "Smooth", "binomial_p_value", "certified_accuracy", "certified_radius", "certify_loader",
           "clopper_pearson_lower", "smoothed_accuracy_grid", "write_json"]
