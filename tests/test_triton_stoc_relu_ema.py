"""Triton StocReLU-EMA ops against the pure-torch reference: values, mask bits, the new sigma."""
import os

import pytest
import torch

RUNNABLE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not RUNNABLE, reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1")

from torch._library.custom_ops import OPDEFS  # noqa: E402

from stochnet.ops.layout import pack_bits  # noqa: E402
from stochnet.ops.library import triton_ops  # noqa: E402
from stochnet.ops.stoc_relu_ema import reference  # noqa: E402

ops = triton_ops()
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
SEED, OFFSET = 2**35 + 11, 2**32 - 5  # the counter crosses 2**32 inside the call
PHILOX = torch.tensor([SEED, OFFSET])

# (shape, channels_last). Comments name the kernel path: "fused" is the one-pass 2-D tile kernel
# (rows of whole mask bytes), "flat" the memory-order kernel plus the statistics-only tiles.
LAYOUTS = [
    ((3, 5, 7, 9), False),    # planar, odd plane: flat
    ((2, 3, 4, 6), False),    # planar: fused
    ((1, 2, 48, 48), False),  # planar, two tiles along the plane: fused
    ((5, 4, 8), False),       # planar 3-D: fused
    ((37, 5), False),         # rows (N, C), odd C: flat
    ((70, 80), False),        # rows, several tiles in both directions: fused
    ((4, 6, 1, 1), False),    # planar with one element per plane is the rows layout: flat
    ((2, 8, 3, 5), True),     # channels-last: fused
    ((2, 3, 5, 7), True),     # channels-last, odd C: flat
]


def _input(shape, channels_last, dtype, mean=0.5):
    generator = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=generator, dtype=dtype) + mean).to(DEVICE)
    sigma = (torch.rand(shape[1], generator=generator) + 0.5).to(DEVICE)
    return (x.to(memory_format=torch.channels_last) if channels_last else x), sigma


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channels_last", LAYOUTS, ids=lambda v: str(v))
def test_forward_matches_reference(shape, channels_last, dtype, training):
    x, sigma = _input(shape, channels_last, dtype)
    before = sigma.clone()
    sigma_ref = sigma.clone()
    y, mask, new_sigma = ops.stoc_relu_ema(x, sigma, 0.7, 0.3, training, PHILOX)
    y_ref, flags = reference(x, sigma_ref, 0.7, 0.3, training, SEED, OFFSET)

    assert torch.equal(sigma, before)  # functional: the caller copies the new sigma
    assert y.dtype == x.dtype and y.shape == x.shape and y.stride() == x.stride()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    assert mask.dtype == torch.uint8 and mask.shape == ((x.numel() + 7) // 8,)
    assert torch.equal(mask, pack_bits(flags))
    assert 0 < flags.sum() < flags.numel()  # both branches of the ReLU are exercised
    assert new_sigma.dtype == sigma.dtype and new_sigma.shape == sigma.shape
    assert new_sigma.untyped_storage().data_ptr() != sigma.untyped_storage().data_ptr()
    torch.testing.assert_close(new_sigma, sigma_ref, rtol=1e-5, atol=0)
    if not training:
        assert torch.equal(new_sigma, sigma_ref)  # eval leaves the statistics alone


@pytest.mark.parametrize("shape,channels_last", [((4, 3, 40, 40), False), ((6, 3, 7, 7), False),
                                                 ((300, 24), False), ((4, 16, 9, 9), True)],
                         ids=lambda v: str(v))
def test_running_sigma_is_accurate_when_mean_dwarfs_std(shape, channels_last):
    """mean / std = 1e5 in float32: sum-of-squares formulas lose every digit here."""
    x, _ = _input(shape, channels_last, torch.float32)
    x = 1000 + 0.01 * x
    sigma = torch.ones(shape[1], device=DEVICE)
    sigma_ref = sigma.clone()
    _, _, new_sigma = ops.stoc_relu_ema(x, sigma, 0.5, 1.0, True, PHILOX)
    reference(x, sigma_ref, 0.5, 1.0, True, SEED, OFFSET)
    torch.testing.assert_close(new_sigma, sigma_ref, rtol=1e-5, atol=0)


def test_noise_uses_sigma_before_the_update():
    x, sigma = _input((4, 8, 6), False, torch.float32)
    y_train, _, _ = ops.stoc_relu_ema(x, sigma, 1.0, 0.5, True, PHILOX)
    y_eval, _, _ = ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, PHILOX)
    assert torch.equal(y_train, y_eval)


def test_float64_running_sigma_with_float64_x():
    x, sigma = _input((3, 4, 5), False, torch.float64)
    sigma = sigma.double()
    sigma_ref = sigma.clone()
    y, _, new_sigma = ops.stoc_relu_ema(x, sigma, 0.7, 0.3, True, PHILOX)
    y_ref, _ = reference(x, sigma_ref, 0.7, 0.3, True, SEED, OFFSET)
    assert new_sigma.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_sigma, sigma_ref, rtol=1e-12, atol=0)


def test_same_seed_same_output_other_offset_other_noise():
    x, sigma = _input((3, 4, 5, 8), False, torch.float32)
    first = ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, PHILOX)
    again = ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, PHILOX)
    other = ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, torch.tensor([SEED, OFFSET + 1]))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    on_device = ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, PHILOX.to(DEVICE))  # the kernels load it
    assert torch.equal(first[0], on_device[0]) and torch.equal(first[1], on_device[1])


