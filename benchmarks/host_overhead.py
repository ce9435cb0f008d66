"""The host's own time per call of the Triton backend, measured without a GPU.

    python -m benchmarks.host_overhead     writes benchmarks/results/host_overhead.md

Several of the H100 benchmarks are bound by the host, not by the kernels: zero_reference_loss
forward+backward took 1.5 ms where its kernels take 48 us (benchmarks/results/
cuda-nvidia-h100-80gb-hbm3-profile.md). What the host does per call is measured here, on CPU
tensors, three ways: inside ``sgllie.kernels._runtime.dry_run(record=False)`` every line of each op
runs except the launches; under ``sgllie.kernels._stub_driver.stub_driver()`` the launches go the
whole way through Triton too (its binding, specialisation and compile cache, the autotuner), only the
driver's part replaced by a recording stub, once with every launch through Triton's own launch path
and once as sgllie launches on a GPU (kernels/_runtime.py: Triton's path once per specialisation,
then straight to the compiled kernel). Each layer of a call is timed on its own: the kernel function
(``sgllie.kernels``: allocations, grids, launches), the ``torch.ops.sgllie`` op (adds the dispatcher
and autograd), the public ``sgllie.ops`` function (adds argument checks and the backend choice), and
forward + backward with ``torch.autograd.grad``.

Allocations here are CPU ones (a CUDA caching allocator's cost differs), and a GPU machine's host
may be slower or faster: compare rows with each other and with the eager PyTorch rows measured in
the same run, not with GPU timings.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _side_by_side(row, columns, calls: int = 300, repeats: int = 7) -> dict[str, float]:
    """Per column, the least over ``repeats`` of the mean time of ``calls`` back-to-back calls (one
    thread): what a call costs when nothing else on the machine gets in its way. The columns take
    turns within each repeat, so that a machine's drift falls on all of them alike."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        for column in columns:
            with _launching(column), _nan_checks(row.nan_checks):
                for _ in range(10):  # warm (the first call of each specialisation compiles: stub driver)
                    row.call()
                t0 = time.perf_counter()
                for _ in range(calls):
                    row.call()
                best[column] = min(best.get(column, float("inf")), (time.perf_counter() - t0) / calls * 1e6)
    return best


def _fwd_bwd(op, wrt):
    def call():
        out = op()
        total = sum(out) if isinstance(out, tuple) else out.sum()
        return torch.autograd.grad(total, wrt)
    return call


@dataclass(frozen=True)
class Row:
    op: str
    layer: str
    call: Callable[[], object]
    nan_checks: bool = False   # timed with SGLLIE_CHECK_FINITE=1
    triton: bool = True        # launches Triton kernels (not an eager PyTorch row)


def _rows():
    """Every measured call: small tensors, so that what is timed is the host's work per call and not
    the CPU's arithmetic (no kernel runs, but eager rows compute)."""
    import sgllie.ops as ops  # noqa: PLC0415
    from sgllie import kernels as K  # noqa: PLC0415
    from sgllie.ops import reference as R  # noqa: PLC0415

    x, r = torch.rand(1, 3, 24, 32), torch.rand(1, 3, 4, 6) * 2 - 1
    rg = r.clone().requires_grad_()
    op = "le_curve (r upsampled)"
    yield Row(op, "kernel function", lambda: K.le_curve(x, r, 8))
    yield Row(op, "torch.ops.sgllie", lambda: torch.ops.sgllie.le_curve(x, r, 8, "triton"))
    yield Row(op, "sgllie.ops", lambda: ops.le_curve(x, r, backend="triton"))
    yield Row(op, "sgllie.ops fwd+bwd", _fwd_bwd(lambda: ops.le_curve(x, rg, backend="triton"), rg))
    yield Row(op, "eager PyTorch fwd+bwd", _fwd_bwd(lambda: R.le_curve(x, rg), rg), triton=False)

    a, b = torch.rand(1, 32, 8, 8), torch.rand(1, 32, 8, 8)
    params = [torch.rand(64, 1, 3, 3), torch.rand(64), torch.rand(32, 64, 1, 1), torch.rand(32)]
    grads = [p.clone().requires_grad_() for p in params]
    op = "dsconv2d 32+32->32"
    yield Row(op, "kernel function", lambda: K.dsconv2d(a, *params, x2=b, activation="relu"))
    yield Row(op, "sgllie.ops", lambda: ops.dsconv2d(a, *params, x2=b, activation="relu", backend="triton"))
    yield Row(op, "sgllie.ops fwd+bwd", _fwd_bwd(
        lambda: ops.dsconv2d(a, *grads, x2=b, activation="relu", backend="triton"), grads))
    yield Row(op, "eager PyTorch fwd+bwd", _fwd_bwd(lambda: R.dsconv2d(a, *grads, x2=b, activation="relu"), grads),
              triton=False)

    y, i = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32) * 0.3
    yg = y.clone().requires_grad_()
    op = "zero_reference_loss"
    yield Row(op, "kernel function", lambda: K.zero_reference_loss_forward(y, i, 4, 0.6, 16))
    yield Row(op, "torch.ops.sgllie", lambda: torch.ops.sgllie.zero_reference_loss(y, i, 4, 0.6, 16, "triton"))
    yield Row(op, "sgllie.ops", lambda: ops.zero_reference_loss(y, i, backend="triton"))
    yield Row(op, "sgllie.ops fwd+bwd", _fwd_bwd(lambda: ops.zero_reference_loss(yg, i, backend="triton"), yg))
    yield Row(op, "eager PyTorch fwd+bwd", _fwd_bwd(lambda: R.zero_reference_loss(yg, i), yg), triton=False)

    op = "tv_loss"
    yield Row(op, "kernel function", lambda: K.tv_loss(y))
    yield Row(op, "sgllie.ops", lambda: ops.tv_loss(y, backend="triton"))
    yield Row(op, "sgllie.ops fwd+bwd", _fwd_bwd(lambda: ops.tv_loss(yg, backend="triton"), yg))
    yield Row(op, "eager PyTorch fwd+bwd", _fwd_bwd(lambda: R.tv_loss(yg), yg), triton=False)

    yield Row("zero_reference_loss", "sgllie.ops, NaN checks on",
              lambda: ops.zero_reference_loss(y, i, backend="triton"), nan_checks=True)

    # the model: a frame's inference at scale 12 (9 launches) and a training step without the semantic
    # term (60 launches), as a GPU runs them when nothing is graphed
    from sgllie import EnhanceNet  # noqa: PLC0415
    from sgllie.losses import LossWeights, SGZLoss  # noqa: PLC0415

    frame, crops = torch.rand(1, 3, 48, 72), torch.rand(2, 3, 32, 32)
    inference, trained, loss = EnhanceNet(scale_factor=12).eval(), EnhanceNet(), SGZLoss(LossWeights(sem=0))

    def infer(backend):
        with ops.use_backend(backend), torch.inference_mode():
            return inference.enhance(frame)

    def train_step(backend):
        with ops.use_backend(backend):
            enhanced, r = trained(crops)
            return torch.autograd.grad(loss(enhanced, r, crops)[0], list(trained.parameters()))

    yield Row("EnhanceNet(scale 12).enhance 72x48", "sgllie (triton)", lambda: infer("triton"))
    yield Row("EnhanceNet(scale 12).enhance 72x48", "eager PyTorch", lambda: infer("reference"), triton=False)
    # GraphedEnhance's Python a frame besides its network's replay (stood in by the map a replay
    # returns): the check, the downscale, the curve. StaticEnhance's frame is the replay alone.
    from sgllie.graphs import GraphedEnhance  # noqa: PLC0415

    graphed, replayed = GraphedEnhance(inference, backend="triton"), torch.rand(1, 3, 4, 6) * 2 - 1
    graphed._factor_network = lambda x_down: replayed
    yield Row("EnhanceNet(scale 12).enhance 72x48", "GraphedEnhance (triton), besides the replay",
              lambda: graphed(frame))
    # (no eager row: the CPU's convolutions would be most of its time)
    yield Row("training step (sem=0) 2x3x32x32", "sgllie (triton)", lambda: train_step("triton"))


