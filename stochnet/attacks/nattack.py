"""NAttack (Li et al., ICML 2019): learns a Gaussian search distribution of adversarial examples
from the model's scores alone, so gradient obfuscation does not stop it."""
import torch

from .base import Attack, check_count, check_norm, check_positive, check_seed
from .square import Queries, generator, margin


class NAttack(Attack):
    """NES over a search distribution N(mu, sigma^2) in arctanh space.

    A point ``z`` maps to the image ``proj(lo + (hi - lo) (tanh(w + z) + 1) / 2)``, where
    ``w = arctanh`` of the clean image (squeezed by 1e-6 to stay finite) and ``proj`` projects
    onto the eps ball around the clean image (L-inf: clamp; L2: rescale), so every image is
    inside the ball and inside ``clip``. Each iteration draws ``population`` points
    ``mu + sigma * e_j`` per sample, scores them with the C&W margin ``max(z_y - max_{i!=y} z_i, 0)``,
    z-scores the fitness ``-loss_j`` over the population and moves
    ``mu += lr / (population * sigma) * sum_j fitness_j e_j``. ``mu`` starts at N(0, 0.001^2).

    Pixels at ``lo`` or ``hi`` sit at ``w = +-7.25``, where tanh is flat: as in the paper's code,
    the search cannot move them. On natural images few pixels are there; on MNIST (81% of the
    pixels exactly 0) this leaves only the strokes to perturb and makes NAttack much weaker.

    The mean's image is scored in the same pass as its population; a sample whose mean is
    misclassified stops there (the public code checks every 10 iterations; checking every step
    costs one query in ``population + 1``). Samples misclassified at the clean input stop after
    that one query. Every population member draws a stochastic model's noise anew (the copy
    engine's copies). Samples never fooled get the mean image of lowest margin seen.

    Queries per sample: 1 (clean) + (population + 1) per iteration, at most ``max_iterations``
    iterations and at most ``queries`` in all (None: no cap); ``atk.queries`` (B,) holds the counts
    of the last call. Randomness comes from torch's default generator, or from a private one
    seeded with ``seed``.
    """

    def __init__(self, model, eps, norm="linf", population=300, sigma=0.1, lr=0.02, max_iterations=500,
                 queries=None, seed=None, clip=(0.0, 1.0)):
        super().__init__(model, clip=clip)
        self.eps = check_positive(eps, "eps")
        self.norm = check_norm(norm)
        self.population = check_count(population, "population")
        if self.population < 2:
            raise ValueError(f"population must be an integer >= 2 (the fitness is z-scored), got {population!r}")
        self.sigma = check_positive(sigma, "sigma")
        self.lr = check_positive(lr, "lr")
        self.max_iterations = check_count(max_iterations, "max_iterations")
        self.max_queries = None if queries is None else check_count(queries, "queries")
        self.seed = check_seed(seed)
        self.queries = None

    def _project(self, image, x):
        """``image`` (n, k, ...) into the eps ball around ``x`` (n, 1, ...) and into clip."""
        delta = image - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norm = delta.flatten(2).norm(dim=2).view(*delta.shape[:2], *[1] * (x.dim() - 2))
            delta = delta * (self.eps / norm.clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta).clamp(*self.clip)

    def perturb(self, x, labels):
        with torch.no_grad():
            gen = generator(self.seed, x.device)
            b, pop, shape = x.shape[0], self.population, x.shape[1:]
            query = Queries(self, labels)
            best = margin(query(x, torch.arange(b, device=x.device)), labels, self.targeted)
            fooled = best < 0
            x_adv = x.clone()
            lo, hi = self.clip
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            w = torch.atanh((x - mid) / half * (1 - 1e-6))
            mu = 0.001 * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            steps = self.max_iterations
            if self.max_queries is not None:
                steps = min(steps, (self.max_queries - 1) // (pop + 1))
            for _ in range(steps):
                idx = (~fooled).nonzero().squeeze(1)
                if not len(idx):
                    break
                n = len(idx)
                e = torch.randn((n, pop) + shape, generator=gen, device=x.device, dtype=x.dtype)
                z = mu[idx, None] + self.sigma * torch.cat([torch.zeros_like(e[:, :1]), e], 1)
                xs = x[idx, None]
                images = self._project(mid + half * torch.tanh(w[idx, None] + z), xs)
                logits = query(images.flatten(0, 1), idx, copies=pop + 1)
                m = margin(logits, labels[idx].repeat_interleave(pop + 1), self.targeted).view(n, pop + 1)
                better = m[:, 0] < best[idx]
                x_adv[idx[better]] = images[better, 0]
                best[idx] = torch.minimum(best[idx], m[:, 0])
                fooled[idx] = m[:, 0] < 0
                fitness = -m[:, 1:].clamp(0, 1000)
                fitness = (fitness - fitness.mean(1, keepdim=True)) / (fitness.std(1, correction=0, keepdim=True) + 1e-7)
                step = torch.einsum("np,np...->n...", fitness, e)
                mu[idx] += self.lr / (pop * self.sigma) * step
            self.queries = query.count
        return x_adv
