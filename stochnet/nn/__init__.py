"""Drop-in modules over the fused ops."""
from .stoc_relu_ema import StocReLUEMA

__all__ = ["StocReLUEMA"]
