"""The training methods: each learns a tiny task, resumes exactly, and keeps its own invariants."""
import copy
import math

import pytest
import torch
from torch import nn

from stochnet.defenses import METHODS, build_method, parse_options
from stochnet.defenses.adversary import Adversary
from stochnet.defenses.options import AdversarialOptions
from stochnet.nn import PerturbationInjection, StocReLUEMA
from tiny_task import one_thread, tiny_data, tiny_net  # noqa: F401  (one_thread: autouse fixture)

BATCH = 32


# Fast settings for every method: a higher lr than the published fine-tuning / L2P defaults,
# short attacks, and warm-ups that end inside the short runs.
CONFIGS = {
    "standard": {"lr": 0.05},
    "adv": {"lr": 0.05, "steps": 2, "eps": 4 / 255},
    "trades": {"lr": 0.05, "steps": 2, "eps": 4 / 255, "beta": 1.0},
    "pni": {"lr": 0.05, "steps": 2, "eps": 4 / 255, "adv_start": 1},
    "l2p": {"lr": 0.05, "steps": 2, "eps": 4 / 255, "noise_start": 1, "adv_start": 1},
    "anis2": {"lr": 0.05, "steps": 2, "eps": 4 / 255, "gamma_max": 0.2},
    "gaussian": {"lr": 0.05, "sigma": 0.1},
    "denoiser": {"lr": 0.01, "steps": 2, "eps": 4 / 255, "denoiser_blocks": 1, "denoiser_width": 4},
}
# The methods that train the classifier itself; the denoiser trains a module in front of a frozen one
# (its own invariants: tests/test_denoiser.py).
CLASSIFIER_METHODS = sorted(name for name, cls in METHODS.items() if not cls.needs_classifier)


def make(name, config=None, epochs=2, seed=0):
    torch.manual_seed(seed)
    model = tiny_net()
    x, _ = tiny_data(8)
    teacher = copy.deepcopy(model.state_dict()) if name == "anis2" else None
    return build_method(name, model, dict(CONFIGS[name] if config is None else config), epochs=epochs,
                        example_input=x, teacher_state=teacher)


def batches(x, y):
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(y), BATCH)]


def run(method, data, epochs, start=(0, 0), stop=None):
    """Train from (epoch, step) ``start`` to ``stop`` (exclusive) or the end; calls the epoch hooks
    as a loop does, skipping on_epoch_start for an epoch entered mid-way (a resumed run)."""
    for epoch in range(start[0], epochs):
        first = start[1] if epoch == start[0] else 0
        if first == 0:
            method.on_epoch_start(epoch)
        for step in range(first, len(data)):
            if stop is not None and (epoch, step) == stop:
                return
            method.train_step(method.model, *data[step])
        method.on_epoch_end(epoch)


def eval_loss(model, x, y):
    """Mean CE of the model in eval mode on (x, y), noise drawn from a fixed seed."""
    training = model.training
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        loss = nn.functional.cross_entropy(model(x), y).item()
    model.train(training)
    return loss


@pytest.mark.parametrize("name", CLASSIFIER_METHODS)
def test_method_learns_the_tiny_task(name):
    x, y = tiny_data()
    data = batches(x, y)
    method = make(name, epochs=6)
    before = eval_loss(method.model, x, y)
    results = []
    for epoch in range(6):
        method.on_epoch_start(epoch)
        results += [method.train_step(method.model, xb, yb) for xb, yb in data]
        method.on_epoch_end(epoch)
    after = eval_loss(method.model, x, y)
    assert after < 0.7 * before, (before, after)
    assert all(set(r) == {"loss", "correct", "count"} and r["count"] == BATCH for r in results)
    assert all(math.isfinite(r["loss"]) and 0 <= r["correct"] <= BATCH for r in results)
    first, last = results[:len(data)], results[-len(data):]
    assert sum(r["correct"] for r in last) > sum(r["correct"] for r in first)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_resume_from_state_dict_continues_exactly(name):
    x, y = tiny_data(96)
    data = batches(x, y)
    straight = make(name)
    torch.manual_seed(7)
    run(straight, data, epochs=2)

    first = make(name)
    torch.manual_seed(7)
    run(first, data, epochs=2, stop=(1, 1))
    saved = copy.deepcopy((first.state_dict(), first.model.state_dict(), torch.get_rng_state()))
    del first
    resumed = make(name, seed=99)
    method_state, model_state, rng = saved
    resumed.model.load_state_dict(model_state)
    resumed.load_state_dict(method_state)
    torch.set_rng_state(rng)
    run(resumed, data, epochs=2, start=(1, 1))

    expected, got = straight.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert resumed.state_dict()["epoch"] == straight.state_dict()["epoch"] == 1


