"""Score enhanced images: ``python -m sgllie.evaluate --pred DIR [--ref DIR] [--input DIR]``.

Per image and overall, as a Markdown table (stdout, ``-o FILE.md``) and CSV (``--csv FILE``):

- always (no reference needed): mean brightness; exposure error, the RMS distance of 16x16 patch
  means from the 0.6 level SGZ's exposure loss aims at; PIQE (Venkatanath et al. 2015, via
  ``pypiqe``), an opinion-unaware no-reference quality score, lower is better. PIQE because it runs
  offline as it is: NIQE's usual implementation (scikit-video) breaks on numpy 2 and BRISQUE needs
  a trained model file;
- with ``--ref`` (normal-light images of the same scenes): PSNR and SSIM (scikit-image; SSIM with
  Wang et al.'s Gaussian 11x11 window, sigma 1.5, on the three channels, data range 1);
- with ``--segmentation MODEL`` (a TorchScript module mapping (N, 3, H, W) in [0, 1] to class
  logits) and ``--ref``: mean IoU and pixel accuracy of its predictions on the enhanced images
  (and on ``--input``, the low-light originals, when given) against its predictions on the
  references, a measure of how much scene meaning the enhancement recovers.

Pairing is by path relative to each folder, without the file extension (a.png matches a.jpg).
A missing partner or a size mismatch is one line on stderr naming both files; exit code 1 if any
image could not be scored, 2 for a usage error.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .io import IMAGE_SUFFIXES, atomic_write, read_image

PROG = "python -m sgllie.evaluate"
EXPOSURE_LEVEL, EXPOSURE_PATCH = 0.6, 16


class UsageError(Exception):
    pass


def images_by_key(folder: Path) -> dict[str, Path]:
    """Image files under ``folder`` (recursive) keyed by relative path without extension."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), path)
    return found


def brightness(img: np.ndarray) -> float:
    return float(img.mean())


