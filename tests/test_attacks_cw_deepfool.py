"""C&W-L2 and DeepFool: closed forms on a multi-class linear model, strength on a tiny MNIST
CNN, targeting, model-state hygiene and argument checks."""
import pytest
import torch
from torch import nn

from mnist_models import run_in_mixed_modes
from stochnet.attacks import CW, PGD, DeepFool


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny models: a single intra-op thread is much faster on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def correct(trained_cnn, mnist):
    x, y = mnist[1]
    with torch.no_grad():
        keep = trained_cnn(x).argmax(1) == y
    return x[keep][:48], y[keep][:48]


def _linear_multiclass():
    """A 4-class linear model and correctly classified points whose nearest boundaries lie
    well inside [0, 1]^d, with the closed-form L2 and L-inf distances to them."""
    torch.manual_seed(4)
    model = nn.Linear(6, 4)
    with torch.no_grad():
        model.weight.mul_(4.0)
    x = 0.4 + 0.2 * torch.rand(64, 6)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = model.weight.detach()
    f = z - z.gather(1, y.view(-1, 1))                  # (B, C): f_k = Z_k - Z_y
    wk = w.unsqueeze(0) - w[y].unsqueeze(1)             # (B, C, D)
    mask = nn.functional.one_hot(y, 4).bool()
    d2 = (f.abs() / wk.norm(dim=2)).masked_fill(mask, float("inf")).amin(1)
    dinf = (f.abs() / wk.abs().sum(2)).masked_fill(mask, float("inf")).amin(1)
    keep = (d2 > 0.02) & (d2 < 0.25) & (dinf < 0.3)
    assert keep.sum() >= 10
    return model, x[keep], y[keep], d2[keep], dinf[keep]


def test_deepfool_l2_linear_closed_form():
    model, x, y, d2, _ = _linear_multiclass()
    x_adv = DeepFool(model, overshoot=0.02, norm="l2")(x, y)
    dist = (x_adv - x).norm(dim=1)
    assert (model(x_adv).argmax(1) != y).all()
    torch.testing.assert_close(dist, 1.02 * d2, rtol=1e-3, atol=2e-4)


def test_deepfool_linf_linear_closed_form():
    model, x, y, _, dinf = _linear_multiclass()
    x_adv = DeepFool(model, overshoot=0.02, norm="linf")(x, y)
    dist = (x_adv - x).abs().amax(1)
    assert (model(x_adv).argmax(1) != y).all()
    torch.testing.assert_close(dist, 1.02 * dinf, rtol=1e-3, atol=2e-4)


def test_deepfool_one_batched_forward_per_step_over_candidates():
    model, x, y, _, _ = _linear_multiclass()
    sizes = []
    model.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    DeepFool(model, num_classes=3)(x, y)
    # the clean forward, then one forward of (num_classes - 1) * B copies and one check
    assert sizes[:3] == [len(y), 2 * len(y), len(y)]