@pytest.mark.parametrize("name", CLASSIFIER_METHODS)
def test_train_step_leaves_the_model_in_train_mode(name):
    method = make(name, epochs=2)
    method.on_epoch_start(1)  # past every warm-up of the test configs: attacks run
    method.model.eval()
    x, y = tiny_data(16)
    method.train_step(method.model, x, y)
    assert all(m.training for m in method.model.modules())


def test_attacks_leave_no_parameter_gradients_and_keep_modes():
    torch.manual_seed(0)
    model = tiny_net()
    x, y = tiny_data(10)
    for attack in ("fgsm", "pgd-linf", "pgd-l2", "mixed"):
        adversary = Adversary(model, parse_options(AdversarialOptions, {"attack": attack, "steps": 2}))
        x_adv = adversary(x, y)
        assert x_adv.shape == x.shape and not torch.equal(x_adv, x)
        assert all(p.grad is None for p in model.parameters())
        assert all(m.training for m in model.modules())
    trades = make("trades")
    trades.inner_maximization(x)
    assert all(p.grad is None for p in trades.model.parameters())
    assert all(m.training for m in trades.model.modules())


def test_mixed_attack_uses_linf_on_the_first_half_and_l2_on_the_rest():
    torch.manual_seed(0)
    model = tiny_net()
    x, y = tiny_data(9)
    options = parse_options(AdversarialOptions, {"attack": "mixed", "eps": 0.05, "step_size": 0.05,
                                                   "eps_l2": 0.3, "steps": 3})
    delta = Adversary(model, options)(x, y) - x
    linf, l2 = delta[:5], delta[5:]
    assert linf.abs().max() <= 0.05 + 1e-6 and linf.flatten(1).norm(dim=1).max() > 0.3
    assert l2.flatten(1).norm(dim=1).max() <= 0.3 + 1e-5 and l2.abs().max() > 0.05
    single = Adversary(model, options)(x[:1], y[:1]) - x[:1]
    assert single.abs().max() <= 0.05 + 1e-6


def test_trades_inner_maximization_stays_in_the_ball_and_raises_the_kl():
    method = make("trades", {"steps": 5, "eps": 0.1, "step_size": 0.03})
    x, _ = tiny_data(16)
    x_adv = method.inner_maximization(x)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    method.model.eval()
    with torch.no_grad():
        p = nn.functional.softmax(method.model(x), 1)
        kl = [nn.functional.kl_div(nn.functional.log_softmax(method.model(z), 1), p, reduction="sum").item()
              for z in (x + 1e-3 * torch.randn_like(x), x_adv)]
    assert kl[1] > 10 * kl[0]


def test_anis2_gamma_schedule_per_epoch():
    method = make("anis2", {"gamma_init": 0.1, "gamma_max": 0.5, "r": 2, "adversarial": False}, epochs=4)
    activations = [m for m in method.model.modules() if isinstance(m, StocReLUEMA)]
    assert len(activations) == 2
    during, after = [], []
    for epoch in range(4):
        method.on_epoch_start(epoch)
        during.append([m.gamma for m in activations])
        method.on_epoch_end(epoch)
        after.append([m.gamma for m in activations])
    # k = r (gamma_max - gamma_init) / T = 2 * 0.4 / 4 = 0.2, added after epochs 2 and 4 (1-based).
    assert during == [pytest.approx([g, g]) for g in (0.1, 0.1, 0.3, 0.3)]
    assert after == [pytest.approx([g, g]) for g in (0.1, 0.3, 0.3, 0.5)]
    every_epoch = make("anis2", {"gamma_init": 0.0, "gamma_max": 0.3, "r": 1}, epochs=3)
    gammas = []
    for epoch in range(3):
        every_epoch.on_epoch_start(epoch)
        gammas.append(every_epoch.gamma)
    assert gammas == pytest.approx([0.0, 0.1, 0.2])


