"""``build_model(name, ...)``: every model of stochnet by name (:data:`MODELS`), with its width and
normalization."""
import math
import numbers
from typing import NamedTuple

from ..registry import Registry
from .basicnet import BasicNet
from .cifar_resnet import CifarResNet
from .mnist_cnn import MnistCNN
from .normalize import Normalize
from .preact_resnet import PreActResNet
from .vgg import VGG, CifarVGG
from .wide_resnet import WideResNet


class Architecture(NamedTuple):
    """A model by name: its class, its channels at width 1, and the extra leading arguments of the
    class (blocks per stage for the ResNets, depth and widen factor for the Wide ResNets)."""

    cls: type
    channels: tuple
    leading: tuple = ()


MODELS = Registry("model", {
    "resnet20": Architecture(CifarResNet, (16, 32, 64), ((3, 3, 3),)),
    "resnet32": Architecture(CifarResNet, (16, 32, 64), ((5, 5, 5),)),
    "resnet44": Architecture(CifarResNet, (16, 32, 64), ((7, 7, 7),)),
    "resnet56": Architecture(CifarResNet, (16, 32, 64), ((9, 9, 9),)),
    "resnet18": Architecture(CifarResNet, (64, 128, 256, 512), ((2, 2, 2, 2),)),
    "preact_resnet18": Architecture(PreActResNet, (64, 128, 256, 512), ((2, 2, 2, 2),)),
    "basicnet": Architecture(BasicNet, (6, 16)),
    "mnist_cnn": Architecture(MnistCNN, (16, 32)),
    "wrn34_10": Architecture(WideResNet, (16, 32, 64), (34, 10)),
    "wrn28_10": Architecture(WideResNet, (16, 32, 64), (28, 10)),
    "wrn28_4": Architecture(WideResNet, (16, 32, 64), (28, 4)),
    "vgg16_bn": Architecture(CifarVGG, (64,)),
    "vgg16_bn_imagenet": Architecture(VGG, (64,)),
})
MODEL_NAMES = MODELS.names()


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def scaled_channels(channels, width, model_name):
    """``channels`` multiplied by ``width``, each of which must come out a whole number."""
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    scaled = []
    for count in channels:
        value = count * width
        if abs(value - round(value)) > 1e-9:
            raise ValueError(f"width={width} gives {value:g} channels for the {count}-channel layers of "
                             f"{model_name}; choose a width that makes every channel count "
                             f"{channels} a whole number (for example 1, 1.5, 2 or 4)")
        scaled.append(int(round(value)))
    return tuple(scaled)


def build_model(name, num_classes=10, in_channels=3, mean=None, std=None, width=1.0):
    """A freshly initialized model ``name`` (one of :data:`MODEL_NAMES`) that takes inputs in [0, 1].

    Its first module is ``Normalize(mean, std)`` (one value per input channel; the identity
    when both are None). ``width`` multiplies every conv layer's channel count (PNI's wide
    ResNet-20s use 1.5, 2 and 4) and must give whole numbers.

    - ``resnet20`` / ``resnet32`` / ``resnet44`` / ``resnet56``: CIFAR ResNet-V1 (He et al.
      2016), 16/32/64 channels, (depth - 2) / 6 torchvision BasicBlocks per stage.
    - ``resnet18``: the same design with ResNet-18's 64..512 channels and [2, 2, 2, 2]
      blocks for 32x32 inputs, the model of Learn2Perturb's public code (its "ResNet-V2").
    - ``preact_resnet18``: pre-activation ResNet-18 (ResNet-V2) for 32x32 inputs, the model
      Learn2Perturb's paper names.
    - ``basicnet``: the two-conv BasicNet of the student report (32x32 inputs).
    - ``mnist_cnn``: a small two-conv CNN for 28x28 MNIST.
    - ``wrn34_10`` / ``wrn28_10`` / ``wrn28_4``: Wide ResNet WRN-depth-k (Zagoruyko & Komodakis
      2016) for 32x32 inputs, pre-activation blocks, dropout 0; WRN-34-10 is the model of Madry
      et al.'s and TRADES' CIFAR-10 adversarial training. ``width`` scales its 16/32/64 base
      channels (before the widen factor k).
    - ``vgg16_bn``: VGG-16 with BatchNorm for 32x32 inputs (13 conv layers, one linear layer
      512 -> classes).
    - ``vgg16_bn_imagenet``: torchvision's ``vgg16_bn`` (7x7 adaptive pool, 4096-4096 classifier)
      for 224x224 inputs; pass ``num_classes=1000`` for ImageNet (the default here is 10).

    Example::

        model = stochnet.models.build_model("resnet20", mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    """
    cls, channels, leading = MODELS.get(name)
    num_classes = _positive_int(num_classes, "num_classes")
    in_channels = _positive_int(in_channels, "in_channels")
    normalize = Normalize(mean, std)
    if normalize.num_channels not in (None, in_channels):
        raise ValueError(f"mean and std must have one value per input channel ({in_channels}), "
                         f"got {normalize.num_channels}")
    return cls(*leading, scaled_channels(channels, width, name), num_classes=num_classes,
               in_channels=in_channels, normalize=normalize)
