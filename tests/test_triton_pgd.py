"""Triton PGD / MIM step and random-start ops against the pure-torch references and the C++ CPU ops."""
import os

import pytest
import torch

RUNNABLE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not RUNNABLE, reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1")

from torch._library.custom_ops import OPDEFS  # noqa: E402

from stochnet.kernels import pgd as kernels  # noqa: E402
from stochnet.ops.library import triton_ops  # noqa: E402
from stochnet.ops.pgd import mim_step_reference, pgd_step_reference, random_start_reference  # noqa: E402

ops = triton_ops()
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
SEED, OFFSET = 2**35 + 11, 2**32 - 5  # the counter crosses 2**32 inside the call
PHILOX = torch.tensor([SEED, OFFSET])
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
    out = ops.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, LO, HI)
    assert out.is_contiguous()
    _close(out, pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, LO, HI))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_step_zero_grad_and_float64_eps(norm):
    shape = (3, 2, 5)
    x_adv, grad, x_orig, eps, alpha = _problem(shape, torch.float32, eps_dtype=torch.float64)
    grad[1] = 0
    grad[2, 0, :3] = 0
    x_adv[1] = x_orig[1] + 1e-3
    out = ops.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, LO, HI)
    _close(out, pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, LO, HI))
    # A zero gradient does not move a sample inside the ball and the box.
    out = ops.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, -100.0, 100.0)
    assert torch.equal(out[1], x_adv[1])


def test_pgd_l2_projects_onto_the_ball():
    x_adv, grad, x_orig, eps, alpha = _problem((4, 3, 7), torch.float64)
    alpha = alpha * 10  # steps leave the ball: the projection is active
    out = ops.pgd_step(x_adv, grad, x_orig, eps, alpha, "l2", -100.0, 100.0)
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
    out = ops.mim_step(x_adv, grad, x_orig, momentum, eps, alpha, 0.9, LO, HI)
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
    out = ops.mim_step(x_adv, grad, x_orig, momentum, eps, alpha, 0.5, -100.0, 100.0)
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
    out = ops.random_start(x_orig, eps, norm, LO, HI, PHILOX)
    _close(out, random_start_reference(x_orig, eps, norm, LO, HI, SEED, OFFSET))


def test_random_start_stays_in_the_ball():
    x_orig = _tensor((5, 2, 3, 3), torch.float64)
    eps = _per_sample_values(5, torch.float64, 0.1, 0.5, 7)
    out = ops.random_start(x_orig, eps, "l2", -100.0, 100.0, torch.tensor([3, 0]))
    assert ((out - x_orig).flatten(1).norm(dim=1) <= eps * (1 + 1e-12)).all()
    out = ops.random_start(x_orig, eps, "linf", -100.0, 100.0, torch.tensor([3, 0]))
    assert ((out - x_orig).abs().flatten(1).amax(1) <= eps).all()


def test_multiple_tiles_per_sample(monkeypatch):
    """Tiny tiles: several column tiles per sample in the reductions, several blocks per sample."""
    monkeypatch.setattr(kernels, "_TILE", 16)
    monkeypatch.setattr(kernels, "_BLOCK_1D", 16)
    shape = (3, 7, 5)
    x_adv, grad, x_orig, eps, alpha = _problem(shape, torch.float64)
    for norm in ("linf", "l2"):
        _close(ops.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, LO, HI),
               pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, LO, HI))
        _close(ops.random_start(x_orig, eps, norm, LO, HI, PHILOX),
               random_start_reference(x_orig, eps, norm, LO, HI, SEED, OFFSET))
    momentum, expected_momentum = torch.zeros_like(x_adv), torch.zeros_like(x_adv)
    expected = mim_step_reference(x_adv, grad, x_orig, expected_momentum, eps, alpha, 1.0, LO, HI)
    _close(ops.mim_step(x_adv, grad, x_orig, momentum, eps, alpha, 1.0, LO, HI), expected)
    torch.testing.assert_close(momentum, expected_momentum, rtol=1e-5, atol=1e-6)


def test_random_start_reads_philox_on_the_data_device():
    x_orig = _tensor((3, 5), torch.float32)
    eps = _per_sample_values(3, torch.float32, 0.1, 0.5, 6)
    for norm in ("linf", "l2"):
        assert torch.equal(ops.random_start(x_orig, eps, norm, LO, HI, PHILOX.to(DEVICE)),
                           ops.random_start(x_orig, eps, norm, LO, HI, PHILOX))


