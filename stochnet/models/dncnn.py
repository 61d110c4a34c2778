"""DnCNN (Zhang et al., "Beyond a Gaussian Denoiser", 2017): a residual CNN denoiser."""
import numbers

from torch import nn


class DnCNN(nn.Module):
    """A denoiser that predicts the residual (the noise) and returns ``x - residual(x)``.

    Layers, all 3x3 convolutions with padding 1 (the image keeps its size): a conv
    (``in_channels -> width``) and ReLU; ``blocks`` hidden blocks of conv (no bias), BatchNorm and
    ReLU; a last conv (``width -> in_channels``, no bias) that outputs the residual. The defaults
    are the Dauphine report's 10 hidden blocks and DnCNN's 64 channels (DnCNN's own 17 layers are
    ``blocks=15``).

    The last conv starts at zero (DnCNN initializes it like the others), so an untrained DnCNN is
    the identity and a classifier behind it starts with its own accuracy.
    """

    def __init__(self, in_channels, blocks=10, width=64):
        super().__init__()
        for value, name, low in ((in_channels, "in_channels", 1), (blocks, "blocks", 0), (width, "width", 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.in_channels, self.blocks, self.width = int(in_channels), int(blocks), int(width)
        layers = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(blocks):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, in_channels, 3, padding=1, bias=False))
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self):
        for module in self.layers:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        nn.init.zeros_(self.layers[-1].weight)

    def residual(self, x):
        """The predicted noise of ``x`` (N, in_channels, H, W)."""
        return self.layers(x)

    def forward(self, x):
        return x - self.residual(x)

    def extra_repr(self):
        return f"in_channels={self.in_channels}, blocks={self.blocks}, width={self.width}"
