"""What the fused dispatch decides on: the environment snapshot, the dispatch key, the kernel variants.

A :class:`DispatchKey` holds everything about one call that decides which backend runs it (the
input's device and dtype, the pool, the layout, training mode, the parameters' dtypes) and the
:class:`Env` snapshot of the two environment variables that steer the choice. :mod:`adact.fused.dispatch`
caches one decision per key, so a changed environment variable is a new key, decided afresh.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from adact.errors import UserError
from adact.fused.generic import GenericFlags
from adact.fused.inductor import KernelFlags, kernel_flags
from adact.fused.native import ISA_ENV_VAR

__all__ = [
    "BACKENDS", "ENV_VAR", "LAYOUTS", "BackendFailed", "DispatchKey", "Env", "FusedKernelKey", "current_env",
    "dispatch_key",
]  # fmt: skip

ENV_VAR = "ADACT_FUSED"
#: The values of ``ADACT_FUSED``: see :mod:`adact.fused.dispatch`.
BACKENDS: tuple[str, ...] = ("auto", "native", "compile", "eager", "off")
#: How the parameters map onto the input: one mixture per unit, one per channel (dim 1), or
#: shapes that fit neither (only the reference takes those).
LAYOUTS: tuple[str, ...] = ("layer", "channel", "unsupported")


class Env(NamedTuple):
    """The environment variables the dispatch reads, parsed."""

    fused: str  # ADACT_FUSED, one of BACKENDS
    isa: str  # ADACT_NATIVE_ISA, stripped ("native" when unset); the native backend validates it


RawEnv = tuple[str | bytes | None, str | bytes | None]


def _environ_reader() -> Callable[[], RawEnv]:
    # os.environ.get encodes the name and decodes the value at every call (0.6 us each, a tenth
    # of what a 1K-element unit costs). CPython's POSIX os.environ keeps the raw bytes in its
    # ``_data`` dict, which every write through os.environ (monkeypatch.setenv included) updates:
    # reading it directly is the same answer at 20 ns. Elsewhere, the public way.
    data = getattr(os.environ, "_data", None)
    if os.name == "posix" and isinstance(data, dict):
        fused, isa = os.fsencode(ENV_VAR), os.fsencode(ISA_ENV_VAR)
        return lambda: (data.get(fused), data.get(isa))
    return lambda: (os.environ.get(ENV_VAR), os.environ.get(ISA_ENV_VAR))


#: The two variables as they are now, raw (a cheap, hashable snapshot; :func:`current_env` parses it).
raw_env: Callable[[], RawEnv] = _environ_reader()

# Parsed once per distinct pair of raw values: a call pays two dict reads of os.environ and one here.
_ENVS: dict[RawEnv, Env] = {}


def _parse(raw: RawEnv) -> Env:
    fused_raw, isa_raw = (os.fsdecode(v) if isinstance(v, bytes) else v for v in raw)
    fused = (fused_raw or "").strip().lower() or "auto"
    if fused not in BACKENDS:
        raise UserError(f"{ENV_VAR}={fused_raw!r} is not one of {', '.join(BACKENDS)}")
    return Env(fused, (isa_raw or "").strip() or "native")


def current_env() -> Env:
    """``ADACT_FUSED`` and ``ADACT_NATIVE_ISA`` as they are now (read at each call, parsed once per value).

    Raises:
        ValueError: ``ADACT_FUSED`` is not one of :data:`BACKENDS`.
    """
    raw = raw_env()
    env = _ENVS.get(raw)
    if env is None:
        env = _ENVS[raw] = _parse(raw)  # a bad value raises here and is never cached
    return env


class FusedKernelKey(NamedTuple):
    """One elementwise kernel variant: what it computes and for which inputs."""

    direction: str  # "fwd" or "bwd"
    device: str  # device type: "cpu", "cuda"
    dtype: torch.dtype  # input dtype
    flags: KernelFlags | GenericFlags  # layout and terms (GenericFlags: a pool the generic kernels run)


class DispatchKey(NamedTuple):
    """Everything about a call that decides which backend runs it."""

    device: str  # the input's device type
    dtype: torch.dtype  # the input's dtype
    candidates: tuple[str, ...]
    layout: str  # one of LAYOUTS
    training: bool
    param_dtypes: tuple[torch.dtype, torch.dtype]  # (logits, PReLU slope)
    env: Env

    @property
    def flags(self) -> KernelFlags:
        """The kernels' static flags: layout and terms."""
        return kernel_flags(self.candidates, self.training, self.layout == "channel")

    def variant(self, direction: str) -> FusedKernelKey:
        """The elementwise kernel this key runs in ``direction`` (``"fwd"`` or ``"bwd"``)."""
        return FusedKernelKey(direction, self.device, self.dtype, self.flags)


def _layout(x: Tensor, logits: Tensor, prelu_weight: Tensor | None) -> str:
    slopes = 1 if prelu_weight is None else prelu_weight.numel()
    if logits.dim() == 1:
        return "layer" if slopes == 1 else "unsupported"
    if (
        logits.dim() == 2
        and x.dim() >= 2
        and x.shape[1] == logits.shape[0]
        and (prelu_weight is None or prelu_weight.dim() == 1)
        and slopes in (1, logits.shape[0])
    ):
        return "channel"
    return "unsupported"


def dispatch_key(
    x: Tensor, logits: Tensor, prelu_weight: Tensor | None, candidates: tuple[str, ...], training: bool
) -> DispatchKey:
    """The :class:`DispatchKey` of a call of :func:`adact.fused.adact_fused` (``prelu_weight`` may be None)."""
    slope_dtype = logits.dtype if prelu_weight is None else prelu_weight.dtype
    return DispatchKey(
        x.device.type, x.dtype, candidates, _layout(x, logits, prelu_weight), training, (logits.dtype, slope_dtype),
        current_env(),
    )  # fmt: skip


class BackendFailed(RuntimeError):
    """A backend failed at its first use (e.g. compiling); it has recorded why and now declines the key.

    The dispatcher catches it, decides again and runs the next backend (the cause is chained).
    """
