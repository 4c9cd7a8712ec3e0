"""The fused AdAct's autograd: ``torch.library`` custom ops for ``torch.compile``, a Function for eager.

Both routes run the same two implementations, :func:`forward_impl` and :func:`backward_impl`,
and keep the same thing for the backward: the input, the 8 parameters and a 4-byte seed (the
eager route also keeps the 7 kernel coefficients); the backward recomputes everything else.

* ``torch.ops.adact.fused_forward`` / ``fused_backward`` are custom ops with fake (meta)
  implementations and a registered autograd formula. ``torch.compile`` of a whole model keeps each
  as one opaque node instead of breaking the graph.
* Eagerly, :class:`FusedAdActFunction` (a plain ``torch.autograd.Function``) skips the custom-op
  dispatch layers, which cost ~0.1 ms per call, a lot for small activations.

:func:`apply_fused` picks the route. Which backend computes (native, Inductor, eager) is
:func:`adact.fused.dispatch.choose`'s decision, asked by :func:`adact.fused.dispatch.forward` and
``backward``; the eager route hands them the caller's key, the custom ops make it from their inputs.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from adact.fused import dispatch
from adact.fused.inductor import compute_dtype, mixture_coefficients
from adact.fused.keys import DispatchKey, dispatch_key

__all__ = ["FusedAdActFunction", "apply_fused", "backward_impl", "forward_impl", "fused_backward", "fused_forward"]


def _no_autocast(x: Tensor) -> contextlib.AbstractContextManager[object]:
    # Autocast stays on inside a custom op without an autocast rule: switch it off so the kernel
    # computes as specified (float32 for low-precision inputs) whatever the caller enabled.
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def forward_impl(
    x: Tensor,
    logits: Tensor,
    prelu_weight: Tensor,
    seed: Tensor,
    names: tuple[str, ...],
    training: bool,
    key: DispatchKey | None = None,
) -> tuple[Tensor, Tensor]:
    """Fused AdAct forward (no autograd): the output and the kernel coefficients it used.

    ``training`` means: RReLU draws noise keyed by ``seed`` (an int32 scalar). ``key``: the
    call's :class:`~adact.fused.keys.DispatchKey` if the caller has it (else made here); the
    backend is :func:`adact.fused.dispatch.choose`'s for it.
    """
    with torch.no_grad(), _no_autocast(x):
        if x.numel() == 0:
            return torch.empty_like(x), mixture_coefficients(logits, prelu_weight, names, training, compute_dtype(x.dtype))
        if key is None:
            key = dispatch_key(x, logits, prelu_weight, names, training)
        return dispatch.forward(key, x, logits, prelu_weight, seed)


def backward_impl(
    grad: Tensor,
    x: Tensor,
    logits: Tensor,
    prelu_weight: Tensor,
    seed: Tensor,
    names: tuple[str, ...],
    training: bool,
    coef: Tensor | None = None,
    key: DispatchKey | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`forward_impl` w.r.t. ``x``, ``logits`` and ``prelu_weight``, in one pass.

    ``coef``: the forward's coefficients, if kept (else recomputed from the parameters). ``key``:
    as for :func:`forward_impl` (the forward's key: the backward runs where the forward would now).
    """
    if x.numel() == 0:
        return torch.zeros_like(x), torch.zeros_like(logits), torch.zeros_like(prelu_weight)
    with torch.no_grad(), _no_autocast(x):
        if key is None:
            key = dispatch_key(x, logits, prelu_weight, names, training)
        return dispatch.backward(key, grad, x, logits, prelu_weight, seed, coef)


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
        ctx: Any,
        x: Tensor,
        logits: Tensor,
        prelu_weight: Tensor,
        seed: Tensor,
        names: tuple[str, ...],
        training: bool,
        key: DispatchKey | None = None,
    ) -> Tensor:
        y, coef = forward_impl(x, logits, prelu_weight, seed, names, training, key)
        ctx.save_for_backward(x, logits, prelu_weight, seed, coef)  # coef: 7 numbers per mixture
        ctx.names = names
        ctx.training = training
        ctx.key = key
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, logits, prelu_weight, seed, coef = ctx.saved_tensors
        gx, glogits, gw = backward_impl(grad, x, logits, prelu_weight, seed, ctx.names, ctx.training, coef, ctx.key)
        need = ctx.needs_input_grad
        return (gx if need[0] else None, glogits if need[1] else None, gw if need[2] else None, None, None, None, None)


def apply_fused(
    x: Tensor,
    logits: Tensor,
    prelu_weight: Tensor,
    seed: Tensor,
    names: tuple[str, ...],
    training: bool,
    key: DispatchKey | None = None,
) -> Tensor:
    """Differentiable fused AdAct: the custom op while ``torch.compile`` traces, the Function otherwise.

    ``key``: the call's :class:`~adact.fused.keys.DispatchKey`, if the caller made it already.
    """
    if torch.compiler.is_compiling():
        return torch.ops.adact.fused_forward(x, logits, prelu_weight, seed, ",".join(names), training)
    return FusedAdActFunction.apply(x, logits, prelu_weight, seed, names, training, key)
