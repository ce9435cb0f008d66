"""Video through the enhance CLI: frames, size (odd too), rate and audio kept; smoothing; truncated
and corrupt inputs; outputs never clobbered. Clips are made here: a real frame, darkened, moving."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from sgllie import enhance as cli
from sgllie.io import read_image
from sgllie.model import load_model
from sgllie.video import FrameEnhancer, TemporalSmoother, enhance_video, flicker
from conftest import DATA

H, W = 61, 97  # odd: H.264 4:2:0 cannot hold it


def make_clip(path: Path, frames: int = 12, rate: int = 10, audio: bool = True, noise: float = 0.0,
              codec: str = "libx264") -> Path:
    """A real frame (tests/data), darkened, panning; optional audio track and per-frame noise."""
    image = (read_image(DATA / "bbb_131x97.png") * 255 / 3).astype(np.float32)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=rate)
        video.width, video.height = W, H
        video.pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
        sound = out.add_stream("aac", rate=44100) if audio else None
        for k in range(frames):
            frame = image[k % 30:k % 30 + H, :W] + noise * rng.standard_normal((H, W, 3))
            rgb = np.ascontiguousarray(np.clip(frame, 0, 255).astype(np.uint8))
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            for k in range(frames * 4):
                samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                samples.sample_rate, samples.pts = 44100, k * 1024
                for packet in sound.encode(samples):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return path


def read_clip(path: Path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(v)]
        return frames, float(v.average_rate), [s.type for s in c.streams]


@pytest.fixture(scope="module")
def model():
    return load_model(None, scale_factor=12)


def test_enhance_cli_streams_a_video(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4")
    assert cli.main([str(clip), "-o", str(tmp_path / "out"), "-q"]) == 0
    frames, rate, streams = read_clip(tmp_path / "out" / "clip.mp4")
    inputs, _, _ = read_clip(clip)
    assert len(frames) == 12 and frames[0].shape == (H, W, 3) and rate == 10
    assert streams == ["video", "audio"]
    # each frame is the model's enhancement of the decoded input frame, up to H.264 rounding
    model = load_model(None, scale_factor=12)
    with torch.no_grad():
        want = model.enhance(torch.from_numpy(inputs[5]).permute(2, 0, 1)[None].float() / 255)[0]
    got = torch.from_numpy(frames[5]).permute(2, 0, 1).float() / 255
    assert (got - want).abs().mean() < 3 / 255
    assert got.mean() > 1.5 * torch.from_numpy(inputs[5]).float().mean() / 255  # brighter, as enhanced


def test_existing_output_is_kept_without_overwrite(tmp_path, capsys):
    clip = make_clip(tmp_path / "clip.mp4", frames=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.mp4").write_bytes(b"keep me")
    assert cli.main([str(clip), "-o", str(out)]) == 0
    assert (out / "clip.mp4").read_bytes() == b"keep me" and "--overwrite" in capsys.readouterr().out
    assert cli.main([str(clip), "-o", str(out), "--overwrite", "-q"]) == 0
    assert len(read_clip(out / "clip.mp4")[0]) == 4


def test_truncated_video_writes_the_decoded_frames(tmp_path, capsys, monkeypatch):
    """An MP4 cut short (its index first, as streaming MP4s are, so it still opens): a clear line,
    exit code 1, and a playable output of the frames that could be decoded."""
    writes_index_first = av.open

    def faststart(path, mode="r", **kw):
        return writes_index_first(path, mode, **({"options": {"movflags": "faststart"}} | kw if mode == "w" else kw))
    monkeypatch.setattr(av, "open", faststart)
    clip = make_clip(tmp_path / "clip.mp4", frames=60, audio=False, noise=4.0)
    monkeypatch.undo()
    data = clip.read_bytes()
    clip.write_bytes(data[:len(data) * 2 // 3])
    assert cli.main([str(clip), "-o", str(tmp_path / "out"), "-q"]) == 1
    frames, _, _ = read_clip(tmp_path / "out" / "clip.mp4")
    assert 0 < len(frames) < 60
    err = capsys.readouterr().err
    assert "ended early" in err and f"wrote the {len(frames)} frames" in err


def test_unreadable_video_is_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    assert cli.main([str(bad), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.mp4" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out" / "broken.mp4").exists()
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary file left behind


def test_bad_smoothing_is_a_usage_error(tmp_path, capsys):
    assert cli.main([str(tmp_path), "-o", str(tmp_path / "o"), "--temporal-smoothing", "0"]) == 2
    assert "--temporal-smoothing" in capsys.readouterr().err


def test_smoother_averages_and_resets_at_a_cut():
    s = TemporalSmoother(0.25)
    r = torch.tensor([0.0, 1.0, 1.0, 1.0]).view(4, 1, 1, 1)
    out = s(r, [0.1, 0.1, 0.1, 0.5]).flatten().tolist()  # the last frame jumps in brightness: a cut
    assert out == pytest.approx([0.0, 0.25, 0.4375, 1.0])


def test_temporal_smoothing_reduces_flicker(tmp_path, model):
    """Sensor-like noise makes the factor map jitter: smoothing it steadies the output brightness."""
    clip = make_clip(tmp_path / "noisy.mp4", frames=16, audio=False, noise=12.0)
    plain = enhance_video(clip, tmp_path / "a.mp4", FrameEnhancer(model), batch_size=3)
    smooth = enhance_video(clip, tmp_path / "b.mp4", FrameEnhancer(model, smoothing=0.2), batch_size=3)
    assert plain.frames == smooth.frames == 16 and plain.stopped is None
    assert smooth.flicker < plain.flicker


def test_flicker_metric():
    assert flicker([0.5]) == 0.0
    assert flicker([0.1, 0.3, 0.2]) == pytest.approx(0.15)
