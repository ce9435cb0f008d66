"""Every Triton kernel the dispatch launches, compiled ahead of time for sm_80 (A100) and sm_90 (H100)
with no GPU: no compile error, no register spill (local-memory load or store) or local memory, shared
memory within the target's limit. Writes the resource table to benchmarks/results/triton_aot.md.

The specialisations are recorded from the real launch sites (kernels/_runtime.py dry_run) while the
ops and the model run on CPU tensors, for each dtype, so this list cannot drift from what users run.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.aot
triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

import sgllie  # noqa: E402
import sgllie.ops as ops  # noqa: E402
from sgllie.kernels import _runtime  # noqa: E402
from sgllie.ops import _backends  # noqa: E402

TARGETS = (80, 90)
TABLE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "triton_aot.md"
# SGLLIE_AOT_BUILD_ONLY=1: compile errors only, no resource limits, no table, and each alignment variant
# group built once per target (triton_aot.alignment_cross_cover). For an older Triton than the one the
# limits and the table are kept for (a GPU runs the Triton its torch brings: torch 2.11's is 3.6),
# whose register allocation differs but which must still build every kernel (.ci/run).
BUILD_ONLY = os.environ.get("SGLLIE_AOT_BUILD_ONLY") == "1"


def _drive(dtype: torch.dtype) -> None:
    """Everything that launches Triton kernels in sgllie, in ``dtype``: every op in the shapes the
    tests use, the model's inference (scale 12) and a training step (forward, losses, backward)."""
    from sgllie.losses import LossWeights, SGZLoss

    def rand(*shape, grad=False):
        return torch.rand(*shape, dtype=dtype).requires_grad_(grad)

    with ops.use_backend("triton"):
        torch.manual_seed(0)
        model = sgllie.EnhanceNet(scale_factor=12).to(dtype).eval()
        with torch.inference_mode():
            model.enhance(rand(1, 3, 48, 60))
        model = sgllie.EnhanceNet(scale_factor=1).to(dtype)
        # widths a multiple of 16 or not: the JIT marks such sizes, and so builds other variants
        for x in (rand(2, 3, 32, 40), rand(2, 3, 32, 64)):
            enhanced, r = model(x)
            SGZLoss(LossWeights(sem=0))(enhanced, r, x)[0].backward()
        # odd channel counts, other activations, the single losses, a smaller r
        a, b = rand(2, 5, 9, 11, grad=True), rand(2, 3, 9, 11, grad=True)
        p = [rand(8, 1, 3, 3, grad=True), rand(8, grad=True), rand(7, 8, 1, 1, grad=True), rand(7, grad=True)]
        for act in (None, "relu", "tanh"):
            ops.dsconv2d(a, *p, x2=b, activation=act).sum().backward()
        y, i = rand(2, 3, 19, 35, grad=True), rand(2, 3, 19, 35, grad=True)
        for patch in (3, 4, 5):
            ops.spatial_consistency_loss(y, i, patch).backward()
        (ops.exposure_loss(y) + ops.color_constancy_loss(y) + ops.tv_loss(y)).backward()
        sum(ops.zero_reference_loss(y, i)).backward()
        ops.le_curve(y, rand(2, 3, 4, 5, grad=True)).sum().backward()


def _specialisations():
    import triton_aot
    specs = set()
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        specs |= triton_aot.specialisations(lambda: _drive(dtype))
    return sorted(specs, key=lambda s: (s.name, str(s.signature), s.config_str()))


@pytest.fixture(scope="module")
def specs(monkeypatch_module):
    if _backends.triton_interpreting():
        pytest.skip("compiles for GPU targets: run without TRITON_INTERPRET")
    monkeypatch_module.setenv("SGLLIE_CHECK_FINITE", "0")   # outputs of a dry run are uninitialised
    return _specialisations()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_every_launched_kernel_builds_for_sm80_and_sm90(specs):
    import triton_aot
    assert len({s.name for s in specs}) >= 4, "the dry run recorded too few kernels: is the triton backend wired?"
    rows, failures = [], []
    pairs = (triton_aot.alignment_cross_cover if BUILD_ONLY else triton_aot.every_pair)(specs, TARGETS)
    for spec, capability, b in triton_aot.build_all(pairs, measure=not BUILD_ONLY):
        where = f"{spec.name} [{spec.config_str()}] ({triton_aot.pointer_types(spec)}) sm_{capability}"
        if isinstance(b, str):  # collect them all: one table of what fails
            failures.append(f"{where}: compile error {b}")
            continue
        if BUILD_ONLY:
            continue
        rows.append((spec, b))
        if b.local or b.spills:
            failures.append(f"{where}: spills ({b.spills} local-memory loads and stores, {b.local} bytes "
                            f"local memory, {b.stack} bytes stack)")
        if b.shared > triton_aot.SHARED_LIMIT[capability]:
            failures.append(f"{where}: {b.shared} bytes of shared memory > {triton_aot.SHARED_LIMIT[capability]}")
    if not BUILD_ONLY:
        _write_table(rows, failures)
    assert not failures, "\n".join(failures)


