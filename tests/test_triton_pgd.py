"""Triton PGD / MIM steps and random start against the pure-torch references (and the C++ CPU op)."""
import os

import pytest
import torch

RUNNABLE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not RUNNABLE, reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1")

from stochnet.kernels import pgd as kernels

from stochnet.ops.pgd import (
    mim_step_reference,
    pgd_step_reference,
    random_start_reference,
)

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
SEED, OFFSET = 2**35 + 11, 2**32 - 5  # the counter crosses 2**32 inside the call
LO, HI = -1.5, 1.5

SHAPES = [
    (3, 5, 7, 9),   # K = 315: samples start off the Philox counter grid
    (2, 3, 4, 8),   # K % 4 == 0
    (1, 3, 5, 5),   # a single sample
    (37, 5),        # many short odd samples in one tile
    (4, 3),         # K < 4: windows shorter than a Philox counter
    (5,),           # K = 1
]
DTYPES = [torch.float32, torch.float64]


def _tensor(shape, dtype, salt=0, scale=1.0):
    generator = torch.Generator().manual_seed(sum(shape) + 100 * salt)
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(DEVICE, dtype)


def _per_sample_values(batch, dtype, low, high, salt):
    generator = torch.Generator().manual_seed(batch + salt)
    return (low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)).to(DEVICE, dtype)


def _problem(shape, dtype, eps_dtype=torch.float32):
    x_orig = _tensor(shape, dtype)
    x_adv = x_orig + _tensor(shape, dtype, salt=1, scale=0.05)
    grad = _tensor(shape, dtype, salt=2)
    eps = _per_sample_values(shape[0], eps_dtype, 0.02, 0.1, 3)
    alpha = _per_sample_values(shape[0], eps_dtype, 0.01, 0.05, 4)
    return x_adv, grad, x_orig, eps, alpha


def _close(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pgd_step_matches_reference(shape, norm, dtype):
    x_adv, grad, x_orig, eps, alpha = _problem(shape, dtype)
    out = kernels.pgd_step_fwd(x_adv, grad, x_orig, eps, alpha, norm, LO, HI)
    assert out.is_contiguous()
    _close(out, pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, LO, HI))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_step_zero_grad_and_float64_eps(norm):
    shape = (3, 2, 5)
    x_adv, grad, x_orig, eps, alpha = _problem(shape, torch.float32, eps_dtype=torch.float64)
    grad[1] = 0
    grad[2, 0, :3] = 0
    x_adv[1] = x_orig[1] + 1e-3
    out = kernels.pgd_step_fwd(x_adv, grad, x_orig, eps, alpha, norm, LO, HI)
    _close(out, pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, LO, HI))
    # A zero gradient does not move a sample inside the ball and the box.
    out = kernels.pgd_step_fwd(x_adv, grad, x_orig, eps, alpha, norm, -100.0, 100.0)
    assert torch.equal(out[1], x_adv[1])


