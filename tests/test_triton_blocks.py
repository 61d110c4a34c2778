"""The shared 1-D block preamble of the Triton kernels: every position once, masked to numel."""
import os

import pytest
import torch

RUNNABLE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not RUNNABLE, reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from stochnet.kernels.blocks import block_range  # noqa: E402

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
BLOCK = 16


@triton.jit
def _positions_kernel(out_ptr, start_ptr, numel, INDEX_64: tl.constexpr, BLOCK: tl.constexpr):
    """out[p] = p + 1 for every valid position p; start_ptr[pid] = the block's start."""
    start, index, valid = block_range(numel, INDEX_64, BLOCK)
    tl.store(out_ptr + index, (index + 1).to(tl.int64), mask=valid)
    tl.store(start_ptr + tl.program_id(0), start.to(tl.int64))


@pytest.mark.parametrize("index_64", [False, True])
@pytest.mark.parametrize("numel", [1, BLOCK, 3 * BLOCK + 5])
def test_block_range_covers_every_position_once(numel, index_64):
    programs = triton.cdiv(numel, BLOCK)
    out = torch.full((programs * BLOCK,), -1, dtype=torch.int64, device=DEVICE)
    starts = torch.full((programs,), -1, dtype=torch.int64, device=DEVICE)
    _positions_kernel[(programs,)](out, starts, numel, INDEX_64=index_64, BLOCK=BLOCK)
    expected = torch.arange(1, numel + 1, device=DEVICE)
    assert torch.equal(out[:numel], expected)
    assert (out[numel:] == -1).all()  # the masked tail of the last block is left alone
    assert torch.equal(starts, torch.arange(programs, device=DEVICE) * BLOCK)
