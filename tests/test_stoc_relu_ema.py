"""StocReLU-EMA on every backend (the ``backend`` fixture) against the pure-torch reference: y, the
mask bits and the new sigma of the op, the wrapper's in-place sigma update, gradients and the
backward op, layouts (planar, rows, channels-last, copied, misaligned), large means, NaN, signed
zeros, seeds and noise statistics, op registration and bad input; the module, torch.compile and
the global backend choice. Then what one backend alone has: large outputs, the C++ and the Triton
ops' own checks, and the CUDA Philox ops (csrc/cuda/philox*.cu)."""
import math

import pytest
import scipy.stats
import torch

import stochnet
from backends import AVAILABLE, SEEDS, Backend, philox_tensor
from stochnet import functional as F
from stochnet.ops import philox
from stochnet.ops import stoc_relu_ema as ops
from stochnet.ops.layout import dense, memory_order, pack_bits, unpack_bits
from stochnet.ops.stoc_relu_ema import reference, reference_backward

# ---- sample inputs: every backend runs these; interpreted Triton (slow) the first few of each list

SEED, OFFSET = 2**40 + 3, 2**32 - 7  # the counter crosses 2**32 inside a call
PHILOX = philox_tensor(SEED, OFFSET)
HALF = (torch.float16, torch.bfloat16)
DTYPES = [torch.float32, torch.float64] + ([*HALF] if any(b.device == "cuda" for b in AVAILABLE) else [])
# (shape, layout). Triton's kernels: "fused" is the one-pass 2-D tile kernel (rows of whole mask
# bytes), "flat" the memory-order kernel plus the statistics-only tiles. The C++ kernels: planar
# with inner >= 8 (the planes kernel), inner < 8 and rows (the periodic or column-statistics kernels).
LAYOUTS = [
    ((3, 5, 7, 9), "contiguous"),      # planar, odd plane: flat
    ((2, 3, 4, 6), "contiguous"),      # planar: fused
    ((1, 2, 48, 48), "contiguous"),    # planar, two tiles along the plane: fused
    ((5, 4, 8), "contiguous"),         # planar 3-D: fused
    ((37, 5), "contiguous"),           # rows (N, C), odd C: flat
    ((70, 80), "contiguous"),          # rows, several tiles in both directions: fused
    ((4, 6, 1, 1), "contiguous"),      # one element per plane is the rows layout: flat
    ((2, 8, 3, 5), "channels_last"),   # fused
    ((2, 3, 5, 7), "channels_last"),   # odd C: flat
    ((4, 5, 7, 9), "contiguous"),      # planes not a multiple of the vector width
    ((3, 16, 8, 8), "contiguous"),
    ((3, 4, 3, 3), "contiguous"),      # planes narrower than the vector width
    ((6, 8, 14, 14), "contiguous"),    # many blocks; vectors straddle planes
    ((2, 3, 5, 6, 2), "contiguous"),   # 5-D
    ((33, 17), "contiguous"),
    ((1, 1), "contiguous"),            # one element (eval only)
    ((4, 6, 5, 5), "channels_last"),
    ((2, 32, 3, 3), "channels_last"),
    ((4, 6, 5, 5), "sliced"),          # not dense: copied first
    # interpreted Triton stops here
    ((4, 3, 5, 7), "contiguous"), ((2, 16, 8, 8), "contiguous"), ((3, 5, 3, 3), "contiguous"),
    ((3, 4, 37), "contiguous"), ((2, 6, 2, 2), "contiguous"), ((3, 6, 1, 1), "contiguous"),
    ((7, 13), "contiguous"), ((1000, 3), "contiguous"), ((3, 4097), "contiguous"),
    ((5, 3, 7, 9), "channels_last"), ((8, 16, 9, 9), "channels_last"),
    ((2, 1), "contiguous"), ((3, 1, 1, 1), "contiguous"), ((1, 5, 1), "contiguous"),  # tiny
    ((37, 11), "misaligned"),          # storage one element past a 16-byte boundary: scalar code
    # the CPU stops here (test_large_outputs has its large inputs)
    ((16, 64, 16, 16), "contiguous"), ((8001, 10), "contiguous"), ((4001, 24), "contiguous"),
    ((32, 64, 16, 16), "channels_last"),
]
LAYOUTS_INTERPRETED, LAYOUTS_CPU = 19, 34
# y tolerances (rtol, atol): the noise matches the reference's to a few float32 ulp, then half
# precision rounds y. The CUDA kernels keep the bounds of their own old tests (atol per unit of
# noise scale).
Y_TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-5, 1e-5), torch.float16: (1e-3, 1e-5),
         torch.bfloat16: (1.6e-2, 1e-5)}
