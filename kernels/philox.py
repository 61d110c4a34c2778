"""The Philox4x32-10 noise stream in Triton, shared by every Triton noise kernel.

Stream contract (``csrc/philox.h``): element ``i`` of a call with ``(seed, offset)`` takes word
``i % 4`` of ``tl.randint4x(seed, offset + i // 4)`` (int64 counter); uniforms and normals are
those of ``tl.rand4x`` / ``tl.randn4x``. The helpers below run Philox once per counter (four
elements) and interleave the four results into element order, so a tile never computes a word
it does not use. Every tile row must start at an element index that is a multiple of 4.

Every kernel reads (seed, offset) itself from the op's ``philox`` tensor (int64, shape (2,), on
the data's device) with :func:`load_philox`, so no launcher reads a value on the host. The
launchers at the end take such a tensor: the random start draws its radii with them, and the
tests compare the stream with the pure-torch reference.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .blocks import block_range

BLOCK = 1024
_WORDS, _UNIFORMS, _NORMALS = 0, 1, 2


@triton.jit
def element_order(a0, a1, a2, a3):
    """Interleave per-counter results: (..., n) x 4 -> (..., n, 2, 2), flat index 4k + j holds a_j[k].

    ``join`` appends the new axis last, so the outer join must pair (a0, a2) / (a1, a3) with the
    inner one to put a_j at index (k, j // 2, j % 2).
    """
    return tl.join(tl.join(a0, a2), tl.join(a1, a3))


@triton.jit
def _counters(offset, start, COUNT: tl.constexpr):
    return offset.to(tl.int64) + start // 4 + tl.arange(0, COUNT)


@triton.jit
def words_block(seed, offset, start, BLOCK: tl.constexpr):
    """uint32 words of elements [start, start + BLOCK) in element order; ``start % 4 == 0``."""
    w0, w1, w2, w3 = tl.randint4x(seed, _counters(offset, start, BLOCK // 4))
    return tl.reshape(element_order(w0, w1, w2, w3), (BLOCK,))


@triton.jit
def uniforms_block(seed, offset, start, BLOCK: tl.constexpr):
    """float32 uniforms in [0, 1) of elements [start, start + BLOCK); ``start % 4 == 0``."""
    u0, u1, u2, u3 = tl.rand4x(seed, _counters(offset, start, BLOCK // 4))
    return tl.reshape(element_order(u0, u1, u2, u3), (BLOCK,))


@triton.jit
def normals_block(seed, offset, start, BLOCK: tl.constexpr):
    """float32 normals of elements [start, start + BLOCK); ``start % 4 == 0``."""
    n0, n1, n2, n3 = tl.randn4x(seed, _counters(offset, start, BLOCK // 4))
    return tl.reshape(element_order(n0, n1, n2, n3), (BLOCK,))


@triton.jit
def normals_rows(seed, offset, row_start, BLOCK_K: tl.constexpr):
    """float32 normals of a (R, BLOCK_K) tile: row r holds elements [row_start[r], row_start[r] + BLOCK_K).

    ``row_start`` is an int64 tensor of shape (R,) of multiples of 4.
    """
    counters = offset.to(tl.int64) + row_start[:, None] // 4 + tl.arange(0, BLOCK_K // 4)[None, :]
    n0, n1, n2, n3 = tl.randn4x(seed, counters)
    return tl.reshape(element_order(n0, n1, n2, n3), (row_start.shape[0], BLOCK_K))


@triton.jit
def load_philox(philox_ptr):
    """(seed, offset) of a call: the int64 pair at ``philox_ptr``. The seed's bits are the 64-bit key."""
    return tl.load(philox_ptr), tl.load(philox_ptr + 1)


@triton.jit
def _stream_kernel(out_ptr, philox_ptr, numel, shift, KIND: tl.constexpr, BLOCK: tl.constexpr):
    """Elements [0, numel) of the stream (seed, offset + shift), as words, uniforms or normals."""
    seed, offset = load_philox(philox_ptr)
    offset += shift
    start, index, valid = block_range(numel, True, BLOCK)
    if KIND == 0:
        values = words_block(seed, offset, start, BLOCK).to(tl.int32, bitcast=True)
    elif KIND == 1:
        values = uniforms_block(seed, offset, start, BLOCK)
    else:
        values = normals_block(seed, offset, start, BLOCK)
    tl.store(out_ptr + index, values, mask=valid)


def _stream(kind, dtype, philox, numel, device, shift=0):
    out = torch.empty(numel, dtype=dtype, device=device)
    if numel:
        philox = philox.to(device, non_blocking=True)
        wrap_triton(_stream_kernel)[(triton.cdiv(numel, BLOCK),)](out, philox, numel, shift, KIND=kind, BLOCK=BLOCK)
    return out


def philox_words(philox, numel, device):
    """The first ``numel`` words of the stream ``philox`` = (seed, offset) as int32 (the uint32 bits)."""
    return _stream(_WORDS, torch.int32, philox, numel, device)


def philox_uniform(philox, numel, device, shift=0):
    """The first ``numel`` uniforms (float32 in [0, 1)) of the stream (seed, offset + shift)."""
    return _stream(_UNIFORMS, torch.float32, philox, numel, device, shift)


def philox_normal(philox, numel, device):
    """The first ``numel`` normals of the stream, float32."""
    return _stream(_NORMALS, torch.float32, philox, numel, device)
