"""Square attack (Andriushchenko et al., ECCV 2020): score-based random search, no gradients.

Also the pieces the score-based attacks share: the margin, and the query counter that sends
every model query through the attack's copy engine.
"""
import math

import torch
import torch.nn.functional as nnf

from .base import Attack, check_count, check_norm, check_positive, check_seed

LOSSES = ("margin", "ce")
# Iterations (of a 10000-query budget) after which Square's square size p halves.
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def generator(seed, device):
    """A private generator when ``seed`` is given, else None: torch's default one."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def margin(logits, labels, targeted):
    """z_y - max_{i != y} z_i, or max_{i != t} z_i - z_t when targeted: < 0 once the attack succeeded."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return other - own if targeted else own - other


class Queries:
    """The model's logits through ``attack``'s copy engine, each row counted as one query of its sample.

    ``count`` is the (B,) int64 tensor of queries per sample. The first call must be the clean
    batch: the attack checks its logits' shape and the labels against the number of classes.
    """

    def __init__(self, attack, labels):
        self.attack = attack
        self.labels = labels
        self.count = torch.zeros(labels.shape[0], dtype=torch.long, device=labels.device)

    def __call__(self, rows, idx, copies=1):
        """Logits of ``rows`` (sample-major, ``copies`` rows for each sample of ``idx``)."""
        logits = self.attack.engine.logits(rows, copies)
        self.count[idx] += copies
        if self.labels is not None:
            self.attack.check_classes(logits, self.labels)
            self.labels = None
        return logits


def _signs(shape, gen, device):
    return torch.randint(0, 2, shape, generator=gen, device=device) * 2.0 - 1.0


def _corners(n, size, s, gen, device):
    """A uniform top-left corner in [0, size - s] for each of n samples."""
    return (torch.rand(n, generator=gen, device=device) * (size - s + 1)).long()


