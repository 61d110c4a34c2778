"""Fake (meta) implementations of the C++ kernel ops, so they trace under torch.compile."""
import torch

from .devices import check_same_device


@torch.library.register_fake("stochnet::stoc_relu_ema_fwd")
def _(x, running_sigma, gamma, momentum, training, seed, offset):
    check_same_device("x", x, running_sigma=running_sigma)
    return torch.empty_like(x), x.new_empty(((x.numel() + 7) // 8,), dtype=torch.uint8)


@torch.library.register_fake("stochnet::relu_mask_backward")
def _(grad, mask):
    check_same_device("grad", grad, mask=mask)
    return torch.empty_like(grad)


@torch.library.register_fake("stochnet::philox_words_out")
def _(seed, offset, out):
    return None


@torch.library.register_fake("stochnet::philox_uniform_out")
def _(seed, offset, out):
    return None


@torch.library.register_fake("stochnet::philox_normal_out")
def _(seed, offset, out):
    return None


@torch.library.register_fake("stochnet::perturb_fwd")
def _(x, theta, seed, offset):
    check_same_device("x", x, theta=theta)
    return torch.empty_like(x)


@torch.library.register_fake("stochnet::perturb_bwd")
def _(grad, theta, seed, offset):
    check_same_device("grad", grad, theta=theta)
    return torch.empty_like(theta)


@torch.library.register_fake("stochnet::pgd_step_fwd")
def _(x_adv, grad, x_orig, eps, alpha, norm, lo, hi):
    check_same_device("x_adv", x_adv, grad=grad, x_orig=x_orig, eps=eps, alpha=alpha)
    return torch.empty_like(x_adv, memory_format=torch.contiguous_format)


@torch.library.register_fake("stochnet::mim_step_fwd")
def _(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi):
    check_same_device("x_adv", x_adv, grad=grad, x_orig=x_orig, momentum=momentum, eps=eps, alpha=alpha)
    return torch.empty_like(x_adv, memory_format=torch.contiguous_format)


@torch.library.register_fake("stochnet::random_start_fwd")
def _(x_orig, eps, norm, lo, hi, seed, offset):
    check_same_device("x_orig", x_orig, eps=eps)
    return torch.empty_like(x_orig, memory_format=torch.contiguous_format)


@torch.library.register_fake("stochnet::noisy_repeat_fwd")
def _(x, m, sigma, seed, offset):
    return x.new_empty((x.shape[0] * m,) + tuple(x.shape[1:]))


@torch.library.register_fake("stochnet::vote_fwd")
def _(logits, m, mode):
    shape = (logits.shape[0] // m, logits.shape[1])
    if mode == "prediction":
        return logits.new_empty(shape, dtype=torch.int64)
    if mode == "soft":
        return logits.new_empty(shape)
    return logits.new_empty(shape, dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32)


@torch.library.register_fake("stochnet::vote_soft_bwd")
def _(grad, logits, m):
    check_same_device("logits", logits, grad=grad)
    return torch.empty_like(logits)
