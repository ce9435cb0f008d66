"""Build the training folder of the default weights: every image of the given folders as N x N PNGs.

    python train/prepare_data.py OUT SICE_PART1 ZDCE_REAL [--size 128]

Square images are resized to N x N with Lanczos exactly as `python -m sgllie.train --resize N`
does (same function), so training on OUT with `--resize N` sees the same pixels as training on
the originals, without resizing every 512x512 JPEG again in every epoch on a 2-core machine.
A non-square image (the 1080x1920 and 4K phone captures) is not squashed: it becomes
ceil(long / short) evenly spaced square crops of its full short side, each resized to N x N.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from sgllie.data import find_images, resize_lanczos
from sgllie.io import read_image, write_image


def square_crops(image: np.ndarray) -> list[np.ndarray]:
    h, w = image.shape[:2]
    side, long = min(h, w), max(h, w)
    count = math.ceil(long / side)
    starts = np.linspace(0, long - side, count).round().astype(int) if count > 1 else [0]
    return [image[s:s + side] if h > w else image[:, s:s + side] for s in starts]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("sources", type=Path, nargs="+", help="image folders (recursive)")
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)
    written = 0
    for source in args.sources:
        for path in find_images(source):
            for k, crop in enumerate(square_crops(read_image(path))):
                small = resize_lanczos(crop, args.size, args.size)
                name = f"{source.name}/{path.relative_to(source).with_suffix('')}_{k}.png"
                target = args.out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                write_image(target, np.round(small * 255).astype(np.uint8))
                written += 1
    print(f"{written} images of {args.size}x{args.size} in {args.out}")


if __name__ == "__main__":
    main()
