"""Evaluation of an image classifier: mean cross-entropy and accuracy over a loader, all ranks together."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adact.data import DeviceLoader
from adact.training import distributed

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, bf16: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader``."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    device_type = next(model.parameters()).device.type
    for x, y in loader:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += y.numel()
    if getattr(loader, "world_size", 1) > 1:  # [distributed] each rank saw its slice; the sums cover the set once
        loss_sum, correct, n = distributed.all_sum(loss_sum, correct, n)
    return loss_sum / max(n, 1), correct / max(n, 1)