CUDA_Y_TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-5, 1e-5), torch.float16: (2e-3, 1e-3),
              torch.bfloat16: (1.6e-2, 1e-2)}
SIGMA_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
CUDA_SIGMA_RTOL = {**SIGMA_RTOL, torch.float64: 1e-9}


def sample_inputs(backend, cases, interpreted, cpu=None):
    """``cases``; only their first ``interpreted`` in the Triton interpreter, ``cpu`` on the CPU."""
    if backend.interpreted:
        return cases[:interpreted]
    return cases[:cpu] if backend.device == "cpu" else cases


def backends(keep):
    """Parametrise a test over the available backends that ``keep`` accepts instead of all of them."""
    return pytest.mark.parametrize("backend", [b for b in AVAILABLE if keep(b)], ids=str)


def make_input(shape, layout, dtype=torch.float32, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) + 0.3
    sigma = (torch.rand(shape[1], generator=generator) + 0.5).to(device)
    if layout == "channels_last":
        return x.to(device).contiguous(memory_format=torch.channels_last), sigma
    if layout == "sliced":
        return torch.randn(shape[:-1] + (2 * shape[-1],), generator=generator, dtype=dtype).to(device)[..., ::2], sigma
    if layout == "misaligned":
        return misaligned(x.to(device)), sigma
    return x.to(device), sigma


def misaligned(t):
    """A copy of t whose storage starts one element past a 16-byte boundary."""
    out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
    return out.copy_(t)


def trainable(x):
    return x.numel() // x.shape[1] > 1


