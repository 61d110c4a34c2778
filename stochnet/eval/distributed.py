"""Evaluation sharded over ``torchrun`` processes: each rank scores its shard of the test images,
the counts are summed over ranks, and rank 0 summarizes them as one process would."""
import torch.distributed as dist

from ..train.distributed import reduce_over_ranks
from .robust import COUNT_KEYS


def shard_indices(num_samples, rank=0, world_size=1):
    """Rank ``rank``'s contiguous shard of ``range(num_samples)``: ceil(n / world_size) images per
    rank in rank order, the last ranks with fewer (or none, e.g. 1 image on 2 ranks). The shards
    are disjoint and cover every image once, so their counts add up to the whole set's."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    per_rank = -(-num_samples // world_size)
    start = min(rank * per_rank, num_samples)
    return range(start, min(start + per_rank, num_samples))


def sum_counts(counts, ranks):
    """Per-repeat counts (:func:`stochnet.eval.robust.robust_counts`) summed over ranks. Every rank
    must call it with the same number of repeats, a rank with an empty shard included."""
    flat = [c[key] for c in counts for key in COUNT_KEYS]
    summed = reduce_over_ranks(flat, ranks, dist.ReduceOp.SUM)
    width = len(COUNT_KEYS)
    return [{key: int(round(summed[i * width + j])) for j, key in enumerate(COUNT_KEYS)}
            for i in range(len(counts))]


def max_over_ranks(value, ranks):
    """The largest ``value`` over ranks (e.g. a row's seconds: the slowest rank's)."""
    return reduce_over_ranks([value], ranks, dist.ReduceOp.MAX)[0]


def any_over_ranks(flag, ranks):
    """Whether ``flag`` is true on any rank (so that all ranks take the same decision)."""
    return bool(reduce_over_ranks([1.0 if flag else 0.0], ranks, dist.ReduceOp.MAX)[0])
