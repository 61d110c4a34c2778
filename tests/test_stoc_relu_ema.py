"""StocReLU-EMA through the public API: every backend against the pure-torch reference, gradients,
op registration, torch.compile, the module, and bad input."""
import os

import pytest
import scipy.stats
import torch

import stochnet
from stochnet import functional as F
from stochnet.ops import stoc_relu_ema as ops
from stochnet.ops.layout import dense, pack_bits
from stochnet.ops.library import ops_for

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["cpp"] if DEVICE == "cpu" else ["cuda"]
if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    BACKENDS.append("triton")
PHILOX = torch.tensor([2**40 + 3, 2**32 - 7])  # the counter crosses 2**32 inside a call

LAYOUTS = [
    ((4, 5, 7, 9), "contiguous"),      # planes not a multiple of the vector width
    ((3, 16, 8, 8), "contiguous"),
    ((3, 4, 3, 3), "contiguous"),      # planes narrower than the vector width
    ((6, 8, 14, 14), "contiguous"),    # many blocks; vectors straddle planes
    ((2, 3, 5, 6, 2), "contiguous"),   # 5-D
    ((33, 17), "contiguous"),          # (N, C)
    ((1, 1), "eval-only"),             # one element
    ((4, 6, 5, 5), "channels_last"),
    ((2, 32, 3, 3), "channels_last"),
    ((4, 6, 5, 5), "sliced"),          # not dense: copied first
]


def make_input(shape, layout, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=dtype) + 0.3
    sigma = torch.rand(shape[1], generator=generator) + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(shape[:-1] + (2 * shape[-1],), generator=generator, dtype=dtype)[..., ::2]
    return x.to(DEVICE), sigma.to(DEVICE)


def run(backend, x, sigma, training=True, gamma=0.7, momentum=0.3):
    return F.stoc_relu_ema(x, sigma, gamma, momentum, training, backend=backend, philox=PHILOX)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,layout", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, shape, layout, dtype, training):
    if layout == "eval-only" and training:
        pytest.skip("one value per channel cannot be trained on")
    x, sigma = make_input(shape, layout, dtype)
    sigma_before, sigma_ref = sigma.clone(), sigma.clone()
    y = run(backend, x, sigma, training)
    y_ref, flags = ops.reference(x, sigma_ref, 0.7, 0.3, training, *PHILOX.tolist())
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    assert y.shape == x.shape and y.dtype == x.dtype
    if layout != "sliced":
        assert y.stride() == x.stride()
    torch.testing.assert_close(sigma, sigma_ref, rtol=1e-5, atol=1e-6)
    # the op itself is functional: (y, mask, new sigma), running_sigma untouched
    sigma_in = sigma_before.clone()
    y_op, mask, new_sigma = ops_for(backend).stoc_relu_ema(dense(x), sigma_in, 0.7, 0.3, training, PHILOX)
    assert torch.equal(sigma_in, sigma_before)
    assert torch.equal(y_op, y) and torch.equal(new_sigma, sigma)
    assert new_sigma.dtype == sigma_before.dtype and new_sigma.data_ptr() != sigma_in.data_ptr()
    assert mask.dtype == torch.uint8 and torch.equal(mask, pack_bits(flags))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,layout", [((4, 5, 7, 9), "contiguous"), ((4, 6, 5, 5), "channels_last"),
                                          ((33, 17), "contiguous")], ids=lambda v: str(v))
def test_gradient_matches_reference(backend, shape, layout):
    x, sigma = make_input(shape, layout)
    x_ref = x.detach().clone().requires_grad_()
    x.requires_grad_()
    grad = torch.randn_like(x)
    run(backend, x, sigma.clone()).backward(grad)
    ops.reference(x_ref, sigma.clone(), 0.7, 0.3, True, *PHILOX.tolist())[0].backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("shape,layout", [((16, 64, 48, 48), "contiguous"), ((2304, 1040), "contiguous")],
                         ids=["planar", "rows"])
def test_large_outputs_take_the_streaming_store_path(shape, layout):
    x, sigma = make_input(shape, layout)  # >= 8 MB: y and dx are written with non-temporal stores
    x.requires_grad_()
    sigma_ref = sigma.clone()
    grad = torch.randn_like(x)
    y = run(BACKENDS[0], x, sigma)
    y_ref, flags = ops.reference(x.detach(), sigma_ref, 0.7, 0.3, True, *PHILOX.tolist())
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sigma, sigma_ref, rtol=1e-5, atol=0)
    (grad_x,) = torch.autograd.grad(y, x, grad)
    assert torch.equal(grad_x, grad * flags)


def test_backends_agree_element_by_element():
    if len(BACKENDS) < 2:
        pytest.skip("one backend on this machine")
    x, sigma = make_input((3, 8, 6, 6), "contiguous")
    outputs = [run(b, x, sigma.clone()) for b in BACKENDS]
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], rtol=4 * 2.0**-23, atol=1e-6)


