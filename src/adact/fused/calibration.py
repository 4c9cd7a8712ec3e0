"""``ADACT_FUSED=auto``'s calibration: are the native kernels faster than Inductor's on this CPU?

The native kernels serve float32 on CPU under ``auto`` only where they are the faster: at first
use :func:`calibrate` times both, and its verdict is cached beside the native library, so later
processes read it instead of measuring (and compiling) again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from adact.activations import DEFAULT_CANDIDATES
from adact.fused import compiled, native
from adact.fused.inductor import kernel_flags, mixture_coefficients
from adact.fused.keys import FusedKernelKey

__all__ = ["Calibration", "calibrate", "forget"]

_CALIBRATION_ELEMENTS = 1 << 18  # 1 MB of float32: a few ms per pass, past the per-call overheads
_CALIBRATION_ROUNDS = 7


class Calibration(NamedTuple):
    """Native against Inductor on this CPU: best fwd+bwd milliseconds of a few calls, and the faster one."""

    native_ms: float
    compiled_ms: float | None  # None: the compiled kernels failed here
    winner: str  # "native" or "compile"
    elements: int  # the input size timed
    threads: int


_calibrations: dict[Path, Calibration] = {}  # per native library
_lock = threading.Lock()


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
    with _lock:
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

    lanes = torch.arange(16, dtype=torch.int32)  # the noisy forward's lane dim (see layout.flat_view)
    fwd, bwd = FusedKernelKey("fwd", "cpu", torch.float32, flags), FusedKernelKey("bwd", "cpu", torch.float32, flags)

    def run_compiled() -> object:
        coef = mixture_coefficients(logits, slope, names, True, torch.float32)
        compiled.run(fwd, x.view(-1, 16), coef, seed, lanes)
        return compiled.run(bwd, g, x, coef, seed)

    native_ms = _best_ms(run_native)
    compiled_ms: float | None
    try:
        compiled_ms = _best_ms(run_compiled)
    except Exception:  # noqa: BLE001 - whatever broke the compiler (compiled.run recorded it), native is the answer
        compiled_ms = None
    winner = "native" if compiled_ms is None or native_ms <= compiled_ms else "compile"
    return Calibration(native_ms, compiled_ms, winner, x.numel(), torch.get_num_threads())


def forget() -> None:
    """Forget the verdicts held in memory (the files stay: :func:`calibrate` with ``refresh`` replaces them)."""
    with _lock:
        _calibrations.clear()
