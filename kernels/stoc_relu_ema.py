"""StocReLU-EMA (ANIS^2) in Triton: ``y = relu(x + scale[c] * z)`` with a packed 1-bit mask,
per-channel statistics of ``x`` in training, and the masked-gradient backward.

The kernels see a dense ``x`` as a row-major (M, K) matrix of its memory:

- planar layout (contiguous (N, C, inner...)): M = N * C planes of K = inner elements, the
  channel of row m is m % C;
- rows layout (channels-last 4-D, 2-D (N, C), or planar with inner == 1): M rows of K = C
  elements, the channel of column k is k.

When K % 8 == 0 every tile row starts on a whole mask byte (and so on a Philox counter), and one
2-D kernel does the whole forward in one pass over memory: noise, y, mask and, in training, the
per-tile statistics of x. Otherwise a 1-D kernel over memory-order blocks writes y and the mask,
and in training the same 2-D kernel with the noise switched off reads x once more for the
statistics.

Statistics: each tile reduces its part of every channel it holds to (shift, sum(d), sum(d^2)),
d = x - shift, shift = the tile's mean, all in float64 as the reference (a float32 d^2 overflows
for |d| > 1.8e19; the corrected two-pass algorithm keeps |mean| >> std accurate). Torch merges
the partials per channel with Chan's formula into the updated sigma, a new tensor: the noise
uses the old sigma and ``running_sigma`` itself is never written (the caller copies the result).

Ops ``stochnet_triton::stoc_relu_ema`` -> (y, mask, new sigma) and ``stoc_relu_ema_backward``,
the schemas of csrc/ops.cpp; the noise kernels read (seed, offset) from ``philox``. Fake and
autograd: stochnet/ops/stoc_relu_ema.py.
"""
import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from stochnet.ops import checks
from stochnet.ops.layout import is_dense
from stochnet.ops.library import triton_op

from .blocks import block_range
from .philox import load_philox, normals_block, normals_rows

# Elements per program (a power of two); rows-layout tiles take at most _ROWS_BLOCK_K channels so
# that a tile is tall and its per-column partials stay a few percent of the data.
_TILE = 2048
_ROWS_BLOCK_K = 64
_BLOCK_1D = 2048
_PLANAR, _ROWS = 0, 1


@triton.jit
def _relu_and_bits(x, scale, z, valid):
    """v = x + scale * z in x's dtype; returns (relu(v) propagating NaN, bit [v > 0] as int32)."""
    v = x + scale * z.to(x.dtype)
    y = tl.where(v < 0, 0.0, v)  # -0 and NaN pass through, as torch.relu
    return y, (valid & (v > 0)).to(tl.int32)


