"""pytest-benchmark harness for sgllie: device, timing, quick mode, and the results files.

    pytest benchmarks/                 full sizes; writes benchmarks/results/<device>.json and .md
    pytest benchmarks/ --bench-quick   tiny shapes, 2 rounds, no results files (CI: "does it run")
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

import sgllie
import sgllie.ops

from . import _common
from ._common import DEVICE

RESULTS_DIR = Path(__file__).parent / "results"
_RESULTS = pytest.StashKey[list]()


def pytest_addoption(parser):
    group = parser.getgroup("sgllie benchmarks")
    group.addoption("--bench-quick", action="store_true", default=False,
                    help="tiny shapes and few rounds so the suite runs in well under a minute; "
                         "writes no results files (also: SGLLIE_BENCH_QUICK=1)")
    group.addoption("--bench-compile-backend", default=None,
                    help="torch.compile backend of the compile rows (default: inductor; "
                         "aot_eager under --bench-quick)")


def pytest_configure(config):
    # Every row in IEEE float32, as sgllie's kernels compute: cuDNN's TF32 convolutions (PyTorch's
    # default) would make eager both faster and 1e-3 off.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if config.getoption("--bench-quick", default=False):
        _common.SETTINGS["quick"] = True
    _common.SETTINGS["compile_backend"] = config.getoption("--bench-compile-backend", default=None)
    config.stash[_RESULTS] = []


@pytest.fixture(autouse=True)
def _bench_environment(monkeypatch):
    """Per benchmark (so that tests/ collected in the same session keep their own settings)."""
    # The ops' NaN/Inf input check (one reduction and a host sync per input tensor) is a debugging
    # aid, not part of the kernels' time: it is off while benchmarking.
    monkeypatch.setenv("SGLLIE_CHECK_FINITE", "0")
    threads = torch.get_num_threads()
    if _common.quick() and "OMP_NUM_THREADS" not in os.environ:
        # Quick runs only check that everything runs. On a busy machine, multi-threaded ops stall
        # at OpenMP barriers (~30 ms a call for a tiny depthwise conv on 2 shared cores); one thread
        # keeps a quick run short whatever else the machine is doing.
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- timing
def _cpu_rounds(call_s: float, heavy: bool) -> int:
    """About two seconds of rounds (10 to 200; at least 5 for heavy rows): a millisecond op gets
    enough rounds for a stable median on a small machine whose timings swing with its neighbours."""
    return max(5 if heavy else 10, min(200, int(2.0 / max(call_s, 1e-6))))


class Timer:
    """``timer(fn, group=..., variant=...)`` times ``fn()`` and records the row.

    ``fn`` is first called ``warmup`` times outside the timed region (torch.compile compiles on the
    first call: tens of seconds of C++ on a CPU; CUDA graphs record on the first calls), then timed
    for ``rounds`` rounds of one call each with pytest-benchmark's ``pedantic``.
    On CUDA each round is synchronised before it starts and timed with torch.cuda.Event (GPU time of
    the work the call enqueued, launch gaps included); pytest-benchmark's own wall-clock figures
    include the final synchronisation. On CPU it is plain wall time (time.perf_counter).
    The median of these per-round times is what the results files report.
    """

    def __init__(self, benchmark, config, device: torch.device):
        self.benchmark = benchmark
        self.config = config
        self.device = device

    def __call__(self, fn, *, group: str, variant: str, heavy: bool = False,
                 rounds: int | None = None, warmup: int | None = None) -> float:
        cuda = self.device.type == "cuda"
        if warmup is None:  # reduce-overhead: warm-up call, CUDA-graph record, first replay
            warmup = 1 if _common.quick() else (3 if cuda else (1 if heavy else 2))
        for _ in range(warmup):
            t0 = time.perf_counter()
            fn()
            last_call_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.synchronize(self.device)
        if rounds is None:
            rounds = 2 if _common.quick() else (30 if cuda else _cpu_rounds(last_call_s, heavy))

        times_ms: list[float] = []
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

            def timed():
                torch.cuda.synchronize(self.device)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times_ms.append(start.elapsed_time(end))
        else:
            def timed():
                t0 = time.perf_counter()
                fn()
                times_ms.append((time.perf_counter() - t0) * 1e3)

        self.benchmark.group = group
        self.benchmark.extra_info.update(variant=variant, timing="cuda-event" if cuda else "wall")
        self.benchmark.pedantic(timed, rounds=rounds, warmup_rounds=0, iterations=1)
        median = statistics.median(times_ms)
        self.benchmark.extra_info["median_ms"] = median
        if not self.benchmark.disabled:
            self.config.stash[_RESULTS].append(
                {"group": group, "variant": variant, "median_ms": median, "rounds": len(times_ms),
                 "min_ms": min(times_ms), "max_ms": max(times_ms)})
        return median


@pytest.fixture
def timer(benchmark, request, device) -> Timer:
    return Timer(benchmark, request.config, device)


# ----------------------------------------------------------------------------- results files
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def machine() -> dict:
    """What ran the benchmarks, and a filesystem-safe name for it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": _cpu_model(), "cores": cores, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "sgllie": sgllie.__version__,
            "backends": sgllie.ops.available_backends(), "compile_backend": _common.compile_backend()}
    if DEVICE.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(DEVICE)
        info["cuda"] = torch.version.cuda
        info["device_name"] = "cuda-" + _slug(info["gpu"])
        info["description"] = f"{info['gpu']}, CUDA {info['cuda']}, torch {info['torch']} (host: {info['cpu']})"
    else:
        info["device_name"] = f"cpu-{_slug(info['cpu'])}-{cores}c"
        info["description"] = (f"{info['cpu']}, {cores} cores ({info['torch_threads']} torch threads), "
                               f"torch {info['torch']}")
    return info


