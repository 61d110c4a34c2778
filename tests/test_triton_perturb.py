"""Triton noise-injection kernels against the pure-torch reference: y and the fused d theta."""
import os

import pytest
import torch

RUNNABLE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not RUNNABLE, reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1")

from stochnet import functional  # noqa: E402
from stochnet.kernels import perturb as kernels  # noqa: E402
from stochnet.ops.perturb import reference, reference_theta_grad  # noqa: E402

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
SEED, OFFSET = 2**35 + 11, 2**32 - 5  # the counter crosses 2**32 inside the call

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", THETAS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_theta_grad_match_reference(shape, kind, dtype):
    x, theta = _tensor(shape, dtype), _theta(kind, shape, dtype)
    y = kernels.perturb_fwd(x, theta, SEED, OFFSET)
    assert y.dtype == x.dtype and y.shape == x.shape and y.is_contiguous()
    torch.testing.assert_close(y, reference(x, theta, SEED, OFFSET), rtol=1e-5, atol=1e-6)

    grad = _tensor(shape, dtype, salt=1)
    dtheta = kernels.perturb_bwd(grad, theta, SEED, OFFSET)
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
    torch.testing.assert_close(kernels.perturb_bwd(grad, theta, SEED, OFFSET),
                               reference_theta_grad(grad, theta, SEED, OFFSET), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", THETAS)
def test_float32_theta_with_float64_x(kind):
    shape = (3, 4, 5, 3)
    x, theta = _tensor(shape, torch.float64), _theta(kind, shape, torch.float32)
    torch.testing.assert_close(kernels.perturb_fwd(x, theta, SEED, OFFSET), reference(x, theta, SEED, OFFSET),
                               rtol=1e-5, atol=1e-6)
    dtheta = kernels.perturb_bwd(x, theta, SEED, OFFSET)
    assert dtheta.dtype == torch.float32
    torch.testing.assert_close(dtheta, reference_theta_grad(x, theta, SEED, OFFSET), rtol=1e-5, atol=1e-5)


def test_one_element_theta_of_any_shape_is_a_scalar():
    x = _tensor((2, 3, 5), torch.float32)
    theta = torch.full((1, 1, 1), 0.75, device=DEVICE)
    y = kernels.perturb_fwd(x, theta, SEED, OFFSET)
    torch.testing.assert_close(y, kernels.perturb_fwd(x, theta.reshape(()), SEED, OFFSET), rtol=0, atol=0)
    dtheta = kernels.perturb_bwd(x, theta, SEED, OFFSET)
    assert dtheta.shape == (1, 1, 1)
    torch.testing.assert_close(dtheta, reference_theta_grad(x, theta, SEED, OFFSET), rtol=1e-5, atol=1e-5)


def test_same_seed_same_noise_other_offset_other_noise():
    x = _tensor((3, 4, 5, 7), torch.float32)
    theta = _theta("channel", x.shape, torch.float32)
    first = kernels.perturb_fwd(x, theta, SEED, OFFSET)
    assert torch.equal(first, kernels.perturb_fwd(x, theta, SEED, OFFSET))
    assert not torch.equal(first, kernels.perturb_fwd(x, theta, SEED, OFFSET + 1))
    big_seed = 2**64 - 3  # the whole 64-bit key range
    torch.testing.assert_close(kernels.perturb_fwd(x, theta, big_seed, 0), reference(x, theta, big_seed, 0),
                               rtol=1e-5, atol=1e-6)


def test_zero_theta_is_identity_and_nan_propagates():
    x = _tensor((2, 3, 6), torch.float32)
    assert torch.equal(kernels.perturb_fwd(x, torch.zeros(3, device=DEVICE), SEED, OFFSET), x)
    grad = _tensor((2, 3, 6), torch.float32, salt=2)
    grad[1, 2, 4] = float("nan")
    dtheta = kernels.perturb_bwd(grad, torch.ones(3, device=DEVICE), SEED, OFFSET)
    assert torch.isnan(dtheta[2]) and not torch.isnan(dtheta[:2]).any()


@pytest.mark.parametrize("kind", THETAS)
def test_autograd_through_the_triton_backend(kind):
    shape = (4, 3, 5, 3)
    philox = torch.tensor([SEED, OFFSET], dtype=torch.int64)
    x = _tensor(shape, torch.float32).requires_grad_()
    theta = _theta(kind, shape, torch.float32).requires_grad_()
    y = functional.perturb(x, theta, backend="triton", philox=philox)
    grad = _tensor(shape, torch.float32, salt=3)
    dx, dtheta = torch.autograd.grad(y, (x, theta), grad)
    torch.testing.assert_close(y, reference(x, theta, SEED, OFFSET), rtol=1e-5, atol=1e-6)
    assert torch.equal(dx, grad)
    torch.testing.assert_close(dtheta, reference_theta_grad(grad, theta, SEED, OFFSET), rtol=1e-5, atol=1e-5)


def _cpp_forward(x, theta):
    """``torch.ops.stochnet.perturb_fwd`` on CPU, or None while the C++ kernel is not built."""
    try:
        return torch.ops.stochnet.perturb_fwd(x, theta, SEED, OFFSET)
    except (NotImplementedError, AttributeError):
        return None


@pytest.mark.skipif(DEVICE != "cpu", reason="compares with the C++ CPU kernel on CPU tensors")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", THETAS)
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (37, 5), (2, 3, 8, 12)], ids=str)
def test_forward_agrees_with_cpp_kernel(shape, kind, dtype):
    x, theta = _tensor(shape, dtype), _theta(kind, shape, dtype)
    y_cpp = _cpp_forward(x, theta)
    if y_cpp is None:
        pytest.skip("the C++ perturb_fwd kernel is not built")
    y = kernels.perturb_fwd(x, theta, SEED, OFFSET)
    # Same stream, same rounding: only the libm of the normals may differ, by a few ulps.
    torch.testing.assert_close(y, y_cpp, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(DEVICE == "cpu", reason="half precision runs on the GPU only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", THETAS)
def test_half_precision_computes_in_float32(kind, dtype):
    shape = (3, 5, 7, 9)
    x, theta = _tensor(shape, dtype), _theta(kind, shape, torch.float32)
    torch.testing.assert_close(kernels.perturb_fwd(x, theta, SEED, OFFSET), reference(x, theta, SEED, OFFSET))
    torch.testing.assert_close(kernels.perturb_bwd(x, theta, SEED, OFFSET),
                               reference_theta_grad(x, theta, SEED, OFFSET), rtol=1e-4, atol=1e-4)


def test_rejects_bad_arguments():
    x = _tensor((2, 3, 4, 5), torch.float32)
    theta = torch.ones(3, device=DEVICE)
    with pytest.raises(ValueError, match="theta must have 1 element"):
        kernels.perturb_fwd(x, torch.ones(4, device=DEVICE), SEED, OFFSET)
    with pytest.raises(ValueError, match="theta must have 1 element"):
        kernels.perturb_bwd(x, torch.ones(3, 4, device=DEVICE), SEED, OFFSET)
    with pytest.raises(ValueError, match="x must be contiguous"):
        kernels.perturb_fwd(x.transpose(2, 3), theta, SEED, OFFSET)
    with pytest.raises(ValueError, match="grad must be contiguous"):
        kernels.perturb_bwd(x.transpose(2, 3), theta, SEED, OFFSET)
    with pytest.raises(ValueError, match="theta must be contiguous"):
        kernels.perturb_fwd(x, torch.ones(4, 5, 3, device=DEVICE).transpose(0, 2), SEED, OFFSET)
    with pytest.raises(ValueError, match="x must be a non-empty"):
        kernels.perturb_fwd(x[0, 0, 0], theta, SEED, OFFSET)
    with pytest.raises(ValueError, match="x must be a non-empty"):
        kernels.perturb_fwd(x[:0], theta, SEED, OFFSET)
    with pytest.raises(ValueError, match="x must have dtype"):
        kernels.perturb_fwd(x.to(torch.int32), theta, SEED, OFFSET)
    with pytest.raises(ValueError, match="theta must have dtype"):
        kernels.perturb_fwd(x, theta.to(torch.int64), SEED, OFFSET)
    with pytest.raises(ValueError, match="seed"):
        kernels.perturb_fwd(x, theta, -1, OFFSET)
    with pytest.raises(ValueError, match="offset"):
        kernels.perturb_bwd(x, theta, SEED, 2**63)
