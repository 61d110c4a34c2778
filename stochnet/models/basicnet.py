"""BasicNet: the small CNN of the student report (seeds/001), PyTorch's CIFAR-10 tutorial network."""
from torch import nn

from ..nn.convert import InjectionSite


class BasicNet(nn.Module):
    """Two blocks of 5x5 conv, 2x2 max-pool and ReLU, then three linear layers (120, 84, classes).

    The report describes "two blocks of a convolutional layer, a pooling layer and a ReLU,
    then three linear layers" and trains it on CIFAR-10; the sizes are those of PyTorch's
    CIFAR-10 tutorial, which it follows (6 and 16 channels at width 1). Built for 32x32
    inputs: the adaptive pool before the flatten is the identity there and lets other sizes
    through (as torchvision's VGG does). ``noise1`` / ``noise2`` after each conv mark where
    ``convert(..., "l2p")`` puts Learn2Perturb's noise.
    """

    def __init__(self, channels, num_classes, in_channels, normalize):
        super().__init__()
        first, second = channels
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, first, 5)
        self.noise1 = InjectionSite()
        self.pool1 = nn.MaxPool2d(2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(first, second, 5)
        self.noise2 = InjectionSite()
        self.pool2 = nn.MaxPool2d(2)
        self.relu2 = nn.ReLU()
        self.resize = nn.AdaptiveAvgPool2d(5)
        self.fc1 = nn.Linear(second * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.relu1(self.pool1(self.noise1(self.conv1(self.normalize(x)))))
        x = self.relu2(self.pool2(self.noise2(self.conv2(x))))
        x = self.resize(x).flatten(1)
        return self.fc3(self.relu4(self.fc2(self.relu3(self.fc1(x)))))
