"""Noise injection (perturb, perturb_backward) on every backend against the pure-torch reference.

All backends: y and d theta over one set of sample inputs (shapes, dtypes, theta kinds), seeds,
misaligned storage, large inputs (not under the Triton interpreter), the public API's autograd,
the Philox pair (reproducible, read where it lives), the memory saved for backward, noise
statistics, opcheck and torch.compile. One backend only: C++ argument checks (cpp, cuda), Triton
tile sizes and argument checks. Bad input to the public API is checked once, before dispatch.
"""
import pytest
import scipy.stats
import torch

from backends import AVAILABLE, SEEDS, philox_tensor
from stochnet import functional as F
from stochnet.ops import philox
from stochnet.ops.perturb import reference, reference_theta_grad, theta_view

SEED, OFFSET = 2**40 + 3, 2**32 - 7  # the counter crosses 2**32 inside a call
PHILOX = philox_tensor(SEED, OFFSET)
THETAS = ["scalar", "channel", "element"]
HALF = (torch.float16, torch.bfloat16)

# Triton's d theta of a scalar / per-channel theta: "planes" reduces rows of the (N * C, inner)
# view (inner >= 32), "columns" sums the (N, F) view over the batch; rows that start off a Philox
# counter (row length % 4 != 0) take shifted windows. The CUDA kernels have the same two plans.
SHAPES = [
    (1, 1),            # one element
    (3, 5),            # (N, C)
    (37, 5),           # (N, C), odd C: columns
    (1000, 3),         # many samples of few features
    (5, 7, 3),         # 3-D, planes narrower than a vector
    (3, 2, 33),        # planes of odd length
    (3, 4097),         # samples wider than a block
    (1, 4, 3, 3),      # a single sample
    (3, 6, 1, 1),      # 1 x 1 planes
    (2, 3, 4, 8),      # columns, aligned rows
    (3, 5, 7, 9),      # columns, F = 315: rows start off the counter grid
    (4, 5, 7, 9),      # planes not a multiple of the vector width or the block
    (2, 3, 8, 12),     # planes, aligned
    (3, 16, 8, 8),
    (2, 3, 5, 6, 2),   # 5-D
]
# The CUDA kernels' sizes and splits: more of the above, and grids of many blocks / chunks.
GPU_SHAPES = [(1, 1, 1), (7, 13), (3, 4, 37), (2, 3, 65), (9, 2, 129), (3, 5, 3, 3), (4, 3, 5, 7), (2, 16, 8, 8),
              (8001, 10), (16, 64, 16, 16)]
# The Triton interpreter is slow: these shapes still take both d theta paths, aligned or not.
INTERPRETED_SHAPES = [(37, 5), (3, 2, 33), (1, 4, 3, 3), (2, 3, 4, 8), (3, 5, 7, 9), (2, 3, 8, 12)]

# The CUDA kernels' y tolerance (rtol, atol per unit of |theta|): the noise matches the reference
# to a few float32 ulp, then half / bfloat16 round the result.
CUDA_Y_TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-5, 1e-5), torch.float16: (2e-3, 1e-3),
              torch.bfloat16: (1.6e-2, 1e-2)}


def make_x(shape, dtype, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device, dtype)


def make_theta(kind, shape, dtype, device="cpu", seed=1):
    generator = torch.Generator().manual_seed(seed)
    size = {"scalar": (), "channel": (shape[1],), "element": tuple(shape[1:])}[kind]
    return (torch.rand(size, generator=generator, dtype=torch.float64) + 0.25).to(device, dtype)


def dtypes(backend):
    """float32 and float64; on the GPU also float16 and bfloat16 (computed in float32)."""
    return [torch.float32, torch.float64] + (list(HALF) if backend.device == "cuda" else [])


def theta_dtypes(backend, dtype):
    """theta in x's dtype or float32 (Triton's half-precision d theta is checked in float32 only)."""
    if dtype in HALF and backend.name == "triton":
        return [torch.float32]
    return list(dict.fromkeys([dtype, torch.float32]))


