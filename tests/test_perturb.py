"""Noise injection (perturb) through the public API: the C++ backend against the pure-torch
reference (values and gradients), op registration, torch.compile, noise statistics, the memory
saved for backward, and bad input."""
import pytest
import scipy.stats
import torch

from stochnet import functional as F

PHILOX = torch.tensor([2**40 + 3, 2**32 - 7])  # the counter crosses 2**32 inside a call
SHAPES = [
    (1, 1),            # one element
    (3, 5),            # (N, C)
    (4, 5, 7, 9),      # planes not a multiple of the vector width or the block
    (3, 16, 8, 8),
    (2, 3, 5, 6, 2),   # 5-D
    (5, 7, 3),         # 3-D, planes narrower than a vector
]
THETAS = ["scalar", "channel", "element"]


def make_theta(kind, shape, dtype, seed=1):
    generator = torch.Generator().manual_seed(seed)
    size = {"scalar": (), "channel": (shape[1],), "element": tuple(shape[1:])}[kind]
    return (torch.rand(size, generator=generator, dtype=torch.float64) + 0.25).to(dtype)


def make_x(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def run(backend, x, theta, philox=PHILOX):
    return F.perturb(x, theta, backend=backend, philox=philox)


@pytest.mark.parametrize("theta_dtype", ["x", "float32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", THETAS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_values_and_gradients_match_reference(shape, kind, dtype, theta_dtype):
    x = make_x(shape, dtype).requires_grad_()
    theta = make_theta(kind, shape, dtype if theta_dtype == "x" else torch.float32).requires_grad_()
    x_ref, theta_ref = x.detach().clone().requires_grad_(), theta.detach().clone().requires_grad_()
    y = run("cpp", x, theta)
    y_ref = run("torch", x_ref, theta_ref)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    grad = make_x(shape, dtype, seed=5)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert theta.grad.shape == theta.shape and theta.grad.dtype == theta.dtype
    # z agrees with the reference to a few ulp; sums of grad * z may cancel, hence the atol
    torch.testing.assert_close(theta.grad, theta_ref.grad, rtol=1e-5, atol=1e-5 * x.shape[0] ** 0.5)


@pytest.mark.parametrize("shape,kind", [
    ((3, 5, 41, 43), "element"),   # feature map split in chunks that do not align with the blocks
    ((70, 3, 57, 53), "element"),  # more samples than terms between flushes
    ((3, 9000, 2), "channel"),     # many narrow planes: per channel through the feature chunks
    ((5, 3000, 5), "channel"),
], ids=str)
def test_large_feature_maps(shape, kind):
    x = make_x(shape, torch.float32).requires_grad_()
    theta = make_theta(kind, shape, torch.float32).requires_grad_()
    theta_ref = theta.detach().clone().requires_grad_()
    y = run("cpp", x, theta)
    y_ref = run("torch", x.detach(), theta_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    grad = make_x(shape, torch.float32, seed=5)
    (grad_theta,) = torch.autograd.grad(y, theta, grad)
    y_ref.backward(grad)
    torch.testing.assert_close(grad_theta, theta_ref.grad, rtol=1e-5, atol=1e-5 * shape[0] ** 0.5)


@pytest.mark.parametrize("kind", THETAS)
def test_non_contiguous_x_is_copied(kind):
    base = make_x((4, 6, 5, 10), torch.float32)
    x = base[..., ::2]
    assert not x.is_contiguous()
    theta = make_theta(kind, x.shape, torch.float32)
    torch.testing.assert_close(run("cpp", x, theta), run("torch", x.contiguous(), theta), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", THETAS)
def test_large_outputs_take_the_streaming_store_path(kind):
    shape = (16, 64, 48, 48)  # 9.4 MB: y is written with non-temporal stores
    x = make_x(shape, torch.float32).requires_grad_()
    theta = make_theta(kind, shape, torch.float32).requires_grad_()
    theta_ref = theta.detach().clone().requires_grad_()
    y = run("cpp", x, theta)
    y_ref = run("torch", x.detach(), theta_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(x)
    grad_x, grad_theta = torch.autograd.grad(y, (x, theta), grad)
    y_ref.backward(grad)
    assert torch.equal(grad_x, grad)
    torch.testing.assert_close(grad_theta, theta_ref.grad, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("kind", THETAS)
def test_gradcheck_float64(kind):
    x = make_x((2, 3, 4, 5), torch.float64).requires_grad_()
    theta = make_theta(kind, x.shape, torch.float64).requires_grad_()
    torch.autograd.gradcheck(lambda a, b: run("cpp", a, b), (x, theta), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", THETAS)
def test_opcheck(kind):
    x = make_x((2, 4, 3, 5), torch.float32).requires_grad_()
    theta = make_theta(kind, x.shape, torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.stochnet.perturb.default, (x, theta, PHILOX))
    grad = make_x((2, 4, 3, 5), torch.float32, seed=3)
    torch.library.opcheck(torch.ops.stochnet.perturb_backward.default, (grad, theta.detach(), PHILOX))


def test_backward_saves_only_theta_and_the_philox_pair():
    x = make_x((4, 8, 9, 9), torch.float32).requires_grad_()
    theta = make_theta("element", x.shape, torch.float32).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        run("cpp", x, theta)
    assert sum(t.untyped_storage().nbytes() for t in saved) == theta.numel() * 4 + 2 * 8
    assert {t.numel() for t in saved} == {theta.numel(), 2}


def test_reproducible_under_manual_seed_and_fresh_noise_per_call():
    x = make_x((2, 4, 6, 6), torch.float32)
    theta = make_theta("channel", x.shape, torch.float32)
    torch.manual_seed(7)
    first = F.perturb(x, theta)
    second = F.perturb(x, theta)
    torch.manual_seed(7)
    again = F.perturb(x, theta)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def test_backward_regenerates_the_forward_noise():
    x = make_x((3, 4, 5, 5), torch.float32)
    theta = torch.ones(4, requires_grad=True)
    y = run("cpp", x, theta)
    y.backward(torch.ones_like(y))  # dtheta_c = sum of z over channel c = sum of (y - x) / theta
    torch.testing.assert_close(theta.grad, (y - x).detach().sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_noise_statistics():
    x = torch.zeros(64, 4, 32, 32)
    theta = torch.tensor([0.5, 1.0, 2.0, 3.0])
    noise = run("cpp", x, theta).double()
    for c, s in enumerate(theta.tolist()):
        z = noise[:, c].flatten() / s
        assert abs(z.mean().item()) < 5 / z.numel() ** 0.5
        assert abs(z.std().item() - 1) < 0.02
        assert scipy.stats.kstest(z[:20000].numpy(), "norm").pvalue > 1e-4
    # every sample draws its own noise: no draw is shared across the batch
    assert not torch.equal(noise[0], noise[1])


def test_compile_has_no_graph_break():
    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.theta = torch.nn.Parameter(torch.full((4, 8, 8), 0.1))

        def forward(self, x):
            return F.perturb(self.conv(x), self.theta, backend="cpp").sum()

    model = Noisy()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    compiled(x).backward()
    compiled(x).backward()
    assert x.grad is not None and model.theta.grad is not None and model.theta.grad.abs().sum() > 0
    torch.manual_seed(3)
    first = compiled(x)
    torch.manual_seed(3)
    assert torch.equal(first, compiled(x))


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
    with pytest.raises(error, match=match):
        call(make_x((2, 3, 4, 4), torch.float32), make_theta("channel", (2, 3, 4, 4), torch.float32))


def test_cpp_kernel_checks_before_running():
    x = torch.randn(2, 3, 4, 4)
    forward, backward, philox = torch.ops.stochnet.perturb, torch.ops.stochnet.perturb_backward, torch.tensor([0, 0])
    with pytest.raises(RuntimeError, match="theta must have 1, 3 .* or 48 .* elements for x"):
        forward(x, torch.ones(5), philox)
    with pytest.raises(RuntimeError, match="theta must have 1, 3 .* or 48 .* elements for grad"):
        backward(x, torch.ones(4), philox)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        forward(x[..., ::2], torch.ones(3), philox)
    with pytest.raises(RuntimeError, match="x must have shape"):
        forward(x[0, 0, 0], torch.ones(1), philox)
    with pytest.raises(RuntimeError, match="x must not be empty"):
        forward(x[:0], torch.ones(3), philox)
    with pytest.raises(RuntimeError, match="theta must be float32 or x's dtype"):
        forward(x, torch.ones(3, dtype=torch.float64), philox)
    with pytest.raises(RuntimeError, match="theta must be contiguous"):
        backward(x, torch.ones(3, 4, 8)[..., ::2], philox)
    with pytest.raises(RuntimeError, match="x must be float32 or float64 on CPU"):
        forward(x.half(), torch.ones(3), philox)
    with pytest.raises(RuntimeError, match="grad must be a floating tensor"):
        backward(x.int(), torch.ones(3), philox)
    for op in (forward, backward):
        with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
            op(x, torch.ones(3), philox.int())
        with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0, got \(0, -1\)"):
            op(x, torch.ones(3), torch.tensor([0, -1]))
