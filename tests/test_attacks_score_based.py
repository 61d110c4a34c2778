"""Score-based black-box attacks: Square (at least as strong as torchattacks' Square on the MNIST
CNN, exact per-sample query counts) and NAttack (fools the CNN and a noisy CNN, stays in the eps
ball and the clip range, reproducible); bad arguments."""
import pytest
import torch
from torch import nn

import stochnet
from stochnet.attacks import NAttack, Square
from stochnet.copies import probe
from mnist_models import run_in_mixed_modes

torchattacks = pytest.importorskip("torchattacks")


def _accuracy(model, x, y, draws=1):
    """Accuracy, averaged over ``draws`` seeded passes of a stochastic model."""
    torch.manual_seed(123)
    with torch.no_grad():
        return sum((model(x).argmax(1) == y).float().mean().item() for _ in range(draws)) / draws


class Squash(nn.Module):
    """Images in [0.25, 0.75] back to [0, 1]. NAttack searches in arctanh space, where MNIST's
    background (81% of the pixels exactly 0) is saturated and cannot move; on squashed images
    every pixel can, as on natural images."""

    def forward(self, x):
        return (x - 0.25) / 0.5


def _rows_seen(model, run):
    """Rows the model saw during ``run()``, less those of the copy engine's one probe."""
    rows = []
    handle = model.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    try:
        run()
        total = sum(rows)
        rows.clear()
        probe(model, torch.zeros(1, 1, 28, 28))
        return total - sum(rows)
    finally:
        handle.remove()


@pytest.mark.parametrize("norm, eps, queries", [("linf", 0.1, 300), ("l2", 1.0, 500)])
def test_square_at_least_as_strong_as_torchattacks(cnn, mnist, norm, eps, queries):
    x, y = mnist[1][0][:100], mnist[1][1][:100]
    clean = _accuracy(cnn, x, y)
    ours, theirs = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ours.append(_accuracy(cnn, Square(cnn, eps=eps, norm=norm, queries=queries, p_init=0.8)(x, y), y))
        ref = torchattacks.Square(cnn, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, n_queries=queries,
                                  p_init=0.8, seed=seed)
        theirs.append(_accuracy(cnn, ref(x, y), y))
    ours, theirs = sum(ours) / 2, sum(theirs) / 2
    assert theirs < clean - 0.15, "the reference attack should hurt: the comparison would be vacuous"
    assert ours <= theirs + 2 / len(y) + 1e-9, (ours, theirs, clean)  # random searches: 2 samples of slack


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_square_exact_query_counts(cnn, mnist, norm, eps):
    x, y = mnist[1][0][:30], mnist[1][1][:30]
    with torch.no_grad():
        wrong = cnn(x).argmax(1) != y
    assert wrong.any() and not wrong.all()
    atk = Square(cnn, eps=eps, norm=norm, queries=40, restarts=2, seed=0)
    out = {}
    seen = _rows_seen(cnn, lambda: out.setdefault("x_adv", atk(x, y)))
    q = atk.queries
    assert q.dtype == torch.long and q.shape == (30,)
    assert seen == q.sum().item()
    assert (q[wrong] == 1).all()  # misclassified at the clean input: that one query
    assert q.max() <= 2 * 40
    with torch.no_grad():
        fooled = cnn(out["x_adv"]).argmax(1) != y
    assert torch.equal(out["x_adv"][wrong], x[wrong])
    # a sample stops querying exactly when it is fooled: only robust samples spend both budgets
    assert (fooled | (q == 80)).all() and (q[~fooled] == 80).all()
    assert (q[fooled & ~wrong] < 80).all() and fooled.sum() > wrong.sum()