def sample_inputs(backend, kind):
    """(x, theta) on backend.device for every shape, dtype and theta dtype the backend runs, theta
    of ``kind``. Under the Triton interpreter: theta in x's dtype, and float32 for float64 x once."""
    if backend.interpreted:
        cases = [(shape, dtype, dtype) for shape in INTERPRETED_SHAPES for dtype in dtypes(backend)]
        cases.append(((3, 4, 5, 3), torch.float64, torch.float32))
    else:
        shapes = SHAPES + (GPU_SHAPES if backend.device == "cuda" else [])
        cases = [(shape, dtype, theta_dtype) for shape in shapes for dtype in dtypes(backend)
                 for theta_dtype in theta_dtypes(backend, dtype)]
    for shape, dtype, theta_dtype in cases:
        yield make_x(shape, dtype, backend.device), make_theta(kind, shape, theta_dtype, backend.device)


def misaligned(t):
    """A copy of t whose storage starts one element past a 16-byte boundary (scalar code paths)."""
    out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
    out.copy_(t)
    return out


def described(x, theta):
    return lambda message: f"x {tuple(x.shape)} {x.dtype}, theta {tuple(theta.shape)} {theta.dtype}: {message}"


def check_forward(backend, x, theta, seed=SEED, offset=OFFSET, expected=None):
    """y against the reference (``expected``, else computed here)."""
    y = backend.ops.perturb(x, theta, philox_tensor(seed, offset))
    assert y.dtype == x.dtype and y.shape == x.shape and y.is_contiguous()
    if expected is None:
        expected = reference(x, theta, seed, offset)
    if backend.name == "cuda":
        rtol, atol = CUDA_Y_TOL[x.dtype]
        tolerance = dict(rtol=rtol, atol=atol * theta.abs().max().item())
    else:
        tolerance = {} if x.dtype in HALF else dict(rtol=1e-5, atol=1e-6)  # half: assert_close's own
    torch.testing.assert_close(y, expected, **tolerance, msg=described(x, theta))
    return y


def theta_grad_bound(grad, theta, seed, offset):
    """Per-entry scale of d theta's error: sum of |grad| * (|z| + 1) over the entry's elements."""
    z = philox.normal_like(grad, seed, offset).double()
    magnitude = grad.double().abs() * (z.abs() + 1)
    dims = [d for d in range(grad.dim()) if theta_view(theta, grad).shape[d] == 1]
    return magnitude.sum(dim=dims, keepdim=True).reshape(theta.shape)


def check_theta_grad(backend, dtheta, grad, theta, seed=SEED, offset=OFFSET, atol=1e-5, expected=None):
    """d theta against the reference (``expected``, else reference_theta_grad); ``atol`` for
    float32 / float64 on cpp and Triton (an entry summing few products may nearly cancel; z itself
    agrees to a few float32 ulp)."""
    assert dtheta.dtype == theta.dtype and dtheta.shape == theta.shape
    if expected is None:
        expected = reference_theta_grad(grad, theta, seed, offset)
    if backend.name == "cuda":
        # z within a few float32 ulp, float32 (float64) partial sums, then the rounding to theta's dtype.
        bound = theta_grad_bound(grad, theta, seed, offset)
        tol = (2e-6 if grad.dtype == torch.float64 else 2e-5) * bound + torch.finfo(theta.dtype).eps * expected.abs()
        err = (dtheta.double() - expected.double()).abs()
        assert bool((err <= tol).all()), described(grad, theta)(
            f"max err {err.max().item()}, tol there {tol.flatten()[err.argmax()].item()}")
    elif grad.dtype in HALF:
        torch.testing.assert_close(dtheta, expected, rtol=1e-4, atol=1e-4, msg=described(grad, theta))
    else:
        torch.testing.assert_close(dtheta, expected, rtol=1e-5, atol=atol, msg=described(grad, theta))


