"""How every Triton kernel of sgllie is launched: one function, ``launch``, so that what the dispatch
really launches can be seen.

- Autotuned kernels (``autotune``) pick their config per shape on a GPU; under the interpreter
  (TRITON_INTERPRET=1, no GPU) there is nothing to time, so ``launch`` runs one config: the first.
  ``use_config`` forces one, on a GPU too (the tests check every config's numbers this way).
- ``dry_run()`` records the specialisations that would be launched (kernel, argument types,
  constexprs, warps, stages; every config of an autotuned kernel) without running anything: no
  GPU needed. Arguments are specialised as Triton's JIT does at launch: integers equal to 1 become
  constants, pointers aligned to 16 bytes and integers divisible by 16 are marked so. The
  ahead-of-time compile test drives the ops and the model through it and builds exactly these for
  sm_80 and sm_90, not a hand list that could drift from the launch sites.
- ``counting()`` counts the global-memory bytes each launch reads and writes (interpreter only).
- Triton's own launch path (``Autotuner.run`` then ``JITFunction.run``) costs 15-30 us of Python a
  launch on a 2-core Xeon, as much as the rest of an op's host work together or more
  (benchmarks/results/host_overhead.md, measured under kernels/_stub_driver.py). So a launch goes
  through it once per specialisation (Triton's own, plus the autotuner's key); the kernel it
  compiled (and, autotuned, the config it chose) is kept, and later launches with the same
  specialisation go straight to its launcher with the arguments ``CompiledKernel[grid]`` gives it
  (the same in Triton 3.3 to 3.9), through ``CompiledKernel[grid]`` itself only while a launch hook
  (a profiler's) wants Triton's launch metadata.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from dataclasses import dataclass

import torch
import triton
from triton.compiler import CompiledKernel
from triton.runtime import driver as _driver

from sgllie.ops import _backends


# Compile options of every launch, whatever the Triton: FP fusion (a * b + c as one FMA, one
# rounding) is what the kernels' instruction counts, register budgets and the AOT table were built
# with; Triton 3.9 warns that 3.10 will turn it off by default (more instructions, other roundings).
COMPILE_OPTIONS = {"enable_fp_fusion": True}


@dataclass(frozen=True)
class Specialisation:
    """One compiled variant of a kernel: what ``triton.compile`` needs to build it ahead of time."""
    kernel: triton.runtime.JITFunction
    signature: tuple[tuple[str, str], ...]     # (argument, Triton type) in order; constexprs typed "constexpr"
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int
    num_stages: int
    maxnreg: int | None = None  # a register cap for ptxas, where a config sets one
    aligned: tuple[str, ...] = ()  # arguments the JIT marks divisible by 16 (pointers: 16-byte aligned)

    @property
    def attrs(self) -> dict:
        """``ASTSource``'s attrs: the divisibility the JIT would give the aligned arguments."""
        return {(self.kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in self.aligned}

    @property
    def options(self) -> dict:
        """``triton.compile``'s options for this variant."""
        caps = {} if self.maxnreg is None else {"maxnreg": self.maxnreg}
        return {"num_warps": self.num_warps, "num_stages": self.num_stages} | COMPILE_OPTIONS | caps

    @property
    def name(self) -> str:
        return self.kernel.__name__

    def config_str(self) -> str:
        consts = ", ".join(f"{k}={v}" for k, v in self.constexprs)
        cap = "" if self.maxnreg is None else f", maxnreg={self.maxnreg}"
        aligned = f"; aligned {','.join(self.aligned)}" if self.aligned else ""
        return f"{consts}; warps={self.num_warps}, stages={self.num_stages}{cap}{aligned}"


# inside dry_run: the set the launches are recorded into, or _NOT_RECORDED; outside: None
_recorded: contextvars.ContextVar[set | frozenset | None] = contextvars.ContextVar("sgllie_triton_recorded",
                                                                                   default=None)
_NOT_RECORDED: frozenset = frozenset()
_forced_config: contextvars.ContextVar[int | None] = contextvars.ContextVar("sgllie_triton_config", default=None)
_through_triton: contextvars.ContextVar[bool] = contextvars.ContextVar("sgllie_through_triton", default=False)


@contextlib.contextmanager
def dry_run(record: bool = True):
    """Launch nothing inside the block; collect the Specialisation of every launch into the set
    it yields (with ``record=False`` the set stays empty: the host's own work per call is all that
    runs). Outputs stay uninitialised (set SGLLIE_CHECK_FINITE=0 when chaining ops)."""
    if _backends.triton_interpreting():
        raise RuntimeError("sgllie.kernels.dry_run: needs compiled kernels; unset TRITON_INTERPRET")
    seen: set[Specialisation] = set()
    token = _recorded.set(seen if record else _NOT_RECORDED)
    try:
        with _backends.triton_dry_run():
            yield seen
    finally:
        _recorded.reset(token)


@contextlib.contextmanager
def through_triton():
    """Every launch inside the block goes through Triton's own launch path, none straight to a kernel
    it compiled before (to compare the two: tests, benchmarks)."""
    token = _through_triton.set(True)
    try:
        yield
    finally:
        _through_triton.reset(token)


@contextlib.contextmanager
def use_config(index: int):
    """Run config ``index`` of each autotuned kernel (modulo its count) instead of tuning."""
    token = _forced_config.set(index)
    try:
        yield
    finally:
        _forced_config.reset(token)


def _constexpr_function(fn):
    """Triton < 3.5's stand-in for ``triton.constexpr_function``, as 3.5 defines it: called by the
    code generator (which passes _semantic, or _builder before 3.4) with constexpr arguments, fn's
    plain Python on their values, the result a constexpr; called from host code or the interpreter,
    plain Python. Marked a builtin: the one kind of plain function those code generators let a
    kernel call."""
    import triton.language as tl  # noqa: PLC0415

    def call(*args, _semantic=None, _builder=None, **kwargs):
        result = fn(*(getattr(a, "value", a) for a in args),
                    **{k: getattr(v, "value", v) for k, v in kwargs.items()})
        compiling = (_semantic is not None or _builder is not None) and not _backends.triton_interpreting()
        return tl.constexpr(result) if compiling else result

    call.fn, call.__name__, call.__doc__, call.__triton_builtin__ = fn, fn.__name__, fn.__doc__, True
    return call


# A Python function a kernel calls on its constexprs at compile time (Triton's own from 3.5 on).
constexpr_function = getattr(triton, "constexpr_function", _constexpr_function)


AUTOTUNED: list[triton.runtime.Autotuner] = []  # every autotuned kernel, for tests that try each config


# Host-side integer helpers. triton.cdiv and triton.next_power_of_2 are constexpr functions, ~2 us a
# call from host code (they unwrap every argument): a dozen in an op's launch path cost more than
# the rest of its Python.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


def smallest_dot_k() -> int:
    """The smallest K this Triton's tl.dot compiles for NVIDIA GPUs in float32 and float64: 8 in
    Triton 3.9, 16 in 3.6 (its interpreter accepts any, so this asks the compiler's own rule)."""
    import triton.language as tl  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.backends.nvidia.compiler import min_dot_size  # noqa: PLC0415

    rule = min_dot_size(GPUTarget("cuda", 90, 32))
    return max(rule(t, t)[2] for t in (tl.float32, tl.float64))


def _device_benchmark(kernel_call, quantiles):
    """The active driver's benchmarker, looked up when a config is timed (on a GPU), as Triton >= 3.4
    does by default: 3.3 looks it up when the Autotuner is built, which fails on import where there
    is no driver (no GPU: tests, dry runs)."""
    from triton.runtime import driver  # noqa: PLC0415

    return driver.active.get_benchmarker()(kernel_call, quantiles=quantiles)


def autotune(configs: list[triton.Config], key: list[str]):
    """``triton.autotune`` over ``configs``, re-tuned when the ``key`` arguments change."""
    def decorate(fn):
        tuned = triton.autotune(configs=configs, key=key, do_bench=_device_benchmark)(fn)
        AUTOTUNED.append(tuned)
        return tuned
    return decorate


@functools.cache
def _specialiser(specialise: bool, align: bool):
    """Triton's own specialisation of a launch argument, as its JIT computes it at each launch, for a
    parameter with these flags: value -> (Triton type or "constexpr", the value for a constant / "D"
    where divisible by 16 / ""). Its native function where there is one (Triton >= 3.6)."""
    from triton.backends.compiler import BaseBackend  # noqa: PLC0415
    from triton.runtime import jit  # noqa: PLC0415

    if hasattr(jit, "native_specialize_impl"):
        native = jit.native_specialize_impl
        return lambda value: native(BaseBackend, value, False, specialise, align)
    rule = BaseBackend.get_arg_specialization
    if jit.create_specialize_impl.__code__.co_argcount == 0:  # Triton 3.3: the rule goes with each call
        impl = jit.create_specialize_impl()
        return lambda value: impl(value, rule, False, specialise, align)
    impl = jit.create_specialize_impl(rule)  # Triton 3.4, 3.5
    return lambda value: impl(value, False, specialise, align)


def _specialise_as(param):
    """value -> the JIT's specialisation of ``param``'s argument (_specialiser)."""
    return _specialiser(not param.do_not_specialize, not param.do_not_specialize_on_alignment)


def _record(fn: triton.runtime.JITFunction, args: tuple, kwargs: dict, configs: list[triton.Config]) -> None:
    seen = _recorded.get()
    bound = dict(zip(fn.arg_names, args)) | kwargs
    for config in configs:
        values = bound | config.kwargs
        signature, constexprs, aligned = [], [], []
        for param in fn.params:
            kind, key = ("constexpr", values[param.name]) if param.is_constexpr else _specialise_as(param)(
                values[param.name])
            signature.append((param.name, kind))
            if kind == "constexpr":
                constexprs.append((param.name, key))
            elif key == "D":
                aligned.append(param.name)
        seen.add(Specialisation(fn, tuple(signature), tuple(constexprs), config.num_warps,
                                config.num_stages, config.maxnreg, tuple(aligned)))


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``: counted and, under the interpreter, with one config of an
    autotuned kernel; only recorded inside dry_run(). A callable grid reads the config's values
    only (``meta["BLOCK_W"]``; sizes from its closure): sgllie's path passes it those, not the
    arguments too, as Triton does (a dict of every argument costs ~1.5 us a launch)."""
    tuned = isinstance(kernel, triton.runtime.Autotuner)
    fn = kernel.fn if tuned else kernel
    if not tuned:  # Triton's defaults, explicit so that a dry run records what the JIT would build
        kwargs = {"num_warps": 4, "num_stages": 3} | kwargs
    kwargs = kwargs | COMPILE_OPTIONS
    recorded = _recorded.get()
    if recorded is not None:
        if recorded is not _NOT_RECORDED:
            _record(fn, args, kwargs, kernel.configs if tuned else [
                triton.Config({}, num_warps=kwargs["num_warps"], num_stages=kwargs["num_stages"])])
        return
    forced = _forced_config.get()
    if tuned and (forced is not None or _backends.triton_interpreting()):
        config = kernel.configs[(forced or 0) % len(kernel.configs)]
        kernel, tuned, kwargs = fn, False, kwargs | config.all_kwargs()
    if not _backends.triton_interpreting():
        _launch_compiled(kernel, tuned, fn, grid, args, kwargs)
        return
    from . import _counting  # noqa: PLC0415  (bytes are counted under the interpreter only)
    with _counting.launch_scope(fn.__name__, grid, args, kwargs):
        kernel[grid](*args, **kwargs)


class _Shortcut:
    """One kernel's way past Triton's launch path: its builds by specialisation (see the module's
    docstring). A launch's key is what its build depends on: the device, the keyword arguments, and
    per positional argument its exact value (a constexpr, or a key of the autotuner's choice), else
    what Triton's JIT specialises it on (_specialiser)."""

    def __init__(self, kernel, fn):
        self.kernel, self.fn = kernel, fn  # (the kernel kept: _shortcuts is keyed by its id)
        self.names = tuple(fn.arg_names)
        self.defaults = {p.name: p.default for p in fn.params if p.default is not inspect.Parameter.empty}
        self.compiled: dict[tuple, _Compiled] = {}
        self._keys: dict[int, object] = {}  # positional count -> its key function

    def keys(self, count: int):
        """args -> the positional arguments' keys, as one generated function (a loop over per-argument
        functions costs twice as much: ~1 us a launch of a dozen arguments)."""
        found = self._keys.get(count)
        if found is None:
            found = self._keys[count] = _key_function(self.kernel, self.fn.params[:count])
        return found


def _key_function(kernel, params):
    """``(*args) -> tuple`` of each argument's key (_Shortcut): Triton's native specialisation
    written out inline where this Triton has one (>= 3.6), else a call of _specialise_as's per
    argument."""
    from triton.backends.compiler import BaseBackend  # noqa: PLC0415
    from triton.runtime import jit  # noqa: PLC0415

    tuning = set(getattr(kernel, "keys", ()))
    native = getattr(jit, "native_specialize_impl", None)
    namespace, keys = {"native": native, "backend": BaseBackend}, []
    for j, param in enumerate(params):
        if param.is_constexpr or param.name in tuning:
            keys.append(f"a{j}")
        elif native is not None:
            keys.append(f"native(backend, a{j}, False, {not param.do_not_specialize}, "
                        f"{not param.do_not_specialize_on_alignment})")
        else:
            namespace[f"key{j}"] = _specialise_as(param)
            keys.append(f"key{j}(a{j})")
    arguments = ", ".join(f"a{j}" for j in range(len(params)))
    exec(f"def keys({arguments}):\n    return ({''.join(k + ', ' for k in keys)})", namespace)  # noqa: S102
    return namespace["keys"]


@dataclass(frozen=True)
class _Compiled:
    kernel: CompiledKernel
    meta: dict         # every parameter not passed positionally: the call's keywords, the chosen config's
    tail: tuple        # ... their values in the kernel's order, after the positional ones

    def __call__(self, grid: tuple, device: int, args: tuple) -> None:
        """What ``kernel[grid](*args, *tail)`` does, less its Python: where no launch hook is set (a
        profiler's), Triton's launcher is called directly, with no launch metadata and no hooks to
        call (Triton >= 3.6, whose hooks are never None but chains, otherwise builds the metadata and
        calls two empty hook chains a launch)."""
        enter, leave = _launch_hooks()
        if enter or leave:
            self.kernel[grid](*args, *self.tail)
            return
        k = self.kernel
        k.run(*grid, _driver.active.get_current_stream(device), k.function, k.packed_metadata, None, None, None,
              *args, *self.tail)


# where Triton keeps its launch hooks: knobs.runtime from Triton 3.4 on, CompiledKernel's attributes in 3.3
_HOOKS = getattr(getattr(triton, "knobs", None), "runtime", CompiledKernel)


def _launch_hooks() -> tuple:
    """Triton's launch hooks as they are now (a profiler may set them at any time): each None, a
    hook, or a hook chain's list of hooks (Triton >= 3.6: a chain, never None): false when none."""
    enter, leave = _HOOKS.launch_enter_hook, _HOOKS.launch_exit_hook
    return getattr(enter, "calls", enter), getattr(leave, "calls", leave)


_shortcuts: dict[int, _Shortcut] = {}  # id(kernel) -> its shortcut (a JITFunction's own hash is Python: ~0.3 us)


def _launch_compiled(kernel, tuned: bool, fn, grid, args: tuple, kwargs: dict) -> None:
    """``kernel[grid](*args, **kwargs)``, through Triton's launch path only the first time for a
    specialisation (see the module's docstring)."""
    shortcut = _shortcuts.get(id(kernel)) or _shortcuts.setdefault(id(kernel), _Shortcut(kernel, fn))
    device = _current_device()
    key = (device, *kwargs.items(), *shortcut.keys(len(args))(*args))
    found = None if _through_triton.get() else shortcut.compiled.get(key)
    if found is None:
        compiled = kernel[grid](*args, **kwargs)
        if isinstance(compiled, CompiledKernel) and not (tuned and _has_hooks(kernel)):
            meta = shortcut.defaults | kwargs | (kernel.best_config.kwargs if tuned else {})
            shortcut.compiled[key] = _Compiled(compiled, meta, tuple(meta[name] for name in shortcut.names[len(args):]))
        return
    if callable(grid):
        grid = grid(found.meta)
    found((*grid, 1, 1)[:3], device, args)


def _has_hooks(kernel) -> bool:
    """Whether an autotuned kernel runs Python around its launches (none of sgllie's does): those go
    through Triton's path every time."""
    return any(c.pre_hook is not None for c in kernel.configs) or bool(
        getattr(kernel, "reset_to_zero", None) or getattr(kernel, "restore_value", None))


def _current_device() -> int:
    return _driver.active.get_current_device()
