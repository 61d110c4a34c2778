"""StocReLUEMA and non-finite batches: a batch whose channel std is NaN or inf leaves running_sigma
as it was (per channel), is counted in the buffer ``skipped_updates`` and reported once, later
finite batches update it as usual, finite batches give the fused op's outputs bit for bit, and state
dicts written before the buffer existed still load."""
import io
import warnings

import pytest
import torch

import stochnet
from stochnet import functional as F
from stochnet.nn.stoc_relu_ema import sync_stoc_relu, warn_skipped_updates

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["cpp", "torch"] if DEVICE == "cpu" else ["cuda", "triton", "torch"]


def _batch(seed, bad=None, channels=3):
    x = torch.randn(8, channels, 5, 5, generator=torch.Generator().manual_seed(seed)) * (seed + 1) + 0.3
    if bad is not None:
        x[2, bad, 1, 1] = float("nan")
    return x.to(DEVICE)


def _skips(record):
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "non-finite" in str(w.message)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_a_non_finite_batch_keeps_sigma_is_counted_and_later_batches_match_the_op(backend, bad):
    act = stochnet.nn.StocReLUEMA(3, gamma=0.5, momentum=0.5, backend=backend).to(DEVICE).train()
    sigma = torch.zeros(3, device=DEVICE)  # the op's own sigma, fed the finite batches only
    poisoned = _batch(9)
    poisoned[0, :, 0, 0] = float(bad)  # every channel
    batches = [_batch(0), _batch(1), poisoned, poisoned, _batch(2), _batch(3)]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for step, x in enumerate(batches):
            torch.manual_seed(step)
            y = act(x)
            if x is poisoned:
                assert torch.equal(act.running_sigma, sigma)  # kept, not NaN
                continue
            torch.manual_seed(step)
            expected = F.stoc_relu_ema(x, sigma, 0.5, 0.5 if step else 1.0, True, backend=backend)
            assert torch.equal(y, expected) and torch.equal(act.running_sigma, sigma)
    assert torch.isfinite(act.running_sigma).all() and (act.running_sigma > 0).all()
    assert int(act.skipped_updates) == 2 and int(act.num_batches_tracked) == 6
    if DEVICE == "cpu":  # reported at once, and once
        assert len(_skips(record)) == 1 and "StocReLUEMA(3, gamma=0.5" in str(_skips(record)[0].message)
    else:  # for CUDA tensors, where the training loop syncs
        assert _skips(record) == []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert warn_skipped_updates(torch.nn.Sequential(act)) == {"0": 2}
    assert len(_skips(record)) == (0 if DEVICE == "cpu" else 1)
    assert torch.isfinite(act.eval()(_batch(4))).all()  # outputs of finite inputs stay finite


def test_only_the_channels_with_a_non_finite_std_keep_their_sigma():
    act = stochnet.nn.StocReLUEMA(3, momentum=0.5).to(DEVICE).train()
    act(_batch(0))
    before = act.running_sigma.clone()
    x = _batch(1, bad=1)
    with pytest.warns(RuntimeWarning, match="non-finite") if DEVICE == "cpu" else warnings.catch_warnings():
        act(x)
    std = x.double().std(dim=(0, 2, 3))
    assert act.running_sigma[1] == before[1]
    torch.testing.assert_close(act.running_sigma[[0, 2]].double(), 0.5 * before[[0, 2]].double() + 0.5 * std[[0, 2]],
                               rtol=1e-5, atol=0)
    assert int(act.skipped_updates) == 1


def test_the_synchronized_update_skips_too():
    act = sync_stoc_relu(stochnet.nn.StocReLUEMA(3, momentum=0.5)).to(DEVICE).train()
    act(_batch(0))
    before = act.running_sigma.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        act(_batch(1, bad=0))
    assert act.running_sigma[0] == before[0] and torch.isfinite(act.running_sigma).all()
    assert int(act.skipped_updates) == 1


def test_under_torch_compile_the_skip_needs_no_graph_break_and_the_loop_reports_it():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), stochnet.nn.StocReLUEMA(4)).to(DEVICE).train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(_batch(0))
    sigma = model[1].running_sigma.clone()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        compiled(_batch(1, bad=2))  # NaN spreads through the convolution to every channel
    assert torch.equal(model[1].running_sigma, sigma) and int(model[1].skipped_updates) == 1
    assert _skips(record) == []
    with pytest.warns(RuntimeWarning, match=r"^1 \(StocReLUEMA\(4, .*1 training batch\(es\) had a non-finite"):
        assert warn_skipped_updates(model) == {"1": 1}


def test_skipped_updates_is_saved_and_reset():
    act = stochnet.nn.StocReLUEMA(3).to(DEVICE).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        act(_batch(0, bad=0))
    state = act.state_dict()
    assert int(state["skipped_updates"]) == 1
    copy = stochnet.nn.StocReLUEMA(3).to(DEVICE)
    copy.load_state_dict(state)
    assert int(copy.skipped_updates) == 1
    copy.reset_parameters()
    assert int(copy.skipped_updates) == 0


def _old_state_dict(model):
    """``model``'s state dict as stochnet wrote it before skipped_updates: no such key, version 1."""
    state = model.state_dict()
    for key in [k for k in state if k.endswith("skipped_updates")]:
        del state[key]
    for prefix, metadata in state._metadata.items():
        if isinstance(model.get_submodule(prefix), stochnet.nn.StocReLUEMA):
            metadata["version"] = 1
    return state


def test_an_old_state_dict_without_skipped_updates_loads_strictly():
    trained = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), stochnet.nn.StocReLUEMA(4)).train()
    trained(_batch(0).cpu())
    buffer = io.BytesIO()
    torch.save({"model": _old_state_dict(trained)}, buffer)  # through a checkpoint file, as stochnet loads one
    buffer.seek(0)
    old = torch.load(buffer, weights_only=True)["model"]
    assert not any(k.endswith("skipped_updates") for k in old)
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), stochnet.nn.StocReLUEMA(4))
    fresh.load_state_dict(old)  # strict
    assert torch.equal(fresh[1].running_sigma, trained[1].running_sigma) and fresh[1].sigma_initialized
    assert int(fresh[1].skipped_updates) == 0
    current = trained.state_dict()
    del current["1.skipped_updates"]  # a current state dict that lacks it is incomplete
    with pytest.raises(RuntimeError, match="skipped_updates"):
        fresh.load_state_dict(current)


def test_a_non_finite_gradient_where_the_unit_is_off_gives_zero_on_every_backend_as_torch_relu(backend):
    """The backward is a select, not ``grad * mask``: NaN / inf gradients of units that are off give 0
    (torch.relu's backward), those of units that are on pass through."""
    from stochnet.ops.layout import pack_bits
    from stochnet.ops.stoc_relu_ema import reference_backward
    x = torch.tensor([-5.0, 5.0, -5.0, 5.0, -5.0, 5.0, 1.0, -1.0, 2.0]).repeat(3, 1)
    grad = torch.tensor([float("nan"), float("nan"), float("inf"), float("inf"), -float("inf"), 1.0, 2.0, 3.0, 4.0])
    grad = grad.repeat(3, 1)
    leaf = x.clone().requires_grad_()
    torch.relu(leaf).backward(grad)
    mask = pack_bits(x > 0)
    torch.testing.assert_close(reference_backward(grad, mask), leaf.grad, rtol=0, atol=0, equal_nan=True)
    on_backend = backend.ops.stoc_relu_ema_backward(grad.to(backend.device), mask.to(backend.device))
    torch.testing.assert_close(on_backend.cpu(), leaf.grad, rtol=0, atol=0, equal_nan=True)
