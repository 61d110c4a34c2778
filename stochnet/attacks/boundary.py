"""Decision-based Boundary attack (Brendel et al., 2018): predictions only, no gradients."""
import numbers

import torch

from .base import Attack, check_count


def _positive_float(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 or value != value \
            or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class Boundary(Attack):
    """Boundary attack: a random walk along the decision boundary that shrinks the L2 distance.

    Starts from an adversarial point (uniform noise images that are misclassified / classified
    as the target, or the given ``starting_points``), blends it towards x with a binary search,
    then repeats: an orthogonal (spherical) step of relative size ``spherical_step`` around x,
    followed by a step of relative size ``source_step`` towards x. A candidate is accepted only
    if it stays adversarial and is closer to x. Every ``adapt_every`` iterations the step sizes
    are multiplied / divided by ``step_adaptation`` from the success rates of the spherical
    candidates and of the full candidates (high rate > 0.5: grow, low rate < 0.2: shrink).

    Only ``model(x).argmax(1)`` is used, under ``torch.no_grad()``. Each iteration evaluates the
    candidates of all samples in one forward. The budget is per sample: a sample never costs more
    than ``max_queries`` rows of model input; ``atk.queries`` (B,) holds the counts of the last
    call and ``atk.distances`` the list of (B,) L2 distances [starting point, after the line search,
    after each iteration] (inf where no adversarial start was found; those samples are returned
    unchanged). Samples that are already adversarial are returned as they are (distance 0).

    ``steps`` (optional) caps the number of iterations; by default the walk runs until the budget
    is spent or the source step becomes negligible. ``init_samples`` is the number of uniform
    noise draws tried for the start. In targeted mode, pass ``starting_points`` (a batch of images
    of the target classes, shape of x) or let the noise search look for the target class.

    Example::

        atk = Boundary(model, max_queries=1000)
        x_adv = atk(x, y); atk.queries  # per-sample query counts
    """

    def __init__(self, model, max_queries=500, steps=None, spherical_step=0.01, source_step=0.01,
                 step_adaptation=1.5, init_samples=50, line_search_steps=10, adapt_every=10,
                 starting_points=None, clip=(0.0, 1.0), targeted=False):
        super().__init__(model, clip=clip, targeted=targeted)
        self.max_queries = check_count(max_queries, "max_queries")
        self.steps = None if steps is None else check_count(steps, "steps")
        self.spherical_step = _positive_float(spherical_step, "spherical_step")
        self.source_step = _positive_float(source_step, "source_step")
        self.step_adaptation = _positive_float(step_adaptation, "step_adaptation")
        if self.step_adaptation <= 1.0:
            raise ValueError(f"step_adaptation must be > 1, got {step_adaptation!r}")
        self.init_samples = check_count(init_samples, "init_samples")
        if isinstance(line_search_steps, bool) or not isinstance(line_search_steps, numbers.Integral) \
                or line_search_steps < 0:
            raise ValueError(f"line_search_steps must be an integer >= 0, got {line_search_steps!r}")
        self.line_search_steps = int(line_search_steps)
        self.adapt_every = check_count(adapt_every, "adapt_every")
        if starting_points is not None and not isinstance(starting_points, torch.Tensor):
            raise TypeError(f"starting_points must be a tensor, got {type(starting_points).__name__}")
        self.starting_points = starting_points
        self.queries = None
        self.distances = None

    def perturb(self, x, labels):
        with torch.no_grad():
            return self._attack(x, labels)

    # -- helpers -----------------------------------------------------------------------------
    def _query(self, inputs, idx):
        """Adversarial flags of ``inputs`` (rows of samples ``idx``), counting one query each."""
        self.queries.index_add_(0, idx, torch.ones_like(idx))
        assert int(self.queries.max()) <= self.max_queries
        pred = self.model(inputs).argmax(1)
        lab = self._labels[idx]
        return pred == lab if self.targeted else pred != lab

    def _left(self):
        return self.max_queries - self.queries

    def _dist(self, x, x_adv):
        return (x_adv - x).flatten(1).norm(dim=1)

    def _attack(self, x, labels):
        b, dev = x.shape[0], x.device
        view = (-1,) + (1,) * (x.dim() - 1)
        lo, hi = self.clip
        self._labels = labels
        self.queries = torch.zeros(b, dtype=torch.long, device=dev)
        inf = torch.full((b,), float("inf"), device=dev, dtype=x.dtype)
        all_idx = torch.arange(b, device=dev)

        # 1. is x already adversarial?
        already = self._query(x, all_idx)
        x_adv = x.clone()
        found = already.clone()

        # 2. starting points
        if self.starting_points is not None:
            start = self.starting_points
            if start.shape != x.shape:
                raise ValueError(f"starting_points must have the shape of x {tuple(x.shape)}, "
                                 f"got {tuple(start.shape)}")
            start = start.to(device=dev, dtype=x.dtype).clamp(lo, hi)
            idx = all_idx[~found & (self._left() > 0)]
            if len(idx):
                ok = self._query(start[idx], idx)
                x_adv[idx[ok]] = start[idx[ok]]
                found[idx[ok]] = True
        else:
            for _ in range(self.init_samples):
                idx = all_idx[~found & (self._left() > 0)]
                if not len(idx):
                    break
                noise = lo + (hi - lo) * torch.rand((len(idx),) + x.shape[1:], device=dev, dtype=x.dtype)
                ok = self._query(noise, idx)
                x_adv[idx[ok]] = noise[ok]
                found[idx[ok]] = True
        walk = found & ~already
        dist = torch.where(found, self._dist(x, x_adv), inf)
        self.distances = [dist.clone()]

        # 3. binary search of the blend (1 - e) x + e start, e in [low, high], high adversarial
        low = torch.zeros(b, device=dev, dtype=x.dtype)
        high = torch.ones(b, device=dev, dtype=x.dtype)
        start = x_adv.clone()
        for _ in range(self.line_search_steps):
            idx = all_idx[walk & (self._left() > 0)]
            if not len(idx):
                break
            mid = (low[idx] + high[idx]) / 2
            cand = x[idx] + mid.view(view) * (start[idx] - x[idx])
            ok = self._query(cand, idx)
            high[idx] = torch.where(ok, mid, high[idx])
            low[idx] = torch.where(ok, low[idx], mid)
        x_adv = torch.where(walk.view(view), x + high.view(view) * (start - x), x_adv)
        dist = torch.where(found, self._dist(x, x_adv), inf)
        self.distances.append(dist.clone())

        # 4. the random walk
        sph = torch.full((b,), self.spherical_step, device=dev, dtype=x.dtype)
        src = torch.full((b,), self.source_step, device=dev, dtype=x.dtype)
        sph_ok = torch.zeros(b, device=dev)
        sph_n = torch.zeros(b, device=dev)
        src_ok = torch.zeros(b, device=dev)
        src_n = torch.zeros(b, device=dev)
        it = 0
        while self.steps is None or it < self.steps:
            active = walk & (self._left() > 0) & (src > 1e-7) & (dist > 0)
            if not active.any():
                break
            it += 1
            idx = all_idx[active]
            xs, xa, d = x[idx], x_adv[idx], dist[idx]
            diff = xs - xa
            unit = diff / d.view(view)
            eta = torch.randn_like(xa)
            eta = eta - unit * (eta * unit).flatten(1).sum(1).view(view)
            eta = eta / eta.flatten(1).norm(dim=1).clamp_min(1e-12).view(view) * (sph[idx] * d).view(view)
            sphere = xa + eta  # orthogonal step, then back onto the sphere of radius d around x
            sphere = xs + (sphere - xs) * (d / self._dist(xs, sphere).clamp_min(1e-12)).view(view)
            cand = xs + (sphere - xs) * (1 - src[idx]).view(view)
            sphere, cand = sphere.clamp(lo, hi), cand.clamp(lo, hi)
            two = self._left()[idx] >= 2  # the spherical candidate only while two queries are left
            flags = self._query(torch.cat([sphere[two], cand]), torch.cat([idx[two], idx]))
            s_flag, c_flag = flags[:int(two.sum())], flags[int(two.sum()):]
            new_d = self._dist(xs, cand)
            accept = c_flag & (new_d < d)
            acc_idx = idx[accept]
            x_adv[acc_idx] = cand[accept]
            dist[acc_idx] = new_d[accept]

            # success statistics: source-step rate among samples whose spherical step held
            t_idx = idx[two]
            sph_n[t_idx] += 1
            sph_ok[t_idx] += s_flag.float()
            src_n[t_idx[s_flag]] += 1
            src_ok[t_idx[s_flag]] += c_flag[two][s_flag].float()
            if it % self.adapt_every == 0:
                f = self.step_adaptation
                has = sph_n > 0
                rate = sph_ok / sph_n.clamp_min(1)
                sph = torch.where(has & (rate > 0.5), sph * f, torch.where(has & (rate < 0.2), sph / f, sph))
                has = src_n > 0
                rate = src_ok / src_n.clamp_min(1)
                src = torch.where(has & (rate > 0.5), src * f, torch.where(has & (rate < 0.2), src / f, src))
                # no spherical success at all: the source step is too bold as well
                src = torch.where((sph_n > 0) & (src_n == 0), src / f, src)
                sph, src = sph.clamp(max=1.0), src.clamp(max=0.5)
                sph_ok.zero_(), sph_n.zero_(), src_ok.zero_(), src_n.zero_()
            self.distances.append(dist.clone())
        self.spherical_steps, self.source_steps = sph, src
        del self._labels
        return x_adv
