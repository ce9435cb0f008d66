"""Training images for SGZ: every image under a folder, resized like the reference or randomly cropped."""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .io import IMAGE_SUFFIXES, ImageReadError, read_image


def find_images(root: str | os.PathLike) -> list[Path]:
    """Every file under ``root`` (recursive) with an image suffix (case-insensitive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: images folder not found" if not root.exists()
                                else f"{root}: not a folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def probe(path: Path) -> str:
    """"" if ``path`` looks like a readable image, else why not. Header only: decoding every
    image at build time would take minutes on a real training set; a file that passes this but
    fails to decode later is reported and replaced then (see LowLightImages.__getitem__)."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: size is not our concern
            with Image.open(path) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        return ""
    except OSError as e:  # PIL.UnidentifiedImageError is an OSError
        return f"not a readable image ({e.strerror or type(e).__name__})"
    except Exception as e:  # a corrupt header can make a plugin raise anything
        return f"not a readable image ({type(e).__name__}: {e})"
    return "" if w > 0 and h > 0 else "image of size 0"


def _is_8bit(image: np.ndarray) -> bool:
    """True if the float image is exactly k/255 values, i.e. came from an 8-bit file."""
    return bool(np.array_equal(np.round(image * 255) / np.float32(255), image))


def resize_lanczos(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] resized with Pillow's Lanczos.

    8-bit images go through Pillow's 8-bit RGB path and ``np.asarray(...) / 255.0``, exactly the
    reference's ``Image.resize(..., Image.ANTIALIAS)`` (ANTIALIAS is LANCZOS); other depths are
    resized per channel in 'F' (float32) mode, so 16-bit precision is kept, and clipped to [0, 1]
    (Lanczos overshoots; the 8-bit path clips to 0..255 the same way).
    """
    if _is_8bit(image):
        rgb = Image.fromarray(np.round(image * 255).astype(np.uint8), "RGB")
        return (np.asarray(rgb.resize((width, height), Image.LANCZOS)) / 255.0).astype(np.float32)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), "F")
                           .resize((width, height), Image.LANCZOS)) for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


class LowLightImages(torch.utils.data.Dataset):
    """The images under ``root`` as (3, H, W) float32 RGB tensors in [0, 1].

    ``resize=N`` (the reference: 512): every image resized to N x N with Lanczos.
    ``crop=N``: a random N x N crop at native resolution; an image whose shorter side is below N
    is first resized up (Lanczos, aspect kept) so its shorter side is N. Upscaling rather than
    reflect-padding: mirrored borders would be content the spatial-consistency loss never sees
    in real photos. The crop position depends only on (seed, epoch, index), so the data are the
    same with any number of workers and after a resume; call ``set_epoch`` before each epoch.
    Neither (resize and crop None/0): native size (batching then needs images of equal sizes).

    Unreadable files found at build time are reported by ``report`` (one line each, naming the
    file) and skipped; a folder without a usable image is a FileNotFoundError naming it.
    """

    def __init__(self, root: str | os.PathLike, resize: int | None = 512, crop: int | None = None,
                 seed: int = 0, report: Callable[[str], None] | None = None):
        resize, crop = resize or None, crop or None
        if resize is not None and crop is not None:
            raise ValueError("resize and crop are exclusive: set one of them to None (or 0)")
        for name, v in (("resize", resize), ("crop", crop)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        self.root, self.resize, self.crop, self.seed, self.epoch = Path(root), resize, crop, seed, 0
        self.report = report if report is not None else (lambda msg: print(msg, file=sys.stderr))
        self.files, self.skipped = [], []
        for path in find_images(self.root):
            why = probe(path)
            if why:
                self.skipped.append(path)
                self.report(f"skipping {path}: {why}")
            else:
                self.files.append(path)
        if not self.files:
            raise FileNotFoundError(
                f"{self.root}: no usable image (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)"
                + (f"; {len(self.skipped)} unreadable file(s) skipped" if self.skipped else ""))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        # A file that passed the header probe but does not decode is reported and replaced by the
        # next readable one: deterministic, and training does not die hours in.
        for k in range(len(self.files)):
            path = self.files[(index + k) % len(self.files)]
            try:
                image = read_image(path)
            except ImageReadError as e:
                self.report(f"skipping {e}")
                continue
            return self._to_tensor(self._prepare(image, index))
        raise ImageReadError(f"{self.root}: none of the {len(self.files)} images could be decoded")

    def _prepare(self, image: np.ndarray, index: int) -> np.ndarray:
        if self.resize is not None:
            return resize_lanczos(image, self.resize, self.resize)
        if self.crop is None:
            return image
        n = self.crop
        h, w = image.shape[:2]
        if min(h, w) < n:
            scale = n / min(h, w)
            h, w = max(n, round(h * scale)), max(n, round(w * scale))
            image = resize_lanczos(image, w, h)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        top, left = int(rng.integers(0, h - n + 1)), int(rng.integers(0, w - n + 1))
        return image[top:top + n, left:left + n]

    @staticmethod
    def _to_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
