"""The CUDA PGD / MIM / random-start kernels (csrc/cuda/pgd_kernels.cu) against the pure-torch
references of stochnet.ops.pgd, plus checks of the Philox stream and of the ops' invariants that
need no reference.

Skips without a CUDA device or when stochnet was built without its CUDA sources.
"""
import math

import pytest
import torch

from stochnet.ops import philox
from stochnet.ops.pgd import mim_step_reference, pgd_step_reference, random_start_reference
from cuda_device import SEEDS, philox_tensor, requires_cuda_kernels


pytestmark = requires_cuda_kernels

DEVICE = "cuda"
OPS = torch.ops.stochnet
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Output tolerances (rtol, atol) for values of magnitude ~1: float32 / float64 compute, then the
# rounding of the result (the references may round intermediate steps in 16-bit types).
TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-10), torch.float16: (4e-3, 4e-3),
       torch.bfloat16: (3e-2, 3e-2)}
# Shapes: samples not a multiple of 4 (units straddle samples), one sample, one element per
# sample, many samples, images.
SHAPES = [
    (1, 1),
    (3, 5),
    (4, 3, 5, 7),
    (2, 3, 8, 8),
    (7, 13),
    (5, 1),
    (1, 4099),
    (1000, 3),
    (16, 3, 32, 32),
]
LARGE_SHAPES = [(1, 3, 512, 515), (50_001, 3), (64, 3, 64, 64)]
NORMS = ["linf", "l2"]


def _make(shape, dtype, seed=0, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype).to(DEVICE)


