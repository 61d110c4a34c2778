"""Drop-in modules over the fused ops, and conversion of a teacher into a stochastic student."""
from .convert import KINDS, InjectionSite, ResidualBlock, convert
from .perturbation import (PerturbationInjection, harmonic_tau, learn2perturb_regularizer,
                           split_learn2perturb_params, theta_parameters)
from .pni import PNI, GaussianNoise, PNIConv2d, PNILinear, pni_param_groups
from .stoc_relu_ema import StocReLUEMA, sync_stoc_relu

__all__ = ["StocReLUEMA", "sync_stoc_relu", "InjectionSite", "PerturbationInjection", "harmonic_tau", "learn2perturb_regularizer",
           "theta_parameters", "split_learn2perturb_params", "PNIConv2d", "PNILinear", "PNI",
           "GaussianNoise", "pni_param_groups", "convert", "KINDS", "ResidualBlock"]
