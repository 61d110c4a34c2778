"""Fused PGD / MIM steps and the random start on every backend against the pure-torch references.

All backends: the three ops over one set of sample inputs (shapes, dtypes, eps / alpha dtypes),
the eps ball and clip range, zero and partly zero gradients, the in-place momentum, the random
start as the Philox stream (uniform in the box and the ball), seeds, the philox tensor read
where it lives, misaligned and large inputs (not under the Triton interpreter), opcheck and
torch.compile. One backend only: the C++ ops' argument checks (cpp, cuda), Triton's tiles and
argument checks. Bad input to the public API is checked once, before dispatch.
"""
import math

import pytest
import torch

from backends import AVAILABLE, SEEDS, philox_tensor
from stochnet import functional as F
from stochnet.ops import philox
from stochnet.ops.pgd import mim_step_reference, pgd_step_reference, random_start_reference

SEED, OFFSET = 2**40 + 3, 2**32 - 7  # the counter crosses 2**32 inside a call
PHILOX = philox_tensor(SEED, OFFSET)
NORMS = ["linf", "l2"]
HALF = (torch.float16, torch.bfloat16)
SHAPES = [
    (1, 1),            # one element
    (5, 1),            # one element per sample
    (5,),              # 1-D: K = 1
    (4, 3),            # K < 4: samples shorter than a Philox counter
    (3, 5),            # samples not a multiple of 4: units straddle samples
    (37, 5),           # many short odd samples in one tile
    (1000, 3),         # many samples
    (1, 4099),         # one long sample
    (3, 17000),        # samples spanning chunk boundaries
    (1, 3, 5, 5),      # a single sample
    (1, 3, 7, 9),
    (2, 3, 4, 8),      # K % 4 == 0
    (4, 3, 5, 7),      # per-sample sizes not a multiple of the vector width
    (3, 5, 7, 9),      # K = 315: samples start off the Philox counter grid
    (6, 3, 8, 8),
]
GPU_SHAPES = [(7, 13), (2, 3, 8, 8), (16, 3, 32, 32)]  # the CUDA kernels' too: more of the above, images
# The Triton interpreter is slow: these shapes still take every layout above but the large ones.
INTERPRETED_SHAPES = [(5,), (4, 3), (37, 5), (1, 3, 5, 5), (2, 3, 4, 8), (3, 5, 7, 9)]
LARGE_SHAPES = [(1, 3, 512, 515), (50_001, 3), (64, 3, 64, 64)]

# (rtol, atol) of outputs and momenta against the references, for values of magnitude ~1: the
# ops' compute dtype, then the rounding of the result (the references may round intermediate
# steps in 16-bit types).
TOLERANCES = {
    "cpp": {torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-12)},
    "triton": {torch.float32: (1e-5, 1e-6), torch.float64: (1e-5, 1e-6), torch.float16: (4e-3, 4e-3),
               torch.bfloat16: (3e-2, 3e-2)},
    "cuda": {torch.float32: (1e-5, 1e-5), torch.float64: (1e-10, 1e-10), torch.float16: (4e-3, 4e-3),
             torch.bfloat16: (3e-2, 3e-2)},
}