def only(*names):
    """Run a test on the available backends of ``names`` only."""
    return pytest.mark.parametrize("backend", [b for b in AVAILABLE if b.name in names], ids=str)


# --- every backend against the reference ----------------------------------------------------------

@pytest.mark.parametrize("kind", THETAS)
def test_matches_reference(backend, kind):
    cpp_on_same_tensors = backend.device == "cpu" and backend.name != "cpp"
    for x, theta in sample_inputs(backend, kind):
        y = check_forward(backend, x, theta)
        grad = make_x(x.shape, x.dtype, backend.device, seed=5)
        check_theta_grad(backend, backend.ops.perturb_backward(grad, theta, PHILOX), grad, theta)
        if cpp_on_same_tensors:  # same stream, same rounding: only the libm of the normals may differ
            torch.testing.assert_close(y, torch.ops.stochnet.perturb(x, theta, PHILOX), rtol=1e-5, atol=1e-6,
                                       msg=described(x, theta))


@pytest.mark.parametrize("seed,offset", SEEDS)
def test_seeds(backend, seed, offset):
    shape = (5, 3, 11, 7)
    x = make_x(shape, torch.float32, backend.device)
    grad = make_x((6, 3, 11, 7), torch.float32, backend.device, seed=2)
    for kind in ["channel"] if backend.interpreted else THETAS:  # (slow) the stream does not depend on the kind
        theta = make_theta(kind, shape, torch.float32, backend.device)
        check_forward(backend, x, theta, seed, offset)
        check_theta_grad(backend, backend.ops.perturb_backward(grad, theta, philox_tensor(seed, offset)), grad,
                         theta, seed, offset)


@pytest.mark.parametrize("kind", THETAS)
def test_misaligned_storage(backend, kind):
    if backend.interpreted:
        pytest.skip("alignment means nothing to the Triton interpreter (numpy arrays)")
    shape = (3, 4, 9, 5)
    for dtype in dtypes(backend):
        theta = make_theta(kind, shape, theta_dtypes(backend, dtype)[0], backend.device)
        check_forward(backend, misaligned(make_x(shape, dtype, backend.device)), theta, 42, 3)
        grad = misaligned(make_x(shape, dtype, backend.device, seed=3))
        check_theta_grad(backend, backend.ops.perturb_backward(grad, theta, philox_tensor(9, 1)), grad, theta, 9, 1)


# (shape, kind, d theta atol on cpp / Triton: None for 1e-5 * sqrt(N))
LARGE = [
    ((3, 5, 41, 43), "element", None),   # feature map split in chunks that do not align with the blocks
    ((70, 3, 57, 53), "element", None),  # more samples than terms between flushes
    ((3, 9000, 2), "channel", None),     # many narrow planes: per channel through the feature chunks
    ((5, 3000, 5), "channel", None),
    *[((16, 64, 48, 48), kind, 1e-3) for kind in THETAS],  # 9.4 MB: cpp writes y with streaming stores
]
# The CUDA kernels' many-block reductions; on the GPU only (the reference is slow on the CPU).
GPU_LARGE = [(shape, kind, 1e-3) for shape in [(64, 3, 96, 96), (200_003, 7), (32, 512, 7, 7)] for kind in THETAS]


@pytest.mark.parametrize("shape,kind,atol,gpu_only", [(*case, False) for case in LARGE] +
                         [(*case, True) for case in GPU_LARGE], ids=str)
