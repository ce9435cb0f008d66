"""The host's own time per call of the Triton backend, measured without a GPU.

    python -m benchmarks.host_overhead     writes benchmarks/results/host_overhead.md

Several of the H100 benchmarks are bound by the host, not by the kernels: zero_reference_loss
forward+backward took 1.5 ms where its kernels take 48 us (benchmarks/results/
cuda-nvidia-h100-80gb-hbm3-profile.md). What sgllie's Python does per call is measured here, on CPU
tensors inside ``sgllie.kernels._runtime.dry_run(record=False)``: every line of each op runs except
the kernel launches themselves (Triton's launcher, and the driver's). Each layer of a call is timed
on its own: the kernel function (``sgllie.kernels``: allocations, grids, launch arguments), the
``torch.ops.sgllie`` op (adds the dispatcher and autograd), the public ``sgllie.ops`` function (adds
argument checks and the backend choice), and forward + backward with ``torch.autograd.grad``.

Allocations here are CPU ones (a CUDA caching allocator's cost differs), and a GPU machine's host
may be slower or faster: compare rows with each other and with the eager PyTorch rows measured in
the same run, not with GPU timings.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("SGLLIE_CHECK_FINITE", "0")  # the NaN checks are measured by their own row

import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _per_call_us(fn, calls: int = 300, repeats: int = 7) -> float:
    """The least over ``repeats`` of the mean time of ``calls`` back-to-back calls (one thread): what
    a call costs when nothing else on the machine gets in its way."""
    for _ in range(30):
        fn()
    means = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        means.append((time.perf_counter() - t0) / calls * 1e6)
    return min(means)


def _fwd_bwd(op, wrt):
    def call():
        out = op()
        total = sum(out) if isinstance(out, tuple) else out.sum()
        return torch.autograd.grad(total, wrt)
    return call


def _rows():
    """(op, layer, call) of every measured call: small tensors, so that what is timed is the host's
    work per call and not the CPU's arithmetic (the launches are skipped, but eager rows compute)."""
    import sgllie.ops as ops  # noqa: PLC0415
    from sgllie import kernels as K  # noqa: PLC0415
    from sgllie.ops import reference as R  # noqa: PLC0415

    x, r = torch.rand(1, 3, 24, 32), torch.rand(1, 3, 4, 6) * 2 - 1
    rg = r.clone().requires_grad_()
    yield "le_curve (r upsampled)", "kernel function", lambda: K.le_curve(x, r, 8)
    yield "le_curve (r upsampled)", "torch.ops.sgllie", lambda: torch.ops.sgllie.le_curve(x, r, 8, "triton")
    yield "le_curve (r upsampled)", "sgllie.ops", lambda: ops.le_curve(x, r, backend="triton")
    yield "le_curve (r upsampled)", "sgllie.ops fwd+bwd", _fwd_bwd(lambda: ops.le_curve(x, rg, backend="triton"), rg)
    yield "le_curve (r upsampled)", "eager PyTorch fwd+bwd", _fwd_bwd(lambda: R.le_curve(x, rg), rg)

    a, b = torch.rand(1, 32, 8, 8), torch.rand(1, 32, 8, 8)
    params = [torch.rand(64, 1, 3, 3), torch.rand(64), torch.rand(32, 64, 1, 1), torch.rand(32)]
    grads = [p.clone().requires_grad_() for p in params]
    yield "dsconv2d 32+32->32", "kernel function", lambda: K.dsconv2d(a, *params, x2=b, activation="relu")
    yield "dsconv2d 32+32->32", "sgllie.ops", lambda: ops.dsconv2d(a, *params, x2=b, activation="relu",
                                                                  backend="triton")
    yield "dsconv2d 32+32->32", "sgllie.ops fwd+bwd", _fwd_bwd(
        lambda: ops.dsconv2d(a, *grads, x2=b, activation="relu", backend="triton"), grads)
    yield "dsconv2d 32+32->32", "eager PyTorch fwd+bwd", _fwd_bwd(
        lambda: R.dsconv2d(a, *grads, x2=b, activation="relu"), grads)

    y, i = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32) * 0.3
    yg = y.clone().requires_grad_()
    yield "zero_reference_loss", "kernel function", lambda: K.zero_reference_loss_forward(y, i, 4, 0.6, 16)
    yield "zero_reference_loss", "torch.ops.sgllie", lambda: torch.ops.sgllie.zero_reference_loss(
        y, i, 4, 0.6, 16, "triton")
    yield "zero_reference_loss", "sgllie.ops", lambda: ops.zero_reference_loss(y, i, backend="triton")
    yield "zero_reference_loss", "sgllie.ops fwd+bwd", _fwd_bwd(
        lambda: ops.zero_reference_loss(yg, i, backend="triton"), yg)
    yield "zero_reference_loss", "eager PyTorch fwd+bwd", _fwd_bwd(lambda: R.zero_reference_loss(yg, i), yg)

    yield "tv_loss", "kernel function", lambda: K.tv_loss(y)
    yield "tv_loss", "sgllie.ops", lambda: ops.tv_loss(y, backend="triton")
    yield "tv_loss", "sgllie.ops fwd+bwd", _fwd_bwd(lambda: ops.tv_loss(yg, backend="triton"), yg)
    yield "tv_loss", "eager PyTorch fwd+bwd", _fwd_bwd(lambda: R.tv_loss(yg), yg)

    os.environ["SGLLIE_CHECK_FINITE"] = "1"
    try:
        yield "zero_reference_loss", "sgllie.ops, NaN checks on", lambda: ops.zero_reference_loss(
            y, i, backend="triton")
    finally:
        os.environ["SGLLIE_CHECK_FINITE"] = "0"


def main() -> None:
    from sgllie.kernels import _runtime  # noqa: PLC0415

    from .conftest import machine  # noqa: PLC0415

    torch.manual_seed(0)
    torch.set_num_threads(1)
    info = machine()
    lines = ["# Host time per call of the Triton backend (no GPU)", "",
             f"Written by `python -m benchmarks.host_overhead` on {info['description']}: microseconds of the "
             "host's work per call (the best of 7 means of 300 calls), kernel launches skipped "
             "(`dry_run(record=False)`; Triton's launcher and the driver not counted), one torch thread, small "
             "CPU tensors; the eager PyTorch rows compute on them (a few microseconds of their time is "
             "arithmetic). Each layer includes the ones above it. See the module's docstring for what the "
             "figures are and are not.", "",
             "| op | call | host us per call |", "|---|---|---:|"]
    with _runtime.dry_run(record=False):
        for op, layer, call in _rows():
            lines.append(f"| {op} | {layer} | {_per_call_us(call):.1f} |")
            print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "host_overhead.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'host_overhead.md'}")


if __name__ == "__main__":
    main()
