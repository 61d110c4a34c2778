"""Noise injection in Triton: ``y = x + theta[idx(p)] * z_p`` and the fused ``d theta`` reduction.

``x`` is contiguous (N, C, *) and element ``p`` (its memory position) takes normal ``p`` of the
stream. ``theta`` has one element (scalar: idx = 0), C elements (per channel:
idx = (p // inner) % C, inner = prod(shape[2:])) or F = numel / N elements (per element of the
feature map: idx = p % F).

Forward: one 1-D kernel over memory-order blocks; the product ``theta * z`` is rounded to the
compute dtype (float64 for float64 x, else float32) before the add (``enable_fp_fusion=False``).

Backward: ``d theta`` = sum of ``grad * z`` over the elements mapped to each theta entry, with z
regenerated inside the reduction kernel. The kernel sees ``grad`` as a row-major (M, K) matrix
(scalar or per channel with planes of >= 32 elements: (N * C, inner); otherwise (N, F); torch
then folds the row / column sums to channels and, for a scalar, to one total). Row r starts at
element r * K, which need not be a multiple of 4 (a Philox counter boundary): each row is read in
windows that start at the aligned element ``r * K - (r * K) % 4`` and the elements outside the
row are masked off. Then

- AXIS 1 sums each row window: partials (M, column tiles), merged per channel / in total;
- AXIS 0 sums over rows: a row with shift s = (r * K) % 4 puts column f at window position f + s,
  so rows are summed per shift class into partials (programs, shifts, width) and torch adds
  class s at offset s. A program loops over several row tiles (BLOCK_M a multiple of 4 keeps the
  shift of each tile row fixed) so the partials stay small.

Partial sums are in float32 (float64 for float64 grad); torch merges them in float64.

Ops ``stochnet_triton::perturb`` and ``perturb_backward``, the schemas of csrc/ops.cpp; every
kernel reads (seed, offset) from ``philox``. Fake and autograd: stochnet/ops/perturb.py.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from stochnet.ops import checks
from stochnet.ops.library import triton_op

from .blocks import block_range
from .philox import load_philox, normals_block, normals_rows

_BLOCK_1D = 2048
_TILE = 2048
_COL_BLOCK_K = 128        # AXIS 0 tiles: narrow and tall, so each program sums many rows
_ROW_REDUCE_MIN_INNER = 32  # per-channel theta: reduce planes along rows when they are this long
_TARGET_PROGRAMS = 1024   # AXIS 0: enough programs to fill a GPU, beyond that loop over rows
_SCALAR, _CHANNEL, _ELEMENT = 0, 1, 2


@triton.jit
def _forward_kernel(x_ptr, theta_ptr, y_ptr, numel, inner, C, F, philox_ptr,
                    MODE: tl.constexpr, COMPUTE: tl.constexpr, INDEX_64: tl.constexpr, BLOCK: tl.constexpr):
    """y for memory positions [pid * BLOCK, (pid + 1) * BLOCK)."""
    seed, offset = load_philox(philox_ptr)
    start, index, valid = block_range(numel, INDEX_64, BLOCK)
    x = tl.load(x_ptr + index, mask=valid, other=0.0).to(COMPUTE)
    if MODE == 0:
        theta = tl.load(theta_ptr).to(COMPUTE)
    elif MODE == 1:
        theta = tl.load(theta_ptr + (index // inner) % C, mask=valid, other=0.0).to(COMPUTE)
    else:
        theta = tl.load(theta_ptr + index % F, mask=valid, other=0.0).to(COMPUTE)
    z = normals_block(seed, offset, start, BLOCK).to(COMPUTE)
    y = x + theta * z
    tl.store(y_ptr + index, y.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _row_window(grad_ptr, rows, M, K, col0, seed, offset, ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    """grad * z on the window [aligned(r * K) + col0, + BLOCK_K) of each row r, 0 outside row r."""
    row_base = rows * K
    aligned = row_base - row_base % 4
    window = aligned + col0
    index = window[:, None] + tl.arange(0, BLOCK_K)[None, :]
    valid = (rows < M)[:, None] & (index >= row_base[:, None]) & (index < (row_base + K)[:, None])
    grad = tl.load(grad_ptr + index, mask=valid, other=0.0).to(ACC)
    z = normals_rows(seed, offset, window, BLOCK_K).to(ACC)
    return tl.where(valid, grad * z, 0.0)


@triton.jit
def _reduce_kernel(grad_ptr, part_ptr, M, K, row_steps, philox_ptr,
                   AXIS: tl.constexpr, SHIFTS: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Partial sums of grad * z over one (BLOCK_M * row_steps, BLOCK_K) tile of the (M, K) view.

    AXIS 1: part[r, pid_k] = sum over the tile's window of row r.
    AXIS 0 (grid (column tiles, row programs)): part[pid_m, s, pid_k * BLOCK_K + k] = sum over the
    tile's rows with shift s of window position k (column pid_k * BLOCK_K + k - s).
    """
    seed, offset = load_philox(philox_ptr)
    if AXIS == 1:
        pid_m = tl.program_id(0).to(tl.int64)
        pid_k = tl.program_id(1)
        col0 = pid_k * BLOCK_K
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        v = _row_window(grad_ptr, rows, M, K, col0, seed, offset, ACC, BLOCK_K)
        tl.store(part_ptr + rows * tl.num_programs(1) + pid_k, tl.sum(v, axis=1), mask=rows < M)
    else:
        # Column tiles on grid axis 0 (F / BLOCK_K can pass 65535), row programs on axis 1.
        pid_k = tl.program_id(0)
        pid_m = tl.program_id(1).to(tl.int64)
        col0 = pid_k * BLOCK_K
        first = pid_m * row_steps * BLOCK_M
        local = tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
        for step in range(row_steps):
            rows = first + step * BLOCK_M + local
            acc += _row_window(grad_ptr, rows, M, K, col0, seed, offset, ACC, BLOCK_K)
        width = tl.num_programs(0) * BLOCK_K
        cols = col0 + tl.arange(0, BLOCK_K)
        if SHIFTS == 1:
            tl.store(part_ptr + pid_m * width + cols, tl.sum(acc, axis=0))
        else:
            # BLOCK_M % 4 == 0, so local row i has the shift of row first + i in every step.
            shift = ((first + local) * K) % 4
            for s in tl.static_range(4):
                total = tl.sum(tl.where((shift == s)[:, None], acc, 0.0), axis=0)
                tl.store(part_ptr + (pid_m * 4 + s) * width + cols, total)


