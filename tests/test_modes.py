"""``stochnet.modes.eval_mode``: eval mode inside, every submodule's own training flag back after."""
import pytest
import torch
from torch import nn

from stochnet.modes import eval_mode


def _mixed():
    """A model in train mode whose second block is frozen in eval mode (one of its layers in train)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(4)), nn.Linear(4, 2))
    model.train()
    model[1].eval()
    model[1][1].train()
    return model


def _modes(model):
    return [m.training for m in model.modules()]


def test_eval_mode_inside_and_mixed_modes_restored():
    model = _mixed()
    before = _modes(model)
    assert len(set(before)) == 2
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(_modes(model))
        model(torch.randn(5, 3))
    assert _modes(model) == before


def test_modes_restored_on_an_exception():
    model = _mixed()
    before = _modes(model)
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            model.train()  # the body may even change modes itself
            raise RuntimeError("boom")
    assert _modes(model) == before


def test_nested_and_shared_submodules():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared).train()
    shared.eval()
    with eval_mode(model):
        with eval_mode(shared):
            assert not shared.training
        assert not model.training and not shared.training
    assert model.training and not shared.training and model[1].training


def test_a_plain_callable_is_left_alone():
    calls = []

    def fn(x):
        calls.append(x)
        return x

    with eval_mode(fn) as inside:
        assert inside is fn
        fn(1)
    assert calls == [1]
