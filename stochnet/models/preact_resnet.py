"""Pre-activation ResNet (ResNet-V2, He et al. 2016, "Identity Mappings in Deep Residual Networks")."""
from torch import nn

from ..nn.convert import InjectionSite
from .init import init_conv_weights


class PreActBlock(nn.Module):
    """``x + conv(relu(bn(conv(relu(bn(x))))))``, with a 1x1 conv on the pre-activated input where the shape changes.

    Each ReLU call site has its own module, so ``convert(..., "anis2")`` gives each its own
    noise statistics; ``noise`` on the residual sum is where ``convert(..., "l2p")`` puts
    Learn2Perturb's injection (the identity until then).
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.noise = InjectionSite()

    def forward(self, x):
        out = self.relu1(self.bn1(x))
        # The projection shortcut sees the pre-activated input, as in the paper; the identity one x itself.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return self.noise(out + shortcut)


class PreActResNet(nn.Module):
    """Normalize, 3x3 conv stem, stages of :class:`PreActBlock`, final BN-ReLU, global average pool, linear.

    For 32x32 inputs: the stem keeps the resolution, each stage after the first halves it.
    ``stem_noise`` after the stem conv marks Learn2Perturb's first injection.
    """

    def __init__(self, blocks_per_stage, stage_channels, num_classes, in_channels, normalize):
        super().__init__()
        if len(blocks_per_stage) != len(stage_channels):
            raise ValueError(f"blocks_per_stage and stage_channels must have one entry per stage, got "
                             f"{blocks_per_stage} and {stage_channels}")
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, stage_channels[0], 3, padding=1, bias=False)
        self.stem_noise = InjectionSite()
        channels = stage_channels[0]
        for index, (blocks, out_channels) in enumerate(zip(blocks_per_stage, stage_channels)):
            stride = 1 if index == 0 else 2
            layers = [PreActBlock(channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
                      for i in range(blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
            channels = out_channels
        self.num_stages = len(stage_channels)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_weights(self)

    def forward(self, x):
        x = self.stem_noise(self.conv1(self.normalize(x)))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(self.avgpool(self.relu(self.bn(x))).flatten(1))
