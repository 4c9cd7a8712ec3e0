"""How the fused kernels see a tensor: contiguous flat views of its memory, and back.

Layouts (see :mod:`adact.fused.inductor`): 1-D for one mixture per unit, ``(N, C, R)`` for one
per channel. A channels-last 4-D input keeps its memory order (no copy) for layer granularity;
other non-contiguous inputs are copied.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["flat_view", "lane_width", "lanes", "unflatten"]

_LANE_WIDTHS = (16, 8, 4, 2, 1)  # 16 float32 = one AVX-512 vector


def _channels_last_layer(like: Tensor, channel: bool) -> bool:
    return not channel and like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(
        memory_format=torch.channels_last
    )


@functools.lru_cache(maxsize=32)
def lanes(width: int, device: torch.device) -> Tensor:
    """``arange(width)`` as int32 on ``device`` (the noisy forward's lane indices), made once."""
    return torch.arange(width, dtype=torch.int32, device=device)


def lane_width(x: Tensor, channel: bool) -> int:
    """The widest of 16, 8, 4, 2, 1 that divides the kernel's last dim for ``x``."""
    last = x.numel() // (x.shape[0] * x.shape[1]) if channel else x.numel()
    return next(w for w in _LANE_WIDTHS if last % w == 0)


def flat_view(t: Tensor, like: Tensor, channel: bool, width: int) -> Tensor:
    """``t`` (shaped like ``like``) as the kernel sees ``like``: 1-D, or ``(N, C, R)`` for channels.

    With ``width > 1`` the last dim is split into ``(-1, width)`` (noisy kernels, see
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
    return flat if width == 0 else flat.unflatten(-1, (-1, width))


def unflatten(y: Tensor, like: Tensor, channel: bool) -> Tensor:
    """Undo :func:`flat_view`, with the strides ``torch.empty_like(like)`` has (the fake op's)."""
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