@pytest.mark.parametrize("norm, eps", [("linf", 0.07), ("l2", 0.7)])
def test_square_and_nattack_respect_eps_and_clip(cnn, mnist, norm, eps):
    x, y = 0.25 + 0.5 * mnist[1][0][:16], mnist[1][1][:16]
    model = nn.Sequential(Squash(), cnn)
    clip = (0.2, 0.8)
    for atk in (Square(model, eps=eps, norm=norm, queries=30, clip=clip),
                NAttack(model, eps=eps, norm=norm, population=10, max_iterations=10, clip=clip)):
        torch.manual_seed(0)
        x_adv = atk(x, y)
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps * (1 + 1e-5)).all(), type(atk).__name__
        assert size.max() > 0.9 * eps  # the searches use their budget
        assert x_adv.min() >= clip[0] and x_adv.max() <= clip[1] and not x_adv.requires_grad


def test_square_targeted_ce_and_stochastic_model(cnn, mnist):
    x, y = mnist[1][0][:20], mnist[1][1][:20]
    target = (y + 1) % 10
    torch.manual_seed(0)
    x_adv = Square(cnn, eps=0.2, queries=200).set_targeted(target)(x, y)
    with torch.no_grad():
        assert (cnn(x_adv).argmax(1) == target).float().mean() > 0.3
    torch.manual_seed(0)
    assert _accuracy(cnn, Square(cnn, eps=0.15, queries=200, loss="ce")(x, y), y) < _accuracy(cnn, x, y) - 0.3
    noisy = nn.Sequential(stochnet.nn.GaussianNoise(0.1), cnn).eval()
    torch.manual_seed(0)
    atk = Square(noisy, eps=0.15, queries=300)
    x_adv = atk(x, y)
    assert _accuracy(noisy, x_adv, y, draws=8) < _accuracy(noisy, x, y, draws=8) - 0.2
    assert atk.queries.max() <= 300


def test_nattack_fools_the_cnn(cnn, mnist):
    x, y = 0.25 + 0.5 * mnist[1][0][:20], mnist[1][1][:20]
    model = nn.Sequential(Squash(), cnn)
    clean = _accuracy(model, x, y)
    torch.manual_seed(0)
    atk = NAttack(model, eps=0.05, population=100, max_iterations=100)
    adv = _accuracy(model, atk(x, y), y)
    assert clean > 0.9 and adv < 0.25, (clean, adv)
    # queries: the clean one, then population + 1 per iteration until the mean is fooled
    q = atk.queries
    assert q.dtype == torch.long and q.shape == (20,)
    assert ((q - 1) % 101 == 0).all() and q.max() <= 1 + 100 * 101
    # on raw MNIST (saturated background) it is weaker, yet it still hurts
    xr, yr = mnist[1][0][:20], mnist[1][1][:20]
    torch.manual_seed(0)
    raw = NAttack(cnn, eps=1.5, norm="l2", population=100, max_iterations=50)(xr, yr)
    assert _accuracy(cnn, raw, yr) < _accuracy(cnn, xr, yr) - 0.15


def test_nattack_fools_a_noisy_cnn(cnn, mnist):
    x, y = 0.25 + 0.5 * mnist[1][0][:20], mnist[1][1][:20]
    noisy = nn.Sequential(Squash(), stochnet.nn.GaussianNoise(0.1), cnn).eval()
    clean = _accuracy(noisy, x, y, draws=8)
    torch.manual_seed(0)
    adv = _accuracy(noisy, NAttack(noisy, eps=0.05, population=100, max_iterations=100)(x, y), y, draws=8)
    assert adv < clean - 0.12, (clean, adv)


def test_nattack_queries_budget_and_clean_misclassified(cnn, mnist):
    x, y = mnist[1][0][:30], mnist[1][1][:30]
    with torch.no_grad():
        wrong = cnn(x).argmax(1) != y
    atk = NAttack(cnn, eps=0.1, population=8, max_iterations=100, queries=50)
    atk(x, y)
    q = atk.queries
    assert (q[wrong] == 1).all()
    assert q.max() <= 50 and (q[~wrong] <= 1 + 5 * 9).all()  # (50 - 1) // 9 = 5 iterations at most
    assert NAttack(cnn, eps=0.1, population=8, queries=5)(x, y).equal(x)  # no iteration fits


