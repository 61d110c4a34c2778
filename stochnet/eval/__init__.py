"""Evaluation of models under attack."""
from .robust import robust_accuracy

__all__ = ["robust_accuracy"]
