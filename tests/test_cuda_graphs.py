"""Randomness GPU users can rely on (DESIGN.md, randomness contract): on a CUDA device the noise
ops draw (seed, offset) on the device from its CUDA generator, so they follow
``torch.cuda.manual_seed``, never wait for the device, draw anew on every CUDA-graph replay, and
still give the reference's noise for a given (seed, offset).

The CPU half runs everywhere; the GPU half skips without a CUDA device (the Triton cases also
without Triton, the C++ cases without stochnet's CUDA kernels).
"""
import pytest
import torch

from stochnet import functional as F
from stochnet.nn import StocReLUEMA
from stochnet.ops import draw_seed
from stochnet.ops.perturb import reference

HAS_CUDA = torch.cuda.is_available()


def _gpu_backends():
    if not HAS_CUDA:
        return []
    from stochnet import _C
    backends = ["cuda"] if _C.has_cuda() else []
    try:
        import triton  # noqa: F401
        backends.append("triton")
    except ImportError:
        pass
    return backends


GPU_BACKENDS = _gpu_backends()
requires_gpu = pytest.mark.skipif(not GPU_BACKENDS, reason="needs a CUDA device")


NOISE_OPS = ["perturb", "stoc_relu_ema", "noisy_repeat", "random_start"]


@pytest.fixture(params=[(backend, op) for backend in GPU_BACKENDS for op in NOISE_OPS], ids=str)
def noise_call(request):
    """One noise op on one GPU backend, philox drawn inside (None), as a function of its input."""
    backend, op = request.param
    theta = torch.full((4,), 0.5, device="cuda")
    sigma = torch.ones(4, device="cuda")
    return {
        "perturb": lambda x: F.perturb(x, theta, backend=backend),
        "stoc_relu_ema": lambda x: F.stoc_relu_ema(x, sigma, 1.0, 0.0, False, backend=backend),
        "noisy_repeat": lambda x: F.noisy_repeat(x, 3, 0.5, backend=backend),
        "random_start": lambda x: F.random_start(x, 0.1, clip=(-10.0, 10.0), backend=backend),
    }[op]


def test_the_cpu_draw_follows_torch_manual_seed_and_a_generator():
    torch.manual_seed(3)
    first = draw_seed()
    torch.manual_seed(3)
    assert torch.equal(first, draw_seed()) and first.device.type == "cpu" and first[1] == 0
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(draw_seed("cpu", generator), draw_seed(generator=torch.Generator().manual_seed(5)))


@requires_gpu
def test_the_cuda_draw_stays_on_the_device_and_follows_torch_cuda_manual_seed():
    torch.cuda.manual_seed(7)
    first = draw_seed("cuda")
    assert first.device.type == "cuda" and first.dtype == torch.int64 and first.shape == (2,)
    torch.manual_seed(123)  # the CPU generator does not matter on the GPU
    torch.cuda.manual_seed(7)
    assert torch.equal(first, draw_seed("cuda"))
    assert not torch.equal(first, draw_seed("cuda"))


@requires_gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_device_philox_gives_the_references_noise(backend):
    x = torch.randn(3, 4, 5, device="cuda")
    theta = torch.full((4,), 0.5, device="cuda")
    philox = torch.tensor([2**40 + 3, 2**32 - 7], device="cuda")
    y = F.perturb(x, theta, backend=backend, philox=philox)
    torch.testing.assert_close(y, reference(x, theta, 2**40 + 3, 2**32 - 7), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, F.perturb(x, theta, backend=backend, philox=philox.cpu()), rtol=0, atol=0)


@requires_gpu
def test_ops_follow_torch_cuda_manual_seed(noise_call):
    x = torch.randn(2, 4, 6, device="cuda")
    torch.cuda.manual_seed(11)
    first = noise_call(x)
    torch.cuda.manual_seed(11)
    assert torch.equal(first, noise_call(x))
    assert not torch.equal(first, noise_call(x))


@requires_gpu
def test_every_cuda_graph_replay_draws_fresh_noise(noise_call):
    x = torch.randn(2, 4, 6, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm up (Triton compiles, allocators settle) outside the capture
            noise_call(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = noise_call(x)
    outputs = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        outputs.append(out.clone())
    assert all(torch.isfinite(o).all() for o in outputs)
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])
    torch.cuda.manual_seed(5)
    graph.replay()
    again = out.clone()
    torch.cuda.manual_seed(5)
    graph.replay()
    assert torch.equal(again, out), "a replay after torch.cuda.manual_seed must repeat its noise"


@requires_gpu
def test_a_stochastic_module_under_compile_reduce_overhead_draws_fresh_noise_per_call():
    module = StocReLUEMA(4, gamma=1.0).cuda().eval()
    compiled = torch.compile(module, mode="reduce-overhead")
    x = torch.randn(8, 4, 5, 5, device="cuda")
    outputs = [compiled(x).clone() for _ in range(4)]
    assert not torch.equal(outputs[-1], outputs[-2])
    torch.testing.assert_close(outputs[-1].mean(), module(x).mean(), rtol=0.2, atol=0.05)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_each_device_has_its_own_stream():
    torch.cuda.manual_seed_all(1)
    on_0 = draw_seed("cuda:0")
    on_1 = draw_seed("cuda:1")
    assert on_0.device == torch.device("cuda:0") and on_1.device == torch.device("cuda:1")
    assert on_0[0].item() != on_1[0].item(), "devices seeded alike must still draw different keys"
    torch.cuda.manual_seed_all(1)
    draw_seed("cuda:0")
    assert torch.equal(on_1, draw_seed("cuda:1")), "a draw on device 0 must not move device 1's generator"