def test_reproducible_under_manual_seed_and_seed(cnn, mnist):
    x, y = mnist[1][0][:8], mnist[1][1][:8]
    noisy = nn.Sequential(stochnet.nn.GaussianNoise(0.1), cnn).eval()
    for make in (lambda m, s: Square(m, eps=0.1, queries=20, seed=s),
                 lambda m, s: Square(m, eps=1.0, norm="l2", queries=20, seed=s),
                 lambda m, s: NAttack(m, eps=0.1, population=6, max_iterations=5, seed=s)):
        outs = []
        for _ in range(2):
            torch.manual_seed(4)
            outs.append(make(noisy, None)(x, y))
        assert torch.equal(*outs)
        torch.manual_seed(1)
        first = make(cnn, 7)(x, y)
        torch.manual_seed(2)
        assert torch.equal(first, make(cnn, 7)(x, y))  # a private generator: the global seed is irrelevant


def test_mode_restored_and_no_parameter_grads(cnn, mnist):
    x, y = mnist[1][0][:8], mnist[1][1][:8]
    attacks = (Square(cnn, eps=0.1, queries=5), Square(cnn, eps=1.0, norm="l2", queries=5),
               NAttack(cnn, eps=0.1, population=4, max_iterations=2))
    _, seen = run_in_mixed_modes(cnn, attacks, x, y)
    assert seen and not any(training or grad for training, grad in seen)


def test_bad_arguments_raise_clear_errors(cnn):
    x, y = torch.rand(3, 1, 28, 28), torch.zeros(3, dtype=torch.long)
    for make in (lambda **k: Square(cnn, **{"eps": 0.1, **k}), lambda **k: NAttack(cnn, **{"eps": 0.1, **k})):
        for bad in (0, -0.1, float("inf"), float("nan"), True, "0.1"):
            with pytest.raises(ValueError, match="eps"):
                make(eps=bad)
        with pytest.raises(ValueError, match="norm"):
            make(norm="l1")
        for bad in (0, 1.5, -3):
            with pytest.raises(ValueError, match="queries"):
                make(queries=bad)
        with pytest.raises(TypeError, match="seed"):
            make(seed=1.5)
        with pytest.raises(ValueError, match="clip"):
            make(clip=(0.5, 0.2))
        atk = make()
        with pytest.raises(ValueError, match="finite"):
            atk(torch.full_like(x, float("nan")), y)
        with pytest.raises(ValueError, match="x must lie"):
            atk(x + 1.0, y)
        with pytest.raises(ValueError, match="clip"):
            make(clip=(0.2, 0.8))(x, y)
        with pytest.raises(ValueError, match="labels"):
            atk(x, torch.tensor([0, 10, 1]))
        with pytest.raises(ValueError, match="labels"):
            atk(x, torch.tensor([0, -1, 1]))
        with pytest.raises(ValueError, match="model must return"):
            type(atk)(lambda rows: rows.flatten(1)[:, :10].sum(1), eps=0.1)(x, y)
    for bad in (0, 1.5, -0.2):
        with pytest.raises(ValueError, match="p_init"):
            Square(cnn, eps=0.1, p_init=bad)
    with pytest.raises(ValueError, match="restarts"):
        Square(cnn, eps=0.1, restarts=0)
    with pytest.raises(ValueError, match="loss"):
        Square(cnn, eps=0.1, loss="dlr")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Square(nn.Linear(4, 2), eps=0.1)(torch.rand(3, 4), y)
    for name in ("population", "max_iterations"):
        for bad in (0, 2.5):
            with pytest.raises(ValueError, match=name):
                NAttack(cnn, eps=0.1, **{name: bad})
    with pytest.raises(ValueError, match="population"):
        NAttack(cnn, eps=0.1, population=1)
    for name in ("sigma", "lr"):
        for bad in (0, -1.0, float("nan")):
            with pytest.raises(ValueError, match=name):
                NAttack(cnn, eps=0.1, **{name: bad})