def _theta_mode(x, theta, x_name):
    """Validate ``x`` / ``theta`` (checks.perturb, and the layout the kernels read); returns
    (mode, inner, C, F) of the theta mapping."""
    checks.perturb(x, theta, x_name)
    checks.contiguous(**{x_name: x}, theta=theta)
    channels = x.shape[1]
    features = x.numel() // x.shape[0]
    inner = features // channels
    if theta.numel() == 1:
        return _SCALAR, inner, channels, features
    if theta.dim() == 1 and theta.numel() == channels:
        return _CHANNEL, inner, channels, features
    return _ELEMENT, inner, channels, features


_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


@triton_op("stochnet_triton::perturb", mutates_args=())
def perturb(x: torch.Tensor, theta: torch.Tensor, philox: torch.Tensor) -> torch.Tensor:
    """``y = x + theta * z`` on a contiguous (N, C, *) ``x``; ``y`` has x's shape and dtype."""
    mode, inner, channels, features = _theta_mode(x, theta, "x")
    checks.philox(philox)
    philox = philox.to(x.device, non_blocking=True)
    y = torch.empty_like(x)
    numel = x.numel()
    wrap_triton(_forward_kernel)[(triton.cdiv(numel, _BLOCK_1D),)](
        x, theta, y, numel, inner, channels, features, philox,
        MODE=mode, COMPUTE=_TL_DTYPES[checks.compute_dtype(x.dtype)], INDEX_64=numel + _BLOCK_1D >= 2**31,
        BLOCK=_BLOCK_1D, enable_fp_fusion=False)
    return y


def _reduce(grad, M, K, axis, philox):
    """sum of grad * z per row (axis 1, shape (M,)) or per column (axis 0, shape (K,)), float64."""
    part_dtype = checks.compute_dtype(grad.dtype)
    acc = _TL_DTYPES[part_dtype]
    shifts = 1 if K % 4 == 0 else 4
    if axis == 1:
        block_k = min(triton.next_power_of_2(K + shifts - 1), _TILE)
        block_m = min(triton.next_power_of_2(M), max(1, _TILE // block_k))
        grid = (triton.cdiv(M, block_m), triton.cdiv(K + shifts - 1, block_k))
        part = torch.empty((M, grid[1]), dtype=part_dtype, device=grad.device)
        wrap_triton(_reduce_kernel)[grid](grad, part, M, K, 1, philox, AXIS=1, SHIFTS=shifts, ACC=acc,
                                          BLOCK_M=block_m, BLOCK_K=block_k, enable_fp_fusion=False)
        return part.double().sum(1)
    # Narrow tiles so that a program sums many rows, wider ones when the batch is small.
    block_m = max(4, min(triton.next_power_of_2(M), _TILE // _COL_BLOCK_K))
    block_k = min(triton.next_power_of_2(K + shifts - 1), max(_COL_BLOCK_K, _TILE // block_m))
    col_tiles = triton.cdiv(K + shifts - 1, block_k)
    row_tiles = triton.cdiv(M, block_m)
    programs_m = max(1, min(row_tiles, triton.cdiv(_TARGET_PROGRAMS, col_tiles)))
    row_steps = triton.cdiv(row_tiles, programs_m)
    programs_m = triton.cdiv(row_tiles, row_steps)
    width = col_tiles * block_k
    part = torch.empty((programs_m, shifts, width), dtype=part_dtype, device=grad.device)
    wrap_triton(_reduce_kernel)[(col_tiles, programs_m)](
        grad, part, M, K, row_steps, philox, AXIS=0, SHIFTS=shifts, ACC=acc, BLOCK_M=block_m, BLOCK_K=block_k,
        enable_fp_fusion=False)
    merged = part.double().sum(0)
    return sum(merged[s, s:s + K] for s in range(shifts))


@triton_op("stochnet_triton::perturb_backward", mutates_args=())
def perturb_backward(grad: torch.Tensor, theta: torch.Tensor, philox: torch.Tensor) -> torch.Tensor:
    """``d theta``: shaped like theta, in theta's dtype; z is regenerated inside the reduction."""
    mode, inner, channels, features = _theta_mode(grad, theta, "grad")
    checks.philox(philox)
    philox = philox.to(grad.device, non_blocking=True)
    numel = grad.numel()
    if mode != _ELEMENT and inner >= _ROW_REDUCE_MIN_INNER:
        total = _reduce(grad, numel // inner, inner, 1, philox).view(-1, channels).sum(0)
    else:
        total = _reduce(grad, grad.shape[0], features, 0, philox)
        if mode != _ELEMENT:
            total = total.view(channels, inner).sum(1)
    if mode == _SCALAR:
        total = total.sum()
    return total.reshape(theta.shape).to(theta.dtype)
