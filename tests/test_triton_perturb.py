"""Triton noise-injection ops against the pure-torch reference: y and the fused d theta."""
import os

import pytest
import torch

RUNNABLE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not RUNNABLE, reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1")

from torch._library.custom_ops import OPDEFS  # noqa: E402

from stochnet import functional  # noqa: E402
from stochnet.kernels import perturb as kernels  # noqa: E402
from stochnet.ops.library import triton_ops  # noqa: E402
from stochnet.ops.perturb import reference, reference_theta_grad  # noqa: E402

ops = triton_ops()
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
SEED, OFFSET = 2**35 + 11, 2**32 - 5  # the counter crosses 2**32 inside the call
PHILOX = torch.tensor([SEED, OFFSET])

# Comments name the d theta path of a per-channel theta: "planes" reduces rows of the
# (N * C, inner) view (inner >= 32), "columns" sums the (N, F) view over the batch and folds.
# Rows that start off a Philox counter (row length % 4 != 0) exercise the shifted windows.
SHAPES = [
    (3, 5, 7, 9),   # columns, F = 315: rows start off the counter grid
    (2, 3, 4, 8),   # columns, aligned rows
    (2, 3, 8, 12),  # planes, aligned
    (3, 2, 33),     # planes of odd length
    (37, 5),        # (N, C): columns, odd C
    (1, 4, 3, 3),   # a single sample
]
THETAS = ["scalar", "channel", "element"]


def _theta(kind, shape, dtype):
    generator = torch.Generator().manual_seed(7 * sum(shape))
    size = {"scalar": (), "channel": (shape[1],), "element": tuple(shape[1:])}[kind]
    return (torch.rand(size, generator=generator, dtype=dtype) + 0.5).to(DEVICE)


def _tensor(shape, dtype, salt=0):
    generator = torch.Generator().manual_seed(sum(shape) + salt)
    return torch.randn(shape, generator=generator, dtype=dtype).to(DEVICE)


