"""Process-group set-up for ``torchrun`` and the (seed, epoch)-deterministic data order."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: rank, world size, the device it trains on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # whether setup_ranks created the process group (and teardown ends it)

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def choose_device(name=None):
    """``name`` ('cpu', 'cuda', 'cuda:1') as a device, checked; None: cuda when available, else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be cpu or cuda[:index], got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:index], got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    return device


def setup_ranks(device=None):
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1):
    NCCL on GPUs (one per local rank), gloo on CPU. A plain run is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = choose_device(device)
    if world_size <= 1:
        return Ranks(device=chosen)
    use_cuda = chosen.type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(), device=chosen, owns_group=owns_group)


def teardown(ranks):
    if ranks.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ranks):
    if ranks.distributed:
        dist.barrier()


def reduce_over_ranks(values, ranks, op=dist.ReduceOp.SUM):
    """A list of numbers reduced element-wise over all ranks with ``op`` (in float64: exact for integer
    counts below 2**53); the list itself on one process."""
    if not ranks.distributed:
        return list(values)
    device = ranks.device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def sum_over_ranks(values, ranks):
    """Element-wise sum of a list of numbers over all ranks (the list itself on one process)."""
    return reduce_over_ranks(values, ranks)


def gather_objects(value, ranks):
    """Every rank's ``value`` as a list indexed by rank."""
    if not ranks.distributed:
        return [value]
    gathered = [None] * ranks.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def epoch_order(num_samples, seed, epoch, rank=0, world_size=1):
    """This rank's sample indices for ``epoch``: a permutation that depends only on (seed, epoch),
    padded by wrapping around to a multiple of ``world_size`` and dealt out by rank, as
    DistributedSampler does. Resuming at an epoch therefore replays its order exactly."""
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    order = torch.randperm(num_samples, generator=generator)
    per_rank = -(-num_samples // world_size)
    padded = torch.cat([order, order[: per_rank * world_size - num_samples]])
    return padded[rank::world_size].tolist()


def rank_seed(seed, rank):
    """The seed of a rank's noise and augmentation stream: distinct per rank, ``seed`` on rank 0."""
    return _mix(seed, rank) if rank else seed


def _mix(a, b):
    # A fixed odd multiplier keeps (seed, epoch) pairs apart; masked to a valid 63-bit seed.
    return (a * 0x9E3779B97F4A7C15 + b) & ((1 << 63) - 1)


class EpochSampler(torch.utils.data.Sampler):
    """A sampler yielding :func:`epoch_order` for the epoch set by :meth:`set_epoch`."""

    def __init__(self, num_samples, seed, ranks):
        self.num_samples, self.seed, self.ranks = num_samples, seed, ranks
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_order(self.num_samples, self.seed, self.epoch, self.ranks.rank, self.ranks.world_size))

    def __len__(self):
        return -(-self.num_samples // self.ranks.world_size)
