"""Every Python argument check of the ops, in one place.

The C++ implementations check the same with ``TORCH_CHECK`` (csrc/checks.h). These functions
serve the rest: the public entry points of :mod:`stochnet.functional` (every backend, so that
bad input is one clear error naming the argument), the fake implementations (which mirror the
C++ checks under ``torch.compile``), and the Triton and torch paths. Tensor checks read metadata
only, so they run on fake tensors; shape conditions go through ``torch._check_value`` so that
symbolic shapes become runtime asserts instead of guards.
"""
import math
import numbers

import torch

CPU_DTYPES = (torch.float32, torch.float64)
GPU_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
VOTE_MODES = ("prediction", "soft", "weighted")
NORMS = ("linf", "l2")


def compute_dtype(dtype):
    """The dtype the kernels compute in: float64 for float64 data, float32 for every other dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _value(condition, message):
    """ValueError(message()) unless ``condition``.

    A plain bool (concrete shapes: eager, or static shapes under torch.compile) costs one test. A
    symbolic condition becomes a runtime assert through ``torch._check_value``, with a constant
    message: Dynamo cannot convert a message closure over tensors.
    """
    if isinstance(condition, bool):
        if not condition:
            raise ValueError(message())
    else:
        torch._check_value(condition, lambda: "invalid op argument (run eagerly for the detailed error)")


def tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def floating(t, name):
    """A tensor of a dtype the kernels take on its device."""
    tensor(t, name)
    allowed = CPU_DTYPES if t.device.type == "cpu" else GPU_DTYPES
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must have dtype {names} on {t.device.type}, got {t.dtype}")


def same_device(first_name, first, **others):
    """Every tensor of ``others`` (name=tensor) is on the device of ``first``.

    A call mixing a meta tensor with real ones dispatches to the fake implementation, whose
    outputs are uninitialized memory: the fakes check devices first, so that is an error.
    """
    for name, t in others.items():
        _value(t.device == first.device, lambda: f"{name} is on {t.device} but {first_name} is on {first.device}")


def number(value, name):
    """A Python number: a tensor would silently lose its gradient through the op."""
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a number, not a tensor: the op is not differentiable in it")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")


def count(value, name, minimum=1):
    """An integer >= minimum (copies, steps, restarts), returned as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def philox(p, data=None):
    """``p`` is a (seed, offset) tensor as :func:`stochnet.ops.philox.draw_seed` makes: int64, shape (2,).

    On the CPU, or on the device of ``data`` (the Triton kernels load it themselves). Checks
    metadata only (it also runs on fake tensors); see :func:`philox_values` for the values.
    """
    if not (isinstance(p, torch.Tensor) and p.dtype == torch.int64 and p.shape == (2,)):
        described = (f"{p.dtype} of shape {tuple(p.shape)} on {p.device}" if isinstance(p, torch.Tensor)
                     else type(p).__name__)
        raise ValueError(f"philox must be an int64 tensor of shape (2,) holding (seed, offset), got {described}")
    if data is not None and p.device.type != "cpu" and p.device != data.device:
        raise ValueError(f"philox is on {p.device}: it must be on the CPU or on the data's device {data.device}")


def philox_values(p, data):
    """A user's philox tensor for ``data``: on the CPU its values are checked (both >= 0); on
    ``data``'s CUDA device they are not read (that would sync), and the kernels load them.

    Under torch.compile the values are not read (that would break the graph); the C++ ops check them.
    """
    philox(p, data)
    if p.device.type != "cpu" or torch.compiler.is_compiling():
        return
    seed, offset = p.tolist()
    if seed < 0 or offset < 0:
        raise ValueError(f"philox must hold a seed and an offset >= 0, got ({seed}, {offset})")


