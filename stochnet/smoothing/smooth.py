"""The smoothed classifier: votes over Gaussian noisy copies, Cohen et al.'s PREDICT and CERTIFY."""
import sys

import torch
from torch import nn

from ..ops.checks import VOTE_MODES
from .certify import binomial_p_value, certified_radius, clopper_pearson_lower
from .checks import check_alpha, check_backend, check_count, check_sigma
from ..copies import CopyEngine
from ..modes import eval_mode
from .sampling import NoisePlan, vote_totals

ABSTAIN = -1


def _check_input(x):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty batch of shape (B, ...), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite: it holds NaN or inf")


class _Progress:
    """A tqdm bar over model chunks on a terminal, shown only once a run passes ``delay`` seconds."""

    def __init__(self, total, description, delay=2.0):
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=description, unit="chunk", delay=delay, leave=False)

    def step(self):
        if self.bar is not None:
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Smooth(nn.Module):
    """A base classifier smoothed by Gaussian noise ``N(0, sigma^2)`` in input space [0, 1].

    ``forward(x)`` returns the smoothed scores (B, K) over ``num_samples`` noisy copies per
    sample: vote fractions ``counts / n`` (``mode="prediction"``), the mean softmax
    (``"soft"``, differentiable in x) or the mean rank weights ``sum 2^-rank / n``
    (``"weighted"``, see :func:`stochnet.functional.vote`). The noise goes on the model's
    input, before the normalization that belongs inside the model, and is not clipped.

    ``predict`` and ``certify`` are Cohen et al.'s PREDICT and CERTIFY on prediction counts,
    batched; they return :data:`ABSTAIN` (-1) where the test does not pass.

    Copies go through the model in chunks of at most ``batch_size`` rows (at most 4 when
    ``batch_size`` is smaller and a sample has an odd element count; the vote of each chunk
    is fused in one pass), so n = 100000 runs in bounded memory (except for a
    differentiable soft forward, whose graph holds every chunk). The votes for one seed do
    not depend on ``batch_size``. Each pass draws its (seed, offset) from torch's default
    generator, so ``torch.manual_seed`` makes every call reproducible. During each call the
    model is in eval mode; the caller's modes are restored afterwards. The copies go through
    :class:`stochnet.copies.CopyEngine`, so each one also draws every noise of the model anew (PNI
    weight noise included), and non-finite inputs or scores raise ValueError: nothing is
    certified on them.
    """

    def __init__(self, model, sigma, num_samples, mode="prediction", batch_size=1000, backend=None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if mode not in VOTE_MODES:
            raise ValueError(f"mode must be one of {VOTE_MODES}, got {mode!r}")
        self.model = model
        self.sigma = check_sigma(sigma)
        self.num_samples = check_count(num_samples, "num_samples")
        self.mode = mode
        self.batch_size = check_count(batch_size, "batch_size")
        self.backend = check_backend(backend)

    def extra_repr(self):
        return f"sigma={self.sigma}, num_samples={self.num_samples}, mode={self.mode!r}, batch_size={self.batch_size}"

    def _totals(self, x, n, mode, progress=None, engine=None):
        return vote_totals(engine or CopyEngine(self.model), x, n, self.sigma, mode, self.batch_size, self.backend,
                           on_chunk=progress.step if progress is not None else None)

    def _chunks(self, x, n):
        return len(NoisePlan(x.shape[0], n, x[0].numel(), self.batch_size))

    def forward(self, x):
        _check_input(x)
        differentiable = self.mode == "soft" and torch.is_grad_enabled()
        with eval_mode(self.model), torch.set_grad_enabled(differentiable):
            totals = self._totals(x, self.num_samples, self.mode)
        scores = totals / self.num_samples
        return scores if self.mode == "soft" else scores.to(x.dtype)

    def predict(self, x, n, alpha):
        """Cohen's PREDICT: the top class of ``n`` votes, or ABSTAIN unless the two-sided
        binomial test of the top count against the runner-up's rejects at level ``alpha``.

        Returns an int64 tensor (B,) on x's device.
        """
        _check_input(x)
        n, alpha = check_count(n, "n"), check_alpha(alpha)
        with eval_mode(self.model), torch.no_grad():
            counts = self._totals(x, n, "prediction")
        top2 = torch.sort(counts, dim=1, descending=True, stable=True)
        top = top2.values[:, 0]
        runner_up = top2.values[:, 1] if counts.shape[1] > 1 else torch.zeros_like(top)
        p_value = torch.from_numpy(binomial_p_value(top, runner_up)).to(x.device)
        return torch.where(p_value > alpha, ABSTAIN, top2.indices[:, 0])

    def certify(self, x, n0, n, alpha):
        """Cohen's CERTIFY: ``n0`` votes choose the class, ``n`` fresh votes count it (nA),
        ``pA_lower`` is the one-sided Clopper-Pearson lower bound at level ``alpha``; ABSTAIN
        when ``pA_lower < 1/2``, else the certified L2 radius ``sigma * Phi^-1(pA_lower)``.

        Returns (classes int64 (B,), radii float32 (B,), 0 where abstaining), on x's device.
        A progress bar shows on a terminal once a run takes more than 2 seconds.
        """
        _check_input(x)
        n0, n, alpha = check_count(n0, "n0"), check_count(n, "n"), check_alpha(alpha)
        progress = _Progress(self._chunks(x, n0) + self._chunks(x, n), "certify")
        try:
            with eval_mode(self.model), torch.no_grad():
                engine = CopyEngine(self.model)  # one probe for both passes
                selected = self._totals(x, n0, "prediction", progress, engine).argmax(1)
                n_a = self._totals(x, n, "prediction", progress, engine).gather(1, selected[:, None]).squeeze(1)
        finally:
            progress.close()
        p_lower = clopper_pearson_lower(n_a, n, alpha)
        certified = torch.from_numpy(p_lower >= 0.5).to(x.device)
        radius = torch.from_numpy(certified_radius(self.sigma, p_lower)).to(x.device, torch.float32)
        return (torch.where(certified, selected, ABSTAIN),
                torch.where(certified, radius, torch.zeros_like(radius)))