def check_forward(backend, x, sigma, gamma=0.7, momentum=0.3, training=True, seed=SEED, offset=OFFSET, wrapper=False):
    """The op (and the wrapper) against the reference; returns the op's (y, mask, new sigma)."""
    p = philox_tensor(seed, offset)
    before = sigma.clone()
    y, mask, new_sigma = backend.ops.stoc_relu_ema(dense(x), sigma, gamma, momentum, training, p)
    sigma_ref = sigma.clone()
    y_ref, flags = reference(x, sigma_ref, gamma, momentum, training, seed, offset)

    assert y.dtype == x.dtype and y.shape == x.shape and y.stride() == dense(x).stride()
    noise_scale = math.sqrt(gamma) * before.abs().max().item()
    if backend.name == "cuda":
        rtol, atol = CUDA_Y_TOL[x.dtype]
        atol *= max(noise_scale, 1.0)
    else:
        rtol, atol = Y_TOL[x.dtype]
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    assert mask.dtype == torch.uint8 and mask.shape == ((x.numel() + 7) // 8,)
    if x.numel() % 8:
        assert mask[-1].item() >> (x.numel() % 8) == 0, "padding bits of the last mask byte must be zero"
    if backend.name == "cuda":
        # Mask bits equal [v > 0] except where v is within the noise's rounding of zero.
        v = _noisy(dense(x), before, gamma, seed, offset)
        undecided = v.abs() <= 1e-5 * max(noise_scale, 1.0)
        assert bool(((unpack_bits(mask.cpu(), dense(x).cpu()) == (v > 0)) | undecided).all())
    else:
        assert torch.equal(mask, pack_bits(flags))

    # The op is functional: running_sigma is never written, the update is its third output.
    assert torch.equal(sigma, before)
    assert new_sigma.dtype == sigma.dtype and new_sigma.shape == sigma.shape and new_sigma.device == sigma.device
    assert new_sigma.untyped_storage().data_ptr() != sigma.untyped_storage().data_ptr()
    if training:
        rtol = (CUDA_SIGMA_RTOL if backend.name == "cuda" else SIGMA_RTOL)[sigma.dtype]
        torch.testing.assert_close(new_sigma, sigma_ref, rtol=rtol, atol=0)
    else:
        assert torch.equal(new_sigma, before)  # eval leaves the statistics alone

    if not wrapper:
        return y, mask, new_sigma
    # The wrapper: the same y, and the new sigma copied into the buffer in training only.
    buffer = before.clone()
    y_wrapper = F.stoc_relu_ema(x, buffer, gamma, momentum, training, backend=backend.name, philox=p)
    assert torch.equal(y_wrapper, y) and y_wrapper.stride() == y.stride() and torch.equal(buffer, new_sigma)
    return y, mask, new_sigma


def _noisy(x, sigma, gamma, seed, offset):
    """x + sqrt(gamma) sigma[c] z in the compute type, on the CPU, laid out like x."""
    x = x.cpu()
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    scale = (sigma.cpu().to(compute) * math.sqrt(gamma)).view((1, -1) + (1,) * (x.dim() - 2))
    return x.to(compute) + scale * philox.normal_like(x, seed, offset).to(compute)


def run(backend, x, sigma, training=True, gamma=0.7, momentum=0.3):
    return F.stoc_relu_ema(x, sigma, gamma, momentum, training, backend=backend.name, philox=PHILOX)


# ---- forward -----------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_matches_reference(backend, dtype, training):
    if dtype in HALF and backend.device == "cpu":
        pytest.skip("half precision runs on the GPU only")
    for shape, layout in sample_inputs(backend, LAYOUTS, LAYOUTS_INTERPRETED, LAYOUTS_CPU):
        x, sigma = make_input(shape, layout, dtype, backend.device)
        if trainable(x) or not training:  # the wrapper too (interpreted: where it may copy x)
            wrapper = not backend.interpreted or layout != "contiguous"
            _, mask, _ = check_forward(backend, x, sigma, training=training, wrapper=wrapper)
            bits = int(unpack_bits(mask, dense(x)).sum())
            assert x.numel() < 20 or 0 < bits < x.numel()  # both branches of the ReLU are exercised


@backends(lambda b: not b.interpreted)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_without_noise_is_exact(backend, dtype):
    """gamma = 0: v = x exactly, so y = relu(x) and the mask are exact and the statistics are those
    of x alone; this pins down the layout, mask and channel bookkeeping."""
    if dtype in HALF and backend.device == "cpu":
        pytest.skip("half precision runs on the GPU only")
    for shape, layout in sample_inputs(backend, LAYOUTS, None, LAYOUTS_CPU):
        x, sigma = make_input(shape, layout, dtype, backend.device, seed=5)
        y, mask, _ = check_forward(backend, x, sigma, gamma=0.0, momentum=0.25, training=trainable(x))
        assert torch.equal(y, torch.relu(x))
        assert torch.equal(mask, pack_bits(dense(x) > 0))


def test_forward_sigma_in_x_dtype(backend):
    dtypes = [torch.float64] + ([*HALF] if backend.device == "cuda" else [])
    cases = [((3, 4, 5), "contiguous"), ((4, 3, 5, 7), "contiguous"), ((8, 16, 9, 9), "channels_last"),
             ((8001, 10), "contiguous")]
    for dtype in dtypes:
        for shape, layout in sample_inputs(backend, cases, 2, 3):
            x, sigma = make_input(shape, layout, dtype, backend.device, seed=3)
            _, _, new_sigma = check_forward(backend, x, sigma.to(dtype), gamma=0.5, momentum=0.5)
            assert new_sigma.dtype == dtype


def test_running_sigma_is_accurate_when_mean_dwarfs_std(backend):
    """mean / std = 1e5 in float32: sum-of-squares formulas lose every digit here."""
    cases = [((4, 3, 40, 40), "contiguous"), ((6, 3, 7, 7), "contiguous"), ((300, 24), "contiguous"),
             ((4, 16, 9, 9), "channels_last"), ((16, 64, 16, 16), "contiguous"), ((32, 64, 16, 16), "channels_last"),
             ((4001, 24), "contiguous"), ((1000, 3), "contiguous")]
    for shape, layout in sample_inputs(backend, cases, 4, 4):
        x, _ = make_input(shape, layout, device=backend.device, seed=11)
        sigma = torch.ones(shape[1], device=backend.device)
        check_forward(backend, 1000 + 0.01 * x, sigma, gamma=0.1, momentum=1.0)
    # mean / std = 1e6 through the wrapper: within 1e-3 of the float64 std still
    x, _ = make_input((8, 2, 16, 16), "contiguous", device=backend.device, seed=4)
    x = x * 0.01 + 1e4
    sigma = torch.zeros(2, device=backend.device)
    run(backend, x, sigma, momentum=1.0)
    torch.testing.assert_close(sigma.double(), x.double().std(dim=(0, 2, 3)), rtol=1e-3, atol=0)


def test_running_sigma_is_the_ema_of_the_channel_std(backend):
    x, _ = make_input((8, 3, 10, 10), "contiguous", device=backend.device, seed=3)
    sigma = torch.full((3,), 2.0, device=backend.device)
    run(backend, x, sigma, momentum=0.25)
    expected = 0.75 * 2.0 + 0.25 * x.double().std(dim=(0, 2, 3))
    torch.testing.assert_close(sigma.double(), expected, rtol=1e-6, atol=0)


def test_noise_uses_sigma_before_the_update(backend):
    x, sigma = make_input((4, 8, 6), "contiguous", device=backend.device)
    y_train, _, _ = backend.ops.stoc_relu_ema(x, sigma, 1.0, 0.5, True, PHILOX)
    y_eval, _, _ = backend.ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, PHILOX)
    assert torch.equal(y_train, y_eval)
    x, _ = make_input((4, 2, 6, 6), "contiguous", device=backend.device)
    sigma = torch.tensor([0.0, 3.0], device=backend.device)
    y, _, new_sigma = backend.ops.stoc_relu_ema(x, sigma, 1.0, 1.0, True, PHILOX)
    assert torch.equal(y[:, 0], torch.relu(x[:, 0])), "channel 0 had sigma 0 before the update"
    assert new_sigma[0].item() > 0 and sigma[0].item() == 0


