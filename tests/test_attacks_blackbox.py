"""Black-box attacks: the decision-based Boundary attack (linear closed form, exact query
budget, no gradients, MNIST CNN) and Transfer attacks between two independently trained CNNs."""
import pytest
import torch
from torch import nn

from stochnet.attacks import PGD, Boundary, Transfer, transfer_success
from mnist_models import shuffled_mnist, train_tiny_cnn


@pytest.fixture(scope="module")
def mnist():
    x, y = shuffled_mnist()
    return (x[:4000], y[:4000]), (x[4000:4200], y[4000:4200])


@pytest.fixture(scope="module")
def cnns(mnist):
    """A source and an independently trained target CNN (other seed, other half of the data)."""
    (x, y), _ = mnist
    return train_tiny_cnn(x[:1200], y[:1200], seed=0), train_tiny_cnn(x[2000:3200], y[2000:3200], seed=1)


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _linear_binary(features=6, n=8):
    torch.manual_seed(1)
    model = _frozen(nn.Linear(features, 2))
    x = 0.3 + 0.4 * torch.rand(n, features)
    with torch.no_grad():
        y = model(x).argmax(1)
    w, b = model.weight, model.bias
    true = (x @ (w[1] - w[0]) + b[1] - b[0]).abs() / (w[1] - w[0]).norm()
    return model, x, y, true


def _count_rows(model):
    rows = []

    def hook(module, inputs, output):
        assert not torch.is_grad_enabled() and not inputs[0].requires_grad
        rows.append(inputs[0].shape[0])
    return rows, model.register_forward_hook(hook)


def test_boundary_linear_reaches_the_boundary():
    model, x, y, true = _linear_binary()
    torch.manual_seed(0)
    atk = Boundary(model, max_queries=500)
    x_adv = atk(x, y)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and not x_adv.requires_grad
    final = (x_adv - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(final, atk.distances[-1])
    start = atk.distances[0]
    assert (final < 0.6 * start).all()
    history = torch.stack(atk.distances)
    assert (history[1:] <= history[:-1] + 1e-6).all()  # only closer candidates are accepted
    # the boundary of a 2-class linear model is a hyperplane: its distance is a lower bound
    assert (final >= true - 1e-4).all()
    assert (final <= 1.5 * true).all()


def test_boundary_query_budget_exact_and_no_gradients():
    model, x, y, _ = _linear_binary(n=5)
    rows, handle = _count_rows(model)
    try:
        torch.manual_seed(0)
        atk = Boundary(model, max_queries=37)
        atk(x, y)
    finally:
        handle.remove()
    assert atk.queries.shape == (5,) and atk.queries.max() <= 37
    assert sum(rows) == atk.queries.sum().item()
    assert (atk.queries == 37).all()  # the walk spends the whole budget (odd budget included)
    assert all(p.grad is None for p in model.parameters())
    # with a steps cap, fewer queries
    torch.manual_seed(0)
    capped = Boundary(model, max_queries=500, steps=3)
    capped(x, y)
    assert (capped.queries < 500).all() and len(capped.distances) == 2 + 3


def test_boundary_already_adversarial_and_no_start_found():
    model = _frozen(nn.Linear(3, 2))
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0]))  # always class 0
    x = torch.rand(4, 3)
    y = torch.tensor([0, 1, 0, 1])
    torch.manual_seed(0)
    atk = Boundary(model, max_queries=50, init_samples=5)
    x_adv = atk(x, y)
    assert torch.equal(x_adv, x)  # class-1 samples are already adversarial, no noise fools class 0
    assert atk.queries.tolist() == [6, 1, 6, 1]
    d = atk.distances[-1]
    assert d[1] == 0 and d[3] == 0 and torch.isinf(d[0]) and torch.isinf(d[2])


