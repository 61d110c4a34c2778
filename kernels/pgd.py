"""PGD / MIM steps and the random start in Triton, on contiguous non-empty (B, *) tensors of one shape.

The kernels see every tensor as a row-major (B, K) matrix of its memory, K = numel / B; the
sample of memory position p is p // K. eps / alpha are contiguous (B,) float tensors on x's
device; lo / hi / mu travel as a small tensor in the compute dtype (float64 for float64 x, else
float32), filled on x's device, so float64 data is clamped at the exact bounds.

- linf PGD: one elementwise kernel, delta = clamp(x_adv + alpha_b * sign(grad) - x_orig,
  -eps_b, eps_b), out = clamp(x_orig + delta, lo, hi), sign(0) = 0.
- l2 PGD: per-sample sums of grad^2 (partials per (sample, column tile), float32 -- float64 for
  float64 data -- merged by torch in float64), then per-sample sums of delta^2, delta =
  (x_adv + grad * s_b) - x_orig with s_b = alpha_b / max(||grad_b||, 1e-12) (float64, rounded to
  the compute dtype), recomputed with the same operations as in the final kernel, then the
  elementwise kernel scales delta by min(1, eps_b / ||delta_b||) (1 when the norm is 0) and clamps.
- MIM: per-sample sums of |grad|, then one elementwise kernel updates the momentum in place,
  g <- mu * g + grad / max(mean_b |grad|, 1e-12), and takes the linf step along sign(g) (the sign
  of g as stored, so a low-precision momentum steers exactly as the stored value says).
- random start: linf is one elementwise kernel, x + eps_b * (2u - 1) with u = uniform p of the
  stream (seed, offset) and 2u - 1 in float32; l2 sums the squares of normal p of the stream per
  sample (windows that start on the Philox counter below each sample's first element, masked to
  the sample), takes radius_b = eps_b * v_b ** (1 / K) with v_b = uniform b of the stream
  (seed, offset + ceil(numel / 4)) (the stream kernel of kernels/philox.py, shifted by
  ceil(numel / 4) counters), and writes clamp(x + z * f_b, lo, hi) with f_b = radius_b / ||z_b||
  (float64, rounded to the compute dtype). The noise kernels read (seed, offset) from ``philox``.

NaN, as the reference: every kernel reads grad through ``_load_grad``, which takes a NaN entry as
0, and ``sign(NaN) = 0``, so a NaN momentum entry takes no step.

Every kernel runs with ``enable_fp_fusion=False``, so products are rounded as in torch.

Ops ``stochnet_triton::pgd_step``, ``mim_step`` (momentum mutated in place) and ``random_start``,
the schemas of csrc/ops.cpp. Fakes: stochnet/ops/pgd.py.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from stochnet.ops import checks
from stochnet.ops.library import triton_op

from .blocks import block_range
from .philox import load_philox, normals_block, normals_rows, philox_uniform, uniforms_block

_BLOCK_1D = 2048
_TILE = 2048
_MAX_COLUMN_TILES = 65535  # grid axis 1 of the per-sample reductions
_SQUARES, _ABS, _DELTA_SQUARES, _NORMAL_SQUARES = 0, 1, 2, 3
_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


@triton.jit
def _clamp(v, lo, hi):
    """clamp(v, lo, hi) propagating NaN, as torch.clamp."""
    return tl.where(v < lo, lo, tl.where(v > hi, hi, v))


@triton.jit
def _sign(g):
    """-1, 0 or 1; 0 for +-0 and NaN."""
    return tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0)).to(g.dtype)


@triton.jit
def _load_grad(grad_ptr, index, valid, COMPUTE: tl.constexpr):
    """grad in COMPUTE with NaN entries as 0."""
    grad = tl.load(grad_ptr + index, mask=valid, other=0.0).to(COMPUTE)
    return tl.where(grad == grad, grad, 0.0)


@triton.jit
def _l2_delta(x_adv_ptr, grad_ptr, x_orig_ptr, index, valid, scale, COMPUTE: tl.constexpr):
    """(x_adv + grad * scale) - x_orig in COMPUTE; scale = alpha / max(||grad||, 1e-12) per sample."""
    x_adv = tl.load(x_adv_ptr + index, mask=valid, other=0.0).to(COMPUTE)
    grad = _load_grad(grad_ptr, index, valid, COMPUTE)
    x_orig = tl.load(x_orig_ptr + index, mask=valid, other=0.0).to(COMPUTE)
    return (x_adv + grad * scale) - x_orig


@triton.jit
def _sample_sums_kernel(a_ptr, b_ptr, c_ptr, scale_ptr, part_ptr, M, K, philox_ptr,
                        KIND: tl.constexpr, ALIGN: tl.constexpr, COMPUTE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """part[r, pid_k] = sum over the pid_k-th window of sample r of the KIND of value.

    A window of row r starts at row_base + pid_k * BLOCK_K, row_base = r * K rounded down to a
    multiple of 4 when ALIGN (the noise kinds); elements outside row r are masked off.
    """
    pid_m = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    row_base = rows * K
    if ALIGN:
        window = row_base - row_base % 4 + pid_k * BLOCK_K
    else:
        window = row_base + pid_k * BLOCK_K
    index = window[:, None] + tl.arange(0, BLOCK_K)[None, :]
    valid = row_ok[:, None] & (index >= row_base[:, None]) & (index < (row_base + K)[:, None])
    if KIND == 0:
        v = _load_grad(a_ptr, index, valid, COMPUTE)
        v = v * v
    elif KIND == 1:
        v = tl.abs(_load_grad(a_ptr, index, valid, COMPUTE))
    elif KIND == 2:
        scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0)[:, None]
        v = _l2_delta(a_ptr, b_ptr, c_ptr, index, valid, scale, COMPUTE)
        v = v * v
    else:
        seed, offset = load_philox(philox_ptr)
        v = normals_rows(seed, offset, window, BLOCK_K).to(COMPUTE)
        v = v * v
    v = tl.where(valid, v, 0.0)
    tl.store(part_ptr + rows * tl.num_programs(1) + pid_k, tl.sum(v, axis=1), mask=row_ok)


@triton.jit
def _linf_kernel(x_adv_ptr, grad_ptr, x_orig_ptr, mom_ptr, eps_ptr, alpha_ptr, denom_ptr, params_ptr, out_ptr,
                 numel, K, MIM: tl.constexpr, COMPUTE: tl.constexpr, INDEX_64: tl.constexpr,
                 BLOCK: tl.constexpr):
    """linf PGD step (MIM: along the updated momentum) for memory positions of one block."""
    _, index, valid = block_range(numel, INDEX_64, BLOCK)
    sample = index // K
    lo = tl.load(params_ptr)
    hi = tl.load(params_ptr + 1)
    eps = tl.load(eps_ptr + sample, mask=valid, other=0.0).to(COMPUTE)
    alpha = tl.load(alpha_ptr + sample, mask=valid, other=0.0).to(COMPUTE)
    x_adv = tl.load(x_adv_ptr + index, mask=valid, other=0.0).to(COMPUTE)
    x_orig = tl.load(x_orig_ptr + index, mask=valid, other=0.0).to(COMPUTE)
    grad = _load_grad(grad_ptr, index, valid, COMPUTE)
    if MIM:
        mu = tl.load(params_ptr + 2)
        denom = tl.load(denom_ptr + sample, mask=valid, other=1.0)
        g = tl.load(mom_ptr + index, mask=valid, other=0.0).to(COMPUTE)
        g = (mu * g + grad / denom).to(mom_ptr.dtype.element_ty)
        tl.store(mom_ptr + index, g, mask=valid)
        direction = g.to(COMPUTE)
    else:
        direction = grad
    delta = _clamp(x_adv + alpha * _sign(direction) - x_orig, -eps, eps)
    out = _clamp(x_orig + delta, lo, hi)
    tl.store(out_ptr + index, out.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _l2_kernel(x_adv_ptr, grad_ptr, x_orig_ptr, scale_ptr, factor_ptr, params_ptr, out_ptr,
               numel, K, COMPUTE: tl.constexpr, INDEX_64: tl.constexpr, BLOCK: tl.constexpr):
    """out = clamp(x_orig + delta * factor_b, lo, hi), delta as in the delta-squares reduction."""
    _, index, valid = block_range(numel, INDEX_64, BLOCK)
    sample = index // K
    lo = tl.load(params_ptr)
    hi = tl.load(params_ptr + 1)
    scale = tl.load(scale_ptr + sample, mask=valid, other=0.0)
    factor = tl.load(factor_ptr + sample, mask=valid, other=1.0)
    delta = _l2_delta(x_adv_ptr, grad_ptr, x_orig_ptr, index, valid, scale, COMPUTE)
    x_orig = tl.load(x_orig_ptr + index, mask=valid, other=0.0).to(COMPUTE)
    out = _clamp(x_orig + delta * factor, lo, hi)
    tl.store(out_ptr + index, out.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _random_start_kernel(x_ptr, eps_ptr, factor_ptr, params_ptr, out_ptr, numel, K, philox_ptr,
                         L2: tl.constexpr, COMPUTE: tl.constexpr, INDEX_64: tl.constexpr, BLOCK: tl.constexpr):
    """linf: x + eps_b * (2u - 1) (2u - 1 in float32); l2: x + z * factor_b; then clamp to [lo, hi]."""
    seed, offset = load_philox(philox_ptr)
    start, index, valid = block_range(numel, INDEX_64, BLOCK)
    sample = index // K
    lo = tl.load(params_ptr)
    hi = tl.load(params_ptr + 1)
    x = tl.load(x_ptr + index, mask=valid, other=0.0).to(COMPUTE)
    if L2:
        factor = tl.load(factor_ptr + sample, mask=valid, other=0.0)
        z = normals_block(seed, offset, start, BLOCK).to(COMPUTE)
        v = x + z * factor
    else:
        eps = tl.load(eps_ptr + sample, mask=valid, other=0.0).to(COMPUTE)
        u = uniforms_block(seed, offset, start, BLOCK)
        v = x + eps * (2.0 * u - 1.0).to(COMPUTE)
    tl.store(out_ptr + index, _clamp(v, lo, hi).to(out_ptr.dtype.element_ty), mask=valid)


# ----------------------------------------------------------------------------------------- launchers


def _params(x, *values):
    """``values`` (lo, hi[, mu]) as a tensor in the compute dtype, filled on x's device: no host copy."""
    params = torch.empty(len(values), dtype=checks.compute_dtype(x.dtype), device=x.device)
    for i, value in enumerate(values):
        params[i] = value
    return params


