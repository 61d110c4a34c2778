"""AutoAttack (Croce & Hein 2020): a fixed suite of parameter-free attacks, worst case per sample."""
import warnings

import torch

from ..copies import repeat_rows
from .apgd import APGD
from .base import Attack, check_budget, check_count, check_norm, check_seed
from .square import Square

VERSIONS = ("standard", "rand")


class AutoAttack(Attack):
    """The AutoAttack suite, called like every attack: ``x_adv = AutoAttack(model, eps)(x, y)``.

    - ``version="standard"``: APGD-CE, APGD-T (targeted DLR over the top 9 classes) and Square
      (5000 queries), for deterministic models. FAB-T, the fourth attack of the original suite,
      is not part of it.
    - ``version="rand"``: APGD-CE and APGD-DLR, each with EOT over ``eot_samples`` (20) noise
      draws, AutoAttack's version for randomized defenses.

    Each attack runs only on the samples still robust. Every candidate is judged on ``checks``
    fresh noise draws (one for a deterministic model), not on the draws the attack optimized
    against: a sample keeps the candidate classified correctly on the fewest draws, and it stays
    robust, so the next attack works on it, while that candidate is classified correctly on any
    draw (a sample fooled on some draws only still has accuracy to lose). After a call,
    ``robust`` is that (B,) mask and ``fooled_by`` counts, per attack, the samples it fooled on
    every draw. ``seed`` (None: torch's default generator) makes a call
    reproducible without touching the caller's random stream. A stochastic model attacked with
    the standard version gets a warning: its numbers are not the honest ones.
    """

    def __init__(self, model, eps, norm="linf", version="standard", seed=None, steps=100, queries=5000,
                 eot_samples=20, checks=5, clip=(0.0, 1.0)):
        super().__init__(model, clip=clip)
        self.eps = check_budget(eps, "eps", allow_zero=False)
        if isinstance(self.eps, torch.Tensor):
            raise TypeError("eps must be a float: AutoAttack takes one budget for every sample")
        self.norm = check_norm(norm)
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
        self.version = version
        self.seed = check_seed(seed)
        self.steps = check_count(steps, "steps")
        self.queries = check_count(queries, "queries")
        self.eot_samples = check_count(eot_samples, "eot_samples")
        self.checks = check_count(checks, "checks")

    def attacks(self):
        """(name, attack) pairs of the suite, in the order they run."""
        common = dict(eps=self.eps, norm=self.norm, steps=self.steps, clip=self.clip)
        if self.version == "rand":
            return [("apgd-ce", APGD(self.model, loss="ce", eot_samples=self.eot_samples, **common)),
                    ("apgd-dlr", APGD(self.model, loss="dlr", eot_samples=self.eot_samples, **common))]
        return [("apgd-ce", APGD(self.model, loss="ce", **common)),
                ("apgd-t", APGD(self.model, loss="dlr", targeted=True, **common)),
                ("square", Square(self.model, eps=self.eps, norm=self.norm, queries=self.queries, clip=self.clip))]

    def perturb(self, x, labels):
        if self.seed is None:
            return self._run(x, labels)
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.manual_seed(self.seed)
            return self._run(x, labels)

    def _run(self, x, labels):
        checks = self.checks if self.engine.is_stochastic(x) else 1
        if self.version == "standard" and checks > 1:
            warnings.warn("AutoAttack(version='standard') on a stochastic model: its gradients and scores change "
                          "from pass to pass, so use version='rand' (EOT) for the honest number", RuntimeWarning,
                          stacklevel=3)
        x_adv = x.clone()
        best = self.correct_fraction(x, labels, checks)
        self.fooled_by = {}
        for name, attack in self.attacks():
            index = (best > 0).nonzero().squeeze(1)
            if index.numel() == 0:
                break
            candidate = attack(x[index], labels[index])
            score = self.correct_fraction(candidate, labels[index], checks)
            better = score < best[index]
            x_adv[index[better]] = candidate[better]
            best[index[better]] = score[better]
            self.fooled_by[name] = int((score == 0).sum())
        self.robust = best > 0
        return x_adv

    def correct_fraction(self, x, labels, checks):
        """The fraction of ``checks`` fresh draws on which each sample is classified correctly."""
        with torch.no_grad():
            logits = self.engine.logits(repeat_rows(x, checks), checks)
        self.check_classes(logits, labels.repeat_interleave(checks))
        return (logits.argmax(1).view(-1, checks) == labels[:, None]).to(x.dtype).mean(1)
