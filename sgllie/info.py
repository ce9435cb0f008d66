"""``python -m sgllie.info [--check]``: versions, backends and, with --check, a self-test.

--check runs every op on every backend available here against the reference (forward and all
input gradients, float32, odd shapes, fresh random inputs) on each device present, and prints a
pass/fail table: the check to run after installing on a new machine. Exit code 1 if any fails.
On CUDA, per GPU backend, also the model's whole forward captured as a CUDA graph
(sgllie.graphs.StaticEnhance) against the model run plainly on the reference backend.
Where the CUDA kernels are available, it also runs each of them once (forward and backward) under
compute-sanitizer's memcheck and racecheck, when compute-sanitizer is found (PATH or CUDA_HOME).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import torch

import sgllie
from sgllie import ops
from sgllie.graphs import StaticEnhance
from sgllie.model import EnhanceNet
from sgllie.ops import reference as R


def versions() -> list[tuple[str, str]]:
    rows = [("sgllie", sgllie.__version__), ("python", platform.python_version()), ("torch", torch.__version__)]
    try:
        import triton
        rows.append(("triton", triton.__version__))
    except ImportError:
        rows.append(("triton", "not installed"))
    if torch.cuda.is_available():
        rows.append(("CUDA", f"{torch.version.cuda}, {torch.cuda.get_device_name()}"))
    else:
        rows.append(("CUDA", "no CUDA device" + (f" (torch built with CUDA {torch.version.cuda})"
                                                  if torch.version.cuda else " (CPU-only torch)")))
    return rows


def _cases(device: torch.device):
    """(op name, fused call, reference call, inputs) on fresh random odd-sized inputs."""
    def rand(*shape, lo=0.0):
        return torch.empty(*shape, device=device).uniform_(lo, 1.0)

    x, x2 = rand(2, 5, 13, 17), rand(2, 3, 13, 17)
    p = [rand(8, 1, 3, 3, lo=-1), rand(8, lo=-1), rand(7, 8, 1, 1, lo=-1), rand(7, lo=-1)]
    img, low, r_small = rand(2, 3, 37, 41), rand(2, 3, 37, 41), rand(2, 3, 4, 5, lo=-1)
    return [
        ("dsconv2d", lambda a, b, *w, backend: ops.dsconv2d(a, *w, x2=b, activation="relu", backend=backend),
         lambda a, b, *w: R.dsconv2d(a, *w, x2=b, activation="relu"), [x, x2, *p]),
        ("le_curve", lambda a, b, backend: ops.le_curve(a, b, backend=backend), R.le_curve, [img, r_small]),
        ("zero_reference_loss", lambda a, b, backend: ops.zero_reference_loss(a, b, backend=backend),
         R.zero_reference_loss, [img, low]),
        ("spatial_consistency_loss", lambda a, b, backend: ops.spatial_consistency_loss(a, b, backend=backend),
         R.spatial_consistency_loss, [img, low]),
        ("exposure_loss", lambda a, backend: ops.exposure_loss(a, backend=backend), R.exposure_loss, [img]),
        ("color_constancy_loss", lambda a, backend: ops.color_constancy_loss(a, backend=backend),
         R.color_constancy_loss, [img]),
        ("tv_loss", lambda a, backend: ops.tv_loss(a, backend=backend), R.tv_loss, [r_small]),
    ]


def _run(fn, inputs, cotangent_seed=0):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator(device=outs[0].device).manual_seed(cotangent_seed)
    cot = [torch.rand(o.shape, generator=g, device=o.device) for o in outs]
    return [o.detach() for o in outs] + list(torch.autograd.grad(outs, leaves, cot))


def check(rtol: float = 1e-4, atol: float = 1e-5) -> list[tuple[str, str, str, str]]:
    """(device, backend, op, "pass" or the failure) for every available combination."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for backend in ops.available_backends():
            runs_on = ops._backends.runs_on(backend)
            if runs_on and device.type not in runs_on:
                continue
            for name, fused, ref, inputs in _cases(device):
                try:
                    got = _run(lambda *t: fused(*t, backend=backend), inputs)
                    want = _run(ref, inputs)
                    for a, b in zip(got, want):
                        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
                    rows.append((device.type, backend, name, "pass"))
                except Exception as e:  # report every failure, keep checking the rest
                    rows.append((device.type, backend, name, f"FAIL: {str(e).splitlines()[0]}"))
            if device.type == "cuda" and backend != "reference":
                rows.append(graph_check(device, backend))
    return rows


GRAPH_CHECK = "enhance as a CUDA graph (StaticEnhance)"


def graph_check(device: torch.device, backend: str, rtol: float = 1e-3, atol: float = 1e-4) -> tuple[str, str, str, str]:
    """The model's whole forward captured on ``backend`` (a random model; a frame of odd size, so the
    padding too) against the same model run plainly on the reference backend. A refused capture
    fails the check: StaticEnhance would compute the same result without one, and say so once."""
    try:
        model = EnhanceNet(scale_factor=4).to(device).eval()
        x = torch.rand(1, 3, 37, 50, device=device)
        with warnings.catch_warnings(record=True) as refused:
            warnings.simplefilter("always")
            run = StaticEnhance(model, tuple(x.shape), backend=backend)
        if refused:
            return device.type, backend, GRAPH_CHECK, f"FAIL: {str(refused[0].message).splitlines()[0]}"
        run.input.copy_(x)
        got = run().clone()
        with torch.inference_mode(), ops.use_backend("reference"):
            torch.testing.assert_close(got, model.enhance(x), rtol=rtol, atol=atol)
        return device.type, backend, GRAPH_CHECK, "pass"
    except Exception as e:
        return device.type, backend, GRAPH_CHECK, f"FAIL: {str(e).splitlines()[0]}"


SANITIZER_TOOLS = ("memcheck", "racecheck")


def run_each_cuda_kernel_once() -> None:
    """Every op forward and backward once on the CUDA backend (what the sanitizers watch)."""
    for _, fused, _, inputs in _cases(torch.device("cuda")):
        _run(lambda *t: fused(*t, backend="cuda"), inputs)
    torch.cuda.synchronize()


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidate = Path(home) / "bin" / "compute-sanitizer"
    return str(candidate) if candidate.exists() else None


def sanitize() -> list[tuple[str, str, str, str]]:
    """(device, backend, tool, result) for each compute-sanitizer tool over every CUDA kernel."""
    if "cuda" not in ops.available_backends():
        return []
    tool_path = _sanitizer()
    if tool_path is None:
        return [("cuda", "cuda", "compute-sanitizer", "skipped: not found (PATH or CUDA_HOME/bin)")]
    rows = []
    for tool in SANITIZER_TOOLS:
        cmd = [tool_path, "--tool", tool, "--error-exitcode", "1", sys.executable, "-c",
               "from sgllie.info import run_each_cuda_kernel_once; run_each_cuda_kernel_once()"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        last = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
        rows.append(("cuda", "cuda", tool, "pass" if done.returncode == 0 else f"FAIL: {last[0]}"))
    return rows


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgllie.info", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="run every available backend against the reference")
    args = parser.parse_args(argv)
    print(_table(("component", "version"), versions()))
    print()
    print(_table(("backend", "status"), list(ops.backend_status().items())))
    if not args.check:
        return 0
    print()
    rows = check() + sanitize()
    print(_table(("device", "backend", "op", "result"), rows))
    failed = sum(r[3].startswith("FAIL") for r in rows)
    passed = sum(r[3] == "pass" for r in rows)
    print(f"\n{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
