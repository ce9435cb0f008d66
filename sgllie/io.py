"""File I/O with the guarantees the CLIs promise: atomic writes and one clear error per bad file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


_UMASK = os.umask(0)
os.umask(_UMASK)


class ImageReadError(ValueError):
    pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as float32 RGB (H, W, 3) in [0, 1]: grey, alpha, 8- and 16-bit handled.

    Raises ImageReadError naming the file for anything that is not a readable image.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read ({e.strerror or e})") from None
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(f"{path}: not a readable image (unknown format, truncated or corrupt)")
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    elif image.dtype == np.float32:
        scale = 1.0
    else:
        raise ImageReadError(f"{path}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)  # alpha is dropped, not composited
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise ImageReadError(f"{path}: unsupported channel count {image.shape[2]}")
    image = image.astype(np.float32) / np.float32(scale)
    if not np.isfinite(image).all():
        raise ImageReadError(f"{path}: contains NaN or Inf pixels")
    return np.clip(image, 0.0, 1.0)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float RGB array to a (1, 3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor in [0, 1] to (H, W, 3) uint8 RGB, rounded as torchvision's save_image."""
    return t.clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 or uint16 RGB array atomically; the format follows the suffix."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode images with suffix {path.suffix!r}")
    atomic_write(path, lambda tmp: buf.tofile(tmp))
