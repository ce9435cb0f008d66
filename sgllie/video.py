"""Video enhancement as a stream: frames are decoded in one background thread, enhanced in batches on
the chosen device, and encoded in another as they come (PyAV, FFmpeg's libraries): no frame folders,
memory bounded whatever the length, the model overlapping the codec. Same size (odd sizes too: H.264 4:4:4 where 4:2:0 cannot hold them)
and frame rate as the input; audio streams are copied unchanged.

    result = enhance_video("clip.mp4", "out/clip.mp4", enhance, batch_size=4)

``enhance`` maps a (N, 3, H, W) float batch in [0, 1] to its enhanced batch (see ``FrameEnhancer``).
A truncated or corrupt input ends the stream early: the frames decoded so far are written as a
playable file and ``result.stopped`` says why. The output appears only when complete (written to a
temporary file, then renamed).
"""
from __future__ import annotations

import os
import queue
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .graphs import GraphedEnhance
from .io import to_uint8
from .model import EnhanceNet

# Containers written as they are read; other inputs (.avi, .webm, ...) are written as .mp4.
WRITE_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
READ_SUFFIXES = (*WRITE_FORMATS, ".avi", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
DEFAULT_FPS = Fraction(25)
QUEUE_FRAMES = 8  # decoded frames waiting for the model, at most (plus one batch)


class VideoError(ValueError):
    """A video that cannot be read or written; the message names the file."""


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in READ_SUFFIXES


def output_suffix(src: str | os.PathLike) -> str:
    suffix = Path(src).suffix.lower()
    return suffix if suffix in WRITE_FORMATS else ".mp4"


@dataclass
class VideoResult:
    frames: int                 # frames written
    expected: int | None        # frames the container announced (None if it does not say)
    fps: float
    audio_streams: int          # audio streams copied
    stopped: str | None         # why decoding ended early (truncated or corrupt input), else None
    flicker: float              # mean |change of mean brightness| between consecutive output frames
    gain_flicker: float         # mean |change of log(output / input mean brightness)|: the enhancement's own


def flicker(brightness) -> float:
    """Mean absolute frame-to-frame change of a sequence of mean brightnesses (0 for < 2 frames)."""
    b = np.asarray(list(brightness), dtype=np.float64)
    return float(np.abs(np.diff(b)).mean()) if b.size > 1 else 0.0


def gain_flicker(brightness_in, brightness_out) -> float:
    """Flicker of the brightening itself: mean |change of log(out / in)| between frames, so a scene
    that really gets brighter or darker does not count, only a gain that jumps."""
    gain = np.log(np.maximum(np.asarray(list(brightness_out)), 1e-6) / np.maximum(np.asarray(list(brightness_in)), 1e-6))
    return float(np.abs(np.diff(gain)).mean()) if gain.size > 1 else 0.0


class TemporalSmoother:
    """An exponential moving average of the factor map r across frames, against flicker:
    r'_t = alpha r_t + (1 - alpha) r'_{t-1}, restarted at a scene cut (the input's mean brightness
    jumping by more than ``cut``). alpha = 1 is no smoothing."""

    def __init__(self, alpha: float, cut: float = 0.08):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"temporal smoothing alpha must be in (0, 1], got {alpha}")
        self.alpha, self.cut = alpha, cut
        self._previous: Tensor | None = None
        self._brightness = 0.0

    def __call__(self, r: Tensor, brightness: list[float]) -> Tensor:
        """r (N, C, h, w) of N consecutive frames whose inputs have mean ``brightness``."""
        out = []
        for k in range(r.shape[0]):
            if self._previous is None or abs(brightness[k] - self._brightness) > self.cut:
                smoothed = r[k]
            else:
                smoothed = self.alpha * r[k] + (1 - self.alpha) * self._previous
            self._previous, self._brightness = smoothed, brightness[k]
            out.append(smoothed)
        return torch.stack(out)


class FrameEnhancer:
    """A model as ``enhance(batch, brightness) -> batch`` for video: a CUDA graph per shape where
    possible; with ``smoothing``, the factor maps pass through a ``TemporalSmoother`` first."""

    def __init__(self, model: EnhanceNet, backend: str | None = None, smoothing: float | None = None):
        self.smoother = TemporalSmoother(smoothing) if smoothing is not None else None
        self.graphed = GraphedEnhance(model, backend=backend)

    def __call__(self, x: Tensor, brightness: list[float]) -> Tensor:
        if self.smoother is None:
            return self.graphed(x)
        return self.graphed(x, adjust_factor_map=lambda r: self.smoother(r, brightness))


_END = object()


def _decode(container, video, audio, frames: queue.Queue, stop: threading.Event) -> None:
    """Demux in order: video frames (RGB arrays) and audio packets (copied later) into ``frames``.
    A packet that does not decode is skipped (corrupt data); a demuxing error ends the stream. Either
    is reported at the end as a VideoError."""
    damaged, last = 0, ""
    try:
        for packet in container.demux(video, *audio):
            if stop.is_set():
                return
            if packet.stream.type == "audio":
                if packet.dts is not None:
                    frames.put(packet)
                continue
            try:
                decoded = packet.decode()
            except Exception as e:  # av.error.InvalidDataError and kin: damaged data
                damaged, last = damaged + 1, str(e) or type(e).__name__
                continue
            for frame in decoded:
                frames.put(frame.to_ndarray(format="rgb24"))
        if damaged:
            frames.put(VideoError(f"{damaged} damaged video packet(s) skipped: {last}"))
    except Exception as e:  # the container itself cannot be read further: truncated
        frames.put(VideoError(str(e) or type(e).__name__))
    finally:
        frames.put(_END)


