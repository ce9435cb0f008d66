"""Enhance low-light images and videos with SGZ: ``python -m sgllie.enhance INPUT... -o OUTDIR``.

INPUTs are image or video files, folders (searched recursively; outputs keep the paths relative to
the folder) or glob patterns (expanded here, so quoted patterns work; outputs keep the paths
relative to the pattern's fixed leading folder). Videos are streamed (sgllie.video): decoded,
enhanced in batches and encoded as they go, audio copied. Each bad input gets one line on stderr
and the run goes on.

Exit codes: 0 all images enhanced (or skipped because their output exists), 1 some inputs failed,
2 usage error (bad option, no input images, unusable weights/device/backend, outputs that would
overwrite inputs), 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import torch

from . import ops
from .graphs import GraphedEnhance
from .io import IMAGE_SUFFIXES, read_image, to_tensor, to_uint8, write_image
from .model import DEFAULT_WEIGHTS, EnhanceNet, load_model
from .video import READ_SUFFIXES as VIDEO_SUFFIXES
from .video import FrameEnhancer, VideoError, enhance_video, is_video, output_suffix

PROG = "python -m sgllie.enhance"
VIDEO_BATCH = 4
FALLBACK_SUFFIX = ".png"
_GLOB_MAGIC = re.compile(r"[*?[]")


class UsageError(Exception):
    """A problem with the command line or the run's setup: one line, exit code 2."""


@dataclass
class Job:
    src: Path                    # the input file as given/found
    rel: Path                    # its path relative to the input folder or pattern base
    out: Path | None = None      # where its result goes


