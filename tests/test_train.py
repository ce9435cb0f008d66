"""sgllie.data and sgllie.train: data loading, the training CLI, exact resume, DDP (CPU only)."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import sgllie
import sgllie.semantic
from sgllie.data import LowLightImages
from sgllie.train import main, parse_args

# Subprocesses: one thread each, so two processes on two shared cores do not thrash.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _smooth(rng, h, w, c):
    a = rng.random((5, 5, c)).astype(np.float32)
    return cv2.resize(a, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, c).clip(0, 1)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """6 usable 40x40 low-light images (8-bit jpg/png, grey, RGBA, 16-bit) and a 0-byte .jpg."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    cv2.imwrite(str(root / "a.jpg"), (_smooth(rng, 40, 40, 3) * 80).astype(np.uint8))
    cv2.imwrite(str(root / "b.JPEG"), (_smooth(rng, 40, 40, 3) * 80).astype(np.uint8))
    cv2.imwrite(str(root / "rgb.png"), (_smooth(rng, 40, 40, 3) * 80).astype(np.uint8))
    cv2.imwrite(str(root / "grey.png"), (_smooth(rng, 40, 40, 1)[..., 0] * 80).astype(np.uint8))
    cv2.imwrite(str(root / "sub" / "rgba.PNG"), (_smooth(rng, 40, 40, 4) * 80).astype(np.uint8))
    cv2.imwrite(str(root / "deep.png"), (_smooth(rng, 40, 40, 3) * 20000 + 1).astype(np.uint16))
    (root / "broken.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root


def _args(images, out, *extra):
    return ["--lowlight_images_path", str(images), "--snapshots_folder", str(out), "--resize", "32",
            "--train_batch_size", "2", "--semantic_weight", "0", "--num_workers", "0", "--seed", "5",
            "--no_plot", *map(str, extra)]


def _weights(path):
    return sgllie.model.read_checkpoint(path)[0]


# ----------------------------------------------------------------------------- data
def test_dataset_formats(images):
    reports = []
    data = LowLightImages(images, resize=32, report=reports.append)
    assert len(data) == 6 and [p.name for p in data.skipped] == ["broken.jpg"]
    assert len(reports) == 1 and "broken.jpg" in reports[0]
    names = [p.name for p in data.files]
    items = {n: data[i] for i, n in enumerate(names)}
    for t in items.values():
        assert t.shape == (3, 32, 32) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    assert torch.equal(items["grey.png"][0], items["grey.png"][1])
    # 16-bit keeps its precision (float 'F' resize), 8-bit is k/255 exactly
    assert not torch.equal((items["deep.png"] * 255).round() / 255, items["deep.png"])
    # the 8-bit path is the reference's: PIL RGB Lanczos resize, / 255.0
    ref = np.asarray(Image.open(images / "rgb.png").resize((32, 32), Image.LANCZOS)) / 255.0
    assert torch.equal(items["rgb.png"], torch.from_numpy(ref).float().permute(2, 0, 1))


def test_dataset_crop_and_errors(images, tmp_path):
    data = LowLightImages(images, resize=None, crop=24, seed=1, report=lambda m: None)
    a = data[0]
    assert a.shape == (3, 24, 24) and torch.equal(a, data[0])  # a function of (seed, epoch, index)
    data.set_epoch(1)
    assert not torch.equal(a, data[0])
    big = LowLightImages(images, resize=None, crop=64, report=lambda m: None)
    assert big[3].shape == (3, 64, 64)  # smaller than the crop: resized up
    assert LowLightImages(images, resize=None, report=lambda m: None)[0].shape == (3, 40, 40)
    with pytest.raises(ValueError, match="exclusive"):
        LowLightImages(images, resize=32, crop=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        LowLightImages(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LowLightImages(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- flags and errors
def test_load_pretrain_is_a_real_boolean():
    for text, value in [("False", False), ("false", False), ("0", False), ("no", False),
                        ("True", True), ("1", True), ("yes", True)]:
        assert parse_args(["--load_pretrain", text]).load_pretrain is value
    a = parse_args([])
    assert (a.lowlight_images_path, a.lr, a.weight_decay, a.grad_clip_norm, a.num_epochs, a.train_batch_size,
            a.val_batch_size, a.num_workers, a.display_iter, a.snapshot_iter, a.scale_factor,
            a.snapshots_folder, a.load_pretrain, a.pretrain_dir, a.num_of_SegClass, a.conv_type,
            a.patch_size, a.exp_level, a.resize, a.crop) == (
        "data/train_data/", 1e-4, 1e-4, 0.1, 100, 6, 8, 4, 10, 10, 1, "weight/", False,
        "weight/Epoch99.pth", 21, "dsc", 4, 0.6, 512, 0)
    assert parse_args(["--crop", "256"]).resize == 0


@pytest.mark.parametrize("extra, message", [
    (["--patch_size", "6"], "--patch_size"),
    (["--load_pretrain", "maybe"], "--load_pretrain"),
    (["--lr", "-1"], "--lr"),
    (["--resize", "32", "--crop", "16"], "exclusive"),
    (["--device", "tpu"], "--device"),
    (["--resume", "nothere.pt"], "nothere.pt"),
    (["--load_pretrain", "true", "--pretrain_dir", "nothere.pth"], "nothere.pth"),
])
def test_bad_values_one_line(images, tmp_path, capsys, extra, message):
    assert main(_args(images, tmp_path / "w", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_missing_folder(tmp_path, capsys):
    assert main(_args(tmp_path / "no_such_dir", tmp_path / "w")) == 2
    err = capsys.readouterr().err
    assert "no_such_dir" in err and "not found" in err and "Traceback" not in err


def test_not_a_checkpoint(images, tmp_path, capsys):
    bogus = tmp_path / "bogus.pth"
    bogus.write_text("hello")
    assert main(_args(images, tmp_path / "w", "--resume", bogus)) == 2
    assert "bogus.pth" in capsys.readouterr().err
    assert main(_args(images, tmp_path / "w", "--load_pretrain", "1", "--pretrain_dir", bogus)) == 2
    assert "bogus.pth" in capsys.readouterr().err


def test_diverged_loss_one_line_and_snapshots_intact(images, tmp_path, capsys, monkeypatch):
    """A NaN in the enhanced image (the loss's inputs are not checked one by one: the loss is) ends the
    run with one line and exit code 1, the previous step's snapshot left as it was."""
    real, calls = sgllie.EnhanceNet.forward, []

    def forward(self, x):
        enhanced, r = real(self, x)
        calls.append(x.shape)
        return (enhanced * float("nan"), r) if len(calls) == 2 else (enhanced, r)

    monkeypatch.setattr(sgllie.EnhanceNet, "forward", forward)
    out = tmp_path / "w"
    assert main(_args(images, out, "--num_epochs", 1, "--snapshot_iter", 1)) == 1
    err = capsys.readouterr().err
    assert "the loss is not finite at step 2" in err and "--resume" in err and "Traceback" not in err
    assert torch.load(out / "train_state_Epoch0.pt", weights_only=True)["step"] == 1
    assert all(v.isfinite().all() for v in _weights(out / "Epoch0.pth").values())


def test_semantic_without_weights(images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sgllie.semantic, "imagenet_backbone_state_dict", lambda: (None, "offline (test)"))
    args = _args(images, tmp_path / "w")
    args[args.index("--semantic_weight") + 1] = "0.1"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--seg_weights" in err and "--semantic_weight 0" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- training runs
@pytest.mark.slow
def test_cli_one_epoch(images, tmp_path):
    out = tmp_path / "w"
    cmd = [sys.executable, "-m", "sgllie.train", *_args(images, out, "--num_epochs", 1)]
    cmd.remove("--no_plot")
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "semantic loss term is off" in p.stdout
    assert "broken.jpg" in p.stderr
    names = {f.name for f in out.iterdir()}
    assert {"Epoch0.pth", "train_state_Epoch0.pt", "latest", "train_log.csv", "train_log.jsonl",
            "loss_curves.png"} <= names
    assert json.loads((out / "latest").read_text())["state"] == "train_state_Epoch0.pt"
    model = sgllie.load_model(out / "Epoch0.pth", scale_factor=1)
    assert model(torch.rand(1, 3, 16, 16))[0].shape == (1, 3, 16, 16)
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and "sem" not in rows[0]
    assert set(rows[0]) == {"epoch", "iteration", "step", "tv", "spa", "col", "exp", "total"}
    csv_lines = (out / "train_log.csv").read_text().splitlines()
    assert csv_lines[0] == "epoch,iteration,step,tv,spa,col,exp,sem,total" and len(csv_lines) == 4
    assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_exact_resume(images, tmp_path):
    """4 iterations straight == 2, then resume (mid-epoch, other worker count) for 2 more."""
    crop = ["--resize", "0", "--crop", "24"]  # random crops must also replay exactly
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_args(images, a, "--max_iters", 4, *crop)) == 0
    assert main(_args(images, b, "--max_iters", 2, *crop)) == 0
    with open(b / "train_log.jsonl", "a") as f:  # a row trained after the last snapshot, then lost
        f.write(json.dumps({"epoch": 0, "iteration": 3, "step": 3, "total": 9.0}) + "\n")
    assert main(_args(images, b, "--max_iters", 4, "--num_workers", 2, "--resume", *crop)) == 0
    wa, wb = _weights(a / "Epoch1.pth"), _weights(b / "Epoch1.pth")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = torch.load(a / "train_state_Epoch1.pt", weights_only=True)
    sb = torch.load(b / "train_state_Epoch1.pt", weights_only=True)
    for k, v in sa["optimizer"]["state"].items():
        assert all(torch.equal(v[n], sb["optimizer"]["state"][k][n]) for n in v)
    for ext in ("csv", "jsonl"):  # same rows, none duplicated
        assert (a / f"train_log.{ext}").read_text() == (b / f"train_log.{ext}").read_text()
    # a finished run resumed again has nothing to do
    assert main(_args(images, b, "--max_iters", 4, "--resume", b / "latest", *crop)) == 0


@pytest.mark.slow
def test_load_pretrain(images, tmp_path, capsys):
    # false means false: the missing --pretrain_dir is never read
    assert main(_args(images, tmp_path / "a", "--max_iters", 1, "--load_pretrain", "False",
                      "--pretrain_dir", tmp_path / "missing.pth")) == 0
    assert main(_args(images, tmp_path / "b", "--max_iters", 1, "--load_pretrain", "true",
                      "--pretrain_dir", tmp_path / "a" / "Epoch0.pth", "--lr", 1e-9)) == 0
    assert "starting from" in capsys.readouterr().out
    before, after = _weights(tmp_path / "a" / "Epoch0.pth"), _weights(tmp_path / "b" / "Epoch0.pth")
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    assert main(_args(images, tmp_path / "c", "--load_pretrain", "true", "--conv_type", "tc",
                      "--pretrain_dir", tmp_path / "a" / "Epoch0.pth")) == 2
    assert "'dsc'" in capsys.readouterr().err


@pytest.mark.slow
def test_semantic_term_logged(images, tmp_path, monkeypatch):
    backbone = sgllie.semantic.ResNet50Backbone().state_dict()
    monkeypatch.setattr(sgllie.semantic, "imagenet_backbone_state_dict", lambda: (backbone, "random (test)"))
    args = _args(images, tmp_path / "w", "--max_iters", 1, "--log_format", "jsonl")
    args[args.index("--semantic_weight") + 1] = "0.1"
    assert main(args) == 0
    row = json.loads((tmp_path / "w" / "train_log.jsonl").read_text())
    assert row["sem"] > 0
    assert abs(row["total"] - sum(row[k] for k in ("tv", "spa", "col", "exp", "sem"))) < 1e-4
    assert not (tmp_path / "w" / "train_log.csv").exists()


@pytest.mark.slow
def test_torchrun_two_processes(images, tmp_path):
    """2 processes x batch 1 == 1 process x batch 2: DDP allreduces the custom ops' gradients."""
    out = tmp_path / "ddp"
    args = _args(images, out, "--max_iters", 2)
    args[args.index("--train_batch_size") + 1] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sgllie.train", *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=180)
    except subprocess.TimeoutExpired as e:  # the teardown hang main() now avoids: keep what it printed
        tail = lambda b: (b or b"").decode(errors="replace")[-3000:]  # noqa: E731
        pytest.fail(f"torchrun timed out\nstdout:\n{tail(e.stdout)}\nstderr:\n{tail(e.stderr)}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert {f.name for f in out.iterdir()} == {"Epoch0.pth", "train_state_Epoch0.pt", "latest",
                                                "train_log.csv", "train_log.jsonl"}
    assert p.stdout.count("semantic loss term is off") == 1  # rank 0 speaks
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2
    assert main(_args(images, tmp_path / "single", "--max_iters", 2)) == 0
    ddp, single = _weights(out / "Epoch0.pth"), _weights(tmp_path / "single" / "Epoch0.pth")
    assert all(torch.allclose(ddp[k], single[k], atol=1e-6, rtol=0) for k in ddp)
