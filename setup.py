"""Builds the extension ``stochnet._C`` and installs ``kernels/`` as ``stochnet.kernels``.

Environment:
  STOCHNET_CUDA=0|1           force the CUDA sources off / on (default: on when a CUDA
                              toolkit and a CUDA build of torch are present)
  STOCHNET_CPU_CAPABILITY     DEFAULT, AVX2 or AVX512 (default: what this machine runs,
                              as torch reports it); the C++ CPU kernels are built for it
"""
import glob
import os
import site

import torch
from setuptools import find_packages, setup

# torch derives the toolkit from `nvcc` on PATH; a wrapper script in /usr/local/bin would make
# it /usr/local. Prefer the conventional toolkit directory when the user has not chosen one.
if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda/include"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME at import)

CPU_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}


def cpu_capability():
    wanted = os.environ.get("STOCHNET_CPU_CAPABILITY") or torch.backends.cpu.get_cpu_capability()
    wanted = wanted.upper()
    return wanted if wanted in CPU_FLAGS else "DEFAULT"


def want_cuda():
    flag = os.environ.get("STOCHNET_CUDA")
    if flag is not None:
        return flag == "1"
    return cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None


def cuda_include_dirs():
    """Headers torch's CUDA build expects that ship in the pip package ``nvidia``."""
    dirs = []
    for root in site.getsitepackages():
        dirs += glob.glob(os.path.join(root, "nvidia", "cu*", "include"))
    return dirs


def extension():
    capability = cpu_capability()
    cxx = ["-O3", "-std=c++20", "-ffp-contract=off", "-fno-math-errno", "-Wno-unknown-pragmas", "-fopenmp",
           f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}",
           f'-DSTOCHNET_CPU_CAPABILITY="{capability}"'] + CPU_FLAGS[capability]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.abspath("csrc")]
    if not want_cuda():
        return cpp_extension.CppExtension("stochnet._C", sources, include_dirs=include_dirs,
                                          extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
    nvcc = ["-O3", "-std=c++20", "--fmad=false", "-DSTOCHNET_WITH_CUDA"]
    nvcc += os.environ.get("STOCHNET_NVCC_ARCH", "-gencode=arch=compute_80,code=sm_80 "
                           "-gencode=arch=compute_90,code=sm_90").split()
    return cpp_extension.CUDAExtension(
        "stochnet._C", sources, include_dirs=include_dirs + cuda_include_dirs(),
        extra_compile_args={"cxx": cxx + ["-DSTOCHNET_WITH_CUDA"], "nvcc": nvcc},
        extra_link_args=["-fopenmp"])


setup(
    packages=["stochnet", *(f"stochnet.{name}" for name in find_packages("stochnet")), "stochnet.kernels"],
    package_dir={"stochnet": "stochnet", "stochnet.kernels": "kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