def test_pgd_l2_projects_onto_the_ball():
    x_adv, grad, x_orig, eps, alpha = _problem((4, 3, 7), torch.float64)
    alpha = alpha * 10  # steps leave the ball: the projection is active
    out = kernels.pgd_step_fwd(x_adv, grad, x_orig, eps, alpha, "l2", -100.0, 100.0)
    norms = (out - x_orig).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, eps.double(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mim_step_matches_reference_and_updates_momentum(shape, dtype):
    x_adv, grad, x_orig, eps, alpha = _problem(shape, dtype)
    momentum = _tensor(shape, dtype, salt=5, scale=0.5)
    expected_momentum = momentum.clone()
    expected = mim_step_reference(x_adv, grad, x_orig, expected_momentum, eps, alpha, 0.9, LO, HI)
    storage = momentum.data_ptr()
    out = kernels.mim_step_fwd(x_adv, grad, x_orig, momentum, eps, alpha, 0.9, LO, HI)
    assert momentum.data_ptr() == storage
    torch.testing.assert_close(momentum, expected_momentum, rtol=1e-5, atol=1e-6)
    _close(out, expected)


def test_mim_zero_grad_keeps_scaled_momentum():
    shape = (2, 3, 3)
    x_adv, grad, x_orig, eps, alpha = _problem(shape, torch.float32)
    x_adv = x_orig + 1e-3  # inside the box of every eps
    grad.zero_()
    momentum = _tensor(shape, torch.float32, salt=5)
    momentum[0, 0, 0] = 0  # sign(0) = 0: that element does not move
    before = momentum.clone()
    expected_momentum = momentum.clone()
    expected = mim_step_reference(x_adv, grad, x_orig, expected_momentum, eps, alpha, 0.5, -100.0, 100.0)
    out = kernels.mim_step_fwd(x_adv, grad, x_orig, momentum, eps, alpha, 0.5, -100.0, 100.0)
    torch.testing.assert_close(momentum, 0.5 * before, rtol=0, atol=0)
    torch.testing.assert_close(momentum, expected_momentum, rtol=1e-5, atol=1e-6)
    _close(out, expected)
    assert out[0, 0, 0] == x_adv[0, 0, 0]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_random_start_matches_reference(shape, norm, dtype):
    x_orig = _tensor(shape, dtype)
    eps = _per_sample_values(shape[0], torch.float32, 0.1, 0.5, 6)
    out = kernels.random_start_fwd(x_orig, eps, norm, LO, HI, SEED, OFFSET)
    _close(out, random_start_reference(x_orig, eps, norm, LO, HI, SEED, OFFSET))


def test_random_start_stays_in_the_ball():
    x_orig = _tensor((5, 2, 3, 3), torch.float64)
    eps = _per_sample_values(5, torch.float64, 0.1, 0.5, 7)
    out = kernels.random_start_fwd(x_orig, eps, "l2", -100.0, 100.0, 3, 0)
    assert ((out - x_orig).flatten(1).norm(dim=1) <= eps * (1 + 1e-12)).all()
    out = kernels.random_start_fwd(x_orig, eps, "linf", -100.0, 100.0, 3, 0)
    assert ((out - x_orig).abs().flatten(1).amax(1) <= eps).all()


def test_multiple_tiles_per_sample(monkeypatch):
    """Tiny tiles: several column tiles per sample in the reductions, several blocks per sample."""
    monkeypatch.setattr(kernels, "_TILE", 16)
    monkeypatch.setattr(kernels, "_BLOCK_1D", 16)
    shape = (3, 7, 5)
    x_adv, grad, x_orig, eps, alpha = _problem(shape, torch.float64)
    for norm in ("linf", "l2"):
        _close(kernels.pgd_step_fwd(x_adv, grad, x_orig, eps, alpha, norm, LO, HI),
               pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, LO, HI))
        _close(kernels.random_start_fwd(x_orig, eps, norm, LO, HI, SEED, OFFSET),
               random_start_reference(x_orig, eps, norm, LO, HI, SEED, OFFSET))
    momentum, expected_momentum = torch.zeros_like(x_adv), torch.zeros_like(x_adv)
    expected = mim_step_reference(x_adv, grad, x_orig, expected_momentum, eps, alpha, 1.0, LO, HI)
    _close(kernels.mim_step_fwd(x_adv, grad, x_orig, momentum, eps, alpha, 1.0, LO, HI), expected)
    torch.testing.assert_close(momentum, expected_momentum, rtol=1e-5, atol=1e-6)


