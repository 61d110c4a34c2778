"""PerturbationInjection (Learn2Perturb), PNI modules and GaussianNoise on the torch reference backend."""
import pytest
import torch
from torch import nn

import stochnet
from stochnet.nn import (PNI, GaussianNoise, PerturbationInjection, PNIConv2d, PNILinear, harmonic_tau,
                         learn2perturb_regularizer, pni_param_groups, split_learn2perturb_params,
                         theta_parameters)


@pytest.fixture(autouse=True)
def torch_backend():
    with stochnet.use_backend("torch"):
        yield


# ---------------------------------------------------------------- PerturbationInjection

@pytest.mark.parametrize("shape", [(4, 5, 6), (4,), ()])
def test_injection_shapes_and_gradients(shape):
    torch.manual_seed(0)
    module = PerturbationInjection(shape, init=0.3, backend="torch")
    assert module.theta.shape == shape and torch.all(module.theta == 0.3)
    x = torch.randn(3, 4, 5, 6, requires_grad=True)
    weight = torch.randn(3, 4, 5, 6)
    y = module(x)
    assert y.shape == x.shape
    (weight * y).sum().backward()
    assert torch.equal(x.grad, weight)
    z = (y - x).detach() / 0.3
    expected = (weight * z).sum(dim=0)
    if shape == (4,):
        expected = expected.sum(dim=(1, 2))
    elif shape == ():
        expected = expected.sum()
    torch.testing.assert_close(module.theta.grad, expected, rtol=1e-4, atol=1e-4)


def test_injection_noise_on_in_eval_and_independent_per_sample():
    module = PerturbationInjection((2, 3, 3), backend="torch").eval()
    x = torch.zeros(2, 2, 3, 3)
    first, second = module(x), module(x)
    assert not torch.equal(first, x)
    assert not torch.equal(first, second)
    assert not torch.equal(first[0], first[1])


def test_injection_noise_std_matches_theta():
    torch.manual_seed(1)
    module = PerturbationInjection((3,), backend="torch")
    with torch.no_grad():
        module.theta.copy_(torch.tensor([0.1, 0.5, 2.0]))
        y = module(torch.zeros(20000, 3, 2, 2))
    noise = y.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(noise.std(dim=1), module.theta.detach(), rtol=0.02, atol=0)
    assert noise.mean(dim=1).abs().max() < 0.02


def test_injection_clamp_and_reset():
    module = PerturbationInjection((3,), init=0.25, theta_min=0.01)
    with torch.no_grad():
        module.theta.copy_(torch.tensor([-1.0, 0.005, 0.5]))
    assert module.clamp_() is module
    assert torch.equal(module.theta.detach(), torch.tensor([0.01, 0.01, 0.5]))
    assert module.theta.grad_fn is None and module.theta.requires_grad
    module.reset_parameters()
    assert torch.all(module.theta == 0.25)
    assert "theta_min=0.01" in repr(module)


def test_injection_bad_arguments():
    with pytest.raises(ValueError, match="init"):
        PerturbationInjection((3,), init=-0.1)
    with pytest.raises(ValueError, match="theta_min"):
        PerturbationInjection((3,), theta_min=-1)
    for shape in [(2, 3), (0,), (3, 4, 5, 6), (3, -1, 2)]:
        with pytest.raises(ValueError, match="shape"):
            PerturbationInjection(shape)
    with pytest.raises(TypeError, match="shape"):
        PerturbationInjection(2.5)
    with pytest.raises(ValueError, match="theta"):
        PerturbationInjection((3, 4, 4), backend="torch")(torch.randn(2, 3, 5, 5))


def test_harmonic_tau():
    assert harmonic_tau(1) == 1.0
    assert harmonic_tau(2) == 1.5
    assert harmonic_tau(4) == pytest.approx(25 / 12, rel=1e-15)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="noisy_epochs"):
            harmonic_tau(bad)
    for bad in (1.5, True):
        with pytest.raises(TypeError, match="noisy_epochs"):
            harmonic_tau(bad)


def _l2p_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), PerturbationInjection((4, 6, 6)),
                          nn.ReLU(), nn.Flatten(), nn.Linear(144, 5), PerturbationInjection(()))
    with torch.no_grad():
        model[2].theta.uniform_(0.1, 1.0)
        model[6].theta.fill_(0.64)
    return model


def test_regularizer_value_and_gradient():
    model = _l2p_model()
    first, second = model[2].theta, model[6].theta
    tau = 1 + 1 / 2 + 1 / 3
    value = learn2perturb_regularizer(model, 3)
    expected = -(first.detach().sqrt().sum() + 0.8) / tau
    torch.testing.assert_close(value, expected)
    value.backward()
    torch.testing.assert_close(first.grad, -1 / (2 * tau * first.detach().sqrt()))
    torch.testing.assert_close(second.grad, torch.tensor(-1 / (2 * tau * 0.8)))
    assert model[0].weight.grad is None
    from_list = learn2perturb_regularizer([model[6], model[0]], 1)
    torch.testing.assert_close(from_list, torch.tensor(-0.8))
    with pytest.raises(ValueError, match="PerturbationInjection"):
        learn2perturb_regularizer(nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match="noisy_epochs"):
        learn2perturb_regularizer(model, 0)


