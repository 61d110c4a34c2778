"""Carlini-Wagner L2: Adam in tanh space with a per-sample binary search over c."""
import math
import numbers

import torch

from .base import Attack, check_count


def _check_nonneg(value, name, allow_zero=True):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0 or (not allow_zero and value == 0):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


class CW(Attack):
    """Carlini-Wagner L2 attack (Carlini & Wagner, 2017).

    The adversarial example is parametrized as ``x' = lo + (hi - lo) * (tanh(w) + 1) / 2`` so it
    always lies in ``clip``; Adam (learning rate ``lr``, ``steps`` steps) minimizes per sample
    ``||x' - x||_2^2 + c * f(x')`` with the logit margin

    * untargeted: ``f = max(Z_y - max_{i != y} Z_i, -kappa)``
    * targeted:   ``f = max(max_{i != t} Z_i - Z_t, -kappa)``.

    ``binary_search_steps`` outer rounds adapt c per sample, starting from ``c``: it decreases
    (bisection) after a round where the attack succeeded and increases (bisection, or x10 while
    no upper bound is known) where it failed. Each sample keeps its smallest-L2 successful
    example over all rounds and steps, and stays x where none succeeds. Success means
    misclassified (reaching the target when targeted) with margin at least ``kappa``.

    Example::

        x_adv = CW(model, c=1.0, kappa=0.0, steps=100, lr=0.01, binary_search_steps=5)(x, y)
    """

    def __init__(self, model, c=1.0, kappa=0.0, steps=100, lr=0.01, binary_search_steps=5,
                 clip=(0.0, 1.0), targeted=False):
        super().__init__(model, clip=clip, targeted=targeted)
        self.c = _check_nonneg(c, "c", allow_zero=False)
        self.kappa = _check_nonneg(kappa, "kappa")
        self.steps = check_count(steps, "steps")
        self.lr = _check_nonneg(lr, "lr", allow_zero=False)
        self.binary_search_steps = check_count(binary_search_steps, "binary_search_steps")

    def margin(self, logits, labels):
        """Per-sample margin before the -kappa floor: Z_y - max_other (untargeted) or
        max_other - Z_t (targeted); the attack has succeeded when it is <= -kappa (and < 0)."""
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise ValueError(f"the model must return (B, num_classes >= 2) logits, got {tuple(logits.shape)}")
        own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
        mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels.view(-1, 1), True)
        other = logits.masked_fill(mask, float("-inf")).amax(1)
        return other - own if self.targeted else own - other

    def perturb(self, x, labels):
        with torch.no_grad():
            probe = self.model(x[:1])
        self.margin(probe, labels[:1].clamp(0, max(probe.shape[-1] - 1, 0)))  # checks the logits' shape
        n_cls = probe.shape[1]
        if labels.min().item() < 0 or labels.max().item() >= n_cls:
            raise ValueError(f"{'target_labels' if self.targeted else 'y'} must hold class indices in "
                             f"[0, {n_cls}), got values in [{labels.min().item()}, {labels.max().item()}]")
        lo, hi = self.clip
        batch = x.shape[0]
        view = (-1,) + (1,) * (x.dim() - 1)
        # w0 with tanh(w0) mapping back onto x (clamped so atanh stays finite)
        unit = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)
        w0 = torch.atanh(unit)
        c = torch.full((batch,), self.c, dtype=x.dtype, device=x.device)
        lower = torch.zeros_like(c)
        upper = torch.full_like(c, math.inf)
        best_l2 = torch.full_like(c, math.inf)
        best = x.clone()
        for _ in range(self.binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            succeeded = torch.zeros(batch, dtype=torch.bool, device=x.device)
            for _ in range(self.steps):
                x_adv = lo + (hi - lo) * (torch.tanh(w) + 1) / 2
                logits = self.model(x_adv)
                margin = self.margin(logits, labels)
                l2 = (x_adv - x).flatten(1).pow(2).sum(1)
                loss = (l2 + c * margin.clamp(min=-self.kappa)).sum()
                (grad,) = torch.autograd.grad(loss, w)
                with torch.no_grad():
                    ok = self.success(logits, labels) & (margin <= -self.kappa)
                    improved = ok & (l2 < best_l2)
                    best_l2 = torch.where(improved, l2, best_l2)
                    best = torch.where(improved.view(view), x_adv.detach(), best)
                    succeeded |= ok
                opt.zero_grad(set_to_none=True)
                w.grad = grad
                opt.step()
            with torch.no_grad():
                # the point reached after the last Adam step
                x_adv = lo + (hi - lo) * (torch.tanh(w) + 1) / 2
                logits = self.model(x_adv)
                ok = self.success(logits, labels) & (self.margin(logits, labels) <= -self.kappa)
                l2 = (x_adv - x).flatten(1).pow(2).sum(1)
                improved = ok & (l2 < best_l2)
                best_l2 = torch.where(improved, l2, best_l2)
                best = torch.where(improved.view(view), x_adv, best)
                succeeded |= ok
                upper = torch.where(succeeded, torch.minimum(upper, c), upper)
                lower = torch.where(succeeded, lower, torch.maximum(lower, c))
                c = torch.where(torch.isfinite(upper), (lower + upper) / 2, c * 10)
        return best