def _index_64(numel):
    return numel + _BLOCK_1D >= 2**31


def _sample_sums(kind, x, name, M, K, a, b=None, c=None, scale=None, philox=None):
    """Per-sample sums (float64, shape (M,)) of the KIND of value over the (M, K) view of ``x``."""
    align = kind == _NORMAL_SQUARES and K % 4 != 0
    width = K + 3 if align else K
    block_k = min(triton.next_power_of_2(width), _TILE)
    block_m = min(triton.next_power_of_2(M), max(1, _TILE // block_k))
    grid = (triton.cdiv(M, block_m), triton.cdiv(width, block_k))
    torch._check_value(grid[1] <= _MAX_COLUMN_TILES, lambda: f"{name} has {K} elements per sample; the Triton "
                       f"per-sample reductions take at most {_MAX_COLUMN_TILES * _TILE - 3}")
    compute = checks.compute_dtype(x.dtype)
    part = torch.empty((M, grid[1]), dtype=compute, device=x.device)
    b = a if b is None else b
    c = a if c is None else c
    scale = part if scale is None else scale
    philox = part if philox is None else philox  # only the noise kind reads it
    wrap_triton(_sample_sums_kernel)[grid](a, b, c, scale, part, M, K, philox,
                                           KIND=kind, ALIGN=align, COMPUTE=_TL_DTYPES[compute],
                                           BLOCK_M=block_m, BLOCK_K=block_k, enable_fp_fusion=False)
    return part.double().sum(1)


@triton_op("stochnet_triton::pgd_step", mutates_args=())
def pgd_step(x_adv: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor, eps: torch.Tensor,
             alpha: torch.Tensor, norm: str, lo: float, hi: float) -> torch.Tensor:
    """One PGD step: returns the new x_adv, contiguous, in x_adv's shape and dtype."""
    checks.pgd_step(x_adv, grad, x_orig, eps, alpha, norm)
    checks.contiguous(x_adv=x_adv, grad=grad, x_orig=x_orig, eps=eps, alpha=alpha)
    checks.bounds(lo, hi)
    out = torch.empty_like(x_adv)
    numel = x_adv.numel()
    B = x_adv.shape[0]
    K = numel // B
    compute = checks.compute_dtype(x_adv.dtype)
    tl_compute = _TL_DTYPES[compute]
    params = _params(x_adv, lo, hi)
    grid = (triton.cdiv(numel, _BLOCK_1D),)
    if norm == "linf":
        wrap_triton(_linf_kernel)[grid](x_adv, grad, x_orig, x_adv, eps, alpha, params, params, out, numel, K,
                                        MIM=False, COMPUTE=tl_compute, INDEX_64=_index_64(numel), BLOCK=_BLOCK_1D,
                                        enable_fp_fusion=False)
        return out
    grad_norm = _sample_sums(_SQUARES, x_adv, "x_adv", B, K, grad).sqrt()
    scale = (alpha.double() / grad_norm.clamp_min(1e-12)).to(compute)
    delta_norm = _sample_sums(_DELTA_SQUARES, x_adv, "x_adv", B, K, x_adv, grad, x_orig, scale).sqrt()
    factor = torch.where(delta_norm > 0, (eps.double() / delta_norm).clamp_max(1.0),
                         torch.ones_like(delta_norm)).to(compute)
    wrap_triton(_l2_kernel)[grid](x_adv, grad, x_orig, scale, factor, params, out, numel, K,
                                  COMPUTE=tl_compute, INDEX_64=_index_64(numel), BLOCK=_BLOCK_1D,
                                  enable_fp_fusion=False)
    return out


@triton_op("stochnet_triton::mim_step", mutates_args={"momentum"})
def mim_step(x_adv: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor, momentum: torch.Tensor,
             eps: torch.Tensor, alpha: torch.Tensor, mu: float, lo: float, hi: float) -> torch.Tensor:
    """One MIM step: updates ``momentum`` in place and returns the new x_adv (linf step)."""
    checks.pgd_step(x_adv, grad, x_orig, eps, alpha, "linf")
    checks.momentum(momentum, x_adv)
    checks.contiguous(x_adv=x_adv, grad=grad, x_orig=x_orig, eps=eps, alpha=alpha)
    checks.bounds(lo, hi)
    out = torch.empty_like(x_adv)
    numel = x_adv.numel()
    B = x_adv.shape[0]
    K = numel // B
    compute = checks.compute_dtype(x_adv.dtype)
    denom = (_sample_sums(_ABS, x_adv, "x_adv", B, K, grad) / K).clamp_min(1e-12).to(compute)
    params = _params(x_adv, lo, hi, mu)
    wrap_triton(_linf_kernel)[(triton.cdiv(numel, _BLOCK_1D),)](
        x_adv, grad, x_orig, momentum, eps, alpha, denom, params, out, numel, K,
        MIM=True, COMPUTE=_TL_DTYPES[compute], INDEX_64=_index_64(numel), BLOCK=_BLOCK_1D,
        enable_fp_fusion=False)
    return out


@triton_op("stochnet_triton::random_start", mutates_args=())
def random_start(x_orig: torch.Tensor, eps: torch.Tensor, norm: str, lo: float, hi: float,
                 philox: torch.Tensor) -> torch.Tensor:
    """A random point of the eps ball ("linf" box or "l2" ball) around x_orig, clamped to [lo, hi]."""
    checks.batched(x_orig, "x_orig")
    checks.per_sample(eps, "eps", x_orig)
    checks.norm(norm)
    checks.philox(philox)
    checks.contiguous(x_orig=x_orig, eps=eps)
    checks.bounds(lo, hi)
    philox = philox.to(x_orig.device, non_blocking=True)
    out = torch.empty_like(x_orig)
    numel = x_orig.numel()
    B = x_orig.shape[0]
    K = numel // B
    compute = checks.compute_dtype(x_orig.dtype)
    params = _params(x_orig, lo, hi)
    grid = (triton.cdiv(numel, _BLOCK_1D),)
    if norm == "linf":
        wrap_triton(_random_start_kernel)[grid](x_orig, eps, params, params, out, numel, K, philox,
                                                L2=False, COMPUTE=_TL_DTYPES[compute], INDEX_64=_index_64(numel),
                                                BLOCK=_BLOCK_1D, enable_fp_fusion=False)
        return out
    v = philox_uniform(philox, B, x_orig.device, shift=(numel + 3) // 4)
    radius = eps.double() * v.double() ** (1.0 / K)
    znorm = _sample_sums(_NORMAL_SQUARES, x_orig, "x_orig", B, K, x_orig, philox=philox).sqrt()
    factor = torch.where(znorm > 0, radius / znorm, torch.zeros_like(znorm)).to(compute)
    wrap_triton(_random_start_kernel)[grid](x_orig, eps, factor, params, out, numel, K, philox,
                                            L2=True, COMPUTE=_TL_DTYPES[compute], INDEX_64=_index_64(numel),
                                            BLOCK=_BLOCK_1D, enable_fp_fusion=False)
    return out
