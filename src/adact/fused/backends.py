"""The fused AdAct's backends, best first: native C++, Inductor-compiled, eager, generic, and the reference.

The first three run the paper's pools (any subset of its seven candidates); the two generic
ones (:mod:`adact.fused.generic`, compiled or eager) run every other pool of the candidates
they know, and the reference runs whatever is left (unknown candidates, training-mode RReLU
outside the paper's pools, shapes that fit no layout).

Each backend is an object with a ``name`` and :meth:`Backend.why_not`, which says why it cannot
take a call described by a :class:`~adact.fused.keys.DispatchKey` (None: it can). Its reasons
come in two kinds, which :mod:`adact.fused.dispatch` tells apart when it explains a choice:

* :meth:`Backend.scope`: what it cannot do at all (device, dtype, pool, layout, parameter dtype);
* the ``ADACT_FUSED`` values it runs under (:attr:`Backend.modes`), and :meth:`Backend.decline`:
  why it passes over an input it could take (a failed build or compile earlier in this process,
  a lost calibration, float64 kept eager).

The fused backends run the whole forward (``(y, coef)``) and backward (three gradients) without
autograd; :mod:`adact.fused.autograd` wraps them. The reference is :func:`adact.adact_reference`,
differentiated by autograd, against which every fused backend is tested.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from adact.errors import UserError
from adact.fused import calibration, compiled, native, native_op
from adact.fused.generic import (
    generic_backward,
    generic_coefficients,
    generic_flags,
    generic_forward,
    generic_parameter_grads,
    generic_scope,
)
from adact.fused.inductor import (
    FUSED_CANDIDATES,
    SLOT_ORDER,
    compute_dtype,
    mixture_coefficients,
    parameter_grads,
)
from adact.fused.keys import BACKENDS, ENV_VAR, DispatchKey, FusedKernelKey
from adact.fused.layout import flat_view, lane_width, lanes, unflatten
from adact.reference import adact_reference

__all__ = [
    "COMPILE", "EAGER", "FUSED_DTYPES", "GENERIC_COMPILE", "GENERIC_EAGER", "NATIVE", "ORDER", "REFERENCE", "Backend",
    "CompiledBackend", "DirectCall", "EagerBackend", "FusedBackend", "GenericCompiledBackend", "GenericEagerBackend",
    "NativeBackend", "ReferenceBackend", "forget",
]  # fmt: skip

#: Input dtypes the fused kernels take (float16/bfloat16 compute in float32, float64 in float64).
FUSED_DTYPES: frozenset[torch.dtype] = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
_DEVICES = ("cpu", "cuda")
_FLOAT32 = (torch.float32, torch.float32)


#: A differentiable ``(x, logits, slope) -> y`` that needs no Python autograd around it (a torch op).
DirectCall = Callable[[Tensor, Tensor, Tensor], Tensor]


class Backend:
    """A way to compute AdAct. :mod:`adact.fused.dispatch` asks each in :data:`ORDER` in turn."""

    #: What ``adact info`` and :func:`adact.fused.dispatch.explain` call it.
    name: str = ""
    #: What a fallback warning calls it ("Using {title} instead").
    title: str = ""
    #: The ``ADACT_FUSED`` values under which it may run.
    modes: frozenset[str] = frozenset(BACKENDS)

    def scope(self, key: DispatchKey) -> str | None:
        """What rules ``key`` out whatever the settings (device, dtype, pool, layout, parameter dtype), or None."""
        return None

    def decline(self, key: DispatchKey) -> str | None:
        """Why this backend passes over a ``key`` it could take (failure, calibration, policy), or None."""
        return None

    def failure(self, key: DispatchKey) -> Exception | None:
        """The error behind :meth:`decline` when it is a failure in this process (a build, a compile)."""
        return None

    def why_not(self, key: DispatchKey) -> str | None:
        """None if this backend takes ``key``, else why not (the first of scope, mode, decline)."""
        why = self.scope(key)
        if why is None and key.env.fused not in self.modes:
            why = f"{ENV_VAR}={key.env.fused}"
        return self.decline(key) if why is None else why

    def describe(self, key: DispatchKey) -> str:
        """Why this backend takes ``key`` (asked only when no better backend able to take it declined)."""
        return f"{ENV_VAR}={self.name}" if key.env.fused == self.name else self.title

    def direct(self, key: DispatchKey) -> DirectCall | None:
        """A torch op running ``key``'s calls with its own autograd, if this backend has one (asked once per key)."""
        return None

    def __repr__(self) -> str:
        return f"<adact fused backend {self.name!r}>"