def exposure_error(img: np.ndarray, level: float = EXPOSURE_LEVEL, patch: int = EXPOSURE_PATCH) -> float:
    """RMS distance of the grey patch means from ``level`` (SGZ's exposure loss, square-rooted)."""
    grey = img.mean(axis=2)
    h, w = grey.shape[0] // patch * patch, grey.shape[1] // patch * patch
    if h == 0 or w == 0:
        return float("nan")
    means = grey[:h, :w].reshape(h // patch, patch, w // patch, patch).mean(axis=(1, 3))
    return float(np.sqrt(((means - level) ** 2).mean()))


def piqe(img: np.ndarray) -> float:
    from pypiqe import piqe as _piqe
    score, *_ = _piqe((img * 255 + 0.5).astype(np.uint8))
    return float(score)


def psnr(img: np.ndarray, ref: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio
    return float(peak_signal_noise_ratio(ref, img, data_range=1.0))


def ssim(img: np.ndarray, ref: np.ndarray) -> float:
    from skimage.metrics import structural_similarity
    return float(structural_similarity(ref, img, data_range=1.0, channel_axis=2, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False))


def segmentation_agreement(pred: np.ndarray, truth: np.ndarray, classes: int) -> tuple[float, float]:
    """(mean IoU over the classes present in either map, pixel accuracy) of two label maps."""
    ious = []
    for c in range(classes):
        a, b = pred == c, truth == c
        union = np.logical_or(a, b).sum()
        if union:
            ious.append(np.logical_and(a, b).sum() / union)
    return float(np.mean(ious)), float((pred == truth).mean())


@dataclass
class Table:
    columns: list[str]
    rows: list[dict] = field(default_factory=list)

    def overall(self) -> dict:
        out = {"image": f"mean of {len(self.rows)}"}
        for c in self.columns[1:]:
            values = [r[c] for r in self.rows if isinstance(r.get(c), float) and not math.isnan(r[c])]
            out[c] = float(np.mean(values)) if values else float("nan")
        return out

    def markdown(self) -> str:
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
        lines = ["| " + " | ".join(self.columns) + " |", "|---|" + "---:|" * (len(self.columns) - 1)]
        for row in [*self.rows, self.overall()]:
            lines.append("| " + " | ".join(fmt(row.get(c, "")) for c in self.columns) + " |")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows([*self.rows, self.overall()])
        return buf.getvalue()


class Segmenter:
    def __init__(self, path: Path, device: torch.device):
        try:
            self.net = torch.jit.load(str(path), map_location=device).eval()
        except Exception as e:
            raise UsageError(f"--segmentation {path}: cannot load as a TorchScript module ({str(e).splitlines()[0]})")
        self.device = device

    @torch.inference_mode()
    def labels(self, img: np.ndarray) -> tuple[np.ndarray, int]:
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float().to(self.device)
        logits = self.net(x)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(1)[0].cpu().numpy(), logits.shape[1]


def evaluate(pred_dir: Path, ref_dir: Path | None = None, input_dir: Path | None = None,
             segmenter: Segmenter | None = None, errors: list[str] | None = None) -> Table:
    errors = [] if errors is None else errors
    preds = images_by_key(pred_dir)
    if not preds:
        raise UsageError(f"--pred {pred_dir}: no image files ({' '.join(IMAGE_SUFFIXES)})")
    refs = images_by_key(ref_dir) if ref_dir else {}
    inputs = images_by_key(input_dir) if input_dir else {}
    columns = ["image", "brightness", "exposure_error", "piqe"]
    if ref_dir:
        columns += ["psnr", "ssim"]
        if segmenter:
            columns += ["miou", "pixel_acc"] + (["miou_input", "pixel_acc_input"] if input_dir else [])
    table = Table(columns)
    for key, path in preds.items():
        if ref_dir and key not in refs:  # before reading anything: it cannot be scored
            errors.append(f"{path}: no reference image {key}.* under {ref_dir}")
            continue
        try:
            img = read_image(path)
            if ref_dir:
                ref = read_image(refs[key])
                if ref.shape != img.shape:
                    errors.append(f"{path} is {img.shape[1]}x{img.shape[0]} but its reference {refs[key]} is "
                                  f"{ref.shape[1]}x{ref.shape[0]}")
                    continue
            row = {"image": key, "brightness": brightness(img), "exposure_error": exposure_error(img),
                   "piqe": piqe(img)}
            if ref_dir:
                row.update(psnr=psnr(img, ref), ssim=ssim(img, ref))
                if segmenter:
                    truth, classes = segmenter.labels(ref)
                    row["miou"], row["pixel_acc"] = segmentation_agreement(segmenter.labels(img)[0], truth, classes)
                    if input_dir:
                        if key not in inputs:
                            errors.append(f"{path}: no input image {key}.* under {input_dir}")
                        else:
                            low = segmenter.labels(read_image(inputs[key]))[0]
                            row["miou_input"], row["pixel_acc_input"] = segmentation_agreement(low, truth, classes)
        except ValueError as e:  # unreadable image: the message names the file
            errors.append(str(e))
            continue
        table.rows.append(row)
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                epilog="Exit codes: 0 all scored, 1 some images could not be scored, 2 usage error.")
    p.add_argument("--pred", required=True, type=Path, metavar="DIR", help="enhanced images to score")
    p.add_argument("--ref", type=Path, metavar="DIR", help="normal-light references (paired metrics)")
    p.add_argument("--input", type=Path, metavar="DIR", help="the low-light inputs (segmentation baseline)")
    p.add_argument("--segmentation", type=Path, metavar="MODEL",
                   help="TorchScript segmentation net: (N, 3, H, W) in [0, 1] -> logits; needs --ref")
    p.add_argument("--device", default="cpu", help="device for --segmentation (default cpu)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE.md", help="also write the Markdown table here")
    p.add_argument("--csv", type=Path, metavar="FILE.csv", help="also write the table as CSV here")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        for name in ("pred", "ref", "input"):
            folder = getattr(args, name)
            if folder is not None and not folder.is_dir():
                raise UsageError(f"--{name} {folder}: not a folder")
        if args.segmentation and not args.ref:
            raise UsageError("--segmentation needs --ref (its predictions on the references are the truth)")
        segmenter = Segmenter(args.segmentation, torch.device(args.device)) if args.segmentation else None
        errors: list[str] = []
        table = evaluate(args.pred, args.ref, args.input, segmenter, errors)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    text = table.markdown()
    print(text, end="")
    if args.output:
        atomic_write(args.output, lambda tmp: Path(tmp).write_text(text))
    if args.csv:
        atomic_write(args.csv, lambda tmp: Path(tmp).write_text(table.csv()))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
