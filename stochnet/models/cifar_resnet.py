"""ResNet-V1 for 32x32 inputs (He et al. 2016), built from torchvision's BasicBlock."""
from torch import nn
from torchvision.models.resnet import BasicBlock

from ..nn.convert import InjectionSite
from .init import init_conv_weights


class CifarResNet(nn.Module):
    """Normalize, 3x3 conv-BN-ReLU stem, stages of torchvision ``BasicBlock``, global average pool, linear.

    ``stage_channels`` gives each stage's width and ``blocks_per_stage`` its depth; the first
    stage keeps the resolution and each later one halves it. Where a block changes the shape
    its shortcut is a 1x1 conv + BN (the paper's option B). The blocks are torchvision's so
    that ``stochnet.nn.convert`` gives each of their ReLUs its own noise module and puts
    Learn2Perturb's noise on their residual sums; the stem's ``stem_noise`` marks the place
    for the stem's (the identity until then).
    """

    def __init__(self, blocks_per_stage, stage_channels, num_classes, in_channels, normalize):
        super().__init__()
        if len(blocks_per_stage) != len(stage_channels):
            raise ValueError(f"blocks_per_stage and stage_channels must have one entry per stage, got "
                             f"{blocks_per_stage} and {stage_channels}")
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, stage_channels[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_channels[0])
        self.stem_noise = InjectionSite()
        self.relu = nn.ReLU(inplace=True)
        channels = stage_channels[0]
        for index, (blocks, out_channels) in enumerate(zip(blocks_per_stage, stage_channels)):
            stride = 1 if index == 0 else 2
            self.add_module(f"layer{index + 1}", _stage(channels, out_channels, blocks, stride))
            channels = out_channels
        self.num_stages = len(stage_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_weights(self)

    def forward(self, x):
        x = self.relu(self.stem_noise(self.bn1(self.conv1(self.normalize(x)))))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def _stage(in_channels, out_channels, blocks, stride):
    layers = []
    for index in range(blocks):
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_channels))
        layers.append(BasicBlock(in_channels, out_channels, stride, downsample))
        in_channels, stride = out_channels, 1
    return nn.Sequential(*layers)
