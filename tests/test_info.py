"""python -m sgllie.info: versions, backend status, and the self-check catching a wrong kernel or graph."""
import pytest
import torch

from sgllie import info
from sgllie.ops import reference
from conftest import stand_in_capture


def test_info_lists_versions_and_backends(capsys):
    assert info.main([]) == 0
    out = capsys.readouterr().out
    for word in ("sgllie", "torch", "reference", "available", "triton", "cuda"):
        assert word in out


def test_check_passes_on_this_install(capsys):
    assert info.main(["--check"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "FAIL" not in out


def test_check_reports_a_wrong_backward(monkeypatch, capsys):
    # the reference backend's kernel module is sgllie.ops.reference: break one backward kernel
    monkeypatch.setattr(reference, "tv_loss_backward", lambda grad, r: 2 * r)
    rows = info.check()
    failed = {op for _, _, op, result in rows if result != "pass"}
    assert failed == {"tv_loss"}


def test_sanitizers_run_each_tool_and_report_failures(monkeypatch, tmp_path):
    """A stand-in compute-sanitizer that fails racecheck: each tool is its own row (no GPU here)."""
    fake = tmp_path / "compute-sanitizer"
    fake.write_text('#!/bin/sh\nif [ "$2" = racecheck ]; then echo "RACECHECK SUMMARY: 1 hazard"; exit 1; fi\n')
    fake.chmod(0o755)
    monkeypatch.setattr(info.ops, "available_backends", lambda: ["reference", "cuda"])
    monkeypatch.setattr(info, "_sanitizer", lambda: str(fake))
    assert info.sanitize() == [("cuda", "cuda", "memcheck", "pass"),
                               ("cuda", "cuda", "racecheck", "FAIL: RACECHECK SUMMARY: 1 hazard")]
    monkeypatch.setattr(info, "_sanitizer", lambda: None)
    assert info.sanitize()[0][3].startswith("skipped")
    monkeypatch.setattr(info.ops, "available_backends", lambda: ["reference", "cpu"])
    assert info.sanitize() == []


def test_a_triton_too_old_for_the_kernels_is_named():
    """sgllie.info and backend_status() show this reason where the kernels have not been built with
    the Triton installed (before 3.3)."""
    kernels = pytest.importorskip("sgllie.kernels")
    assert kernels.too_old("3.2.0") == "needs triton >= 3.3, found 3.2.0"
    assert kernels.too_old("2.3.1") and kernels.too_old("unknown")
    assert all(kernels.too_old(v) == "" for v in ("3.3.1", "3.4.0", "3.6.0+git9a5e1b3", "3.10.0", "4.0"))


def test_an_interpreter_that_cannot_run_the_kernels_is_named(monkeypatch):
    """Triton's interpreter before 3.7 fails on the kernels with NumPy >= 2.4: the backend says so
    under TRITON_INTERPRET=1 (and the Triton tests skip with that reason) instead of 58 failures."""
    kernels = pytest.importorskip("sgllie.kernels")
    import numpy as np

    try:
        int(np.zeros(1))
        numpy_refuses = False
    except TypeError:
        numpy_refuses = True
    monkeypatch.setattr(kernels.triton, "__version__", "3.6.0")
    assert ("interpreter cannot run the kernels" in kernels._interpreter_problem()) == numpy_refuses
    monkeypatch.setattr(kernels.triton, "__version__", "3.7.0")
    assert kernels._interpreter_problem() == ""


@pytest.mark.parametrize("capture, error, result", [
    ("stand-in", 0.0, "pass"),
    ("stand-in", 1e-2, "FAIL: Tensor-likes are not close"),
    ("refused", 0.0, "FAIL: sgllie.graphs: cannot capture the model"),
])
def test_graph_check_passes_a_faithful_capture_and_fails_a_refused_or_wrong_one(monkeypatch, capture, error,
                                                                              result):
    """info.graph_check, run on CUDA by --check, here on the CPU with a stand-in for the capture."""
    stand_in_capture(monkeypatch, error=error, refuse=capture == "refused")
    device, backend, name, got = info.graph_check(torch.device("cpu"), "reference")
    assert (device, backend, name) == ("cpu", "reference", info.GRAPH_CHECK)
    assert got.startswith(result), got
