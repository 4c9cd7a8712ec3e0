"""Which fused AdAct backend runs a call, and why: one decision per key, cached.

The backends (:mod:`adact.fused.backends`), best first: **native** (hand-vectorised C++, float32
on CPU, about 1.5x faster than Inductor's code), **compile** (``torch.compile``/Inductor: C++ on
CPU, Triton on CUDA), **eager** (the same math as plain PyTorch ops), for the paper's pools;
**generic-compile** and **generic-eager** (:mod:`adact.fused.generic`, compiled or not) for any
other pool of the candidates they know; and **reference** (:func:`adact.adact_reference`, no
fused path: unknown candidates, training-mode RReLU outside the paper's pools, shapes that fit
no layout). :func:`choose` asks each in turn whether it takes
a :class:`~adact.fused.keys.DispatchKey` and keeps the first that does, with why it was chosen
and why each better one was passed over. Decisions are cached per key, and the key includes the
environment snapshot (:func:`~adact.fused.keys.current_env`), so a call pays one dict lookup
and a changed environment variable takes effect at the next call. :func:`explain` and
``adact info`` report the same decisions.

The environment variable ``ADACT_FUSED`` selects the path:

* ``auto`` (default): native for float32 on CPU, compiled otherwise; if building the native
  kernels fails, use the compiled ones; if compiling fails (no C++ compiler, no Triton,
  unsupported platform), warn once and use the eager kernels from then on. The native kernels
  are used only where they are the faster: at first use a calibration
  (:func:`adact.fused.calibration.calibrate`) times both on this CPU, and its verdict is cached
  beside the native library.
* ``native``: like ``auto``, but failures raise instead of falling back, and no calibration.
* ``compile``: compiled (Inductor) everywhere, the native kernels unused; failures raise.
* ``eager``: the same math as plain PyTorch ops (no compiler needed; slower, same memory use).

A pool outside the paper's seven takes the same road with the generic kernels: compiled under
``auto``, ``native`` and ``compile`` (falling back to their eager form under ``auto`` only),
eager under ``eager``.
* ``off``: no fused path at all; :class:`adact.AdAct` uses :func:`adact.adact_reference`.

float64 always runs the eager kernels: it exists for checking, and the eager math is the same code.

A failure (a native build at the first decision, a compile at a kernel's first call) is
remembered by its backend, which declines from then on; the cached decisions are dropped and
made again, so later calls and :func:`explain` agree with what runs.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor

from adact.activations import DEFAULT_CANDIDATES
from adact.config import GRANULARITIES
from adact.errors import UserError
from adact.fused.backends import EAGER, GENERIC_EAGER, ORDER, Backend, DirectCall, FusedBackend, forget
from adact.fused.keys import (
    BACKENDS,
    ENV_VAR,
    BackendFailed,
    DispatchKey,
    FusedKernelKey,
    current_env,
)

__all__ = [
    "BACKENDS", "ENV_VAR", "Choice", "DispatchKey", "FusedKernelKey", "Rejection", "backward", "choose", "epoch", "explain",
    "forward", "fused_backend", "reset_kernels",
]  # fmt: skip

_T = TypeVar("_T")


class Rejection(NamedTuple):
    """A backend :func:`choose` passed over, and why."""

    backend: str
    reason: str
    covered: bool  # the input was in its scope: it declined (settings, failure, calibration)


class Choice(NamedTuple):
    """What :func:`choose` decided for a key."""

    backend: Backend  # what runs
    reason: str  # why
    rejected: tuple[Rejection, ...]  # the better backends, best first
    error: Exception | None = None  # ADACT_FUSED=native|compile and ``backend`` failed: running raises this
    direct: DirectCall | None = None  # the backend's torch op for the key, if it has one (see Backend.direct)


_choices: dict[DispatchKey, Choice] = {}
# Counts the times _choices was emptied: a copy of a decision held elsewhere (a unit's cached
# direct call, see adact.fused.call_state) is valid only while this has not moved.
_epoch = [0]
_warned: set[int] = set()  # ids of the failures already warned about (each once, whatever the key)
_lock = threading.Lock()


def fused_backend() -> str:
    """The backend ``ADACT_FUSED`` selects (``"auto"`` when unset)."""
    return current_env().fused


def reset_kernels() -> None:
    """Forget compiled kernels, native builds, calibrations, past failures and every cached decision."""
    with _lock:
        forget()
        _drop_decisions()
        _warned.clear()


def _drop_decisions() -> None:
    _choices.clear()
    _epoch[0] += 1


def epoch() -> int:
    """A number that changes whenever the cached decisions are dropped (a reset, a backend failure)."""
    return _epoch[0]


def choose(key: DispatchKey) -> Choice:
    """The backend that runs calls with ``key``, and why (decided at the first call per key, then cached).

    The first decision may build the native kernels and, under ``auto``, calibrate them (seconds,
    once per machine). Under ``auto`` a failure is warned about once and the next backend chosen;
    under ``native`` and ``compile`` the :class:`Choice` carries it as ``error`` instead.
    """
    choice = _choices.get(key)
    if choice is None:
        with _lock:
            choice = _choices.get(key)
            if choice is None:
                choice = _choices[key] = _decide(key)
    return choice


def _decide(key: DispatchKey) -> Choice:
    rejected: list[Rejection] = []
    failed: list[tuple[Backend, Exception]] = []
    for backend in ORDER:
        why = backend.why_not(key)
        if why is None:
            break
        covered = backend.scope(key) is None
        failure = backend.failure(key) if covered and key.env.fused in backend.modes else None
        if failure is not None and key.env.fused != "auto":
            return Choice(backend, f"{ENV_VAR}={key.env.fused} but {why}", tuple(rejected), failure)
        rejected.append(Rejection(backend.name, why, covered))
        if failure is not None:
            failed.append((backend, failure))
    # The nearest better backend that could have taken the input says why it did not (the
    # setting, a failure, the calibration); if none could, the chosen one says why it is chosen.
    reason = next((r.reason for r in reversed(rejected) if r.covered), None) or backend.describe(key)
    for loser, err in failed:
        if id(err) not in _warned:
            _warned.add(id(err))
            warnings.warn(
                f"adact: {loser.title} failed ({type(err).__name__}: {err})\nUsing {backend.title} instead "
                f"(same results, slower). Set {ENV_VAR}={backend.name} to skip the attempt.",
                RuntimeWarning,
                stacklevel=2,
            )
    return Choice(backend, reason, tuple(rejected), direct=backend.direct(key))


def _run(key: DispatchKey, call: Callable[[FusedBackend], _T]) -> _T:
    for _ in ORDER:  # each failure rules out one more backend
        choice = choose(key)
        if choice.error is not None:
            raise choice.error
        backend = choice.backend
        if not isinstance(backend, FusedBackend):
            # Inside the fused op on a key the reference takes (a graph traced before
            # ADACT_FUSED=off was set): the reference cannot replay the seed's RReLU noise.
            # The eager kernels that cover the key run it (the paper's, or else the generic ones).
            why = EAGER.scope(key)
            if why is not None and GENERIC_EAGER.scope(key) is None:
                why, backend = None, GENERIC_EAGER
            else:
                backend = EAGER
            if why is not None:
                raise UserError(f"the fused AdAct kernels cannot take this call: {why}")
        try:
            return call(backend)
        except BackendFailed:
            with _lock:  # the backend recorded its failure: every key is decided again
                _drop_decisions()
    raise AssertionError("unreachable: the eager kernels never fail to build")


def forward(key: DispatchKey, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor) -> tuple[Tensor, Tensor]:
    """``(y, coef)`` from the backend :func:`choose` picks for ``key`` (no autograd; ``x`` not empty)."""
    return _run(key, lambda backend: backend.forward(key, x, logits, prelu_weight, seed))


def backward(
    key: DispatchKey, grad: Tensor, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor, coef: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``x``, ``logits`` and ``prelu_weight`` from the backend :func:`choose` picks."""
    return _run(key, lambda backend: backend.backward(key, grad, x, logits, prelu_weight, seed, coef))


