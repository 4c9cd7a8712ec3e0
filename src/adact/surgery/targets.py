"""Which modules and function calls are activations, and which of them :func:`adactify` converts.

Library classes are recognised by their module and name, so neither ``transformers`` nor
``timm`` is imported. Every recognised activation has a *kind* (``"relu"``, ``"gelu"``, ...),
and ``targets`` selects kinds by name; a class given in ``targets`` is matched with
``isinstance`` instead.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from adact.activations import GELUTanh, ReLUSquared
from adact.errors import UserError
from adact.unit import AdAct

__all__ = [
    "DEFAULT_TARGETS",
    "GATE_KINDS",
    "KNOWN_KINDS",
    "TargetSpec",
    "Targets",
    "function_kind",
    "is_inplace_call",
    "looks_like_activation",
    "module_kind",
    "resolve_targets",
    "source_activation_calls",
]

#: torch's own activation classes, by kind.
_TORCH_CLASSES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu",
    nn.PReLU: "prelu",
    nn.RReLU: "rrelu",
    nn.SiLU: "silu",
    nn.Mish: "mish",
    nn.GELU: "gelu",
    nn.Hardswish: "hardswish",
    nn.ReLU6: "relu6",
    nn.SELU: "selu",
    nn.CELU: "celu",
    nn.Softplus: "softplus",
    nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Tanh: "tanh",
    ReLUSquared: "relu_squared",  # adact's own (registry name "relu2"), e.g. from optimize()
    GELUTanh: "gelu",  # adact's own (registry name "gelu_tanh"), as nn.GELU(approximate="tanh") is
}

# (top-level package, last module component, class name) -> kind. Keyed loosely so that moved
# modules (timm.models.layers.activations -> timm.layers.activations) still match.
_LIBRARY_CLASSES: dict[tuple[str, str, str], str] = {
    **{
        ("transformers", "activations", name): kind
        for name, kind in {
            "GELUActivation": "gelu",
            "NewGELUActivation": "gelu",
            "FastGELUActivation": "gelu",
            "GELUTanh": "gelu",
            "PytorchGELUTanh": "gelu",
            "AccurateGELUActivation": "gelu",
            "ClippedGELUActivation": "gelu",
            "QuickGELUActivation": "quick_gelu",
            "SiLUActivation": "silu",
            "MishActivation": "mish",
            "ReLUSquaredActivation": "relu_squared",
            "LaplaceActivation": "laplace",
            "LinearActivation": "identity",  # known, so not warned about; never a target
        }.items()
    },
    **{
        ("timm", module, name): kind
        for module in ("activations", "activations_me", "activations_jit")
        for name, kind in {
            "Swish": "silu",
            "SwishMe": "silu",
            "SwishJit": "silu",
            "Mish": "mish",
            "MishMe": "mish",
            "MishJit": "mish",
            "HardSwish": "hardswish",
            "HardSwishMe": "hardswish",
            "HardSwishJit": "hardswish",
            "HardMish": "hard_mish",
            "HardMishMe": "hard_mish",
            "HardMishJit": "hard_mish",
            "PReLU": "prelu",
            "GELU": "gelu",
            "GELUTanh": "gelu",
            "QuickGELU": "quick_gelu",
            "Sigmoid": "sigmoid",
            "HardSigmoid": "hardsigmoid",
            "HardSigmoidMe": "hardsigmoid",
            "HardSigmoidJit": "hardsigmoid",
            "Tanh": "tanh",
        }.items()
    },
}

#: Gates (squeeze-excitation scales, GLU halves): converted only when asked for by name.
GATE_KINDS: tuple[str, ...] = ("sigmoid", "hardsigmoid")

#: Kinds :func:`adactify` converts by default: every activation above except gates and tanh.
DEFAULT_TARGETS: tuple[str, ...] = (
    "relu",
    "leaky_relu",
    "elu",
    "prelu",
    "rrelu",
    "silu",
    "mish",
    "gelu",
    "hardswish",
    "relu6",
    "selu",
    "celu",
    "softplus",
    "quick_gelu",
    "relu_squared",
    "hard_mish",
    "laplace",
)

#: Every kind ``targets`` may name.
KNOWN_KINDS: tuple[str, ...] = (*DEFAULT_TARGETS, *GATE_KINDS, "tanh")

# Functions and Tensor methods, as torch.fx records them (call_function targets / method names).
_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.relu: "relu",
    torch.relu: "relu",
    F.relu_: "relu",
    torch.relu_: "relu",
    F.gelu: "gelu",
    F.silu: "silu",
    F.mish: "mish",
    F.elu: "elu",
    F.elu_: "elu",
    F.leaky_relu: "leaky_relu",
    F.leaky_relu_: "leaky_relu",
    F.hardswish: "hardswish",
    F.relu6: "relu6",
    F.selu: "selu",
    torch.selu: "selu",
    F.celu: "celu",
    F.celu_: "celu",
    torch.celu: "celu",
    torch.celu_: "celu",
    F.rrelu: "rrelu",
    F.rrelu_: "rrelu",
    torch.rrelu: "rrelu",
    torch.rrelu_: "rrelu",
    F.prelu: "prelu",
    torch.prelu: "prelu",
    F.softplus: "softplus",
    F.sigmoid: "sigmoid",
    torch.sigmoid: "sigmoid",
    F.hardsigmoid: "hardsigmoid",
    F.tanh: "tanh",
    torch.tanh: "tanh",
}
_INPLACE_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset(
    (F.relu_, torch.relu_, F.elu_, F.leaky_relu_, F.celu_, torch.celu_, F.rrelu_, torch.rrelu_)
)
_METHODS: dict[str, str] = {
    "relu": "relu",
    "relu_": "relu",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "tanh": "tanh",
    "tanh_": "tanh",
}

# For the source scan of forwards torch.fx cannot trace, and the look-alike warning.
_SOURCE_CALL = re.compile(r"(\.?[A-Za-z_][\w.]*)\s*\((\s*\))?")
_LOOKS_LIKE = re.compile(r"(?i)(gelu|relu|silu|swish|mish|elu|softplus|activation)$")

Targets = Union[str, type[nn.Module], Iterable[Union[str, type[nn.Module]]], None]


@dataclass(frozen=True)
class TargetSpec:
    """Resolved ``targets``: activation kinds (modules and calls) and extra classes (modules)."""

    kinds: frozenset[str]
    classes: tuple[type[nn.Module], ...]

    def module(self, m: nn.Module) -> bool:
        """Whether module ``m`` is to be replaced."""
        if isinstance(m, AdAct):
            return False
        if self.classes and isinstance(m, self.classes):
            return True
        return module_kind(m) in self.kinds

    def call(self, kind: str | None) -> bool:
        """Whether a function call of ``kind`` is to be replaced."""
        return kind is not None and kind in self.kinds

    def names(self) -> list[str]:
        """The spec as names (kinds, and ``module:qualname`` for classes), for saving."""
        return sorted(self.kinds) + [f"{c.__module__}:{c.__qualname__}" for c in self.classes]


def module_kind(m: nn.Module) -> str | None:
    """The activation kind of module ``m`` (its class or the nearest known base class), or None."""
    for cls in type(m).__mro__:
        kind = _TORCH_CLASSES.get(cls)  # type: ignore[call-overload]
        if kind is not None:
            return kind
        module = getattr(cls, "__module__", "") or ""
        key = (module.partition(".")[0], module.rpartition(".")[2], cls.__name__)
        kind = _LIBRARY_CLASSES.get(key)
        if kind is not None:
            return kind
    return None


def function_kind(fn: object, method: bool = False) -> str | None:
    """The kind of a call_function target (or, with ``method=True``, a Tensor method name)."""
    if method:
        return _METHODS.get(fn) if isinstance(fn, str) else None
    try:
        return _FUNCTIONS.get(fn)  # type: ignore[call-overload]
    except TypeError:  # unhashable target
        return None


def is_inplace_call(fn: object, kwargs: dict[str, Any], method: bool = False) -> bool:
    """Whether a call modifies its input (``relu_``, ``inplace=True``)."""
    if method:
        return isinstance(fn, str) and fn.endswith("_")
    return fn in _INPLACE_FUNCTIONS or kwargs.get("inplace") is True


def looks_like_activation(m: nn.Module) -> bool:
    """An unknown module whose class name says it is an activation (for the warning)."""
    # Containers such as torchvision's Conv2dNormActivation hold an activation; they are not one.
    return (
        module_kind(m) is None
        and not isinstance(m, AdAct)
        and not m._modules
        and bool(_LOOKS_LIKE.search(type(m).__name__))
    )


def source_activation_calls(fn: Callable[..., Any], owner: object = None) -> list[str]:
    """Activation kinds a function's source calls, in order; [] if unreadable.

    Spellings: ``F.relu(`` through any alias of ``torch.nn.functional`` or ``torch`` in the function's
    globals (``import torch.nn.functional as fn``), a from-imported function (``silu(x)``), a method
    (``x.relu()``), and ``self.name(`` where ``owner.name`` holds an activation function.
    """
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return []
    scope = dict(getattr(fn, "__globals__", {}))
    scope.setdefault("F", F), scope.setdefault("functional", F), scope.setdefault("torch", torch)
    attrs = vars(owner) if owner is not None and hasattr(owner, "__dict__") else {}
    kinds: list[str] = []
    for dotted, empty in _SOURCE_CALL.findall(src):
        prefix, _, name = dotted.rpartition(".")
        if dotted.startswith("."):  # f(x).relu(): a method of a call's result
            kind = _METHODS.get(name) if empty else None
        elif prefix == "self":
            kind = function_kind(attrs.get(name))
        elif prefix:
            first, *rest = prefix.split(".")
            base = F if prefix == "nn.functional" else scope.get(first)
            for part in rest if prefix != "nn.functional" else ():
                base = getattr(base, part, None)
            kind = function_kind(getattr(base, name, None)) if base is F or base is torch else None
            if kind is None and empty:
                kind = _METHODS.get(name)  # x.relu(): a Tensor method
        else:
            kind = function_kind(scope.get(name))
        if kind is not None:
            kinds.append(kind)
    return kinds


def resolve_targets(targets: Targets) -> TargetSpec:
    """Check ``targets`` and resolve it to a :class:`TargetSpec`.

    Raises:
        TypeError: an entry is neither a name nor an ``nn.Module`` subclass.
        ValueError: an unknown name, ``AdAct``, or an empty collection.
    """
    if targets is None:
        return TargetSpec(frozenset(DEFAULT_TARGETS), ())
    items = (targets,) if isinstance(targets, (str, type)) else tuple(targets)
    if not items:
        raise UserError("targets is empty; pass None for the default activation kinds")
    kinds: set[str] = set()
    classes: list[type[nn.Module]] = []
    for t in items:
        if isinstance(t, str):
            key = t.lower().replace("-", "_")
            if key not in KNOWN_KINDS:
                raise UserError(f"unknown target {t!r}; valid names: {', '.join(KNOWN_KINDS)}")
            kinds.add(key)
        elif isinstance(t, type) and issubclass(t, nn.Module):
            if issubclass(t, AdAct):
                raise UserError("targets must not include AdAct: its units are never replaced")
            classes.append(t)
        else:
            raise TypeError(
                f"targets must be activation names ({', '.join(KNOWN_KINDS)}) or nn.Module subclasses, got {t!r}"
            )
    return TargetSpec(frozenset(kinds), tuple(classes))
