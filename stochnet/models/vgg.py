"""VGG-16 with batch normalization (Simonyan & Zisserman 2015; BN as in torchvision's ``vgg16_bn``)."""
from torch import nn

from .normalize import Normalize

# Configuration "D" (16 weight layers): the output channels of each 3x3 conv as a multiple of the
# stage width, "M" a 2x2 max-pool.
_VGG16 = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M")


def vgg_features(in_channels, base, config=_VGG16):
    """torchvision's ``make_layers(cfg, batch_norm=True)``: conv3x3 (with bias)-BN-ReLU per entry, a
    max-pool per "M", in one ``nn.Sequential`` (so its indices, and state-dict keys, are torchvision's)."""
    layers = []
    for entry in config:
        if entry == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            out_channels = entry * base
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
                       nn.ReLU(inplace=True)]
            in_channels = out_channels
    return nn.Sequential(*layers), in_channels


def _init(model):
    # torchvision's VGG initialization.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


class CifarVGG(nn.Module):
    """VGG-16-BN for 32x32 inputs: normalize, the 13 conv-BN-ReLU layers and 5 max-pools of
    configuration D, then one linear layer 512 -> classes on the 1x1 map (the CIFAR VGG of
    adversarial-robustness code). ``channels`` is the first stage's width (64); the adaptive pool
    is the identity at 32x32 and lets other sizes through. Every ReLU is its own ``nn.ReLU``, and
    ``convert(..., "l2p")`` puts its noise after each conv-BN pair of ``features``."""

    def __init__(self, channels=(64,), num_classes=10, in_channels=3, normalize=None):
        super().__init__()
        self.normalize = Normalize(None, None) if normalize is None else normalize
        self.features, width = vgg_features(in_channels, channels[0])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        _init(self)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(self.normalize(x))).flatten(1))


class VGG(nn.Module):
    """torchvision's ``vgg16_bn`` (for 224x224 inputs) behind a normalize: the 13 conv-BN-ReLU layers,
    a 7x7 adaptive average pool, and the classifier Linear(512*7*7, 4096)-ReLU-Dropout-Linear(4096,
    4096)-ReLU-Dropout-Linear(4096, classes). The submodules are torchvision's, under its names, so
    a torchvision ``vgg16_bn`` state dict loads into it (width 1, no normalize statistics).
    ``channels`` is the first stage's width (64; the 4096-unit layers do not scale)."""

    def __init__(self, channels=(64,), num_classes=1000, in_channels=3, normalize=None, dropout=0.5):
        super().__init__()
        self.normalize = Normalize(None, None) if normalize is None else normalize
        self.features, width = vgg_features(in_channels, channels[0])
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(width * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes))
        _init(self)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(self.normalize(x))).flatten(1))
