"""Wide ResNets and VGG-16-BN: published sizes, shapes, conversion into ANIS² students, and bad arguments."""
import pytest
import torch
import torchvision
from torch import nn

from stochnet.models import MODEL_NAMES, VGG, CifarVGG, WideResNet, build_model
from stochnet.nn import PerturbationInjection, StocReLUEMA, convert

NEW = ("wrn34_10", "wrn28_10", "wrn28_4", "vgg16_bn", "vgg16_bn_imagenet")


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _meta(name, **kwargs):
    """The model with its parameters on the meta device: counted without allocating or initializing 100M+ floats."""
    with torch.device("meta"):
        return build_model(name, **kwargs)


def _wrn_formula(depth, k, num_classes=10, in_channels=3):
    """Parameters of WRN-depth-k (pre-activation blocks, 3x3 convs without bias, 1x1 conv shortcut where the
    width changes, BN weight + bias, final BN, linear with bias), counted by hand."""
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    total = 9 * in_channels * 16  # stem conv
    for w_in, w in zip(widths, widths[1:]):
        total += 2 * w_in + 9 * w_in * w + 2 * w + 9 * w * w + (w_in * w if w_in != w else 0)  # first block
        total += (n - 1) * (2 * w + 9 * w * w + 2 * w + 9 * w * w)  # the other blocks
    return total + 2 * widths[-1] + widths[-1] * num_classes + num_classes


def test_new_models_are_registered():
    assert set(NEW) <= set(MODEL_NAMES) and MODEL_NAMES[-len(NEW):] == NEW


@pytest.mark.parametrize("name, depth, k, count, published", [
    # Zagoruyko & Komodakis 2016, Table 4: WRN-28-10 36.5M; WRN-34-10 46.2M as cited by TRADES / RobustBench
    # (46,160,474 in Madry's / TRADES' PyTorch WideResNet); WRN-28-4 5.85M (5.8-5.9M in the literature).
    # The papers round to 0.1M (0.01M for 5.85M): the tolerance is half a unit of that rounding.
    ("wrn28_10", 28, 10, 36_479_194, (36.5e6, 0.05e6)),
    ("wrn34_10", 34, 10, 46_160_474, (46.2e6, 0.05e6)),
    ("wrn28_4", 28, 4, 5_849_050, (5.85e6, 0.005e6)),
])
def test_wide_resnet_parameter_counts(name, depth, k, count, published):
    model = _meta(name)
    assert _count(model) == count == _wrn_formula(depth, k)
    value, tolerance = published
    assert abs(count - value) <= tolerance
    assert (model.depth, model.widen_factor) == (depth, k)


def test_vgg16_bn_imagenet_is_torchvisions_vgg16_bn():
    model = _meta("vgg16_bn_imagenet", num_classes=1000)
    with torch.device("meta"):
        reference = torchvision.models.vgg16_bn()
    # torchvision's vgg16_bn has 138,365,992 parameters (its weights table: num_params=138365992).
    assert _count(model) == _count(reference) == 138_365_992
    # Same modules under the same names: a torchvision vgg16_bn state dict loads into it.
    assert [(k, v.shape) for k, v in model.state_dict().items()] == \
        [(k, v.shape) for k, v in reference.state_dict().items()]


def test_cifar_vgg16_bn_parameter_count():
    # 14,728,266 = torchvision vgg16_bn's features (13 convs with bias: 14,714,688; their BN weight + bias:
    # 2 * 4,224 = 8,448) + Linear(512, 10) (5,130): the 14.7M of the CIFAR VGG-16 (e.g. kuangliu/pytorch-cifar).
    model = _meta("vgg16_bn")
    with torch.device("meta"):
        features = torchvision.models.vgg16_bn().features
    assert _count(model.features) == _count(features) == 14_714_688 + 8_448
    assert _count(model) == 14_728_266
    assert [type(m) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))] == \
        [nn.Conv2d] * 13 + [nn.Linear]
    assert model.classifier.in_features == 512


