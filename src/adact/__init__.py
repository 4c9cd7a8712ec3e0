"""adact: learn which activation function each layer of a network should use.

Implements the AdAct unit of "Learning to optimize activation function choice through
adaptive activation modules" (ICLR 2024 Tiny Papers) and the tools around it.

The public names below load on first use (PEP 562), so ``import adact`` (and ``adact --help``)
does not wait for torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "ACTIVATIONS": "adact.activations",
    "DEFAULT_CANDIDATES": "adact.paper",
    "create_act": "adact.act_factory",
    "get_act_layer": "adact.act_factory",
    "list_activations": "adact.activations",
    "ConvNet": "adact.models",
    "GPT": "adact.gpt",
    "DEFAULT_TARGETS": "adact.surgery",
    "AdactifyReport": "adact.surgery",
    "adact_units": "adact.choice",
    "adactify": "adact.surgery",
    "dominant_activations": "adact.choice",
    "optimize": "adact.surgery",
    "apply_choices": "adact.surgery",
    "save_choices": "adact.surgery",
    "AdAct": "adact.unit",
    "adact_reference": "adact.reference",
}

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_CANDIDATES",
    "DEFAULT_TARGETS",
    "AdAct",
    "AdactifyReport",
    "ConvNet",
    "GPT",
    "__version__",
    "adact_reference",
    "adact_units",
    "adactify",
    "apply_choices",
    "create_act",
    "data",
    "dominant_activations",
    "get_act_layer",
    "list_activations",
    "optimize",
    "save_choices",
]

if TYPE_CHECKING:
    from adact import data
    from adact.activations import ACTIVATIONS, list_activations
    from adact.act_factory import create_act, get_act_layer
    from adact.choice import adact_units, dominant_activations
    from adact.gpt import GPT
    from adact.models import ConvNet
    from adact.paper import DEFAULT_CANDIDATES
    from adact.surgery import (
        DEFAULT_TARGETS, AdactifyReport, adactify, apply_choices, optimize, save_choices,
    )  # fmt: skip
    from adact.reference import adact_reference
    from adact.unit import AdAct


def __getattr__(name: str) -> Any:
    if name == "data":
        return importlib.import_module("adact.data")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'adact' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
