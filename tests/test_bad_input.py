"""Hostile input to the ops and noise modules on every backend available here: a clear error (the
same on every backend) or a defined result, never uninitialized memory or silently lost state."""
import os

import pytest
import torch

import stochnet
from stochnet import functional as F

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "cpp"] if DEVICE == "cpu" else ["torch", "cuda"]
if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    BACKENDS.append("triton")
KERNEL_BACKENDS = [b for b in BACKENDS if b != "torch"]
PHILOX = torch.tensor([12345, 0])
OPS = torch.ops.stochnet


def _x(*shape, dtype=torch.float32):
    return torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=dtype).to(DEVICE)


# ---------------------------------------------------------------------------- devices (item 1)

def _noise_calls(scale):
    """The public noise ops, each with its noise scaled by ``scale`` (0: the output does not depend on it)."""
    return {
        "perturb": lambda x, backend, philox: F.perturb(x, torch.full((3,), scale, device=DEVICE), backend=backend,
                                                        philox=philox),
        "noisy_repeat": lambda x, backend, philox: F.noisy_repeat(x, 2, scale, backend=backend, philox=philox),
        "stoc_relu_ema": lambda x, backend, philox: F.stoc_relu_ema(x, torch.full((3,), scale, device=DEVICE), 0.5,
                                                                    backend=backend, philox=philox),
        "random_start": lambda x, backend, philox: F.random_start(x, 0.1 * scale, backend=backend, philox=philox),
    }


NOISE_CALLS = _noise_calls(0.0)


@pytest.mark.parametrize("call", NOISE_CALLS.values(), ids=NOISE_CALLS.keys())
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_philox_tensor_on_another_device_is_an_error_not_garbage(backend, call):
    x = torch.zeros(2, 3, 4, device=DEVICE)
    with pytest.raises(ValueError, match="philox is on meta: it must be on the CPU or on the data's device cpu"):
        call(x, backend, torch.tensor([1, 0], device="meta"))
    with pytest.raises(ValueError, match=r"philox must be an int64 tensor of shape \(2,\) holding \(seed, offset\)"):
        call(x, backend, torch.tensor([1.0, 0.0]))


META_OP_CALLS = {
    "perturb": lambda x, m: OPS.perturb(x, m(torch.zeros(3)), PHILOX),
    "perturb_philox": lambda x, m: OPS.perturb(x, torch.zeros(3), m(PHILOX)),
    "perturb_backward": lambda x, m: OPS.perturb_backward(x, m(torch.zeros(3)), PHILOX),
    "perturb_backward_philox": lambda x, m: OPS.perturb_backward(x, torch.zeros(3), m(PHILOX)),
    "noisy_repeat_philox": lambda x, m: OPS.noisy_repeat(x, 2, 0.0, m(PHILOX)),
    "vote_backward": lambda x, m: OPS.vote_backward(m(torch.zeros(1, 4)), x.view(6, 4), 6),
    "stoc_relu_ema": lambda x, m: OPS.stoc_relu_ema(x, m(torch.zeros(3)), 0.1, 0.5, True, PHILOX),
    "stoc_relu_ema_philox": lambda x, m: OPS.stoc_relu_ema(x, torch.zeros(3), 0.1, 0.5, True, m(PHILOX)),
    "stoc_relu_ema_backward": lambda x, m: OPS.stoc_relu_ema_backward(x, m(torch.zeros(3, dtype=torch.uint8))),
    "pgd_step": lambda x, m: OPS.pgd_step(x, m(x), x, torch.ones(2), torch.ones(2), "linf", 0.0, 1.0),
    "pgd_step_eps": lambda x, m: OPS.pgd_step(x, x, x, m(torch.ones(2)), torch.ones(2), "linf", 0.0, 1.0),
    "mim_step": lambda x, m: OPS.mim_step(x, x, x, m(x), torch.ones(2), torch.ones(2), 1.0, 0.0, 1.0),
    "random_start": lambda x, m: OPS.random_start(x, m(torch.ones(2)), "linf", 0.0, 1.0, PHILOX),
    "random_start_philox": lambda x, m: OPS.random_start(x, torch.ones(2), "linf", 0.0, 1.0, m(PHILOX)),
}