def explain(
    device: str | torch.device,
    dtype: torch.dtype,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    granularity: str = "layer",
    training: bool = True,
    param_dtype: torch.dtype = torch.float32,
) -> tuple[str, str]:
    """The backend AdAct's fused path takes for inputs on ``device`` of ``dtype``, and why: :func:`choose`'s answer.

    Args:
        device: the input's device.
        dtype: the input's dtype.
        candidates: the pool. Default: the paper's seven.
        granularity: ``"layer"`` or ``"channel"``. Default: ``"layer"``.
        training: training mode (RReLU noise). Default: True.
        param_dtype: the logits' and PReLU slope's dtype. Default: float32 (as :class:`adact.AdAct` makes them).

    Returns:
        ``(backend, reason)``, the backend one of ``"native"``, ``"compile"``, ``"eager"``,
        ``"generic-compile"``, ``"generic-eager"``, ``"reference"`` (no fused path) or ``"error"``
        (a forced backend that cannot run here).
        On a float32 CPU input this builds the native kernels and, under ``auto``, calibrates
        them if that has not happened yet.
    """
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    key = DispatchKey(
        torch.device(device).type, dtype, tuple(candidates), granularity, training, (param_dtype, param_dtype),
        current_env(),
    )  # fmt: skip
    choice = choose(key)
    return ("error" if choice.error is not None else choice.backend.name), choice.reason
