"""The noise modules on the default fused backend (cpp on CPU) give the reference backend's outputs
and gradients for the same seed."""
import pytest
import torch

import stochnet
from stochnet.nn import PNI, GaussianNoise, PerturbationInjection, PNIConv2d, PNILinear

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

MODULES = [
    (lambda: PerturbationInjection((4, 6, 6)), (3, 4, 6, 6)),
    (lambda: PerturbationInjection((4,)), (3, 4, 6, 6)),
    (lambda: PNIConv2d(4, 5, 3, alpha_mode="channel"), (2, 4, 7, 7)),
    (lambda: PNILinear(9, 5, alpha_mode="element"), (6, 9)),
    (lambda: PNI("layer"), (3, 4, 5, 5)),
    (lambda: GaussianNoise(0.2), (3, 4, 5, 5)),
]


@pytest.mark.parametrize("make,shape", MODULES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_fused_backend_matches_reference(make, shape):
    torch.manual_seed(0)
    module = make().to(DEVICE)
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    outputs, grads = {}, {}
    for backend in (None, "torch"):
        module.zero_grad()
        x.grad = None
        with stochnet.use_backend(backend):
            torch.manual_seed(1)
            y = module(x)
        y.square().sum().backward()
        outputs[backend] = y.detach()
        grads[backend] = [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]
    torch.testing.assert_close(outputs[None], outputs["torch"], rtol=1e-5, atol=1e-5)
    for fused, reference in zip(grads[None], grads["torch"]):
        torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-4)
