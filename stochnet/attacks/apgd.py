"""APGD (Croce & Hein, ICML 2020): PGD with momentum and a step size that adapts at checkpoints."""
import math
import numbers
from fractions import Fraction
from types import SimpleNamespace

import torch
import torch.nn.functional as nnf

from .. import functional as F
from ..copies import per_copy_mean, repeat_rows
from ..ops import pgd as pgd_ops
from ..ops.philox import draw_seed
from .base import Attack, check_budget, check_count, check_norm, check_seed, steps_between_drops
from .losses import dlr_loss, targeted_dlr_loss

LOSSES = ("ce", "dlr")
MOMENTUM = 0.75


def checkpoints(steps):
    """The iterations ``ceil(p_j * steps)`` where APGD may halve its step: ``p_0 = 0``, ``p_1 = 0.22``,
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` while ``p_j <= 1``, in exact fractions (in
    floats 0.41 * 100 rounds up to 42). Few steps make equal iterations; they count once."""
    marks, before, p = [0], Fraction(0), Fraction(22, 100)
    while p <= 1:
        marks.append(math.ceil(p * steps))
        before, p = p, p + max(p - before - Fraction(3, 100), Fraction(6, 100))
    return sorted(set(marks))


class _State(SimpleNamespace):
    """The per-sample state of a run, every field indexed by sample: dropping samples is indexing."""

    def select(self, index):
        return _State(**{name: value[index] for name, value in vars(self).items()})


def _where(mask, a, b):
    return torch.where(mask.view(-1, *[1] * (a.dim() - 1)), a, b)


def _fooled(logits, y):
    """(s, c, K) logits -> (s,): every copy of the sample misclassified."""
    return (logits.argmax(-1) != y[:, None]).all(1)


