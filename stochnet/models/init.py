"""Weight initialization shared by the ResNet-style models."""
from torch import nn


def init_conv_weights(model):
    """He-normal initialization (``fan_out``, ReLU) of every ``Conv2d`` weight of ``model``, in module order."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