def test_validation_names_arguments():
    x_adv, grad, x_orig, eps, alpha = _problem((2, 3), torch.float32)
    with pytest.raises(ValueError, match="norm"):
        kernels.pgd_step_fwd(x_adv, grad, x_orig, eps, alpha, "l1", LO, HI)
    with pytest.raises(ValueError, match="grad"):
        kernels.pgd_step_fwd(x_adv, grad[:1], x_orig, eps, alpha, "linf", LO, HI)
    with pytest.raises(ValueError, match="x_orig"):
        kernels.pgd_step_fwd(x_adv, grad, x_orig.double(), eps, alpha, "linf", LO, HI)
    with pytest.raises(ValueError, match="eps"):
        kernels.pgd_step_fwd(x_adv, grad, x_orig, eps[:1], alpha, "linf", LO, HI)
    with pytest.raises(ValueError, match="alpha"):
        kernels.pgd_step_fwd(x_adv, grad, x_orig, eps, alpha.half(), "linf", LO, HI)
    with pytest.raises(ValueError, match="lo"):
        kernels.pgd_step_fwd(x_adv, grad, x_orig, eps, alpha, "linf", 1.0, 0.0)
    with pytest.raises(ValueError, match="x_adv"):
        kernels.pgd_step_fwd(x_adv.t(), grad, x_orig, eps, alpha, "linf", LO, HI)
    with pytest.raises(ValueError, match="momentum"):
        kernels.mim_step_fwd(x_adv, grad, x_orig, torch.zeros(2, 4, device=DEVICE), eps, alpha, 1.0, LO, HI)
    with pytest.raises(ValueError, match="seed"):
        kernels.random_start_fwd(x_orig, eps, "linf", LO, HI, -1, 0)


def _cpu_op(name):
    """The C++ CPU kernel of torch.ops.stochnet.<name>, or None when it is not there."""
    if DEVICE != "cpu":
        return None
    op = getattr(torch.ops.stochnet, name)
    has_kernel = getattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", None)
    if has_kernel is not None:
        return op if has_kernel(f"stochnet::{name}", "CPU") else None
    x = torch.zeros(1, 1)
    e = torch.ones(1)
    try:
        if name == "pgd_step_fwd":
            op(x, x, x, e, e, "linf", 0.0, 1.0)
        elif name == "mim_step_fwd":
            op(x, x, x, x.clone(), e, e, 1.0, 0.0, 1.0)
        else:
            op(x, e, "linf", 0.0, 1.0, 0, 0)
    except (NotImplementedError, RuntimeError):
        return None
    return op


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (37, 5), (1, 3, 5, 5)], ids=str)
def test_agrees_with_cpu_op(shape, dtype):
    ops = {name: _cpu_op(name) for name in ("pgd_step_fwd", "mim_step_fwd", "random_start_fwd")}
    if not any(ops.values()):
        pytest.skip("no C++ CPU kernel for the PGD ops")
    x_adv, grad, x_orig, eps, alpha = _problem(shape, dtype)
    for norm in ("linf", "l2"):
        if ops["pgd_step_fwd"]:
            torch.testing.assert_close(kernels.pgd_step_fwd(x_adv, grad, x_orig, eps, alpha, norm, LO, HI),
                                       ops["pgd_step_fwd"](x_adv, grad, x_orig, eps, alpha, norm, LO, HI),
                                       rtol=1e-5, atol=1e-6)
        if ops["random_start_fwd"]:
            torch.testing.assert_close(kernels.random_start_fwd(x_orig, eps, norm, LO, HI, SEED, OFFSET),
                                       ops["random_start_fwd"](x_orig, eps, norm, LO, HI, SEED, OFFSET),
                                       rtol=1e-5, atol=1e-6)
    if ops["mim_step_fwd"]:
        momentum = _tensor(shape, dtype, salt=5)
        cpu_momentum = momentum.clone()
        out = kernels.mim_step_fwd(x_adv, grad, x_orig, momentum, eps, alpha, 0.9, LO, HI)
        cpu_out = ops["mim_step_fwd"](x_adv, grad, x_orig, cpu_momentum, eps, alpha, 0.9, LO, HI)
        torch.testing.assert_close(momentum, cpu_momentum, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out, cpu_out, rtol=1e-5, atol=1e-6)


def test_empty_batch():
    x = torch.empty((0, 3), device=DEVICE)
    eps = torch.empty(0, device=DEVICE)
    for norm in ("linf", "l2"):
        assert kernels.pgd_step_fwd(x, x, x, eps, eps, norm, LO, HI).shape == (0, 3)
        assert kernels.random_start_fwd(x, eps, norm, LO, HI, SEED, OFFSET).shape == (0, 3)
    assert kernels.mim_step_fwd(x, x, x, x.clone(), eps, eps, 1.0, LO, HI).shape == (0, 3)
