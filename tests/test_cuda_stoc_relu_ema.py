"""The CUDA Philox stream and StocReLU-EMA ops (csrc/cuda) against the pure-torch references,
element by element.

Skips without a CUDA device or when stochnet was built without its CUDA sources.
"""
import math

import pytest
import torch

from stochnet.ops import layout, philox
from stochnet.ops.stoc_relu_ema import reference, reference_backward
from cuda_device import SEEDS, philox_tensor, requires_cuda_kernels


pytestmark = requires_cuda_kernels

DEVICE = "cuda"
OPS = torch.ops.stochnet
# y tolerances (rtol, atol per unit of noise scale): the noise matches the reference to a few
# float32 ulp, then half / bfloat16 round the result.
Y_TOL = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-5, 1e-5), torch.float16: (2e-3, 1e-3),
         torch.bfloat16: (1.6e-2, 1e-2)}
SIGMA_RTOL = {torch.float32: 1e-5, torch.float64: 1e-9, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _as_int32(words):
    """int64 words in [0, 2**32) from the reference, as the int32 bit patterns the op stores."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _misaligned(t):
    """A copy of t whose storage starts one element past a 16-byte boundary (scalar code path)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


# --- Philox stream ------------------------------------------------------------------------------

@pytest.mark.parametrize("numel", [1, 3, 4, 5, 8, 1023, 4097, 100_003])
@pytest.mark.parametrize("seed,offset", SEEDS)
def test_philox_words_bit_exact(numel, seed, offset):
    out = torch.empty(numel, dtype=torch.int32, device=DEVICE)
    OPS.philox_words_out(philox_tensor(seed, offset), out)
    expected = _as_int32(philox.philox_words(seed, offset, numel))
    assert torch.equal(out.cpu(), expected)


def test_philox_words_misaligned_and_shaped():
    seed, offset = 99, 5
    out = _misaligned(torch.zeros(3, 7, dtype=torch.int32, device=DEVICE))
    OPS.philox_words_out(philox_tensor(seed, offset), out)
    assert torch.equal(out.cpu().view(-1), _as_int32(philox.philox_words(seed, offset, 21)))


@pytest.mark.parametrize("numel", [1, 3, 4, 6, 1023, 100_003])
@pytest.mark.parametrize("seed,offset", SEEDS)
def test_philox_uniform_bit_exact(numel, seed, offset):
    out = torch.empty(numel, dtype=torch.float32, device=DEVICE)
    OPS.philox_uniform_out(philox_tensor(seed, offset), out)
    assert torch.equal(out.cpu(), philox.philox_uniform(seed, offset, numel))
    assert out.min().item() >= 0 and out.max().item() < 1


@pytest.mark.parametrize("numel", [1, 2, 3, 4, 7, 1023, 100_003])
@pytest.mark.parametrize("seed,offset", SEEDS)
def test_philox_normal_within_ulps(numel, seed, offset):
    out = torch.empty(numel, dtype=torch.float32, device=DEVICE)
    OPS.philox_normal_out(philox_tensor(seed, offset), out)
    expected = philox.philox_normal(seed, offset, numel)
    torch.testing.assert_close(out.cpu(), expected, rtol=4 * 2**-23, atol=1e-6)


def test_philox_normal_misaligned():
    out = _misaligned(torch.zeros(1001, dtype=torch.float32, device=DEVICE))
    OPS.philox_normal_out(philox_tensor(3, 11), out)
    torch.testing.assert_close(out.cpu(), philox.philox_normal(3, 11, 1001), rtol=4 * 2**-23, atol=1e-6)


def test_philox_normal_statistics():
    out = torch.empty(1 << 20, dtype=torch.float32, device=DEVICE)
    OPS.philox_normal_out(philox_tensor(2024, 0), out)
    assert abs(out.mean().item()) < 5e-3
    assert abs(out.std().item() - 1) < 5e-3
    # Kolmogorov-Smirnov distance against N(0, 1), 1.63 / sqrt(n) is the 1% critical value.
    z = out.double().sort().values
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    grid = torch.arange(1, z.numel() + 1, dtype=torch.float64, device=DEVICE) / z.numel()
    assert (cdf - grid).abs().max().item() < 1.63 / math.sqrt(z.numel())


def test_philox_out_rejects_bad_out():
    with pytest.raises(RuntimeError, match="out must be"):
        OPS.philox_words_out(philox_tensor(0, 0), torch.empty(4, dtype=torch.float32, device=DEVICE))
    with pytest.raises(RuntimeError, match="out must be"):
        OPS.philox_uniform_out(philox_tensor(0, 0), torch.empty(4, dtype=torch.float64, device=DEVICE))
    with pytest.raises(RuntimeError, match="out must be"):
        OPS.philox_normal_out(philox_tensor(0, 0), torch.empty(4, 4, device=DEVICE).t())


# --- StocReLU-EMA forward -----------------------------------------------------------------------

# (shape, channels_last): planar with inner >= 8 (the planes kernel), inner < 8 and rows (the
# periodic or column-statistics kernels), odd sizes and tails not multiple of 8.
SHAPES = [
    ((4, 3, 5, 7), False),
    ((2, 16, 8, 8), False),
    ((3, 5, 3, 3), False),
    ((3, 4, 37), False),
    ((2, 6, 2, 2), False),
    ((3, 6, 1, 1), False),
    ((16, 64, 16, 16), False),
    ((7, 13), False),
    ((1000, 3), False),
    ((8001, 10), False),
    ((4001, 24), False),
    ((3, 4097), False),
    ((5, 3, 7, 9), True),
    ((8, 16, 9, 9), True),
    ((32, 64, 16, 16), True),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _make_x(shape, channels_last, dtype, shift=0.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.25 + shift).to(dtype)
    x = x.to(DEVICE)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _make_sigma(channels, dtype):
    return (0.5 + torch.arange(channels, dtype=torch.float64) / channels).to(dtype).to(DEVICE)


def _noisy(x, sigma, gamma, seed, offset):
    """x + sqrt(gamma) sigma[c] z in the compute type, on the CPU, laid out like x."""
    x = x.cpu()
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    scale = (sigma.cpu().to(compute) * math.sqrt(gamma)).view((1, -1) + (1,) * (x.dim() - 2))
    return x.to(compute) + scale * philox.normal_like(x, seed, offset).to(compute)


def _check_forward(x, sigma, gamma, momentum, training, seed, offset):
    sigma_ref = sigma.cpu().clone()
    y_ref, _ = reference(x.cpu(), sigma_ref, gamma, momentum, training, seed, offset)
    sigma_before = sigma.clone()
    y, mask, new_sigma = OPS.stoc_relu_ema(x, sigma, gamma, momentum, training, philox_tensor(seed, offset))

    assert y.shape == x.shape and y.dtype == x.dtype and y.stride() == x.stride()
    assert mask.dtype == torch.uint8 and mask.shape == ((x.numel() + 7) // 8,)
    noise_scale = math.sqrt(gamma) * sigma_before.abs().max().item()
    rtol, atol = Y_TOL[x.dtype]
    torch.testing.assert_close(y.cpu(), y_ref, rtol=rtol, atol=atol * max(noise_scale, 1.0))

    # Mask bits equal [v > 0] except where v is within the noise's rounding of zero.
    v = _noisy(x, sigma_before, gamma, seed, offset)
    bits = layout.unpack_bits(mask.cpu(), x.cpu())
    undecided = v.abs() <= 1e-5 * max(noise_scale, 1.0)
    assert bool(((bits == (v > 0)) | undecided).all())
    if x.numel() % 8:
        assert mask[-1].item() >> (x.numel() % 8) == 0, "padding bits of the last mask byte must be zero"

    # The op is functional: running_sigma is never written, the update is its third output.
    assert torch.equal(sigma, sigma_before)
    assert new_sigma.dtype == sigma.dtype and new_sigma.shape == sigma.shape and new_sigma.device == sigma.device
    if training:
        torch.testing.assert_close(new_sigma.cpu(), sigma_ref, rtol=SIGMA_RTOL[sigma.dtype], atol=1e-7)
    else:
        assert torch.equal(new_sigma, sigma_before)
    return y, mask


@pytest.mark.parametrize("shape,channels_last", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_forward_matches_reference(shape, channels_last, dtype, training):
    x = _make_x(shape, channels_last, dtype)
    sigma = _make_sigma(shape[1], torch.float32)
    _check_forward(x, sigma, gamma=0.3, momentum=0.5, training=training, seed=1234, offset=17)


@pytest.mark.parametrize("shape,channels_last", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_without_noise_is_exact(shape, channels_last, dtype):
    # gamma = 0: v = x exactly, so y = relu(x) and the mask are exact and the statistics are
    # those of x alone; this pins down the layout, mask and channel bookkeeping.
    x = _make_x(shape, channels_last, dtype, seed=5)
    sigma = _make_sigma(shape[1], torch.float32)
    y, mask = _check_forward(x, sigma, gamma=0.0, momentum=0.25, training=True, seed=9, offset=0)
    assert torch.equal(y, torch.relu(x))
    assert torch.equal(mask.cpu(), layout.pack_bits(x.cpu() > 0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape,channels_last", [((4, 3, 5, 7), False), ((8001, 10), False), ((8, 16, 9, 9), True)])
def test_forward_sigma_in_x_dtype(dtype, shape, channels_last):
    x = _make_x(shape, channels_last, dtype, seed=3)
    sigma = _make_sigma(shape[1], dtype)
    _check_forward(x, sigma, gamma=0.5, momentum=0.5, training=True, seed=77, offset=3)


@pytest.mark.parametrize("shape,channels_last", [((16, 64, 16, 16), False), ((32, 64, 16, 16), True),
                                                 ((4001, 24), False), ((1000, 3), False)])
def test_statistics_are_stable_under_a_large_mean(shape, channels_last):
    # std ~ 1.5 around a mean of 1000: a naive sum-of-squares in float32 would lose it.
    x = _make_x(shape, channels_last, torch.float32, shift=1000.0, seed=11)
    sigma = _make_sigma(shape[1], torch.float32)
    _check_forward(x, sigma, gamma=0.1, momentum=1.0, training=True, seed=2, offset=0)


@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (3, 1, 1, 1), (1, 5, 1)])
def test_forward_tiny(shape):
    x = _make_x(shape, False, torch.float32, seed=8)
    sigma = _make_sigma(shape[1], torch.float32)
    _check_forward(x, sigma, gamma=1.0, momentum=0.5, training=x.numel() // shape[1] > 1, seed=4, offset=1)


def test_forward_misaligned_input():
    x = _misaligned(_make_x((37, 11), False, torch.float32))
    sigma = _make_sigma(11, torch.float32)
    _check_forward(x, sigma, gamma=0.4, momentum=0.5, training=True, seed=6, offset=2)


def test_forward_propagates_nan():
    x = _make_x((4, 3, 5, 5), False, torch.float32)
    x[1, 2, 3, 4] = float("nan")
    sigma = _make_sigma(3, torch.float32)
    y, mask, _ = OPS.stoc_relu_ema(x, sigma, 0.2, 0.5, False, philox_tensor(1, 0))
    assert torch.isnan(y[1, 2, 3, 4]) and torch.isnan(y).sum() == 1
    assert not layout.unpack_bits(mask, x)[1, 2, 3, 4]


def test_forward_is_deterministic_and_seeded():
    x = _make_x((8, 16, 9, 9), True, torch.float32)
    sigma = _make_sigma(16, torch.float32)
    y1, m1, _ = OPS.stoc_relu_ema(x, sigma, 0.5, 0.5, False, philox_tensor(42, 0))
    y2, m2, _ = OPS.stoc_relu_ema(x, sigma, 0.5, 0.5, False, philox_tensor(42, 0))
    y3, _, _ = OPS.stoc_relu_ema(x, sigma, 0.5, 0.5, False, philox_tensor(42, 1 << 20))
    assert torch.equal(y1, y2) and torch.equal(m1, m2)
    assert not torch.equal(y1, y3)


def test_noise_uses_sigma_before_the_update():
    x = _make_x((4, 2, 6, 6), False, torch.float32)
    sigma = torch.tensor([0.0, 3.0], device=DEVICE)
    y, _, new_sigma = OPS.stoc_relu_ema(x, sigma, 1.0, 1.0, True, philox_tensor(5, 0))
    assert torch.equal(y[:, 0], torch.relu(x[:, 0])), "channel 0 had sigma 0 before the update"
    assert new_sigma[0].item() > 0 and sigma[0].item() == 0


def test_forward_rejects_bad_arguments():
    x = _make_x((4, 3, 5), False, torch.float32)
    p = philox_tensor(0, 0)
    with pytest.raises(RuntimeError, match="running_sigma must have shape"):
        OPS.stoc_relu_ema(x, torch.ones(4, device=DEVICE), 1.0, 0.5, True, p)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        OPS.stoc_relu_ema(x.transpose(0, 2), torch.ones(3, device=DEVICE), 1.0, 0.5, True, p)
    with pytest.raises(RuntimeError, match="momentum"):
        OPS.stoc_relu_ema(x, torch.ones(3, device=DEVICE), 1.0, 1.5, True, p)
    with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
        OPS.stoc_relu_ema(x, torch.ones(3, device=DEVICE), 1.0, 0.5, True, p.to(DEVICE))
    with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0"):
        OPS.stoc_relu_ema(x, torch.ones(3, device=DEVICE), 1.0, 0.5, True, philox_tensor(3, -1))


def test_forward_opcheck():
    x = _make_x((4, 3, 5, 7), False, torch.float32)
    for training in (True, False):
        sigma = _make_sigma(3, torch.float32)
        torch.library.opcheck(OPS.stoc_relu_ema.default, (x, sigma, 0.5, 0.5, training, philox_tensor(3, 0)))


# --- Backward -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,channels_last", [((4, 3, 5, 7), False), ((7, 13), False), ((5, 3, 7, 9), True),
                                                 ((16, 64, 16, 16), False)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_stoc_relu_ema_backward(shape, channels_last, dtype):
    x = _make_x(shape, channels_last, dtype)
    sigma = _make_sigma(shape[1], torch.float32)
    _, mask, _ = OPS.stoc_relu_ema(x, sigma, 0.5, 0.5, False, philox_tensor(21, 0))
    grad = _make_x(shape, channels_last, dtype, seed=99)
    layout.memory_order(grad)[::7] = float("nan")
    layout.memory_order(grad)[3::11] = float("inf")
    grad_x = OPS.stoc_relu_ema_backward(grad, mask)
    assert grad_x.stride() == grad.stride()
    torch.testing.assert_close(grad_x, reference_backward(grad, mask), rtol=0, atol=0, equal_nan=True)


def test_stoc_relu_ema_backward_misaligned():
    grad = _misaligned(torch.randn(1001, device=DEVICE))
    mask = layout.pack_bits(torch.rand(1001, device=DEVICE) > 0.5)
    torch.testing.assert_close(OPS.stoc_relu_ema_backward(grad, mask), reference_backward(grad, mask),
                               rtol=0, atol=0)


def test_stoc_relu_ema_backward_opcheck():
    grad = torch.randn(4, 3, 5, device=DEVICE)
    mask = layout.pack_bits(torch.rand(4, 3, 5, device=DEVICE) > 0.5)
    torch.library.opcheck(OPS.stoc_relu_ema_backward.default, (grad, mask))


def test_stoc_relu_ema_backward_rejects_short_mask():
    with pytest.raises(RuntimeError, match="mask must be"):
        OPS.stoc_relu_ema_backward(torch.randn(17, device=DEVICE), torch.zeros(2, dtype=torch.uint8, device=DEVICE))
