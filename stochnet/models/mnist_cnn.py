"""A small, fast CNN for 28x28 MNIST: the model of the driver's default job."""
from torch import nn

from ..nn.convert import InjectionSite


class MnistCNN(nn.Module):
    """Two blocks of 3x3 conv, ReLU and 2x2 max-pool, then one linear layer.

    Built for 28x28 inputs: the adaptive pool before the flatten is the identity there
    (7x7 maps) and lets other sizes through. ``noise1`` / ``noise2`` after each conv mark
    where ``convert(..., "l2p")`` puts Learn2Perturb's noise.
    """

    def __init__(self, channels, num_classes, in_channels, normalize):
        super().__init__()
        first, second = channels
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, first, 3, padding=1)
        self.noise1 = InjectionSite()
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(first, second, 3, padding=1)
        self.noise2 = InjectionSite()
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.resize = nn.AdaptiveAvgPool2d(7)
        self.fc = nn.Linear(second * 7 * 7, num_classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.noise1(self.conv1(self.normalize(x)))))
        x = self.pool2(self.relu2(self.noise2(self.conv2(x))))
        return self.fc(self.resize(x).flatten(1))
