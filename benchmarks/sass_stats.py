"""What a GPU would execute, read without one: the Triton kernels of one model layer and of the 4K
curve, built for sm_90 (or --arch) with ``triton.compile`` and disassembled with the ``cuobjdump``
of the triton wheel.

    python -m benchmarks.sass_stats [NAME_FILTER] [--arch 90]

Per launched specialisation: registers, shared memory, the static instruction count, and each
loop's body (instructions between a backward branch and its target, smallest first; an outer
loop's body includes its inner loops). With the
loops' trip counts (e.g. chunks of channels, tiles of a run) these give the instructions a thread
runs per call; times threads over the tile's pixels, the instructions per pixel the README quotes.
A proxy for kernels that are instruction- or latency-bound, not a timing.
"""
from __future__ import annotations

import argparse
import os
import re

import torch

from tests import triton_aot

_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
_BACK_BRANCH = re.compile(r"BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)")


def _drive() -> None:
    """The launches to read: a 32 -> 32 relu layer forward (NCHW and channels-last) and backward; a
    32+32 -> 32 relu layer of the 4K float16 inference (1/12 scale, channels-last, NCHW: its tap
    products); and the 4K float16 curve."""
    import sgllie.kernels as K  # noqa: PLC0415

    x = torch.rand(8, 32, 64, 64)
    p = [torch.rand(32, 1, 3, 3), torch.rand(32), torch.rand(32, 32, 1, 1), torch.rand(32)]
    y = K.dsconv2d(x, *p, activation="relu")
    K.dsconv2d_backward(y, x, *p, activation="relu", out=y)
    K.dsconv2d(x.contiguous(memory_format=torch.channels_last), *p, activation="relu")
    half = [torch.rand(s, dtype=torch.float16) for s in ((64, 1, 3, 3), (64,), (32, 64, 1, 1), (32,))]
    for layout in (torch.channels_last, torch.contiguous_format):
        x = torch.rand(1, 32, 180, 320, dtype=torch.float16).contiguous(memory_format=layout)
        K.dsconv2d(x, *half, x2=x, activation="relu")
    K.le_curve(torch.rand(1, 3, 2160, 3840, dtype=torch.float16),
               torch.rand(1, 3, 180, 320, dtype=torch.float16), 8)


def loops(sass: str) -> tuple[int, list[int]]:
    """(instructions, loop body sizes, smallest first) of one kernel's SASS."""
    instructions = [(int(m.group(1), 16), m.group(2)) for m in _INSTRUCTION.finditer(sass)]
    step = instructions[1][0] - instructions[0][0] if len(instructions) > 1 else 16
    bodies = []
    for address, text in instructions:
        m = _BACK_BRANCH.search(text)
        if m and int(m.group(1), 16) < address:
            bodies.append((address - int(m.group(1), 16)) // step + 1)
    return len(instructions), sorted(bodies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="", help="only kernels whose name contains this")
    parser.add_argument("--arch", type=int, default=90, help="compute capability (default 90)")
    args = parser.parse_args()
    os.environ.setdefault("SGLLIE_CHECK_FINITE", "0")
    print("| kernel | config | dtypes | registers | shared | instructions | loop bodies |")
    print("|---|---|---|---:|---:|---:|---|")
    for spec in sorted(triton_aot.specialisations(_drive), key=lambda s: (s.name, s.config_str())):
        if args.name not in spec.name:
            continue
        compiled = triton_aot.compile_for(spec, args.arch)
        build = triton_aot.resources(compiled, args.arch)
        total, bodies = loops(triton_aot.cuobjdump(compiled, "-sass"))
        dtypes = triton_aot.pointer_types(spec)
        print(f"| {spec.name} | {spec.config_str()} | {dtypes} | {build.registers} | {build.shared} | {total} | "
              f"{', '.join(map(str, bodies)) or '-'} |", flush=True)


if __name__ == "__main__":
    main()
