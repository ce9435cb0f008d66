"""Ahead-of-time builds of the Triton kernels for real GPU targets, with no GPU and no driver.

``specialisations(drive)`` runs ``drive()`` under ``sgllie.kernels._runtime.dry_run`` and returns
what its launches would compile; ``build(spec, capability)`` compiles one for sm_<capability>
with ``triton.compile`` and reads registers, shared memory, stack and local memory from the cubin
with the ``cuobjdump`` shipped in the triton wheel, and spills (local-memory loads and stores)
from its SASS.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, replace

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
    spills: int  # local-memory loads and stores in the SASS: a stack frame alone is none (Triton's
    #              LLVM code sometimes declares a local array it never uses; ptxas still gives it 8 bytes)


def specialisations(drive) -> set:
    from sgllie.kernels import _runtime

    with _runtime.dry_run() as specs:
        drive()
    return specs


def pointer_types(spec) -> str:
    """The element types of a specialisation's pointer arguments, e.g. "bf16,fp32"."""
    return ",".join(sorted({t[1:] for _, t in spec.signature if t.startswith("*")}))


def compile_for(spec, capability: int):
    """``triton.compile`` of one specialisation for sm_<capability>: no GPU, no driver."""
    source = ASTSource(fn=spec.kernel, signature=dict(spec.signature), constexprs=dict(spec.constexprs),
                       attrs=spec.attrs)
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
    """Registers, shared memory, stack and local memory of a compiled kernel, from its cubin, and
    its local-memory instructions where it has a stack or local memory."""
    fields = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)",
                                                cuobjdump(compiled, "--dump-resource-usage"))}
    spills = 0
    if fields["STACK"] or fields["LOCAL"]:
        spills = len(re.findall(r"\b(?:LDL|STL)\b", cuobjdump(compiled, "-sass")))
    # Triton's shared memory is dynamic: the launch asks for metadata.shared bytes
    return Build(capability, fields["REG"], fields["SHARED"] + compiled.metadata.shared, fields["STACK"],
                 fields["LOCAL"], spills)


_jobs: list = []  # build_all's (specialisation, capability) pairs, read by its forked workers
_measure = True   # build_all's choice: read each build's resources, or compile only


def _build_job(k: int):
    spec, capability = _jobs[k]
    try:
        if not _measure:
            compile_for(spec, capability)
            return None
        return build(spec, capability)
    except Exception as e:  # reported with the others
        return f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"


def every_pair(specs, capabilities) -> list[tuple[object, int]]:
    """Every specialisation for every target."""
    return [(spec, capability) for spec in specs for capability in capabilities]


def unaligned(spec):
    """The specialisation without its alignment marks: what its alignment variants share."""
    return replace(spec, aligned=())


def alignment_groups(specs) -> dict:
    """Specialisations that differ only in their alignment marks, keyed by ``unaligned``."""
    groups: dict = {}
    for spec in specs:
        groups.setdefault(unaligned(spec), []).append(spec)
    return groups


def alignment_cross_cover(specs, capabilities) -> list[tuple[object, int]]:
    """Fewer builds than every_pair, for a check of compile errors only: specialisations that differ
    only in their alignment marks form a group, each group is built once per target, and its least
    and most aligned variants both built (sm_80 the least: scalar loads; sm_90 the most: vector
    loads): about 60% of every_pair's builds for sgllie's kernels."""
    pairs = []
    for variants in alignment_groups(specs).values():
        variants.sort(key=lambda s: (len(s.aligned), s.aligned))
        last = len(capabilities) - 1
        pairs += [(variants[round(k * (len(variants) - 1) / max(last, 1))], capability)
                  for k, capability in enumerate(capabilities)]
    return pairs


def build_all(pairs, measure: bool = True) -> list[tuple[object, int, Build | None | str]]:
    """(spec, capability, its Build or its compile error) for each (spec, capability) pair, built on
    every core by forked workers (a specialisation holds its kernel, which does not pickle). With
    ``measure`` False the Build is None: compile errors only, no cuobjdump run per build."""
    global _jobs, _measure
    _jobs = list(pairs)
    _measure = measure
    workers = min(len(os.sched_getaffinity(0)), 8)
    if workers < 2:
        results = [_build_job(k) for k in range(len(_jobs))]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_build_job, range(len(_jobs)), chunksize=4)
    return [(spec, capability, result) for (spec, capability), result in zip(_jobs, results, strict=True)]