def test_same_seed_same_output_other_offset_other_noise(backend):
    x, sigma = make_input((2, 8, 3, 5), "channels_last", device=backend.device)
    first = backend.ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, PHILOX)
    again = backend.ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, PHILOX)
    other = backend.ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, philox_tensor(SEED, OFFSET + 1))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    on_device = backend.ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, PHILOX.to(backend.device))  # the kernels load it
    assert torch.equal(first[0], on_device[0]) and torch.equal(first[1], on_device[1])
    for seed, offset in SEEDS:
        check_forward(backend, x, sigma, seed=seed, offset=offset)
    # without a philox: drawn from the device's generator, so torch.manual_seed reproduces a call
    torch.manual_seed(7)
    first = F.stoc_relu_ema(x, sigma.clone(), 0.5, training=False, backend=backend.name)
    second = F.stoc_relu_ema(x, sigma.clone(), 0.5, training=False, backend=backend.name)
    torch.manual_seed(7)
    assert torch.equal(first, F.stoc_relu_ema(x, sigma.clone(), 0.5, training=False, backend=backend.name))
    assert not torch.equal(first, second)


def test_relu_propagates_nan_and_clears_its_bit(backend):
    for shape in [(2, 3, 4, 8), (3, 5, 7)]:
        x, sigma = make_input(shape, "contiguous", device=backend.device)
        x[0, 1, 2] = float("nan")
        y, mask, _ = backend.ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, PHILOX)
        y_ref, flags = reference(x, sigma.clone(), 1.0, 0.5, False, SEED, OFFSET)
        assert torch.isnan(y[0, 1, 2]).all() and torch.isnan(y).sum() == x[0, 1, 2].numel() and not flags[0, 1, 2].any()
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5, equal_nan=True)
        assert torch.equal(mask, pack_bits(flags))
    # training: the channel's statistics are NaN too, the others are not
    x, sigma = make_input((2, 3, 4, 4), "contiguous", device=backend.device)
    x[0, 1, 2, 2] = float("nan")
    y = run(backend, x, sigma)
    assert torch.isnan(y[0, 1, 2, 2]) and torch.isfinite(y).sum() == y.numel() - 1
    assert torch.isnan(sigma[1]) and torch.isfinite(sigma[[0, 2]]).all()


def test_signed_zeros_as_torch_relu(backend):
    # sigma 0: v = -0 + 0 * z is -0 where z < 0 and +0 elsewhere; relu keeps the sign, as torch.relu.
    for shape in [(3, 2, 8, 8), (40, 3)]:
        x = torch.full(shape, -0.0, device=backend.device)
        sigma = torch.zeros(shape[1], device=backend.device)
        y = run(backend, x, sigma.clone(), training=False)
        y_ref, _ = reference(x, sigma, 0.7, 0.3, False, *PHILOX.tolist())
        assert torch.equal(torch.signbit(y), torch.signbit(y_ref))
        assert 0 < int(torch.signbit(y).sum()) < y.numel()