def _window(top, left, s, h, w):
    """(n, 1, h, w) mask of the s x s square at each sample's corner."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_h = (rows >= top[:, None]) & (rows < top[:, None] + s)
    in_w = (cols >= left[:, None]) & (cols < left[:, None] + s)
    return (in_h[:, :, None] & in_w[:, None, :])[:, None]


def _rings(h, w):
    """Concentric squares around the centre, square k adding 1 / (k + 1)^2: the paper's
    pseudo-Gaussian bump, unit L2 norm."""
    i = torch.arange(h).view(-1, 1) - h // 2
    j = torch.arange(w).view(1, -1) - w // 2
    dist = torch.maximum(i.abs(), j.abs())
    k = torch.arange(max(h // 2, w // 2) + 1).view(-1, 1, 1)
    bump = ((k >= dist) / (k + 1.0) ** 2).sum(0)
    return bump / bump.norm()


def _patterns(n, s, gen, x):
    """(n, s, s) L2 update patterns: a positive bump over a negative one, each sample's at random
    transposed (so the halves are stacked vertically or side by side)."""
    eta = torch.cat([_rings(s // 2, s), -_rings(s - s // 2, s)]).to(device=x.device, dtype=x.dtype)
    eta = eta / eta.norm()
    flip = torch.rand(n, 1, 1, generator=gen, device=x.device) < 0.5
    return torch.where(flip, eta.t(), eta)


class Square(Attack):
    """Square attack: random search over squares, using only the model's scores.

    Each iteration proposes, for every sample still classified correctly, one change of its best
    point inside a random square of side ``sqrt(p * H * W)`` and keeps it when the loss drops
    (or the sample becomes misclassified). ``p`` starts at ``p_init`` and halves after 10, 50,
    200, 500, 1000, 2000, 4000, 6000 and 8000 iterations of a 10000-query budget (rescaled to
    ``queries`` as AutoAttack does).

    - L-inf: the start adds +-eps vertical stripes (one sign per column and channel); an update
      sets the square to a vertex +-eps per channel. A vertex that would leave the image
      unchanged gets one random channel flipped (for one channel this is the paper's redraw).
    - L2: the start tiles a grid of opposite-sign bump pairs; an update moves the perturbation
      mass of a second square and the unused budget into the first, as a fresh bump pattern added
      to the first square's old content; the result is rescaled to norm eps and clipped.

    Squares are drawn per sample (AutoAttack shares one position across the batch). The loss is
    the margin (or, with ``loss="ce"``, the cross-entropy). Square needs images (B, C, H, W).

    Queries: the clean batch costs one query per sample (samples misclassified there are returned
    unchanged), each start and each iteration one more. ``queries`` is the budget of a sample per
    restart, the clean query included in the first one; ``atk.queries`` (B,) holds the counts of
    the last call. Samples stop once misclassified: their budget is not spent and they leave the
    batch. A stochastic model draws its noise anew at each query; a sample counts as fooled when
    the query of its accepted point was misclassified. Restarts (``restarts`` > 1) start the
    samples not fooled afresh; samples never fooled get the point of lowest loss found.

    Randomness comes from torch's default generator, or from a private one seeded with ``seed``.
    """

    def __init__(self, model, eps, norm="linf", queries=5000, p_init=0.8, restarts=1, seed=None,
                 targeted=False, loss="margin", clip=(0.0, 1.0)):
        super().__init__(model, clip=clip, targeted=targeted)
        self.eps = check_positive(eps, "eps")
        self.norm = check_norm(norm)
        self.max_queries = check_count(queries, "queries")
        self.p_init = check_positive(p_init, "p_init")
        if self.p_init > 1:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init!r}")
        self.restarts = check_count(restarts, "restarts")
        self.seed = check_seed(seed)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss_name = loss
        self.queries = None

    def perturb(self, x, labels):
        if x.dim() != 4:
            raise ValueError(f"x must be a batch of images (B, C, H, W) for Square, got shape {tuple(x.shape)}")
        with torch.no_grad():
            gen = generator(self.seed, x.device)
            query = Queries(self, labels)
            fooled = margin(query(x, torch.arange(x.shape[0], device=x.device)), labels, self.targeted) < 0
            x_adv = x.clone()
            best = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype)
            budget = self.max_queries - 1
            for _ in range(self.restarts):
                idx = (~fooled).nonzero().squeeze(1)
                if len(idx) and budget > 0:
                    x_run, loss, ok = self._run(x[idx], labels[idx], idx, query, budget, gen)
                    keep = ok | (loss < best[idx])
                    x_adv[idx[keep]] = x_run[keep]
                    best[idx[keep]] = loss[keep]
                    fooled[idx[ok]] = True
                budget = self.max_queries
            self.queries = query.count
        return x_adv

    def _scores(self, logits, labels):
        """(margin, loss to minimize) of each row."""
        m = margin(logits, labels, self.targeted)
        if self.loss_name == "margin":
            return m, m
        ce = nnf.cross_entropy(logits, labels, reduction="none")
        return m, ce if self.targeted else -ce

    def _p(self, it):
        it = int(it / self.max_queries * 10000)
        return self.p_init / 2 ** sum(it > t for t in P_HALVINGS)

    def _run(self, x, labels, idx, query, budget, gen):
        """One restart on the samples ``idx`` with ``budget`` queries each: (best point, its loss,
        fooled)."""
        x_best = self._start(x, gen)
        m, loss = self._scores(query(x_best, idx), labels)
        live = torch.arange(x.shape[0], device=x.device)
        propose = self._linf_step if self.norm == "linf" else self._l2_step
        for it in range(budget - 1):
            live = live[m[live] >= 0]  # compaction: one host sync per iteration
            if not len(live):
                break
            cand = propose(x[live], x_best[live], self._p(it), gen)
            m_new, loss_new = self._scores(query(cand, idx[live]), labels[live])
            better = (loss_new < loss[live]) | (m_new < 0)
            m[live] = torch.where(better, m_new, m[live])
            loss[live] = torch.where(better, loss_new, loss[live])
            x_best[live] = torch.where(better.view(-1, 1, 1, 1), cand, x_best[live])
        return x_best, loss, m < 0

    def _start(self, x, gen):
        n, c, h, w = x.shape
        lo, hi = self.clip
        if self.norm == "linf":
            return (x + self.eps * _signs((n, c, 1, w), gen, x.device)).clamp(lo, hi)
        s = max(min(h, w) // 5, 1)
        nh, nw = h // s, w // s
        top, left = (h - nh * s) // 2, (w - nw * s) // 2
        blocks = _patterns(n * nh * nw, s, gen, x).view(n, 1, nh, nw, s, s) * _signs((n, c, nh, nw, 1, 1), gen, x.device)
        delta = torch.zeros_like(x)
        delta[:, :, top:top + nh * s, left:left + nw * s] = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, nh * s, nw * s)
        return (x + self.eps * delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(lo, hi)

    def _linf_step(self, x, x_best, p, gen):
        n, c, h, w = x.shape
        lo, hi = self.clip
        s = max(1, min(round(math.sqrt(p * h * w)), min(h, w) - 1))
        square = _window(_corners(n, h, s, gen, x.device), _corners(n, w, s, gen, x.device), s, h, w)
        vertex = self.eps * _signs((n, c, 1, 1), gen, x.device)
        cand = torch.where(square, (x + vertex).clamp(lo, hi), x_best)
        same = ((cand - x_best).abs().flatten(1).amax(1) < 1e-7).view(-1, 1, 1, 1)
        channel = torch.randint(0, c, (n, 1, 1, 1), generator=gen, device=x.device)
        flip = same & (torch.arange(c, device=x.device).view(1, -1, 1, 1) == channel)
        vertex = torch.where(flip, -vertex, vertex)
        return torch.where(square, (x + vertex).clamp(lo, hi), x_best)

    def _l2_step(self, x, x_best, p, gen):
        n, c, h, w = x.shape
        lo, hi = self.clip
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 - s % 2, h, w)
        top, left = _corners(n, h, s, gen, x.device), _corners(n, w, s, gen, x.device)
        first = _window(top, left, s, h, w)
        second = _window(_corners(n, h, s, gen, x.device), _corners(n, w, s, gen, x.device), s, h, w)
        delta = x_best - x
        # the first square as (n, c, s, s): advanced indices around a slice put their dims first
        at = (torch.arange(n, device=x.device).view(-1, 1, 1), slice(None),
              (top.view(-1, 1) + torch.arange(s, device=x.device)).view(n, s, 1),
              (left.view(-1, 1) + torch.arange(s, device=x.device)).view(n, 1, s))
        old = delta[at].permute(0, 3, 1, 2)
        old_norm = old.square().sum((2, 3), keepdim=True).sqrt()
        image_norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        windows_norm = (delta * (first | second)).square().sum((2, 3), keepdim=True).sqrt()
        new = _patterns(n, s, gen, x)[:, None] * _signs((n, c, 1, 1), gen, x.device) + old / (old_norm + 1e-12)
        # per channel: the mass the two squares held plus an equal share of the unused budget
        mass = ((self.eps ** 2 - image_norm ** 2).clamp_min(0) / c + windows_norm ** 2).sqrt()
        new = new / (new.square().sum((2, 3), keepdim=True).sqrt() + 1e-12) * mass
        delta = delta.masked_fill(second, 0.0)
        delta[at] = new.permute(0, 2, 3, 1)
        return (x + self.eps * delta / (delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)).clamp(lo, hi)