def test_gradcheck_float64():
    x, sigma = make_input((2, 3, 4, 5), "contiguous", torch.float64)
    x.requires_grad_()
    torch.autograd.gradcheck(lambda t: run(BACKENDS[0], t, sigma.clone(), training=False), (x,), eps=1e-7, atol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_opcheck(training):
    x, sigma = make_input((2, 4, 3, 5), "contiguous")
    x.requires_grad_()
    op_namespace = ops_for(BACKENDS[0])
    torch.library.opcheck(op_namespace.stoc_relu_ema.default, (x, sigma, 0.7, 0.3, training, PHILOX))
    grad = torch.randn(2, 4, 3, 5, device=DEVICE)
    mask = op_namespace.stoc_relu_ema(x.detach(), sigma, 0.7, 0.3, training, PHILOX)[1]
    torch.library.opcheck(op_namespace.stoc_relu_ema_backward.default, (grad, mask))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,layout", [((4, 5, 7, 9), "contiguous"), ((4, 6, 5, 5), "channels_last"),
                                          ((33, 17), "contiguous"), ((3, 1, 1, 3), "contiguous")],
                         ids=lambda v: str(v))
def test_backward_op_matches_reference_backward(backend, shape, layout):
    x, sigma = make_input(shape, layout)
    _, mask, _ = ops_for(backend).stoc_relu_ema(x, sigma, 0.7, 0.3, True, PHILOX)
    grad = torch.randn(shape, device=DEVICE)
    if layout == "channels_last":
        grad = grad.contiguous(memory_format=torch.channels_last)
    grad_x = ops_for(backend).stoc_relu_ema_backward(grad, mask)
    assert grad_x.stride() == grad.stride()
    assert torch.equal(grad_x, ops.reference_backward(grad, mask))
    _, flags = ops.reference(x, sigma.clone(), 0.7, 0.3, True, *PHILOX.tolist())
    assert torch.equal(grad_x, grad * flags)


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_the_wrapper_copies_the_new_sigma_into_the_buffer_in_training_only(backend):
    x, sigma = make_input((4, 3, 5, 5), "contiguous")
    buffer, before = sigma.clone(), sigma.clone()
    ops.stoc_relu_ema(x, buffer, 0.7, 0.3, False, PHILOX, backend)
    assert torch.equal(buffer, before)
    pointer = buffer.data_ptr()
    ops.stoc_relu_ema(x, buffer, 0.7, 0.3, True, PHILOX, backend)
    assert buffer.data_ptr() == pointer
    expected = 0.7 * before.double() + 0.3 * x.double().std(dim=(0, 2, 3))
    torch.testing.assert_close(buffer.double(), expected, rtol=1e-5, atol=1e-6)


def test_backward_saves_one_bit_per_element():
    x, sigma = make_input((4, 8, 9, 9), "contiguous")
    x.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        run(BACKENDS[0], x, sigma)
    assert sum(t.untyped_storage().nbytes() for t in saved) == (x.numel() + 7) // 8


def test_reproducible_under_manual_seed_and_fresh_noise_per_call():
    x, sigma = make_input((2, 4, 6, 6), "contiguous")
    torch.manual_seed(7)
    first = F.stoc_relu_ema(x, sigma.clone(), 0.5, training=False)
    second = F.stoc_relu_ema(x, sigma.clone(), 0.5, training=False)
    torch.manual_seed(7)
    again = F.stoc_relu_ema(x, sigma.clone(), 0.5, training=False)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def test_noise_statistics():
    x = torch.full((64, 4, 32, 32), 50.0, device=DEVICE)  # far from the kink: y - x is the noise
    sigma = torch.tensor([0.5, 1.0, 2.0, 3.0], device=DEVICE)
    noise = (run(BACKENDS[0], x, sigma, training=False, gamma=4.0) - x).double().cpu()
    for c, s in enumerate([1.0, 2.0, 4.0, 6.0]):
        z = noise[:, c].flatten() / s
        assert abs(z.mean().item()) < 5 / z.numel() ** 0.5
        assert abs(z.std().item() - 1) < 0.02
        assert scipy.stats.kstest(z[:20000].numpy(), "norm").pvalue > 1e-4


def test_running_sigma_is_the_ema_of_the_channel_std():
    x, _ = make_input((8, 3, 10, 10), "contiguous", seed=3)
    sigma = torch.full((3,), 2.0, device=DEVICE)
    run(BACKENDS[0], x, sigma, momentum=0.25)
    expected = 0.75 * 2.0 + 0.25 * x.double().std(dim=(0, 2, 3))
    torch.testing.assert_close(sigma.double(), expected, rtol=1e-6, atol=0)


