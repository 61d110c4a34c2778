"""``stochnet.registry.Registry``: one shape for the methods, models and attacks by name."""
import pytest
from torch import nn

from stochnet.attacks.registry import ATTACK_NAMES, ATTACKS, AttackSettings, make_attack
from stochnet.defenses import METHODS, build_method
from stochnet.models import MODEL_NAMES, MODELS, build_model
from stochnet.registry import Registry, UnknownNameError


def test_register_get_names_and_mapping():
    things = Registry("thing", {"a": 1})
    assert things.register("b", 2) == 2

    @things.register("c")
    def c():
        return 3

    assert things.names() == ("a", "b", "c") and list(things) == ["a", "b", "c"] and len(things) == 3
    assert things.get("c") is c and things["b"] == 2 and "a" in things and "z" not in things and [] not in things
    assert dict(things.items()) == {"a": 1, "b": 2, "c": c}
    assert things.get("z", None) is None
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        things.register("a", 4)
    with pytest.raises(TypeError, match="non-empty string"):
        things.register("", 4)


def test_an_unknown_name_lists_the_known_ones():
    things = Registry("thing", {"alpha": 1, "beta": 2})
    for lookup in (things.get, things.__getitem__):
        with pytest.raises(UnknownNameError) as info:
            lookup("gamma")
        assert str(info.value) == "unknown thing 'gamma'; choose one of alpha, beta"
        assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_the_package_registries_share_the_shape():
    for registry, kind in ((METHODS, "method"), (MODELS, "model"), (ATTACKS, "attack")):
        assert isinstance(registry, Registry) and registry.kind == kind
    assert MODEL_NAMES == MODELS.names() and "mnist_cnn" in MODEL_NAMES
    assert ATTACK_NAMES == ("fgsm", "bim", "pgd", "pgd-l2", "mim", "eot-pgd", "cw", "deepfool", "boundary",
                            "autoattack", "autoattack-rand")
    assert {"standard", "adv", "trades", "pni", "l2p", "anis2", "gaussian", "denoiser"} == set(METHODS)


def test_the_builders_by_name_name_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'resnet1000'; choose one of resnet20, .*mnist_cnn"):
        build_model("resnet1000")
    with pytest.raises(ValueError, match=r"unknown method 'nope'; choose one of standard, .*gaussian"):
        build_method("nope", nn.Linear(2, 2), {}, epochs=1, example_input=None)
    with pytest.raises(ValueError, match=r"unknown attack 'laser'; choose one of fgsm, .*autoattack-rand"):
        make_attack("laser", nn.Linear(2, 2), "mnist", 10, AttackSettings())
    attack, eps = make_attack("pgd", nn.Linear(2, 2), "mnist", 10, AttackSettings(steps=4))
    assert eps == 0.3 and attack.steps == 4
