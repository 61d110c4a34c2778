"""The Philox4x32-10 noise stream in pure torch: the reference every backend must match.

Contract (see ``csrc/philox.h``): element ``i`` of a call with ``(seed, offset)`` takes
word ``i % 4`` of Philox4x32-10 with key ``(lo32(seed), hi32(seed))`` and counter
``(lo32(offset + i // 4), hi32(offset + i // 4), 0, 0)`` -- Triton's ``tl.randint4x``
with an int64 offset. Uniforms and normals follow ``tl.rand4x`` / ``tl.randn4x``.
"""
import math

import torch

from . import checks

_MASK32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
UNIFORM_SCALE = 4.6566127342e-10
MIN_UNIFORM = 1.0e-7
SEED_BOUND = 2**63 - 1
_DEVICE_KEY = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: device keys far apart


def draw_seed(device=None, generator=None):
    """A fresh (seed, offset) pair, as an int64 tensor of shape (2,) that the noise ops take.

    On the CPU (``device`` None or a CPU device): the seed from torch's CPU generator, offset 0;
    ``torch.manual_seed`` controls it. On a CUDA device: seed and offset both drawn on that
    device from its CUDA generator (``generator``, else the device's default one), and the
    tensor stays there. So there is no host sync, ``torch.cuda.manual_seed`` controls the noise,
    each device has its own stream (the key also depends on the device index, so that devices
    seeded alike by ``torch.cuda.manual_seed_all`` draw different noise), and every CUDA-graph
    replay draws anew (torch's random ops are capture-safe; the kernels load the pair from the
    device). A fresh key per call, rather than offsets reserved under the generator's own key,
    keeps our counter layout ``(offset + i // 4, 0, 0, 0)`` clear of the counters that torch's
    own kernels use.

    A tensor rather than Python ints, so that ``torch.compile`` traces the draw instead of
    specializing on a number. A ``generator`` draws on its own device, whatever ``device`` says.
    """
    if generator is not None:
        device = generator.device
    if device is not None and not isinstance(device, torch.device):
        device = torch.device(device)
    if device is not None and device.type == "cuda":
        pair = torch.randint(0, SEED_BOUND, (2,), dtype=torch.int64, device=device, generator=generator)
        index = pair.device.index
        if index:  # torch.cuda.manual_seed_all seeds every device alike: tell their keys apart
            pair[:1].bitwise_xor_((index * _DEVICE_KEY) & SEED_BOUND)
        return pair
    seed = torch.randint(0, SEED_BOUND, (1,), dtype=torch.int64, generator=generator)
    return torch.cat([seed, torch.zeros(1, dtype=torch.int64)])


def seed_pair(philox):
    """(seed, offset) as Python ints from the (2,) tensor of :func:`draw_seed` (for the references)."""
    checks.philox(philox)
    seed, offset = philox.tolist()
    return seed, offset


def _mul32(a, b):
    """(hi, lo) of the 64-bit product of 32-bit values held in int64 tensors."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    cross = a_hi * b
    low = a_lo * b
    lo = (low + ((cross & 0xFFFF) << 16)) & _MASK32
    hi = ((cross >> 16) + ((low + ((cross & 0xFFFF) << 16)) >> 32)) & _MASK32
    return hi, lo


def philox_words(seed, offset, numel, device="cpu"):
    """The first ``numel`` 32-bit words of the stream, as int64 tensors in [0, 2**32)."""
    counters = offset + torch.arange((numel + 3) // 4, dtype=torch.int64, device=device)
    c0 = counters & _MASK32
    c1 = (counters >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        hi_b, lo_b = _mul32(c2, _ROUND_B)
        hi_a, lo_a = _mul32(c0, _ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return torch.stack([c0, c1, c2, c3], dim=1).reshape(-1)[:numel]


def words_to_uniform(words):
    """Triton's ``uint_to_uniform_float``: fold the int32 sign bit, scale into [0, 1)."""
    signed = torch.where(words >= 2**31, words - 2**32, words)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def philox_uniform(seed, offset, numel, device="cpu"):
    return words_to_uniform(philox_words(seed, offset, numel, device))


def philox_normal(seed, offset, numel, device="cpu"):
    """Box-Muller on word pairs (0, 1) and (2, 3) of each counter, float32."""
    blocks = (numel + 3) // 4
    u = philox_uniform(seed, offset, 4 * blocks, device).view(blocks, 2, 2)
    u1 = torch.clamp_min(u[..., 0], MIN_UNIFORM)
    theta = torch.tensor(2 * math.pi, dtype=torch.float32) * u[..., 1]
    r = torch.sqrt(-2.0 * torch.log(u1))
    normals = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1)
    return normals.reshape(-1)[:numel]


def normal_like(x, seed, offset):
    """Normals laid out like ``x`` in memory: element at storage position i takes normal i.

    ``x`` must be dense (contiguous in some dimension order), as the kernels require.
    """
    z = torch.empty_like(x, dtype=torch.float32)
    z.as_strided((z.numel(),), (1,)).copy_(philox_normal(seed, offset, z.numel(), x.device))
    return z