@backends(lambda b: not b.interpreted)
def test_noise_statistics(backend):
    x = torch.full((64, 4, 32, 32), 50.0, device=backend.device)  # far from the kink: y - x is the noise
    sigma = torch.tensor([0.5, 1.0, 2.0, 3.0], device=backend.device)
    noise = (run(backend, x, sigma, training=False, gamma=4.0) - x).double().cpu()
    for c, s in enumerate([1.0, 2.0, 4.0, 6.0]):
        z = noise[:, c].flatten() / s
        assert abs(z.mean().item()) < 5 / z.numel() ** 0.5
        assert abs(z.std().item() - 1) < 0.02
        assert scipy.stats.kstest(z[:20000].numpy(), "norm").pvalue > 1e-4


@backends(lambda b: not b.interpreted)
def test_large_outputs(backend):
    """>= 8 MB: on the CPU y and dx are written with non-temporal stores."""
    for shape in [(16, 64, 48, 48), (2304, 1040)]:  # planar, rows
        x, sigma = make_input(shape, "contiguous", device=backend.device)
        x.requires_grad_()
        sigma_ref = sigma.clone()
        grad = torch.randn_like(x)
        y = run(backend, x, sigma)
        y_ref, flags = reference(x.detach(), sigma_ref, 0.7, 0.3, True, *PHILOX.tolist())
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sigma, sigma_ref, rtol=1e-5, atol=0)
        (grad_x,) = torch.autograd.grad(y, x, grad)
        assert torch.equal(grad_x, grad * flags)


@backends(lambda b: b.name != "cpp")
def test_agrees_with_the_cpp_kernels_element_by_element(backend):
    x, sigma = make_input((3, 8, 6, 6), "contiguous")
    y = run(backend, x.to(backend.device), sigma.clone().to(backend.device)).cpu()
    torch.testing.assert_close(y, run(AVAILABLE[0], x, sigma.clone()), rtol=4 * 2.0**-23, atol=1e-6)


# ---- backward ----------------------------------------------------------------------------------

