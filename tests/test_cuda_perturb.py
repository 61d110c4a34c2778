"""The CUDA perturb kernels (csrc/cuda/perturb_kernels.cu) against the pure-torch references.

Skips without a CUDA device or when stochnet was built without its CUDA sources.
"""
import pytest
import torch

from stochnet import functional
from stochnet.ops import philox
from stochnet.ops.perturb import reference, reference_theta_grad, theta_view
from cuda_device import SEEDS, philox_tensor, requires_cuda_kernels


pytestmark = requires_cuda_kernels

DEVICE = "cuda"
OPS = torch.ops.stochnet
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# y tolerances (rtol, atol per unit of |theta|): the noise matches the reference to a few float32
# ulp, then half / bfloat16 round the result.
Y_TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-5, 1e-5), torch.float16: (2e-3, 1e-3),
         torch.bfloat16: (1.6e-2, 1e-2)}
# Shapes covering both backward plans: planes (inner >= 32, scalar theta) and columns (inner < 32,
# feature theta, 2-D inputs), sizes not multiple of 4, periods not multiple of 4, many splits / chunks.
SHAPES = [
    (4, 3, 5, 7),
    (2, 16, 8, 8),
    (3, 5, 3, 3),
    (3, 4, 37),
    (2, 3, 65),
    (9, 2, 129),
    (3, 6, 1, 1),
    (7, 13),
    (1000, 3),
    (8001, 10),
    (3, 4097),
    (1, 1, 1),
    (16, 64, 16, 16),
]
MODES = ["scalar", "channel", "feature"]


def _make(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.25).to(dtype).to(DEVICE)


