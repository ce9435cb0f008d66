"""Video through sgllie.video: frames/s of the whole pipeline (decode, enhance, encode) and of the
enhance stage alone, at 1080p and 4K, default weights, scale_factor 12, on the machine's device.

Rows: "pipeline" is enhance_video end to end on a short synthetic clip (a darkened moving noise
pattern, H.264), per frame; "enhance" is the model alone on one frame (sgllie's auto backend)."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from sgllie.model import load_model
from sgllie.video import FrameEnhancer, enhance_video

from ._common import DEVICE, pick

SIZES = {"1080p": pick((1080, 1920), (72, 128)), "4k": pick((2160, 3840), (90, 160))}
FRAMES = pick(8, 4, cuda=32)


def _clip(path, h, w, frames):
    rng = np.random.default_rng(0)
    base = (rng.random((h, w + frames, 3)) * 60).astype(np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for k in range(frames):
            rgb = np.ascontiguousarray(base[:, k:k + w])
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def model():
    return load_model(None, scale_factor=12, device=DEVICE)


@pytest.mark.parametrize("size", SIZES)
def test_pipeline(size, model, timer, tmp_path):
    h, w = SIZES[size]
    clip = _clip(tmp_path / "in.mp4", h, w, FRAMES)
    enhance = FrameEnhancer(model)

    def fn():
        result = enhance_video(clip, tmp_path / "out.mp4", enhance, batch_size=4, device=DEVICE)
        assert result.frames == FRAMES

    timer(fn, group=f"video {size} {h}x{w}, per {FRAMES}-frame clip", variant="pipeline", heavy=True)


@pytest.mark.parametrize("size", SIZES)
def test_enhance_stage(size, model, timer):
    h, w = SIZES[size]
    x = torch.rand(1, 3, h, w, device=DEVICE) * 0.25
    enhance = FrameEnhancer(model)

    def fn():
        return enhance(x, [0.1])

    timer(fn, group=f"video {size} {h}x{w}, per frame", variant="enhance", heavy=True)
