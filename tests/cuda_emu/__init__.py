"""csrc/cuda built as host C++ against cuda_emulation.h and bound to CPU tensors: the ``cuda_emu``
backend the tests run the CUDA kernels' own source through (no GPU needed).

``build()`` compiles it once per source change (torch's JIT extension builder, cached under
~/.cache/torch_extensions) and loads it as ``torch.ops.sgllie_cuda_emu``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
NAME = "sgllie_cuda_emu"


def sources() -> list[Path]:
    return sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


@functools.cache
def build() -> str:
    """Build and load the emulated kernels; returns "" or why they cannot be built here."""
    if not (CUDA_INCLUDE / "cuda_fp16.h").exists():
        return f"needs the CUDA headers (cuda_fp16.h) under {CUDA_INCLUDE}; set CUDA_HOME"
    from torch.utils import cpp_extension
    build_dir = Path(os.environ.get("SGLLIE_EMU_BUILD", Path.home() / ".cache" / "sgllie" / "cuda_emu"))
    build_dir.mkdir(parents=True, exist_ok=True)
    # each .cu is its own translation unit (their file-local names may repeat), compiled as C++
    stubs = []
    for cu in sources():
        stub = build_dir / f"{cu.stem}_emu.cpp"
        text = f'#include "{cu}"\n'
        if not stub.exists() or stub.read_text() != text:
            stub.write_text(text)
        stubs.append(str(stub))
    cpp_extension.load(
        name=NAME,
        sources=[str(HERE / "module.cpp"), str(ROOT / "csrc" / "cuda" / "bind.cpp"), *stubs],
        extra_include_paths=[str(ROOT / "csrc" / "include"), str(ROOT / "csrc" / "cuda"), str(HERE),
                             str(CUDA_INCLUDE)],
        # torch builds CUDA sources without implicit half/bfloat16 conversions: so does the emulation
        extra_cflags=["-O2", "-std=c++20", "-DSGLLIE_CUDA_EMULATION", f"-DSGLLIE_BIND_LIBRARY={NAME}",
                      *(f for f in cpp_extension.COMMON_NVCC_FLAGS if f.startswith("-D__CUDA_NO_")),
                      # few persistent blocks, so the test shapes walk several tiles (strides) per
                      # block, as the GPU build does on large images
                      "-DSGLLIE_DSCONV_MAX_BWD_BLOCKS=3", "-DSGLLIE_TV_MAX_BLOCKS=2"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    return ""