def stoc_relu_ema(x, running_sigma, gamma, momentum, training):
    floating(x, "x")
    tensor(running_sigma, "running_sigma")
    _value(x.dim() >= 2, lambda: f"x must have shape (N, C) or (N, C, *), got shape {tuple(x.shape)}")
    _value(x.numel() > 0, lambda: f"x must not be empty, got shape {tuple(x.shape)}")
    same_device("x", x, running_sigma=running_sigma)
    if running_sigma.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"running_sigma must be float32 or x's dtype {x.dtype}, got {running_sigma.dtype}")
    _value(running_sigma.shape == (x.shape[1],), lambda: f"running_sigma must have shape ({x.shape[1]},) for x with "
           f"{x.shape[1]} channels, got {tuple(running_sigma.shape)}")
    _value(running_sigma.is_contiguous(), lambda: f"running_sigma must be contiguous: it is updated in place, "
           f"got strides {running_sigma.stride()}")
    number(gamma, "gamma")
    number(momentum, "momentum")
    _value(gamma >= 0, lambda: f"gamma must be >= 0, got {gamma}")
    _value(0.0 <= momentum <= 1.0, lambda: f"momentum must be in [0, 1], got {momentum}")
    _value(not training or x.numel() // x.shape[1] >= 2,
           lambda: f"x must have more than one value per channel in training, got shape {tuple(x.shape)}")


def mask_backward(grad, mask):
    floating(grad, "grad")
    _value(grad.numel() > 0, lambda: "grad must not be empty")
    same_device("grad", grad, mask=mask)
    _value(mask.is_contiguous(), lambda: f"mask must be contiguous, got strides {mask.stride()}")
    _value(mask.dtype == torch.uint8 and mask.numel() == (grad.numel() + 7) // 8,
           lambda: f"mask must be a uint8 tensor of {(grad.numel() + 7) // 8} bytes, got {mask.dtype} of {mask.numel()}")


def perturb(x, theta, name="x"):
    """x (N, C, *) and a theta of one element, C (per channel) or the feature-map shape."""
    floating(x, name)
    tensor(theta, "theta")
    _value(x.dim() >= 2 and x.numel() > 0,
           lambda: f"{name} must be a non-empty tensor of shape (N, C, *), got shape {tuple(x.shape)}")
    same_device(name, x, theta=theta)
    if theta.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"theta must have {name}'s dtype {x.dtype} or float32, got {theta.dtype}")
    scalar = theta.numel() == 1
    per_channel = theta.dim() == 1 and theta.shape[0] == x.shape[1]
    _value(scalar or per_channel or tuple(theta.shape) == tuple(x.shape[1:]),
           lambda: f"theta must be a scalar, of shape ({x.shape[1]},) or of the feature-map shape {tuple(x.shape[1:])} "
           f"to broadcast over {name} of shape {tuple(x.shape)}, got {tuple(theta.shape)}")


def contiguous(**tensors):
    """The Triton kernels read these tensors in memory order."""
    for name, t in tensors.items():
        _value(t.is_contiguous(), lambda: f"{name} must be contiguous for the Triton kernels, "
               f"got strides {t.stride()} for shape {tuple(t.shape)}")


def batched(x, name):
    """A non-empty floating (B, *) tensor."""
    floating(x, name)
    _value(x.dim() >= 1 and x.numel() > 0, lambda: f"{name} must be a non-empty tensor of shape (B, *), "
           f"got shape {tuple(x.shape)}")


def noisy_repeat(x, m, sigma):
    batched(x, "x")
    count(m, "m")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")


def vote(logits, m, mode):
    floating(logits, "logits")
    _value(logits.dim() == 2 and logits.numel() > 0,
           lambda: f"logits must be a non-empty (B*m, K) tensor, got shape {tuple(logits.shape)}")
    count(m, "m")
    _value(logits.shape[0] % m == 0,
           lambda: f"logits has {logits.shape[0]} rows, not divisible by m={m}: rows must be B*m")
    if mode not in VOTE_MODES:
        raise ValueError(f"mode must be one of {VOTE_MODES}, got {mode!r}")