def _input_scope(key: DispatchKey) -> str | None:
    if key.device not in _DEVICES:
        return f"no fused kernels on {key.device} (only {', '.join(_DEVICES)})"
    if key.dtype not in FUSED_DTYPES:
        return f"no fused kernels for {key.dtype} (only float16, bfloat16, float32, float64)"
    return None


def _layout_scope(key: DispatchKey) -> str | None:
    if key.layout == "unsupported":
        return "the shapes fit neither layout: logits (K,) with 1 slope, or (C, K) with input (N, C, *) and 1 or C slopes"
    return None


class FusedBackend(Backend):
    """A backend with the fused kernels' contract: one pass each way, only the input kept for backward."""

    def scope(self, key: DispatchKey) -> str | None:
        why = _input_scope(key)
        if why is not None:
            return why
        missing = [c for c in key.candidates if c not in FUSED_CANDIDATES]
        if missing:
            return f"no fused kernel for {', '.join(missing)} (fused: {', '.join(SLOT_ORDER)})"
        return _layout_scope(key)

    def forward(self, key: DispatchKey, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, coef)`` for ``x`` (not empty): the output and the 7 kernel coefficients per mixture."""
        raise NotImplementedError

    def backward(
        self, key: DispatchKey, grad: Tensor, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor,
        coef: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """Gradients w.r.t. ``x``, ``logits`` and ``prelu_weight``; ``coef``: the forward's, if kept."""
        raise NotImplementedError


def _timing(cal: calibration.Calibration) -> str:
    inductor = "failed" if cal.compiled_ms is None else f"{cal.compiled_ms:.2f} ms"
    return f"native {cal.native_ms:.2f} ms vs Inductor {inductor}"


