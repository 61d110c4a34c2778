"""Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
