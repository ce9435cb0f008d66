"""The image CLI, sgllie.enhance: inputs, naming, safety, bad files and agreement with the model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import sgllie
from sgllie.enhance import batch_by_size, main
from sgllie.io import read_image, to_tensor, to_uint8

DATA = Path(__file__).parent / "data"
JPG, ODD, PNG = DATA / "bbb_96x64.jpg", DATA / "bbb_131x97.png", DATA / "bbb_160x120.png"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A fresh random-init checkpoint (the packaged default weights may not exist yet)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    sgllie.save_checkpoint(sgllie.EnhanceNet(), path)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """in/ with the three test images spread over nested subfolders (and a non-image to ignore)."""
    root = tmp_path / "in"
    (root / "a" / "b").mkdir(parents=True)
    shutil.copy(JPG, root / "top.jpg")
    shutil.copy(ODD, root / "a" / "odd.png")
    shutil.copy(PNG, root / "a" / "b" / "big.png")
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def size_of(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image.shape[1], image.shape[0]  # (W, H)


def test_folder_keeps_relative_paths(capsys, tree, tmp_path, weights):
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, tree, "-o", out, "--weights", weights, "--batch-size", "2")
    assert code == 0, err
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["a/b/big.png", "a/odd.png", "top.jpg"]
    assert size_of(out / "a" / "odd.png") == (131, 97)
    assert "images/s" in stdout and "MP/s" in stdout


def test_glob_pattern_expanded_by_the_cli(capsys, tree, tmp_path, weights):
    out = tmp_path / "out"
    code, _, err = cli(capsys, str(tree / "*" / "*.png"), str(tree / "*.jpg"), "-o", out, "--weights", weights)
    assert code == 0, err
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["a/odd.png", "top.jpg"]  # paths relative to each pattern's fixed folder


def test_output_matches_model_enhance(capsys, tmp_path, weights):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(PNG, src / "x1.png")
    flipped = cv2.flip(cv2.imread(str(PNG)), 1)
    cv2.imwrite(str(src / "x2.png"), flipped)  # same size: enhanced in one batch
    shutil.copy(ODD, src / "odd.png")
    code, _, err = cli(capsys, src, "-o", tmp_path / "out", "--weights", weights, "--batch-size", "4", "-q")
    assert code == 0, err
    model = sgllie.load_model(weights, scale_factor=12)
    for name in ("x1.png", "x2.png", "odd.png"):
        with torch.inference_mode():
            expected = to_uint8(model.enhance(to_tensor(read_image(src / name)))[0]).astype(int)
        actual = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / name)), cv2.COLOR_BGR2RGB).astype(int)
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() <= 1, name


def test_odd_and_tiny_sizes(capsys, tmp_path, weights):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for w, h in [(5, 7), (1, 1), (13, 2)]:
        cv2.imwrite(str(src / f"t{w}x{h}.png"), rng.integers(0, 40, (h, w, 3), dtype=np.uint8))
    shutil.copy(ODD, src / "odd.png")
    code, _, err = cli(capsys, src, "-o", tmp_path / "out", "--weights", weights, "--batch-size", "3")
    assert code == 0, err
    for w, h in [(5, 7), (1, 1), (13, 2), (131, 97)]:
        name = "odd.png" if w == 131 else f"t{w}x{h}.png"
        assert size_of(tmp_path / "out" / name) == (w, h)


def test_side_by_side_doubles_width(capsys, tmp_path, weights):
    out = tmp_path / "out"
    code, _, err = cli(capsys, ODD, "-o", out, "--weights", weights, "--side-by-side", "--format", "png")
    assert code == 0, err
    pair = cv2.imread(str(out / "bbb_131x97.png"))
    assert pair.shape == (97, 262, 3)
    np.testing.assert_array_equal(pair[:, :131], cv2.imread(str(ODD)))  # left half is the input


def test_suffix_and_format_name_outputs(capsys, tmp_path, weights):
    out = tmp_path / "out"
    code, _, err = cli(capsys, JPG, "-o", out, "--weights", weights, "--suffix", "_enh", "--format", "png")
    assert code == 0, err
    assert [p.name for p in out.iterdir()] == ["bbb_96x64_enh.png"]


def test_existing_output_skipped_unless_overwrite(capsys, tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "bbb_131x97.png"
    target.write_bytes(b"old")
    code, stdout, err = cli(capsys, ODD, "-o", out, "--weights", weights)
    assert code == 0, err
    assert target.read_bytes() == b"old"
    assert "exists" in stdout and str(ODD) in stdout
    code, _, err = cli(capsys, ODD, "-o", out, "--weights", weights, "--overwrite")
    assert code == 0, err
    assert size_of(target) == (131, 97)


def test_outputs_never_overwrite_inputs(capsys, tree, weights):
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    code, _, err = cli(capsys, tree, "-o", tree, "--weights", weights, "--overwrite")
    assert code == 2
    assert "overwrite input" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()} == before
    # a distinct suffix into the same folder is fine
    code, _, err = cli(capsys, tree / "top.jpg", "-o", tree, "--weights", weights, "--suffix", "_e")
    assert code == 0, err
    assert (tree / "top_e.jpg").is_file() and tree.joinpath("top.jpg").read_bytes() == before[tree / "top.jpg"]


def test_usage_errors_exit_2(capsys, tmp_path, weights):
    code, _, err = cli(capsys, tmp_path / "nothing-here", "-o", tmp_path / "out", "--weights", weights)
    assert code == 2 and "no input images found" in err
    code, _, err = cli(capsys, ODD, "-o", tmp_path / "out", "--weights", weights, "--fp16", "--device", "cpu")
    assert code == 2 and "--fp16" in err
    code, _, err = cli(capsys, ODD, "-o", tmp_path / "out", "--weights", weights, "--backend", "nope")
    assert code == 2 and "nope" in err
    assert not (tmp_path / "out").exists()


def test_batch_by_size_groups_equal_sizes():
    items = [(i, np.zeros(shape)) for i, shape in
             enumerate([(4, 4, 3), (5, 4, 3), (4, 4, 3), (4, 4, 3), (5, 4, 3)])]
    batches = [[job for job, _ in batch] for batch in batch_by_size(iter(items), 2)]
    assert sorted(batches) == [[0, 2], [1, 4], [3]]
    assert sorted(sum(batches, [])) == [0, 1, 2, 3, 4]


def _bad_inputs(folder: Path) -> tuple[list[Path], Path | None]:
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(JPG.read_bytes()[:600])
    (folder / "text.jpg").write_text("this is not a JPEG\n")
    bad = [folder / "empty.png", folder / "truncated.jpg", folder / "text.jpg", folder / "missing.png"]
    locked = folder / "locked.png"
    shutil.copy(PNG, locked)
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: that case cannot be made here
        locked.chmod(0o644)
        locked.unlink()
        locked = None
    else:
        bad.append(locked)
    return bad, locked


@pytest.mark.slow
def test_bad_inputs_one_line_each_real_cli(tmp_path, weights):
    bad, locked = _bad_inputs(tmp_path / "bad")
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(ODD, good)
    shutil.copy(JPG, good)
    out = tmp_path / "out"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sgllie.enhance", *map(str, bad), str(good), "-o", str(out),
             "--weights", str(weights)], capture_output=True, text=True, timeout=120)
    finally:
        if locked is not None:
            locked.chmod(0o644)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(bad), proc.stderr
    for path in bad:
        assert sum(str(path) in line for line in lines) == 1, (path, proc.stderr)
    assert size_of(out / "bbb_131x97.png") == (131, 97)
    assert size_of(out / "bbb_96x64.jpg") == (96, 64)


@pytest.mark.slow
def test_bad_weights_real_cli(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "sgllie.enhance", str(ODD), "-o", str(tmp_path / "out"),
                           "--weights", str(junk)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(junk) in lines[0]
    assert not (tmp_path / "out").exists()