class NativeBackend(FusedBackend):
    """The hand-vectorised C++ kernels (:mod:`adact.fused.native`): float32 on CPU.

    Under ``auto`` only where :func:`~adact.fused.calibration.calibrate` found them faster than
    Inductor's. A failed build is remembered per ISA level (one attempt per process).
    """

    name = "native"
    title = "the native C++ kernels"
    modes = frozenset(("auto", "native"))

    def __init__(self) -> None:
        self._kernels: dict[str, native.NativeKernels] = {}
        self._errors: dict[str, native.NativeBuildError] = {}
        self._op_warned = False
        self._lock = threading.Lock()

    def load(self, isa: str) -> native.NativeKernels:
        """The kernels for ``isa`` (``ADACT_NATIVE_ISA``'s value: :attr:`adact.fused.keys.Env.isa`), built at the first call.

        Raises:
            NativeBuildError: they cannot be built here (now or at an earlier call).
            ValueError: ``isa`` is not a key of :data:`adact.fused.native.ISA_LEVELS`.
        """
        kernels = self._kernels.get(isa)
        if kernels is not None:
            return kernels
        if isa not in native.ISA_LEVELS:
            raise UserError(f"{native.ISA_ENV_VAR}={isa!r} is not one of {', '.join(native.ISA_LEVELS)}")
        with self._lock:
            if isa in self._errors:
                raise self._errors[isa]
            try:
                kernels = self._kernels[isa] = native.native_kernels(isa)
            except native.NativeBuildError as err:
                self._errors[isa] = err
                raise
        return kernels

    def scope(self, key: DispatchKey) -> str | None:
        why = super().scope(key)
        if why is not None:
            return why
        if key.device != "cpu":
            return "CPU only"
        if key.dtype != torch.float32:
            return "float32 inputs only"
        if key.param_dtypes != _FLOAT32:
            return f"float32 parameters only (logits {key.param_dtypes[0]}, slope {key.param_dtypes[1]})"
        return None

    def decline(self, key: DispatchKey) -> str | None:
        try:
            kernels = self.load(key.env.isa)
        except native.NativeBuildError as err:
            return f"the native build failed: {str(err).splitlines()[0]}"
        if key.env.fused == "auto":
            cal = calibration.calibrate(kernels)
            if cal.winner != "native":
                return f"calibrated: Inductor is faster here ({_timing(cal)})"
        return None

    def failure(self, key: DispatchKey) -> Exception | None:
        return self._errors.get(key.env.isa)

    def describe(self, key: DispatchKey) -> str:
        if key.env.fused == "native":
            return f"{ENV_VAR}=native"
        return f"calibrated faster ({_timing(calibration.calibrate(self.load(key.env.isa)))})"

    def forward(self, key: DispatchKey, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor) -> tuple[Tensor, Tensor]:
        channel = key.layout == "channel"
        kernels = self.load(key.env.isa)
        y, coef = kernels.forward(flat_view(x, x, channel, 0), logits, prelu_weight, seed, key.candidates, key.flags)
        return unflatten(y, x, channel), coef

    def backward(
        self, key: DispatchKey, grad: Tensor, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor,
        coef: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        channel = key.layout == "channel"
        gx, glogits, gw = self.load(key.env.isa).backward(  # the whole backward, algebra included, in one call
            flat_view(grad, x, channel, 0), flat_view(x, x, channel, 0), logits, prelu_weight, seed, key.candidates,
            key.flags,
        )  # fmt: skip
        return unflatten(gx, x, channel), glogits, gw

    def problem(self, key: DispatchKey) -> int | None:
        """The index :mod:`adact.fused.native_op`'s op takes for ``key``, or None when the op cannot be built.

        A failed build is warned about once; the native kernels then run through ctypes.
        """
        kernels = self.load(key.env.isa)
        try:
            return native_op.problem(kernels, key.candidates, key.training, key.layout == "channel")
        except native.NativeBuildError as err:
            with self._lock:
                first, self._op_warned = not self._op_warned, True
            if first:
                warnings.warn(
                    f"adact: building the native torch operator failed ({str(err).splitlines()[0]})\nCalling "
                    "the native kernels through ctypes instead (same results, about 0.3 ms more per call).",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return None

    def direct(self, key: DispatchKey) -> DirectCall | None:
        index = self.problem(key)
        if index is None:
            return None
        op = native_op.native_op()
        if key.flags.noisy:  # adact draws the seed in C++, from x's default generator

            def noisy(x: Tensor, logits: Tensor, slope: Tensor) -> Tensor:
                return op.adact(x, logits, slope, index, True)

            return noisy

        def call(x: Tensor, logits: Tensor, slope: Tensor) -> Tensor:
            return op.mix(x, logits, slope, None, index)

        return call

    def forget(self) -> None:
        """Forget loaded kernels and failed builds (the next use builds again)."""
        with self._lock:
            self._kernels.clear()
            self._errors.clear()


def _backward_pass(
    grad: Tensor, x: Tensor, coef: Tensor, channel: bool, run: Callable[[Tensor, Tensor, Tensor], Any]
) -> tuple[Tensor, Tensor]:
    """``(grad_x, sums)`` from a backward elementwise kernel ``run(grad, x, coef)``, per layer or per channel.

    Per channel the kernel sees ``(N * C, R)`` rows with the coefficients repeated per row (see
    :func:`adact.fused.inductor.kernel_backward`); its per-row sums are added up per channel here.
    """
    g_view, x_view, row_coef = flat_view(grad, x, channel, 0), flat_view(x, x, channel, 0), coef
    if channel:
        n = x_view.shape[0]
        g_view, x_view = g_view.flatten(0, 1), x_view.flatten(0, 1)
        row_coef = coef.repeat(n, 1)
    gx, sums = run(g_view, x_view, row_coef)
    if channel:
        gx, sums = gx.view(x.shape[0], x.shape[1], -1), sums.view(n, -1, sums.shape[-1]).sum(0)
    return gx, sums


def _compiled_decline(key: DispatchKey, failure: Exception | None) -> str | None:
    """Why an Inductor-compiled backend passes over ``key``: float64 is kept eager; a failed compile."""
    if key.dtype == torch.float64:
        return "float64 runs the eager kernels (they exist for checking)"
    if failure is not None:
        return f"compiling failed earlier in this process ({type(failure).__name__}: {str(failure).splitlines()[0]})"
    return None


class _KernelBackend(FusedBackend):
    """The elementwise kernels of :mod:`adact.fused.inductor`, with the mixture algebra around them."""

    def _run(self, variant: FusedKernelKey, *args: Tensor | None) -> Tensor | tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, key: DispatchKey, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor) -> tuple[Tensor, Tensor]:
        channel = key.layout == "channel"
        variant = key.variant("fwd")
        coef = mixture_coefficients(logits, prelu_weight, key.candidates, key.training, compute_dtype(key.dtype))
        width = lane_width(x, channel) if variant.flags.noisy else 0
        y = self._run(variant, flat_view(x, x, channel, width), coef, seed, lanes(width, x.device) if width else None)
        assert isinstance(y, Tensor)
        return unflatten(y, x, channel), coef

    def backward(
        self, key: DispatchKey, grad: Tensor, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor,
        coef: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        channel = key.layout == "channel"
        if coef is None:
            coef = mixture_coefficients(logits, prelu_weight, key.candidates, key.training, compute_dtype(key.dtype))
        gx, sums = _backward_pass(grad, x, coef, channel, lambda g, xs, c: self._run(key.variant("bwd"), g, xs, c, seed))
        glogits, gw = parameter_grads(sums, logits, prelu_weight, key.candidates, key.training)
        return unflatten(gx, x, channel), glogits, gw


class CompiledBackend(_KernelBackend):
    """The kernels compiled by ``torch.compile`` (:mod:`adact.fused.compiled`): Inductor's C++ on CPU, Triton on CUDA.

    Not for float64 (checking only: it runs the eager kernels). A variant that failed to compile
    in this process is passed over until :func:`forget`.
    """

    name = "compile"
    title = "the Inductor-compiled fused kernels"
    modes = frozenset(("auto", "native", "compile"))

    def decline(self, key: DispatchKey) -> str | None:
        return _compiled_decline(key, self.failure(key))

    def failure(self, key: DispatchKey) -> Exception | None:
        return compiled.failure(key.variant("fwd")) or compiled.failure(key.variant("bwd"))

    def describe(self, key: DispatchKey) -> str:
        if key.env.fused == "compile":
            return f"{ENV_VAR}=compile"
        return f"Inductor ({'Triton' if key.device == 'cuda' else 'C++'})"

    def _run(self, variant: FusedKernelKey, *args: Tensor | None) -> Tensor | tuple[Tensor, Tensor]:
        return compiled.run(variant, *args)  # type: ignore[arg-type]


class EagerBackend(_KernelBackend):
    """The same elementwise math as plain PyTorch ops: no compiler needed, slower, same memory use."""

    name = "eager"
    title = "the eager fused kernels"
    modes = frozenset(("auto", "native", "compile", "eager"))

    def _run(self, variant: FusedKernelKey, *args: Tensor | None) -> Tensor | tuple[Tensor, Tensor]:
        return compiled.MATH[variant.direction](*args, variant.flags)


class _GenericBackend(FusedBackend):
    """The generic kernels of :mod:`adact.fused.generic` (pools outside the paper's seven), with their algebra."""

    def scope(self, key: DispatchKey) -> str | None:
        return _input_scope(key) or generic_scope(key.candidates, key.training) or _layout_scope(key)

    def variant(self, key: DispatchKey, direction: str) -> FusedKernelKey:
        """The generic elementwise kernel ``key`` runs in ``direction``."""
        return FusedKernelKey(direction, key.device, key.dtype, generic_flags(key.candidates, key.layout == "channel"))

    def _run(self, variant: FusedKernelKey, *args: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, key: DispatchKey, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor) -> tuple[Tensor, Tensor]:
        channel = key.layout == "channel"
        coef = generic_coefficients(logits, prelu_weight, key.candidates, compute_dtype(key.dtype))
        y = self._run(self.variant(key, "fwd"), flat_view(x, x, channel, 0), coef)
        assert isinstance(y, Tensor)
        return unflatten(y, x, channel), coef

    def backward(
        self, key: DispatchKey, grad: Tensor, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor,
        coef: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        channel = key.layout == "channel"
        if coef is None:
            coef = generic_coefficients(logits, prelu_weight, key.candidates, compute_dtype(key.dtype))
        gx, sums = _backward_pass(grad, x, coef, channel, lambda g, xs, c: self._run(self.variant(key, "bwd"), g, xs, c))
        glogits, gw = generic_parameter_grads(sums, coef, logits, prelu_weight, key.candidates)
        return unflatten(gx, x, channel), glogits, gw


class GenericCompiledBackend(_GenericBackend):
    """The generic kernels compiled by ``torch.compile``, like :class:`CompiledBackend` (float64 runs them eagerly)."""

    name = "generic-compile"
    title = "the Inductor-compiled generic kernels"
    modes = frozenset(("auto", "native", "compile"))

    def decline(self, key: DispatchKey) -> str | None:
        return _compiled_decline(key, self.failure(key))

    def failure(self, key: DispatchKey) -> Exception | None:
        return compiled.failure(self.variant(key, "fwd")) or compiled.failure(self.variant(key, "bwd"))

    def describe(self, key: DispatchKey) -> str:
        where = "Triton" if key.device == "cuda" else "C++"
        return f"a pool outside the paper's seven: the generic kernels, Inductor ({where})"

    def _run(self, variant: FusedKernelKey, *args: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return compiled.run(variant, *args)  # type: ignore[no-any-return]


class GenericEagerBackend(_GenericBackend):
    """The generic kernels as plain PyTorch ops: no compiler needed, slower, same memory use."""

    name = "generic-eager"
    title = "the eager generic kernels"
    modes = frozenset(("auto", "native", "compile", "eager"))

    def describe(self, key: DispatchKey) -> str:
        # Rarely read: the compiled generic backend covers every key this one does, and says why it declined.
        return "a pool outside the paper's seven: the generic kernels, eager"

    def _run(self, variant: FusedKernelKey, *args: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        math = generic_forward if variant.direction == "fwd" else generic_backward
        return math(*args, variant.flags)  # type: ignore[no-any-return]


class ReferenceBackend(Backend):
    """:func:`adact.adact_reference`: one PyTorch op per candidate, any pool, any input; autograd saves its terms."""

    name = "reference"
    title = "the reference sum"

    def describe(self, key: DispatchKey) -> str:
        # Chosen with no fused backend declining: the input is outside every fused backend's scope.
        # The paper's kernels say why for the paper's candidates, the generic ones for the others.
        generic = GENERIC_EAGER.scope(key)
        paper = EAGER.scope(key)
        if paper is None or generic is None:
            return f"{ENV_VAR}={key.env.fused}"
        return paper if set(key.candidates) <= FUSED_CANDIDATES else generic

    def forward(
        self, x: Tensor, logits: Tensor, prelu_weight: Tensor | None, candidates: tuple[str, ...], training: bool
    ) -> Tensor:
        """:func:`adact.adact_reference` (differentiable by autograd)."""
        return adact_reference(x, logits, prelu_weight, candidates, training)


NATIVE = NativeBackend()
COMPILE = CompiledBackend()
EAGER = EagerBackend()
GENERIC_COMPILE = GenericCompiledBackend()
GENERIC_EAGER = GenericEagerBackend()
REFERENCE = ReferenceBackend()
#: The backends in order of preference: the first that takes a key runs it. The paper's kernels
#: and the generic ones never both cover a key (the generic scope leaves the paper's pools out).
ORDER: tuple[Backend, ...] = (NATIVE, COMPILE, EAGER, GENERIC_COMPILE, GENERIC_EAGER, REFERENCE)


def forget() -> None:
    """Forget every backend's state in this process: loaded and failed builds, compiled kernels, calibrations."""
    NATIVE.forget()
    compiled.forget()
    calibration.forget()
