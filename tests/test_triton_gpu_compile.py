"""The 1-D Triton kernels compile for a Hopper GPU (sm_90) on a machine without one: the
interpreter runs them on CPU tensors, but only Triton's compiler checks that they lower to PTX.

The test suite turns the interpreter on without a GPU (conftest), and the interpreter replaces
``triton.jit`` at import, so the compilation runs in a child process without it.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _kernels():
    """name -> (kernel, runtime argument types, constexprs): every kernel built on kernels.blocks.block_range."""
    import triton.language as tl

    from stochnet.kernels import perturb, pgd, philox, stoc_relu_ema

    f32 = "*fp32"
    return {
        "perturb_forward": (perturb._forward_kernel,
                            {"x_ptr": f32, "theta_ptr": f32, "y_ptr": f32, "numel": "i64", "inner": "i32",
                             "C": "i32", "F": "i32", "philox_ptr": "*i64"},
                            {"MODE": 1, "COMPUTE": tl.float32, "INDEX_64": True, "BLOCK": 2048}),
        "pgd_mim": (pgd._linf_kernel,
                    {**{name: f32 for name in ("x_adv_ptr", "grad_ptr", "x_orig_ptr", "mom_ptr", "eps_ptr",
                                               "alpha_ptr", "denom_ptr", "params_ptr", "out_ptr")},
                     "numel": "i64", "K": "i32"},
                    {"MIM": True, "COMPUTE": tl.float32, "INDEX_64": False, "BLOCK": 2048}),
        "pgd_l2": (pgd._l2_kernel,
                   {**{name: f32 for name in ("x_adv_ptr", "grad_ptr", "x_orig_ptr", "scale_ptr", "factor_ptr",
                                              "params_ptr", "out_ptr")},
                    "numel": "i64", "K": "i32"},
                   {"COMPUTE": tl.float64, "INDEX_64": True, "BLOCK": 2048}),
        "pgd_random_start": (pgd._random_start_kernel,
                             {**{name: f32 for name in ("x_ptr", "eps_ptr", "factor_ptr", "params_ptr", "out_ptr")},
                              "numel": "i64", "K": "i32", "philox_ptr": "*i64"},
                             {"L2": True, "COMPUTE": tl.float32, "INDEX_64": False, "BLOCK": 2048}),
        "stoc_relu_ema_flat": (stoc_relu_ema._flat_kernel,
                               {"x_ptr": f32, "scale_ptr": f32, "y_ptr": f32, "mask_ptr": "*u8", "numel": "i64",
                                "K": "i32", "C": "i32", "philox_ptr": "*i64"},
                               {"INDEX_64": True, "BLOCK": 2048}),
        "stoc_relu_ema_mask_backward": (stoc_relu_ema._mask_backward_kernel,
                                        {"grad_ptr": f32, "mask_ptr": "*u8", "out_ptr": f32, "numel": "i64"},
                                        {"INDEX_64": False, "BLOCK": 2048}),
        "philox_stream": (philox._stream_kernel,
                          {"out_ptr": f32, "philox_ptr": "*i64", "numel": "i64", "shift": "i64"},
                          {"KIND": 2, "BLOCK": 1024}),
    }


def compile_for_sm90():
    """Compile every kernel of :func:`_kernels` to sm_90 code; prints the name of each that did."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for name, (kernel, arguments, constexprs) in _kernels().items():
        signature = {**arguments, **{key: "constexpr" for key in constexprs}}
        if list(signature) != kernel.arg_names:
            raise AssertionError(f"{name}: argument types {list(signature)} do not follow {kernel.arg_names}")
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                                  options={"enable_fp_fusion": False})
        if f".entry {kernel.__name__}" not in compiled.asm["ptx"] or not compiled.asm["cubin"]:
            raise AssertionError(f"{name}: no PTX entry or no cubin")
        print(name, flush=True)


def test_kernels_compile_for_sm90():
    triton = pytest.importorskip("triton")
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton has no NVIDIA backend")
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    child = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
             "import test_triton_gpu_compile as t; t.compile_for_sm90()")
    result = subprocess.run([sys.executable, "-c", child], env=environment, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == list(_kernels())
