"""Ahead-of-time builds of the Triton kernels for real GPU targets, with no GPU and no driver.

``specialisations(drive)`` runs ``drive()`` under ``sgllie.kernels._runtime.dry_run`` and returns
what its launches would compile; ``build(spec, capability)`` compiles one for sm_<capability>
with ``triton.compile`` and reads registers, shared memory, stack and local memory (spills) from
the cubin with the ``cuobjdump`` shipped in the triton wheel.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# Shared memory a block may use (opt-in maximum), bytes: A100 (sm_80) and H100 (sm_90).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


@dataclass
class Build:
    capability: int
    registers: int
    shared: int
    stack: int
    local: int


def specialisations(drive) -> set:
    from sgllie.kernels import _runtime

    with _runtime.dry_run() as specs:
        drive()
    return specs


def compile_for(spec, capability: int):
    """``triton.compile`` of one specialisation for sm_<capability>: no GPU, no driver."""
    source = ASTSource(fn=spec.kernel, signature=dict(spec.signature), constexprs=dict(spec.constexprs))
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=spec.options)


def cuobjdump(compiled, *flags: str) -> str:
    """cuobjdump's output on a compiled kernel's cubin (e.g. --dump-resource-usage, -sass)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([CUOBJDUMP, *flags, f.name], capture_output=True, text=True, check=True).stdout


def build(spec, capability: int) -> Build:
    return resources(compile_for(spec, capability), capability)


def resources(compiled, capability: int) -> Build:
    """Registers, shared memory, stack and local memory of a compiled kernel, from its cubin."""
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", cuobjdump(compiled, "--dump-resource-usage")))
    # Triton's shared memory is dynamic: the launch asks for metadata.shared bytes
    return Build(capability, int(fields["REG"]), int(fields["SHARED"]) + compiled.metadata.shared,
                 int(fields["STACK"]), int(fields["LOCAL"]))
