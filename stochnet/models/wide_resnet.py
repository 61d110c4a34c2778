"""Wide ResNet for 32x32 inputs (Zagoruyko & Komodakis 2016), the CIFAR WRN of adversarial training
(Madry et al.'s and TRADES' WRN-34-10)."""
import numbers

from torch import nn

from ..nn.convert import InjectionSite
from .init import init_conv_weights
from .normalize import Normalize
from .preact_resnet import PreActBlock


class WideBlock(PreActBlock):
    """The WRN basic block: :class:`PreActBlock` (BN-ReLU-conv3x3-BN-ReLU-conv3x3, a 1x1 conv on the
    pre-activated input where the shape changes) with optional dropout between the two convs."""

    def __init__(self, in_channels, out_channels, stride=1, dropout=0.0):
        super().__init__(in_channels, out_channels, stride)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x):
        out = self.relu1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.dropout is not None:
            out = self.dropout(out)
        return self.noise(self.conv2(out) + shortcut)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: normalize, 3x3 conv stem (16 channels), three stages of
    ``(depth - 4) / 6`` :class:`WideBlock` with 16k / 32k / 64k channels (k = ``widen_factor``),
    final BN-ReLU, global average pool, linear.

    ``channels`` are the stem's and stages' channels before widening, (16, 32, 64) in the paper
    (``build_model``'s ``width`` scales them). The first stage keeps the resolution, the next two
    halve it. ``dropout`` (0 by default, as in adversarial training) runs between each block's two
    convs. Every ReLU call site is its own ``nn.ReLU``, so ``convert(..., "anis2")`` replaces each;
    ``stem_noise`` and each block's ``noise`` mark Learn2Perturb's places.
    """

    def __init__(self, depth, widen_factor, channels=(16, 32, 64), num_classes=10, in_channels=3,
                 normalize=None, dropout=0.0):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be an integer 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), "
                             f"got depth={depth!r}")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, numbers.Integral) or widen_factor < 1:
            raise ValueError(f"widen_factor must be a positive integer, got widen_factor={widen_factor!r}")
        if len(channels) != 3:
            raise ValueError(f"channels must give the stem's and the three stages' base widths (3 values), "
                             f"got {channels}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got dropout={dropout!r}")
        self.depth, self.widen_factor = int(depth), int(widen_factor)
        blocks = (self.depth - 4) // 6
        self.normalize = Normalize(None, None) if normalize is None else normalize
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.stem_noise = InjectionSite()
        width = channels[0]
        for index, base in enumerate(channels):
            out_channels = base * self.widen_factor
            stride = 1 if index == 0 else 2
            layers = [WideBlock(width if i == 0 else out_channels, out_channels, stride if i == 0 else 1, dropout)
                      for i in range(blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
            width = out_channels
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        init_conv_weights(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        x = self.stem_noise(self.conv1(self.normalize(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(self.relu(self.bn(x))).flatten(1))
