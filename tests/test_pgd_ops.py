"""Fused PGD / MIM steps and the random start: the C++ backend against the pure-torch
reference, the eps ball and clip range, the in-place momentum, random-start statistics,
op registration (opcheck, torch.compile) and bad input."""
import math

import pytest
import torch

from stochnet import functional as F
from stochnet.ops import pgd as pgd_ops
from stochnet.ops.philox import philox_uniform

PHILOX = torch.tensor([2**40 + 3, 2**32 - 7])  # the counter crosses 2**32 inside a call
SHAPES = [
    (1, 1),            # one element
    (5, 1),            # one element per sample
    (1, 3, 7, 9),      # B = 1
    (4, 3, 5, 7),      # per-sample sizes not a multiple of the vector width
    (3, 17000),        # samples spanning chunk boundaries
    (6, 3, 8, 8),
]
DTYPES = [torch.float32, torch.float64]
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def make_inputs(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x_orig = torch.rand(shape, generator=generator, dtype=torch.float64)
    x_adv = (x_orig + 0.05 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    grad = torch.randn(shape, generator=generator, dtype=torch.float64)
    return x_adv.to(dtype), grad.to(dtype), x_orig.to(dtype)


def budgets(kind, batch, dtype, value):
    if kind == "float":
        return value
    generator = torch.Generator().manual_seed(batch)
    return (value * (0.5 + torch.rand(batch, generator=generator, dtype=torch.float64))).to(dtype)


def per_sample(value, batch):
    return value.double() if isinstance(value, torch.Tensor) else torch.full((batch,), float(value), dtype=torch.float64)


def sample_norms(t, norm):
    flat = t.double().reshape(t.shape[0], -1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


@pytest.mark.parametrize("kind", ["float", "tensor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pgd_step_matches_reference(shape, norm, dtype, kind):
    x_adv, grad, x_orig = make_inputs(shape, dtype)
    batch = shape[0]
    eps = budgets(kind, batch, dtype, 0.03 if norm == "linf" else 0.5)
    alpha = budgets(kind, batch, torch.float32, 0.01 if norm == "linf" else 0.2)
    inputs = [t.clone() for t in (x_adv, grad, x_orig)]
    out = F.pgd_step(x_adv, grad, x_orig, eps, alpha, norm=norm, backend="cpp")
    expected = F.pgd_step(x_adv, grad, x_orig, eps, alpha, norm=norm, backend="torch")
    assert out.shape == x_adv.shape and out.dtype == dtype
    torch.testing.assert_close(out, expected, **TOLERANCE[dtype])
    for before, after in zip(inputs, (x_adv, grad, x_orig)):
        assert torch.equal(before, after)
    assert out.min() >= 0 and out.max() <= 1
    slack = 1e-6 if dtype == torch.float32 else 1e-12
    assert (sample_norms(out - x_orig, norm) <= per_sample(eps, batch) * (1 + slack) + slack).all()


def test_linf_step_moves_along_the_gradient_sign():
    x_orig = torch.full((2, 8), 0.5)
    grad = torch.tensor([[1.0, -2.0, 0.0, 3.0, -1e-30, 1e-30, 0.0, -5.0]] * 2)
    out = F.pgd_step(x_orig, grad, x_orig, eps=0.1, alpha=0.25)  # the step is clamped to eps
    expected = 0.5 + 0.1 * torch.sign(grad)
    torch.testing.assert_close(out, expected)
    small = F.pgd_step(x_orig, grad, x_orig, eps=0.1, alpha=torch.tensor([0.01, 0.02]))
    torch.testing.assert_close(small, 0.5 + torch.tensor([[0.01], [0.02]]) * torch.sign(grad))


def test_l2_step_projects_onto_the_ball():
    x_orig = torch.full((3, 100), 0.5, dtype=torch.float64)
    grad = torch.randn(3, 100, dtype=torch.float64)
    out = F.pgd_step(x_orig, grad, x_orig, eps=torch.tensor([0.1, 0.3, 10.0], dtype=torch.float64),
                     alpha=0.2, norm="l2", clip=(-100.0, 100.0))
    norms = (out - x_orig).norm(dim=1)
    torch.testing.assert_close(norms, torch.tensor([0.1, 0.2, 0.2], dtype=torch.float64))
    direction = (out - x_orig) / norms[:, None]
    torch.testing.assert_close(direction, grad / grad.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_gradient_keeps_x_adv_projected(norm):
    x_adv, _, x_orig = make_inputs((4, 3, 5, 5), torch.float32)
    grad = torch.zeros_like(x_adv)
    for backend in ("cpp", "torch"):
        out = F.pgd_step(x_adv, grad, x_orig, 0.5, 0.1, norm=norm, backend=backend)
        torch.testing.assert_close(out, x_adv)  # x_adv is inside the ball already: unchanged
    zero = F.pgd_step(x_orig, grad, x_orig, 0.5, 0.1, norm=norm)
    assert torch.equal(zero, x_orig)


@pytest.mark.parametrize("kind", ["float", "tensor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mim_step_matches_reference_and_updates_momentum(shape, dtype, kind):
    x_adv, grad, x_orig = make_inputs(shape, dtype)
    eps = budgets(kind, shape[0], dtype, 0.03)
    alpha = budgets(kind, shape[0], dtype, 0.01)
    start = make_inputs(shape, dtype, seed=3)[1]
    momentum, expected_momentum = start.clone(), start.clone()
    pointer = momentum.data_ptr()
    out = F.mim_step(x_adv, grad, x_orig, momentum, eps, alpha, mu=0.9, backend="cpp")
    expected = F.mim_step(x_adv, grad, x_orig, expected_momentum, eps, alpha, mu=0.9, backend="torch")
    assert momentum.data_ptr() == pointer
    torch.testing.assert_close(momentum, expected_momentum, **TOLERANCE[dtype])
    l1 = grad.double().abs().reshape(shape[0], -1).mean(dim=1).view((-1,) + (1,) * (len(shape) - 1))
    torch.testing.assert_close(momentum.double(), 0.9 * start.double() + grad.double() / l1,
                               rtol=1e-5, atol=1e-5)
    # sign(momentum) may flip where it is within rounding of 0: compare all but such elements
    close = (out - expected).abs() <= 1e-6
    assert close.float().mean() > 0.999
    assert out.min() >= 0 and out.max() <= 1
    assert (sample_norms(out - x_orig, "linf") <= per_sample(eps, shape[0]) + 1e-6).all()


def test_mim_step_with_zero_gradient_keeps_momentum_scaled():
    x = torch.full((2, 6), 0.5)
    momentum = torch.ones(2, 6)
    out = F.mim_step(x, torch.zeros_like(x), x, momentum, eps=0.1, alpha=0.05, mu=0.5)
    assert torch.equal(momentum, torch.full((2, 6), 0.5))
    torch.testing.assert_close(out, torch.full((2, 6), 0.55))


@pytest.mark.parametrize("kind", ["float", "tensor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_random_start_matches_reference(shape, norm, dtype, kind):
    _, _, x_orig = make_inputs(shape, dtype)
    eps = budgets(kind, shape[0], dtype, 0.03 if norm == "linf" else 0.5)
    out = F.random_start(x_orig, eps, norm=norm, backend="cpp", philox=PHILOX)
    expected = F.random_start(x_orig, eps, norm=norm, backend="torch", philox=PHILOX)
    # normals agree with the reference within a few ulp
    torch.testing.assert_close(out, expected, **(TOLERANCE[dtype] if norm == "linf" else dict(rtol=1e-5, atol=1e-6)))
    assert out.min() >= 0 and out.max() <= 1
    assert (sample_norms(out - x_orig, norm) <= per_sample(eps, shape[0]) * (1 + 1e-6) + 1e-6).all()


def test_linf_random_start_is_uniform_in_the_box():
    x = torch.full((64, 1000), 0.5)
    out = F.random_start(x, 0.25, clip=(-1.0, 1.0), philox=PHILOX)
    u = philox_uniform(int(PHILOX[0]), int(PHILOX[1]), x.numel()).view_as(x)
    torch.testing.assert_close(out, 0.5 + 0.25 * (2 * u - 1))
    noise = (out - 0.5).flatten()
    assert noise.min() >= -0.25 and noise.max() <= 0.25
    assert abs(noise.mean().item()) < 0.01
    assert abs(noise.std().item() - 0.25 / math.sqrt(3)) < 0.005
    counts = torch.histc(noise, bins=10, min=-0.25, max=0.25)
    assert (counts - noise.numel() / 10).abs().max() < 0.05 * noise.numel() / 10


def test_l2_random_start_is_uniform_in_the_ball():
    batch, dim = 4000, 3
    x = torch.zeros(batch, dim, dtype=torch.float64)
    out = F.random_start(x, 1.0, norm="l2", clip=(-2.0, 2.0), philox=PHILOX)
    radius = out.norm(dim=1)
    assert radius.max() <= 1.0 + 1e-12
    # uniform in the 3-ball: P(r <= t) = t ** 3, directions uniform on the sphere
    for t in (0.5, 0.8, 0.95):
        assert abs((radius <= t).double().mean().item() - t**3) < 0.03
    assert (out / radius[:, None]).mean(dim=0).abs().max() < 0.05


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_reproducible_under_manual_seed(norm):
    x = torch.rand(3, 4, 5)
    torch.manual_seed(11)
    first = F.random_start(x, 0.1, norm=norm)
    second = F.random_start(x, 0.1, norm=norm)
    torch.manual_seed(11)
    again = F.random_start(x, 0.1, norm=norm)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def op_samples():
    """(op, its arguments, the reference of the op and its arguments) for every op and norm."""
    x_adv, grad, x_orig = make_inputs((3, 2, 5, 5), torch.float32)
    eps, alpha = torch.tensor([0.03, 0.05, 0.0]), torch.tensor([0.01, 0.02, 0.03])
    seed, offset = PHILOX.tolist()
    ops = torch.ops.stochnet
    for norm in ("linf", "l2"):
        yield (ops.pgd_step.default, (x_adv, grad, x_orig, eps, alpha, norm, 0.0, 1.0),
               pgd_ops.pgd_step_reference, (x_adv, grad, x_orig, eps, alpha, norm, 0.0, 1.0))
        yield (ops.random_start.default, (x_orig, eps, norm, 0.0, 1.0, PHILOX),
               pgd_ops.random_start_reference, (x_orig, eps, norm, 0.0, 1.0, seed, offset))
    yield (ops.mim_step.default, (x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, alpha, 1.0, 0.0, 1.0),
           pgd_ops.mim_step_reference, (x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, alpha, 1.0, 0.0, 1.0))


@pytest.mark.parametrize("index", range(5))
def test_opcheck(index):
    op, args, _, _ = list(op_samples())[index]
    torch.library.opcheck(op, args)


def test_opcheck_float64():
    x_adv, grad, x_orig = make_inputs((2, 9), torch.float64)
    eps, alpha = torch.tensor([0.1, 0.2], dtype=torch.float64), torch.tensor([0.05, 0.05])
    ops = torch.ops.stochnet
    torch.library.opcheck(ops.pgd_step.default, (x_adv, grad, x_orig, eps, alpha, "l2", 0.0, 1.0))
    torch.library.opcheck(ops.mim_step.default, (x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, alpha,
                                                 1.0, 0.0, 1.0))
    torch.library.opcheck(ops.random_start.default, (x_orig, eps, "linf", 0.0, 1.0, torch.tensor([5, 7])))


def test_compiles_without_graph_break():
    x_adv, grad, x_orig = make_inputs((4, 3, 6, 6), torch.float32)
    momentum = torch.zeros_like(x_adv)

    def attack_step(x_adv, grad, x_orig, momentum):
        start = F.random_start(x_orig, 0.03, philox=PHILOX)
        stepped = F.pgd_step(x_adv, grad, x_orig, 0.03, 0.01)
        return start, stepped, F.mim_step(stepped, grad, x_orig, momentum, 0.03, 0.01)

    compiled = torch.compile(attack_step, fullgraph=True, backend="aot_eager")
    expected_momentum = momentum.clone()
    results = compiled(x_adv, grad, x_orig, momentum)
    expected = attack_step(x_adv, grad, x_orig, expected_momentum)
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(momentum, expected_momentum)


def test_non_contiguous_inputs_are_read_in_logical_order():
    x_adv, grad, x_orig = (t.transpose(1, 2) for t in make_inputs((2, 5, 4), torch.float32))
    out = F.pgd_step(x_adv, grad, x_orig, 0.03, 0.01, backend="cpp")
    torch.testing.assert_close(out, F.pgd_step(x_adv, grad, x_orig, 0.03, 0.01, backend="torch"))


@pytest.mark.parametrize("call,error,match", [
    (lambda x, g, m: F.pgd_step(x.numpy(), g, x, 0.1, 0.1), TypeError, "x_adv must be a torch.Tensor"),
    (lambda x, g, m: F.pgd_step(x.int(), g.int(), x.int(), 0.1, 0.1), TypeError, "x_adv must have dtype"),
    (lambda x, g, m: F.pgd_step(x, g[:1], x, 0.1, 0.1), ValueError, "grad must have x_adv's shape"),
    (lambda x, g, m: F.pgd_step(x, g.double(), x, 0.1, 0.1), TypeError, "grad must have x_adv's dtype"),
    (lambda x, g, m: F.pgd_step(x, g, x.double(), 0.1, 0.1), TypeError, "x_orig must have x_adv's dtype"),
    (lambda x, g, m: F.pgd_step(x[:0], g[:0], x[:0], 0.1, 0.1), ValueError, "x_adv must be a non-empty"),
    (lambda x, g, m: F.pgd_step(x, g, x, -0.1, 0.1), ValueError, "eps must be >= 0"),
    (lambda x, g, m: F.pgd_step(x, g, x, 0.1, -1.0), ValueError, "alpha must be >= 0"),
    (lambda x, g, m: F.pgd_step(x, g, x, torch.tensor([0.1, -0.1]), 0.1), ValueError, "eps must be >= 0"),
    (lambda x, g, m: F.pgd_step(x, g, x, torch.tensor([0.1]), 0.1), ValueError, r"eps must be a number or a tensor of shape \(2,\)"),
    (lambda x, g, m: F.pgd_step(x, g, x, torch.tensor([1, 2]), 0.1), TypeError, "eps must be a floating tensor"),
    (lambda x, g, m: F.pgd_step(x, g, x, "0.1", 0.1), TypeError, "eps must be a float"),
    (lambda x, g, m: F.pgd_step(x, g, x, 0.1, None), TypeError, "alpha must be a float"),
    (lambda x, g, m: F.pgd_step(x, g, x, 0.1, 0.1, norm="l1"), ValueError, "norm must be 'linf' or 'l2'"),
    (lambda x, g, m: F.pgd_step(x, g, x, 0.1, 0.1, clip=(1.0, 0.0)), ValueError, "clip must have lo < hi"),
    (lambda x, g, m: F.pgd_step(x, g, x, 0.1, 0.1, clip=(0.0,)), TypeError, "clip must be a"),
    (lambda x, g, m: F.pgd_step(x, g, x, 1.5, 0.1), ValueError, "eps must not exceed the clip range"),
    (lambda x, g, m: F.pgd_step(x, g, x, 0.1, 0.1, backend="numpy"), ValueError, "backend must be one of"),
    (lambda x, g, m: F.mim_step(x, g, x, m[:1], 0.1, 0.1), ValueError, "momentum must have x_adv's shape"),
    (lambda x, g, m: F.mim_step(x, g, x, m.t().contiguous().t(), 0.1, 0.1), ValueError, "momentum must be contiguous"),
    (lambda x, g, m: F.mim_step(x, g, x, m, 0.1, 0.1, mu=float("nan")), TypeError, "mu must be a finite number"),
    (lambda x, g, m: F.random_start(x, 2.0), ValueError, "eps must not exceed the clip range"),
    (lambda x, g, m: F.random_start(x, 0.1, norm="linfinity"), ValueError, "norm must be"),
])
def test_bad_input_is_a_clear_error(call, error, match):
    x = torch.rand(2, 6)
    with pytest.raises(error, match=match):
        call(x, torch.randn(2, 6), torch.zeros(2, 6))


def test_kernel_checks_reject_bad_arguments():
    x = torch.rand(2, 6)
    eps = torch.full((2,), 0.1)
    philox = torch.tensor([1, 0])
    ops = torch.ops.stochnet
    with pytest.raises(RuntimeError, match="norm must be 'linf' or 'l2'"):
        ops.pgd_step(x, x, x, eps, eps, "l1", 0.0, 1.0)
    with pytest.raises(RuntimeError, match=r"eps must be a contiguous tensor of shape \(2,\)"):
        ops.pgd_step(x, x, x, eps[:1], eps, "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="grad must be contiguous"):
        ops.pgd_step(x, torch.rand(6, 2).t(), x, eps, eps, "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="momentum must have x_adv's dtype"):
        ops.mim_step(x, x, x, x.double(), eps, eps, 1.0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="clip must have lo < hi"):
        ops.random_start(x, eps, "linf", 1.0, 0.0, philox)
    with pytest.raises(RuntimeError, match="x_orig must be float32 or float64 on CPU"):
        ops.random_start(x.half(), eps, "linf", 0.0, 1.0, philox)
    with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
        ops.random_start(x, eps, "linf", 0.0, 1.0, philox[:1])
    with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0, got \(1, -1\)"):
        ops.random_start(x, eps, "l2", 0.0, 1.0, torch.tensor([1, -1]))


@pytest.mark.parametrize("index", range(5))
def test_ops_match_reference(index):
    op, args, reference, reference_args = list(op_samples())[index]
    torch.testing.assert_close(op(*args), reference(*reference_args), rtol=1e-5, atol=1e-6)
    if op is torch.ops.stochnet.mim_step.default:  # the momentum, updated in place by both
        torch.testing.assert_close(args[3], reference_args[3], rtol=1e-5, atol=1e-6)
        assert args[3].abs().sum() > 0


def test_l2_eps_may_exceed_the_clip_range_up_to_the_box_diameter():
    x = torch.rand(2, 3, 8, 8)
    out = F.pgd_step(x, torch.randn_like(x), x, eps=3.0, alpha=1.0, norm="l2")  # diameter sqrt(192)
    assert (out - x).flatten(1).norm(dim=1).max() <= 3.0 + 1e-5
    with pytest.raises(ValueError, match="eps must not exceed the clip range"):
        F.random_start(x, 14.0, norm="l2")