def test_alignment_cross_cover_builds_each_group_on_each_target_and_both_extremes(specs):
    """The build-only check's fewer builds still cover every target of every specialisation that
    differs in more than alignment, and both the least and the most aligned variant of each."""
    import triton_aot
    pairs = triton_aot.alignment_cross_cover(specs, TARGETS)
    groups = triton_aot.alignment_groups(specs)
    built = {}
    for spec, capability in pairs:
        built.setdefault(triton_aot.unaligned(spec), []).append((len(spec.aligned), capability))
    assert built.keys() == groups.keys() and len(pairs) == len(TARGETS) * len(groups) < 2 * len(specs)
    for group, variants in groups.items():
        marks = sorted(len(s.aligned) for s in variants)
        assert sorted(built[group]) == [(marks[0], TARGETS[0]), (marks[-1], TARGETS[-1])], (group.name, built[group])
    assert any(len(v) > 1 for v in groups.values())  # alignment does split some: the test means something


def _tv_forward(r: torch.Tensor):
    """The specialisation of _tv_fwd a tv_loss of r launches (recorded by a dry run)."""
    import triton_aot
    from sgllie import kernels
    return next(s for s in triton_aot.specialisations(lambda: kernels.tv_loss(r)) if s.name == "_tv_fwd")


def test_dry_run_specialises_as_the_jit():
    """A recorded launch is the variant Triton's JIT would build: sizes equal to 1 become constants,
    sizes divisible by 16 and 16-byte-aligned pointers are marked so, the others are not."""
    if _backends.triton_interpreting():
        pytest.skip("records compiled launches: run without TRITON_INTERPRET")
    spec = _tv_forward(torch.rand(3 * 17 * 32 + 1)[1:].view(1, 3, 17, 32))  # 4 bytes past an aligned start
    assert {"scratch_ptr", "W"} <= set(spec.aligned) and not {"r_ptr", "H"} & set(spec.aligned), spec.aligned
    assert spec.attrs[(spec.kernel.arg_names.index("W"),)] == [["tt.divisibility", 16]]
    one_row = _tv_forward(torch.rand(1, 3, 1, 32))
    assert dict(one_row.signature)["H"] == "constexpr" and dict(one_row.constexprs)["H"] == 1


def test_float16_channels_last_whole_layers_take_the_register_capped_forward(monkeypatch):
    """The model's inner layers at inference (float16, channels-last, whole chunks of channels)
    launch the forward whose 8x16 and 16x16 tap products are capped at 128 registers (a 4K frame's
    layer in one wave); NCHW and masked launches never do: their builds spill at 128."""
    if _backends.triton_interpreting():
        pytest.skip("records compiled launches: run without TRITON_INTERPRET")
    import triton_aot
    monkeypatch.setenv("SGLLIE_CHECK_FINITE", "0")

    def caps(c, o, last):
        x = torch.rand(1, c, 9, 20, dtype=torch.float16)
        x = x.contiguous(memory_format=torch.channels_last) if last else x
        p = [torch.rand(s, dtype=torch.float16) for s in ((2 * c, 1, 3, 3), (2 * c,), (o, 2 * c, 1, 1), (o,))]
        specs = triton_aot.specialisations(lambda: ops.dsconv2d(x, *p, x2=x, backend="triton"))
        return {s.maxnreg for s in specs if dict(s.constexprs).get("TAPS") == "products"
                and dict(s.constexprs)["TAP_GROUP"] == 1}

    assert caps(32, 32, last=True) == {128}
    assert 128 not in caps(32, 32, last=False) | caps(32, 3, last=True) | caps(5, 32, last=True)


def test_host_overhead_rows_run_with_nothing_launched_or_recorded():
    """benchmarks/host_overhead.py times every row inside dry_run(record=False): each row runs (its
    op calls the Triton backend on CPU tensors), and nothing is launched or recorded."""
    if _backends.triton_interpreting():
        pytest.skip("dry runs need compiled kernels: run without TRITON_INTERPRET")
    from benchmarks import host_overhead

    rows = []
    with _runtime.dry_run(record=False) as recorded:
        for row in host_overhead._rows():
            with host_overhead._nan_checks(row.nan_checks):
                row.call()
            rows.append((row.op, row.layer))
    assert not recorded
    assert len(rows) == 23 and len(set(rows)) == 23, rows
    with _runtime.dry_run() as recorded:
        next(host_overhead._rows()).call()
    assert {s.name for s in recorded} == {"_le_curve_fwd"}


def test_fp_fusion_stays_on_whatever_tritons_default(monkeypatch):
    """Launches and AOT builds ask for FP fusion (FMAs) themselves: Triton 3.10 turns its default off."""
    if _backends.triton_interpreting():
        pytest.skip("records compiled launches: run without TRITON_INTERPRET")
    import triton_aot
    from sgllie.kernels import losses

    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "0")
    asked = {}
    monkeypatch.setattr(losses._sum_finish, "run", lambda *args, **kwargs: asked.update(kwargs))
    from sgllie.kernels._stub_driver import stub_driver  # a launch asks the driver for the device first
    with contextlib.nullcontext() if torch.cuda.is_available() else stub_driver():
        _runtime.launch(losses._sum_finish, (1,), torch.zeros(4, dtype=torch.float64), torch.zeros(()), 1.0,
                        COMPUTE=tl.float32, BLOCK=16)
    assert asked["enable_fp_fusion"] is True, asked
    assert triton_aot.compile_for(_tv_forward(torch.rand(1, 3, 17, 32)), 90).metadata.enable_fp_fusion