@pytest.mark.parametrize("call", META_OP_CALLS.values(), ids=META_OP_CALLS.keys())
def test_ops_reject_arguments_on_mixed_devices(call):
    """A meta argument beside CPU ones sends the call to the fake implementation, which must not
    hand back uninitialized memory as a result."""
    with pytest.raises(ValueError, match="meta"):
        call(torch.zeros(2, 3, 4), lambda t: t.to("meta"))


def test_all_meta_arguments_still_trace():
    x = torch.zeros(2, 3, 4, device="meta")
    y = OPS.perturb(x, torch.zeros(3, device="meta"), PHILOX)
    assert y.device.type == "meta" and y.shape == x.shape
    assert OPS.perturb_backward(x, torch.zeros(3, device="meta"), PHILOX).shape == (3,)
    assert OPS.noisy_repeat(x, 2, 0.5, PHILOX).shape == (4, 3, 4)
    y, mask, sigma = OPS.stoc_relu_ema(x, torch.zeros(3, device="meta"), 0.1, 0.5, True, PHILOX)
    assert y.shape == x.shape and mask.shape == (3,) and mask.dtype == torch.uint8 and sigma.shape == (3,)
    assert all(t.device.type == "meta" for t in (y, mask, sigma))
    assert OPS.random_start(x, torch.ones(2, device="meta"), "l2", 0.0, 1.0, PHILOX).shape == x.shape


# ---------------------------------------------------- StocReLUEMA state on a rejected batch (item 3)

REJECTED_BATCHES = {
    "half": lambda: torch.randn(8, 4, device=DEVICE).to(torch.float16 if DEVICE == "cpu" else torch.int32),
    "one_row": lambda: torch.randn(1, 4, device=DEVICE),
    "wrong_channels": lambda: torch.randn(8, 5, device=DEVICE),
}


@pytest.mark.parametrize("make_batch", REJECTED_BATCHES.values(), ids=REJECTED_BATCHES.keys())
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rejected_batch_leaves_stoc_relu_ema_state_unchanged(backend, make_batch):
    act = stochnet.nn.StocReLUEMA(4, gamma=0.1, momentum=0.5, backend=backend).to(DEVICE).train()
    with pytest.raises((TypeError, ValueError)):
        act(make_batch())
    assert not act.sigma_initialized and int(act.num_batches_tracked) == 0
    assert torch.equal(act.running_sigma, torch.zeros(4, device=DEVICE))
    x = torch.randn(16, 4, device=DEVICE) * 3
    act(x)  # the first real batch sets sigma to its std, not the average with 0
    torch.testing.assert_close(act.running_sigma, x.double().std(0).float(), rtol=1e-5, atol=1e-6)
    assert int(act.num_batches_tracked) == 1


# ---------------------------------------------------- channel std of outliers and large values (item 4)

def _layouts(x):
    return {"planar": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
            "rows": x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]),
            "narrow_planes": x.reshape(x.shape[0], x.shape[1], -1)[..., :3].contiguous()}


def _outliers():
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x[1, 0, 5, 7] = 1e20  # channel 0: one huge activation among 4095 standard normals
    x[:, 1] = x[:, 1] * 1e19  # channel 1: every value large, squares beyond float32
    x[:, 2] = 3e4 + x[:, 2] * 1e-2  # channel 2: mean far from zero, tiny spread
    return x