def test_cw_linear_reaches_minimal_l2():
    model, x, y, d2, _ = _linear_multiclass()
    x_adv = CW(model)(x, y)  # defaults: c=1, kappa=0, 100 Adam steps of lr 0.01, 5 searches
    dist = (x_adv - x).norm(dim=1)
    assert (model(x_adv).argmax(1) != y).all()
    assert (dist >= d2 - 1e-4).all()
    assert (dist <= 1.02 * d2 + 1e-3).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_cnn_drives_accuracy_down(cnn, correct, norm):
    x, y = correct
    x_adv = DeepFool(cnn, steps=50, norm=norm, num_classes=10)(x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        acc = (cnn(x_adv).argmax(1) == y).float().mean().item()
    assert acc < 0.1


def test_cw_cnn_smaller_than_pgd_l2_at_equal_success(cnn, correct):
    x, y = correct
    torch.manual_seed(0)
    x_cw = CW(cnn, c=1.0, steps=50, lr=0.2, binary_search_steps=4)(x, y)
    x_pgd = PGD(cnn, eps=3.0, alpha=0.5, steps=10, norm="l2")(x, y)
    assert x_cw.min() >= 0 and x_cw.max() <= 1
    with torch.no_grad():
        ok_cw, ok_pgd = cnn(x_cw).argmax(1) != y, cnn(x_pgd).argmax(1) != y
    assert ok_cw.float().mean() > 0.9
    both = ok_cw & ok_pgd
    assert both.sum() >= 0.8 * len(y)
    l2_cw = (x_cw - x).flatten(1).norm(dim=1)
    l2_pgd = (x_pgd - x).flatten(1).norm(dim=1)
    assert l2_cw[both].mean() < l2_pgd[both].mean()
    # failed samples are returned unchanged
    assert torch.equal(x_cw[~ok_cw], x[~ok_cw])


def test_cw_targeted_hits_targets(cnn, correct):
    x, y = correct[0][:24], correct[1][:24]
    target = (y + 1) % 10
    atk = CW(cnn, c=1.0, steps=50, lr=0.2, binary_search_steps=4).set_targeted(target)
    with torch.no_grad():
        hit = (cnn(atk(x, y)).argmax(1) == target).float().mean().item()
    assert hit > 0.8
    x_adv = CW(cnn, steps=50, lr=0.2, binary_search_steps=4, targeted=True)(x, target)
    with torch.no_grad():
        assert (cnn(x_adv).argmax(1) == target).float().mean().item() > 0.8


def test_cw_kappa_gives_confident_examples(cnn, correct):
    x, y = correct[0][:16], correct[1][:16]
    x0 = CW(cnn, steps=30, lr=0.2, binary_search_steps=3)(x, y)
    x5 = CW(cnn, kappa=5.0, steps=30, lr=0.2, binary_search_steps=3)(x, y)
    with torch.no_grad():
        z = cnn(x5)
    own = z.gather(1, y.view(-1, 1)).squeeze(1)
    other = z.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    done = ~torch.all((x5 == x).flatten(1), dim=1)
    assert done.sum() >= 8 and (other - own)[done].min() >= 5.0 - 1e-4
    both = done & ~torch.all((x0 == x).flatten(1), dim=1)
    assert ((x5 - x).flatten(1).norm(dim=1)[both] > (x0 - x).flatten(1).norm(dim=1)[both]).float().mean() > 0.8


def test_mode_restored_and_no_parameter_grads(cnn, correct):
    x, y = correct[0][:8], correct[1][:8]
    attacks = (CW(cnn, steps=3, binary_search_steps=2), DeepFool(cnn, steps=3),
               DeepFool(cnn, steps=3, norm="linf", num_classes=3))
    outputs, seen = run_in_mixed_modes(cnn, attacks, x, y)
    assert not any(out.requires_grad for out in outputs)
    assert seen and not any(training for training, _ in seen)


def test_bad_arguments_raise_clear_errors():
    model = nn.Linear(4, 3)
    x, y = torch.rand(3, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="c must"):
        CW(model, c=0.0)
    with pytest.raises(ValueError, match="kappa"):
        CW(model, kappa=-1.0)
    with pytest.raises(ValueError, match="steps"):
        CW(model, steps=0)
    with pytest.raises(ValueError, match="lr"):
        CW(model, lr=float("nan"))
    with pytest.raises(ValueError, match="binary_search_steps"):
        CW(model, binary_search_steps=1.5)
    with pytest.raises(ValueError, match="steps"):
        DeepFool(model, steps=0)
    with pytest.raises(ValueError, match="overshoot"):
        DeepFool(model, overshoot=-0.1)
    with pytest.raises(ValueError, match="norm"):
        DeepFool(model, norm="l1")
    with pytest.raises(ValueError, match="num_classes"):
        DeepFool(model, num_classes=1)
    with pytest.raises(ValueError, match="untargeted"):
        DeepFool(model).set_targeted(y)
    with pytest.raises(ValueError, match="x must lie in"):
        DeepFool(model)(x + 1.5, y)
    with pytest.raises(ValueError, match="y must"):
        CW(model)(x, y[:2])
    with pytest.raises(ValueError, match="y must hold class indices"):
        DeepFool(model)(x, torch.full((3,), 5, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        CW(nn.Linear(4, 1))(x, y)
    with pytest.raises(ValueError, match="target_labels must hold class indices"):
        CW(model).set_targeted(torch.full((3,), 3, dtype=torch.long))(x, y)
