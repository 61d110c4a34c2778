"""Memory-layout helpers shared by the ops: the kernels work on dense tensors in memory order."""
import torch


def is_dense(x):
    """Contiguous, or channels-last for 4-D tensors: the layouts the kernels read in place."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def dense(x):
    """``x`` itself when the kernels can read it, else a contiguous copy."""
    return x if is_dense(x) else x.contiguous()


def memory_order(x):
    """A flat view of a dense tensor in the order of its storage."""
    return x.as_strided((x.numel(),), (1,))


def pack_bits(flags):
    """Pack a dense bool tensor into uint8, bit j of byte b = element 8b + j in memory order."""
    flat = memory_order(flags).to(torch.uint8)
    padded = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8)).view(-1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flags.device)
    return (padded * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(mask, like):
    """Inverse of :func:`pack_bits`: a bool tensor laid out like ``like``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    bits = ((mask.view(-1, 1) >> shifts) & 1).view(-1)[: like.numel()].bool()
    out = torch.empty_like(like, dtype=torch.bool)
    memory_order(out).copy_(bits)
    return out
