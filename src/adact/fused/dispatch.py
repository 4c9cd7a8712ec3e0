"""Choosing and caching the fused kernels: native, Inductor-compiled, or eager.

The kernels are :func:`adact.fused.inductor.kernel_forward` and :func:`~adact.fused.inductor.kernel_backward`.
For float32 on CPU they also exist hand-vectorised in C++ (:mod:`adact.fused.native`, about 1.5x
faster than Inductor's code; :func:`native_for`). Elsewhere "compiled" means ``torch.compile``
(Inductor: C++/OpenMP on CPU, Triton on CUDA) with dynamic shapes, so every layer and batch size
of a model shares one kernel per variant. A variant is (direction, device type, input dtype,
:class:`~adact.fused.inductor.KernelFlags`), compiled at its first use (a few seconds each;
Inductor's on-disk cache makes later processes start fast). float64 always runs eagerly: it exists for checking, and the eager math is the same code.

The environment variable ``ADACT_FUSED`` selects the path, read at each call:

* ``auto`` (default): native for float32 on CPU, compiled otherwise; if building the native
  kernels fails, use the compiled ones; if compiling fails (no C++ compiler, no Triton,
  unsupported platform), warn once and use the eager kernels from then on. The native kernels
  are used only where they are the faster: at first use a calibration (:func:`calibrate`) times
  both on this CPU, and its verdict is cached beside the native library.
* ``native``: like ``auto``, but failures raise instead of falling back.
* ``compile``: compiled (Inductor) everywhere, the native kernels unused; failures raise.
* ``eager``: the same math as plain PyTorch ops (no compiler needed; slower, same memory use).
* ``off``: no fused path at all; :class:`adact.AdAct` uses :func:`adact.adact_reference`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from adact.activations import DEFAULT_CANDIDATES
from adact.fused import native
from adact.fused.inductor import KernelFlags, kernel_backward, kernel_flags, kernel_forward, mixture_coefficients

__all__ = [
    "BACKENDS", "ENV_VAR", "Calibration", "FusedKernelKey", "calibrate", "explain", "fused_backend", "get_kernel",
    "native_for", "reset_kernels", "run_kernel",
]  # fmt: skip

ENV_VAR = "ADACT_FUSED"
BACKENDS: tuple[str, ...] = ("auto", "native", "compile", "eager", "off")



class FusedKernelKey(NamedTuple):
    """One kernel variant: what it computes and for which inputs."""

    direction: str  # "fwd" or "bwd"
    device: str  # device type: "cpu", "cuda"
    dtype: torch.dtype  # input dtype
    flags: KernelFlags  # layout and terms


class Calibration(NamedTuple):
    """Native against Inductor on this CPU: best fwd+bwd milliseconds of a few calls, and the faster one."""

    native_ms: float
    compiled_ms: float | None  # None: the compiled kernels failed here
    winner: str  # "native" or "compile"
    elements: int  # the input size timed
    threads: int


_MATH: dict[str, Callable[..., Any]] = {"fwd": kernel_forward, "bwd": kernel_backward}
_compiled: dict[FusedKernelKey, Callable[..., Any]] = {}
_failed: set[FusedKernelKey] = set()
_ran: set[FusedKernelKey] = set()  # compiled kernels that ran once: later errors are not compile errors
_native_error: list[Exception] = []  # why the native kernels could not be built (auto mode remembers)
_calibrations: dict[Path, Calibration] = {}  # per native library
_calibration_lock = threading.Lock()  # not _lock: calibrating compiles kernels, which takes _lock
_lock = threading.Lock()
# Let the C++ compiler contract a*b+c into FMAs (polynomials, Horner steps): fewer instructions,
# and each contraction rounds once instead of twice.
_INDUCTOR_OPTIONS: dict[str, Any] = {"cpp.enable_floating_point_contract_flag": "fast"}


def fused_backend() -> str:
    """The backend ``ADACT_FUSED`` selects (``"auto"`` when unset)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def reset_kernels() -> None:
    """Forget compiled kernels and past compile failures (e.g. after changing compiler settings)."""
    with _lock:
        _compiled.clear()
        _failed.clear()
        _ran.clear()
        _native_error.clear()
        _calibrations.clear()