def enhance_video(src: str | os.PathLike, dst: str | os.PathLike,
                  enhance: Callable[[Tensor, list[float]], Tensor], *, batch_size: int = 4,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  progress: Callable[[int], None] | None = None) -> VideoResult:
    """Enhance every frame of ``src`` into ``dst`` (its suffix picks the container). ``progress``
    is called with the number of frames written so far."""
    import av  # PyAV: imported here so image-only use never needs it

    src, dst = Path(src), Path(dst)
    try:
        container = av.open(str(src))
    except Exception as e:
        raise VideoError(f"{src}: cannot open as a video ({e})") from None
    try:
        if not container.streams.video:
            raise VideoError(f"{src}: has no video stream")
        video = container.streams.video[0]
        video.thread_type = "AUTO"  # FFmpeg's own decoding threads
        audio = list(container.streams.audio)
        rate = video.average_rate or video.guessed_rate or DEFAULT_FPS
        expected = video.frames or None
        return _transcode(container, video, audio, Fraction(rate), expected, src, dst, enhance,
                          batch_size, torch.device(device), dtype, progress)
    finally:
        container.close()


class _Encoder(threading.Thread):
    """Encodes enhanced frames (uint8 RGB arrays) and muxes them with the copied audio packets, in
    the order queued, while the caller enhances the next batch. After an error it keeps draining
    the queue (so the caller never blocks on it) and ``error`` holds the exception."""

    def __init__(self, out, stream, copies: dict, progress):
        super().__init__(daemon=True)
        self.out, self.stream, self.copies, self.progress = out, stream, copies, progress
        self.items: queue.Queue = queue.Queue(maxsize=2 * QUEUE_FRAMES)
        self.brightness: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        import av
        while (item := self.items.get()) is not _END:
            if self.error is not None:
                continue
            try:
                if isinstance(item, np.ndarray):
                    self.brightness.append(float(item.mean()) / 255)
                    frame = av.VideoFrame.from_ndarray(item, format="rgb24")
                    frame.pts = len(self.brightness) - 1
                    for packet in self.stream.encode(frame):
                        self.out.mux(packet)
                    if self.progress is not None:
                        self.progress(len(self.brightness))
                elif item.stream.index in self.copies:  # an audio packet: copied as it is
                    item.stream = self.copies[item.stream.index]
                    self.out.mux(item)
            except BaseException as e:
                self.error = e
        if self.error is None:
            try:
                for packet in self.stream.encode():  # flush the encoder
                    self.out.mux(packet)
            except BaseException as e:
                self.error = e


def _transcode(container, video, audio, rate, expected, src, dst, enhance, batch_size, device, dtype,
               progress) -> VideoResult:
    import av

    frames: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    stop = threading.Event()
    reader = threading.Thread(target=_decode, args=(container, video, audio, frames, stop), daemon=True)
    reader.start()
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp" + dst.suffix, dir=dst.parent)
    os.close(fd)
    sent, brightness_in, stopped = 0, [], None
    out = encoder = None
    try:
        out = av.open(tmp, "w", format=WRITE_FORMATS.get(dst.suffix.lower(), "mp4"))
        h, w = video.codec_context.height, video.codec_context.width
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"  # 4:2:0 needs even sizes
        stream.options = {"crf": "17", "preset": "veryfast"}
        encoder = _Encoder(out, stream, {a.index: out.add_stream_from_template(a) for a in audio}, progress)
        encoder.start()

        def enhance_batch(batch: list[np.ndarray]) -> None:
            nonlocal sent
            lum = [float(f.mean()) / 255 for f in batch]
            brightness_in.extend(lum)
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            x = x.to(device=device, dtype=dtype, non_blocking=True).div_(255)
            y = enhance(x, lum)
            for k in range(y.shape[0]):
                encoder.items.put(to_uint8(y[k]))  # rounded on the device: a quarter of the bytes to copy
            sent += y.shape[0]

        batch: list[np.ndarray] = []
        while (item := frames.get()) is not _END:
            if encoder.error is not None:
                break
            if isinstance(item, VideoError):
                stopped = str(item)
            elif isinstance(item, np.ndarray):
                batch.append(item)
                if len(batch) == batch_size:
                    enhance_batch(batch)
                    batch = []
            else:
                encoder.items.put(item)
        if batch and encoder.error is None:
            enhance_batch(batch)
        encoder.items.put(_END)
        encoder.join()
        if encoder.error is not None:
            raise encoder.error
        if sent == 0:
            raise VideoError(f"{src}: no video frame could be decoded" + (f" ({stopped})" if stopped else ""))
        out.close()
        out = None
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        stop.set()
        if encoder is not None and encoder.is_alive():  # an error above: let it finish and drain
            encoder.items.put(_END)
            encoder.join()
        while reader.is_alive():  # unblock the reader if it waits on a full queue
            try:
                frames.get_nowait()
            except queue.Empty:
                reader.join(0.05)
        if out is not None:
            try:
                out.close()
            except Exception:
                pass
        if os.path.exists(tmp):
            os.unlink(tmp)
    if stopped is None and expected is not None and sent < expected:
        stopped = f"the stream ended after {sent} of {expected} frames"
    return VideoResult(sent, expected, float(rate), len(audio), stopped, flicker(encoder.brightness),
                       gain_flicker(brightness_in, encoder.brightness))
