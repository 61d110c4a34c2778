"""The models stochnet trains and attacks, by name; each takes inputs in [0, 1] and normalizes inside."""
from .basicnet import BasicNet
from .cifar_resnet import CifarResNet
from .denoised import DenoisedClassifier
from .dncnn import DnCNN
from .mnist_cnn import MnistCNN
from .normalize import Normalize
from .preact_resnet import PreActBlock, PreActResNet
from .registry import MODEL_NAMES, MODELS, build_model
from .vgg import VGG, CifarVGG
from .wide_resnet import WideBlock, WideResNet

__all__ = ["build_model", "MODEL_NAMES", "MODELS", "Normalize", "CifarResNet", "PreActResNet", "PreActBlock",
           "BasicNet", "MnistCNN", "DnCNN", "DenoisedClassifier", "WideResNet", "WideBlock", "CifarVGG", "VGG"]
