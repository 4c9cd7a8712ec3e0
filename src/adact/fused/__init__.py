"""Fused AdAct: the whole mixture in one pass forward and one pass backward, saving only the input.

:class:`adact.AdAct` calls :func:`adact_fused` by default; wherever a fused kernel takes the call
(:func:`fused_supported`) it gives the values of :func:`adact.adact_reference` (to floating-point rounding) at about the
cost of a single activation, and keeps only ``x`` for the backward instead of one tensor per
candidate.

* Math: :mod:`adact.fused.inductor` (one exponential per element, finite for any input).
* Backends: :mod:`adact.fused.backends` (native C++ from :mod:`adact.fused.native`, Inductor-compiled
  from :mod:`adact.fused.compiled`, eager, and the reference), chosen per call by
  :mod:`adact.fused.dispatch` (the ``ADACT_FUSED=auto|native|compile|eager|off`` switch, fallbacks,
  :func:`~adact.fused.dispatch.explain`).
* Ops: :mod:`adact.fused.autograd` (``torch.ops.adact.fused_forward`` / ``fused_backward`` with
  autograd, so ``torch.compile`` of a whole model keeps working).

RReLU's training-mode noise is a hash of a per-call seed and the element index: the seed is drawn
from torch's default generator of ``x``'s device, so ``torch.manual_seed`` makes runs
reproducible, and the backward regenerates the forward's noise instead of storing it. The noise
is U(1/8, 1/3) like ``nn.RReLU``'s (to 16 bits: each draw is the centre of one of 2**16 equal
bins) but not bit-identical to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from adact.fused.autograd import apply_fused
from adact.fused.backends import FUSED_DTYPES, NATIVE, REFERENCE, DirectCall
from adact.fused.dispatch import choose, epoch, fused_backend
from adact.fused.inductor import FUSED_CANDIDATES
from adact.fused.keys import DispatchKey, Env, current_env, dispatch_key, raw_env

__all__ = [
    "FUSED_CANDIDATES", "FUSED_DTYPES", "DirectCall", "adact_fused", "call_state", "direct_call", "fused_backend",
    "fused_supported",
]  # fmt: skip

_SEED_RANGE = 2**31  # seeds are non-negative int32


def fused_supported(candidates: Sequence[str], x: Tensor) -> bool:
    """Whether :func:`adact_fused` runs a fused kernel for this pool and input (else :func:`adact.adact_reference`).

    True when every candidate is one of :data:`FUSED_CANDIDATES` (the paper's seven, any subset or
    order) or of :data:`adact.fused.generic.GENERIC_CANDIDATES` (other pools; RReLU in eval mode),
    ``x`` is float16/bfloat16/float32/float64 on CPU or CUDA, and ``ADACT_FUSED`` is not ``off``:
    :func:`adact.fused.dispatch.choose`'s answer for one mixture per unit, parameters of ``x``'s dtype.
    """
    key = DispatchKey(x.device.type, x.dtype, tuple(candidates), "layer", False, (x.dtype, x.dtype), current_env())
    return choose(key).backend is not REFERENCE


# What a traced graph calls: the reference, the Python custom op, or the native torch op (>= 0: its problem).
_REFERENCE_ROUTE, _PYTHON_OP_ROUTE = -2, -1


@torch.compiler.assume_constant_result
def _route_when_traced(*fields: object) -> int:
    # choose() may build, calibrate and compile: nothing Dynamo can trace. Dynamo calls this for
    # real while it traces (the key's fields are guarded constants, the environment included) and
    # the graph keeps the answer. The key travels flat: Dynamo rebuilds named tuples wrongly here.
    *head, fused, isa = fields
    key = DispatchKey(*head, Env(fused, isa))  # type: ignore[arg-type]
    choice = choose(key)
    if choice.backend is REFERENCE:
        return _REFERENCE_ROUTE
    if choice.direct is not None and choice.backend is NATIVE:
        problem = NATIVE.problem(key)
        return _PYTHON_OP_ROUTE if problem is None else problem
    return _PYTHON_OP_ROUTE


# The native op always takes a slope; a pool without PReLU ignores it.
_UNUSED_SLOPE = torch.zeros(1)


def call_state() -> tuple[object, ...]:
    """What a :func:`direct_call` answer depends on besides the unit and the input's dtype and device:
    the raw ``ADACT_FUSED``/``ADACT_NATIVE_ISA`` and the dispatcher's decisions (a cheap snapshot).

    A unit may keep a :func:`direct_call` answer while this (and its own inputs' kind) is unchanged.
    """
    return raw_env(), epoch()


def direct_call(
    x: Tensor, logits: Tensor, prelu_weight: Tensor | None, candidates: Sequence[str], training: bool
) -> DirectCall | None:
    """The torch op :func:`adact_fused` runs eagerly for calls like this one, if it runs one (the native op).

    The answer, ``call(x, logits, prelu_weight)`` (``prelu_weight`` may be None), is
    :func:`adact_fused` minus its per-call dispatch: :class:`adact.AdAct` keeps it for as long as
    :func:`call_state` and its input's kind stay the same. None: call :func:`adact_fused`.
    """
    direct = choose(dispatch_key(x, logits, prelu_weight, tuple(candidates), training)).direct
    if direct is None:
        return None
    op = direct

    def call(x: Tensor, logits: Tensor, prelu_weight: Tensor | None) -> Tensor:
        return op(x, logits, _UNUSED_SLOPE if prelu_weight is None else prelu_weight)

    return call


def adact_fused(
    x: Tensor, logits: Tensor, prelu_weight: Tensor | None, candidates: Sequence[str], training: bool
) -> Tensor:
    r"""AdAct forward through the fused kernel; same arguments and values as :func:`adact.adact_reference`.

    Where no fused backend takes the call (see :func:`adact.fused.dispatch.explain`) this is
    :func:`adact.adact_reference`.

    Args:
        x: input, any shape; ``(N, C, *)`` when ``logits`` is per channel.
        logits: ``(K,)`` or ``(C, K)`` mixture logits, in the order of ``candidates``.
        prelu_weight: PReLU slope, ``(1,)`` or ``(C,)``; may be None when PReLU is not a candidate.
        candidates: the K activation names.
        training: RReLU draws a random slope per element when True, uses the mean slope otherwise.

    Double backward is not supported (the backward is itself a fused kernel).
    """
    names = tuple(candidates)
    key = dispatch_key(x, logits, prelu_weight, names, training)
    if torch.compiler.is_compiling():
        route = _route_when_traced(*key[:-1], *key.env)
        if route >= 0:  # the native torch op, straight into the graph
            slope = _UNUSED_SLOPE if prelu_weight is None else prelu_weight
            if training and "rrelu" in names:
                return torch.ops.adact_native.adact(x, logits, slope, route, True)
            return torch.ops.adact_native.mix(x, logits, slope, None, route)
        fused = route != _REFERENCE_ROUTE
    else:
        choice = choose(key)
        if choice.direct is not None:  # one torch op, autograd in C++: no Python per call beyond this
            return choice.direct(x, logits, _UNUSED_SLOPE if prelu_weight is None else prelu_weight)
        fused = choice.backend is not REFERENCE
    if not fused:
        return REFERENCE.forward(x, logits, prelu_weight, names, training)
    if prelu_weight is None:  # the kernels' signature always takes a slope; it is unused here
        prelu_weight = logits.new_zeros(logits.shape[0] if logits.dim() == 2 else 1).detach()
    if training and "rrelu" in names:
        seed = torch.randint(0, _SEED_RANGE, (), dtype=torch.int32, device=x.device)
    else:
        seed = torch.zeros((), dtype=torch.int32, device=x.device)
    return apply_fused(x, logits, prelu_weight, seed, names, training, key)
