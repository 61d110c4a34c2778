"""Batched multi-sample smoothing in Triton: m noisy copies of a batch, and the votes of their logits.

noisy_repeat: x is contiguous (B, F...) with F elements per sample; output row ``b * m + j`` is
``x[b] + sigma * z`` and output element i (memory order) takes normal i of the stream. A program
holds one column block of one sample's x in registers and writes a (copies, columns) tile per
step for a run of that sample's copies, so x is read once per run (runs split m only when there
are too few programs to fill a GPU). When F % 4 == 0 every tile row starts on a Philox counter and
the normals come from ``normals_rows``; otherwise each element runs Philox on its own counter and
keeps its word (4x the noise arithmetic: image shapes are multiples of 4, odd ones are rare).
``sigma * z`` is rounded to the compute dtype (float64 for float64 x, else float32) before the add.

vote: logits are contiguous (B * m, K); one program per sample reduces its m rows in tiles of
(rows, next power of two >= K) held in registers:

- prediction: the first index of each row's maximum, NaN counting as the largest (torch.argmax);
  int64 counts.
- soft: softmax per row, summed in the compute dtype, divided by m, stored in the logits' dtype.
- weighted: 32 passes (fewer for K < 32) of that argmax over the entries not yet ranked; rank r
  adds 2^-r. Equal logits rank by lower index first and NaN first, as a stable descending sort.

vote_backward: ``p * (g_b - <g_b, p>) / m`` per row (the soft vote's d logits), the softmax p
recomputed from the logits.

Every kernel runs with ``enable_fp_fusion=False``, so products are rounded as in torch.

Ops ``stochnet_triton::noisy_repeat``, ``vote`` and ``vote_backward``, the schemas of
csrc/ops.cpp; the noise kernel reads (seed, offset) from ``philox``. Fake and autograd:
stochnet/ops/smoothing.py.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from stochnet.ops import checks
from stochnet.ops.checks import VOTE_MODES
from stochnet.ops.library import triton_op
from stochnet.ops.smoothing import WEIGHTED_RANKS

from .philox import load_philox, normals_rows

MAX_CLASSES = 32768  # a row of logits lives in registers
_TILE = 2048  # elements a program handles per step
_TARGET_PROGRAMS = 1024  # noisy_repeat splits each sample's copies when fewer programs would run
_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


@triton.jit
def _normals_at(seed, offset, index):
    """Normal ``index`` of the stream for any int64 index tensor: its counter's word index % 4."""
    n0, n1, n2, n3 = tl.randn4x(seed, offset.to(tl.int64) + index // 4)
    lane = index % 4
    return tl.where(lane == 0, n0, tl.where(lane == 1, n1, tl.where(lane == 2, n2, n3)))


@triton.jit
def _noisy_repeat_kernel(x_ptr, sigma_ptr, y_ptr, F, m, feature_blocks, runs, copies_per_run, philox_ptr,
                         ALIGNED: tl.constexpr, COMPUTE: tl.constexpr,
                         BLOCK_J: tl.constexpr, BLOCK_F: tl.constexpr):
    """Copies [run * copies_per_run, + copies_per_run) of one column block of one sample."""
    seed, offset = load_philox(philox_ptr)
    pid = tl.program_id(0).to(tl.int64)
    run = pid % runs
    sample = pid // runs // feature_blocks
    col0 = (pid // runs % feature_blocks) * BLOCK_F
    cols = col0 + tl.arange(0, BLOCK_F)
    col_ok = cols < F
    x = tl.load(x_ptr + sample * F + cols, mask=col_ok, other=0.0).to(COMPUTE)
    sigma = tl.load(sigma_ptr)
    first = run * copies_per_run
    for step in range(0, copies_per_run, BLOCK_J):
        copies = first + step + tl.arange(0, BLOCK_J)
        row_start = (sample * m + copies) * F + col0
        index = row_start[:, None] + tl.arange(0, BLOCK_F)[None, :]
        if ALIGNED:
            z = normals_rows(seed, offset, row_start, BLOCK_F)
        else:
            z = _normals_at(seed, offset, index)
        y = x[None, :] + sigma * z.to(COMPUTE)
        valid = (copies < m)[:, None] & col_ok[None, :]
        tl.store(y_ptr + index, y.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _first_largest(v, candidates, cols, BLOCK_K: tl.constexpr):
    """Per row, the lowest column of the largest candidate, NaN the largest; BLOCK_K if none."""
    nan = candidates & (v != v)
    has_nan = tl.max(nan.to(tl.int32), axis=1) > 0
    largest = tl.max(tl.where(candidates & (v == v), v, float("-inf")), axis=1)
    hit = candidates & tl.where(has_nan[:, None], nan, v == largest[:, None])
    return tl.min(tl.where(hit, cols[None, :], BLOCK_K), axis=1)


@triton.jit
def _softmax_rows(v, valid, row_ok):
    """torch.softmax along each row of the valid entries; 0 outside them.

    Padding columns of a row are -inf (exp gives 0); padding rows are 0, so they compute no NaN.
    """
    v = tl.where(valid, v, tl.where(row_ok[:, None], float("-inf"), 0.0))
    e = tl.exp(v - tl.max(v, axis=1)[:, None])
    return tl.where(valid, e / tl.sum(e, axis=1)[:, None], 0.0)


@triton.jit
def _vote_kernel(logits_ptr, out_ptr, m, K, ranks,
                 MODE: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[sample] = the vote of logits rows [sample * m, (sample + 1) * m); MODE indexes VOTE_MODES."""
    sample = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    col_ok = cols < K
    if MODE == 0:
        total = tl.zeros((BLOCK_K,), dtype=tl.int32)
    else:
        total = tl.zeros((BLOCK_K,), dtype=ACC)
    for step in range(0, m, BLOCK_M):
        copies = step + tl.arange(0, BLOCK_M)
        row_ok = copies < m
        valid = row_ok[:, None] & col_ok[None, :]
        rows = sample * m + copies
        v = tl.load(logits_ptr + rows[:, None] * K + cols[None, :], mask=valid, other=0.0).to(ACC)
        if MODE == 0:
            winner = _first_largest(v, valid, cols, BLOCK_K)
            total += tl.sum((cols[None, :] == winner[:, None]).to(tl.int32), axis=0)
        elif MODE == 1:
            total += tl.sum(_softmax_rows(v, valid, row_ok), axis=0)
        else:
            # Weights are > 0, so the ranked entries are those with a score.
            scores = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
            weight = tl.zeros((BLOCK_M,), dtype=ACC) + 1.0  # halved per rank: exact powers of two
            for rank in range(ranks):
                winner = _first_largest(v, valid & (scores == 0), cols, BLOCK_K)
                scores = tl.where(cols[None, :] == winner[:, None], weight[:, None], scores)
                weight = weight * 0.5
            total += tl.sum(scores, axis=0)
    if MODE == 0:
        result = total.to(tl.int64)
    elif MODE == 1:
        result = total / m
    else:
        result = total
    tl.store(out_ptr + sample * K + cols, result.to(out_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def _soft_grad_kernel(grad_ptr, logits_ptr, out_ptr, rows_total, m, K,
                      ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """d logits of rows [pid * BLOCK_M, + BLOCK_M): p * (g - <g, p>) / m, g the grad of the row's sample."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < rows_total
    valid = row_ok[:, None] & (cols < K)[None, :]
    v = tl.load(logits_ptr + rows[:, None] * K + cols[None, :], mask=valid, other=0.0).to(ACC)
    g = tl.load(grad_ptr + (rows // m)[:, None] * K + cols[None, :], mask=valid, other=0.0).to(ACC)
    p = _softmax_rows(v, valid, row_ok)
    dot = tl.sum(p * g, axis=1)
    d = p * (g - dot[:, None]) / m
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], d.to(out_ptr.dtype.element_ty), mask=valid)


def _check_logits(logits):
    """The Triton vote kernels' own limits: contiguous logits, a row of at most MAX_CLASSES in registers."""
    checks.contiguous(logits=logits)
    torch._check_value(logits.shape[1] <= MAX_CLASSES, lambda: f"logits has {logits.shape[1]} classes; "
                       f"the Triton vote takes at most {MAX_CLASSES}")


def _row_tile(rows, classes):
    """(BLOCK_M, BLOCK_K, num_warps) of a tile of whole rows of ``classes`` entries."""
    block_k = triton.next_power_of_2(classes)
    block_m = min(triton.next_power_of_2(rows), max(1, _TILE // block_k))
    return block_m, block_k, max(4, min(16, block_m * block_k // 1024))


@triton_op("stochnet_triton::noisy_repeat", mutates_args=())
def noisy_repeat(x: torch.Tensor, m: int, sigma: float, philox: torch.Tensor) -> torch.Tensor:
    """m noisy copies of each sample of a contiguous (B, *) x: shape (B*m, *), x's dtype."""
    checks.noisy_repeat(x, m, sigma)
    checks.philox(philox)
    checks.contiguous(x=x)
    philox = philox.to(x.device, non_blocking=True)
    batch, features = x.shape[0], x[0].numel()
    y = x.new_empty((batch * m,) + tuple(x.shape[1:]))
    block_f = max(4, min(triton.next_power_of_2(features), _TILE))
    block_j = min(triton.next_power_of_2(m), max(1, _TILE // block_f))
    feature_blocks = triton.cdiv(features, block_f)
    runs = max(1, min(triton.cdiv(m, block_j), triton.cdiv(_TARGET_PROGRAMS, batch * feature_blocks)))
    copies_per_run = triton.cdiv(triton.cdiv(m, runs), block_j) * block_j
    runs = triton.cdiv(m, copies_per_run)
    compute = checks.compute_dtype(x.dtype)
    sigma_value = torch.full((), sigma, dtype=compute, device=x.device)  # filled on the device: no host copy
    wrap_triton(_noisy_repeat_kernel)[(batch * feature_blocks * runs,)](
        x, sigma_value, y, features, m, feature_blocks, runs, copies_per_run, philox,
        ALIGNED=features % 4 == 0, COMPUTE=_TL_DTYPES[compute], BLOCK_J=block_j, BLOCK_F=block_f,
        enable_fp_fusion=False)
    return y


@triton_op("stochnet_triton::vote", mutates_args=())
def vote(logits: torch.Tensor, m: int, mode: str) -> torch.Tensor:
    """(B, K) votes of contiguous (B*m, K) logits: int64 (prediction), the logits' dtype (soft), or
    float32 -- float64 for float64 logits -- (weighted)."""
    checks.vote(logits, m, mode)
    _check_logits(logits)
    batch, classes = logits.shape[0] // m, logits.shape[1]
    compute = checks.compute_dtype(logits.dtype)
    out_dtype = {"prediction": torch.int64, "soft": logits.dtype, "weighted": compute}[mode]
    out = torch.empty((batch, classes), dtype=out_dtype, device=logits.device)
    block_m, block_k, warps = _row_tile(m, classes)
    wrap_triton(_vote_kernel)[(batch,)](
        logits, out, m, classes, min(classes, WEIGHTED_RANKS), MODE=VOTE_MODES.index(mode),
        ACC=_TL_DTYPES[compute], BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps, enable_fp_fusion=False)
    return out


@triton_op("stochnet_triton::vote_backward", mutates_args=())
def vote_backward(grad: torch.Tensor, logits: torch.Tensor, m: int) -> torch.Tensor:
    """d logits (B*m, K) of the soft vote for the output gradient ``grad`` (B, K); the logits' dtype."""
    checks.vote_backward(grad, logits, m)
    _check_logits(logits)
    checks.contiguous(grad=grad)
    out = torch.empty_like(logits)
    rows, classes = logits.shape
    block_m, block_k, warps = _row_tile(rows, classes)
    wrap_triton(_soft_grad_kernel)[(triton.cdiv(rows, block_m),)](
        grad, logits, out, rows, m, classes, ACC=_TL_DTYPES[checks.compute_dtype(logits.dtype)],
        BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps, enable_fp_fusion=False)
    return out
