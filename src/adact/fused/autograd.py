"""The fused AdAct's autograd: ``torch.library`` custom ops for ``torch.compile``, a Function for eager.

Both routes run the same two implementations, :func:`forward_impl` and :func:`backward_impl`,
and keep the same thing for the backward: the input, the 8 parameters and a 4-byte seed (the
eager route also keeps the 7 kernel coefficients); the backward recomputes everything else.

* ``torch.ops.adact.fused_forward`` / ``fused_backward`` are custom ops with fake (meta)
  implementations and a registered autograd formula. ``torch.compile`` of a whole model keeps each
  as one opaque node instead of breaking the graph.
* Eagerly, :class:`FusedAdActFunction` (a plain ``torch.autograd.Function``) skips the custom-op
  dispatch layers, which cost ~0.1 ms per call, a lot for small activations.

:func:`apply_fused` picks the route. Both hand the kernels contiguous flat views of the tensors'
memory (layouts: :mod:`adact.fused.inductor`). A channels-last 4-D input keeps its memory order (no
copy) for layer granularity; other non-contiguous inputs are copied.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, NamedTuple

import torch
from torch import Tensor

from adact.fused.dispatch import FusedKernelKey, native_for, run_kernel
from adact.fused.native import NativeKernels
from adact.fused.inductor import compute_dtype, kernel_flags, mixture_coefficients, parameter_grads

__all__ = ["FusedAdActFunction", "apply_fused", "backward_impl", "forward_impl", "fused_backward", "fused_forward"]


def _channels_last_layer(like: Tensor, channel: bool) -> bool:
    return not channel and like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(
        memory_format=torch.channels_last
    )


_LANE_WIDTHS = (16, 8, 4, 2, 1)  # 16 float32 = one AVX-512 vector


@functools.lru_cache(maxsize=32)
def _lanes(width: int, device: torch.device) -> Tensor:
    return torch.arange(width, dtype=torch.int32, device=device)


def _lane_width(x: Tensor, channel: bool) -> int:
    last = x.numel() // (x.shape[0] * x.shape[1]) if channel else x.numel()
    return next(w for w in _LANE_WIDTHS if last % w == 0)


def _flat_view(t: Tensor, like: Tensor, channel: bool, lanes: int) -> Tensor:
    """``t`` (shaped like ``like``) as the kernel sees ``like``: 1-D, or ``(N, C, R)`` for channels.

    With ``lanes > 1`` the last dim is split into ``(-1, lanes)`` (noisy kernels, see
    :func:`adact.fused.inductor.flat_index`). The element order is ``like``'s memory order, so the
    RReLU noise, which depends on the flat index, lines up between the forward (on ``x``) and the
    backward (on the gradient).
    """
    if channel:
        flat = t.contiguous().view(t.shape[0], t.shape[1], -1)
    elif _channels_last_layer(like, channel):
        flat = t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1)
    else:
        flat = t.contiguous().view(-1)
    return flat if lanes == 0 else flat.unflatten(-1, (-1, lanes))


def _unflatten(y: Tensor, like: Tensor, channel: bool) -> Tensor:
    """Undo :func:`_flat_view`, with the strides ``torch.empty_like(like)`` has (the fake op's)."""
    if _channels_last_layer(like, channel):
        n, c, h, w = like.shape
        out = y.view(n, h, w, c).permute(0, 3, 1, 2)
    else:
        out = y.view(like.shape)
    if not like.is_contiguous() and out.stride() != torch.empty_like(like, device="meta").stride():
        return torch.empty_like(like).copy_(out)  # e.g. channels-last input with channel granularity
    # A view of a tensor made inside an autograd.Function is a "custom Function view": autograd
    # forbids in-place ops on it (nn.ReLU(inplace=True), x.add_() after a unit). The same memory
    # re-wrapped by set_ is an ordinary tensor, with no view relation for autograd to track.
    return torch.empty((0,), dtype=out.dtype, device=out.device).set_(
        out.untyped_storage(), out.storage_offset(), out.shape, out.stride()
    )


class _Launch(NamedTuple):
    key: FusedKernelKey
    lanes: Tensor | None  # arange(L) for the noisy forward
    width: int  # L, or 0 without a lane dim


def _launch(direction: str, x: Tensor, logits: Tensor, names: tuple[str, ...], training: bool) -> _Launch:
    channel = logits.dim() == 2
    flags = kernel_flags(names, training, channel)
    width = _lane_width(x, channel) if flags.noisy and direction == "fwd" else 0
    lanes = _lanes(width, x.device) if width else None
    return _Launch(FusedKernelKey(direction, x.device.type, x.dtype, flags), lanes, width)


def _no_autocast(x: Tensor) -> contextlib.AbstractContextManager[object]:
    # Autocast stays on inside a custom op without an autocast rule: switch it off so the kernel
    # computes as specified (float32 for low-precision inputs) whatever the caller enabled.
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _native(key: FusedKernelKey, logits: Tensor, prelu_weight: Tensor) -> NativeKernels | None:
    """The native kernels where they serve: float32 CPU input and float32 parameters."""
    if logits.dtype != torch.float32 or prelu_weight.dtype != torch.float32:
        return None
    return native_for(key)


def forward_impl(
    x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor, names: tuple[str, ...], training: bool
) -> tuple[Tensor, Tensor]:
    """Fused AdAct forward (no autograd): the output and the kernel coefficients it used.

    ``training`` means: RReLU draws noise keyed by ``seed`` (an int32 scalar).
    """
    with torch.no_grad(), _no_autocast(x):
        if x.numel() == 0:
            return torch.empty_like(x), mixture_coefficients(logits, prelu_weight, names, training, compute_dtype(x.dtype))
        channel = logits.dim() == 2
        run = _launch("fwd", x, logits, names, training)
        native = _native(run.key, logits, prelu_weight)
        if native is not None:
            y, coef = native.forward(_flat_view(x, x, channel, 0), logits, prelu_weight, seed, names, run.key.flags)
        else:
            coef = mixture_coefficients(logits, prelu_weight, names, training, compute_dtype(x.dtype))
            y = run_kernel(run.key, _flat_view(x, x, channel, run.width), coef, seed, run.lanes)
    return _unflatten(y, x, channel), coef


def backward_impl(
    grad: Tensor,
    x: Tensor,
    logits: Tensor,
    prelu_weight: Tensor,
    seed: Tensor,
    names: tuple[str, ...],
    training: bool,
    coef: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`forward_impl` w.r.t. ``x``, ``logits`` and ``prelu_weight``, in one pass.

    ``coef``: the forward's coefficients, if kept (else recomputed from the parameters).
    """
    if x.numel() == 0:
        return torch.zeros_like(x), torch.zeros_like(logits), torch.zeros_like(prelu_weight)
    channel = logits.dim() == 2
    with torch.no_grad(), _no_autocast(x):
        run = _launch("bwd", x, logits, names, training)
        native = _native(run.key, logits, prelu_weight)
        if native is not None:  # the whole backward, algebra included, in one call
            gx, glogits, gw = native.backward(
                _flat_view(grad, x, channel, 0), _flat_view(x, x, channel, 0), logits, prelu_weight, seed, names,
                run.key.flags,
            )  # fmt: skip
            return _unflatten(gx, x, channel), glogits, gw
        if coef is None:
            coef = mixture_coefficients(logits, prelu_weight, names, training, compute_dtype(x.dtype))
        g_view, x_view, row_coef = _flat_view(grad, x, channel, 0), _flat_view(x, x, channel, 0), coef
        if channel:  # (N * C, R) rows, coefficients per row (see kernel_backward)
            n = x_view.shape[0]
            g_view, x_view = g_view.flatten(0, 1), x_view.flatten(0, 1)
            row_coef = coef.repeat(n, 1)
        gx, sums = run_kernel(run.key, g_view, x_view, row_coef, seed)
        if channel:
            gx, sums = gx.view(x.shape[0], x.shape[1], -1), sums.view(n, -1, sums.shape[-1]).sum(0)
        glogits, gw = parameter_grads(sums, logits, prelu_weight, names, training)
    return _unflatten(gx, x, channel), glogits, gw


# --- custom ops (the torch.compile route) ----------------------------------------------------------


@torch.library.custom_op("adact::fused_forward", mutates_args=())
def fused_forward(
    x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor, candidates: str, training: bool
) -> Tensor:
    """Fused AdAct forward; ``candidates`` is comma-separated."""
    return forward_impl(x, logits, prelu_weight, seed, tuple(candidates.split(",")), training)[0]


@fused_forward.register_fake
def _fused_forward_fake(
    x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor, candidates: str, training: bool
) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("adact::fused_backward", mutates_args=())
def fused_backward(
    grad: Tensor, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor, candidates: str, training: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``adact::fused_forward`` w.r.t. ``x``, ``logits`` and ``prelu_weight``."""
    return backward_impl(grad, x, logits, prelu_weight, seed, tuple(candidates.split(",")), training)


@fused_backward.register_fake
def _fused_backward_fake(
    grad: Tensor, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor, candidates: str, training: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(logits), torch.empty_like(prelu_weight)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, logits, prelu_weight, seed, candidates, training = inputs
    ctx.save_for_backward(x, logits, prelu_weight, seed)
    ctx.candidates = candidates
    ctx.training = training


def _op_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, logits, prelu_weight, seed = ctx.saved_tensors
    gx, glogits, gw = torch.ops.adact.fused_backward(grad, x, logits, prelu_weight, seed, ctx.candidates, ctx.training)
    need = ctx.needs_input_grad
    return (gx if need[0] else None, glogits if need[1] else None, gw if need[2] else None, None, None, None)


fused_forward.register_autograd(_op_backward, setup_context=_setup_context)


# --- autograd.Function (the eager route) -----------------------------------------------------------


class FusedAdActFunction(torch.autograd.Function):
    """Eager autograd for the fused AdAct: same implementations and saved tensors as the custom ops."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor, names: tuple[str, ...], training: bool
    ) -> Tensor:
        y, coef = forward_impl(x, logits, prelu_weight, seed, names, training)
        ctx.save_for_backward(x, logits, prelu_weight, seed, coef)  # coef: 7 numbers per mixture
        ctx.names = names
        ctx.training = training
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, logits, prelu_weight, seed, coef = ctx.saved_tensors
        gx, glogits, gw = backward_impl(grad, x, logits, prelu_weight, seed, ctx.names, ctx.training, coef)
        need = ctx.needs_input_grad
        return (gx if need[0] else None, glogits if need[1] else None, gw if need[2] else None, None, None, None)


def apply_fused(
    x: Tensor, logits: Tensor, prelu_weight: Tensor, seed: Tensor, names: tuple[str, ...], training: bool
) -> Tensor:
    """Differentiable fused AdAct: the custom op while ``torch.compile`` traces, the Function otherwise."""
    if torch.compiler.is_compiling():
        return torch.ops.adact.fused_forward(x, logits, prelu_weight, seed, ",".join(names), training)
    return FusedAdActFunction.apply(x, logits, prelu_weight, seed, names, training)
