"""Copies of inputs through a stochastic model, each copy with all of the model's noise drawn anew."""
from .coupling import PER_ELEMENT, PER_PASS, copies_in_pass, copies_per_pass, noise_coupling
from .engine import CopyEngine, per_copy_mean, repeat_rows
from .probe import probe

__all__ = ["CopyEngine", "per_copy_mean", "repeat_rows", "probe", "PER_ELEMENT", "PER_PASS", "copies_in_pass",
           "copies_per_pass", "noise_coupling"]