def test_large_inputs_and_deterministic(backend, shape, kind, atol, gpu_only):
    if backend.interpreted or (gpu_only and backend.device != "cuda"):
        pytest.skip("too large for the Triton interpreter" if backend.interpreted else "GPU-sized")
    x = make_x(shape, torch.float32, backend.device)
    theta = make_theta(kind, shape, torch.float32, backend.device).requires_grad_()
    grad = make_x(shape, torch.float32, backend.device, seed=5)
    # The reference's y and, by its autograd, d theta from the same z: the reference is slow on
    # the CPU. (On the GPU, d theta from reference_theta_grad, float64 throughout.)
    y_ref = reference(x, theta, SEED, OFFSET)
    (theta_grad_ref,) = torch.autograd.grad(y_ref, theta, grad) if backend.device == "cpu" else (None,)
    theta = theta.detach()
    check_forward(backend, x, theta, expected=y_ref.detach())
    first = backend.ops.perturb_backward(grad, theta, PHILOX)
    check_theta_grad(backend, first, grad, theta, atol=atol or 1e-5 * shape[0] ** 0.5, expected=theta_grad_ref)
    for _ in range(2):
        assert torch.equal(backend.ops.perturb_backward(grad, theta, PHILOX), first)


def test_zero_theta_is_identity_and_nan_propagates(backend):
    x = make_x((4, 8, 6, 6), torch.float32, backend.device)
    assert torch.equal(backend.ops.perturb(x, torch.zeros(8, device=backend.device), PHILOX), x)
    grad = make_x((2, 3, 6), torch.float32, backend.device, seed=2)
    grad[1, 2, 4] = float("nan")
    dtheta = backend.ops.perturb_backward(grad, torch.ones(3, device=backend.device), PHILOX)
    assert torch.isnan(dtheta[2]) and not torch.isnan(dtheta[:2]).any()


def test_one_element_theta_of_any_shape_is_a_scalar(backend):
    x = make_x((2, 3, 5), torch.float32, backend.device)
    theta = torch.full((1, 1, 1), 0.75, device=backend.device)
    y = backend.ops.perturb(x, theta, PHILOX)
    torch.testing.assert_close(y, backend.ops.perturb(x, theta.reshape(()), PHILOX), rtol=0, atol=0)
    dtheta = backend.ops.perturb_backward(x, theta, PHILOX)
    assert dtheta.shape == (1, 1, 1)
    check_theta_grad(backend, dtheta, x, theta)


def test_backward_is_the_sum_of_grad_times_noise(backend):
    # grad = 1 on one channel only: d theta is that channel's noise sum, zero elsewhere.
    grad = torch.zeros(4, 3, 10, 10, device=backend.device)
    grad[:, 1] = 1
    out = backend.ops.perturb_backward(grad, torch.ones(3, device=backend.device), philox_tensor(77, 0))
    z = philox.normal_like(grad, 77, 0).double()
    assert out[0].item() == 0 and out[2].item() == 0
    assert abs(out[1].item() - z[:, 1].sum().item()) < 1e-4


# --- the public API: autograd, the Philox pair, what backward saves --------------------------------