@pytest.mark.parametrize("shape", [(2, 3, 4, 8), (3, 5, 7)], ids=str)
def test_relu_propagates_nan_and_clears_its_bit(shape):
    x, sigma = _input(shape, False, torch.float32)
    x[0, 1, 2] = float("nan")
    y, mask, _ = ops.stoc_relu_ema(x, sigma, 1.0, 0.5, False, PHILOX)
    y_ref, flags = reference(x, sigma.clone(), 1.0, 0.5, False, SEED, OFFSET)
    assert torch.isnan(y[0, 1, 2]).all() and not flags[0, 1, 2].any()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(mask, pack_bits(flags))


@pytest.mark.skipif(DEVICE == "cpu", reason="half precision runs on the GPU only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,channels_last", [((3, 5, 7, 9), False), ((2, 8, 4, 4), True)], ids=str)
def test_half_precision_computes_in_float32(shape, channels_last, dtype):
    x, sigma = _input(shape, channels_last, dtype)
    sigma_ref = sigma.clone()
    y, mask, new_sigma = ops.stoc_relu_ema(x, sigma, 0.7, 0.3, True, PHILOX)
    y_ref, flags = reference(x, sigma_ref, 0.7, 0.3, True, SEED, OFFSET)
    torch.testing.assert_close(y, y_ref)
    assert torch.equal(mask, pack_bits(flags))
    torch.testing.assert_close(new_sigma, sigma_ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channels_last", [((3, 5, 7, 9), False), ((2, 8, 3, 5), True),
                                                 ((37, 5), False), ((1, 1), False)], ids=str)
def test_backward_is_grad_times_flags(shape, channels_last, dtype):
    x, sigma = _input(shape, channels_last, dtype)
    _, mask, _ = ops.stoc_relu_ema(x, sigma, 0.7, 0.3, False, PHILOX)
    _, flags = reference(x, sigma.clone(), 0.7, 0.3, False, SEED, OFFSET)
    grad = torch.randn_like(x)
    grad_x = ops.stoc_relu_ema_backward(grad, mask)
    assert grad_x.stride() == grad.stride() and grad_x.dtype == grad.dtype
    assert torch.equal(grad_x, grad * flags)


def _skip_without_fakes(*names):
    """Skip while stochnet.ops.stoc_relu_ema registers no fake implementation for a Triton op of ``names``."""
    missing = [name for name in names
               if getattr(OPDEFS.get(f"stochnet_triton::{name}"), "_abstract_fn", None) is None]
    if missing:
        pytest.skip(f"stochnet.ops.stoc_relu_ema registers no fake for stochnet_triton::{missing} yet")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape,channels_last", [((2, 3, 4, 6), False), ((2, 3, 5, 7), True)], ids=str)
def test_opcheck_stoc_relu_ema(shape, channels_last, training):
    """test_schema also checks that running_sigma is not mutated and no output aliases an input."""
    _skip_without_fakes("stoc_relu_ema")
    x, sigma = _input(shape, channels_last, torch.float32)
    torch.library.opcheck(ops.stoc_relu_ema, (x, sigma, 0.7, 0.3, training, PHILOX),
                          test_utils=("test_schema", "test_faketensor"))


def test_opcheck_stoc_relu_ema_backward():
    _skip_without_fakes("stoc_relu_ema_backward")
    x, sigma = _input((2, 8, 3, 5), True, torch.float32)
    _, mask, _ = ops.stoc_relu_ema(x, sigma, 0.7, 0.3, False, PHILOX)
    torch.library.opcheck(ops.stoc_relu_ema_backward, (torch.randn_like(x), mask),
                          test_utils=("test_schema", "test_faketensor"))


def test_rejects_bad_arguments():
    """Through stochnet.ops.checks, plus the layouts the kernels read: errors name the argument."""
    x, sigma = _input((2, 3, 4, 5), False, torch.float32)
    with pytest.raises(ValueError, match="running_sigma must have shape"):
        ops.stoc_relu_ema(x, sigma[:2], 1.0, 0.5, True, PHILOX)
    with pytest.raises(ValueError, match="x must be contiguous or channels-last"):
        ops.stoc_relu_ema(x.transpose(2, 3), sigma, 1.0, 0.5, True, PHILOX)
    with pytest.raises(ValueError, match="momentum must be in"):
        ops.stoc_relu_ema(x, sigma, 1.0, 1.5, True, PHILOX)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        ops.stoc_relu_ema(x, sigma, -1.0, 0.5, True, PHILOX)
    with pytest.raises(ValueError, match="more than one value per channel"):
        ops.stoc_relu_ema(x[:1, :, :1, :1].contiguous(), sigma, 1.0, 0.5, True, PHILOX)
    with pytest.raises(ValueError, match="philox must be an int64 tensor of shape"):
        ops.stoc_relu_ema(x, sigma, 1.0, 0.5, True, PHILOX[:1])
    with pytest.raises(ValueError, match="mask must be a uint8 tensor of 15 bytes"):
        ops.stoc_relu_ema_backward(x, torch.zeros(3, dtype=torch.uint8, device=DEVICE))
    with pytest.raises(ValueError, match="grad must be contiguous or channels-last"):
        ops.stoc_relu_ema_backward(x.transpose(2, 3), torch.zeros(15, dtype=torch.uint8, device=DEVICE))
    with pytest.raises(ValueError, match="mask must be contiguous"):
        ops.stoc_relu_ema_backward(x, torch.zeros(15, 2, dtype=torch.uint8, device=DEVICE)[:, 0])