@triton.jit
def _tile_kernel(x_ptr, scale_ptr, y_ptr, mask_ptr, shift_ptr, dsum_ptr, dsq_ptr,
                 M, K, C, philox_ptr,
                 CHANNEL_AXIS: tl.constexpr, WRITE_Y: tl.constexpr, STATS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """One (BLOCK_M, BLOCK_K) tile of the (M, K) view; WRITE_Y requires K % 8 == 0."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    col0 = pid_k * BLOCK_K
    cols = col0 + tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < K
    valid = row_ok[:, None] & col_ok[None, :]
    row_start = rows * K + col0
    index = row_start[:, None] + tl.arange(0, BLOCK_K)[None, :]
    x = tl.load(x_ptr + index, mask=valid, other=0.0).to(scale_ptr.dtype.element_ty)

    if WRITE_Y:
        if CHANNEL_AXIS == 0:
            scale = tl.load(scale_ptr + rows % C, mask=row_ok, other=0.0)[:, None]
        else:
            scale = tl.load(scale_ptr + cols, mask=col_ok, other=0.0)[None, :]
        seed, offset = load_philox(philox_ptr)
        z = normals_rows(seed, offset, row_start, BLOCK_K)
        y, bits = _relu_and_bits(x, scale, z, valid)
        tl.store(y_ptr + index, y.to(y_ptr.dtype.element_ty), mask=valid)
        bits = tl.reshape(bits, (BLOCK_M, BLOCK_K // 8, 8)) << tl.arange(0, 8)[None, None, :]
        byte = tl.arange(0, BLOCK_K // 8)
        byte_ok = row_ok[:, None] & (col0 + 8 * byte < K)[None, :]
        tl.store(mask_ptr + row_start[:, None] // 8 + byte[None, :], tl.sum(bits, axis=2).to(tl.uint8),
                 mask=byte_ok)

    if STATS:
        # Reduce over the tile's extent of the non-channel axis; count is the same for every channel.
        x = x.to(tl.float64)
        if CHANNEL_AXIS == 0:
            count = tl.minimum(BLOCK_K, K - col0)
            shift = tl.sum(x, axis=1) / count
            d = tl.where(valid, x - shift[:, None], 0.0)
            slot = rows * tl.num_programs(1) + pid_k
            tl.store(shift_ptr + slot, shift, mask=row_ok)
            tl.store(dsum_ptr + slot, tl.sum(d, axis=1), mask=row_ok)
            tl.store(dsq_ptr + slot, tl.sum(d * d, axis=1), mask=row_ok)
        else:
            count = tl.minimum(BLOCK_M, M - pid_m.to(tl.int64) * BLOCK_M)
            shift = tl.sum(x, axis=0) / count
            d = tl.where(valid, x - shift[None, :], 0.0)
            slot = pid_m.to(tl.int64) * K + cols
            tl.store(shift_ptr + slot, shift, mask=col_ok)
            tl.store(dsum_ptr + slot, tl.sum(d, axis=0), mask=col_ok)
            tl.store(dsq_ptr + slot, tl.sum(d * d, axis=0), mask=col_ok)


@triton.jit
def _flat_kernel(x_ptr, scale_ptr, y_ptr, mask_ptr, numel, K, C, philox_ptr,
                 INDEX_64: tl.constexpr, BLOCK: tl.constexpr):
    """y and mask for memory positions [pid * BLOCK, (pid + 1) * BLOCK); channel = (p // K) % C."""
    seed, offset = load_philox(philox_ptr)
    start, index, valid = block_range(numel, INDEX_64, BLOCK)
    x = tl.load(x_ptr + index, mask=valid, other=0.0).to(scale_ptr.dtype.element_ty)
    scale = tl.load(scale_ptr + (index // K) % C, mask=valid, other=0.0)
    z = normals_block(seed, offset, start, BLOCK)
    y, bits = _relu_and_bits(x, scale, z, valid)
    tl.store(y_ptr + index, y.to(y_ptr.dtype.element_ty), mask=valid)
    bits = tl.reshape(bits, (BLOCK // 8, 8)) << tl.arange(0, 8)[None, :]
    byte = start // 8 + tl.arange(0, BLOCK // 8)
    tl.store(mask_ptr + byte, tl.sum(bits, axis=1).to(tl.uint8), mask=byte < (numel + 7) // 8)


@triton.jit
def _mask_backward_kernel(grad_ptr, mask_ptr, out_ptr, numel, INDEX_64: tl.constexpr, BLOCK: tl.constexpr):
    start, index, valid = block_range(numel, INDEX_64, BLOCK)
    grad = tl.load(grad_ptr + index, mask=valid, other=0.0)
    byte = start // 8 + tl.arange(0, BLOCK // 8)
    packed = tl.load(mask_ptr + byte, mask=byte < (numel + 7) // 8, other=0).to(tl.int32)
    bits = tl.reshape((packed[:, None] >> tl.arange(0, 8)[None, :]) & 1, (BLOCK,))
    tl.store(out_ptr + index, tl.where(bits != 0, grad, 0.0), mask=valid)


def _check_dense(t, name):
    torch._check_value(is_dense(t), lambda: f"{name} must be contiguous or channels-last (4-D) for the Triton "
                       f"kernels, got strides {t.stride()} for shape {tuple(t.shape)}")


def _matrix_view(x):
    """(M, K, channel axis) of the row-major memory matrix of a dense ``x``."""
    channels = x.shape[1]
    inner = x.numel() // (x.shape[0] * channels)
    if x.dim() > 2 and x.is_contiguous() and inner > 1:
        return x.shape[0] * channels, inner, _PLANAR
    return x.numel() // channels, channels, _ROWS


def _tile_shape(M, K, axis):
    block_k = min(triton.next_power_of_2(K), _TILE if axis == _PLANAR else _ROWS_BLOCK_K)
    return min(triton.next_power_of_2(M), max(1, _TILE // block_k)), block_k


def _merged_std(shift, dsum, dsq, count, dims):
    """Unbiased std per channel from float64 per-tile (shift, sum d, sum d^2), merged over ``dims``."""
    count = count.double().expand_as(shift)
    mean = shift + dsum / count
    m2 = dsq - dsum * dsum / count
    total = count.sum(dims)
    grand = (count * mean).sum(dims) / total
    grand_b = grand.view([-1 if d not in dims else 1 for d in range(mean.dim())])
    m2 = m2.sum(dims) + (count * (mean - grand_b) ** 2).sum(dims)
    return torch.sqrt(m2.clamp_min(0) / (total - 1))


def _channel_std(x, scale, M, K, axis, philox, write_y, y, mask):
    """Launch the tile kernel with statistics; returns the unbiased std of every channel."""
    block_m, block_k = _tile_shape(M, K, axis)
    grid = (triton.cdiv(M, block_m), triton.cdiv(K, block_k))
    slots = (M, grid[1]) if axis == _PLANAR else (grid[0], K)
    shift, dsum, dsq = (torch.empty(slots, dtype=torch.float64, device=x.device) for _ in range(3))
    wrap_triton(_tile_kernel)[grid](x, scale, y, mask, shift, dsum, dsq, M, K, x.shape[1], philox,
                                    CHANNEL_AXIS=axis, WRITE_Y=write_y, STATS=True, BLOCK_M=block_m,
                                    BLOCK_K=block_k, enable_fp_fusion=False)
    if axis == _PLANAR:
        tile = torch.arange(grid[1], device=x.device)
        count = torch.clamp(K - tile * block_k, max=block_k)
        shape = (x.shape[0], x.shape[1], grid[1])
        return _merged_std(shift.view(shape), dsum.view(shape), dsq.view(shape), count, (0, 2))
    tile = torch.arange(grid[0], device=x.device)
    count = torch.clamp(M - tile * block_m, max=block_m).view(-1, 1)
    return _merged_std(shift, dsum, dsq, count, (0,))


@triton_op("stochnet_triton::stoc_relu_ema", mutates_args=())
def stoc_relu_ema(x: torch.Tensor, running_sigma: torch.Tensor, gamma: float, momentum: float, training: bool,
                  philox: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward on a dense ``x``: (``y`` laid out like ``x``, the packed uint8 mask, the new sigma).

    The new sigma is a copy of ``running_sigma``, updated in training from the statistics of x
    (its old value scales the noise); ``running_sigma`` is left alone.
    """
    checks.stoc_relu_ema(x, running_sigma, gamma, momentum, training)
    checks.philox(philox)
    _check_dense(x, "x")
    philox = philox.to(x.device, non_blocking=True)
    compute = checks.compute_dtype(x.dtype)
    # Same arithmetic as the reference: sigma in the compute dtype times sqrt(gamma) rounded to it.
    scale = running_sigma.to(compute) * math.sqrt(gamma)
    y = torch.empty_like(x)
    mask = torch.empty((x.numel() + 7) // 8, dtype=torch.uint8, device=x.device)
    sigma = running_sigma.clone()
    M, K, axis = _matrix_view(x)
    fused = K % 8 == 0
    if not fused:
        index_64 = x.numel() + _BLOCK_1D >= 2**31
        inner = 1 if axis == _ROWS else K
        wrap_triton(_flat_kernel)[(triton.cdiv(x.numel(), _BLOCK_1D),)](
            x, scale, y, mask, x.numel(), inner, x.shape[1], philox,
            INDEX_64=index_64, BLOCK=_BLOCK_1D, enable_fp_fusion=False)
    if training:
        std = _channel_std(x, scale, M, K, axis, philox, fused, y, mask)
        sigma.copy_((1 - momentum) * running_sigma.double() + momentum * std)
    elif fused:
        block_m, block_k = _tile_shape(M, K, axis)
        grid = (triton.cdiv(M, block_m), triton.cdiv(K, block_k))
        wrap_triton(_tile_kernel)[grid](x, scale, y, mask, scale, scale, scale, M, K, x.shape[1], philox,
                                        CHANNEL_AXIS=axis, WRITE_Y=True, STATS=False, BLOCK_M=block_m,
                                        BLOCK_K=block_k, enable_fp_fusion=False)
    return y, mask, sigma


@triton_op("stochnet_triton::stoc_relu_ema_backward", mutates_args=())
def stoc_relu_ema_backward(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``grad`` where the mask bit of its memory position is set, else 0; laid out like ``grad``."""
    checks.mask_backward(grad, mask)
    _check_dense(grad, "grad")
    out = torch.empty_like(grad)
    wrap_triton(_mask_backward_kernel)[(triton.cdiv(grad.numel(), _BLOCK_1D),)](
        grad, mask, out, grad.numel(), INDEX_64=grad.numel() + _BLOCK_1D >= 2**31, BLOCK=_BLOCK_1D)
    return out