def vote_backward(grad, logits, m):
    vote(logits, m, "soft")
    same_device("logits", logits, grad=grad)
    _value(grad.dtype == logits.dtype, lambda: f"grad must have logits' dtype {logits.dtype}, got {grad.dtype}")
    _value(grad.shape == (logits.shape[0] // m, logits.shape[1]),
           lambda: f"grad must have shape ({logits.shape[0] // m}, {logits.shape[1]}), got {tuple(grad.shape)}")


def like(t, name, x, x_name="x_adv"):
    """``t`` matches ``x`` in device, dtype and shape."""
    tensor(t, name)
    same_device(x_name, x, **{name: t})
    if t.dtype != x.dtype:
        raise TypeError(f"{name} must have {x_name}'s dtype {x.dtype}, got {t.dtype}")
    _value(t.shape == x.shape, lambda: f"{name} must have {x_name}'s shape {tuple(x.shape)}, got {tuple(t.shape)}")


def norm(value):
    if value not in NORMS:
        raise ValueError(f"norm must be 'linf' or 'l2', got {value!r}")


def clip(value):
    """(lo, hi) numbers with lo < hi, returned as floats."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"clip must be a (lo, hi) pair of numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    bounds(lo, hi, lambda: f"clip must have lo < hi, got {value!r}")
    return lo, hi


def bounds(lo, hi, message=None):
    """The ops' lo / hi floats: lo < hi (csrc/checks.h check_clip)."""
    _value(lo < hi, message or (lambda: f"clip must have lo < hi, got ({lo}, {hi})"))


def eps_bound(norm_name, lo, hi, x):
    """The largest meaningful eps: the diameter of the clip box in the attack's norm."""
    return (hi - lo) if norm_name == "linf" else (hi - lo) * math.sqrt(x[0].numel())


def budget(value, name, x, bound=None):
    """eps / alpha: a number or a (B,) floating tensor on x's device, >= 0 (and <= bound).

    The values of a tensor are checked on the CPU only: on a GPU, reading them would make the
    host wait for the device at every attack step.
    """
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        _value(value.shape == (x.shape[0],), lambda: f"{name} must be a number or a tensor of shape ({x.shape[0]},) "
               f"(one per sample), got shape {tuple(value.shape)}")
        same_device("the input", x, **{name: value})
        if value.device.type != "cpu":
            return
        low, high = value.min().item(), value.max().item()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        low = high = float(value)
    else:
        raise TypeError(f"{name} must be a float or a tensor of shape ({x.shape[0]},), got {type(value).__name__}")
    if not low >= 0:
        raise ValueError(f"{name} must be >= 0, got {low}")
    if bound is not None and high > bound:
        raise ValueError(f"{name} must not exceed the clip range ({bound}: hi - lo for linf, "
                         f"(hi - lo) * sqrt(elements per sample) for l2), got {high}")


def per_sample(t, name, x):
    """eps / alpha as the kernels take them: (B,) float32 / float64 on x's device."""
    same_device("x", x, **{name: t})
    _value(t.dtype in (torch.float32, torch.float64) and t.shape == (x.shape[0],),
           lambda: f"{name} must be a float32 or float64 tensor of shape ({x.shape[0]},), got {t.dtype} {tuple(t.shape)}")


def pgd_step(x_adv, grad, x_orig, eps, alpha, norm_name):
    """The tensors of a step as the ops take them (after :mod:`stochnet.functional`'s conversion)."""
    batched(x_adv, "x_adv")
    like(grad, "grad", x_adv)
    like(x_orig, "x_orig", x_adv)
    per_sample(eps, "eps", x_adv)
    per_sample(alpha, "alpha", x_adv)
    norm(norm_name)


def momentum(m, x_adv):
    like(m, "momentum", x_adv)
    _value(m.is_contiguous(), lambda: "momentum must be contiguous: it is updated in place")


def momentum_unaliased(m, **tensors):
    """MIM writes momentum while it reads the other tensors: none may share its memory (eager only)."""
    for name, t in tensors.items():
        if m.numel() and t.untyped_storage().data_ptr() == m.untyped_storage().data_ptr():
            raise ValueError(f"momentum shares memory with {name}: it is updated in place, pass a separate tensor")
