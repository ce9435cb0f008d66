"""Shared test helpers: the one tolerance table, backends under test, and the ../shared data path."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import sgllie.ops
from sgllie.ops import _backends

# The CUDA kernels' own source built for the host emulation of CUDA (tests/cuda_emu), as one more
# backend on CPU tensors: every op test runs on it. Never chosen by "auto"; not shipped to users.
# SGLLIE_TEST_CUDA_EMU=0 leaves it out (on a GPU, where the real kernels run, to skip its build).
if os.environ.get("SGLLIE_TEST_CUDA_EMU", "1") != "0":
    _backends.BACKENDS["cuda_emu"] = _backends.Backend(
        "cuda_emu", "cuda_emu.backend", ("cpu",),
        "g++ and the CUDA headers (tests/cuda_emu builds csrc/cuda for the host)")

# Per dtype (rtol, atol) for fused-vs-reference comparisons; float64 is for gradcheck-grade checks.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (3e-2, 3e-2),
}

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = Path(__file__).parent / "data"


def assert_close(actual, expected, dtype=None, scale: float = 1.0):
    """Compare with the tolerance of ``dtype`` (default: expected's), widened by ``scale``."""
    rtol, atol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol * scale, atol=atol * scale,
                               check_dtype=False)


def device_of(backend: str) -> torch.device:
    """Where a backend's tests put their tensors: CUDA for the GPU backends (CPU under the
    Triton interpreter), else the CPU."""
    devices = sgllie.ops._backends.runs_on(backend)
    return torch.device("cpu" if not devices or "cpu" in devices else devices[0])


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test where that data is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared data: {path} is absent")
    return path


def triton_device() -> torch.device:
    """Where the Triton kernels run in this session: CUDA, or CPU under TRITON_INTERPRET=1; else skip
    (also where the backend cannot run, with its reason)."""
    if not torch.cuda.is_available() and not sgllie.ops._backends.triton_interpreting():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (run: TRITON_INTERPRET=1 python -m pytest -m triton)")
    why_not = sgllie.ops._backends.load("triton")[1]
    if why_not:
        pytest.skip(f"the triton backend cannot run here: {why_not}")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _seeded():
    """Each test draws the same random inputs whatever ran before it: a failure reproduces alone."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _tensor_core_dots():
    """Under the interpreter, the kernels' TF32 / 3xTF32 dot products round as a GPU's tensor cores do
    (the interpreter's own are exact float32): the precision a GPU gives is what the tests check."""
    if not _backends.triton_interpreting():
        yield
        return
    from tensor_cores import tensor_core_dots  # noqa: PLC0415  (imports triton)

    with tensor_core_dots():
        yield


def pytest_collection_modifyitems(items):
    """Op tests parametrised with backend="triton" belong to the triton invocation too, and those
    with backend="cuda_emu" to `pytest -m cuda_emu`."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if backend == "triton":
            item.add_marker(pytest.mark.triton)
        elif backend == "cuda_emu":
            item.add_marker(pytest.mark.cuda_emu)


class _Replayed:
    """A CPU stand-in for a captured CUDA graph of ``fn``: each replay recomputes it into the one output
    buffer (as a replay overwrites it), plus ``error``."""

    def __init__(self, fn, error: float):
        self.fn, self.error, self.output = fn, error, fn()

    def replay(self):
        with torch.inference_mode():  # (a real replay writes its inference-tensor output from anywhere)
            self.output.copy_(self.fn() + self.error)


def stand_in_capture(monkeypatch, error: float = 0.0, refuse: bool = False) -> list:
    """sgllie.graphs captures on CPU tensors too, through _Replayed (or, ``refuse``, a capture error):
    the list each capture's (output shape, device type, warmup) is appended to."""
    from sgllie import graphs  # noqa: PLC0415

    captures = []

    def captured(fn, device, warmup):
        if refuse:
            raise RuntimeError("no graphs here")
        graph = _Replayed(fn, error)
        captures.append((tuple(graph.output.shape), device.type, warmup))
        return graph, graph.output

    monkeypatch.setattr(graphs, "_capturable", lambda x: True)
    monkeypatch.setattr(graphs, "_captured", captured)
    return captures