def test_gradient_matches_reference(backend):
    for shape, layout in [((4, 5, 7, 9), "contiguous"), ((4, 6, 5, 5), "channels_last"), ((33, 17), "contiguous")]:
        x, sigma = make_input(shape, layout, device=backend.device)
        x_ref = x.detach().clone().requires_grad_()
        x.requires_grad_()
        grad = torch.randn_like(x)
        run(backend, x, sigma.clone()).backward(grad)
        reference(x_ref, sigma.clone(), 0.7, 0.3, True, *PHILOX.tolist())[0].backward(grad)
        torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_op_is_grad_times_the_mask(backend, dtype):
    """A select, as torch.relu's backward: grad where the unit is on, else 0 (also for NaN and inf)."""
    if dtype in HALF and backend.device == "cpu":
        pytest.skip("half precision runs on the GPU only")
    cases = [((3, 5, 7, 9), "contiguous"), ((2, 8, 3, 5), "channels_last"), ((37, 5), "contiguous"),
             ((1, 1), "contiguous"), ((4, 5, 7, 9), "contiguous"), ((4, 6, 5, 5), "channels_last"),
             ((33, 17), "contiguous"), ((3, 1, 1, 3), "contiguous"), ((4, 3, 5, 7), "contiguous"),
             ((7, 13), "contiguous"), ((5, 3, 7, 9), "channels_last"), ((16, 64, 16, 16), "contiguous")]
    for shape, layout in sample_inputs(backend, cases, 4, 11):
        x, sigma = make_input(shape, layout, dtype, backend.device)
        _, mask, _ = backend.ops.stoc_relu_ema(x, sigma, 0.7, 0.3, False, PHILOX)
        _, flags = reference(x, sigma.clone(), 0.7, 0.3, False, SEED, OFFSET)
        grad = make_input(shape, layout, dtype, backend.device, seed=99)[0]
        memory_order(grad)[::7] = float("nan")
        memory_order(grad)[3::11] = float("inf")
        grad_x = backend.ops.stoc_relu_ema_backward(grad, mask)
        assert grad_x.stride() == grad.stride() and grad_x.dtype == grad.dtype
        torch.testing.assert_close(grad_x, reference_backward(grad, mask), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(grad_x, torch.where(flags, grad, 0), rtol=0, atol=0, equal_nan=True)
    grad = misaligned(torch.randn(1001, device=backend.device))
    mask = pack_bits(torch.rand(1001, device=backend.device) > 0.5)
    assert torch.equal(backend.ops.stoc_relu_ema_backward(grad, mask), reference_backward(grad, mask))


def test_backward_saves_one_bit_per_element(backend):
    x, sigma = make_input((4, 8, 9, 9), "contiguous", device=backend.device)
    x.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        run(backend, x, sigma)
    assert sum(t.untyped_storage().nbytes() for t in saved) == (x.numel() + 7) // 8


@backends(lambda b: not b.interpreted)
def test_gradcheck_float64(backend):
    x, sigma = make_input((2, 3, 4, 5), "contiguous", torch.float64, backend.device)
    x.requires_grad_()
    torch.autograd.gradcheck(lambda t: run(backend, t, sigma.clone(), training=False), (x,), eps=1e-7, atol=1e-5)


# ---- registration, the wrapper, the module -----------------------------------------------------

def test_opcheck(backend):
    """Schema (running_sigma not mutated, no output aliasing an input) and fake tensors in every
    layout; autograd registration and compile (not for interpreted Triton, opaque to compile)."""
    namespace, fakes = backend.ops, ("test_schema", "test_faketensor")
    full = fakes if backend.interpreted else fakes + ("test_autograd_registration", "test_aot_dispatch_dynamic")
    for training in (True, False):
        x, sigma = make_input((2, 4, 3, 5), "contiguous", device=backend.device)
        torch.library.opcheck(namespace.stoc_relu_ema.default, (x.requires_grad_(), sigma, 0.7, 0.3, training, PHILOX),
                              test_utils=full)
        for shape, layout in [((2, 3, 4, 6), "contiguous"), ((2, 3, 5, 7), "channels_last")]:
            x, sigma = make_input(shape, layout, device=backend.device)
            torch.library.opcheck(namespace.stoc_relu_ema.default, (x, sigma, 0.7, 0.3, training, PHILOX),
                                  test_utils=fakes)
    for shape, layout, test_utils in [((2, 4, 3, 5), "contiguous", full), ((2, 8, 3, 5), "channels_last", fakes)]:
        x, sigma = make_input(shape, layout, device=backend.device)
        mask = namespace.stoc_relu_ema(x, sigma, 0.7, 0.3, False, PHILOX)[1]
        torch.library.opcheck(namespace.stoc_relu_ema_backward.default, (torch.randn_like(x), mask),
                              test_utils=test_utils)


@pytest.mark.parametrize("backend", AVAILABLE + [Backend("torch", "cuda" if torch.cuda.is_available() else "cpu")],
                         ids=str)
def test_the_wrapper_copies_the_new_sigma_into_the_buffer_in_training_only(backend):
    x, sigma = make_input((4, 3, 5, 5), "contiguous", device=backend.device)
    buffer, before = sigma.clone(), sigma.clone()
    ops.stoc_relu_ema(x, buffer, 0.7, 0.3, False, PHILOX, backend.name)
    assert torch.equal(buffer, before)
    pointer = buffer.data_ptr()
    ops.stoc_relu_ema(x, buffer, 0.7, 0.3, True, PHILOX, backend.name)
    assert buffer.data_ptr() == pointer
    expected = 0.7 * before.double() + 0.3 * x.double().std(dim=(0, 2, 3))
    torch.testing.assert_close(buffer.double(), expected, rtol=1e-5, atol=1e-6)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the module's tests: the device's default backend


class TestModule:
    def test_first_batch_sets_sigma_then_ema(self):
        act = stochnet.nn.StocReLUEMA(3, gamma=0.5, momentum=0.5).to(DEVICE)
        assert torch.equal(act.running_sigma, torch.zeros(3, device=DEVICE))
        x1, _ = make_input((8, 3, 5, 5), "contiguous", device=DEVICE, seed=1)
        x2, _ = make_input((8, 3, 5, 5), "contiguous", device=DEVICE, seed=2)
        act(x1)
        std1 = x1.double().std(dim=(0, 2, 3))
        torch.testing.assert_close(act.running_sigma.double(), std1, rtol=1e-5, atol=0)
        act(x2)
        expected = 0.5 * std1 + 0.5 * x2.double().std(dim=(0, 2, 3))
        torch.testing.assert_close(act.running_sigma.double(), expected, rtol=1e-5, atol=0)
        assert act.num_batches_tracked.item() == 2

    def test_no_noise_before_training_and_noise_in_eval(self):
        act = stochnet.nn.StocReLUEMA(3).to(DEVICE).eval()
        x, _ = make_input((4, 3, 5, 5), "contiguous", device=DEVICE)
        assert torch.equal(act(x), torch.relu(x))  # sigma starts at 0
        act.train()(x)
        sigma = act.running_sigma.clone()
        act.eval()
        assert not torch.equal(act(x), act(x))  # noise stays on in eval
        assert torch.equal(act.running_sigma, sigma)  # and sigma is frozen

    def test_gamma_is_settable_and_state_dict_round_trips(self):
        act = stochnet.nn.StocReLUEMA(3, gamma=0.1).to(DEVICE)
        act(make_input((4, 3, 5, 5), "contiguous", device=DEVICE)[0])
        act.gamma = 0.4
        assert "gamma=0.4" in repr(act)
        copy = stochnet.nn.StocReLUEMA(3).to(DEVICE)
        copy.load_state_dict(act.state_dict())
        assert torch.equal(copy.running_sigma, act.running_sigma) and copy.sigma_initialized

    def test_compile_has_no_graph_break(self):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), stochnet.nn.StocReLUEMA(8, gamma=0.2),
                                    torch.nn.Conv2d(8, 4, 3), stochnet.nn.StocReLUEMA(4)).to(DEVICE)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        x = torch.randn(2, 3, 10, 10, device=DEVICE, requires_grad=True)
        compiled(x).sum().backward()
        compiled(x).sum().backward()
        assert x.grad is not None and model[1].num_batches_tracked.item() == 2
        assert (model[1].running_sigma > 0).all()
        torch.manual_seed(3)
        first = compiled.eval()(x)
        torch.manual_seed(3)
        assert torch.equal(first, compiled(x))

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="num_features"):
            stochnet.nn.StocReLUEMA(0)
        with pytest.raises(ValueError, match="gamma"):
            stochnet.nn.StocReLUEMA(3, gamma=-1)
        with pytest.raises(ValueError, match="momentum"):
            stochnet.nn.StocReLUEMA(3, momentum=2)