def test_split_learn2perturb_params_and_two_optimizers():
    model = _l2p_model()
    weights, thetas = split_learn2perturb_params(model)
    assert [id(t) for t in thetas] == [id(model[2].theta), id(model[6].theta)]
    assert [id(t) for t in theta_parameters(model)] == [id(t) for t in thetas]
    everything = {id(p) for p in model.parameters()}
    assert {id(p) for p in weights} | {id(t) for t in thetas} == everything
    assert not {id(p) for p in weights} & {id(t) for t in thetas}
    weight_opt = torch.optim.SGD(weights, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    theta_opt = torch.optim.SGD(thetas, lr=0.1)
    before = [t.detach().clone() for t in thetas]
    loss = model(torch.rand(2, 3, 6, 6)).square().sum() + learn2perturb_regularizer(model, 1)
    loss.backward()
    theta_opt.step()
    for module in model.modules():
        if isinstance(module, PerturbationInjection):
            module.clamp_()
    assert all(not torch.equal(b, t) for b, t in zip(before, thetas))
    assert all(torch.all(t >= 0.01) for t in thetas)
    weight_before = model[0].weight.detach().clone()
    weight_opt.step()
    assert not torch.equal(weight_before, model[0].weight)


# ---------------------------------------------------------------- PNI weight noise

def _alpha_shape(mode, weight):
    return {"layer": (), "channel": weight.shape[:1], "element": weight.shape}[mode]


@pytest.mark.parametrize("mode", ["layer", "channel", "element"])
def test_pni_conv_shapes_gradients_and_std_detached(mode):
    torch.manual_seed(0)
    conv = PNIConv2d(3, 5, 3, padding=1, alpha_mode=mode, backend="torch")
    assert isinstance(conv, nn.Conv2d)
    assert conv.alpha.shape == _alpha_shape(mode, conv.weight)
    assert torch.all(conv.alpha == 0.25)
    y = conv(torch.randn(2, 3, 6, 6))
    assert y.shape == (2, 5, 6, 6)
    y.square().sum().backward()
    assert conv.alpha.grad is not None and conv.alpha.grad.abs().sum() > 0
    assert conv.weight.grad is not None and conv.bias.grad is not None
    conv.zero_grad()
    # std(W) is detached: d(noisy W)/dW is the identity.
    conv.noisy_weight().sum().backward()
    assert torch.equal(conv.weight.grad, torch.ones_like(conv.weight))


@pytest.mark.parametrize("mode", ["layer", "channel", "element"])
def test_pni_linear_zero_alpha_is_exact_and_noise_on_in_eval(mode):
    torch.manual_seed(0)
    linear = PNILinear(6, 4, alpha_mode=mode, alpha_init=0.0, backend="torch")
    assert isinstance(linear, nn.Linear) and linear.alpha.shape == _alpha_shape(mode, linear.weight)
    x = torch.randn(3, 6)
    assert torch.equal(linear(x), nn.functional.linear(x, linear.weight, linear.bias))
    linear.eval()
    with torch.no_grad():
        linear.alpha.fill_(0.25)
    first, second = linear(x), linear(x)
    assert not torch.equal(first, second)
    assert not torch.equal(first, nn.functional.linear(x, linear.weight, linear.bias))


def test_pni_weight_noise_std_matches_alpha_times_weight_std():
    torch.manual_seed(2)
    linear = PNILinear(400, 3, alpha_mode="channel", backend="torch")
    with torch.no_grad():
        linear.alpha.copy_(torch.tensor([0.1, 0.5, 1.0]))
        noise = torch.cat([linear.noisy_weight() - linear.weight for _ in range(25)], dim=1)
        expected = linear.alpha * linear.weight.std()
    torch.testing.assert_close(noise.std(dim=1), expected, rtol=0.03, atol=0)
    element = PNILinear(300, 8, alpha_mode="element", backend="torch")
    with torch.no_grad():
        element.alpha.uniform_(0.2, 2.0)
        scaled = torch.stack([(element.noisy_weight() - element.weight) / (element.alpha * element.weight.std())
                              for _ in range(4)])
    assert abs(scaled.std().item() - 1) < 0.02


def test_pni_from_module_copies_configuration_and_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, bias=False).eval()
    pni = PNIConv2d.from_module(conv, alpha_mode="channel", alpha_init=0.0, backend="torch")
    assert (pni.stride, pni.padding, pni.groups, pni.bias) == ((2, 2), (1, 1), 2, None)
    assert pni.alpha.shape == (6,) and not pni.training
    assert torch.equal(pni.weight, conv.weight) and pni.weight is not conv.weight
    x = torch.randn(2, 4, 7, 7)
    assert torch.equal(pni(x), conv(x))
    with torch.no_grad():
        pni.weight.add_(1)
    assert not torch.equal(pni.weight, conv.weight)
    linear = nn.Linear(5, 3)
    pni_linear = PNILinear.from_module(linear, alpha_init=0.0, backend="torch")
    assert torch.equal(pni_linear.bias, linear.bias) and torch.equal(pni_linear.weight, linear.weight)
    assert torch.equal(pni_linear(x[:, 0, 0, :5]), linear(x[:, 0, 0, :5]))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        PNIConv2d.from_module(linear)
    with pytest.raises(TypeError, match="nn.Linear"):
        PNILinear.from_module(conv)


