"""The ``stochnet`` command: train, eval, certify, bench."""
from .main import main

__all__ = ["main"]
