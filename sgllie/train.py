"""Train SGZ's enhancement network: ``python -m sgllie.train`` (or under ``torchrun`` for several processes).

Every flag of the reference's lowlight_train.py, with its name and default, plus resumable training
(``--resume``), a per-component loss log, a loss plot and DistributedDataParallel. Outputs, all in
--snapshots_folder (only rank 0 writes):

* ``Epoch{e}.pth``: the weights (sgllie's checkpoint format, loadable by ``sgllie.load_model``),
  written every --snapshot_iter iterations of epoch e and at its end, as the reference does.
* ``train_state_Epoch{e}.pt``: everything needed to continue bit-exactly (weights, optimizer,
  position in the epoch, RNG states, seed, flags); ``latest``: a JSON pointer to the newest one.
* ``train_log.csv`` / ``train_log.jsonl``: one row per iteration, each loss component (weighted
  as in the total) and the total; ``loss_curves.png`` at the end.

Data order is a function of (seed, epoch) only, so a resumed run sees the batches the uninterrupted
run would have seen, and ends with identical weights (same flags, same number of processes).
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import random
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from . import ops
from .data import LowLightImages
from .io import atomic_write
from .losses import COMPONENTS, LossWeights, SGZLoss
from .model import EnhanceNet, read_checkpoint, save_checkpoint

PROG = "python -m sgllie.train"
STATE_FORMAT = "sgllie.TrainState"
LOG_FIELDS = ("epoch", "iteration", "step") + COMPONENTS + ("total",)


class UsageError(Exception):
    """A bad flag, file or folder: reported as one line, exit code 2."""


class Diverged(Exception):
    """The loss is NaN or Inf: reported as one line, exit code 1, with no snapshot of the step."""


# ----------------------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        raise UsageError(message)


def _bool(text: str) -> bool:
    """A real boolean (the reference's type=bool made "False" true)."""
    value = {"true": True, "1": True, "yes": True, "y": True, "on": True,
             "false": False, "0": False, "no": False, "n": False, "off": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true/false/1/0/yes/no, got {text!r}")
    return value


def _number(kind, low, strict: bool):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(v) or v < low or (strict and v == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text!r}")
        return v
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


pos_int, nonneg_int = _number(int, 0, True), _number(int, 0, False)
pos_float, nonneg_float = _number(float, 0.0, True), _number(float, 0.0, False)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train SGZ's enhancement network (zero-reference, semantic-guided).",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ref = p.add_argument_group("flags of the reference (same names and defaults)")
    ref.add_argument("--lowlight_images_path", default="data/train_data/",
                     help="folder of training images (.jpg .jpeg .png .bmp .tif .tiff, recursive)")
    ref.add_argument("--lr", type=pos_float, default=1e-4, help="Adam learning rate")
    ref.add_argument("--weight_decay", type=nonneg_float, default=1e-4, help="Adam weight decay")
    ref.add_argument("--grad_clip_norm", type=pos_float, default=0.1, help="gradient-norm clip")
    ref.add_argument("--num_epochs", type=pos_int, default=100, help="epochs")
    ref.add_argument("--train_batch_size", type=pos_int, default=6, help="per process")
    ref.add_argument("--val_batch_size", type=pos_int, default=8,
                     help="unused (there is no validation); kept for compatibility with the reference")
    ref.add_argument("--num_workers", type=nonneg_int, default=4, help="data-loading processes")
    ref.add_argument("--display_iter", type=pos_int, default=10, help="print the loss every N iterations")
    ref.add_argument("--snapshot_iter", type=pos_int, default=10,
                     help="write Epoch{epoch}.pth and the training state every N iterations "
                          "(and at epoch end)")
    ref.add_argument("--scale_factor", type=pos_int, default=1,
                     help="the network works at 1/N resolution")
    ref.add_argument("--snapshots_folder", default="weight/", help="where weights, states and logs go")
    ref.add_argument("--load_pretrain", type=_bool, default=False, metavar="BOOL",
                     help="start from --pretrain_dir (true/false/1/0/yes/no)")
    ref.add_argument("--pretrain_dir", default="weight/Epoch99.pth",
                     help="sgllie or reference checkpoint used with --load_pretrain true")
    ref.add_argument("--num_of_SegClass", type=pos_int, default=21,
                     help="classes of the segmentation net")
    ref.add_argument("--conv_type", choices=("dsc", "tc"), default="dsc",
                     help="depthwise-separable or plain 3x3 blocks")
    ref.add_argument("--patch_size", type=int, choices=(3, 4, 5), default=4,
                     help="spatial-consistency patch")
    ref.add_argument("--exp_level", type=float, choices=(0.5, 0.6, 0.7), default=0.6,
                     help="exposure level")

    new = p.add_argument_group("sgllie's additions")
    new.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    new.add_argument("--seed", type=nonneg_int, default=None,
                     help="seed of weight init and data order; None = a random one, printed and saved "
                          "for --resume")
    new.add_argument("--semantic_weight", type=float, default=0.1,
                     help="weight of the semantic loss; 0 = off")
    new.add_argument("--seg_weights", default=None, metavar="PATH",
                     help="torchvision ResNet-50 state_dict for the segmentation net; None = torchvision's "
                          "ImageNet download")
    new.add_argument("--resize", type=nonneg_int, default=None,
                     help="resize images to N x N with Lanczos as the reference; None = 512, or 0 "
                          "with --crop; 0 = native size")
    new.add_argument("--crop", type=nonneg_int, default=0,
                     help="random N x N crops instead of resizing (needs --resize 0 or no --resize; images "
                          "smaller than N are resized up); 0 = off")
    new.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                     help="continue from a training state, a 'latest' pointer or a folder holding one "
                          "(no PATH: the 'latest' in --snapshots_folder)")
    new.add_argument("--max_iters", type=pos_int, default=None,
                     help="stop after this many iterations in total (counting those before --resume)")
    new.add_argument("--log_format", choices=("csv", "jsonl", "both"), default="both",
                     help="per-iteration loss log train_log.csv and/or train_log.jsonl")
    new.add_argument("--no_plot", action="store_true", help="do not write loss_curves.png at the end")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.resize is None:
        args.resize = 0 if args.crop else 512
    elif args.resize and args.crop:
        raise UsageError("--resize and --crop are exclusive: use --resize 0 --crop N")
    if not math.isfinite(args.semantic_weight):
        raise UsageError(f"argument --semantic_weight: must be finite, got {args.semantic_weight}")
    if not args.resize and not args.crop and args.train_batch_size > 1:
        raise UsageError("--resize 0 without --crop keeps each image's size, which only batches with "
                         "--train_batch_size 1")
    return args


# ----------------------------------------------------------------------------- processes and devices
@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def say(self, message: str) -> None:
        if self.main:
            print(message, flush=True)


def make_context(device_flag: str) -> Context:
    """Rank, world size (torchrun's environment; 1 without it) and the device of this process."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    flag = device_flag.strip().lower()
    if flag == "auto":
        flag = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(flag)
    except RuntimeError:
        raise UsageError(f"argument --device: expected auto, cpu, cuda or cuda:N, "
                         f"got {device_flag!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"argument --device: expected auto, cpu, cuda or cuda:N, got {device_flag!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device_flag}: CUDA is not available here (use --device cpu)")
        if device.index is None:  # one GPU per process under torchrun
            device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise UsageError(f"--device: {device} does not exist ({torch.cuda.device_count()} GPU(s))")
        torch.cuda.set_device(device)
    return Context(rank, world, device)


class EpochSampler(DistributedSampler):
    """DistributedSampler (seeded, order = f(seed, epoch)) that can skip the samples already trained
    on in the current epoch, so a resume mid-epoch continues with the very next batch. With one
    process it is a plain seeded shuffle."""

    skip = 0

    def __iter__(self):
        return islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator (seeded per epoch): derive numpy/random from it
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# ----------------------------------------------------------------------------- training state files
def _rng_states(device: torch.device) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}


def _set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and states.get("cuda") is not None:
        torch.cuda.set_rng_state_all(states["cuda"])


def load_state(arg: str, snapshots_folder: str) -> tuple[dict, Path]:
    """The training state named by --resume (a state file, a `latest` pointer or a folder)."""
    path = Path(snapshots_folder) / "latest" if arg == "" else Path(arg)
    if path.is_dir():
        path = path / "latest"
    if not path.is_file():
        raise UsageError(f"--resume: {path} not found")
    with open(path, "rb") as f:
        head = f.read(1)
    if head == b"{":  # a `latest` pointer
        try:
            pointer = json.loads(path.read_text())
            path = path.parent / pointer["state"]
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"--resume: {path} is not a valid 'latest' pointer") from None
        if not path.is_file():
            raise UsageError(f"--resume: {path} (named by the 'latest' pointer) not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"--resume: {path} is not a training state ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UsageError(f"--resume: {path} is not an sgllie training state "
                         "(weights alone, e.g. Epoch*.pth, start a run with --load_pretrain true "
                         "--pretrain_dir)")
    return state, path


# ----------------------------------------------------------------------------- loss log
class LossLog:
    """train_log.csv / train_log.jsonl, one row per iteration, appended as training goes."""

    def __init__(self, folder: Path, fmt: str, keep_until_step: int | None):
        names = {"csv": ["csv"], "jsonl": ["jsonl"], "both": ["csv", "jsonl"]}[fmt]
        self.paths = {ext: folder / f"train_log.{ext}" for ext in names}
        for ext, path in self.paths.items():
            if keep_until_step is None or not path.exists():
                atomic_write(path, lambda tmp, ext=ext: self._write(tmp, ext, []))
            else:  # resuming: drop rows past the state (trained after it, then lost), no duplicates
                rows = [r for r in self.read(path) if r["step"] <= keep_until_step]
                atomic_write(path, lambda tmp, ext=ext, rows=rows: self._write(tmp, ext, rows))
        self.files = {ext: open(path, "a", newline="") for ext, path in self.paths.items()}

    @staticmethod
    def _write(tmp: str, ext: str, rows: list[dict]) -> None:
        with open(tmp, "w", newline="") as f:
            if ext == "csv":
                w = csv.DictWriter(f, LOG_FIELDS)
                w.writeheader()
                w.writerows(rows)
            else:
                f.writelines(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows)

    @staticmethod
    def read(path: Path) -> list[dict]:
        """Rows as dicts of numbers (None for a component that was off)."""
        rows = []
        with open(path, newline="") as f:
            raw = (csv.DictReader(f) if path.suffix == ".csv"
                   else (json.loads(line) for line in f if line.strip()))
            for r in raw:
                rows.append({k: (None if r.get(k) in (None, "") else
                                 int(r[k]) if k in ("epoch", "iteration", "step") else float(r[k]))
                             for k in LOG_FIELDS})
        return rows

    def append(self, row: dict) -> None:
        for ext, f in self.files.items():
            if ext == "csv":
                csv.DictWriter(f, LOG_FIELDS).writerow(row)
            else:
                f.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
            f.flush()

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def plot_losses(log_path: Path, out: Path) -> None:
    """One panel per loss component against the global step (Agg, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = LossLog.read(log_path)
    names = [k for k in COMPONENTS + ("total",) if any(r[k] is not None for r in rows)]
    cols = 3
    fig = Figure(figsize=(4 * cols, 3 * math.ceil(len(names) / cols)), layout="constrained")
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(math.ceil(len(names) / cols), cols, i + 1)
        pts = [(r["step"], r[name]) for r in rows if r[name] is not None]
        ax.plot([s for s, _ in pts], [v for _, v in pts], lw=0.8)
        ax.set_title(name if name == "total" else f"{name} (weighted)")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# ----------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, args: argparse.Namespace, ctx: Context):
        self.args, self.ctx = args, ctx
        self.out = Path(args.snapshots_folder)
        state = None
        if args.resume is not None:
            state, state_path = load_state(args.resume, args.snapshots_folder)
            ctx.say(f"resuming from {state_path}: epoch {state['epoch']}, iteration {state['iteration']}, "
                    f"step {state['step']}")
            self._warn_changed(state["args"])
            if args.load_pretrain:
                ctx.say("note: --load_pretrain ignored: the resumed state has the weights")
        pretrained = self._read_pretrain() if state is None and args.load_pretrain else None
        self.seed = self._agree_on_seed(state)

        report = (lambda m: print(m, file=sys.stderr, flush=True)) if ctx.main else (lambda m: None)
        try:
            self.data = LowLightImages(args.lowlight_images_path, resize=args.resize or None,
                                       crop=args.crop or None, seed=self.seed, report=report)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None

        # Seeded before anything random is built: weight init and the semantic head's random init
        # are then the same in every process and again on --resume.
        torch.manual_seed(self.seed)
        np.random.seed(self.seed % 2**32)
        random.seed(self.seed)
        self.net = EnhanceNet(scale_factor=args.scale_factor, conv_type=args.conv_type).to(ctx.device)
        self.loss = SGZLoss(LossWeights(sem=args.semantic_weight), args.patch_size, args.exp_level,
                            self._semantic()).to(ctx.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        self.epoch, self.iteration, self.step = 0, 0, 0
        if state is not None:
            self._restore(state)
        elif pretrained is not None:
            self.net.load_state_dict(pretrained)
            ctx.say(f"starting from {args.pretrain_dir}")

        self.sampler = EpochSampler(self.data, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                    seed=self.seed)
        self.loader_gen = torch.Generator()
        self.loader = DataLoader(self.data, batch_size=args.train_batch_size, sampler=self.sampler,
                                 num_workers=args.num_workers, pin_memory=ctx.device.type == "cuda",
                                 generator=self.loader_gen, worker_init_fn=_seed_worker)
        self.per_rank = math.ceil(len(self.data) / ctx.world)  # DistributedSampler pads to this
        self.batches_per_epoch = math.ceil(self.per_rank / args.train_batch_size)
        self.model = self.net
        if ctx.world > 1:  # grads of the custom ops' parameters are allreduced by DDP's autograd hooks
            self.model = DistributedDataParallel(self.net, device_ids=[ctx.device.index]
                                                 if ctx.device.type == "cuda" else None)
        if ctx.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.log = LossLog(self.out, args.log_format, self.step if state is not None else None)

    def _agree_on_seed(self, state: dict | None) -> int:
        if state is not None:
            seed = state["seed"]
            if self.args.seed is not None and self.args.seed != seed:
                self.ctx.say(f"warning: --seed {self.args.seed} ignored: the resumed run's seed is {seed}")
            return seed
        if self.args.seed is not None:
            return self.args.seed
        seed = [random.SystemRandom().randrange(2**31)]
        if self.ctx.world > 1:  # every process must shuffle and initialise alike
            dist.broadcast_object_list(seed, src=0)
        self.ctx.say(f"seed {seed[0]} (pass --seed to choose it)")
        return seed[0]

    def _warn_changed(self, saved: dict) -> None:
        keys = ("lowlight_images_path", "train_batch_size", "resize", "crop", "scale_factor", "patch_size",
                "exp_level", "semantic_weight", "seg_weights", "num_of_SegClass", "lr", "weight_decay",
                "grad_clip_norm")
        changed = [f"--{k} {saved.get(k)} -> {getattr(self.args, k)}" for k in keys
                   if saved.get(k) != getattr(self.args, k)]
        if changed:
            self.ctx.say("warning: flags differ from the resumed run (the result will not match an "
                         "uninterrupted run): " + ", ".join(changed))

    def _semantic(self):
        args = self.args
        if args.semantic_weight == 0:
            self.ctx.say("semantic loss term is off (--semantic_weight 0): "
                         "training with tv, spa, col, exp only")
            return None
        from .semantic import SemanticLoss
        try:
            semantic = SemanticLoss(num_classes=args.num_of_SegClass, backbone_weights_path=args.seg_weights)
        except (RuntimeError, OSError, ValueError) as e:
            raise UsageError(f"semantic loss unavailable: {e}") from None
        self.ctx.say(f"semantic loss on (weight {args.semantic_weight}), backbone weights: {semantic.source}")
        return semantic

    def _read_pretrain(self) -> dict:
        """The --pretrain_dir weights, checked against --conv_type (before any net is built)."""
        path = self.args.pretrain_dir
        try:
            sd, conv_type, _ = read_checkpoint(path)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--pretrain_dir: {e}") from None
        if conv_type != self.args.conv_type:
            raise UsageError(f"--pretrain_dir: {path} holds a {conv_type!r} network but --conv_type is "
                             f"{self.args.conv_type!r}")
        expected = EnhanceNet(conv_type=conv_type).state_dict()
        if set(sd) != set(expected) or any(sd[k].shape != v.shape for k, v in expected.items()):
            raise UsageError(f"--pretrain_dir: {path}: weights do not fit EnhanceNet({conv_type!r})")
        return sd

    def _restore(self, state: dict) -> None:
        if state["conv_type"] != self.args.conv_type:
            raise UsageError(f"--resume: the run used --conv_type {state['conv_type']}, "
                             f"not {self.args.conv_type}")
        if state["world_size"] != self.ctx.world:
            self.ctx.say(f"warning: the run had {state['world_size']} process(es), now {self.ctx.world}: "
                         "the data order differs from an uninterrupted run")
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        for group in self.opt.param_groups:  # the command line wins over the saved hyper-parameters
            group["lr"], group["weight_decay"] = self.args.lr, self.args.weight_decay
        _set_rng_states(state["rng"], self.ctx.device)
        self.epoch, self.step = state["epoch"], state["step"]
        self.iteration = state["samples_done"] // self.args.train_batch_size

    # ------------------------------------------------------------------------- loop
    def train(self) -> None:
        args, ctx = self.args, self.ctx
        if self.epoch >= args.num_epochs or (args.max_iters and self.step >= args.max_iters):
            ctx.say(f"nothing to do: the run is at epoch {self.epoch}, step {self.step}")
            return
        from tqdm import tqdm
        while self.epoch < args.num_epochs:
            epoch, start = self.epoch, self.iteration
            self.sampler.set_epoch(epoch)
            self.sampler.skip = start * args.train_batch_size
            self.data.set_epoch(epoch)
            self.loader_gen.manual_seed(self.seed + 1_000_003 * epoch + 7919 * ctx.rank)  # worker seeds
            bar = tqdm(total=self.batches_per_epoch, initial=start, desc=f"Epoch{epoch}",
                       disable=not ctx.main, dynamic_ncols=True, file=sys.stderr)
            for it, images in enumerate(self.loader, start=start):
                losses = self._train_step(images.to(ctx.device, non_blocking=True))
                self.step += 1
                self.iteration = it + 1
                if ctx.main:
                    self.log.append({"epoch": epoch, "iteration": it + 1, "step": self.step, **losses})
                    bar.set_postfix(loss=f"{losses['total']:.4f}", refresh=False)
                    bar.update()
                    if (it + 1) % args.display_iter == 0:
                        bar.write(f"Loss at epoch {epoch} iteration {it + 1}: {losses['total']:.6f}")
                last = it + 1 == self.batches_per_epoch
                stop = args.max_iters is not None and self.step >= args.max_iters
                if last:  # the state then points at the start of the next epoch
                    self.epoch, self.iteration = epoch + 1, 0
                if (it + 1) % args.snapshot_iter == 0 or last or stop:
                    self._snapshot(epoch)
                if stop:
                    bar.close()
                    ctx.say(f"stopped at --max_iters {args.max_iters}")
                    return
            bar.close()
            self.epoch, self.iteration = epoch + 1, 0

    def _train_step(self, images: torch.Tensor) -> dict:
        enhanced, r = self.model(images)  # checks the images for NaN/Inf
        # the loss's inputs derive from the checked images and weights: the loss is checked below,
        # where it is read anyway, not each of its inputs with a host sync of its own
        with ops.no_finite_checks():
            total, parts = self.loss(enhanced, r, images)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.args.grad_clip_norm)
        self.opt.step()
        # Log the loss of the whole (all processes') batch.
        values = torch.stack([total.detach()] + [v.detach() for v in parts.values()])
        if self.ctx.world > 1:
            dist.all_reduce(values)
            values /= self.ctx.world
        values = values.tolist()
        row = dict.fromkeys(COMPONENTS)
        row.update(zip(parts, values[1:]))
        row["total"] = values[0]
        if not all(map(math.isfinite, values)):
            logged = {k: v for k, v in row.items() if v is not None}
            raise Diverged(f"the loss is not finite at step {self.step + 1} ({logged}): training diverged; "
                           "continue from the last snapshot with --resume and a lower --lr or --grad_clip_norm")
        return row

    def _snapshot(self, epoch: int) -> None:
        """Epoch{epoch}.pth, the full training state, then the `latest` pointer (each atomic)."""
        if not self.ctx.main:
            return
        weights = self.out / f"Epoch{epoch}.pth"
        save_checkpoint(self.net, weights, epoch=epoch, step=self.step)
        state = {"format": STATE_FORMAT, "version": 1, "conv_type": self.args.conv_type,
                 "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                 "optimizer": self.opt.state_dict(),
                 # where to continue: epoch, and samples of it already trained on by each process
                 "epoch": self.epoch, "iteration": self.iteration, "step": self.step,
                 "samples_done": self.iteration * self.args.train_batch_size,
                 # the sampler's generator is re-seeded with seed + epoch: these two restore it
                 "seed": self.seed, "sampler": {"seed": self.seed, "epoch": self.epoch},
                 "rng": _rng_states(self.ctx.device), "world_size": self.ctx.world,
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()}}
        name = f"train_state_Epoch{epoch}.pt"
        atomic_write(self.out / name, lambda tmp: torch.save(state, tmp))
        pointer = {"state": name, "weights": weights.name, "epoch": self.epoch,
                   "iteration": self.iteration, "step": self.step}
        atomic_write(self.out / "latest", lambda tmp: Path(tmp).write_text(json.dumps(pointer) + "\n"))

    def finish(self) -> None:
        if not self.ctx.main:
            return
        self.log.close()
        if not self.args.no_plot:
            source = self.log.paths.get("jsonl") or self.log.paths["csv"]
            plot_losses(source, self.out / "loss_curves.png")
        self.ctx.say(f"done: weights and logs in {self.out}")


def main(argv=None) -> int:
    ctx = trainer = None
    try:
        args = parse_args(argv)
        if not Path(args.lowlight_images_path).is_dir():  # before starting processes and nets
            raise UsageError(f"--lowlight_images_path: {args.lowlight_images_path}: folder not found")
        ctx = make_context(args.device)
        if ctx.world > 1:
            dist.init_process_group("nccl" if ctx.device.type == "cuda" else "gloo")
        trainer = Trainer(args, ctx)
        trainer.train()
        trainer.finish()
        if ctx.world > 1:  # no process tears down while another's collectives are in flight
            dist.barrier()
        return 0
    except UsageError as e:
        if ctx is None or ctx.main:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:  # every process sees the same (all-reduced) loss
        if ctx.main:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue from the last snapshot with --resume", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            # DDP's reducer holds the process group and is freed holding the GIL: were it the
            # group's last holder, gloo's destructor would join worker threads waiting for the GIL
            # to free a finished allreduce's tensors (a hang at exit, ~1 run in 10). Freed first,
            # the group goes in destroy_process_group, whose destructor lets go of the GIL.
            trainer = None
            gc.collect()
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