def test_anis2_teacher_initialization_and_ablations():
    torch.manual_seed(0)
    teacher, other = tiny_net(), tiny_net()
    x, y = tiny_data(8)
    common = dict(epochs=2, example_input=x)
    student = build_method("anis2", copy.deepcopy(other), {}, teacher_state=teacher.state_dict(), **common).model
    for key, value in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[key], value), key
    ablated = build_method("anis2", copy.deepcopy(other), {"teacher_init": False, "ema": False},
                           teacher_state=teacher.state_dict(), **common)
    assert torch.equal(ablated.model.state_dict()["0.weight"], other.state_dict()["0.weight"])
    assert all(m.momentum == 1.0 for m in ablated.model.modules() if isinstance(m, StocReLUEMA))
    with pytest.raises(ValueError, match="teacher_state"):
        build_method("anis2", tiny_net(), {}, **common)
    with pytest.raises(ValueError, match="teacher_state does not fit"):
        build_method("anis2", tiny_net(), {}, teacher_state={"0.weight": teacher.state_dict()["0.weight"]}, **common)
    no_at = build_method("anis2", tiny_net(), {"teacher_init": False, "adversarial": False}, **common)
    assert not no_at.adversarial()


def test_l2p_theta_warm_up_floor_and_disjoint_optimizers():
    x, y = tiny_data(64)
    method = make("l2p", {"lr": 0.5, "noise_start": 1, "adv_start": 2, "theta_init": 0.02, "theta_min": 0.01},
                  epochs=3)
    thetas = [m.theta for m in method.model.modules() if isinstance(m, PerturbationInjection)]
    assert len(thetas) == 2
    weights_opt, theta_opt = method.optimizers["weights"], method.optimizers["theta"]
    weight_ids = {id(p) for g in weights_opt.param_groups for p in g["params"]}
    theta_ids = {id(p) for g in theta_opt.param_groups for p in g["params"]}
    assert theta_ids == {id(t) for t in thetas} and not weight_ids & theta_ids
    assert weight_ids | theta_ids == {id(p) for p in method.model.parameters()}
    assert all(g["weight_decay"] == 0 for g in theta_opt.param_groups)
    assert all(g["weight_decay"] > 0 for g in weights_opt.param_groups)

    method.on_epoch_start(0)
    method.train_step(method.model, x, y)
    assert all(torch.count_nonzero(t) == 0 for t in thetas)  # noise warm-up: held at 0
    seen_below_init = False
    for epoch in (1, 2):
        method.on_epoch_start(epoch)
        for _ in range(4):
            method.train_step(method.model, x, y)
            assert all(t.min() >= 0.01 for t in thetas)
            seen_below_init |= any(bool((t < 0.02).any()) for t in thetas)
    assert seen_below_init  # the clamp was reached, not just the initial value kept
    assert method.state_dict()["noise_on"] is True


def test_pni_alpha_has_no_weight_decay():
    method = make("pni", {"alpha_mode": "channel"})
    groups = method.optimizers["weights"].param_groups
    alphas = {id(p) for name, p in method.model.named_parameters() if name.endswith("alpha")}
    assert alphas and all(g["weight_decay"] == 0 for g in groups if {id(p) for p in g["params"]} & alphas)
    assert {id(p) for g in groups if g["weight_decay"] == 3e-4 for p in g["params"]}.isdisjoint(alphas)
    assert groups[0]["nesterov"] is True