def _make_theta(shape, mode, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    tshape = {"scalar": (), "channel": (shape[1],), "feature": tuple(shape[1:])}[mode]
    return (torch.rand(tshape, generator=gen, dtype=torch.float64) + 0.1).to(dtype).to(DEVICE)


def _misaligned(t):
    """A copy of t whose storage starts one element past a 16-byte boundary (scalar code path)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def _check_forward(x, theta, seed, offset):
    y = OPS.perturb(x, theta, philox_tensor(seed, offset))
    assert y.dtype == x.dtype and y.shape == x.shape and y.is_contiguous()
    expected = reference(x, theta, seed, offset)
    rtol, atol = Y_TOL[x.dtype]
    torch.testing.assert_close(y, expected, rtol=rtol, atol=atol * theta.abs().max().item())


def _theta_grad_bound(grad, theta, seed, offset):
    """Per-entry scale of dtheta's error: sum of |grad| * (|z| + 1) over the entry's elements."""
    z = philox.normal_like(grad, seed, offset).double()
    mag = grad.double().abs() * (z.abs() + 1)
    target = theta_view(theta, grad)
    dims = [d for d in range(grad.dim()) if target.shape[d] == 1]
    return mag.sum(dim=dims, keepdim=True).reshape(theta.shape)


def _check_backward(grad, theta, seed, offset):
    out = OPS.perturb_backward(grad, theta, philox_tensor(seed, offset))
    assert out.dtype == theta.dtype and out.shape == theta.shape
    expected = reference_theta_grad(grad, theta, seed, offset).double()
    bound = _theta_grad_bound(grad, theta, seed, offset)
    # z within a few float32 ulp of the reference, float32 (float64) partial sums, then the
    # rounding of the result to theta's dtype.
    acc = 2e-6 if grad.dtype == torch.float64 else 2e-5
    tol = acc * bound + torch.finfo(theta.dtype).eps * expected.abs()
    err = (out.double() - expected).abs()
    assert bool((err <= tol).all()), f"max err {err.max().item()}, tol there {tol.flatten()[err.argmax()].item()}"
    return out


# --- forward --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_reference(shape, mode, dtype):
    x = _make(shape, dtype)
    for theta_dtype in {torch.float32, dtype}:
        theta = _make_theta(shape, mode, theta_dtype)
        _check_forward(x, theta, 123456789, 7)


@pytest.mark.parametrize("seed,offset", SEEDS)
@pytest.mark.parametrize("mode", MODES)
def test_forward_seeds(seed, offset, mode):
    shape = (5, 3, 11, 7)
    _check_forward(_make(shape, torch.float32), _make_theta(shape, mode, torch.float32), seed, offset)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_forward_misaligned(dtype, mode):
    shape = (3, 4, 9, 5)
    x = _misaligned(_make(shape, dtype))
    _check_forward(x, _make_theta(shape, mode, dtype), 42, 3)


def test_forward_zero_theta_is_identity():
    x = _make((4, 8, 6, 6), torch.float32)
    y = OPS.perturb(x, torch.zeros(8, device=DEVICE), philox_tensor(1, 2))
    assert torch.equal(y, x)


# --- backward -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference(shape, mode, dtype):
    grad = _make(shape, dtype, seed=5)
    for theta_dtype in {torch.float32, dtype}:
        theta = _make_theta(shape, mode, theta_dtype)
        _check_backward(grad, theta, 123456789, 7)


@pytest.mark.parametrize("seed,offset", SEEDS)
@pytest.mark.parametrize("mode", MODES)
def test_backward_seeds(seed, offset, mode):
    shape = (6, 5, 7, 9)
    _check_backward(_make(shape, torch.float32, seed=2), _make_theta(shape, mode, torch.float32), seed, offset)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_backward_misaligned(dtype, mode):
    shape = (3, 4, 9, 5)
    grad = _misaligned(_make(shape, dtype, seed=3))
    _check_backward(grad, _make_theta(shape, mode, dtype), 9, 1)


@pytest.mark.parametrize("shape", [(64, 3, 96, 96), (200_003, 7), (32, 512, 7, 7)])
@pytest.mark.parametrize("mode", MODES)
def test_backward_large_and_deterministic(shape, mode):
    grad = _make(shape, torch.float32, seed=4)
    theta = _make_theta(shape, mode, torch.float32)
    first = _check_backward(grad, theta, 2024, 11)
    for _ in range(2):
        assert torch.equal(OPS.perturb_backward(grad, theta, philox_tensor(2024, 11)), first)


def test_backward_is_sum_of_grad_times_noise():
    # grad = 1 on one channel only: dtheta is that channel's noise sum, zero elsewhere.
    shape = (4, 3, 10, 10)
    grad = torch.zeros(shape, device=DEVICE)
    grad[:, 1] = 1
    theta = torch.ones(3, device=DEVICE)
    out = OPS.perturb_backward(grad, theta, philox_tensor(77, 0))
    z = philox.normal_like(grad, 77, 0).double()
    assert out[0].item() == 0 and out[2].item() == 0
    assert abs(out[1].item() - z[:, 1].sum().item()) < 1e-4


# --- through the public API and the registered autograd -------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_autograd_matches_torch_backend(mode):
    shape = (4, 6, 5, 5)
    x = _make(shape, torch.float32)
    philox_pair = philox_tensor(31337, 5)
    outs = {}
    for backend in ("cuda", "torch"):
        xb = x.clone().requires_grad_(True)
        theta = _make_theta(shape, mode, torch.float32).requires_grad_(True)
        y = functional.perturb(xb, theta, backend=backend, philox=philox_pair)
        (y * torch.linspace(-1, 1, y.numel(), device=DEVICE).view(shape)).sum().backward()
        outs[backend] = (y.detach(), xb.grad, theta.grad)
    torch.testing.assert_close(outs["cuda"][0], outs["torch"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["cuda"][1], outs["torch"][1])
    torch.testing.assert_close(outs["cuda"][2], outs["torch"][2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_opcheck(mode):
    shape = (2, 4, 3, 5)
    x = _make(shape, torch.float32).requires_grad_()
    theta = _make_theta(shape, mode, torch.float32).requires_grad_()
    torch.library.opcheck(OPS.perturb.default, (x, theta, philox_tensor(5, 7)))
    torch.library.opcheck(OPS.perturb_backward.default, (_make(shape, torch.float32, seed=3), theta.detach(),
                                                         philox_tensor(5, 7)))


# --- argument checks ------------------------------------------------------------------------------

def test_rejects_bad_arguments():
    x = _make((2, 3, 4, 4), torch.float32)
    p = philox_tensor(0, 0)
    with pytest.raises(RuntimeError, match="theta must have"):
        OPS.perturb(x, torch.ones(5, device=DEVICE), p)
    with pytest.raises(RuntimeError, match="theta must be float32"):
        OPS.perturb(x, torch.ones(3, dtype=torch.float64, device=DEVICE), p)
    with pytest.raises(RuntimeError, match="theta is on"):
        OPS.perturb_backward(x, torch.ones(3), p)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        OPS.perturb_backward(x.transpose(2, 3), torch.ones(3, device=DEVICE), p)
    with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
        OPS.perturb(x, torch.ones(3, device=DEVICE), p.to(DEVICE))
    with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0"):
        OPS.perturb_backward(x, torch.ones(3, device=DEVICE), philox_tensor(-1, 0))
