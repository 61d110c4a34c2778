"""Triton kernels of stochnet, installed as ``stochnet.kernels`` (see the package-dir mapping in setup.py).

One module per job: ``philox`` holds the noise stream shared by every noise kernel, ``blocks``
the block preamble of the 1-D kernels, ``checks`` the launchers' argument checks; the other
modules hold one op's kernels and thin launchers. Importing this package imports nothing heavy;
each module imports triton itself.
"""