def test_global_backend_choice():
    x, sigma = make_input((2, 3, 4, 4), "contiguous", device=DEVICE)
    expected = F.stoc_relu_ema(x, sigma.clone(), 0.7, 0.3, backend="torch", philox=PHILOX)
    with stochnet.use_backend("torch"):
        assert stochnet.get_backend() == "torch"
        assert torch.equal(F.stoc_relu_ema(x, sigma.clone(), 0.7, 0.3, philox=PHILOX), expected)
    assert stochnet.get_backend() is None
    with pytest.raises(ValueError, match="name must be one of"):
        stochnet.set_backend("numpy")


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda x, s: F.stoc_relu_ema(x.int(), s, 0.1), "x must have dtype"),
    (lambda x, s: F.stoc_relu_ema(x, s.to("meta"), 0.1), "running_sigma is on"),
    (lambda x, s: F.stoc_relu_ema(x, s[:2], 0.1), r"running_sigma must have shape \(3,\)"),
    (lambda x, s: F.stoc_relu_ema(x, s.int(), 0.1), "running_sigma must be float32"),
    (lambda x, s: F.stoc_relu_ema(x[:0], s, 0.1), "x must not be empty"),
    (lambda x, s: F.stoc_relu_ema(x[0, 0, 0], s, 0.1), r"x must have shape \(N, C\)"),
    (lambda x, s: F.stoc_relu_ema(x, s, -0.1), "gamma must be >= 0"),
    (lambda x, s: F.stoc_relu_ema(x, s, 0.1, momentum=1.5), r"momentum must be in \[0, 1\]"),
    (lambda x, s: F.stoc_relu_ema(x[:1, :, :1, :1], s, 0.1), "more than one value per channel"),
    (lambda x, s: F.stoc_relu_ema(x, s, 0.1, backend="fast"), "backend must be one of"),
    (lambda x, s: F.stoc_relu_ema(x, s, 0.1, backend="cuda"), "backend 'cuda' runs on CUDA tensors"),
], ids=["dtype", "device", "channels", "sigma-dtype", "empty", "rank", "gamma", "momentum", "one-value",
        "backend", "backend-device"])
