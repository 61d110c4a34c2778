"""stochnet.models: shapes, published sizes, normalization inside the model, and conversion into students."""
import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from stochnet.models import MODEL_NAMES, Normalize, PreActBlock, build_model
from stochnet.nn import KINDS, PerturbationInjection, StocReLUEMA, convert
from stochnet.nn.convert import InjectionSite

ZERO_NOISE = {"anis2": {"gamma": 0.0}, "pni": {"alpha_init": 0.0}, "l2p": {"init": 0.0, "theta_min": 0.0}}
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# The large models run the tests over every name at a fraction of their width: the same layers, seconds less
# each (their full sizes are counted in tests/test_models_wide_vgg.py).
LIGHT_WIDTH = {"wrn34_10": 0.25, "wrn28_10": 0.25, "wrn28_4": 0.25, "vgg16_bn": 0.125, "vgg16_bn_imagenet": 0.125}


def _input_shape(name):
    return (1, 28, 28) if name == "mnist_cnn" else (3, 32, 32)


def _example(name, batch=2):
    return torch.rand(batch, *_input_shape(name), generator=torch.Generator().manual_seed(1))


def _teacher(name, **kwargs):
    """An eval-mode model with non-trivial BatchNorm statistics, so that a dropped or reordered BN would show."""
    torch.manual_seed(0)
    channels = _input_shape(name)[0]
    kwargs.setdefault("width", LIGHT_WIDTH.get(name, 1.0))
    model = build_model(name, in_channels=channels, mean=CIFAR_MEAN[:channels], std=CIFAR_STD[:channels], **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_for_its_input(name):
    model = build_model(name, num_classes=7, in_channels=_input_shape(name)[0], width=LIGHT_WIDTH.get(name, 1.0))
    out = model(_example(name))
    assert out.shape == (2, 7) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name, shape", [("mnist_cnn", (3, 32, 32)), ("basicnet", (1, 28, 28))])
def test_small_cnns_take_the_other_data_sets_size(name, shape):
    model = build_model(name, num_classes=10, in_channels=shape[0])
    assert model(torch.rand(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("name, published", [("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet44", 0.66e6),
                                             ("resnet56", 0.85e6), ("preact_resnet18", 11.17e6),
                                             ("resnet18", 11.17e6)])
def test_parameter_counts_match_the_published_ones(name, published):
    # The papers round to 0.01 M (half a unit: 5 K); He et al.'s option-A shortcuts of the CIFAR
    # ResNets have no weights, the 1x1-conv shortcuts here add under 3 K.
    assert abs(_count(build_model(name)) - published) < 5e3 + 3e3


def test_basicnet_is_the_reports_two_conv_three_linear_network():
    model = build_model("basicnet")
    assert [type(m) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))] == [nn.Conv2d] * 2 + [nn.Linear] * 3
    assert _count(model) == 62006  # PyTorch's CIFAR-10 tutorial network, which the report trains


@pytest.mark.parametrize("width", [1.5, 2, 4])
def test_width_multiplies_the_resnet_channels(width):
    model = build_model("resnet20", width=width)
    assert model.conv1.out_channels == 16 * width
    assert model.layer3[-1].conv2.out_channels == model.fc.in_features == 64 * width
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # Convolution weights grow with width squared: about 0.27 M * width^2 parameters.
    assert 0.9 < _count(model) / (0.27e6 * width ** 2) < 1.1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_normalization_is_the_first_layer(name):
    channels = _input_shape(name)[0]
    mean, std = CIFAR_MEAN[:channels], CIFAR_STD[:channels]
    model = build_model(name, in_channels=channels, mean=mean, std=std, width=LIGHT_WIDTH.get(name, 1.0)).eval()
    first = next(model.children())
    assert isinstance(first, Normalize)
    assert torch.equal(model.state_dict()["normalize.mean"].flatten(), torch.tensor(mean))
    x = _example(name)
    without = copy.deepcopy(model)
    without.normalize = nn.Identity()
    normalized = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(model(x), without(normalized), rtol=0, atol=1e-5)


def test_normalize_without_statistics_is_the_identity():
    model = build_model("mnist_cnn", in_channels=1)
    assert isinstance(model.normalize, Normalize) and not any(k.startswith("normalize") for k in model.state_dict())
    x = torch.rand(2, 1, 28, 28)
    assert model.normalize(x) is x


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_student_at_zero_noise_equals_teacher(name, kind):
    teacher = _teacher(name)
    x = _example(name)
    expected = teacher(x)
    student = convert(teacher, kind, example_input=x, **ZERO_NOISE[kind])
    assert not student.training
    assert torch.equal(student(x), expected)
    state = student.state_dict()
    assert all(torch.equal(state[key], value) for key, value in teacher.state_dict().items())


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet18", "mnist_cnn"])
@pytest.mark.parametrize("kind", KINDS)
def test_student_with_default_noise_is_stochastic_and_trains(name, kind):
    x = _example(name)
    student = convert(_teacher(name), kind, example_input=x).train()
    student(x).square().sum().backward()  # the first training batch also sets ANIS²'s sigma
    noise_parameters = [p for n, p in student.named_parameters() if n.endswith(("theta", "alpha"))]
    assert all(p.grad is not None for p in noise_parameters) and (kind == "anis2") != bool(noise_parameters)
    student.eval()
    assert not torch.equal(student(x), student(x))


def _injection_shapes(student):
    return [m.shape for m in student.modules() if isinstance(m, PerturbationInjection)]


def test_l2p_preact_resnet18_injects_after_the_stem_and_on_each_residual_sum():
    student = convert(_teacher("preact_resnet18"), "l2p", example_input=_example("preact_resnet18"))
    assert not any(isinstance(m, InjectionSite) for m in student.modules())
    assert isinstance(student.stem_noise, PerturbationInjection)
    assert all(isinstance(block.noise, PerturbationInjection) for layer in (student.layer1, student.layer4)
               for block in layer)
    assert _injection_shapes(student) == ([(64, 32, 32)] * 3 + [(128, 16, 16)] * 2 + [(256, 8, 8)] * 2
                                          + [(512, 4, 4)] * 2)


def test_l2p_resnet20_injects_after_the_stem_bn_and_on_each_block_sum():
    student = convert(_teacher("resnet20"), "l2p", example_input=_example("resnet20"))
    assert isinstance(student.stem_noise, PerturbationInjection)
    assert _injection_shapes(student) == [(16, 32, 32)] * 4 + [(32, 16, 16)] * 3 + [(64, 8, 8)] * 3
    assert not any(isinstance(m, PerturbationInjection) for m in student.layer2[0].downsample.modules())


def test_l2p_small_cnns_inject_after_each_conv():
    assert _injection_shapes(convert(_teacher("basicnet"), "l2p", example_input=_example("basicnet"))) == \
        [(6, 28, 28), (16, 10, 10)]
    assert _injection_shapes(convert(_teacher("mnist_cnn"), "l2p", example_input=_example("mnist_cnn"))) == \
        [(16, 28, 28), (32, 14, 14)]


def test_preact_block_noise_is_on_the_residual_sum():
    torch.manual_seed(0)
    block = PreActBlock(4, 8, stride=2).eval()
    x = torch.randn(3, 4, 6, 6)
    pre = torch.relu(block.bn1(x))
    body = block.conv2(torch.relu(block.bn2(block.conv1(pre))))
    assert torch.equal(block(x), body + block.shortcut(pre))
    block.noise = PerturbationInjection((8, 3, 3))
    torch.manual_seed(7)
    out = block(x)
    torch.manual_seed(7)
    assert torch.equal(out, block.noise(body + block.shortcut(pre)))


@pytest.mark.parametrize("name, relus", [("resnet20", 1 + 2 * 9), ("preact_resnet18", 2 * 8 + 1),
                                         ("basicnet", 4), ("mnist_cnn", 2)])
def test_anis2_gives_every_relu_call_site_its_own_module(name, relus):
    x = _example(name)
    student = convert(_teacher(name), "anis2", example_input=x)
    stoc = [m for m in student.modules() if isinstance(m, StocReLUEMA)]
    assert len(stoc) == relus and not any(type(m) is nn.ReLU for m in student.modules())
    if name == "resnet20":
        assert all(type(m) is not BasicBlock for m in student.modules())


def test_bad_names_and_widths_raise():
    with pytest.raises(ValueError, match="resnet20.*preact_resnet18.*mnist_cnn"):
        build_model("resnet19")
    with pytest.raises(ValueError, match="width=1.3 gives 20.8 channels"):
        build_model("resnet20", width=1.3)
    for width in (0, -1, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="width must be a positive number"):
            build_model("resnet20", width=width)
    for argument in ("num_classes", "in_channels"):
        with pytest.raises(ValueError, match=argument):
            build_model("resnet20", **{argument: 0})
    with pytest.raises(ValueError, match="one value per input channel"):
        build_model("mnist_cnn", in_channels=1, mean=CIFAR_MEAN, std=CIFAR_STD)
    with pytest.raises(ValueError, match="together"):
        build_model("resnet20", mean=CIFAR_MEAN)
    with pytest.raises(ValueError, match="std must be > 0"):
        build_model("resnet20", mean=CIFAR_MEAN, std=(0.2, 0.0, 0.2))


def test_injection_sites_turn_off_the_conv_bn_rule():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), InjectionSite()).eval()
    student = convert(model, "l2p", example_input=torch.rand(2, 3, 8, 8))
    assert [type(m) for m in student] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, PerturbationInjection]
    assert student[4].shape == (5, 4, 4) and type(model[4]) is InjectionSite
