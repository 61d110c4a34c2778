"""The device rule of the ops' fake implementations.

A call with a meta tensor beside CPU (or CUDA) tensors dispatches to the fake implementation,
whose outputs are uninitialized memory: every fake implementation checks the devices first, so
such a call is an error and never a result.
"""


def check_same_device(first_name, first, **others):
    """Every tensor of ``others`` (name=tensor) is on the device of ``first``."""
    for name, tensor in others.items():
        if tensor.device != first.device:
            raise ValueError(f"{name} is on {tensor.device} but {first_name} is on {first.device}")