class APGD(Attack):
    """Auto-PGD: ``steps`` steps in the ``norm`` ball of radius ``eps`` with no step size to tune.

    The step starts at ``2 eps`` per sample; each step goes to ``z = P(x_k + step * dir(grad))`` and
    then, with momentum 0.75 from the second step on, to ``P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))``.
    At the :func:`checkpoints` a sample halves its step and restarts from its highest-loss point when its
    loss rose in fewer than ``rho`` of the steps since the last checkpoint, or when neither its step nor
    its best loss changed since then. The start is uniform in the ball
    (:func:`stochnet.functional.random_start`; AutoAttack rescales it so that its largest coordinate,
    resp. its norm, is eps: the same up to a factor that is about 1 in image dimensions).

    ``loss``: 'ce' (cross-entropy) or 'dlr' (:func:`~stochnet.attacks.losses.dlr_loss`, invariant to a
    shift or scale of the logits). ``targeted=True`` is AutoAttack's APGD-T (y are the true labels): one
    run towards each of the ``n_target_classes`` highest other classes of the clean input in turn, with
    the targeted DLR (or, with loss 'ce', minus the cross-entropy of the target). As in AutoAttack, the
    aim stays misclassification: a sample is done as soon as any class but y wins, the target or not.

    Every loss and gradient goes through :class:`stochnet.copies.CopyEngine`: ``eot_samples`` copies,
    each with all of the model's noise drawn anew, and the loss is their mean (EOT). A sample is fooled
    when every copy of one step is misclassified; samples the clean input already fools on every copy
    are not attacked. The output is the first fooled point of a sample, else its highest-loss point
    over all runs; ``restarts`` more runs from new random starts (and the next targets) only run on the
    samples not fooled yet. Fooled samples leave the batch, so later steps cost less: on CPU at once, on
    GPU at the checkpoints and every :data:`~stochnet.attacks.base.DROP_EVERY` steps, the only times
    the step loop waits on the device.

    ``seed`` (an int) draws the random starts from a generator of its own, the same on every call;
    None draws them from torch's default generator, which the model's noise always uses.

    Example::

        x_adv = APGD(model, eps=8/255, steps=100, loss="dlr", eot_samples=20)(x, y)
    """

    def __init__(self, model, eps=8 / 255, norm="linf", steps=100, loss="ce", eot_samples=1, restarts=1,
                 targeted=False, n_target_classes=9, rho=0.75, seed=None, clip=(0.0, 1.0)):
        super().__init__(model, clip=clip, targeted=targeted)
        if isinstance(eps, torch.Tensor):
            raise TypeError("eps must be a float: one budget for the batch (the step sizes are per sample)")
        self.eps = float(check_budget(eps, "eps", allow_zero=False))
        self.norm = check_norm(norm)
        self.steps = check_count(steps, "steps")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss_name = loss
        self.eot_samples = check_count(eot_samples, "eot_samples")
        self.restarts = check_count(restarts, "restarts")
        self.n_target_classes = check_count(n_target_classes, "n_target_classes")
        if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not 0 < rho <= 1:
            raise ValueError(f"rho must be a number in (0, 1], got {rho!r}")
        self.rho = float(rho)
        self.seed = check_seed(seed)

    def set_targeted(self, target_labels=None):
        """APGD-T: it picks its targets itself, from the clean logits."""
        if target_labels is not None:
            raise ValueError("APGD's targeted mode is APGD-T, which picks its own targets: "
                             "pass the true labels as y and no target_labels")
        return super().set_targeted()

    def perturb(self, x, y):
        with torch.no_grad():
            clean = self._clean_logits(x, y)
        result = SimpleNamespace(x=x.clone(), loss=torch.full_like(y, -math.inf, dtype=x.dtype),
                                 fooled=_fooled(clean, y))
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        for labels in self._label_sets(clean, y):
            for _ in range(self.restarts):
                ids = (~result.fooled).nonzero().squeeze(1)
                if ids.numel() == 0:
                    return result.x
                self._run(x[ids], labels[ids], ids, result, generator)
        return result.x

    def _clean_logits(self, x, y):
        """(B, c, K) clean logits, c copies of a stochastic model (one of a deterministic one); the
        engine checks that the model returns (rows, K), and the arguments that depend on K are checked here."""
        copies = self.eot_samples if self.engine.is_stochastic(x) else 1
        logits = self.engine.logits(repeat_rows(x, copies), copies)
        self.check_classes(logits, y.repeat_interleave(copies))
        classes = logits.shape[1]
        if self.targeted and self.n_target_classes > classes - 1:
            raise ValueError(f"n_target_classes must be in [1, {classes - 1}] for a model of {classes} classes, "
                             f"got {self.n_target_classes}")
        needed = 4 if self.targeted else 3
        if self.loss_name == "dlr" and classes < needed:
            raise ValueError(f"loss 'dlr'{' (targeted)' if self.targeted else ''} needs at least {needed} "
                             f"classes, the model has {classes}")
        return logits.view(x.shape[0], -1, classes)

    def _label_sets(self, clean, y):
        """What each run's loss takes per sample: y; for APGD-T, (y, target) pairs, one set per target,
        the targets ranked by the clean logits (mean over copies) with y left out."""
        if not self.targeted:
            return [y]
        ranked = clean.mean(1).scatter(1, y[:, None], math.inf).argsort(1, descending=True)
        return [torch.stack([y, ranked[:, rank]], 1) for rank in range(1, self.n_target_classes + 1)]

    def loss(self, logits, labels):
        """Per-row loss to ascend; ``labels`` are y, or (y, target) pairs (R, 2) for APGD-T."""
        if not self.targeted:
            if self.loss_name == "ce":
                return nnf.cross_entropy(logits, labels, reduction="none")
            return dlr_loss(logits, labels)
        y, target = labels.unbind(1)
        if self.loss_name == "ce":
            return -nnf.cross_entropy(logits, target, reduction="none")
        return targeted_dlr_loss(logits, y, target)

    def _copies_loss(self, logits, labels, copies):
        return per_copy_mean(self.loss(logits, labels.repeat_interleave(copies, 0)), copies)

    def _true_labels(self, labels):
        return labels[:, 0] if self.targeted else labels

    def _evaluate(self, st):
        """Gradient, loss and fooled flags at ``st.x``."""
        grad, loss, logits = self.engine.input_grad(st.x, st.labels, self.eot_samples, self._copies_loss)
        return grad, loss, _fooled(logits, self._true_labels(st.labels))

    def _run(self, x0, labels, ids, result, generator):
        """One run from a random start on the samples ``ids`` of the batch; keeps its best in ``result``."""
        with torch.no_grad():
            x = F.random_start(x0, self.eps, norm=self.norm, clip=self.clip, philox=draw_seed(x0.device, generator))
        st = _State(x0=x0, labels=labels, ids=ids, x=x, x_prev=x,
                    step=torch.full((x0.shape[0],), 2 * self.eps, dtype=x0.dtype, device=x0.device),
                    reduced=torch.zeros_like(ids, dtype=torch.bool), increases=torch.zeros_like(ids))
        st.grad, st.loss_prev, st.done = self._evaluate(st)
        st.x_best, st.grad_best, st.best_loss = st.x, st.grad, st.loss_prev
        st.best_at_check = st.best_loss
        marks = [mark for mark in checkpoints(self.steps)[1:] if mark < self.steps]
        last = 0
        every = steps_between_drops(x0)
        for k in range(1, self.steps + 1):
            self._step(st, momentum=k > 1)
            if k in marks:
                self._checkpoint(st, k - last)
                last = k
            if k in marks or k % every == 0:
                self._store(result, st)
                keep = (~st.done).nonzero().squeeze(1)
                if keep.numel() == 0:
                    return
                if keep.numel() < st.ids.numel():
                    st = st.select(keep)
        self._store(result, st)

    def _step(self, st, momentum):
        with torch.no_grad():
            lo, hi = self.clip
            # The fused op, below the public wrapper: that one reads per-sample step sizes back to the host.
            x = pgd_ops.pgd_step(st.x, st.grad, st.x0, self.eps, st.step, self.norm, lo, hi, None)
            if momentum:
                x = torch.lerp(st.x, x, MOMENTUM).add_(st.x, alpha=1 - MOMENTUM).sub_(st.x_prev, alpha=1 - MOMENTUM)
                x = self._project(x, st.x0)
            st.x_prev, st.x = st.x, x
        grad, loss, fooled = self._evaluate(st)
        # A fooled sample keeps its first fooled point as its best: that is what it returns.
        fresh = fooled & ~st.done
        improved = fresh | (~st.done & (loss > st.best_loss))
        st.increases += loss > st.loss_prev
        st.x_best = _where(improved, st.x, st.x_best)
        st.grad_best = _where(improved, grad, st.grad_best)
        st.best_loss = torch.where(improved, loss, st.best_loss)
        st.grad, st.loss_prev, st.done = grad, loss, st.done | fooled

    def _project(self, x, x0):
        """``x`` (modified in place) projected onto the eps ball around ``x0`` and clipped."""
        delta = x.sub_(x0)
        if self.norm == "linf":
            delta.clamp_(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1)
            delta.mul_((self.eps / norms.clamp_min(1e-12)).clamp_max(1.0).view(-1, *[1] * (x.dim() - 1)))
        return delta.add_(x0).clamp_(*self.clip)

    def _checkpoint(self, st, span):
        """Halve the step and go back to the best point where the last ``span`` steps made too little progress."""
        stalled = ~st.reduced & (st.best_loss <= st.best_at_check)
        reduce = (st.increases < self.rho * span) | stalled
        st.step = torch.where(reduce, st.step / 2, st.step)
        st.x = _where(reduce, st.x_best, st.x)
        st.grad = _where(reduce, st.grad_best, st.grad)
        st.loss_prev = torch.where(reduce, st.best_loss, st.loss_prev)
        st.reduced, st.best_at_check = reduce, st.best_loss
        st.increases = torch.zeros_like(st.increases)

    @staticmethod
    def _store(result, st):
        """Keep a sample's run result if it fooled the model or beats the loss kept so far (a run's best
        loss only grows, so storing before the run ends is safe)."""
        better = st.done | (st.best_loss > result.loss[st.ids])
        result.x[st.ids] = _where(better, st.x_best, result.x[st.ids])
        result.loss[st.ids] = torch.where(better, st.best_loss, result.loss[st.ids])
        result.fooled[st.ids] = result.fooled[st.ids] | st.done


class APGDT(APGD):
    """APGD-T (AutoAttack): :class:`APGD` with the targeted DLR loss, towards each of the
    ``n_target_classes`` highest other classes of the clean input in turn."""

    def __init__(self, model, eps=8 / 255, norm="linf", steps=100, eot_samples=1, restarts=1,
                 n_target_classes=9, rho=0.75, seed=None, clip=(0.0, 1.0)):
        super().__init__(model, eps=eps, norm=norm, steps=steps, loss="dlr", eot_samples=eot_samples,
                         restarts=restarts, targeted=True, n_target_classes=n_target_classes, rho=rho,
                         seed=seed, clip=clip)
