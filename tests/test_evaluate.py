"""python -m sgllie.evaluate: metrics against known values, pairing errors, outputs, segmentation."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from sgllie import evaluate as ev
from sgllie.io import read_image, write_image
from conftest import DATA


def _save(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))


@pytest.fixture
def sets(tmp_path):
    ref = np.clip(read_image(DATA / "bbb_131x97.png") * 3, 0, 1)  # the test frames are dark: a bright reference
    rng = np.random.default_rng(0)
    _save(tmp_path / "ref" / "a.png", ref)
    _save(tmp_path / "ref" / "sub" / "b.png", ref[::-1])
    _save(tmp_path / "pred" / "a.png", ref + rng.normal(0, 0.05, ref.shape))
    _save(tmp_path / "pred" / "sub" / "b.png", ref[::-1])                # identical to its reference
    _save(tmp_path / "input" / "a.png", ref * 0.2)
    _save(tmp_path / "input" / "sub" / "b.png", ref[::-1] * 0.2)
    return tmp_path


def test_paired_metrics(sets, capsys):
    assert ev.main(["--pred", str(sets / "pred"), "--ref", str(sets / "ref"), "-o", str(sets / "r.md"),
                    "--csv", str(sets / "r.csv")]) == 0
    rows = {r["image"]: r for r in csv.DictReader(open(sets / "r.csv"))}
    a, ref = read_image(sets / "pred" / "a.png"), read_image(sets / "ref" / "a.png")
    assert float(rows["a"]["psnr"]) == pytest.approx(10 * np.log10(1 / ((a - ref) ** 2).mean()), rel=1e-4)
    assert float(rows["sub/b"]["ssim"]) == pytest.approx(1.0) and float(rows["a"]["ssim"]) < 0.9
    assert float(rows["sub/b"]["psnr"]) == float("inf")
    assert rows["mean of 2"]["brightness"]
    assert "| a |" in (sets / "r.md").read_text() and "| a |" in capsys.readouterr().out


def test_unpaired_metrics():
    flat = np.full((32, 48, 3), 0.6, np.float32)
    assert ev.exposure_error(flat) == pytest.approx(0.0, abs=1e-6)
    assert ev.exposure_error(flat * 0.5) == pytest.approx(0.3, rel=1e-5)
    noisy = np.clip(read_image(DATA / "bbb_131x97.png") + np.random.default_rng(1).normal(0, 0.2, (97, 131, 3)), 0, 1)
    assert ev.piqe(noisy) > ev.piqe(read_image(DATA / "bbb_131x97.png"))  # noise scores worse


def test_pairing_errors_name_the_files(sets, capsys):
    _save(sets / "pred" / "c.png", np.zeros((8, 8, 3)))                 # no reference
    _save(sets / "ref" / "d.png", np.zeros((8, 8, 3)))
    _save(sets / "pred" / "d.png", np.zeros((9, 8, 3)))                 # size mismatch
    assert ev.main(["--pred", str(sets / "pred"), "--ref", str(sets / "ref")]) == 1
    err = capsys.readouterr().err
    assert "c.png: no reference image c.*" in err and "d.png is 8x9 but its reference" in err


def test_usage_errors(tmp_path, capsys):
    assert ev.main(["--pred", str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert ev.main(["--pred", str(tmp_path / "empty")]) == 2
    assert ev.main(["--pred", str(tmp_path / "empty"), "--segmentation", "m.pt"]) == 2
    assert "needs --ref" in capsys.readouterr().err


class _Brightness(torch.nn.Module):
    """A stand-in segmentation net: class k for grey level in [k/4, (k+1)/4)."""
    def forward(self, x):
        grey = x.mean(1, keepdim=True)
        return torch.cat([-(grey - (k + 0.5) / 4).abs() for k in range(4)], 1)


def test_segmentation_agreement(sets):
    model = sets / "seg.pt"
    torch.jit.script(_Brightness()).save(str(model))
    table = ev.evaluate(sets / "pred", sets / "ref", sets / "input", ev.Segmenter(model, torch.device("cpu")))
    rows = {r["image"]: r for r in table.rows}
    assert rows["sub/b"]["miou"] == pytest.approx(1.0) and rows["sub/b"]["pixel_acc"] == pytest.approx(1.0)
    assert rows["sub/b"]["miou_input"] < 0.5  # the dark input's segmentation disagrees with the reference's
    # IoU per class present: 1 (class 0), 1/2 (class 1), 0 (class 2); 2 of 3 pixels agree
    assert ev.segmentation_agreement(np.array([0, 1, 1]), np.array([0, 1, 2]), 3) == pytest.approx((0.5, 2 / 3))
