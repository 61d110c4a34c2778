"""The block of a 1-D Triton launch over memory positions, shared by the elementwise kernels."""
import triton
import triton.language as tl


@triton.jit
def block_range(numel, INDEX_64: tl.constexpr, BLOCK: tl.constexpr):
    """(start, index, valid) of this program's block: positions [pid * BLOCK, (pid + 1) * BLOCK),
    masked to ``numel``. INDEX_64 computes them in int64, for launches whose positions reach 2**31."""
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    start = pid * BLOCK
    index = start + tl.arange(0, BLOCK)
    return start, index, index < numel