def _with_ratios(rows: list[dict]) -> list[dict]:
    eager = {r["group"]: r["median_ms"] for r in rows if r["variant"] == "eager"}
    for r in rows:
        base = eager.get(r["group"])
        r["speedup_vs_eager"] = base / r["median_ms"] if base and r["median_ms"] > 0 else None
    return rows


def _markdown(info: dict, rows: list[dict]) -> str:
    timing = "torch.cuda.Event, per call" if DEVICE.type == "cuda" else "wall clock, per call"
    out = [f"# sgllie benchmarks: {info['device_name']}", "",
           f"- Machine: {info['description']}",
           f"- sgllie {info['sgllie']}, Python {info['python']}, backends available: "
           f"{', '.join(info['backends'])}; torch.compile backend: {info['compile_backend']}",
           f"- Timing: median of the rounds ({timing}), after warm-up; NaN input checks off",
           f"- Last run: {info['date']} (rows not redone by it keep their own date in the .json)",
           "- Speed-up vs eager = eager median / this median, within the group (> 1: faster than eager)",
           "", "| group | variant | median ms | speed-up vs eager |", "|---|---|---:|---:|"]
    for r in rows:
        ratio = "" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x"
        out.append(f"| {r['group']} | {r['variant']} | {r['median_ms']:.3f} | {ratio} |")
    return "\n".join(out) + "\n"


def _merge(old: list[dict], new: list[dict]) -> list[dict]:
    """The new rows, plus the rows of an earlier run on this machine that this run did not redo
    (so ``pytest benchmarks/test_model.py`` updates its rows without dropping the others)."""
    redone = {(r["group"], r["variant"]) for r in new}
    rows = [r for r in old if (r["group"], r["variant"]) not in redone] + new
    first = {}
    for r in old + new:
        first.setdefault(r["group"], len(first))
    return sorted(rows, key=lambda r: first[r["group"]])  # stable: run order within a group


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if _common.quick() or hasattr(config, "workerinput"):  # quick: no results; xdist: workers don't write
        return
    rows = config.stash.get(_RESULTS, [])
    if not rows:
        return
    info = machine()
    info["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for r in rows:
        r["date"] = info["date"]
    RESULTS_DIR.mkdir(exist_ok=True)
    base = RESULTS_DIR / info["device_name"]
    json_path, md_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".md")
    old = []
    if json_path.exists():
        try:
            old = json.loads(json_path.read_text())["results"]
        except (ValueError, KeyError, TypeError):
            old = []
    rows = _with_ratios(_merge(old, rows))
    json_path.write_text(json.dumps({"machine": info, "results": rows}, indent=2) + "\n")
    md_path.write_text(_markdown(info, rows))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"sgllie benchmarks: wrote {json_path} and {md_path}")
