"""Build activation layers from a name or a class, as timm's ``create_act`` does.

Models take ``act_layer`` (a registry name, ``"adact"``, or a class), resolve it once with
:func:`get_act_layer`, and build one module per use site. This lives apart from the registry
(:mod:`adact.activations`) because ``"adact"`` needs the unit, and the unit needs the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from adact.activations import ACTIVATIONS, ActLayer, _check_name
from adact.unit import AdAct

__all__ = ["create_act", "get_act_layer"]


def get_act_layer(act_layer: ActLayer) -> Callable[..., nn.Module]:
    """Resolve a name or a class to a module constructor, once, like timm's ``get_act_layer``.

    Args:
        act_layer: ``"adact"``, a registry name (see :func:`list_activations`), or a callable
            returning an ``nn.Module`` (returned unchanged).

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    if isinstance(act_layer, str):
        if act_layer.lower() == "adact":
            return AdAct
        return ACTIVATIONS[_check_name(act_layer)]
    if callable(act_layer):
        return act_layer
    raise TypeError(f"act_layer must be a name or a callable returning nn.Module, got {act_layer!r}")


def create_act(act_layer: ActLayer, **kwargs: object) -> nn.Module:
    """Build one activation module from a name or class (one instance per call site)."""
    return get_act_layer(act_layer)(**kwargs)