def _own_code_copy(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    # Dynamo caches compiled graphs, and caps recompiles (8 by default), per code object. A
    # private copy of the code per variant gives each variant its own cache, so the many
    # (dtype, layout, terms) combinations never evict each other.
    code = fn.__code__.replace(co_name=name)
    if hasattr(code, "co_qualname"):
        code = code.replace(co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _variant_name(key: FusedKernelKey) -> str:
    direction, device, dtype, flags = key
    terms = "_".join(name for name, on in flags._asdict().items() if on and name != "channel")
    granularity = "channel" if flags.channel else "layer"
    return f"adact_{direction}_{device}_{str(dtype).split('.')[-1]}_{granularity}_{terms}"


def _compile(key: FusedKernelKey) -> Callable[..., Any]:
    direction, _device, _dtype, flags = key
    math = _own_code_copy(_MATH[direction], _variant_name(key))
    compiled = torch.compile(math, fullgraph=True, options=_INDUCTOR_OPTIONS)
    n_data = 2 if direction == "bwd" else 1  # (grad,) x: the tensors shaped like the input

    def kernel(*args: Any) -> Any:
        # Every size is dynamic (one compile serves all layers and batch sizes) except a trailing
        # lane dim: kept static, the vectorized loop covers a row in one step, with no bounds logic.
        lane_dim = 1 if direction == "fwd" and flags.noisy else 0
        for t in args[:n_data]:
            torch._dynamo.maybe_mark_dynamic(t, list(range(t.dim() - lane_dim)))
        if flags.channel:
            torch._dynamo.maybe_mark_dynamic(args[n_data], 0)  # coef: (C, 7) or (N * C, 7)
        return compiled(*args, flags)

    return kernel


def _eager(key: FusedKernelKey) -> Callable[..., Any]:
    flags = key.flags
    math = _MATH[key.direction]

    def kernel(*args: Any) -> Any:
        return math(*args, flags)

    return kernel


def native_for(key: FusedKernelKey) -> native.NativeKernels | None:
    """The native kernels if ``ADACT_FUSED`` and ``key`` call for them, else None.

    They serve float32 on CPU under ``auto`` and ``native``. Under ``auto`` a failed build warns
    once and returns None from then on (the caller uses :func:`run_kernel`); ``native`` raises.
    """
    backend = fused_backend()
    if backend not in ("auto", "native") or key.device != "cpu" or key.dtype != torch.float32:
        return None
    if _native_error and backend == "auto":
        return None
    try:
        kernels = native.native_kernels()
        if backend == "auto" and calibrate(kernels).winner != "native":
            return None
        return kernels
    except native.NativeBuildError as err:
        if backend != "auto":
            raise
        with _lock:
            _native_error.append(err)
        warnings.warn(
            f"adact: {err}\nUsing the Inductor-compiled fused kernels instead (same results, slower).",
            RuntimeWarning,
            stacklevel=5,
        )
        return None


def get_kernel(key: FusedKernelKey) -> tuple[Callable[..., Any], bool]:
    """The kernel for ``key`` and whether it is compiled; call it as ``kernel(*tensors)``.

    Compiled kernels compile lazily at their first call, so compile errors surface there;
    :func:`run_kernel` handles them. (The native kernels are not among these: see :func:`native_for`.)
    """
    backend = fused_backend()
    if backend == "eager" or key.dtype == torch.float64 or (backend == "auto" and key in _failed):
        return _eager(key), False
    kernel = _compiled.get(key)
    if kernel is None:
        with _lock:
            kernel = _compiled.setdefault(key, _compile(key))
    return kernel, True


@contextlib.contextmanager
def _no_cuda_home_warning(device: str) -> Any:
    # Inductor's first compile imports torch.utils.cpp_extension, which warns "No CUDA runtime is
    # found" on every CPU-only machine: irrelevant to a CPU kernel, and repeated by every worker.
    log = logging.getLogger("torch.utils.cpp_extension")
    old = log.level
    if device == "cpu":
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


def run_kernel(key: FusedKernelKey, *args: torch.Tensor) -> Any:
    """Run the kernel for ``key``; in ``auto`` mode a compile failing at first use falls back to eager."""
    kernel, compiled = get_kernel(key)
    if not compiled or key in _ran:
        return kernel(*args)
    try:
        with _no_cuda_home_warning(key.device):
            out = kernel(*args)
    except Exception as err:  # noqa: BLE001 - whatever broke the compiler, the eager math still works
        if fused_backend() != "auto":
            raise
        with _lock:
            _failed.add(key)
            _compiled.pop(key, None)
        warnings.warn(
            f"adact: compiling the fused AdAct kernel failed ({type(err).__name__}: {err}); using the "
            f"eager fused kernel instead (same results, slower). Set {ENV_VAR}=eager to skip the attempt.",
            RuntimeWarning,
            stacklevel=2,
        )
        return _eager(key)(*args)
    _ran.add(key)
    return out


# --- auto's calibration: is the native build faster than Inductor's on this CPU? -----------------

_CALIBRATION_ELEMENTS = 1 << 18  # 1 MB of float32: a few ms per pass, past the per-call overheads
_CALIBRATION_ROUNDS = 7


def _best_ms(fn: Callable[[], object]) -> float:
    """The fastest of a few timed calls: what the CPU can do, least disturbed by other load."""
    fn()  # warm-up (the compiled kernels compile here)
    times = []
    for _ in range(_CALIBRATION_ROUNDS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def _calibration_file(kernels: native.NativeKernels) -> Path:
    return kernels.path.with_name(kernels.path.stem + f".calibration-{torch.__version__}.json")


def calibrate(kernels: native.NativeKernels, refresh: bool = False) -> Calibration:
    """Time the native kernels against the Inductor-compiled ones, once per library and torch version.

    The paper's pool in training mode (the most common and the most expensive variant), one
    mixture per unit, forward and backward over :data:`_CALIBRATION_ELEMENTS` float32 elements
    at the current thread count. The verdict goes to a JSON file beside the native library, so
    later processes read it instead of measuring (and compiling) again.

    Args:
        kernels: the native kernels to judge.
        refresh: measure again even if a verdict is cached.
    """
    with _calibration_lock:
        cached = None if refresh else _calibrations.get(kernels.path)
        if cached is not None:
            return cached
        path = _calibration_file(kernels)
        if not refresh:
            try:
                cached = Calibration(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                cached = None
        if cached is None:
            cached = _measure(kernels)
            try:
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(cached._asdict(), indent=1))
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only cache: measured again by the next process, no harm
        _calibrations[kernels.path] = cached
        return cached


def _measure(kernels: native.NativeKernels) -> Calibration:
    names = DEFAULT_CANDIDATES
    flags = kernel_flags(names, True, False)
    x = torch.randn(_CALIBRATION_ELEMENTS)
    g = torch.randn_like(x)
    logits, slope = torch.zeros(len(names)), torch.full((1,), 0.25)
    seed = torch.tensor(12345, dtype=torch.int32)

    def run_native() -> object:
        kernels.forward(x, logits, slope, seed, names, flags)
        return kernels.backward(g, x, logits, slope, seed, names, flags)

    lanes = torch.arange(16, dtype=torch.int32)  # the noisy forward's lane dim (see autograd._flat_view)
    fwd, bwd = FusedKernelKey("fwd", "cpu", torch.float32, flags), FusedKernelKey("bwd", "cpu", torch.float32, flags)

    def run_compiled() -> object:
        coef = mixture_coefficients(logits, slope, names, True, torch.float32)
        run_kernel(fwd, x.view(-1, 16), coef, seed, lanes)
        return run_kernel(bwd, g, x, coef, seed)

    native_ms = _best_ms(run_native)
    compiled_ms: float | None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a failed compile: judged below instead
            if fwd in _failed or bwd in _failed:
                raise RuntimeError("the compiled kernels failed")
            compiled_ms = _best_ms(run_compiled)
            if fwd in _failed or bwd in _failed:
                raise RuntimeError("the compiled kernels failed")
    except Exception:  # noqa: BLE001 - whatever broke the compiler, native is the answer
        compiled_ms = None
    winner = "native" if compiled_ms is None or native_ms <= compiled_ms else "compile"
    return Calibration(native_ms, compiled_ms, winner, x.numel(), torch.get_num_threads())


def explain(device: str | torch.device, dtype: torch.dtype) -> tuple[str, str]:
    """The backend AdAct's fused path takes for inputs on ``device`` of ``dtype``, and why.

    Returns ``(backend, reason)``, the backend one of ``"native"``, ``"compile"``, ``"eager"``,
    ``"reference"`` (no fused path) or ``"error"`` (a forced backend that cannot run here). On a
    float32 CPU input under ``auto`` this builds the native kernels and calibrates them if that
    has not happened yet.
    """
    device = torch.device(device).type
    backend = fused_backend()
    if backend == "off":
        return "reference", f"{ENV_VAR}=off"
    if backend == "eager":
        return "eager", f"{ENV_VAR}=eager"
    if dtype == torch.float64:
        return "eager", "float64 runs the eager kernels (they exist for checking)"
    if device == "cpu" and dtype == torch.float32 and backend in ("auto", "native"):
        try:
            kernels = native.native_kernels()
        except native.NativeBuildError as err:
            first = str(err).splitlines()[0]
            if backend == "native":
                return "error", f"{ENV_VAR}=native but the build failed: {first}"
            return "compile", f"the native build failed: {first}"
        if backend == "native":
            return "native", f"{ENV_VAR}=native"
        cal = calibrate(kernels)
        timing = f"native {cal.native_ms:.2f} ms vs Inductor " + (
            "failed" if cal.compiled_ms is None else f"{cal.compiled_ms:.2f} ms"
        )
        if cal.winner == "native":
            return "native", f"calibrated faster ({timing})"
        return "compile", f"calibrated: Inductor is faster here ({timing})"
    reason = f"{ENV_VAR}=compile" if backend == "compile" else f"Inductor ({'Triton' if device == 'cuda' else 'C++'})"
    if backend == "auto" and any(k.device == device and k.dtype == dtype for k in _failed):
        return "eager", "compiling failed earlier in this process"
    return "compile", reason
