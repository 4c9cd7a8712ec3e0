"""Fused AdAct: the whole mixture in one pass forward and one pass backward, saving only the input.

:class:`adact.AdAct` calls :func:`adact_fused` by default wherever :func:`fused_supported` holds;
it gives the values of :func:`adact.adact_reference` (to floating-point rounding) at about the
cost of a single activation, and keeps only ``x`` for the backward instead of one tensor per
candidate.

* Math: :mod:`adact.fused.inductor` (one exponential per element, finite for any input).
* Kernels: :mod:`adact.fused.native` (hand-vectorised C++, float32 on CPU) and
  :mod:`adact.fused.dispatch` (``torch.compile``/Inductor elsewhere, eager fallback, the
  ``ADACT_FUSED=auto|native|compile|eager|off`` switch).
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
from adact.fused.dispatch import fused_backend
from adact.fused.inductor import FUSED_CANDIDATES
from adact.reference import adact_reference

__all__ = ["FUSED_CANDIDATES", "FUSED_DTYPES", "adact_fused", "fused_backend", "fused_supported"]

#: Input dtypes the kernel takes (float16/bfloat16 compute in float32, float64 in float64).
FUSED_DTYPES: frozenset[torch.dtype] = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
_DEVICES = ("cpu", "cuda")
_SEED_RANGE = 2**31  # seeds are non-negative int32


def fused_supported(candidates: Sequence[str], x: Tensor) -> bool:
    """Whether :func:`adact_fused` handles this pool and input (else use :func:`adact.adact_reference`).

    True when every candidate is one of :data:`FUSED_CANDIDATES` (the paper's seven, any subset or
    order), ``x`` is float16/bfloat16/float32/float64 on CPU or CUDA, and ``ADACT_FUSED`` is not
    ``off``.
    """
    return (
        x.dtype in FUSED_DTYPES
        and x.device.type in _DEVICES
        and all(c in FUSED_CANDIDATES for c in candidates)
        and fused_backend() != "off"
    )


def _shapes_supported(x: Tensor, logits: Tensor, prelu_weight: Tensor) -> bool:
    if logits.dim() == 1:
        return prelu_weight.numel() == 1
    return (
        logits.dim() == 2
        and x.dim() >= 2
        and x.shape[1] == logits.shape[0]
        and prelu_weight.dim() == 1
        and prelu_weight.numel() in (1, logits.shape[0])
    )


def adact_fused(
    x: Tensor, logits: Tensor, prelu_weight: Tensor, candidates: Sequence[str], training: bool
) -> Tensor:
    r"""AdAct forward through the fused kernel; same arguments and values as :func:`adact.adact_reference`.

    Args:
        x: input, any shape; ``(N, C, *)`` when ``logits`` is per channel.
        logits: ``(K,)`` or ``(C, K)`` mixture logits, in the order of ``candidates``.
        prelu_weight: PReLU slope, ``(1,)`` or ``(C,)`` (any value when PReLU is not a candidate).
        candidates: the K activation names, all in :data:`FUSED_CANDIDATES`.
        training: RReLU draws a random slope per element when True, uses the mean slope otherwise.

    Double backward is not supported (the backward is itself a fused kernel).
    """
    names = tuple(candidates)
    if not _shapes_supported(x, logits, prelu_weight):
        return adact_reference(x, logits, prelu_weight, names, training)
    noisy = training and "rrelu" in names
    if noisy:
        seed = torch.randint(0, _SEED_RANGE, (), dtype=torch.int32, device=x.device)
    else:
        seed = torch.zeros((), dtype=torch.int32, device=x.device)
    return apply_fused(x, logits, prelu_weight, seed, names, noisy)
