"""Triton kernels of stochnet, installed as ``stochnet.kernels`` (see the package-dir mapping in setup.py).

One module per job: ``philox`` holds the noise stream shared by every noise kernel, ``blocks``
the block preamble of the 1-D kernels; the other modules (perturb, smoothing, pgd, stoc_relu_ema)
hold one op's kernels and declare its ops ``stochnet_triton::<op>`` with the schemas of
csrc/ops.cpp (:func:`stochnet.ops.library.triton_ops` imports them). Arguments are checked by
:mod:`stochnet.ops.checks`. Importing this package imports nothing heavy; each module imports
triton itself.
"""