@pytest.mark.parametrize("kind", THETAS)
def test_autograd_matches_torch_backend(backend, kind):
    shape = (4, 6, 5, 5)
    x = make_x(shape, torch.float32, backend.device)
    upstream = torch.linspace(-1, 1, x.numel(), device=backend.device).view(shape)
    outs = {}
    for name in (backend.name, "torch"):
        xb = x.clone().requires_grad_()
        theta = make_theta(kind, shape, torch.float32, backend.device).requires_grad_()
        y = F.perturb(xb, theta, backend=name, philox=PHILOX)
        (y * upstream).sum().backward()
        outs[name] = (y.detach(), xb.grad, theta.grad)
    (y, dx, dtheta), (y_ref, dx_ref, dtheta_ref) = outs[backend.name], outs["torch"]
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6 if backend.name != "cuda" else 1e-5)
    assert torch.equal(dx, upstream) and torch.equal(dx_ref, upstream)
    if backend.name == "cuda":
        torch.testing.assert_close(dtheta, dtheta_ref, rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(dtheta, dtheta_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", THETAS)
def test_non_contiguous_x_is_copied(backend, kind):
    x = make_x((4, 6, 5, 10), torch.float32, backend.device)[..., ::2]
    assert not x.is_contiguous()
    theta = make_theta(kind, x.shape, torch.float32, backend.device)
    torch.testing.assert_close(F.perturb(x, theta, backend=backend.name, philox=PHILOX),
                               reference(x.contiguous(), theta, SEED, OFFSET), rtol=1e-5, atol=1e-6)


def test_same_philox_same_noise_other_offset_other_noise(backend):
    x = make_x((3, 4, 5, 7), torch.float32, backend.device)
    theta = make_theta("channel", x.shape, torch.float32, backend.device)
    first = backend.ops.perturb(x, theta, PHILOX)
    assert torch.equal(first, backend.ops.perturb(x, theta, PHILOX))
    assert not torch.equal(first, backend.ops.perturb(x, theta, philox_tensor(SEED, OFFSET + 1)))
    if backend.name == "triton":  # the whole 64-bit key range (the C++ ops take seeds below 2**63)
        big_seed = 2**64 - 3
        torch.testing.assert_close(backend.ops.perturb(x, theta, philox_tensor(big_seed, 0)),
                                   reference(x, theta, big_seed, 0), rtol=1e-5, atol=1e-6)


def test_philox_on_the_data_device_gives_the_same_noise(backend):
    """Each kernel loads (seed, offset) itself, wherever the philox tensor lives."""
    x = make_x((2, 3, 5), torch.float32, backend.device)
    theta = make_theta("channel", x.shape, torch.float32, backend.device)
    ops, on_device = backend.ops, PHILOX.to(backend.device)
    assert torch.equal(ops.perturb(x, theta, on_device), ops.perturb(x, theta, PHILOX))
    assert torch.equal(ops.perturb_backward(x, theta, on_device), ops.perturb_backward(x, theta, PHILOX))


def test_reproducible_under_manual_seed_and_fresh_noise_per_call(backend):
    if backend.interpreted:
        pytest.skip("the seed is drawn per device: the cpp backend's run covers the CPU")
    x = make_x((2, 4, 6, 6), torch.float32, backend.device)
    theta = make_theta("channel", x.shape, torch.float32, backend.device)
    torch.manual_seed(7)
    first = F.perturb(x, theta, backend=backend.name)
    second = F.perturb(x, theta, backend=backend.name)
    torch.manual_seed(7)
    again = F.perturb(x, theta, backend=backend.name)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def test_backward_regenerates_the_forward_noise(backend):
    x = make_x((3, 4, 5, 5), torch.float32, backend.device)
    theta = torch.ones(4, device=backend.device, requires_grad=True)
    y = F.perturb(x, theta, backend=backend.name, philox=PHILOX)
    y.backward(torch.ones_like(y))  # dtheta_c = sum of z over channel c = sum of (y - x) / theta
    torch.testing.assert_close(theta.grad, (y - x).detach().sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_backward_saves_only_theta_and_the_philox_pair(backend):
    x = make_x((4, 8, 9, 9), torch.float32, backend.device).requires_grad_()
    theta = make_theta("element", x.shape, torch.float32, backend.device).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        F.perturb(x, theta, backend=backend.name, philox=PHILOX)
    assert sum(t.untyped_storage().nbytes() for t in saved) == theta.numel() * 4 + 2 * 8
    assert {t.numel() for t in saved} == {theta.numel(), 2}


def test_noise_statistics(backend):
    if backend.interpreted:
        pytest.skip("too large for the Triton interpreter; its normals are the reference's (test_philox.py)")
    x = torch.zeros(64, 4, 32, 32, device=backend.device)
    theta = torch.tensor([0.5, 1.0, 2.0, 3.0], device=backend.device)
    noise = backend.ops.perturb(x, theta, PHILOX).double().cpu()
    for c, s in enumerate(theta.tolist()):
        z = noise[:, c].flatten() / s
        assert abs(z.mean().item()) < 5 / z.numel() ** 0.5
        assert abs(z.std().item() - 1) < 0.02
        assert scipy.stats.kstest(z[:20000].numpy(), "norm").pvalue > 1e-4
    # every sample draws its own noise: no draw is shared across the batch
    assert not torch.equal(noise[0], noise[1])


@pytest.mark.parametrize("kind", THETAS)
def test_gradcheck_float64(backend, kind):
    if backend.interpreted:
        pytest.skip("too many calls for the Triton interpreter; test_matches_reference checks its d theta")
    x = make_x((2, 3, 4, 5), torch.float64, backend.device).requires_grad_()
    theta = make_theta(kind, x.shape, torch.float64, backend.device).requires_grad_()
    torch.autograd.gradcheck(lambda a, b: F.perturb(a, b, backend=backend.name, philox=PHILOX), (x, theta),
                             eps=1e-6, atol=1e-5)


# --- registration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", THETAS)
def test_opcheck(backend, kind):
    # Triton: schema and fake only (under the interpreter the ops are opaque custom ops)
    test_utils = ("test_schema", "test_faketensor") if backend.name == "triton" else None
    extra = {} if test_utils is None else dict(test_utils=test_utils)
    x = make_x((2, 4, 3, 5), torch.float32, backend.device).requires_grad_()
    theta = make_theta(kind, x.shape, torch.float32, backend.device).requires_grad_()
    grad = make_x(x.shape, torch.float32, backend.device, seed=3)
    torch.library.opcheck(backend.ops.perturb.default, (x, theta, PHILOX), **extra)
    torch.library.opcheck(backend.ops.perturb_backward.default, (grad, theta.detach(), PHILOX), **extra)


def test_compile_has_no_graph_break(backend):
    if backend.interpreted:
        pytest.skip("under the Triton interpreter the ops are opaque custom ops: nothing Triton to trace")
    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.theta = torch.nn.Parameter(torch.full((4, 8, 8), 0.1))

        def forward(self, x):
            return F.perturb(self.conv(x), self.theta, backend=backend.name).sum()

    model = Noisy().to(backend.device)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 10, 10, device=backend.device, requires_grad=True)
    compiled(x).backward()
    compiled(x).backward()
    assert x.grad is not None and model.theta.grad is not None and model.theta.grad.abs().sum() > 0
    torch.manual_seed(3)
    first = compiled(x)
    torch.manual_seed(3)
    assert torch.equal(first, compiled(x))


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,error,match", [
    (lambda x, t: F.perturb(x, torch.ones(5)), ValueError, "theta must be a scalar, of shape"),
    (lambda x, t: F.perturb(x, torch.ones(3, 4)), ValueError, "theta must be a scalar, of shape"),
    (lambda x, t: F.perturb(x, t.to("meta")), ValueError, "theta is on"),
    (lambda x, t: F.perturb(x, t.double()), TypeError, "theta must have x's dtype"),
    (lambda x, t: F.perturb(x.int(), t), TypeError, "x must have dtype"),
    (lambda x, t: F.perturb(x[0, 0, 0], t), ValueError, r"x must be a non-empty tensor of shape \(N, C, \*\)"),
    (lambda x, t: F.perturb(x[:0], t), ValueError, "x must be a non-empty tensor"),
    (lambda x, t: F.perturb(x, [1.0]), TypeError, "theta must be a torch.Tensor"),
    (lambda x, t: F.perturb(x, t, backend="fast"), ValueError, "backend must be one of"),
], ids=["not-broadcastable", "wrong-shape", "device", "dtype", "x-dtype", "rank", "empty", "not-tensor",
        "backend"])