def _philox(seed, offset):
    """(seed, offset) as the ops take it; a seed of 2**63 or more as its two's complement (the key's bits)."""
    return torch.tensor([seed - 2**64 if seed >= 2**63 else seed, offset])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", THETAS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_theta_grad_match_reference(shape, kind, dtype):
    x, theta = _tensor(shape, dtype), _theta(kind, shape, dtype)
    y = ops.perturb(x, theta, PHILOX)
    assert y.dtype == x.dtype and y.shape == x.shape and y.is_contiguous()
    torch.testing.assert_close(y, reference(x, theta, SEED, OFFSET), rtol=1e-5, atol=1e-6)

    grad = _tensor(shape, dtype, salt=1)
    dtheta = ops.perturb_backward(grad, theta, PHILOX)
    assert dtheta.dtype == theta.dtype and dtheta.shape == theta.shape
    # atol: an entry summing few products may nearly cancel; z itself agrees to a few float32 ulps.
    torch.testing.assert_close(dtheta, reference_theta_grad(grad, theta, SEED, OFFSET), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", THETAS)
@pytest.mark.parametrize("shape", [(37, 3, 5), (41, 2, 2, 2), (3, 2, 37)], ids=str)
def test_theta_grad_with_row_loops_and_column_tiles(shape, kind, monkeypatch):
    """Tiny tiles: several column tiles and one program looping over all row tiles (columns
    path), several windows per plane of odd length (planes path, (3, 2, 37) with scalar/channel)."""
    monkeypatch.setattr(kernels, "_TILE", 32)
    monkeypatch.setattr(kernels, "_COL_BLOCK_K", 8)
    monkeypatch.setattr(kernels, "_TARGET_PROGRAMS", 1)
    grad, theta = _tensor(shape, torch.float64), _theta(kind, shape, torch.float64)
    torch.testing.assert_close(ops.perturb_backward(grad, theta, PHILOX),
                               reference_theta_grad(grad, theta, SEED, OFFSET), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", THETAS)
def test_float32_theta_with_float64_x(kind):
    shape = (3, 4, 5, 3)
    x, theta = _tensor(shape, torch.float64), _theta(kind, shape, torch.float32)
    torch.testing.assert_close(ops.perturb(x, theta, PHILOX), reference(x, theta, SEED, OFFSET),
                               rtol=1e-5, atol=1e-6)
    dtheta = ops.perturb_backward(x, theta, PHILOX)
    assert dtheta.dtype == torch.float32
    torch.testing.assert_close(dtheta, reference_theta_grad(x, theta, SEED, OFFSET), rtol=1e-5, atol=1e-5)


def test_one_element_theta_of_any_shape_is_a_scalar():
    x = _tensor((2, 3, 5), torch.float32)
    theta = torch.full((1, 1, 1), 0.75, device=DEVICE)
    y = ops.perturb(x, theta, PHILOX)
    torch.testing.assert_close(y, ops.perturb(x, theta.reshape(()), PHILOX), rtol=0, atol=0)
    dtheta = ops.perturb_backward(x, theta, PHILOX)
    assert dtheta.shape == (1, 1, 1)
    torch.testing.assert_close(dtheta, reference_theta_grad(x, theta, SEED, OFFSET), rtol=1e-5, atol=1e-5)


def test_same_seed_same_noise_other_offset_other_noise():
    x = _tensor((3, 4, 5, 7), torch.float32)
    theta = _theta("channel", x.shape, torch.float32)
    first = ops.perturb(x, theta, PHILOX)
    assert torch.equal(first, ops.perturb(x, theta, PHILOX))
    assert not torch.equal(first, ops.perturb(x, theta, _philox(SEED, OFFSET + 1)))
    big_seed = 2**64 - 3  # the whole 64-bit key range
    torch.testing.assert_close(ops.perturb(x, theta, _philox(big_seed, 0)), reference(x, theta, big_seed, 0),
                               rtol=1e-5, atol=1e-6)


def test_philox_on_the_data_device_gives_the_same_noise():
    """Each kernel loads (seed, offset) itself, wherever the philox tensor lives."""
    x = _tensor((2, 3, 5), torch.float32)
    theta = _theta("channel", x.shape, torch.float32)
    assert torch.equal(ops.perturb(x, theta, PHILOX.to(DEVICE)), ops.perturb(x, theta, PHILOX))
    assert torch.equal(ops.perturb_backward(x, theta, PHILOX.to(DEVICE)), ops.perturb_backward(x, theta, PHILOX))


def test_zero_theta_is_identity_and_nan_propagates():
    x = _tensor((2, 3, 6), torch.float32)
    assert torch.equal(ops.perturb(x, torch.zeros(3, device=DEVICE), PHILOX), x)
    grad = _tensor((2, 3, 6), torch.float32, salt=2)
    grad[1, 2, 4] = float("nan")
    dtheta = ops.perturb_backward(grad, torch.ones(3, device=DEVICE), PHILOX)
    assert torch.isnan(dtheta[2]) and not torch.isnan(dtheta[:2]).any()


@pytest.mark.parametrize("kind", THETAS)
def test_autograd_through_the_triton_backend(kind):
    shape = (4, 3, 5, 3)
    x = _tensor(shape, torch.float32).requires_grad_()
    theta = _theta(kind, shape, torch.float32).requires_grad_()
    y = functional.perturb(x, theta, backend="triton", philox=PHILOX)
    grad = _tensor(shape, torch.float32, salt=3)
    dx, dtheta = torch.autograd.grad(y, (x, theta), grad)
    torch.testing.assert_close(y, reference(x, theta, SEED, OFFSET), rtol=1e-5, atol=1e-6)
    assert torch.equal(dx, grad)
    torch.testing.assert_close(dtheta, reference_theta_grad(grad, theta, SEED, OFFSET), rtol=1e-5, atol=1e-5)


def _fakes_missing(*names):
    """The Triton ops of ``names`` that stochnet.ops does not yet give a fake implementation."""
    return [name for name in names
            if getattr(OPDEFS.get(f"stochnet_triton::{name}"), "_abstract_fn", None) is None]


def test_opcheck_schema_and_fake():
    missing = _fakes_missing("perturb", "perturb_backward")
    if missing:
        pytest.skip(f"stochnet.ops.perturb registers no fake for stochnet_triton::{missing} yet")
    for kind in THETAS:
        x, theta = _tensor((2, 3, 5), torch.float32), _theta(kind, (2, 3, 5), torch.float32)
        for op in (ops.perturb, ops.perturb_backward):
            torch.library.opcheck(op, (x, theta, PHILOX), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(DEVICE != "cpu", reason="compares with the C++ CPU kernel on CPU tensors")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", THETAS)
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (37, 5), (2, 3, 8, 12)], ids=str)
def test_forward_agrees_with_cpp_kernel(shape, kind, dtype):
    x, theta = _tensor(shape, dtype), _theta(kind, shape, dtype)
    # Same stream, same rounding: only the libm of the normals may differ, by a few ulps.
    torch.testing.assert_close(ops.perturb(x, theta, PHILOX), torch.ops.stochnet.perturb(x, theta, PHILOX),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(DEVICE == "cpu", reason="half precision runs on the GPU only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", THETAS)
def test_half_precision_computes_in_float32(kind, dtype):
    shape = (3, 5, 7, 9)
    x, theta = _tensor(shape, dtype), _theta(kind, shape, torch.float32)
    torch.testing.assert_close(ops.perturb(x, theta, PHILOX), reference(x, theta, SEED, OFFSET))
    torch.testing.assert_close(ops.perturb_backward(x, theta, PHILOX),
                               reference_theta_grad(x, theta, SEED, OFFSET), rtol=1e-4, atol=1e-4)


def test_rejects_bad_arguments():
    """Through stochnet.ops.checks, plus the contiguity the kernels read: errors name the argument."""
    x = _tensor((2, 3, 4, 5), torch.float32)
    theta = torch.ones(3, device=DEVICE)
    with pytest.raises(ValueError, match="theta must be a scalar, of shape"):
        ops.perturb(x, torch.ones(4, device=DEVICE), PHILOX)
    with pytest.raises(ValueError, match="theta must be a scalar, of shape"):
        ops.perturb_backward(x, torch.ones(3, 4, device=DEVICE), PHILOX)
    with pytest.raises(ValueError, match="x must be contiguous"):
        ops.perturb(x.transpose(2, 3), theta, PHILOX)
    with pytest.raises(ValueError, match="grad must be contiguous"):
        ops.perturb_backward(x.transpose(2, 3), theta, PHILOX)
    with pytest.raises(ValueError, match="theta must be contiguous"):
        ops.perturb(x, torch.ones(3, 5, 4, device=DEVICE).transpose(1, 2), PHILOX)
    with pytest.raises(ValueError, match="x must be a non-empty"):
        ops.perturb(x[0, 0, 0], theta, PHILOX)
    with pytest.raises(ValueError, match="x must be a non-empty"):
        ops.perturb(x[:0], theta, PHILOX)
    with pytest.raises(TypeError, match="x must have dtype"):
        ops.perturb(x.to(torch.int32), theta, PHILOX)
    with pytest.raises(TypeError, match="theta must have x's dtype"):
        ops.perturb(x, theta.to(torch.int64), PHILOX)
    with pytest.raises(ValueError, match="philox must be an int64 tensor of shape"):
        ops.perturb(x, theta, PHILOX.to(torch.int32))
    with pytest.raises(ValueError, match="philox must be an int64 tensor of shape"):
        ops.perturb_backward(x, theta, torch.tensor([SEED, OFFSET, 0]))