@contextlib.contextmanager
def _nan_checks(on: bool):
    saved = os.environ.get("SGLLIE_CHECK_FINITE")
    os.environ["SGLLIE_CHECK_FINITE"] = "1" if on else "0"  # (off: outputs of no launch are uninitialised)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["SGLLIE_CHECK_FINITE"]
        else:
            os.environ["SGLLIE_CHECK_FINITE"] = saved


# how each column's launches go: skipped; through Triton's own launch path (Autotuner.run, JITFunction.run)
# every time; through it once per specialisation, then straight to the compiled kernel (sgllie's path)
COLUMNS = ("launches skipped", "Triton's launch path", "sgllie's launch path")


def _launching(column: str):
    from sgllie.kernels import _runtime  # noqa: PLC0415
    from sgllie.kernels._stub_driver import stub_driver  # noqa: PLC0415

    if column == COLUMNS[0]:
        return _runtime.dry_run(record=False)
    stack = contextlib.ExitStack()
    stack.enter_context(stub_driver(record=False))
    if column == COLUMNS[1]:
        stack.enter_context(_runtime.through_triton())
    return stack


def main() -> None:
    import triton  # noqa: PLC0415

    from .conftest import machine  # noqa: PLC0415

    torch.manual_seed(0)
    torch.set_num_threads(1)
    info = machine()
    columns = COLUMNS if not torch.cuda.is_available() else COLUMNS[:1]  # the stub driver: no GPU only
    times = {}
    for row in _rows():
        times[row.op, row.layer] = _side_by_side(row, columns if row.triton else columns[:1])
        print(row.op, row.layer, times[row.op, row.layer], flush=True)
    lines = ["# Host time per call of the Triton backend (no GPU)", "",
             f"Written by `python -m benchmarks.host_overhead` on {info['description']}, triton "
             f"{triton.__version__}: "
             "microseconds of the host's work per call (the best of 7 means of 300 calls, the columns taking "
             "turns) on small CPU tensors; "
             "no kernel runs (the eager PyTorch rows compute: a few microseconds of their time is arithmetic). "
             f"{COLUMNS[0]}: `dry_run(record=False)`; {COLUMNS[1]}: under a stub driver (no GPU, real cubins "
             "compiled, a launcher that launches nothing), every launch through Triton's "
             f"`Autotuner.run` and `JITFunction.run`; {COLUMNS[2]}: the same, with launches after the first of a "
             "specialisation going straight to the kernel Triton compiled, as they do on a GPU. The driver's "
             "own work (cuLaunchKernelEx) is in no column. Each layer includes the ones above it. See the "
             "module's docstring for what the figures are and are not.", "",
             "| op | call | " + " | ".join(f"{c}, us" for c in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for (op, layer), measured in times.items():
        lines.append(f"| {op} | {layer} | " + " | ".join(
            f"{measured[c]:.1f}" if c in measured else "" for c in columns) + " |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "host_overhead.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'host_overhead.md'}")


if __name__ == "__main__":
    main()