@pytest.mark.parametrize("layout", ["planar", "channels_last", "rows", "narrow_planes"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_channel_std_of_outliers_and_large_values_matches_the_reference(backend, dtype, layout):
    x = _layouts(_outliers().to(dtype))[layout].to(DEVICE)
    sigma, sigma_ref = torch.zeros(3, device=DEVICE), torch.zeros(3, device=DEVICE)
    F.stoc_relu_ema(x, sigma, 0.1, 1.0, backend=backend, philox=PHILOX)
    F.stoc_relu_ema(x, sigma_ref, 0.1, 1.0, backend="torch", philox=PHILOX)
    assert torch.isfinite(sigma).all()
    torch.testing.assert_close(sigma, sigma_ref, rtol=1e-5, atol=0)
    if layout != "narrow_planes":
        assert sigma[0].item() == pytest.approx(1e20 / 4096**0.5, rel=1e-4)  # 1.56e18, as the issue expects


# ------------------------------------------------------------- NaN gradients of PGD / MIM (item 5)

NAN = float("nan")


def _nan_grad():
    grad = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(2))
    grad[0, 0, 0] = NAN  # one NaN entry in sample 0
    grad[1] = NAN  # sample 1: every entry NaN
    return grad.to(DEVICE)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_gradient_entry_counts_as_zero_in_pgd_step(backend, norm):
    x_adv, x_orig, grad = _x(3, 2, 4) * 0.5 + 0.25, _x(3, 2, 4) * 0.5 + 0.25, _nan_grad()
    out = F.pgd_step(x_adv, grad, x_orig, 0.1, 0.05, norm=norm, backend=backend)
    expected = F.pgd_step(x_adv, grad.nan_to_num(0.0), x_orig, 0.1, 0.05, norm=norm, backend="torch")
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_gradient_entry_counts_as_zero_in_mim_step(backend):
    x_adv, x_orig, grad = _x(3, 2, 4) * 0.5 + 0.25, _x(3, 2, 4) * 0.5 + 0.25, _nan_grad()
    momentum = torch.randn_like(x_adv)
    expected_momentum = momentum.clone()
    out = F.mim_step(x_adv, grad, x_orig, momentum, 0.1, 0.05, mu=0.9, backend=backend)
    expected = F.mim_step(x_adv, grad.nan_to_num(0.0), x_orig, expected_momentum, 0.1, 0.05, mu=0.9,
                          backend="torch")
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(momentum, expected_momentum, rtol=1e-6, atol=1e-7)
    assert torch.isfinite(momentum).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_momentum_entry_takes_no_step(backend):
    x = _x(1, 4) * 0.5 + 0.25
    momentum = torch.tensor([[NAN, 1.0, -1.0, 1.0]], device=DEVICE)
    out = F.mim_step(x, torch.zeros_like(x), x, momentum, 0.1, 0.05, backend=backend)
    torch.testing.assert_close(out, x + torch.tensor([[0.0, 0.05, -0.05, 0.05]], device=DEVICE))


# --------------------------------------------------- the backends accept the same inputs (item 9)

@pytest.mark.parametrize("philox", [[-1, 0], [1, -4]], ids=["seed", "offset"])
@pytest.mark.parametrize("call", NOISE_CALLS.values(), ids=NOISE_CALLS.keys())
@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_seeds_and_offsets_are_rejected(backend, call, philox):
    with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0"):
        call(torch.zeros(2, 3, 4, device=DEVICE), backend, torch.tensor(philox))


NOISY_CALLS = _noise_calls(1.0)


@pytest.mark.parametrize("call", NOISY_CALLS.values(), ids=NOISY_CALLS.keys())
def test_the_largest_seeds_and_offsets_give_one_stream_on_every_backend(call):
    # Philox counters are offset + i // 4 in 64 unsigned bits: from the largest offset (2**63 - 1) the counters
    # of a call cross 2**63 and stay below 2**64, so no stream wraps; every backend must read them alike
    # (a signed overflow in one of them would give other noise).
    x = _x(2, 3, 40)
    philox = torch.tensor([2**63 - 1, 2**63 - 1])
    reference = call(x, "torch", philox)
    for backend in KERNEL_BACKENDS:
        torch.testing.assert_close(call(x, backend, philox), reference, rtol=0, atol=1e-5)
    assert not torch.equal(reference, call(x, "torch", torch.tensor([2**63 - 1, 0])))


KERNEL_NOISE_CALLS = {
    "perturb": lambda philox: OPS.perturb(torch.zeros(2, 3, 4), torch.zeros(3), philox),
    "perturb_backward": lambda philox: OPS.perturb_backward(torch.zeros(2, 3, 4), torch.zeros(3), philox),
    "noisy_repeat": lambda philox: OPS.noisy_repeat(torch.zeros(2, 3, 4), 2, 0.5, philox),
    "stoc_relu_ema": lambda philox: OPS.stoc_relu_ema(torch.zeros(2, 3, 4), torch.zeros(3), 0.1, 0.5, True, philox),
    "random_start": lambda philox: OPS.random_start(torch.zeros(2, 3, 4), torch.ones(2), "l2", 0.0, 1.0, philox),
    "philox_words_out": lambda philox: OPS.philox_words_out(philox, torch.empty(4, dtype=torch.int32)),
    "philox_uniform_out": lambda philox: OPS.philox_uniform_out(philox, torch.empty(4)),
    "philox_normal_out": lambda philox: OPS.philox_normal_out(philox, torch.empty(4)),
}


@pytest.mark.parametrize("call", KERNEL_NOISE_CALLS.values(), ids=KERNEL_NOISE_CALLS.keys())
def test_kernel_ops_reject_negative_seeds_and_offsets(call):
    for seed, offset in ((-1, 0), (0, -1)):
        with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0"):
            call(torch.tensor([seed, offset]))


@pytest.mark.parametrize("call", KERNEL_NOISE_CALLS.values(), ids=KERNEL_NOISE_CALLS.keys())
def test_kernel_ops_reject_a_philox_of_another_dtype_or_shape(call):
    for philox in (torch.tensor([1.0, 0.0]), torch.tensor([1, 0], dtype=torch.int32), torch.tensor([1, 0, 0]),
                   torch.tensor([[1, 0]]), torch.tensor(1)):
        with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
            call(philox)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_non_contiguous_running_sigma_is_rejected(backend):
    sigma = torch.ones(6, device=DEVICE)[::2]
    with pytest.raises(ValueError, match=r"running_sigma must be contiguous: it is updated in place, got strides"):
        F.stoc_relu_ema(_x(4, 3), sigma, 0.1, backend=backend)
    assert torch.equal(sigma, torch.ones(3, device=DEVICE))


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs Triton")
def test_triton_kernel_names_the_contiguity_of_sigma():
    from stochnet.ops.library import triton_ops
    with pytest.raises(ValueError, match=r"running_sigma must be contiguous.*got strides \(2,\)"):
        triton_ops().stoc_relu_ema(_x(4, 3), torch.ones(6, device=DEVICE)[::2], 0.1, 0.5, True, PHILOX)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_momentum_that_requires_grad_is_rejected(backend):
    x = _x(2, 4)
    momentum = torch.zeros(2, 4, device=DEVICE, requires_grad=True)
    with pytest.raises(ValueError, match="momentum must not require grad"):
        F.mim_step(x, torch.randn_like(x), x, momentum, 0.1, 0.05, backend=backend)


@pytest.mark.parametrize("name", ["gamma", "momentum"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_differentiable_scalar_tensor_of_stoc_relu_ema_is_rejected(backend, name):
    """The op is not differentiable in gamma or momentum: a gradient would silently be lost."""
    scalars = {"gamma": 0.1, "momentum": 0.5, name: torch.tensor(0.3, requires_grad=True)}
    with pytest.raises(TypeError, match=f"{name} must be a number"):
        F.stoc_relu_ema(_x(4, 3), torch.ones(3, device=DEVICE), backend=backend, **scalars)


@pytest.mark.parametrize("alias", ["x_adv", "grad", "x_orig"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_momentum_sharing_memory_with_an_input_is_rejected(backend, alias):
    tensors = {"x_adv": _x(2, 4), "grad": torch.randn(2, 4, device=DEVICE), "x_orig": _x(2, 4)}
    before = {name: t.clone() for name, t in tensors.items()}
    with pytest.raises(ValueError, match=f"momentum shares memory with {alias}"):
        F.mim_step(tensors["x_adv"], tensors["grad"], tensors["x_orig"], tensors[alias], 0.1, 0.05, backend=backend)
    assert all(torch.equal(tensors[name], before[name]) for name in tensors)


def test_kernel_ops_reject_a_momentum_aliasing_an_input():
    x, eps = torch.rand(2, 4), torch.full((2,), 0.1)
    with pytest.raises(ValueError, match="momentum shares memory with x_adv"):
        OPS.mim_step(x, torch.randn(2, 4), x.clone(), x, eps, eps, 1.0, 0.0, 1.0)