@pytest.mark.parametrize("name, shape", [("wrn34_10", (2, 3, 32, 32)), ("wrn28_10", (2, 3, 32, 32)),
                                         ("wrn28_4", (2, 3, 32, 32)), ("vgg16_bn", (2, 3, 32, 32)),
                                         ("vgg16_bn_imagenet", (1, 3, 64, 64))])
def test_forward_gives_one_row_of_logits_per_image(name, shape):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()
    with torch.no_grad():
        out = model(torch.rand(*shape))
    assert out.shape == (shape[0], 7) and torch.isfinite(out).all()


def _relu_count(name):
    if name.startswith("wrn"):
        depth = int(name[3:5])
        return 2 * 3 * (depth - 4) // 6 + 1  # two per block, then the final BN-ReLU
    return 13 + (2 if name.endswith("imagenet") else 0)  # one per conv (+ the classifier's two)


@pytest.mark.parametrize("name", NEW)
def test_anis2_replaces_every_relu(name):
    # Reduced width (same layers, fewer channels) keeps the deep copy and the shape-reading forward fast.
    torch.manual_seed(0)
    model = build_model(name, width=0.25 if name.startswith("wrn") else 0.125).eval()
    relus = [m for m in model.modules() if type(m) is nn.ReLU]
    assert len(relus) == _relu_count(name)
    x = torch.rand(2, 3, 32, 32)
    student = convert(model, "anis2", example_input=x, gamma=0.0)
    stoc = [m for m in student.modules() if isinstance(m, StocReLUEMA)]
    assert len(stoc) == len(relus) and not any(type(m) is nn.ReLU for m in student.modules())
    assert torch.equal(student(x), model(x))


def test_l2p_puts_noise_on_every_wide_block_and_after_every_vgg_conv():
    wrn = build_model("wrn28_4", width=0.25).eval()
    student = convert(wrn, "l2p", example_input=torch.rand(1, 3, 32, 32))
    assert len([m for m in student.modules() if isinstance(m, PerturbationInjection)]) == 1 + 12
    vgg = build_model("vgg16_bn", width=0.125).eval()
    student = convert(vgg, "l2p", example_input=torch.rand(1, 3, 32, 32))
    assert len([m for m in student.modules() if isinstance(m, PerturbationInjection)]) == 13


def test_width_scales_the_base_channels():
    model = _meta("wrn28_10", width=0.5)
    assert model.conv1.out_channels == 8 and model.fc.in_features == 320
    vgg = _meta("vgg16_bn_imagenet", width=0.5)
    assert vgg.features[0].out_channels == 32 and vgg.classifier[0].in_features == 256 * 49
    assert vgg.classifier[3].out_features == 4096


@pytest.mark.parametrize("depth", [30, 33, 4, 0, -2, 28.0, True, "28"])
def test_bad_depth_raises(depth):
    with pytest.raises(ValueError, match=r"depth must be an integer 6n \+ 4.*depth="):
        WideResNet(depth, 10)


@pytest.mark.parametrize("widen_factor", [0, -1, 2.5, True, "10"])
def test_bad_widen_factor_raises(widen_factor):
    with pytest.raises(ValueError, match="widen_factor must be a positive integer.*widen_factor="):
        WideResNet(28, widen_factor)


def test_dropout_is_off_by_default_and_between_the_block_convs():
    assert not any(isinstance(m, nn.Dropout) for m in WideResNet(10, 1).modules())
    model = WideResNet(10, 1, dropout=0.3)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3] * 3
    with pytest.raises(ValueError, match="dropout"):
        WideResNet(10, 1, dropout=1.0)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_classes_build_directly_with_defaults():
    assert CifarVGG(num_classes=5)(torch.rand(1, 3, 32, 32)).shape == (1, 5)
    with torch.device("meta"):
        assert VGG().classifier[-1].out_features == 1000