def test_bad_input(call, error, match):
    """The public API's checks, before any backend runs."""
    with pytest.raises(error, match=match):
        call(make_x((2, 3, 4, 4), torch.float32), make_theta("channel", (2, 3, 4, 4), torch.float32))


@only("cpp", "cuda")
def test_cpp_ops_check_before_running(backend):
    """The C++ ops' own checks (csrc/checks.h), CPU and CUDA alike."""
    device = backend.device
    x = torch.randn(2, 3, 4, 4, device=device)
    forward, backward, philox = torch.ops.stochnet.perturb, torch.ops.stochnet.perturb_backward, torch.tensor([0, 0])
    ones = lambda *size, **kw: torch.ones(*size, device=device, **kw)  # noqa: E731
    with pytest.raises(RuntimeError, match="theta must have 1, 3 .* or 48 .* elements for x"):
        forward(x, ones(5), philox)
    with pytest.raises(RuntimeError, match="theta must have 1, 3 .* or 48 .* elements for grad"):
        backward(x, ones(4), philox)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        forward(x[..., ::2], ones(3), philox)
    with pytest.raises(RuntimeError, match="grad must be contiguous"):
        backward(x.transpose(2, 3), ones(3), philox)
    with pytest.raises(RuntimeError, match="x must have shape"):
        forward(x[0, 0, 0], ones(1), philox)
    with pytest.raises(RuntimeError, match="x must not be empty"):
        forward(x[:0], ones(3), philox)
    with pytest.raises(RuntimeError, match="theta must be float32 or x's dtype"):
        forward(x, ones(3, dtype=torch.float64), philox)
    with pytest.raises(RuntimeError, match="theta must be contiguous"):
        backward(x, ones(3, 4, 8)[..., ::2], philox)
    with pytest.raises(RuntimeError, match="grad must be a floating tensor"):
        backward(x.int(), ones(3), philox)
    if device == "cpu":
        with pytest.raises(RuntimeError, match="x must be float32 or float64 on CPU"):
            forward(x.half(), ones(3), philox)
    else:
        with pytest.raises(RuntimeError, match="theta is on"):
            backward(x, torch.ones(3), philox)
    for op in (forward, backward):
        with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
            op(x, ones(3), philox.int())
        with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0, got \(0, -1\)"):
            op(x, ones(3), torch.tensor([0, -1]))


