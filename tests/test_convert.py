"""convert(): ANIS², PNI and Learn2Perturb students from torchvision ResNets and a Sequential CNN."""
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

import stochnet
from stochnet.nn import (KINDS, PerturbationInjection, PNIConv2d, PNILinear, ResidualBlock, StocReLUEMA,
                         convert)

ZERO_NOISE = {"anis2": {"gamma": 0.0}, "pni": {"alpha_init": 0.0}, "l2p": {"init": 0.0, "theta_min": 0.0}}


@pytest.fixture(autouse=True)
def torch_backend():
    with stochnet.use_backend("torch"):
        yield


def _randomize_bn(model):
    """Non-trivial BatchNorm statistics and affine parameters, so that a dropped BN would show."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return _randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()


def small_cnn():
    torch.manual_seed(0)
    return _randomize_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))).eval()


def _example():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_keeps_teacher_state(teacher, student):
    """Every teacher tensor is in the student under the same key with the same value."""
    state = student.state_dict()
    for key, value in teacher.state_dict().items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("kind", KINDS)
def test_resnet18_student_at_zero_noise_equals_teacher(resnet18, kind):
    x = _example()
    before = _snapshot(resnet18)
    expected = resnet18(x)
    student = convert(resnet18, kind, example_input=x, **ZERO_NOISE[kind])
    assert not student.training and all(not m.training for m in student.modules())
    assert torch.equal(student(x), expected)
    _assert_keeps_teacher_state(resnet18, student)
    # The teacher is untouched: same state, same module types, same outputs.
    after = resnet18.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert type(resnet18.layer1[0]) is BasicBlock and type(resnet18.conv1) is nn.Conv2d
    assert torch.equal(resnet18(x), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_sequential_cnn_student_at_zero_noise_equals_teacher(kind):
    teacher = small_cnn()
    x = _example()
    student = convert(teacher, kind, example_input=x, **ZERO_NOISE[kind])
    assert torch.equal(student(x), teacher(x))
    _assert_keeps_teacher_state(teacher, student)


@pytest.mark.parametrize("kind", KINDS)
def test_student_is_stochastic_in_eval_with_default_noise(kind):
    teacher = small_cnn()
    x = _example()
    student = convert(teacher, kind, example_input=x)
    if kind == "anis2":
        student.train()
        student(x)  # sigma starts at 0: one training batch sets it
        student.eval()
    first, second = student(x), student(x)
    assert not torch.equal(first, second)
    assert not torch.equal(first, teacher(x))


def _check_stoc_relu_channels(student, x):
    calls = []

    def check(module, args):
        calls.append(module)
        assert args[0].shape[1] == module.num_features

    hooks = [m.register_forward_pre_hook(check) for m in student.modules() if isinstance(m, StocReLUEMA)]
    student(x)
    for hook in hooks:
        hook.remove()
    assert len(calls) == len(hooks) == len({id(m) for m in calls})
    return calls


def test_anis2_resnet18_replaces_every_relu_with_right_channels(resnet18):
    x = _example()
    student = convert(resnet18, "anis2", example_input=x, gamma=0.2, momentum=0.3)
    assert not any(type(m) is nn.ReLU for m in student.modules())
    assert all(type(b) is ResidualBlock for layer in (student.layer1, student.layer4) for b in layer)
    relus = _check_stoc_relu_channels(student, x)
    assert len(relus) == 1 + 8 * 2
    assert student.relu.num_features == 64
    assert (student.layer2[0].relu1.num_features, student.layer4[1].relu_out.num_features) == (128, 512)
    assert all(m.gamma == 0.2 and m.momentum == 0.3 for m in relus)


def test_anis2_bottleneck_resnet_gets_one_module_per_call_site():
    torch.manual_seed(0)
    teacher = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=32).eval()
    x = _example()
    student = convert(teacher, "anis2", example_input=x, gamma=0.0)
    relus = _check_stoc_relu_channels(student, x)
    assert len(relus) == 1 + 4 * 3
    block = student.layer1[0]
    assert (block.relu1.num_features, block.relu2.num_features, block.relu_out.num_features) == (32, 32, 256)
    assert torch.equal(student(x), teacher(x))


def test_anis2_student_trains():
    x = _example()
    student = convert(small_cnn(), "anis2", example_input=x).train()
    student(x).square().sum().backward()
    assert all(m.running_sigma.abs().sum() > 0 for m in student.modules() if isinstance(m, StocReLUEMA))
    assert student[0].weight.grad is not None


def test_anis2_rejects_a_reused_relu():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 1), relu, nn.Conv2d(4, 4, 1), relu)
    with pytest.raises(ValueError, match="called 2 times"):
        convert(model, "anis2", example_input=_example())


@pytest.mark.parametrize("mode", ["layer", "channel", "element"])
def test_pni_replaces_every_conv_and_linear(mode):
    teacher = small_cnn()
    student = convert(teacher, "pni", alpha_mode=mode, alpha_init=0.1)
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in student.modules())
    assert [type(m) for m in student if isinstance(m, (nn.Conv2d, nn.Linear))] == [PNIConv2d, PNIConv2d, PNILinear]
    for module in (student[0], student[3], student[8]):
        assert module.alpha_mode == mode and torch.all(module.alpha == 0.1)
    assert student[3].alpha.shape == {"layer": (), "channel": (16,), "element": (16, 8, 3, 3)}[mode]
    assert student[3].stride == (2, 2)


def test_l2p_resnet18_injects_after_stem_and_each_block_sum(resnet18):
    x = _example()
    student = convert(resnet18, "l2p", example_input=x, init=0.3, theta_min=0.05)
    injections = [m for m in student.modules() if isinstance(m, PerturbationInjection)]
    assert len(injections) == 1 + 8
    assert student.relu.noise.shape == (64, 16, 16)
    shapes = [block.noise.shape for layer in (student.layer1, student.layer2, student.layer3, student.layer4)
              for block in layer]
    assert shapes == [(64, 8, 8)] * 2 + [(128, 4, 4)] * 2 + [(256, 2, 2)] * 2 + [(512, 1, 1)] * 2
    assert not any(isinstance(m, PerturbationInjection) for m in student.layer2[0].downsample.modules())
    assert all(m.init == 0.3 and m.theta_min == 0.05 for m in injections)
    # The injection sits on the residual sum, before the final ReLU: outputs stay >= 0.
    assert student.layer1[0](torch.randn(2, 64, 8, 8)).min() >= 0


def test_l2p_block_injection_is_before_the_final_relu():
    torch.manual_seed(0)
    block = BasicBlock(4, 4).eval()
    wrapped = ResidualBlock(block, noise=PerturbationInjection((4, 5, 5), backend="torch"))
    x = torch.randn(3, 4, 5, 5)
    torch.manual_seed(7)
    out = wrapped(x)
    torch.manual_seed(7)
    body = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))) + x
    expected = torch.relu(wrapped.noise(body))
    assert torch.equal(out, expected)


def test_l2p_sequential_cnn_injects_after_each_conv_bn_pair():
    teacher = small_cnn()
    student = convert(teacher, "l2p", example_input=_example())
    names = [name for name, _ in student.named_children()]
    assert names == ["0", "1", "1_noise", "2", "3", "4", "4_noise", "5", "6", "7", "8"]
    assert (student[2].shape, student[6].shape) == ((8, 32, 32), (16, 16, 16))


def test_convert_bad_arguments(resnet18):
    with pytest.raises(ValueError, match="anis2.*pni.*l2p"):
        convert(resnet18, "dropout")
    for kind in ("anis2", "l2p"):
        with pytest.raises(ValueError, match="example_input"):
            convert(resnet18, kind)
    with pytest.raises(TypeError, match="alpha_init"):
        convert(resnet18, "anis2", example_input=_example(), alpha_init=0.1)
    with pytest.raises(ValueError, match="no nn.ReLU"):
        convert(nn.Sequential(nn.Conv2d(3, 3, 1)), "anis2", example_input=_example())
    with pytest.raises(ValueError, match="no place"):
        convert(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), "l2p", example_input=_example())
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        convert(nn.ReLU(), "pni")


def test_convert_keeps_modes_and_random_stream():
    teacher = small_cnn().train()
    torch.manual_seed(5)
    student = convert(teacher, "l2p", example_input=_example())
    drawn = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.rand(3))
    assert all(m.training for m in student.modules())
    # The shape-reading pass ran in eval mode: no BatchNorm statistic moved.
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)
