"""Compare two checkpoints on held-out low-light images: a before/after figure and a table.

    python train/compare.py --ours sgllie/weights/sgllie_default.pth --theirs Epoch99.pth \
        --images IMG... --figure train/before_after.jpg --table train/comparison.md

For each image (none of them in the training set): mean brightness of the input and of each
output, and the method's own no-reference losses on the output (exposure distance from 0.6,
colour constancy, spatial consistency with the input). No ground truth is involved.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

import sgllie
from sgllie.io import read_image, to_tensor, to_uint8, write_image


def measure(y: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    spa, exp, col = sgllie.ops.reference.zero_reference_loss(y, x)
    return {"brightness": float(y.mean()), "exp": float(exp), "col": float(col), "spa": float(spa)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ours", required=True)
    p.add_argument("--theirs", required=True)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--figure", required=True, help="before/after figure (first --figure-count images)")
    p.add_argument("--figure-count", type=int, default=4)
    p.add_argument("--table", required=True)
    args = p.parse_args(argv)

    models = {"reference Epoch99": sgllie.load_model(args.theirs), "sgllie default": sgllie.load_model(args.ours)}
    rows, tiles = [], []
    for k, path in enumerate(args.images):
        x = to_tensor(read_image(path))
        row = {"image": f"{Path(path).parent.name}/{Path(path).name}", "input brightness": float(x.mean())}
        outs = [x]
        with torch.inference_mode():
            for name, model in models.items():
                y = model.enhance(x)
                outs.append(y)
                row.update({f"{name} {k2}": v for k2, v in measure(y, x).items()})
        rows.append(row)
        if k < args.figure_count:
            strip = np.concatenate([to_uint8(o[0]) for o in outs], 1)
            scale = 720 / strip.shape[1]
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
    print("\n".join(lines))


if __name__ == "__main__":
    main()
