"""The Inductor-compiled elementwise kernels: one ``torch.compile`` per variant, failures remembered.

"Compiled" means ``torch.compile`` of :func:`adact.fused.inductor.kernel_forward` /
``kernel_backward`` (Inductor: C++/OpenMP on CPU, Triton on CUDA), or for pools outside the
paper's seven of :func:`adact.fused.generic.generic_forward` / ``generic_backward`` (variants
whose flags are :class:`~adact.fused.generic.GenericFlags`), with dynamic shapes, so every
layer and batch size of a model shares one kernel per variant (a
:class:`~adact.fused.keys.FusedKernelKey`). A variant compiles at its first call (a few seconds;
Inductor's on-disk cache makes later processes start fast), so compile errors surface there:
:func:`run` records them and raises :class:`~adact.fused.keys.BackendFailed`, and the variant is
not tried again until :func:`forget`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

from adact.fused.generic import GenericFlags, generic_backward, generic_forward
from adact.fused.inductor import kernel_backward, kernel_forward
from adact.fused.keys import BackendFailed, FusedKernelKey

__all__ = ["GENERIC_MATH", "MATH", "failure", "forget", "math_of", "run"]

#: The math of each direction (the eager backend calls it as is).
MATH: dict[str, Callable[..., Any]] = {"fwd": kernel_forward, "bwd": kernel_backward}
#: The same for the generic kernels (pools outside the paper's seven).
GENERIC_MATH: dict[str, Callable[..., Any]] = {"fwd": generic_forward, "bwd": generic_backward}
# Let the C++ compiler contract a*b+c into FMAs (polynomials, Horner steps): fewer instructions,
# and each contraction rounds once instead of twice.
_INDUCTOR_OPTIONS: dict[str, Any] = {"cpp.enable_floating_point_contract_flag": "fast"}
_compiled: dict[FusedKernelKey, Callable[..., Any]] = {}
_failures: dict[FusedKernelKey, Exception] = {}
_ran: set[FusedKernelKey] = set()  # variants that ran once: a later error is the input's, not the compiler's
_lock = threading.Lock()


def _own_code_copy(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    # Dynamo caches compiled graphs, and caps recompiles (8 by default), per code object. A
    # private copy of the code per variant gives each variant its own cache, so the many
    # (dtype, layout, terms) combinations never evict each other.
    code = fn.__code__.replace(co_name=name)
    if hasattr(code, "co_qualname"):
        code = code.replace(co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def math_of(key: FusedKernelKey) -> Callable[..., Any]:
    """The Python function a variant compiles: the paper's kernel or the generic one, in its direction."""
    return (GENERIC_MATH if isinstance(key.flags, GenericFlags) else MATH)[key.direction]


def _variant_name(key: FusedKernelKey) -> str:
    direction, device, dtype, flags = key
    if isinstance(flags, GenericFlags):
        granularity = "channel" if flags.channel else "layer"
        return f"adact_generic_{direction}_{device}_{str(dtype).split('.')[-1]}_{granularity}_{'_'.join(flags.candidates)}"
    terms = "_".join(name for name, on in flags._asdict().items() if on and name != "channel")
    granularity = "channel" if flags.channel else "layer"
    return f"adact_{direction}_{device}_{str(dtype).split('.')[-1]}_{granularity}_{terms}"


def _compile(key: FusedKernelKey) -> Callable[..., Any]:
    direction, _device, _dtype, flags = key
    math = _own_code_copy(math_of(key), _variant_name(key))
    compiled = torch.compile(math, fullgraph=True, options=_INDUCTOR_OPTIONS)
    n_data = 2 if direction == "bwd" else 1  # (grad,) x: the tensors shaped like the input

    def kernel(*args: Any) -> Any:
        # Every size is dynamic (one compile serves all layers and batch sizes) except a trailing
        # lane dim: kept static, the vectorized loop covers a row in one step, with no bounds logic.
        lane_dim = 1 if direction == "fwd" and flags.noisy else 0
        for t in args[:n_data]:
            torch._dynamo.maybe_mark_dynamic(t, list(range(t.dim() - lane_dim)))
        if flags.channel:
            torch._dynamo.maybe_mark_dynamic(args[n_data], 0)  # coef: (C, 7) or (N * C, 7); generic: K + 1 columns
        return compiled(*args, flags)

    return kernel


@contextlib.contextmanager
def _no_cuda_home_warning(device: str) -> Iterator[None]:
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


def run(key: FusedKernelKey, *args: torch.Tensor) -> Any:
    """Run the compiled kernel of ``key`` on ``args`` (see :mod:`adact.fused.inductor` for their layouts).

    Raises:
        BackendFailed: the variant failed to compile, now or earlier in this process (the
            compiler's error is the cause; :func:`failure` returns it).
    """
    if key in _ran:
        return _compiled[key](*args)
    earlier = _failures.get(key)
    if earlier is not None:
        raise BackendFailed(f"compiling {_variant_name(key)} failed earlier") from earlier
    with _lock:
        kernel = _compiled.get(key) or _compiled.setdefault(key, _compile(key))
    try:
        with _no_cuda_home_warning(key.device):
            out = kernel(*args)
    except Exception as err:  # noqa: BLE001 - whatever broke the compiler, the eager math still works
        with _lock:
            _failures[key] = err
            _compiled.pop(key, None)
        raise BackendFailed(f"compiling {_variant_name(key)} failed") from err
    _ran.add(key)
    return out


def failure(key: FusedKernelKey) -> Exception | None:
    """The error compiling ``key`` raised in this process, if it failed."""
    return _failures.get(key)


def forget() -> None:
    """Forget compiled kernels and past failures (e.g. after changing compiler settings)."""
    with _lock:
        _compiled.clear()
        _failures.clear()
        _ran.clear()