# --- Triton only ----------------------------------------------------------------------------------

@only("triton")
@pytest.mark.parametrize("kind", THETAS)
@pytest.mark.parametrize("shape", [(37, 3, 5), (41, 2, 2, 2), (3, 2, 37)], ids=str)
def test_triton_theta_grad_with_row_loops_and_column_tiles(backend, shape, kind, monkeypatch):
    """Tiny tiles: several column tiles and one program looping over all row tiles (columns
    path), several windows per plane of odd length (planes path, (3, 2, 37) with scalar/channel)."""
    from stochnet.kernels import perturb as kernels
    monkeypatch.setattr(kernels, "_TILE", 32)
    monkeypatch.setattr(kernels, "_COL_BLOCK_K", 8)
    monkeypatch.setattr(kernels, "_TARGET_PROGRAMS", 1)
    grad, theta = make_x(shape, torch.float64, backend.device), make_theta(kind, shape, torch.float64, backend.device)
    check_theta_grad(backend, backend.ops.perturb_backward(grad, theta, PHILOX), grad, theta)


@only("triton")
def test_triton_rejects_bad_arguments(backend):
    """Through stochnet.ops.checks, plus the contiguity the kernels read: errors name the argument."""
    ops, device = backend.ops, backend.device
    x = make_x((2, 3, 4, 5), torch.float32, device)
    theta = torch.ones(3, device=device)
    with pytest.raises(ValueError, match="theta must be a scalar, of shape"):
        ops.perturb(x, torch.ones(4, device=device), PHILOX)
    with pytest.raises(ValueError, match="theta must be a scalar, of shape"):
        ops.perturb_backward(x, torch.ones(3, 4, device=device), PHILOX)
    with pytest.raises(ValueError, match="x must be contiguous"):
        ops.perturb(x.transpose(2, 3), theta, PHILOX)
    with pytest.raises(ValueError, match="grad must be contiguous"):
        ops.perturb_backward(x.transpose(2, 3), theta, PHILOX)
    with pytest.raises(ValueError, match="theta must be contiguous"):
        ops.perturb(x, torch.ones(3, 5, 4, device=device).transpose(1, 2), PHILOX)
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