def test_pni_weight_reset_and_bad_arguments():
    conv = PNIConv2d(2, 3, 1, alpha_init=0.5)
    with torch.no_grad():
        conv.alpha.fill_(3.0)
    conv.reset_parameters()
    assert conv.alpha.item() == 0.5
    assert "alpha_mode=layer" in repr(conv)
    with pytest.raises(ValueError, match="alpha_mode"):
        PNIConv2d(2, 3, 1, alpha_mode="row")
    with pytest.raises(ValueError, match="alpha_init"):
        PNILinear(2, 3, alpha_init=-0.1)
    with pytest.raises(ValueError, match="at least 2 weights"):
        PNILinear(1, 1)


# ---------------------------------------------------------------- PNI activation noise and GaussianNoise

@pytest.mark.parametrize("mode,num_features,shape", [("layer", None, ()), ("channel", 3, (3,)),
                                                     ("element", (3, 4, 4), (3, 4, 4))])
def test_pni_activation(mode, num_features, shape):
    torch.manual_seed(0)
    module = PNI(mode, num_features, backend="torch")
    assert module.alpha.shape == shape
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = module(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # std(x) is detached
    assert module.alpha.grad.abs().sum() > 0


def test_pni_activation_noise_std_and_eval():
    torch.manual_seed(3)
    module = PNI("channel", 2, backend="torch").eval()
    with torch.no_grad():
        module.alpha.copy_(torch.tensor([0.2, 1.0]))
        x = torch.randn(20000, 2) * 3
        noise = module(x) - x
    torch.testing.assert_close(noise.std(dim=0), module.alpha.detach() * x.std(), rtol=0.03, atol=0)


def test_pni_activation_bad_arguments():
    with pytest.raises(ValueError, match="num_features"):
        PNI("channel")
    with pytest.raises(ValueError, match="num_features"):
        PNI("channel", (3, 4))
    with pytest.raises(ValueError, match="num_features"):
        PNI("element", (3, 0))
    with pytest.raises(ValueError, match="alpha_mode"):
        PNI("pixel", 3)
    with pytest.raises(ValueError, match="at least 2"):
        PNI(backend="torch")(torch.randn(1, 1))


def test_gaussian_noise_modes_std_and_buffer():
    torch.manual_seed(4)
    noise = GaussianNoise(0.3, backend="torch")
    assert list(noise.parameters()) == [] and "std" in noise.state_dict()
    x = torch.zeros(50000, 2)
    torch.testing.assert_close(noise(x).std(), torch.tensor(0.3), rtol=0.02, atol=0)
    assert not torch.equal(noise.eval()(x), x)
    train_only = GaussianNoise(0.1, eval=False, backend="torch")
    assert not torch.equal(train_only(x), x)
    assert train_only.eval()(x) is x
    eval_only = GaussianNoise(0.1, train=False, backend="torch")
    assert eval_only(x) is x and not torch.equal(eval_only.eval()(x), x)
    assert eval_only.double().std.dtype == torch.float64
    assert torch.equal(GaussianNoise(0.0)(x), x)
    with pytest.raises(ValueError, match="std"):
        GaussianNoise(-0.1)


def test_pni_param_groups_exclude_alpha_from_weight_decay():
    model = nn.Sequential(PNIConv2d(3, 4, 3, alpha_mode="channel"), nn.BatchNorm2d(4), PNI("layer"),
                          nn.Flatten(), PNILinear(4 * 4 * 4, 2), nn.Linear(2, 2))
    groups = pni_param_groups(model, 3e-4)
    decay, no_decay = groups
    assert decay["weight_decay"] == 3e-4 and no_decay["weight_decay"] == 0.0
    alphas = [model[0].alpha, model[2].alpha, model[4].alpha]
    assert [id(p) for p in no_decay["params"]] == [id(a) for a in alphas]
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters()} - {id(a) for a in alphas}
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    assert len(pni_param_groups(nn.Linear(2, 2), 1e-4)) == 1
    with pytest.raises(ValueError, match="weight_decay"):
        pni_param_groups(model, -1)
