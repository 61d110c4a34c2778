"""The CPU output pool: large outputs of the C++ ops reuse freed buffers instead of fresh pages."""
import os
import subprocess
import sys

import torch

import stochnet

PHILOX = torch.tensor([1, 0])


def forward(x):
    """(y, mask) of the eval-mode StocReLU-EMA op: y and the mask are pooled outputs."""
    y, mask, _ = torch.ops.stochnet.stoc_relu_ema(x, torch.ones(x.shape[1]), 0.5, 0.5, False, PHILOX)
    return y, mask


def test_freed_output_is_reused_and_contents_are_fresh():
    stochnet.release_cpu_output_pool()
    x = torch.randn(8, 16, 64, 64)  # 2 MB: pooled
    y, _ = forward(x)
    address, expected = y.data_ptr(), y.clone()
    del y
    assert torch.ops.stochnet.cpu_output_pool_idle_bytes() >= x.numel() * 4
    again, _ = forward(x)
    assert again.data_ptr() == address
    assert torch.equal(again, expected)
    del again
    assert stochnet.release_cpu_output_pool() >= x.numel() * 4
    assert torch.ops.stochnet.cpu_output_pool_idle_bytes() == 0


def test_pooled_outputs_behave_like_tensors():
    x = torch.randn(4, 64, 32, 32).contiguous(memory_format=torch.channels_last)
    y, mask = forward(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and mask.dtype == torch.uint8
    y.resize_(2 * y.numel())  # resizable storage, like any CPU tensor
    assert y.numel() == 2 * x.numel()


def test_small_outputs_are_not_pooled():
    stochnet.release_cpu_output_pool()
    y, _ = forward(torch.randn(2, 3, 4, 4))
    del y
    assert torch.ops.stochnet.cpu_output_pool_idle_bytes() == 0


def test_pool_can_be_turned_off():
    code = ("import torch, stochnet\n"
            "y, _, _ = torch.ops.stochnet.stoc_relu_ema(torch.randn(8, 16, 64, 64), torch.ones(16), 0.5, 0.5, "
            "False, torch.tensor([1, 0]))\n"
            "del y\n"
            "assert torch.ops.stochnet.cpu_output_pool_idle_bytes() == 0\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "STOCHNET_CPU_POOL_MB": "0"})