@dataclass
class Report:
    """What happened in a run; errors are printed as they occur."""
    quiet: bool = False
    failed: int = 0
    skipped: int = 0
    written: int = 0
    images: int = 0
    megapixels: float = 0.0
    model_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def error(self, message: str) -> None:
        self.failed += 1
        print(f"error: {message}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Enhance low-light images and videos with SGZ (Zheng & Gupta, WACV 2022).",
        epilog="Exit codes: 0 success, 1 some inputs failed (one line each on stderr), 2 usage error.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video files, folders (recursive) or glob patterns (quote them: 'shots/*.jpg')")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR",
                   help="output folder; outputs keep the inputs' paths relative to the folder/pattern")
    p.add_argument("--weights", type=Path, default=None, metavar="PATH",
                   help="checkpoint: sgllie's format or the reference's state_dict "
                        f"(default: the packaged {DEFAULT_WEIGHTS.name})")
    p.add_argument("--scale-factor", type=int, default=12, metavar="S",
                   help="estimate the enhancement map at 1/S resolution (default 12, as the reference's "
                        "test script); sizes that are not multiples of S are padded, not cropped")
    p.add_argument("--device", default="auto", metavar="DEV",
                   help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--fp16", action="store_true", help="run the model in float16 (CUDA only)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="enhance up to N images of the same size, or N video frames, together "
                        f"(default 1 for images, {VIDEO_BATCH} for video frames)")
    p.add_argument("--temporal-smoothing", type=float, default=None, metavar="ALPHA",
                   help="videos: exponential moving average of the enhancement map across frames, "
                        "new frame's weight ALPHA in (0, 1] (smaller is smoother; reset at scene cuts); "
                        "suppresses flicker (default: off)")
    p.add_argument("--side-by-side", action="store_true",
                   help="write input|output side by side instead of the output alone")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: skip them with a note)")
    p.add_argument("--suffix", default="", metavar="TEXT",
                   help="append TEXT to each output's file stem, e.g. _enhanced (default: none)")
    p.add_argument("--format", default=None, metavar="EXT",
                   help="output format by extension, e.g. png or jpg (default: the input's; "
                        f"{FALLBACK_SUFFIX} where OpenCV cannot write the input's format)")
    p.add_argument("--backend", default="auto", metavar="NAME",
                   help="sgllie.ops backend: auto, " + ", ".join(ops._backends.BACKENDS) + " (default auto)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only errors (no per-file lines, notes or timing)")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.scale_factor < 1:
        raise UsageError(f"--scale-factor must be >= 1, got {args.scale_factor}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.temporal_smoothing is not None and not 0.0 < args.temporal_smoothing <= 1.0:
        raise UsageError(f"--temporal-smoothing must be in (0, 1], got {args.temporal_smoothing}")
    if any(sep in args.suffix for sep in ("/", "\\", os.sep)):
        raise UsageError(f"--suffix must not contain a path separator, got {args.suffix!r}")
    if args.format is not None:
        ext = "." + args.format.lstrip(".").lower()
        if ext == "." or not can_write(ext):
            raise UsageError(f"--format {args.format!r}: OpenCV cannot write this format")
        args.format = ext
    if args.output.exists() and not args.output.is_dir():
        raise UsageError(f"{args.output}: output exists and is not a folder")
    if args.backend != "auto" and args.backend not in ops._backends.BACKENDS:
        raise UsageError(f"--backend {args.backend!r}: unknown; choose from auto, "
                         + ", ".join(ops._backends.BACKENDS))


@cache
def can_write(ext: str) -> bool:
    try:
        return bool(ext) and cv2.haveImageWriter("x" + ext)
    except cv2.error:
        return False


# ---------------------------------------------------------------------------------------------
# collecting inputs and naming outputs

def _is_media_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES and not path.name.startswith(".")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def scan_folder(folder: Path, report: Report, exclude: Path | None = None) -> list[Job]:
    """Image and video files under ``folder`` (recursive, sorted, dotfiles skipped), minus those under ``exclude``."""
    jobs = []
    skip_exclude = exclude is not None and _inside(exclude, folder) and exclude.resolve() != folder.resolve()
    for root, dirs, files in os.walk(folder, onerror=lambda e: report.error(
            f"{e.filename}: cannot list folder ({e.strerror or e})")):
        root_path = Path(root)
        if skip_exclude:
            dirs[:] = [d for d in dirs if not _inside(root_path / d, exclude)]
        dirs.sort()
        for name in sorted(files):
            path = root_path / name
            if _is_media_name(path):
                jobs.append(Job(path, path.relative_to(folder)))
    return jobs


def _pattern_base(pattern: str) -> Path:
    """The leading folder of a glob pattern without wildcards ('a/b/*/c*.png' -> 'a/b')."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _GLOB_MAGIC.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative(path: Path, base: Path) -> Path:
    try:
        return path.relative_to(base)
    except ValueError:
        return Path(path.name)


def collect_inputs(inputs: list[str], report: Report, outdir: Path | None = None) -> list[Job]:
    """Expand files, folders and glob patterns into jobs, reporting inputs that yield nothing."""
    jobs: list[Job] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = scan_folder(path, report, exclude=outdir)
            if not found:
                report.error(f"{path}: no image or video files ({' '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}) "
                             "in this folder")
            jobs += found
        elif path.exists() or path.is_symlink():
            jobs.append(Job(path, Path(path.name)))  # named explicitly: read it whatever its suffix
        elif _GLOB_MAGIC.search(item):
            base = _pattern_base(item)
            matches = sorted(glob.glob(item, recursive=True))
            found = []
            for match in map(Path, matches):
                if match.is_dir():
                    found += scan_folder(match, report, exclude=outdir)
                elif not match.name.startswith("."):
                    found.append(Job(match, _relative(match, base)))
            if not found:
                report.error(f"{item}: no files match this pattern")
            jobs += found
        else:
            report.error(f"{path}: no such file or folder")
    return _dedupe(jobs)


def _dedupe(jobs: list[Job]) -> list[Job]:
    """The same file found twice (a folder and a pattern over it) is enhanced once."""
    seen, unique = set(), []
    for job in jobs:
        key = os.path.realpath(job.src)
        if key not in seen:
            seen.add(key)
            unique.append(job)
    return unique


def output_path(job: Job, outdir: Path, suffix: str, fmt: str | None) -> Path:
    if is_video(job.src):  # --format is for images; a video keeps its container where we can write it
        return outdir / job.rel.parent / f"{job.rel.stem}{suffix}{output_suffix(job.src)}"
    ext = fmt or job.src.suffix.lower()
    if not can_write(ext):
        ext = FALLBACK_SUFFIX
    return outdir / job.rel.parent / f"{job.rel.stem}{suffix}{ext}"


def plan_outputs(jobs: list[Job], args: argparse.Namespace, report: Report) -> list[Job]:
    """Name each job's output; refuse outputs that are inputs, drop duplicates and existing outputs."""
    inputs = {os.path.realpath(job.src) for job in jobs}
    input_ids = _file_ids(job.src for job in jobs)
    clashes = []
    for job in jobs:
        job.out = output_path(job, args.output, args.suffix, args.format)
        if os.path.realpath(job.out) in inputs or _file_ids([job.out]) & input_ids:
            clashes.append(job)
    if clashes:
        example = clashes[0]
        raise UsageError(
            f"refusing to run: {len(clashes)} output(s) would overwrite input files, e.g. "
            f"{example.out} for {example.src}; choose another -o folder, --suffix or --format")
    planned, taken = [], {}
    for job in jobs:
        key = os.path.realpath(job.out)
        if key in taken:
            report.error(f"{job.src}: skipped, its output {job.out} is also the output of {taken[key]}")
            continue
        taken[key] = job.src
        if job.out.exists() and not args.overwrite:
            report.skipped += 1
            report.note(f"skip {job.src}: {job.out} exists (use --overwrite to replace it)")
            continue
        planned.append(job)
    return planned


def _file_ids(paths) -> set[tuple[int, int]]:
    """(device, inode) of the paths that exist: catches an output that is an input under another name."""
    ids = set()
    for path in paths:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            ids.add((st.st_dev, st.st_ino))
    return ids


# ---------------------------------------------------------------------------------------------
# model and device

def pick_device(name: str, fp16: bool) -> torch.device:
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise UsageError(f"--device {name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
        if device.type not in ("cpu", "cuda"):
            raise UsageError(f"--device {name!r}: only cpu and cuda are supported")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UsageError(f"--device {name}: CUDA is not available on this machine")
            count = torch.cuda.device_count()
            if device.index is not None and device.index >= count:
                raise UsageError(f"--device {name}: no such GPU (this machine has {count})")
    if fp16 and device.type != "cuda":
        raise UsageError("--fp16 needs a CUDA device; float16 is not supported on the CPU here")
    return device


def prepare_model(args: argparse.Namespace, device: torch.device) -> EnhanceNet:
    """Load the weights, move them to ``device`` and run a tiny probe so setup errors surface now."""
    try:
        model = load_model(args.weights, scale_factor=args.scale_factor, device=device)
    except FileNotFoundError as e:
        hint = " (the packaged default weights are missing; pass --weights PATH)" if args.weights is None else ""
        raise UsageError(f"{e}{hint}") from None
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    if args.fp16:
        model = model.half()
    dtype = torch.float16 if args.fp16 else torch.float32
    try:
        with ops.use_backend(args.backend), torch.inference_mode():
            model.enhance(torch.full((1, 3, args.scale_factor, args.scale_factor), 0.1,
                                     device=device, dtype=dtype))
    except Exception as e:
        raise UsageError(f"cannot run the model on {device} with backend {args.backend!r}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return model


# ---------------------------------------------------------------------------------------------
# reading, batching, enhancing, writing

def load_images(jobs: list[Job], report: Report):
    """Yield (job, image) for each readable input; report the others."""
    for job in jobs:
        try:
            image = read_image(job.src)
        except ValueError as e:  # ImageReadError names the file
            report.error(str(e))
            continue
        except Exception as e:
            report.error(f"{job.src}: cannot read ({type(e).__name__}: {e})")
            continue
        yield job, image


def batch_by_size(items, batch_size: int):
    """Group (job, image) pairs of equal size into batches of up to ``batch_size``.

    Streams: a batch is emitted when full; a bounded number of images waits for partners
    (at most 4 * batch_size in all) before the fullest group is emitted anyway.
    """
    pending: OrderedDict[tuple[int, int], list] = OrderedDict()
    waiting = 0
    for job, image in items:
        group = pending.setdefault(image.shape[:2], [])
        group.append((job, image))
        waiting += 1
        if len(group) >= batch_size:
            del pending[image.shape[:2]]
            waiting -= len(group)
            yield group
        elif waiting >= 4 * batch_size:
            key = max(pending, key=lambda k: len(pending[k]))
            group = pending.pop(key)
            waiting -= len(group)
            yield group
    yield from pending.values()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def enhance_batch(enhance: GraphedEnhance, images: list[np.ndarray], device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(inputs, outputs) as float32 CPU (N, 3, H, W) and the seconds spent in the model."""
    x_cpu = torch.cat([to_tensor(image) for image in images])
    x = x_cpu.to(device=device, dtype=dtype, non_blocking=True)
    _sync(device)
    start = time.perf_counter()
    y = enhance(x)
    _sync(device)
    seconds = time.perf_counter() - start
    return x_cpu, y.float().cpu(), seconds


def write_result(job: Job, x: torch.Tensor, y: torch.Tensor, side_by_side: bool) -> None:
    out = to_uint8(y)
    if side_by_side:
        out = np.concatenate([to_uint8(x), out], axis=1)
    write_image(job.out, out)


def run_batch(batch: list, enhance: GraphedEnhance, args: argparse.Namespace, device: torch.device,
              report: Report) -> None:
    dtype = torch.float16 if args.fp16 else torch.float32
    jobs = [job for job, _ in batch]
    try:
        x, y, seconds = enhance_batch(enhance, [image for _, image in batch], device, dtype)
    except Exception as e:
        if len(batch) > 1:  # e.g. out of memory: retry one at a time
            if device.type == "cuda":
                torch.cuda.empty_cache()
            for item in batch:
                run_batch([item], enhance, args, device, report)
            return
        report.error(f"{jobs[0].src}: enhancement failed ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''})")
        return
    report.model_seconds += seconds
    for i, job in enumerate(jobs):
        report.images += 1
        report.megapixels += x.shape[-1] * x.shape[-2] / 1e6
        try:
            write_result(job, x[i], y[i], args.side_by_side)
        except Exception as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            report.error(f"{job.out}: cannot write output for {job.src} ({reason})")
            continue
        report.written += 1
        report.note(f"{job.src} -> {job.out}")


def run_video(job: Job, model: EnhanceNet, args: argparse.Namespace, device: torch.device,
              report: Report) -> None:
    from tqdm import tqdm
    enhance = FrameEnhancer(model, backend=args.backend, smoothing=args.temporal_smoothing)
    bar = tqdm(desc=job.src.name, unit="frame", disable=args.quiet, leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        result = enhance_video(job.src, job.out, enhance, batch_size=args.batch_size or VIDEO_BATCH, device=device,
                               dtype=torch.float16 if args.fp16 else torch.float32,
                               progress=lambda n: bar.update(n - bar.n))
    except VideoError as e:
        report.error(str(e))
        return
    except OSError as e:
        report.error(f"{job.out}: cannot write output for {job.src} ({e.strerror or e})")
        return
    except Exception as e:
        report.error(f"{job.src}: enhancement failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    report.written += 1
    if result.stopped:  # truncated or corrupt input: what was decoded is written, playable
        report.error(f"{job.src}: the input ended early ({result.stopped}); wrote the {result.frames} frames "
                     f"decoded to {job.out}")
    audio = (f", {result.audio_streams} audio stream(s) copied" if result.audio_streams else "")
    report.note(f"{job.src} -> {job.out} ({result.frames} frames at {result.fps:g} fps, "
                f"{result.frames / seconds:.1f} frames/s{audio})")


def print_summary(report: Report, device: torch.device) -> None:
    wall = time.perf_counter() - report.started
    parts = [f"{report.written} written"]
    if report.skipped:
        parts.append(f"{report.skipped} skipped (exist)")
    if report.failed:
        parts.append(f"{report.failed} failed")
    report.note(", ".join(parts) + f"; wall time {wall:.2f} s")
    if report.images:
        t = report.model_seconds
        rate = f"{report.images / t:.1f} images/s, {report.megapixels / t:.2f} MP/s" if t > 0 else "n/a"
        report.note(f"model: {report.images} images, {report.megapixels:.2f} MP in {t:.3f} s on {device} "
                    f"({rate})")


# ---------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    report = Report(quiet=args.quiet)
    check_args(args)
    device = pick_device(args.device, args.fp16)
    model = prepare_model(args, device)
    jobs = collect_inputs(args.inputs, report, outdir=args.output)
    if not jobs:
        raise UsageError("no input images found")
    jobs = plan_outputs(jobs, args, report)
    videos = [job for job in jobs if is_video(job.src)]
    images = [job for job in jobs if not is_video(job.src)]
    if images:
        enhance = GraphedEnhance(model, backend=args.backend)  # CUDA: a graph per batch shape
        for batch in batch_by_size(load_images(images, report), args.batch_size or 1):
            run_batch(batch, enhance, args, device, report)
    for job in videos:
        run_video(job, model, args, device, report)
    print_summary(report, device)
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
        return int(e.code or 0)
    try:
        return run(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