def make_inputs(shape, dtype, device="cpu", seed=0):
    """x_adv, grad, x_orig: x_orig in [0, 1], x_adv within a few eps of it, a gradient with some exact zeros."""
    generator = torch.Generator().manual_seed(seed)
    x_orig = torch.rand(shape, generator=generator, dtype=torch.float64)
    x_adv = (x_orig + 0.05 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    grad = torch.randn(shape, generator=generator, dtype=torch.float64)
    grad[torch.rand(shape, generator=generator) < 0.05] = 0
    return tuple(t.to(device, dtype) for t in (x_adv, grad, x_orig))


def make_param(batch, value, dtype, device="cpu", seed=1):
    """(B,) per-sample values in [value / 2, 3 value / 2)."""
    generator = torch.Generator().manual_seed(seed + batch)
    return (value * (0.5 + torch.rand(batch, generator=generator, dtype=torch.float64))).to(device, dtype)


def budgets(x, norm, dtype):
    """eps, alpha for x: 8/255 and 2/255 per element, scaled by sqrt(elements per sample) for l2."""
    scale = 1.0 if norm == "linf" else math.sqrt(x[0].numel())
    return (make_param(x.shape[0], 8 / 255 * scale, dtype, x.device),
            make_param(x.shape[0], 2 / 255 * scale, dtype, x.device, seed=2))


def dtypes(backend):
    """float32 and float64; on the GPU also float16 and bfloat16 (computed in float32)."""
    return [torch.float32, torch.float64] + (list(HALF) if backend.device == "cuda" else [])


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def sample_inputs(backend, seed=0):
    """(x_adv, grad, x_orig, eps / alpha dtype) on backend.device for every shape, dtype and
    eps / alpha dtype the backend runs. eps / alpha come in the compute dtype, and on the GPU in
    float32 and float64 both (test_partly_zero_gradient_and_float64_eps mixes them everywhere)."""
    if backend.interpreted:
        shapes = INTERPRETED_SHAPES
    else:
        shapes = SHAPES + (GPU_SHAPES if backend.device == "cuda" else [])
    for shape in shapes:
        for dtype in dtypes(backend):
            param_dtypes = [torch.float32, torch.float64] if backend.device == "cuda" else [compute_dtype(dtype)]
            for param_dtype in param_dtypes:
                yield (*make_inputs(shape, dtype, backend.device, seed), param_dtype)


def misaligned(t):
    """A copy of t whose storage starts one element past a 16-byte boundary (scalar code paths)."""
    out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
    out.copy_(t)
    return out


def sample_norms(t, norm="l2"):
    flat = t.double().reshape(t.shape[0], -1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def assert_close(backend, actual, expected, scale=1.0, tolerance=None):
    """actual against the reference's ``expected`` with the backend's tolerance (atol times ``scale``)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    rtol, atol = tolerance or TOLERANCES[backend.name][actual.dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol * scale,
                               msg=lambda m: f"{tuple(actual.shape)} {actual.dtype}: {m}")


def agrees_with_cpp(backend, out, op, *args):
    """Off the cpp backend, for float32 / float64: out as the C++ CPU op gives it on CPU copies."""
    if backend.name == "cpp" or out.dtype in HALF:
        return
    cpu_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    torch.testing.assert_close(out.cpu(), getattr(torch.ops.stochnet, op)(*cpu_args), rtol=1e-5, atol=1e-6)


def check_pgd(backend, x_adv, grad, x_orig, eps, alpha, norm, lo=0.0, hi=1.0):
    inputs = [t.clone() for t in (x_adv, grad, x_orig)]
    out = backend.ops.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, lo, hi)
    assert out.is_contiguous()
    assert_close(backend, out, pgd_step_reference(x_adv, grad, x_orig, eps, alpha, norm, lo, hi))
    for before, after in zip(inputs, (x_adv, grad, x_orig)):
        assert torch.equal(before, after)
    agrees_with_cpp(backend, out, "pgd_step", x_adv, grad, x_orig, eps, alpha, norm, lo, hi)
    return out


def check_mim(backend, x_adv, grad, x_orig, momentum, eps, alpha, mu, lo=0.0, hi=1.0):
    """The step and the momentum updated in place, against the reference."""
    start, expected_momentum = momentum.clone(), momentum.clone()
    expected = mim_step_reference(x_adv, grad, x_orig, expected_momentum, eps, alpha, mu, lo, hi)
    pointer = momentum.data_ptr()
    out = backend.ops.mim_step(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi)
    assert momentum.data_ptr() == pointer and out.is_contiguous()
    scale = float(expected_momentum.abs().max().clamp_min(1)) if backend.name == "cuda" else 1.0
    assert_close(backend, momentum, expected_momentum, scale=scale)
    if momentum.dtype in HALF:
        # The reference rounds each 16-bit op: momenta within a few ulp of 0 may differ in sign,
        # and so the step there.
        keep = expected_momentum.abs() > 4 * torch.finfo(momentum.dtype).eps * float(expected_momentum.abs().max())
        assert_close(backend, out[keep], expected[keep])
    else:
        assert_close(backend, out, expected)
        cpu_momentum = start.cpu()
        agrees_with_cpp(backend, out, "mim_step", x_adv, grad, x_orig, cpu_momentum, eps, alpha, mu, lo, hi)
        if backend.name != "cpp":
            torch.testing.assert_close(momentum.cpu(), cpu_momentum, rtol=1e-5, atol=1e-6)
    return out


def check_random_start(backend, x_orig, eps, norm, lo=0.0, hi=1.0, seed=SEED, offset=OFFSET):
    out = backend.ops.random_start(x_orig, eps, norm, lo, hi, philox_tensor(seed, offset))
    assert out.is_contiguous()
    # cpp's l2 normals agree with the reference within a few float32 ulp
    tolerance = (1e-5, 1e-6) if backend.name == "cpp" and norm == "l2" else None
    assert_close(backend, out, random_start_reference(x_orig, eps, norm, lo, hi, seed, offset), tolerance=tolerance)
    agrees_with_cpp(backend, out, "random_start", x_orig, eps, norm, lo, hi, philox_tensor(seed, offset))
    return out


def only(*names):
    """Run a test on the available backends of ``names`` only."""
    return pytest.mark.parametrize("backend", [b for b in AVAILABLE if b.name in names], ids=str)


# --- every backend against the references ---------------------------------------------------------

@pytest.mark.parametrize("norm", NORMS)
def test_pgd_step_matches_reference(backend, norm):
    for x_adv, grad, x_orig, param_dtype in sample_inputs(backend):
        eps, alpha = budgets(x_adv, norm, param_dtype)
        out = check_pgd(backend, x_adv, grad, x_orig, eps, alpha, norm)
        assert out.min() >= 0 and out.max() <= 1
        if out.dtype not in HALF:
            slack = 1e-6 if out.dtype == torch.float32 else 1e-12
            assert (sample_norms(out - x_orig, norm) <= eps.double() * (1 + slack) + slack).all()


def test_mim_step_matches_reference_and_updates_momentum(backend):
    for x_adv, grad, x_orig, param_dtype in sample_inputs(backend, seed=10):
        momentum = make_inputs(x_adv.shape, x_adv.dtype, backend.device, seed=11)[1]
        start = momentum.clone()
        eps, alpha = budgets(x_adv, "linf", param_dtype)
        out = check_mim(backend, x_adv, grad, x_orig, momentum, eps, alpha, 0.9)
        assert out.min() >= 0 and out.max() <= 1
        if out.dtype not in HALF:
            l1 = grad.double().abs().reshape(grad.shape[0], -1).mean(dim=1).view((-1,) + (1,) * (grad.dim() - 1))
            torch.testing.assert_close(momentum.double(), 0.9 * start.double() + grad.double() / l1,
                                       rtol=1e-5, atol=1e-5)
            assert (sample_norms(out - x_orig, "linf") <= eps.double() + 1e-6).all()


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_matches_reference(backend, norm):
    for _, _, x_orig, param_dtype in sample_inputs(backend, seed=20):
        eps, _ = budgets(x_orig, norm, param_dtype)
        out = check_random_start(backend, x_orig, eps, norm)
        assert out.min() >= 0 and out.max() <= 1
        if out.dtype not in HALF:
            assert (sample_norms(out - x_orig, norm) <= eps.double() * (1 + 1e-6) + 1e-6).all()


def test_misaligned_storage_and_wide_bounds(backend):
    if backend.interpreted:
        pytest.skip("alignment means nothing to the Triton interpreter (numpy arrays)")
    shape = (3, 4, 9, 5)
    for dtype in dtypes(backend):
        x_adv, grad, x_orig = (misaligned(t) for t in make_inputs(shape, dtype, backend.device, seed=3))
        for norm in NORMS:
            eps = make_param(3, 0.1 if norm == "linf" else 2.0, torch.float32, backend.device)
            alpha = make_param(3, 0.03 if norm == "linf" else 0.5, torch.float64, backend.device)
            check_pgd(backend, x_adv, grad, x_orig, eps, alpha, norm, -1e30, 1e30)
            check_random_start(backend, x_orig, make_param(3, 0.1, torch.float64, backend.device), norm, -1e30, 1e30,
                               42, 3)
        momentum = misaligned(make_inputs(shape, dtype, backend.device, seed=13)[1])
        eps, alpha = make_param(3, 0.1, torch.float32, backend.device), make_param(3, 0.03, torch.float32, backend.device)
        check_mim(backend, x_adv, grad, x_orig, momentum, eps, alpha, 1.0, -1e30, 1e30)


@pytest.mark.parametrize("shape", LARGE_SHAPES, ids=str)
def test_large_and_deterministic(backend, shape):
    if backend.device != "cuda":
        pytest.skip("the CUDA kernels' grids of many blocks: on the GPU only")
    x_adv, grad, x_orig = make_inputs(shape, torch.float32, backend.device, seed=5)
    for norm in NORMS:
        eps, alpha = budgets(x_adv, norm, torch.float32)
        first = check_pgd(backend, x_adv, grad, x_orig, eps, alpha, norm)
        for _ in range(2):
            assert torch.equal(backend.ops.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, 0.0, 1.0), first)
    eps, alpha = budgets(x_adv, "linf", torch.float32)
    momentum = make_inputs(shape, torch.float32, backend.device, seed=18)[1]
    first_momentum, again_momentum = momentum.clone(), momentum.clone()
    first = check_mim(backend, x_adv, grad, x_orig, first_momentum, eps, alpha, 0.9)
    assert torch.equal(backend.ops.mim_step(x_adv, grad, x_orig, again_momentum, eps, alpha, 0.9, 0.0, 1.0), first)
    assert torch.equal(again_momentum, first_momentum)


def op_samples(backend):
    """(op, its arguments, the reference of the op and its arguments) for every op and norm; one
    sample has eps 0."""
    device = backend.device
    x_adv, grad, x_orig = make_inputs((3, 2, 5, 5), torch.float32, device)
    eps = torch.tensor([0.03, 0.05, 0.0], device=device)
    alpha = torch.tensor([0.01, 0.02, 0.03], device=device)
    ops = backend.ops
    for norm in NORMS:
        yield (ops.pgd_step.default, (x_adv, grad, x_orig, eps, alpha, norm, 0.0, 1.0),
               pgd_step_reference, (x_adv, grad, x_orig, eps, alpha, norm, 0.0, 1.0))
        yield (ops.random_start.default, (x_orig, eps, norm, 0.0, 1.0, PHILOX),
               random_start_reference, (x_orig, eps, norm, 0.0, 1.0, SEED, OFFSET))
    yield (ops.mim_step.default, (x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, alpha, 1.0, 0.0, 1.0),
           mim_step_reference, (x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, alpha, 1.0, 0.0, 1.0))


@pytest.mark.parametrize("index", range(5))
def test_ops_match_reference(backend, index):
    op, args, reference, reference_args = list(op_samples(backend))[index]
    torch.testing.assert_close(op(*args), reference(*reference_args), rtol=1e-5, atol=1e-6)
    if op is backend.ops.mim_step.default:  # the momentum, updated in place by both
        torch.testing.assert_close(args[3], reference_args[3], rtol=1e-5, atol=1e-6)
        assert args[3].abs().sum() > 0


# --- the steps' invariants --------------------------------------------------------------------------

def test_linf_step_moves_along_the_gradient_sign(backend):
    x_orig = torch.full((2, 8), 0.5, device=backend.device)
    grad = torch.tensor([[1.0, -2.0, 0.0, 3.0, -1e-30, 1e-30, 0.0, -5.0]] * 2, device=backend.device)
    out = F.pgd_step(x_orig, grad, x_orig, eps=0.1, alpha=0.25, backend=backend.name)  # the step is clamped to eps
    torch.testing.assert_close(out, 0.5 + 0.1 * torch.sign(grad))
    small = F.pgd_step(x_orig, grad, x_orig, eps=0.1, alpha=torch.tensor([0.01, 0.02]), backend=backend.name)
    torch.testing.assert_close(small, 0.5 + torch.tensor([[0.01], [0.02]], device=backend.device) * torch.sign(grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_linf_step_stays_in_the_box_and_the_ball(backend, dtype):
    x_adv, grad, x_orig = make_inputs((8, 3, 7, 7), dtype, backend.device, seed=6)
    eps, alpha = make_param(8, 0.03, dtype, backend.device), make_param(8, 0.01, dtype, backend.device)
    out = backend.ops.pgd_step(x_adv, grad, x_orig, eps, alpha, "linf", 0.0, 1.0)
    assert bool(((out - x_orig).abs() <= eps.view(-1, 1, 1, 1) + 1e-6).all())
    assert bool(((out >= 0) & (out <= 1)).all())
    # From x_orig with alpha < eps and away from the box: exactly x_orig + alpha * sign(grad).
    x = 0.1 + 0.8 * x_orig
    eps, alpha = make_param(8, 0.05, dtype, backend.device), make_param(8, 0.01, dtype, backend.device, seed=2)
    out = backend.ops.pgd_step(x, grad, x, eps, alpha, "linf", 0.0, 1.0)
    assert torch.equal(out, x + alpha.view(-1, 1, 1, 1) * grad.sign())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_l2_step_projects_onto_the_ball(backend, dtype):
    device = backend.device
    # rtol of the projected norms: float64 to its rounding (the CUDA kernels: float32's)
    rtol = 1e-12 if dtype == torch.float64 and backend.name != "cuda" else 1e-5
    x_adv, grad, x_orig = make_inputs((6, 3, 9, 9), dtype, device, seed=8)
    eps, alpha = make_param(6, 0.5, dtype, device), make_param(6, 10.0, dtype, device)  # every sample projected
    out = backend.ops.pgd_step(x_adv, grad, x_orig, eps, alpha, "l2", -1e9, 1e9)
    torch.testing.assert_close(sample_norms(out - x_orig), eps.double(), rtol=rtol, atol=1e-6 if rtol > 1e-12 else 0)
    # Inside the ball nothing is projected: out = x_adv + alpha * grad / ||grad||.
    eps = torch.full((6,), 1e6, dtype=dtype, device=device)
    out = backend.ops.pgd_step(x_adv, grad, x_orig, eps, alpha, "l2", -1e9, 1e9)
    step = alpha.view(-1, 1, 1, 1) * grad / sample_norms(grad).to(dtype).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, x_adv + step, rtol=1e-5, atol=1e-6)
    # From x_orig: the step, then the ball's radius where the step leaves it; along the gradient.
    x_orig = torch.full((3, 100), 0.5, dtype=dtype, device=device)
    grad = make_inputs((3, 100), dtype, device, seed=9)[1]
    out = F.pgd_step(x_orig, grad, x_orig, eps=torch.tensor([0.1, 0.3, 10.0], dtype=dtype, device=device),
                     alpha=0.2, norm="l2", clip=(-100.0, 100.0), backend=backend.name)
    norms = sample_norms(out - x_orig)
    torch.testing.assert_close(norms, torch.tensor([0.1, 0.2, 0.2], dtype=torch.float64, device=device),
                               **({} if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)))
    direction = (out - x_orig) / norms[:, None].to(dtype)
    torch.testing.assert_close(direction, grad / grad.double().norm(dim=1, keepdim=True).to(dtype),
                               **({} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)))


@pytest.mark.parametrize("norm", NORMS)
def test_zero_gradient_keeps_x_adv_projected(backend, norm):
    device = backend.device
    x_adv, _, x_orig = make_inputs((4, 3, 5, 5), torch.float32, device)
    zero = torch.zeros_like(x_adv)
    for name in (backend.name, "torch"):
        out = F.pgd_step(x_adv, zero, x_orig, 0.5, 0.1, norm=norm, backend=name)
        torch.testing.assert_close(out, x_adv)  # x_adv is inside the ball already: unchanged
    assert torch.equal(F.pgd_step(x_orig, zero, x_orig, 0.5, 0.1, norm=norm, backend=backend.name), x_orig)
    if backend.name == "cuda" and norm == "linf":  # the CUDA kernel, inside a wide box and ball: exactly
        x_adv, _, x_orig = make_inputs((4, 10), torch.float32, device, seed=7)
        eps = torch.full((4,), 10.0, device=device)
        assert torch.equal(backend.ops.pgd_step(x_adv, torch.zeros_like(x_adv), x_orig, eps, eps, norm, -1.0, 2.0),
                           x_adv)
    # From x_orig, eps 0 or not: no step.
    x = make_inputs((3, 17), torch.float32, device, seed=9)[1]
    eps = torch.tensor([0.0, 1.0, 2.0], device=device)
    assert torch.equal(backend.ops.pgd_step(x, torch.zeros_like(x), x, eps, eps, norm, -1e9, 1e9), x)


@pytest.mark.parametrize("norm", NORMS)
def test_partly_zero_gradient_and_float64_eps(backend, norm):
    x_adv, grad, x_orig = make_inputs((3, 2, 5), torch.float32, backend.device)
    eps, alpha = budgets(x_adv, norm, torch.float64)
    grad[1] = 0
    grad[2, 0, :3] = 0
    x_adv[1] = x_orig[1] + 1e-3
    check_pgd(backend, x_adv, grad, x_orig, eps, alpha, norm, -1.5, 1.5)
    # A zero gradient does not move a sample inside the ball and the box.
    out = backend.ops.pgd_step(x_adv, grad, x_orig, eps, alpha, norm, -100.0, 100.0)
    assert torch.equal(out[1], x_adv[1])


def test_l2_eps_may_exceed_the_clip_range_up_to_the_box_diameter(backend):
    x = torch.rand(2, 3, 8, 8, device=backend.device)
    out = F.pgd_step(x, torch.randn_like(x), x, eps=3.0, alpha=1.0, norm="l2", backend=backend.name)  # sqrt(192)
    assert (out - x).flatten(1).norm(dim=1).max() <= 3.0 + 1e-5
    with pytest.raises(ValueError, match="eps must not exceed the clip range"):
        F.random_start(x, 14.0, norm="l2", backend=backend.name)


def test_non_contiguous_inputs_are_read_in_logical_order(backend):
    x_adv, grad, x_orig = (t.transpose(1, 2) for t in make_inputs((2, 5, 4), torch.float32, backend.device))
    out = F.pgd_step(x_adv, grad, x_orig, 0.03, 0.01, backend=backend.name)
    torch.testing.assert_close(out, F.pgd_step(x_adv, grad, x_orig, 0.03, 0.01, backend="torch"))


def test_mim_with_zero_gradient_keeps_the_momentum_scaled(backend):
    device = backend.device
    x = torch.full((2, 6), 0.5, device=device)
    momentum = torch.ones(2, 6, device=device)
    out = F.mim_step(x, torch.zeros_like(x), x, momentum, eps=0.1, alpha=0.05, mu=0.5, backend=backend.name)
    assert torch.equal(momentum, torch.full((2, 6), 0.5, device=device))
    torch.testing.assert_close(out, torch.full((2, 6), 0.55, device=device))
    # A zero momentum entry (sign 0) does not move.
    x_adv, grad, x_orig = make_inputs((2, 3, 3), torch.float32, device)
    x_adv = x_orig + 1e-3  # inside the box of every eps
    grad.zero_()
    momentum = make_inputs((2, 3, 3), torch.float32, device, seed=5)[1]
    momentum[0, 0, 0] = 0
    before = momentum.clone()
    eps, alpha = budgets(x_adv, "linf", torch.float32)
    out = check_mim(backend, x_adv, grad, x_orig, momentum, eps, alpha, 0.5, -100.0, 100.0)
    torch.testing.assert_close(momentum, 0.5 * before, rtol=0, atol=0)
    assert out[0, 0, 0] == x_adv[0, 0, 0]


def test_mim_first_step_from_zero_momentum(backend):
    # momentum = 0: g = grad / mean|grad|, and the step follows sign(grad).
    x_adv, grad, x_orig = make_inputs((5, 3, 8, 8), torch.float64, backend.device, seed=14)
    momentum = torch.zeros_like(grad)
    eps, alpha = make_param(5, 0.1, torch.float64, backend.device), make_param(5, 0.02, torch.float64, backend.device)
    out = backend.ops.mim_step(x_adv, grad, x_orig, momentum, eps, alpha, 0.9, 0.0, 1.0)
    mean = grad.abs().flatten(1).mean(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(momentum, grad / mean, rtol=1e-12, atol=1e-12)
    assert torch.equal(out, backend.ops.pgd_step(x_adv, grad, x_orig, eps, alpha, "linf", 0.0, 1.0))


# --- the random start ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,offset", SEEDS)
def test_random_start_is_the_philox_stream(backend, seed, offset):
    """x = 0, no clamp. linf: out = eps (2 u - 1), u uniform p of the stream (seed, offset). l2:
    out_b = z_b / ||z_b|| * eps_b * v_b^(1/d), v from the stream's next counters."""
    shapes = [(4, 3, 5, 7)] if backend.interpreted else [(3, 5), (4, 3, 5, 7), (1, 4099), (1000, 3), (2, 3, 64, 64)]
    for shape in shapes:
        x = torch.zeros(shape, dtype=torch.float64, device=backend.device)
        batch, numel = shape[0], x.numel()
        ones = torch.ones(batch, dtype=torch.float64, device=backend.device)
        out = backend.ops.random_start(x, ones, "linf", -2.0, 2.0, philox_tensor(seed, offset))
        u = philox.philox_uniform(seed, offset, numel).double().view(shape)
        torch.testing.assert_close(out.cpu(), 2 * u - 1, rtol=0, atol=1e-7)
        eps = make_param(batch, 1.0, torch.float64)
        out = backend.ops.random_start(x, eps.to(backend.device), "l2", -1e9, 1e9, philox_tensor(seed, offset)).cpu()
        z = philox.philox_normal(seed, offset, numel).double().view(batch, -1)
        v = philox.philox_uniform(seed, offset + (numel + 3) // 4, batch).double()
        radius = eps * v.pow(1.0 / z.shape[1])
        expected = (z / z.norm(dim=1, keepdim=True) * radius.view(-1, 1)).view(shape)
        torch.testing.assert_close(out, expected, rtol=2e-6, atol=1e-6)
        torch.testing.assert_close(sample_norms(out), radius, rtol=1e-6, atol=1e-7)


def test_linf_random_start_is_uniform_in_the_box(backend):
    if backend.interpreted:
        pytest.skip("too large for the Triton interpreter; test_random_start_is_the_philox_stream covers it")
    x = torch.full((64, 1000), 0.5, device=backend.device)
    out = F.random_start(x, 0.25, clip=(-1.0, 1.0), backend=backend.name, philox=PHILOX).cpu()
    u = philox.philox_uniform(SEED, OFFSET, x.numel()).view_as(out)
    torch.testing.assert_close(out, 0.5 + 0.25 * (2 * u - 1))
    noise = (out - 0.5).flatten()
    assert noise.min() >= -0.25 and noise.max() <= 0.25
    assert abs(noise.mean().item()) < 0.01
    assert abs(noise.std().item() - 0.25 / math.sqrt(3)) < 0.005
    counts = torch.histc(noise, bins=10, min=-0.25, max=0.25)
    assert (counts - noise.numel() / 10).abs().max() < 0.05 * noise.numel() / 10


def test_l2_random_start_is_uniform_in_the_ball(backend):
    if backend.interpreted:
        pytest.skip("too large for the Triton interpreter; test_random_start_is_the_philox_stream covers it")
    x = torch.zeros(4000, 3, dtype=torch.float64, device=backend.device)
    out = F.random_start(x, 1.0, norm="l2", clip=(-2.0, 2.0), backend=backend.name, philox=PHILOX).cpu()
    radius = out.norm(dim=1)
    assert radius.max() <= 1.0 + 1e-12
    # uniform in the 3-ball: P(r <= t) = t ** 3, directions uniform on the sphere
    for t in (0.5, 0.8, 0.95):
        assert abs((radius <= t).double().mean().item() - t**3) < 0.03
    assert (out / radius[:, None]).mean(dim=0).abs().max() < 0.05


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_stays_in_the_ball_and_box_and_is_deterministic(backend, norm):
    x_orig = make_inputs((5, 2, 3, 3), torch.float64, backend.device)[2] * 4 - 2
    eps = make_param(5, 0.3, torch.float64, backend.device, seed=7)
    out = backend.ops.random_start(x_orig, eps, norm, -100.0, 100.0, philox_tensor(3, 0))
    assert (sample_norms(out - x_orig, norm) <= eps.double() * (1 + (1e-12 if norm == "l2" else 0))).all()
    if backend.interpreted:
        return  # slow; test_random_start_matches_reference checks the box and the ball there
    # In [0, 1], float32: deterministic for a given (seed, offset), different for another offset.
    _, _, x_orig = make_inputs((16, 3, 8, 8), torch.float32, backend.device, seed=23)
    eps = make_param(16, 8 / 255 if norm == "linf" else 1.0, torch.float32, backend.device)
    out = backend.ops.random_start(x_orig, eps, norm, 0.0, 1.0, philox_tensor(99, 0))
    assert bool(((out >= 0) & (out <= 1)).all())
    bound = eps.double() * (1 + (1e-6 if norm == "linf" else 1e-5))
    assert bool((sample_norms(out - x_orig, norm) <= bound).all())
    assert torch.equal(backend.ops.random_start(x_orig, eps, norm, 0.0, 1.0, philox_tensor(99, 0)), out)
    assert not torch.equal(backend.ops.random_start(x_orig, eps, norm, 0.0, 1.0, philox_tensor(99, 1)), out)


def test_random_start_reads_philox_on_the_data_device(backend):
    _, _, x_orig = make_inputs((3, 5), torch.float32, backend.device)
    eps = make_param(3, 0.3, torch.float32, backend.device)
    for norm in NORMS:
        assert torch.equal(backend.ops.random_start(x_orig, eps, norm, -1.5, 1.5, PHILOX.to(backend.device)),
                           backend.ops.random_start(x_orig, eps, norm, -1.5, 1.5, PHILOX))


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_is_reproducible_under_manual_seed(backend, norm):
    if backend.interpreted:
        pytest.skip("the seed is drawn per device: the cpp backend's run covers the CPU")
    x = torch.rand(3, 4, 5, device=backend.device)
    torch.manual_seed(11)
    first = F.random_start(x, 0.1, norm=norm, backend=backend.name)
    second = F.random_start(x, 0.1, norm=norm, backend=backend.name)
    torch.manual_seed(11)
    again = F.random_start(x, 0.1, norm=norm, backend=backend.name)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


# --- registration ---------------------------------------------------------------------------------

def opcheck(backend, op, args):
    # Triton: schema and fake only (under the interpreter the ops are opaque custom ops);
    # test_schema checks that mim_step mutates momentum and nothing else.
    extra = dict(test_utils=("test_schema", "test_faketensor")) if backend.name == "triton" else {}
    torch.library.opcheck(op, args, **extra)


@pytest.mark.parametrize("index", range(5))
def test_opcheck(backend, index):
    op, args, _, _ = list(op_samples(backend))[index]
    opcheck(backend, op, args)


def test_opcheck_float64(backend):
    x_adv, grad, x_orig = make_inputs((2, 9), torch.float64, backend.device)
    eps = torch.tensor([0.1, 0.2], dtype=torch.float64, device=backend.device)
    alpha = torch.tensor([0.05, 0.05], device=backend.device)
    ops = backend.ops
    opcheck(backend, ops.pgd_step.default, (x_adv, grad, x_orig, eps, alpha, "l2", 0.0, 1.0))
    opcheck(backend, ops.mim_step.default, (x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, alpha, 1.0, 0.0, 1.0))
    opcheck(backend, ops.random_start.default, (x_orig, eps, "linf", 0.0, 1.0, torch.tensor([5, 7])))


def test_compiles_without_graph_break(backend):
    if backend.interpreted:
        pytest.skip("under the Triton interpreter the ops are opaque custom ops: nothing Triton to trace")
    x_adv, grad, x_orig = make_inputs((4, 3, 6, 6), torch.float32, backend.device)
    momentum = torch.zeros_like(x_adv)

    def attack_step(x_adv, grad, x_orig, momentum):
        start = F.random_start(x_orig, 0.03, backend=backend.name, philox=PHILOX)
        stepped = F.pgd_step(x_adv, grad, x_orig, 0.03, 0.01, backend=backend.name)
        return start, stepped, F.mim_step(stepped, grad, x_orig, momentum, 0.03, 0.01, backend=backend.name)

    compiled = torch.compile(attack_step, fullgraph=True, backend="aot_eager")
    expected_momentum = momentum.clone()
    results = compiled(x_adv, grad, x_orig, momentum)
    expected = attack_step(x_adv, grad, x_orig, expected_momentum)
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(momentum, expected_momentum)


# --- bad input ------------------------------------------------------------------------------------

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
    """The public API's checks, before any backend runs."""
    x = torch.rand(2, 6)
    with pytest.raises(error, match=match):
        call(x, torch.randn(2, 6), torch.zeros(2, 6))


@only("cpp", "cuda")
def test_cpp_ops_check_their_arguments(backend):
    """The C++ ops' own checks (csrc/checks.h), CPU and CUDA alike, plus each device's own."""
    device, ops = backend.device, torch.ops.stochnet
    x_adv, grad, x_orig = make_inputs((4, 6), torch.float32, device, seed=25)
    eps = torch.full((4,), 0.1, device=device)
    zeros = lambda *size: torch.zeros(*size, device=device)  # noqa: E731
    philox = torch.tensor([1, 0])
    with pytest.raises(RuntimeError, match="norm must be 'linf' or 'l2'"):
        ops.pgd_step(x_adv, grad, x_orig, eps, eps, "l1", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="norm must be 'linf' or 'l2'"):
        ops.random_start(x_orig, eps, "L2", 0.0, 1.0, philox)
    with pytest.raises(RuntimeError, match=r"eps must be a contiguous tensor of shape \(4,\)"):
        ops.pgd_step(x_adv, grad, x_orig, eps[:3], eps, "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="alpha must be float32 or float64"):
        ops.pgd_step(x_adv, grad, x_orig, eps, eps.half(), "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="grad must have x_adv's dtype"):
        ops.pgd_step(x_adv, grad.double(), x_orig, eps, eps, "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="x_orig must have x_adv's shape"):
        ops.pgd_step(x_adv, grad, x_orig[:, :5], eps, eps, "l2", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="grad must be contiguous"):
        ops.pgd_step(x_adv, torch.rand(6, 4, device=device).t(), x_orig, eps, eps, "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="momentum must have x_adv's shape"):
        ops.mim_step(x_adv, grad, x_orig, zeros(4, 5), eps, eps, 0.9, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="momentum must have x_adv's dtype"):
        ops.mim_step(x_adv, grad, x_orig, x_adv.double(), eps, eps, 1.0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="momentum must have x_adv's dtype"):
        ops.mim_step(x_adv.half(), grad.half(), x_orig.half(), zeros(4, 6), eps, eps, 0.9, 0.0, 1.0)
    with pytest.raises(ValueError, match="momentum shares memory with x_adv"):
        ops.mim_step(x_adv, grad, x_orig, x_adv, eps, eps, 0.9, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="clip must have lo < hi"):
        ops.pgd_step(x_adv, grad, x_orig, eps, eps, "linf", 1.0, 0.0)
    with pytest.raises(RuntimeError, match="clip must have lo < hi"):
        ops.random_start(x_orig, eps, "linf", 1.0, 0.0, philox)
    with pytest.raises(RuntimeError, match="clip must have lo < hi"):
        ops.random_start(x_orig, eps, "linf", 0.0, float("nan"), philox)
    with pytest.raises(RuntimeError, match="x_orig must be a floating tensor"):
        ops.random_start(x_orig.int(), eps, "l2", 0.0, 1.0, philox)
    with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
        ops.random_start(x_orig, eps, "linf", 0.0, 1.0, philox[:1])
    with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0, got \(1, -1\)"):
        ops.random_start(x_orig, eps, "l2", 0.0, 1.0, torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0, got \(-1, 0\)"):
        ops.random_start(x_orig, eps, "l2", 0.0, 1.0, torch.tensor([-1, 0]))
    # The ops make nothing contiguous (stochnet.ops.pgd does): a channels-last input is an error.
    images = make_inputs((4, 3, 6, 5), torch.float32, device, seed=4)
    for i in range(3):
        args = list(images)
        args[i] = args[i].to(memory_format=torch.channels_last)
        for norm in NORMS:
            with pytest.raises(RuntimeError, match="must be contiguous"):
                ops.pgd_step(*args, eps, eps, norm, 0.0, 1.0)
    strided = make_inputs((4, 3, 6, 5), torch.float32, device, seed=16)[1].to(memory_format=torch.channels_last)
    before = strided.clone()
    with pytest.raises(RuntimeError, match="momentum must be contiguous"):
        ops.mim_step(*images, strided, eps, eps, 0.5, 0.0, 1.0)
    assert torch.equal(strided, before)
    empty, no_eps = torch.empty(0, 3, device=device), torch.empty(0, device=device)
    with pytest.raises(RuntimeError, match="x_adv must not be empty"):
        ops.pgd_step(empty, empty, empty, no_eps, no_eps, "l2", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="x_adv must not be empty"):
        ops.mim_step(empty, empty, empty, empty.clone(), no_eps, no_eps, 0.9, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="x_orig must not be empty"):
        ops.random_start(empty, no_eps, "l2", 0.0, 1.0, philox)
    if device == "cpu":
        with pytest.raises(RuntimeError, match="x_orig must be float32 or float64 on CPU"):
            ops.random_start(x_orig.half(), eps, "linf", 0.0, 1.0, philox)
    else:
        with pytest.raises(RuntimeError, match="eps is on"):
            ops.pgd_step(x_adv, grad, x_orig, eps.cpu(), eps, "linf", 0.0, 1.0)
        with pytest.raises(RuntimeError, match="mu must be finite"):
            ops.mim_step(x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, eps, float("inf"), 0.0, 1.0)


# --- Triton only ----------------------------------------------------------------------------------

@only("triton")
def test_triton_multiple_tiles_per_sample(backend, monkeypatch):
    """Tiny tiles: several column tiles per sample in the reductions, several blocks per sample."""
    from stochnet.kernels import pgd as kernels
    monkeypatch.setattr(kernels, "_TILE", 16)
    monkeypatch.setattr(kernels, "_BLOCK_1D", 16)
    x_adv, grad, x_orig = make_inputs((3, 7, 5), torch.float64, backend.device)
    eps, alpha = budgets(x_adv, "linf", torch.float64)
    for norm in NORMS:
        check_pgd(backend, x_adv, grad, x_orig, eps, alpha, norm, -1.5, 1.5)
        check_random_start(backend, x_orig, eps, norm, -1.5, 1.5)
    check_mim(backend, x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, alpha, 1.0, -1.5, 1.5)


@only("triton")
def test_triton_validation_names_arguments(backend):
    """Through stochnet.ops.checks, plus what the kernels rely on: errors name the argument."""
    ops, device = backend.ops, backend.device
    x_adv, grad, x_orig = make_inputs((2, 3), torch.float32, device)
    eps, alpha = budgets(x_adv, "linf", torch.float32)
    lo, hi = -1.5, 1.5
    with pytest.raises(ValueError, match="norm"):
        ops.pgd_step(x_adv, grad, x_orig, eps, alpha, "l1", lo, hi)
    with pytest.raises(ValueError, match="grad must have x_adv's shape"):
        ops.pgd_step(x_adv, grad[:1], x_orig, eps, alpha, "linf", lo, hi)
    with pytest.raises(TypeError, match="x_orig must have x_adv's dtype"):
        ops.pgd_step(x_adv, grad, x_orig.double(), eps, alpha, "linf", lo, hi)
    with pytest.raises(ValueError, match="eps must be a float32 or float64 tensor of shape"):
        ops.pgd_step(x_adv, grad, x_orig, eps[:1], alpha, "linf", lo, hi)
    with pytest.raises(ValueError, match="alpha must be a float32 or float64 tensor of shape"):
        ops.pgd_step(x_adv, grad, x_orig, eps, alpha.half(), "linf", lo, hi)
    with pytest.raises(ValueError, match="alpha must be contiguous"):
        ops.pgd_step(x_adv, grad, x_orig, eps, torch.ones(2, 2, device=device)[:, 0], "linf", lo, hi)
    with pytest.raises(ValueError, match="lo < hi"):
        ops.pgd_step(x_adv, grad, x_orig, eps, alpha, "linf", 1.0, 0.0)
    with pytest.raises(ValueError, match="lo < hi"):
        ops.mim_step(x_adv, grad, x_orig, torch.zeros_like(x_adv), eps, alpha, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="lo < hi"):
        ops.random_start(x_orig, eps, "linf", 1.0, 0.0, PHILOX)
    with pytest.raises(ValueError, match="x_adv must be contiguous"):
        ops.pgd_step(x_adv.t(), grad.t(), x_orig.t(), eps[:1].expand(3), alpha[:1].expand(3), "linf", lo, hi)
    with pytest.raises(ValueError, match="momentum must have x_adv's shape"):
        ops.mim_step(x_adv, grad, x_orig, torch.zeros(2, 4, device=device), eps, alpha, 1.0, lo, hi)
    with pytest.raises(ValueError, match="momentum must be contiguous"):
        ops.mim_step(x_adv, grad, x_orig, torch.zeros(3, 2, device=device).t(), eps, alpha, 1.0, lo, hi)
    with pytest.raises(ValueError, match="x_orig must be contiguous"):
        ops.random_start(torch.zeros(3, 2, device=device).t(), eps, "linf", lo, hi, PHILOX)
    with pytest.raises(ValueError, match="philox must be an int64 tensor of shape"):
        ops.random_start(x_orig, eps, "linf", lo, hi, torch.tensor([SEED]))
    # As the C++ ops: an empty x_adv / x_orig is an error naming it, not an empty result.
    empty, no_eps = torch.empty((0, 3), device=device), torch.empty(0, device=device)
    for norm in NORMS:
        with pytest.raises(ValueError, match="x_adv must be a non-empty tensor"):
            ops.pgd_step(empty, empty, empty, no_eps, no_eps, norm, lo, hi)
        with pytest.raises(ValueError, match="x_orig must be a non-empty tensor"):
            ops.random_start(empty, no_eps, norm, lo, hi, PHILOX)
    with pytest.raises(ValueError, match="x_adv must be a non-empty tensor"):
        ops.mim_step(empty, empty, empty, empty.clone(), no_eps, no_eps, 1.0, lo, hi)


@only("triton")
def test_triton_per_sample_reduction_limit_names_the_argument(backend, monkeypatch):
    """The l2 reductions hold at most 65535 column tiles per sample (grid axis 1)."""
    from stochnet.kernels import pgd as kernels
    monkeypatch.setattr(kernels, "_MAX_COLUMN_TILES", 1)
    x_adv, grad, x_orig = make_inputs((2, 3000), torch.float32, backend.device)
    eps, alpha = budgets(x_adv, "l2", torch.float32)
    with pytest.raises(ValueError, match="x_adv has 3000 elements per sample"):
        backend.ops.pgd_step(x_adv, grad, x_orig, eps, alpha, "l2", -1.5, 1.5)
    with pytest.raises(ValueError, match="x_orig has 3000 elements per sample"):
        backend.ops.random_start(x_orig, eps, "l2", -1.5, 1.5, PHILOX)
