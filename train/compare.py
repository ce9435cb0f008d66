"""Compare checkpoints on held-out low-light images: a before/after figure and a table.

    python train/compare.py --model released=Epoch99.pth --model default=sgllie/weights/sgllie_default.pth \
        --images IMG... --figure train/before_after.jpg --table train/comparison.md

For each image (none of them in any model's training set): mean brightness of the input and of each
output, and SGZ's own no-reference losses on the output at inference (scale_factor 12): exposure
distance from 0.6, colour constancy, spatial consistency with the input, and the method's weighted
zero-reference total (1600 TV of the factor map + spa + 5 col + 10 exp; no semantic term). No
ground truth is involved. The figure shows input | each model for the first --figure-count images.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

import sgllie
from sgllie.io import read_image, to_tensor, to_uint8, write_image
from sgllie.losses import LossWeights, SGZLoss

_LOSS = SGZLoss(LossWeights(sem=0.0))


def measure(y: torch.Tensor, r: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    total, parts = _LOSS(y, r, x)
    w = _LOSS.weights
    return {"brightness": float(y.mean()), "exp": float(parts["exp"]) / w.exp, "col": float(parts["col"]) / w.col,
            "spa": float(parts["spa"]) / w.spa, "total": float(total)}


def named_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT, got {text!r}")
    return name, path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=named_path, action="append", required=True, metavar="NAME=CHECKPOINT",
                   help="a checkpoint to compare, in figure order (repeat)")
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--figure", required=True, help="before/after figure (first --figure-count images)")
    p.add_argument("--figure-count", type=int, default=3)
    p.add_argument("--table", required=True)
    args = p.parse_args(argv)

    models = {name: sgllie.load_model(path) for name, path in args.model}
    rows, tiles = [], []
    for k, path in enumerate(args.images):
        x = to_tensor(read_image(path))
        row = {"image": f"{Path(path).parent.name}/{Path(path).name}", "input brightness": float(x.mean())}
        outs = [x]
        with torch.inference_mode():
            for name, model in models.items():
                y, r = model(x)
                outs.append(y)
                row.update({f"{name} {k2}": v for k2, v in measure(y, r, x).items()})
        rows.append(row)
        if k < args.figure_count:
            strip = np.concatenate([to_uint8(o[0]) for o in outs], 1)
            scale = 240 * len(outs) / strip.shape[1]
            tiles.append(cv2.resize(strip, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    width = max(t.shape[1] for t in tiles)
    figure = np.concatenate([np.pad(t, ((0, 4), (0, width - t.shape[1]), (0, 0)), constant_values=255)
                             for t in tiles], 0)
    write_image(args.figure, figure)

    keys = list(rows[0])
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys[1:]}
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows + [{"image": "**mean**", **mean}]:
        lines.append("| " + " | ".join(r[k] if isinstance(r[k], str) else f"{r[k]:.4f}" for k in keys) + " |")
    Path(args.table).write_text("\n".join(lines) + "\n")
    print(lines[0], lines[-1], sep="\n")


if __name__ == "__main__":
    main()
