"""The plain AdAct sum and its softmax: the definition every faster path is tested against.

A leaf module (it imports only the activation registry), so that the unit (:mod:`adact.unit`)
and the fused kernels (:mod:`adact.fused`) can both use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from adact.activations import DEFAULT_CANDIDATES, activation_functional

__all__ = ["adact_reference", "mixture_weights"]


def mixture_weights(logits: Tensor) -> Tensor:
    """``softmax(logits)`` over the last dim, in at least float32.

    bf16/fp16 logits would round the weights, so they are promoted; float64 stays float64, so a
    float64 model is float64-accurate and passes gradcheck.
    """
    return torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


def _broadcast_weight(p: Tensor, x: Tensor) -> Tensor:
    """Shape a per-channel column ``(C,)`` to broadcast over ``x`` of shape ``(N, C, *)``."""
    if p.dim() == 0:
        return p
    return p.view(1, -1, *([1] * (x.dim() - 2)))


def adact_reference(
    x: Tensor,
    logits: Tensor,
    prelu_weight: Tensor | None,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    training: bool = False,
) -> Tensor:
    r"""The plain AdAct sum, one PyTorch op per candidate: :math:`\sum_k \mathrm{softmax}(w)_k\,f_k(x)`.

    Args:
        x: input, any shape; ``(N, C, *)`` when ``logits`` is per channel.
        logits: ``(K,)`` for one mixture per unit, or ``(C, K)`` for one per channel (dim 1).
        prelu_weight: PReLU slope, ``(1,)`` or ``(C,)``; may be None when "prelu" is not a candidate.
        candidates: the K activation names, in the order of the last dim of ``logits``.
        training: RReLU draws a random slope per element when True, uses the mean slope otherwise.
    """
    p = mixture_weights(logits).to(x.dtype)  # (K,) or (C, K)
    out: Tensor | None = None
    for k, name in enumerate(candidates):
        term = _broadcast_weight(p[..., k], x) * activation_functional(name)(x, prelu_weight, training)
        out = term if out is None else out + term
    assert out is not None
    return out