def test_validation_names_arguments():
    """Through stochnet.ops.checks, plus what the kernels rely on: errors name the argument."""
    x_adv, grad, x_orig, eps, alpha = _problem((2, 3), torch.float32)
    with pytest.raises(ValueError, match="norm"):
        ops.pgd_step(x_adv, grad, x_orig, eps, alpha, "l1", LO, HI)
    with pytest.raises(ValueError, match="grad must have x_adv's shape"):
        ops.pgd_step(x_adv, grad[:1], x_orig, eps, alpha, "linf", LO, HI)
    with pytest.raises(TypeError, match="x_orig must have x_adv's dtype"):
        ops.pgd_step(x_adv, grad, x_orig.double(), eps, alpha, "linf", LO, HI)
    with pytest.raises(ValueError, match="eps must be a float32 or float64 tensor of shape"):
        ops.pgd_step(x_adv, grad, x_orig, eps[:1], alpha, "linf", LO, HI)
    with pytest.raises(ValueError, match="alpha must be a float32 or float64 tensor of shape"):
        ops.pgd_step(x_adv, grad, x_orig, eps, alpha.half(), "linf", LO, HI)
    with pytest.raises(ValueError, match="alpha must be contiguous"):
        ops.pgd_step(x_adv, grad, x_orig, eps, torch.ones(2, 2, device=DEVICE)[:, 0], "linf", LO, HI)
    with pytest.raises(ValueError, match="lo < hi"):
        ops.pgd_step(x_adv, grad, x_orig, eps, alpha, "linf", 1.0, 0.0)
    with pytest.raises(ValueError, match="lo < hi"):
        ops.mim_step(x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, alpha, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="lo < hi"):
        ops.random_start(x_orig, eps, "linf", 1.0, 0.0, PHILOX)
    with pytest.raises(ValueError, match="x_adv must be contiguous"):
        ops.pgd_step(x_adv.t(), grad.t(), x_orig.t(), eps[:1].expand(3), alpha[:1].expand(3), "linf", LO, HI)
    with pytest.raises(ValueError, match="momentum must have x_adv's shape"):
        ops.mim_step(x_adv, grad, x_orig, torch.zeros(2, 4, device=DEVICE), eps, alpha, 1.0, LO, HI)
    with pytest.raises(ValueError, match="momentum must be contiguous"):
        ops.mim_step(x_adv, grad, x_orig, torch.zeros(3, 2, device=DEVICE).t(), eps, alpha, 1.0, LO, HI)
    with pytest.raises(ValueError, match="x_orig must be contiguous"):
        ops.random_start(torch.zeros(3, 2, device=DEVICE).t(), eps, "linf", LO, HI, PHILOX)
    with pytest.raises(ValueError, match="philox must be an int64 tensor of shape"):
        ops.random_start(x_orig, eps, "linf", LO, HI, torch.tensor([SEED]))


def test_per_sample_reduction_limit_names_the_argument(monkeypatch):
    """The l2 reductions hold at most 65535 column tiles per sample (grid axis 1)."""
    monkeypatch.setattr(kernels, "_MAX_COLUMN_TILES", 1)
    x_adv, grad, x_orig, eps, alpha = _problem((2, 3000), torch.float32)
    with pytest.raises(ValueError, match="x_adv has 3000 elements per sample"):
        ops.pgd_step(x_adv, grad, x_orig, eps, alpha, "l2", LO, HI)
    with pytest.raises(ValueError, match="x_orig has 3000 elements per sample"):
        ops.random_start(x_orig, eps, "l2", LO, HI, PHILOX)


def _skip_without_fakes(*names):
    """Skip while stochnet.ops.pgd registers no fake implementation for a Triton op of ``names``."""
    missing = [name for name in names
               if getattr(OPDEFS.get(f"stochnet_triton::{name}"), "_abstract_fn", None) is None]
    if missing:
        pytest.skip(f"stochnet.ops.pgd registers no fake for stochnet_triton::{missing} yet")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_opcheck_pgd_step(norm):
    _skip_without_fakes("pgd_step")
    torch.library.opcheck(ops.pgd_step, (*_problem((3, 2, 5), torch.float32), norm, LO, HI),
                          test_utils=("test_schema", "test_faketensor"))


def test_opcheck_mim_step():
    """test_schema checks that the op mutates momentum and nothing else."""
    _skip_without_fakes("mim_step")
    x_adv, grad, x_orig, eps, alpha = _problem((3, 2, 5), torch.float32)
    momentum = _tensor((3, 2, 5), torch.float32, salt=5)
    torch.library.opcheck(ops.mim_step, (x_adv, grad, x_orig, momentum, eps, alpha, 0.9, LO, HI),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_opcheck_random_start(norm):
    _skip_without_fakes("random_start")
    x_orig = _tensor((3, 2, 5), torch.float32)
    eps = _per_sample_values(3, torch.float32, 0.1, 0.5, 6)
    torch.library.opcheck(ops.random_start, (x_orig, eps, norm, LO, HI, PHILOX),
                          test_utils=("test_schema", "test_faketensor"))


CPU_ONLY = pytest.mark.skipif(DEVICE != "cpu", reason="compares with the C++ CPU ops on CPU tensors")


@CPU_ONLY
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (37, 5), (1, 3, 5, 5)], ids=str)
def test_agrees_with_cpu_op(shape, dtype):
    cpp = torch.ops.stochnet
    x_adv, grad, x_orig, eps, alpha = _problem(shape, dtype)
    for norm in ("linf", "l2"):
        torch.testing.assert_close(ops.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, LO, HI),
                                   cpp.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, LO, HI),
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ops.random_start(x_orig, eps, norm, LO, HI, PHILOX),
                                   cpp.random_start(x_orig, eps, norm, LO, HI, PHILOX),
                                   rtol=1e-5, atol=1e-6)
    momentum = _tensor(shape, dtype, salt=5)
    cpu_momentum = momentum.clone()
    out = ops.mim_step(x_adv, grad, x_orig, momentum, eps, alpha, 0.9, LO, HI)
    cpu_out = cpp.mim_step(x_adv, grad, x_orig, cpu_momentum, eps, alpha, 0.9, LO, HI)
    torch.testing.assert_close(momentum, cpu_momentum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, cpu_out, rtol=1e-5, atol=1e-6)


def test_empty_batch_is_rejected():
    """As the C++ ops: an empty x_adv / x_orig is an error naming it, not an empty result."""
    x = torch.empty((0, 3), device=DEVICE)
    eps = torch.empty(0, device=DEVICE)
    for norm in ("linf", "l2"):
        with pytest.raises(ValueError, match="x_adv must be a non-empty tensor"):
            ops.pgd_step(x, x, x, eps, eps, norm, LO, HI)
        with pytest.raises(ValueError, match="x_orig must be a non-empty tensor"):
            ops.random_start(x, eps, norm, LO, HI, PHILOX)
    with pytest.raises(ValueError, match="x_adv must be a non-empty tensor"):
        ops.mim_step(x, x, x, x.clone(), eps, eps, 1.0, LO, HI)
