"""Fused AdAct kernel (placeholder until the fused implementation lands)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

__all__ = ["adact_fused", "fused_supported"]


def fused_supported(candidates: Sequence[str], x: Tensor) -> bool:
    return False


def adact_fused(x: Tensor, logits: Tensor, prelu_weight: Tensor, candidates: Sequence[str], training: bool) -> Tensor:
    raise NotImplementedError
