"""Argument checks shared by the Triton launchers."""
import os

import torch


def check_device(t, name):
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"{name} is a CPU tensor: the Triton kernels run on CPU tensors only with "
                         "TRITON_INTERPRET=1 set before triton is imported")


def floating_dtypes(device):
    if device.type == "cpu":
        return (torch.float32, torch.float64)
    return (torch.float16, torch.bfloat16, torch.float32, torch.float64)
