"""Fake (meta) implementations of the C++ kernel ops, so they trace under torch.compile."""
import torch


@torch.library.register_fake("stochnet::stoc_relu_ema_fwd")
def _(x, running_sigma, gamma, momentum, training, seed, offset):
    return torch.empty_like(x), x.new_empty(((x.numel() + 7) // 8,), dtype=torch.uint8)


@torch.library.register_fake("stochnet::relu_mask_backward")
def _(grad, mask):
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
    return torch.empty_like(x)


@torch.library.register_fake("stochnet::perturb_bwd")
def _(grad, theta, seed, offset):
    return torch.empty_like(theta)


@torch.library.register_fake("stochnet::pgd_step_fwd")
def _(x_adv, grad, x_orig, eps, alpha, norm, lo, hi):
    return torch.empty_like(x_adv, memory_format=torch.contiguous_format)


@torch.library.register_fake("stochnet::mim_step_fwd")
def _(x_adv, grad, x_orig, momentum, eps, alpha, mu, lo, hi):
    return torch.empty_like(x_adv, memory_format=torch.contiguous_format)


@torch.library.register_fake("stochnet::random_start_fwd")
def _(x_orig, eps, norm, lo, hi, seed, offset):
    return torch.empty_like(x_orig, memory_format=torch.contiguous_format)
