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
  unsupported platform), warn once and use the eager kernels from then on.
* ``native``: like ``auto``, but failures raise instead of falling back.
* ``compile``: compiled (Inductor) everywhere, the native kernels unused; failures raise.
* ``eager``: the same math as plain PyTorch ops (no compiler needed; slower, same memory use).
* ``off``: no fused path at all; :class:`adact.AdAct` uses :func:`adact.adact_reference`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import types
import warnings
from collections.abc import Callable
from typing import Any

import torch

from adact.fused import native
from adact.fused.inductor import KernelFlags, kernel_backward, kernel_forward

__all__ = [
    "BACKENDS", "ENV_VAR", "FusedKernelKey", "fused_backend", "get_kernel", "native_for", "reset_kernels", "run_kernel",
]  # fmt: skip

ENV_VAR = "ADACT_FUSED"
BACKENDS: tuple[str, ...] = ("auto", "native", "compile", "eager", "off")

#: (direction "fwd"/"bwd", device type, input dtype, layout and terms)
FusedKernelKey = tuple[str, str, torch.dtype, KernelFlags]

_MATH: dict[str, Callable[..., Any]] = {"fwd": kernel_forward, "bwd": kernel_backward}
_compiled: dict[FusedKernelKey, Callable[..., Any]] = {}
_failed: set[FusedKernelKey] = set()
_ran: set[FusedKernelKey] = set()  # compiled kernels that ran once: later errors are not compile errors
_native_error: list[Exception] = []  # why the native kernels could not be built (auto mode remembers)
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
    flags = key[3]
    math = _MATH[key[0]]

    def kernel(*args: Any) -> Any:
        return math(*args, flags)

    return kernel


def native_for(key: FusedKernelKey) -> native.NativeKernels | None:
    """The native kernels if ``ADACT_FUSED`` and ``key`` call for them, else None.

    They serve float32 on CPU under ``auto`` and ``native``. Under ``auto`` a failed build warns
    once and returns None from then on (the caller uses :func:`run_kernel`); ``native`` raises.
    """
    backend = fused_backend()
    if backend not in ("auto", "native") or key[1] != "cpu" or key[2] != torch.float32:
        return None
    if _native_error and backend == "auto":
        return None
    try:
        return native.native_kernels()
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
    if backend == "eager" or key[2] == torch.float64 or (backend == "auto" and key in _failed):
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
        with _no_cuda_home_warning(str(key[1])):
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
