"""Votes of a base model over n noisy copies per sample, in chunks of bounded size.

The noise layout does not depend on the chunk size, so any ``batch_size`` gives the same
votes for the same seed: sample ``b`` owns the Philox counters from
``offset + b * ceil(n * D / 4)`` on (D elements per sample), and copy ``j`` of it starts at
element ``j * D`` of that block, which is exactly the layout of one
``noisy_repeat(x, n, sigma)`` call whenever ``n * D`` is a multiple of 4 (every image
shape with an even number of pixels). A chunk of copies must start on a counter boundary,
so copy chunks are cut at multiples of ``4 / gcd(D, 4)`` copies.
"""
import math

import torch

from .. import functional as F
from ..ops.philox import draw_seed

WORDS_PER_COUNTER = 4
# Philox offsets are int64 and a pass's offset is drawn below 2**62: its counters must stay below 2**62 too.
MAX_COUNTERS = 1 << 62


class NoisePlan:
    """The chunks of one pass of ``n`` noisy copies for each of ``batch`` samples.

    Each chunk is ``(first_sample, samples, first_copy, copies)`` and holds
    ``samples * copies`` model rows: whole samples (``copies == n``) when ``n`` fits in
    ``batch_size``, else one sample's copies ``first_copy .. first_copy + copies - 1``.
    A chunk has at most ``max(batch_size, 4)`` rows (the 4 only for odd element counts).
    The chunks are made as they are iterated, so a huge ``n`` costs no memory up front.
    """

    def __init__(self, batch, n, per_sample, batch_size):
        self.batch, self.n, self.per_sample = batch, n, per_sample
        self.counters_per_sample = -(-n * per_sample // WORDS_PER_COUNTER)
        if self.counters_per_sample * batch >= MAX_COUNTERS:
            raise ValueError(f"n = {n} noisy copies of {batch} samples of {per_sample} elements need "
                             f"{self.counters_per_sample * batch} Philox counters, more than the {MAX_COUNTERS} "
                             f"one pass may use: lower n or the batch")
        # whole samples per chunk when n copies fit in batch_size, else copies of one sample per chunk
        self.whole_samples = n <= batch_size
        if self.whole_samples:
            self.step = batch_size // n
        else:
            alignment = WORDS_PER_COUNTER // math.gcd(per_sample, WORDS_PER_COUNTER)
            self.step = max(alignment, batch_size - batch_size % alignment)

    @property
    def chunks(self):
        if self.whole_samples:
            for first in range(0, self.batch, self.step):
                yield first, min(self.step, self.batch - first), 0, self.n
            return
        for sample in range(self.batch):
            for first_copy in range(0, self.n, self.step):
                yield sample, 1, first_copy, min(self.step, self.n - first_copy)

    def counter(self, sample, first_copy):
        """The Philox counter (relative to the pass's offset) where a chunk's noise starts."""
        return sample * self.counters_per_sample + first_copy * self.per_sample // WORDS_PER_COUNTER

    def __len__(self):
        if self.whole_samples:
            return -(-self.batch // self.step)
        return self.batch * -(-self.n // self.step)


def noisy_chunk(x, plan, chunk, sigma, philox, backend):
    """The ``samples * copies`` noisy rows of one chunk, copies of a sample adjacent."""
    first, samples, first_copy, copies = chunk
    seed, offset = philox.tolist()

    def stream(sample):
        return torch.tensor([seed, offset + plan.counter(sample, first_copy)], dtype=torch.int64)

    contiguous_layout = (plan.n * plan.per_sample) % WORDS_PER_COUNTER == 0
    if samples == 1 or contiguous_layout:
        return F.noisy_repeat(x[first:first + samples], copies, sigma, backend=backend, philox=stream(first))
    # sample blocks are padded to whole counters here: one call per sample keeps each aligned
    return torch.cat([F.noisy_repeat(x[b:b + 1], copies, sigma, backend=backend, philox=stream(b))
                      for b in range(first, first + samples)])


def vote_totals(engine, x, n, sigma, mode, batch_size, backend=None, on_chunk=None):
    """Per sample, the sum over ``n`` noisy copies of the ``mode`` vote: (B, K).

    The copies go through ``engine`` (a :class:`stochnet.copies.CopyEngine` of the base model),
    so each copy also draws the model's own noise anew. prediction: int64 counts of each class;
    soft: summed softmax (differentiable when grad is enabled); weighted: summed rank weights.
    One (seed, offset) is drawn from torch's generator per call. ``on_chunk()`` is called after
    each chunk (progress). Non-finite scores of the model raise ValueError: they have no vote.
    """
    plan = NoisePlan(x.shape[0], n, x[0].numel(), batch_size)
    philox = draw_seed()
    sums = {}
    for chunk in plan.chunks:
        first, samples, _, copies = chunk
        logits = engine.logits(noisy_chunk(x, plan, chunk, sigma, philox, backend), copies)
        if not bool(torch.isfinite(logits).all()):
            raise ValueError("model returned non-finite scores (NaN or inf) on noisy copies: they have no vote, "
                             "so nothing is predicted or certified")
        votes = F.vote(logits, copies, mode, backend=backend)
        if mode == "soft":
            votes = votes * copies
        sums[first] = votes if first not in sums else sums[first] + votes
        if on_chunk is not None:
            on_chunk()
    return torch.cat([sums[first] for first in sorted(sums)])