def test_lr_schedule_fractions_and_epoch_numbers():
    fractions = make("standard", {"lr": 0.1, "lr_milestones": (0.5, 0.75)}, epochs=4)
    numbers = make("standard", {"lr": 0.1, "lr_milestones": "1,3", "lr_gamma": 0.5}, epochs=4)
    got = {id(fractions): [], id(numbers): []}
    for method in (fractions, numbers):
        for epoch in range(4):
            method.on_epoch_start(epoch)
            got[id(method)].append(method.optimizers["weights"].param_groups[0]["lr"])
    assert got[id(fractions)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert got[id(numbers)] == pytest.approx([0.1, 0.05, 0.05, 0.025])
    adam = make("standard", {"optimizer": "adam", "lr": 1e-3})
    assert isinstance(adam.optimizers["weights"], torch.optim.Adam)


def test_every_option_has_a_default_and_help():
    import dataclasses
    for cls in METHODS.values():
        for field in dataclasses.fields(cls.Options):
            assert field.default is not dataclasses.MISSING and field.metadata["help"], (cls.name, field.name)
    assert METHODS["pni"].Options().adv_start == 5 and METHODS["l2p"].Options().lr == 0.01
    assert METHODS["trades"].Options().beta == 6.0 and METHODS["gaussian"].Options().sigma == 0.25


def test_unknown_method_and_bad_options_raise_clear_errors():
    x, _ = tiny_data(4)
    common = dict(epochs=2, example_input=x)
    with pytest.raises(ValueError, match=r"unknown method 'nope'.*standard.*gaussian"):
        build_method("nope", tiny_net(), {}, **common)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bogus'\].*clean-weight"):
        build_method("adv", tiny_net(), {"bogus": 1}, **common)
    with pytest.raises(ValueError, match="attack must be one of"):
        build_method("adv", tiny_net(), {"attack": "pgd"}, **common)
    with pytest.raises(ValueError, match="option lr must be > 0"):
        build_method("standard", tiny_net(), {"lr": -1}, **common)
    with pytest.raises(ValueError, match="option steps must be of type int"):
        build_method("adv", tiny_net(), {"steps": 2.5}, **common)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        build_method("standard", tiny_net(), {}, epochs=0, example_input=x)
    method = build_method("standard", tiny_net(), {"weight-decay": "0", "nesterov": None}, **common)
    assert method.options.weight_decay == 0.0 and method.options.nesterov is False
    with pytest.raises(ValueError, match=r"epoch must be in \[0, 2\)"):
        method.on_epoch_start(2)
    with pytest.raises(ValueError, match="not a 'standard' method state"):
        method.load_state_dict(make("adv").state_dict())
    with pytest.raises(ValueError, match="y must be an int64 tensor"):
        method.train_step(method.model, x, torch.zeros(4))
    with pytest.raises(ValueError, match="model must be method.model"):
        method.train_step(tiny_net(), x, torch.zeros(4, dtype=torch.long))


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-rank gloo process group, enough to wrap a model in DistributedDataParallel on CPU."""
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    store = tmp_path_factory.mktemp("ddp") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", ["adv", "trades", "l2p", "anis2", "denoiser"])
def test_train_step_through_ddp_matches_the_bare_model(name, process_group):
    x, y = tiny_data(32)
    bare, wrapped = make(name, epochs=2), make(name, epochs=2)
    ddp = nn.parallel.DistributedDataParallel(wrapped.model)
    for method, model in ((bare, bare.model), (wrapped, ddp)):
        method.on_epoch_start(1)
        torch.manual_seed(5)
        for _ in range(2):
            method.train_step(model, x, y)
    for (key, expected), got in zip(bare.model.state_dict().items(), wrapped.model.state_dict().values()):
        assert torch.allclose(expected, got, atol=1e-6), key


@pytest.mark.parametrize("config", [
    {"attack": "fgsm"}, {"attack": "pgd-l2", "attack_target": "prediction"},
    {"attack": "mixed", "clean_weight": 0.5, "attack_target": "prediction"}, {"clean_weight": 1.0},
])
def test_adv_variants_step_and_count_the_trained_batch(config):
    method = make("adv", {"steps": 2, "lr": 0.05, **config})
    x, y = tiny_data(16)
    before = [p.detach().clone() for p in method.model.parameters()]
    result = method.train_step(method.model, x, y)
    assert math.isfinite(result["loss"]) and result["count"] == 16
    assert any(not torch.equal(b, p) for b, p in zip(before, method.model.parameters()))
    assert method.adversarial() == (config.get("clean_weight", 0.0) < 1)
