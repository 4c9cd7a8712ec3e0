"""Which registry activation a site computes *exactly*: the ``original`` of a warm-started unit.

``adactify(model, init="original")`` starts each unit as the activation it replaces, which needs
that activation in the unit's pool as a registry name with the same hyper-parameters. Kinds
(:mod:`adact.surgery.targets`) are coarser: ``nn.LeakyReLU(0.2)`` and GPT-2's tanh-approximated
GELU are of kind ``leaky_relu`` and ``gelu``, yet neither is the registry's ``leaky_relu``
(slope 0.01) or ``gelu`` (exact erf). :func:`module_original` and :func:`call_original` answer
with a registry name only when the site computes that function; otherwise None, and the caller
says which site cannot be warm-started.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from adact.activations import ACTIVATIONS, RRELU_LOWER, RRELU_UPPER
from adact.surgery.targets import function_kind

__all__ = ["call_original", "module_original"]

# Hugging Face and timm classes by (package, class name): what each computes, in registry names.
# GPT-2's NewGELUActivation (and FastGELU) write the tanh approximation out by hand: equal to
# F.gelu(approximate="tanh") to float rounding. QuickGELU (x * sigmoid(1.702 x)), clipped and
# "accurate" GELUs are other functions and stay out.
_BY_CLASS_NAME: dict[tuple[str, str], str] = {
    ("transformers", "GELUActivation"): "gelu",
    ("transformers", "NewGELUActivation"): "gelu_tanh",
    ("transformers", "FastGELUActivation"): "gelu_tanh",
    ("transformers", "GELUTanh"): "gelu_tanh",
    ("transformers", "PytorchGELUTanh"): "gelu_tanh",
    ("transformers", "SiLUActivation"): "silu",
    ("transformers", "MishActivation"): "mish",
    ("transformers", "ReLUSquaredActivation"): "relu2",
    ("transformers", "LinearActivation"): "identity",
    ("timm", "GELU"): "gelu",
    ("timm", "GELUTanh"): "gelu_tanh",
    ("timm", "Swish"): "silu",
    ("timm", "SiLU"): "silu",
    ("timm", "Mish"): "mish",
    ("timm", "HardSwish"): "hardswish",
}


def _hyper_parameters_match(m: nn.Module, name: str) -> bool:
    """Whether torch module ``m`` has the registry module's hyper-parameters (PReLU: any slope, it is seeded)."""
    ref = ACTIVATIONS[name]()
    for attr in ("negative_slope", "alpha", "beta", "threshold", "min_val", "max_val", "lower", "upper",
                 "approximate"):
        if getattr(m, attr, None) != getattr(ref, attr, None):
            return False
    return True


def module_original(m: nn.Module) -> str | None:
    """The registry name of what activation module ``m`` computes, or None if no entry is that function."""
    cls = type(m)
    if cls is nn.GELU:
        name = {"none": "gelu", "tanh": "gelu_tanh"}.get(m.approximate)
        return name if name in ACTIVATIONS else None
    if cls is nn.PReLU:
        return "prelu"  # its slope (one, or one per channel) seeds the unit's (see units.seed_prelu)
    for name, registered in ACTIVATIONS.items():
        if cls is registered:
            return name if _hyper_parameters_match(m, name) else None
    package = cls.__module__.split(".", 1)[0]
    name = _BY_CLASS_NAME.get((package, cls.__name__))
    if name is None or name not in ACTIVATIONS:
        return None
    if package == "timm" and cls.__name__ == "GELU" and getattr(m, "approximate", "none") != "none":
        return "gelu_tanh" if "gelu_tanh" in ACTIVATIONS else None
    return name


# Keyword defaults of the functional forms whose registry entry has exactly these values.
_CALL_DEFAULTS: dict[str, dict[str, Any]] = {
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
    "celu": {"alpha": 1.0},
    "softplus": {"beta": 1.0, "threshold": 20.0},
    "rrelu": {"lower": RRELU_LOWER, "upper": RRELU_UPPER},
}
_IGNORED = frozenset(("input", "self", "inplace", "training"))


def call_original(target: Callable[..., Any] | str, args: Sequence[Any], kwargs: Mapping[str, Any],
                  method: bool = False) -> str | None:
    """The registry name of what an activation call computes, from its target and arguments, or None."""
    kind = function_kind(target, method=method)
    if kind is None:
        return None
    if kind == "prelu":  # its weight tensor seeds the unit's slope (functional.seed_call_prelu)
        return "prelu" if "prelu" in ACTIVATIONS else None
    settings: dict[str, Any] = dict(kwargs)
    if len(args) > 1 and not method and callable(target):
        try:  # positional hyper-parameters (F.leaky_relu(x, 0.2)) by their parameter names
            params = [p for p in inspect.signature(target).parameters][1:]
            settings.update(zip(params, args[1:]))
        except (TypeError, ValueError):
            return None
    elif len(args) > 1:
        return None
    settings = {k: v for k, v in settings.items() if k not in _IGNORED}
    if kind == "gelu":
        approximate = settings.pop("approximate", "none")
        name = {"none": "gelu", "tanh": "gelu_tanh"}.get(approximate)
        return name if name in ACTIVATIONS and not settings else None
    if kind == "relu_squared":
        return None
    defaults = _CALL_DEFAULTS.get(kind, {})
    if any(k not in defaults or v != defaults[k] for k, v in settings.items()):
        return None
    return kind if kind in ACTIVATIONS else None

