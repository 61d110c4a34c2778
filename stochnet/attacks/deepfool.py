"""DeepFool (Moosavi-Dezfooli et al.): iterative linearization of the decision boundaries."""
import numbers

import torch

from .base import Attack, check_count, check_norm


class DeepFool(Attack):
    """DeepFool, L2 or L-inf (untargeted, minimal-perturbation attack).

    At each step every still-correctly-classified sample linearizes the logit differences
    ``f_k = Z_k - Z_y`` (gradients ``w_k``) of its candidate classes, the ``num_classes - 1``
    classes other than y with the highest logits at x (all classes when None), and steps to
    the nearest linearized boundary:

    * ``norm="l2"``:   ``r = (|f_k| + 1e-4) / ||w_k||_2^2 * w_k``
    * ``norm="linf"``: ``r = (|f_k| + 1e-4) / ||w_k||_1 * sign(w_k)``

    with k minimizing ``|f_k| / ||w_k||_2`` (resp. ``||w_k||_1``). The steps add up to r_tot and
    the candidate is ``clip(x + (1 + overshoot) * r_tot)``; a sample stops as soon as it is
    misclassified, or after ``steps`` steps. The Jacobian rows of all candidates of all active
    samples come from one batched forward and backward pass per step.

    Example::

        x_adv = DeepFool(model, steps=50, overshoot=0.02, norm="l2")(x, y)
    """

    def __init__(self, model, steps=50, overshoot=0.02, norm="l2", num_classes=None, clip=(0.0, 1.0)):
        super().__init__(model, clip=clip, targeted=False)
        self.steps = check_count(steps, "steps")
        if isinstance(overshoot, bool) or not isinstance(overshoot, numbers.Real) or not overshoot >= 0 \
                or overshoot == float("inf"):
            raise ValueError(f"overshoot must be a finite number >= 0, got {overshoot!r}")
        self.overshoot = float(overshoot)
        self.norm = check_norm(norm)
        if num_classes is not None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
                raise ValueError(f"num_classes must be None or an integer >= 2, got {num_classes!r}")
            num_classes = int(num_classes)
        self.num_classes = num_classes

    def set_targeted(self, target_labels=None):
        raise ValueError("DeepFool is an untargeted attack; set_targeted is not supported")

    def perturb(self, x, labels):
        lo, hi = self.clip
        with torch.no_grad():
            logits = self.model(x)
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise ValueError(f"the model must return (B, num_classes >= 2) logits, got {tuple(logits.shape)}")
        n_cls = logits.shape[1]
        if labels.min().item() < 0 or labels.max().item() >= n_cls:
            raise ValueError(f"y must hold class indices in [0, {n_cls}), got values in "
                             f"[{labels.min().item()}, {labels.max().item()}]")
        k = n_cls - 1 if self.num_classes is None else min(self.num_classes, n_cls) - 1
        # candidate classes: the k highest logits at x other than the label
        others = logits.detach().scatter(1, labels.view(-1, 1), float("-inf"))
        candidates = others.topk(k, dim=1).indices  # (B, k)

        shape = x.shape[1:]
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        active = logits.argmax(1) == labels
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            n = idx.numel()
            xa = x_adv[idx]
            cand, lab = candidates[idx], labels[idx]
            # one batch of k * n copies: copy j of sample i differentiates f_{cand[i, j]}
            xr = xa.unsqueeze(0).expand(k, *xa.shape).reshape(k * n, *shape).requires_grad_(True)
            z = self.model(xr)
            cand_r = cand.t().reshape(-1, 1)
            lab_r = lab.repeat(k).view(-1, 1)
            f = z.gather(1, cand_r).squeeze(1) - z.gather(1, lab_r).squeeze(1)
            (grad,) = torch.autograd.grad(f.sum(), xr)
            with torch.no_grad():
                f = f.view(k, n).t()                          # (n, k)
                w = grad.view(k, n, -1).transpose(0, 1)        # (n, k, D)
                if self.norm == "l2":
                    wn = w.norm(dim=2)
                else:
                    wn = w.abs().sum(2)
                dist = f.abs() / (wn + 1e-8)
                best = dist.argmin(1)
                rows = torch.arange(n, device=x.device)
                fk, wk, nk = f[rows, best].abs(), w[rows, best], wn[rows, best]
                if self.norm == "l2":
                    r = ((fk + 1e-4) / (nk.pow(2) + 1e-8)).unsqueeze(1) * wk
                else:
                    r = ((fk + 1e-4) / (nk + 1e-8)).unsqueeze(1) * wk.sign()
                r_tot[idx] = r_tot[idx] + r.view(n, *shape)
                x_adv[idx] = (x[idx] + (1 + self.overshoot) * r_tot[idx]).clamp(lo, hi)
                still = self.model(x_adv[idx]).argmax(1) == lab
                active[idx] = still
        return x_adv