def test_boundary_mnist_cnn(cnns, mnist):
    cnn = cnns[0]
    x, y = mnist[1][0][:10], mnist[1][1][:10]
    clean = _accuracy(cnn, x, y)
    keep = [p.requires_grad for p in cnn.parameters()]
    _frozen(cnn)
    rows, handle = _count_rows(cnn)
    try:
        torch.manual_seed(0)
        atk = Boundary(cnn, max_queries=150)
        x_adv = atk(x, y)
    finally:
        handle.remove()
        for p, k in zip(cnn.parameters(), keep):
            p.requires_grad_(k)
    assert clean > 0.8
    assert _accuracy(cnn, x_adv, y) <= 0.1
    assert sum(rows) == atk.queries.sum().item() and atk.queries.max() <= 150
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    found = torch.isfinite(atk.distances[0])
    assert found.sum() >= 9
    assert (atk.distances[-1][found] <= atk.distances[0][found]).all()
    assert (atk.distances[-1][found] / atk.distances[0][found]).median() < 0.5


def test_boundary_targeted_with_starting_points(cnns, mnist):
    cnn = cnns[0]
    xs, ys = mnist[1]
    x, y = xs[:4], ys[:4]
    target = (y + 1) % 10
    with torch.no_grad():
        pred = cnn(xs).argmax(1)
    # a starting image of each target class, taken from other correctly classified images
    start = torch.stack([xs[20:][(pred[20:] == t) & (ys[20:] == t)][0] for t in target.tolist()])
    torch.manual_seed(0)
    atk = Boundary(cnn, max_queries=100, starting_points=start).set_targeted(target)
    x_adv = atk(x, y)
    with torch.no_grad():
        assert (cnn(x_adv).argmax(1) == target).all()
    assert ((x_adv - x).flatten(1).norm(dim=1) < (start - x).flatten(1).norm(dim=1)).all()


def test_boundary_reproducible():
    model, x, y, _ = _linear_binary()
    outs = []
    for _ in range(2):
        torch.manual_seed(4)
        outs.append(Boundary(model, max_queries=60)(x, y))
    assert torch.equal(*outs)


def test_transfer_pgd_from_source_to_independent_target(cnns, mnist):
    source, target = cnns
    x, y = mnist[1][0][:100], mnist[1][1][:100]
    clean = _accuracy(target, x, y)
    assert clean > 0.8
    torch.manual_seed(0)
    atk = Transfer(PGD(source, eps=0.2, alpha=0.04, steps=10), target_model=target)
    x_adv, report = atk.evaluate(x, y)
    assert abs(report["clean_accuracy"] - clean) < 1e-6
    assert report["adv_accuracy"] < clean - 0.2
    assert report["asr"] > 0.2
    assert report == transfer_success(target, x, x_adv, y)
    assert all(p.grad is None for p in target.parameters())
    # the plain call returns the source attack's examples
    torch.manual_seed(0)
    torch.testing.assert_close(Transfer(PGD(source, eps=0.2, alpha=0.04, steps=10))(x, y), x_adv)


def test_bad_arguments_raise_clear_errors():
    model = nn.Linear(4, 2)
    x, y = torch.rand(3, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="max_queries"):
        Boundary(model, max_queries=0)
    with pytest.raises(ValueError, match="steps"):
        Boundary(model, steps=1.5)
    with pytest.raises(ValueError, match="spherical_step"):
        Boundary(model, spherical_step=-0.1)
    with pytest.raises(ValueError, match="source_step"):
        Boundary(model, source_step=float("nan"))
    with pytest.raises(ValueError, match="step_adaptation"):
        Boundary(model, step_adaptation=1.0)
    with pytest.raises(ValueError, match="init_samples"):
        Boundary(model, init_samples=0)
    with pytest.raises(TypeError, match="starting_points"):
        Boundary(model, starting_points=[[0.5] * 4])
    with pytest.raises(ValueError, match="starting_points"):
        Boundary(model, starting_points=torch.rand(2, 4))(x, y)
    with pytest.raises(ValueError, match="x must lie in"):
        Boundary(model)(x + 1.5, y)
    with pytest.raises(TypeError, match="source_attack"):
        Transfer(model)
    with pytest.raises(TypeError, match="target_model"):
        Transfer(PGD(model), target_model=3)
    with pytest.raises(ValueError, match="target_model"):
        Transfer(PGD(model)).evaluate(x, y)
    with pytest.raises(ValueError, match="x_adv"):
        transfer_success(model, x, x[:2], y)
