"""``nn.TransformerEncoderLayer`` / ``DecoderLayer``: their activation, and the fast paths that skip it."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from adact.surgery.originals import call_original
from adact.surgery.report import MissedSite, Site
from adact.surgery.targets import TargetSpec, function_kind
from adact.surgery.units import UnitFactory

__all__ = [
    "convert_function_activations",
    "disable_transformer_fast_paths",
    "fast_paths_off",
    "sync_fast_path_flag",
]

_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def convert_function_activations(
    model: nn.Module, spec: TargetSpec, factory: UnitFactory
) -> tuple[list[Site], list[MissedSite]]:
    """A layer built with ``activation="relu"``/``"gelu"``/a function gets a unit as its activation.

    A known activation function, also as a ``functools.partial`` (``partial(F.gelu, approximate="tanh")``),
    becomes a unit; any other callable (a lambda, a function of one's own) runs as it is and is listed.
    """
    sites: list[Site] = []
    missed: list[MissedSite] = []
    for path, layer in model.named_modules():
        if not isinstance(layer, _LAYERS):
            continue
        fn = layer.__dict__.get("activation")  # a function is a plain attribute, a module is not
        if fn is None or isinstance(fn, nn.Module):
            continue
        target, args, kwargs = fn, (None,), {}
        if isinstance(fn, functools.partial):
            target, args, kwargs = fn.func, (None, *fn.args), dict(fn.keywords)
        kind = function_kind(target)
        at = f"{path}.activation" if path else "activation"
        name = getattr(target, "__name__", type(target).__name__)
        if kind is None:
            missed.append(MissedSite(at, name, "a callable adactify does not know runs natively as the layer's "
                                     "activation; give a known activation (a name, an F function, a module)"))
            continue
        if not spec.call(kind):
            continue
        layer.activation = factory(None, layer.training, call=call_original(target, args, kwargs), what=f"F.{name}")
        sync_fast_path_flag(layer, "activation")
        sites.append(Site(at, f"F.{name}", "attribute"))
    return sites, missed


def sync_fast_path_flag(parent: nn.Module, name: str) -> None:
    # nn.TransformerEncoderLayer caches "is the activation ReLU/GELU" at construction and its
    # eval fast path then runs the native op, ignoring self.activation: keep the cache true.
    if name == "activation" and hasattr(parent, "activation_relu_or_gelu"):
        act = getattr(parent, name)
        flag = 1 if isinstance(act, nn.ReLU) else 2 if isinstance(act, nn.GELU) else 0
        parent.activation_relu_or_gelu = flag


def disable_transformer_fast_paths(model: nn.Module) -> None:
    # An encoder decides at construction whether to pack inputs into nested tensors for the
    # layers' fast path; AdAct layers never take that path, so packing must be off.
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder) and any(
            not getattr(layer, "activation_relu_or_gelu", 1) for layer in m.layers
        ):
            m.use_nested_tensor = False


@contextmanager
def fast_paths_off(model: nn.Module) -> Iterator[None]:
    # An eval-mode TransformerEncoderLayer under no_grad skips its activation module entirely;
    # the probe must see the calls the converted model will make.
    layers = [m for m in model.modules() if getattr(m, "activation_relu_or_gelu", 0)]
    flags = [m.activation_relu_or_gelu for m in layers]
    for m in layers:
        m.activation_relu_or_gelu = 0
    try:
        yield
    finally:
        for m, f in zip(layers, flags):
            m.activation_relu_or_gelu = f