def _make_inputs(shape, dtype, seed=0):
    """x_orig in [0, 1], x_adv within a few eps of it, a gradient with some exact zeros."""
    gen = torch.Generator().manual_seed(seed)
    x_orig = torch.rand(shape, generator=gen, dtype=torch.float64)
    x_adv = (x_orig + 0.05 * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    grad[torch.rand(shape, generator=gen) < 0.05] = 0
    return tuple(t.to(dtype).to(DEVICE) for t in (x_adv, grad, x_orig))


def _make_param(batch, value, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (value * (0.5 + torch.rand(batch, generator=gen, dtype=torch.float64))).to(dtype).to(DEVICE)


def _misaligned(t):
    """A copy of t whose storage starts one element past a 16-byte boundary (scalar code path)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def _assert_close(out, expected, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out.double(), expected.double(), rtol=rtol, atol=atol * scale)


def _sample_norms(t):
    return t.double().flatten(1).norm(dim=1)


# --- pgd_step ----------------------------------------------------------------------------------

def _check_pgd(x_adv, grad, x_orig, eps, alpha, norm, lo, hi):
    out = OPS.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, lo, hi)
    assert out.dtype == x_adv.dtype and out.shape == x_adv.shape and out.is_contiguous()
    expected = pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, lo, hi)
    _assert_close(out, expected, x_adv.dtype)
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pgd_step_matches_reference(shape, norm, dtype):
    x_adv, grad, x_orig = _make_inputs(shape, dtype)
    scale = 1.0 if norm == "linf" else math.sqrt(x_adv[0].numel())
    for param_dtype in (torch.float32, torch.float64):
        eps = _make_param(shape[0], 8 / 255 * scale, param_dtype)
        alpha = _make_param(shape[0], 2 / 255 * scale, param_dtype, seed=2)
        _check_pgd(x_adv, grad, x_orig, eps, alpha, norm, 0.0, 1.0)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pgd_step_misaligned_and_wide_bounds(norm, dtype):
    shape = (3, 4, 9, 5)
    x_adv, grad, x_orig = (_misaligned(t) for t in _make_inputs(shape, dtype, seed=3))
    eps = _make_param(3, 0.1 if norm == "linf" else 2.0, torch.float32)
    alpha = _make_param(3, 0.03 if norm == "linf" else 0.5, torch.float64)
    _check_pgd(x_adv, grad, x_orig, eps, alpha, norm, -1e30, 1e30)


@pytest.mark.parametrize("norm", NORMS)
def test_pgd_step_rejects_non_contiguous_inputs(norm):
    # The op layer (stochnet.ops.pgd) makes inputs contiguous; the kernel op requires it.
    shape = (4, 3, 6, 5)
    x_adv, grad, x_orig = _make_inputs(shape, torch.float32, seed=4)
    eps, alpha = _make_param(4, 0.1, torch.float32), _make_param(4, 0.02, torch.float32)
    for i in range(3):
        args = [x_adv, grad, x_orig]
        args[i] = args[i].to(memory_format=torch.channels_last)
        with pytest.raises(RuntimeError, match="contiguous"):
            OPS.pgd_step(*args, eps, alpha, norm, 0.0, 1.0)


@pytest.mark.parametrize("shape", LARGE_SHAPES)
@pytest.mark.parametrize("norm", NORMS)
def test_pgd_step_large_and_deterministic(shape, norm):
    x_adv, grad, x_orig = _make_inputs(shape, torch.float32, seed=5)
    scale = 1.0 if norm == "linf" else math.sqrt(x_adv[0].numel())
    eps = _make_param(shape[0], 8 / 255 * scale, torch.float32)
    alpha = _make_param(shape[0], 2 / 255 * scale, torch.float32)
    first = _check_pgd(x_adv, grad, x_orig, eps, alpha, norm, 0.0, 1.0)
    for _ in range(2):
        assert torch.equal(OPS.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, 0.0, 1.0), first)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pgd_linf_invariants(dtype):
    shape = (8, 3, 7, 7)
    x_adv, grad, x_orig = _make_inputs(shape, dtype, seed=6)
    eps, alpha = _make_param(8, 0.03, dtype), _make_param(8, 0.01, dtype)
    out = OPS.pgd_step(x_adv, grad, x_orig, eps, alpha, "linf", 0.0, 1.0)
    e = eps.view(-1, 1, 1, 1)
    assert bool(((out - x_orig).abs() <= e + 1e-6).all())
    assert bool(((out >= 0) & (out <= 1)).all())
    # From x_orig with alpha < eps and away from the box: exactly x_orig + alpha * sign(grad).
    x = 0.1 + 0.8 * x_orig
    eps, alpha = _make_param(8, 0.05, dtype), _make_param(8, 0.01, dtype, seed=2)
    out = OPS.pgd_step(x, grad, x, eps, alpha, "linf", 0.0, 1.0)
    assert torch.equal(out, x + alpha.view(-1, 1, 1, 1) * grad.sign())


def test_pgd_linf_zero_grad_keeps_x_adv():
    shape = (4, 10)
    x_adv, _, x_orig = _make_inputs(shape, torch.float32, seed=7)
    eps = torch.full((4,), 10.0, device=DEVICE)
    out = OPS.pgd_step(x_adv, torch.zeros_like(x_adv), x_orig, eps, eps, "linf", -1.0, 2.0)
    assert torch.equal(out, x_adv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pgd_l2_projects_onto_ball(dtype):
    shape = (6, 3, 9, 9)
    x_adv, grad, x_orig = _make_inputs(shape, dtype, seed=8)
    eps = _make_param(6, 0.5, dtype)
    alpha = _make_param(6, 10.0, dtype)  # large steps: every sample is projected
    out = OPS.pgd_step(x_adv, grad, x_orig, eps, alpha, "l2", -1e9, 1e9)
    torch.testing.assert_close(_sample_norms(out - x_orig), eps.double(), rtol=1e-5, atol=1e-6)
    # Inside the ball nothing is projected: out = x_adv + alpha * grad / ||grad||.
    eps = torch.full((6,), 1e6, dtype=dtype, device=DEVICE)
    out = OPS.pgd_step(x_adv, grad, x_orig, eps, alpha, "l2", -1e9, 1e9)
    step = alpha.view(-1, 1, 1, 1) * grad / _sample_norms(grad).to(dtype).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, x_adv + step, rtol=1e-5, atol=1e-6)


def test_pgd_l2_zero_grad_and_zero_delta():
    shape = (3, 17)
    x = _make(shape, torch.float32, seed=9)
    eps = torch.tensor([0.0, 1.0, 2.0], device=DEVICE)
    out = OPS.pgd_step(x, torch.zeros_like(x), x, eps, eps, "l2", -1e9, 1e9)
    assert torch.equal(out, x)


# --- mim_step ----------------------------------------------------------------------------------

def _run_mim_reference(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi):
    """(out, updated momentum) whether the reference returns both or updates momentum in place."""
    mom = momentum.clone()
    result = mim_step_reference(x_adv, grad, x_orig, mom, eps, alpha, mu, lo, hi)
    if isinstance(result, (tuple, list)):
        return result[0], result[1]
    return result, mom


def _check_mim(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi):
    exp_out, exp_mom = _run_mim_reference(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi)
    out = OPS.mim_step(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi)
    assert out.dtype == x_adv.dtype and out.shape == x_adv.shape and out.is_contiguous()
    scale = float(exp_mom.abs().max().clamp_min(1))
    _assert_close(momentum, exp_mom, momentum.dtype, scale=scale)
    if momentum.dtype in (torch.float16, torch.bfloat16):
        # The reference rounds each 16-bit op: momenta within a few ulp of 0 may differ in sign,
        # and so the step there.
        keep = exp_mom.abs() > 4 * torch.finfo(momentum.dtype).eps * scale
        _assert_close(out[keep], exp_out[keep], x_adv.dtype)
    else:
        _assert_close(out, exp_out, x_adv.dtype)
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mim_step_matches_reference(shape, dtype):
    x_adv, grad, x_orig = _make_inputs(shape, dtype, seed=10)
    momentum = _make(shape, dtype, seed=11)
    eps, alpha = _make_param(shape[0], 8 / 255, torch.float32), _make_param(shape[0], 2 / 255, torch.float64)
    _check_mim(x_adv, grad, x_orig, momentum, eps, alpha, 0.9, 0.0, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mim_step_misaligned(dtype):
    shape = (3, 4, 9, 5)
    x_adv, grad, x_orig = (_misaligned(t) for t in _make_inputs(shape, dtype, seed=12))
    momentum = _misaligned(_make(shape, dtype, seed=13))
    eps, alpha = _make_param(3, 0.1, torch.float32), _make_param(3, 0.03, torch.float32)
    _check_mim(x_adv, grad, x_orig, momentum, eps, alpha, 1.0, -1e30, 1e30)


def test_mim_first_step_from_zero_momentum():
    # momentum = 0: g = grad / mean|grad|, and the step follows sign(grad).
    shape = (5, 3, 8, 8)
    x_adv, grad, x_orig = _make_inputs(shape, torch.float64, seed=14)
    momentum = torch.zeros_like(grad)
    eps, alpha = _make_param(5, 0.1, torch.float64), _make_param(5, 0.02, torch.float64)
    out = OPS.mim_step(x_adv, grad, x_orig, momentum, eps, alpha, 0.9, 0.0, 1.0)
    mean = grad.abs().flatten(1).mean(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(momentum, grad / mean, rtol=1e-12, atol=1e-12)
    expected = OPS.pgd_step(x_adv, grad, x_orig, eps, alpha, "linf", 0.0, 1.0)
    assert torch.equal(out, expected)


def test_mim_rejects_non_contiguous_momentum():
    shape = (4, 3, 6, 5)
    x_adv, grad, x_orig = _make_inputs(shape, torch.float32, seed=15)
    eps, alpha = _make_param(4, 0.1, torch.float32), _make_param(4, 0.02, torch.float32)
    strided = _make(shape, torch.float32, seed=16).to(memory_format=torch.channels_last)
    before = strided.clone()
    with pytest.raises(RuntimeError, match="momentum"):
        OPS.mim_step(x_adv, grad, x_orig, strided, eps, alpha, 0.5, 0.0, 1.0)
    assert torch.equal(strided, before)


@pytest.mark.parametrize("shape", LARGE_SHAPES)
def test_mim_large_and_deterministic(shape):
    x_adv, grad, x_orig = _make_inputs(shape, torch.float32, seed=17)
    eps, alpha = _make_param(shape[0], 8 / 255, torch.float32), _make_param(shape[0], 2 / 255, torch.float32)
    momentum = _make(shape, torch.float32, seed=18)
    first_mom = momentum.clone()
    first = _check_mim(x_adv, grad, x_orig, first_mom, eps, alpha, 0.9, 0.0, 1.0)
    again_mom = momentum.clone()
    assert torch.equal(OPS.mim_step(x_adv, grad, x_orig, again_mom, eps, alpha, 0.9, 0.0, 1.0), first)
    assert torch.equal(again_mom, first_mom)


# --- random_start ------------------------------------------------------------------------------

def _check_random_start(x_orig, eps, norm, lo, hi, seed, offset):
    out = OPS.random_start(x_orig, eps, norm, lo, hi, philox_tensor(seed, offset))
    assert out.dtype == x_orig.dtype and out.shape == x_orig.shape and out.is_contiguous()
    expected = random_start_reference(x_orig, eps, norm, lo, hi, seed, offset)
    _assert_close(out, expected, x_orig.dtype)
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_random_start_matches_reference(shape, norm, dtype):
    _, _, x_orig = _make_inputs(shape, dtype, seed=20)
    for param_dtype in (torch.float32, torch.float64):
        eps = _make_param(shape[0], 8 / 255 if norm == "linf" else 0.5, param_dtype)
        _check_random_start(x_orig, eps, norm, 0.0, 1.0, 123456789, 7)


@pytest.mark.parametrize("seed,offset", SEEDS)
@pytest.mark.parametrize("norm", NORMS)
def test_random_start_seeds(seed, offset, norm):
    _, _, x_orig = _make_inputs((5, 3, 11, 7), torch.float32, seed=21)
    _check_random_start(x_orig, _make_param(5, 0.1, torch.float32), norm, 0.0, 1.0, seed, offset)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_random_start_misaligned(norm, dtype):
    _, _, x_orig = _make_inputs((3, 4, 9, 5), dtype, seed=22)
    _check_random_start(_misaligned(x_orig), _make_param(3, 0.1, torch.float64), norm, -1e30, 1e30, 42, 3)


@pytest.mark.parametrize("shape", [(3, 5), (4, 3, 5, 7), (1, 4099), (1000, 3)])
@pytest.mark.parametrize("seed,offset", SEEDS)
def test_random_start_linf_is_the_uniform_stream(shape, seed, offset):
    # x = 0, eps = 1, no clamp: out = 2 u - 1, u uniform p of the stream (seed, offset).
    x = torch.zeros(shape, dtype=torch.float64, device=DEVICE)
    eps = torch.ones(shape[0], dtype=torch.float64, device=DEVICE)
    out = OPS.random_start(x, eps, "linf", -2.0, 2.0, philox_tensor(seed, offset))
    u = philox.philox_uniform(seed, offset, x.numel(), DEVICE).double().view(shape)
    torch.testing.assert_close(out, 2 * u - 1, rtol=0, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 5), (4, 3, 5, 7), (1, 4099), (1000, 3), (2, 3, 64, 64)])
@pytest.mark.parametrize("seed,offset", SEEDS)
def test_random_start_l2_is_the_normal_stream(shape, seed, offset):
    # x = 0, no clamp: out_b = z_b / ||z_b|| * eps_b * v_b^(1/d), v from the stream's next counters.
    x = torch.zeros(shape, dtype=torch.float64, device=DEVICE)
    batch, numel = shape[0], x.numel()
    eps = _make_param(batch, 1.0, torch.float64)
    out = OPS.random_start(x, eps, "l2", -1e9, 1e9, philox_tensor(seed, offset))
    z = philox.philox_normal(seed, offset, numel, DEVICE).double().view(batch, -1)
    v = philox.philox_uniform(seed, offset + (numel + 3) // 4, batch, DEVICE).double()
    radius = eps * v.pow(1.0 / z.shape[1])
    expected = (z / z.norm(dim=1, keepdim=True) * radius.view(-1, 1)).view(shape)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(_sample_norms(out), radius, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_stays_in_ball_and_box(norm):
    shape = (16, 3, 16, 16)
    _, _, x_orig = _make_inputs(shape, torch.float32, seed=23)
    eps = _make_param(16, 8 / 255 if norm == "linf" else 1.0, torch.float32)
    out = OPS.random_start(x_orig, eps, norm, 0.0, 1.0, philox_tensor(99, 0))
    assert bool(((out >= 0) & (out <= 1)).all())
    delta = (out - x_orig).double()
    if norm == "linf":
        assert bool((delta.abs() <= eps.double().view(-1, 1, 1, 1) * (1 + 1e-6)).all())
    else:
        assert bool((_sample_norms(delta) <= eps.double() * (1 + 1e-5)).all())
    # Deterministic for a given (seed, offset), different for another offset.
    assert torch.equal(OPS.random_start(x_orig, eps, norm, 0.0, 1.0, philox_tensor(99, 0)), out)
    assert not torch.equal(OPS.random_start(x_orig, eps, norm, 0.0, 1.0, philox_tensor(99, 1)), out)


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_matches_cpu_op(norm):
    shape = (4, 3, 9, 7)
    _, _, x_orig = _make_inputs(shape, torch.float32, seed=24)
    eps = _make_param(4, 0.3, torch.float32)
    out = OPS.random_start(x_orig, eps, norm, 0.0, 1.0, philox_tensor(2024, 5))
    cpu = OPS.random_start(x_orig.cpu(), eps.cpu(), norm, 0.0, 1.0, philox_tensor(2024, 5))
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-5, atol=1e-6)


# --- empty inputs and argument checks ----------------------------------------------------------

def test_empty_inputs_are_rejected():
    x = torch.empty(0, 3, device=DEVICE)
    eps = torch.empty(0, device=DEVICE)
    with pytest.raises(RuntimeError, match="empty"):
        OPS.pgd_step(x, x, x, eps, eps, "l2", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="empty"):
        OPS.mim_step(x, x, x, x.clone(), eps, eps, 0.9, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="empty"):
        OPS.random_start(x, eps, "l2", 0.0, 1.0, philox_tensor(1, 2))


def test_argument_errors():
    x_adv, grad, x_orig = _make_inputs((4, 6), torch.float32, seed=25)
    eps = torch.full((4,), 0.1, device=DEVICE)
    with pytest.raises(RuntimeError, match="norm"):
        OPS.pgd_step(x_adv, grad, x_orig, eps, eps, "l1", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="eps"):
        OPS.pgd_step(x_adv, grad, x_orig, eps[:3], eps, "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="eps"):
        OPS.pgd_step(x_adv, grad, x_orig, eps.cpu(), eps, "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="alpha"):
        OPS.pgd_step(x_adv, grad, x_orig, eps, eps.half(), "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="grad"):
        OPS.pgd_step(x_adv, grad.double(), x_orig, eps, eps, "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="x_orig"):
        OPS.pgd_step(x_adv, grad, x_orig[:, :5], eps, eps, "l2", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="momentum"):
        OPS.mim_step(x_adv, grad, x_orig, torch.zeros(4, 5, device=DEVICE), eps, eps, 0.9, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="momentum"):
        OPS.mim_step(x_adv.half(), grad.half(), x_orig.half(), torch.zeros(4, 6, device=DEVICE), eps, eps,
                         0.9, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="clip"):
        OPS.pgd_step(x_adv, grad, x_orig, eps, eps, "linf", 1.0, 0.0)
    with pytest.raises(RuntimeError, match="clip"):
        OPS.random_start(x_orig, eps, "linf", 0.0, float("nan"), philox_tensor(1, 0))
    with pytest.raises(RuntimeError, match="norm"):
        OPS.random_start(x_orig, eps, "L2", 0.0, 1.0, philox_tensor(1, 0))
    with pytest.raises(RuntimeError):
        OPS.random_start(x_orig.int(), eps, "l2", 0.0, 1.0, philox_tensor(1, 0))
    with pytest.raises(RuntimeError, match="mu"):
        OPS.mim_step(x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, eps, float("inf"), 0.0, 1.0)
    with pytest.raises(ValueError, match="momentum shares memory with x_adv"):
        OPS.mim_step(x_adv, grad, x_orig, x_adv, eps, eps, 0.9, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
        OPS.random_start(x_orig, eps, "linf", 0.0, 1.0, philox_tensor(1, 0).to(DEVICE))
    with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0"):
        OPS.random_start(x_orig, eps, "l2", 0.0, 1.0, philox_tensor(-1, 0))


# --- op registration ---------------------------------------------------------------------------

def test_opcheck():
    x_adv, grad, x_orig = _make_inputs((3, 2, 5, 5), torch.float32, seed=26)
    eps, alpha = _make_param(3, 0.05, torch.float32), _make_param(3, 0.02, torch.float32, seed=2)
    for norm in NORMS:
        torch.library.opcheck(OPS.pgd_step.default, (x_adv, grad, x_orig, eps, alpha, norm, 0.0, 1.0))
        torch.library.opcheck(OPS.random_start.default, (x_orig, eps, norm, 0.0, 1.0, philox_tensor(5, 7)))
    torch.library.opcheck(OPS.mim_step.default, (x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, alpha, 0.9,
                                                 0.0, 1.0))
