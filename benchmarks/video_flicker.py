"""Flicker of enhanced video with and without --temporal-smoothing, on real clips darkened.

    python -m benchmarks.video_flicker [CLIP ...]   (default: ../shared/data/video/*.mp4)

Each clip is darkened (x0.3, gamma 1.5, plus mild sensor-like noise) into a low-light version, then
enhanced with the default weights at several smoothing strengths. Two figures per run: flicker, the
mean absolute frame-to-frame change of the output's mean brightness (in 8-bit levels; the input's own
is what the scene's motion causes), and gain flicker, the mean |change of log(output/input
brightness)| (x1000): how much the brightening itself jumps between frames. Writes
benchmarks/results/video_flicker.md.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import av
import numpy as np

from sgllie.model import load_model
from sgllie.video import FrameEnhancer, enhance_video, flicker

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "video"
ALPHAS = (None, 0.5, 0.2)


def darken(src: Path, dst: Path, seed: int = 0) -> list[float]:
    """A low-light version of ``src`` (video only); returns its frames' mean brightness."""
    rng = np.random.default_rng(seed)
    brightness = []
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        v = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=v.average_rate)
        stream.width, stream.height, stream.pix_fmt = v.codec_context.width, v.codec_context.height, "yuv420p"
        stream.options = {"crf": "12"}
        for frame in inp.decode(v):
            x = frame.to_ndarray(format="rgb24").astype(np.float32) / 255
            low = 0.3 * x ** 1.5 + rng.normal(0, 0.01, x.shape)
            rgb = np.clip(low * 255 + 0.5, 0, 255).astype(np.uint8)
            brightness.append(rgb.mean() / 255)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return brightness


def main(argv: list[str]) -> int:
    clips = [Path(a) for a in argv] or sorted(SHARED.glob("*.mp4"))
    if not clips:
        print(f"no clips given and none under {SHARED}", file=sys.stderr)
        return 2
    model = load_model(None, scale_factor=12)
    lines = ["# Flicker with and without temporal smoothing (real clips, darkened)", "",
             "Each cell: flicker / gain flicker. Flicker: mean absolute frame-to-frame change of mean "
             "brightness, in 8-bit levels (the darkened input's own is what the scene's motion causes). Gain "
             "flicker: mean |change of log(output / input brightness)| x 1000, the brightening's own "
             "jumps. Lower is steadier. Written by `python -m benchmarks.video_flicker` (CPU, default "
             "weights, scale_factor 12).", "",
             "| clip | frames | darkened input | " + " | ".join(
                 "no smoothing" if a is None else f"--temporal-smoothing {a}" for a in ALPHAS) + " |",
             "|---|---:|---:|" + "---:|" * len(ALPHAS)]
    with tempfile.TemporaryDirectory() as tmp:
        for clip in clips:
            low = Path(tmp) / f"{clip.stem}_low.mp4"
            b = darken(clip, low)
            row = [clip.name, str(len(b)), f"{255 * flicker(b):.3f}"]
            for alpha in ALPHAS:
                result = enhance_video(low, Path(tmp) / f"{clip.stem}_{alpha}.mp4",
                                       FrameEnhancer(model, smoothing=alpha), batch_size=8)
                row.append(f"{255 * result.flicker:.3f} / {1000 * result.gain_flicker:.2f}")
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "video_flicker.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