def test_bad_input(call, match):
    x, sigma = make_input((2, 3, 4, 4), "contiguous")
    with pytest.raises((TypeError, ValueError), match=match):
        call(x, sigma)


@backends(lambda b: b.name in ("cpp", "cuda"))
def test_cpp_and_cuda_kernels_check_before_running(backend):
    """The C++ ops check their arguments themselves (csrc/checks.h), before any kernel runs."""
    namespace, device = torch.ops.stochnet, backend.device
    x = torch.randn(2, 3, 4, 4, device=device)
    sigma, p = torch.zeros(3, device=device), torch.tensor([0, 0])
    for args, match in [
        ((x, torch.zeros(4, device=device), 0.1, 0.5, True, p), "running_sigma must have shape"),
        ((x[..., ::2], sigma, 0.1, 0.5, True, p), "x must be contiguous or channels-last"),
        ((x.transpose(0, 2), sigma, 0.1, 0.5, True, p), "x must be contiguous or channels-last"),
        ((x, sigma, 0.1, 1.5, True, p), r"momentum must be in \[0, 1\]"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            namespace.stoc_relu_ema(*args)
    for bad, match in [(p.float(), r"philox must be an int64 CPU tensor of shape \(2,\)"),
                       (torch.tensor([0, -2]), r"philox must hold a seed and an offset >= 0, got \(0, -2\)")]:
        with pytest.raises(ValueError, match=match):
            namespace.stoc_relu_ema(x, sigma, 0.1, 0.5, False, bad)
    with pytest.raises(RuntimeError, match="mask must be a contiguous uint8 tensor of 12 bytes"):
        namespace.stoc_relu_ema_backward(x, torch.zeros(3, dtype=torch.uint8, device=device))
    with pytest.raises(RuntimeError, match="mask must be a contiguous uint8 tensor of 3 bytes"):
        namespace.stoc_relu_ema_backward(torch.randn(17, device=device), torch.zeros(2, dtype=torch.uint8,
                                                                                    device=device))


@backends(lambda b: b.name == "triton")
def test_triton_ops_check_before_running(backend):
    """Through stochnet.ops.checks, plus the layouts the kernels read: errors name the argument."""
    namespace, device = backend.ops, backend.device
    x, sigma = make_input((2, 3, 4, 5), "contiguous", device=device)
    mask = torch.zeros(15, dtype=torch.uint8, device=device)
    for call, match in [
        (lambda: namespace.stoc_relu_ema(x, sigma[:2], 1.0, 0.5, True, PHILOX), "running_sigma must have shape"),
        (lambda: namespace.stoc_relu_ema(x.transpose(2, 3), sigma, 1.0, 0.5, True, PHILOX),
         "x must be contiguous or channels-last"),
        (lambda: namespace.stoc_relu_ema(x, sigma, 1.0, 1.5, True, PHILOX), "momentum must be in"),
        (lambda: namespace.stoc_relu_ema(x, sigma, -1.0, 0.5, True, PHILOX), "gamma must be >= 0"),
        (lambda: namespace.stoc_relu_ema(x[:1, :, :1, :1].contiguous(), sigma, 1.0, 0.5, True, PHILOX),
         "more than one value per channel"),
        (lambda: namespace.stoc_relu_ema(x, sigma, 1.0, 0.5, True, PHILOX[:1]),
         "philox must be an int64 tensor of shape"),
        (lambda: namespace.stoc_relu_ema_backward(x, mask[:3]), "mask must be a uint8 tensor of 15 bytes"),
        (lambda: namespace.stoc_relu_ema_backward(x.transpose(2, 3), mask), "grad must be contiguous or channels-last"),
        (lambda: namespace.stoc_relu_ema_backward(x, torch.zeros(15, 2, dtype=torch.uint8, device=device)[:, 0]),
         "mask must be contiguous"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()
