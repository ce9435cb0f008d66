"""python -m sgllie.info: versions, backend status, and the self-check catching a wrong kernel."""
from sgllie import info
from sgllie.ops import reference


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