def test_sass_stats_reads_the_loops_of_a_build(specs):
    """benchmarks/sass_stats.py (instructions and loops of the builds, quoted in the README) on a real
    cubin: the dsconv2d forward loops over chunks of channels."""
    import triton_aot
    from benchmarks import sass_stats
    forward = next(s for s in specs if s.name == "_dsconv_fwd")
    total, bodies = sass_stats.loops(triton_aot.cuobjdump(triton_aot.compile_for(forward, 90), "-sass"))
    assert total > 100 and bodies and all(0 < b < total for b in bodies), (total, bodies)


def _write_table(rows, failures) -> None:
    import triton_aot
    lines = ["# Triton kernels compiled ahead of time (no GPU)", "",
             "Written by `pytest -m aot` (tests/test_triton_aot.py): every specialisation the dispatch "
             "launches, recorded from the launch sites while the ops and the model run in float32, float16, "
             "bfloat16 and float64, compiled with `triton.compile` for sm_80 and sm_90; resources read "
             f"from the cubins with cuobjdump. Triton {triton.__version__}.", "",
             f"{len({r[0] for r in rows})} specialisations, {len(rows)} builds, {len(failures)} failures.", "",
             "| kernel | constexprs; warps, stages | pointer types | target | registers | shared bytes | "
             "spill loads and stores (stack bytes) |",
             "|---|---|---|---|---:|---:|---:|"]
    for spec, b in rows:
        lines.append(f"| {spec.name} | {spec.config_str()} | {triton_aot.pointer_types(spec)} | sm_{b.capability} | "
                     f"{b.registers} | {b.shared} | {b.spills} ({b.stack}) |")
    if failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    TABLE.parent.mkdir(exist_ok=True)
    TABLE.write_text("\n".join(lines) + "\n")


def _next_pow2(n):
    return 1 << (n - 1).bit_length()


_pow2 = _runtime._constexpr_function(_next_pow2)


@triton.jit
def _stand_in_kernel(out_ptr, N: tl.constexpr):
    i = tl.arange(0, _pow2(N))
    tl.store(out_ptr + i, i.to(tl.float32), mask=i < N)


def test_constexpr_function_stand_in_compiles():
    """The stand-in for triton.constexpr_function that Tritons before 3.5 get (kernels/_runtime.py):
    plain Python from the host, a constant inside a compiled kernel (built here with this Triton; CI's
    3.3 step builds the kernels that use it with that one)."""
    if _backends.triton_interpreting():
        pytest.skip("compiles for a GPU target: run without TRITON_INTERPRET")
    import triton_aot

    assert _pow2(5) == _pow2.fn(5) == 8
    spec = _runtime.Specialisation(_stand_in_kernel, (("out_ptr", "*fp32"), ("N", "constexpr")), (("N", 5),), 1, 1)
    ttir = triton_aot.compile_for(spec, 90).asm["ttir"]
    assert "tt.make_range {end = 8 : i32" in ttir, ttir   # arange(0, _pow2(5)): the 8 folded in


def test_float64_dsconv2d_runs_the_reference_where_triton_has_no_float64_dot(monkeypatch):
    """Triton < 3.5 compiles no float64 tl.dot: there a float64 dsconv2d, forward and backward, is
    the reference's plain PyTorch (same results), and launches no kernel of its own."""
    if _backends.triton_interpreting():
        pytest.skip("records compiled launches: run without TRITON_INTERPRET")
    import importlib

    import triton_aot
    from sgllie.ops import reference

    module = importlib.import_module("sgllie.kernels.dsconv2d")  # (the package's dsconv2d is the function)
    monkeypatch.setattr(module, "_FLOAT64_DOT", False)
    monkeypatch.setenv("SGLLIE_CHECK_FINITE", "0")
    torch.manual_seed(0)
    x, x2 = torch.rand(2, 3, 7, 9, dtype=torch.float64), torch.rand(2, 2, 7, 9, dtype=torch.float64)
    params = [torch.rand(5, 1, 3, 3), torch.rand(5), torch.rand(4, 5, 1, 1), torch.rand(4)]
    params = [p.double().requires_grad_() for p in params]
    outputs = {}

    def run():
        y = ops.dsconv2d(x, *params, x2=x2, activation="tanh", backend="triton")
        outputs["triton"] = (y, *torch.autograd.grad(y.square().sum(), params))

    assert not {s.name for s in triton_aot.specialisations(run)} & {"_dsconv_fwd", "_dsconv_bwd_dz"}
    y = reference.dsconv2d(x, *params, x2, "tanh")
    expected = (y, *torch.autograd.grad(y.square().sum(), params))
    for got, want in zip(outputs["triton"], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