def test_statistics_sound_for_large_means():
    x, _ = make_input((8, 2, 16, 16), "contiguous", seed=4)
    x = x * 0.01 + 1e4  # float32 sum of squares would lose every digit of the variance
    sigma = torch.zeros(2, device=DEVICE)
    run(BACKENDS[0], x, sigma, momentum=1.0)
    torch.testing.assert_close(sigma.double(), x.double().std(dim=(0, 2, 3)), rtol=1e-3, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 2, 8, 8), (40, 3)])
def test_signed_zeros_as_torch_relu(backend, shape):
    # sigma 0: v = -0 + 0 * z is -0 where z < 0 and +0 elsewhere; relu keeps the sign, as torch.relu.
    x = torch.full(shape, -0.0, device=DEVICE)
    sigma = torch.zeros(shape[1], device=DEVICE)
    y = run(backend, x, sigma.clone(), training=False)
    y_ref, _ = ops.reference(x, sigma, 0.7, 0.3, False, *PHILOX.tolist())
    assert torch.equal(torch.signbit(y), torch.signbit(y_ref))
    assert 0 < int(torch.signbit(y).sum()) < y.numel()


def test_nan_propagates():
    x, sigma = make_input((2, 3, 4, 4), "contiguous")
    x[0, 1, 2, 2] = float("nan")
    y = run(BACKENDS[0], x, sigma)
    assert torch.isnan(y[0, 1, 2, 2]) and torch.isfinite(y).sum() == y.numel() - 1
    assert torch.isnan(sigma[1]) and torch.isfinite(sigma[[0, 2]]).all()


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
    if "cuda" in match and DEVICE == "cuda":
        pytest.skip("valid on a GPU machine")
    with pytest.raises((TypeError, ValueError), match=match):
        call(x.cpu(), sigma.cpu())


def test_cpp_kernel_checks_before_running():
    x = torch.randn(2, 3, 4, 4)
    philox = torch.tensor([0, 0])
    with pytest.raises(RuntimeError, match="running_sigma must have shape"):
        torch.ops.stochnet.stoc_relu_ema(x, torch.zeros(4), 0.1, 0.5, True, philox)
    with pytest.raises(RuntimeError, match="x must be contiguous or channels-last"):
        torch.ops.stochnet.stoc_relu_ema(x[..., ::2], torch.zeros(3), 0.1, 0.5, True, philox)
    with pytest.raises(RuntimeError, match="mask must be a contiguous uint8 tensor of 12 bytes"):
        torch.ops.stochnet.stoc_relu_ema_backward(x, torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"philox must be an int64 CPU tensor of shape \(2,\)"):
        torch.ops.stochnet.stoc_relu_ema(x, torch.zeros(3), 0.1, 0.5, True, philox.float())
    with pytest.raises(ValueError, match=r"philox must hold a seed and an offset >= 0, got \(0, -2\)"):
        torch.ops.stochnet.stoc_relu_ema(x, torch.zeros(3), 0.1, 0.5, False, torch.tensor([0, -2]))


class TestModule:
    def test_first_batch_sets_sigma_then_ema(self):
        act = stochnet.nn.StocReLUEMA(3, gamma=0.5, momentum=0.5).to(DEVICE)
        assert torch.equal(act.running_sigma, torch.zeros(3, device=DEVICE))
        x1, _ = make_input((8, 3, 5, 5), "contiguous", seed=1)
        x2, _ = make_input((8, 3, 5, 5), "contiguous", seed=2)
        act(x1)
        std1 = x1.double().std(dim=(0, 2, 3))
        torch.testing.assert_close(act.running_sigma.double(), std1, rtol=1e-5, atol=0)
        act(x2)
        expected = 0.5 * std1 + 0.5 * x2.double().std(dim=(0, 2, 3))
        torch.testing.assert_close(act.running_sigma.double(), expected, rtol=1e-5, atol=0)
        assert act.num_batches_tracked.item() == 2

    def test_no_noise_before_training_and_noise_in_eval(self):
        act = stochnet.nn.StocReLUEMA(3).to(DEVICE).eval()
        x, _ = make_input((4, 3, 5, 5), "contiguous")
        assert torch.equal(act(x), torch.relu(x))  # sigma starts at 0
        act.train()(x)
        sigma = act.running_sigma.clone()
        act.eval()
        assert not torch.equal(act(x), act(x))  # noise stays on in eval
        assert torch.equal(act.running_sigma, sigma)  # and sigma is frozen

    def test_gamma_is_settable_and_state_dict_round_trips(self):
        act = stochnet.nn.StocReLUEMA(3, gamma=0.1).to(DEVICE)
        act(make_input((4, 3, 5, 5), "contiguous")[0])
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
    x, sigma = make_input((2, 3, 4, 4), "contiguous")
    expected = run("torch", x, sigma.clone())
    with stochnet.use_backend("torch"):
        assert stochnet.get_backend() == "torch"
        assert torch.equal(run(None, x, sigma.clone()), expected)
    assert stochnet.get_backend() is None
    with pytest.raises(ValueError, match="name must be one of"):
        stochnet.set_backend("numpy")
