"""Re-create the small low-light test images in this folder from frames of Big Buck Bunny.

Source: bigbuckbunny.mp4 (CC-BY 3.0, (c) copyright 2008 Blender Foundation, www.bigbuckbunny.org).
Each frame is resized (INTER_AREA) and darkened as ``0.2 * frame ** 1.5`` (frame in [0, 1]).

    python tests/data/make_images.py [PATH_TO/bigbuckbunny.mp4]
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).parent
DEFAULT_VIDEO = HERE.parents[2] / "shared" / "data" / "video" / "bigbuckbunny.mp4"
# (frame index, width, height, file name)
IMAGES = [(20, 96, 64, "bbb_96x64.jpg"), (66, 131, 97, "bbb_131x97.png"), (120, 160, 120, "bbb_160x120.png")]
GAIN, GAMMA = 0.2, 1.5


def read_frame(video: Path, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(video))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise SystemExit(f"{video}: cannot read frame {index}")
    return frame  # BGR uint8


def darken(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    small = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA).astype(np.float64) / 255.0
    return np.clip(np.round(GAIN * small ** GAMMA * 255.0), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    video = Path(argv[0]) if argv else DEFAULT_VIDEO
    if not video.is_file():
        raise SystemExit(f"{video}: video not found")
    for index, width, height, name in IMAGES:
        image = darken(read_frame(video, index), width, height)
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if name.endswith(".jpg") else [cv2.IMWRITE_PNG_COMPRESSION, 9]
        if not cv2.imwrite(str(HERE / name), image, params):
            raise SystemExit(f"{HERE / name}: cannot write")
        size = (HERE / name).stat().st_size
        print(f"{name}: frame {index}, {width}x{height}, mean {image.mean() / 255:.3f}, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
