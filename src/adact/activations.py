"""Registry of activation functions by name, in the spirit of ``timm.layers.create_act``.

Every activation is known by one lower-case name. Each name maps to

* a ``torch.nn`` module class with PyTorch's default hyper-parameters (used to build
  fixed-activation models, e.g. ConvNet-ReLU or the ConvNet-Optimized that
  :func:`adact.optimize` produces), and
* a functional form ``fn(x, prelu_weight, training)`` (used inside an AdAct unit, which
  owns the one learnable parameter any candidate has: PReLU's slope).

Resolving names for models (``act_layer="adact"`` included) is :mod:`adact.act_factory`'s job:
this module stays a leaf that the unit and the kernels import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adact.config import ACTIVATION_NAMES
from adact.errors import UserError
from adact.paper import DEFAULT_CANDIDATES

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_CANDIDATES",
    "RRELU_LOWER",
    "RRELU_UPPER",
    "ActLayer",
    "GELUTanh",
    "ReLUSquared",
    "activation_functional",
    "activation_name",
    "list_activations",
]

#: RReLU's default bounds (``nn.RReLU``): slope ~ U(1/8, 1/3) in training, its mean in eval.
RRELU_LOWER: float = 1.0 / 8.0
RRELU_UPPER: float = 1.0 / 3.0

class ReLUSquared(nn.Module):
    r"""Applies the squared rectified linear unit function element-wise (So et al., 2021, "Primer").

    .. math::
        \text{ReLUSquared}(x) = \max(0, x)^2

    The same function as ``transformers``' ``ReLUSquaredActivation``. Registered as ``"relu2"``.

    Shape:
        - Input: :math:`(*)`, where :math:`*` means any number of dimensions.
        - Output: :math:`(*)`, same shape as the input.

    Examples::

        >>> m = ReLUSquared()
        >>> m(torch.tensor([-1.0, 0.5, 2.0]))
        tensor([0.0000, 0.2500, 4.0000])
    """

    def forward(self, input: Tensor) -> Tensor:
        return torch.square(F.relu(input))


class GELUTanh(nn.Module):
    r"""Applies the Gaussian Error Linear Units function, tanh approximation, element-wise.

    .. math::
        \text{GELUTanh}(x) = 0.5 x \left(1 + \tanh\left(\sqrt{2 / \pi} \left(x + 0.044715 x^3\right)\right)\right)

    ``nn.GELU(approximate="tanh")`` as a class with no arguments, so that the registry can build it
    (the same function as GPT-2's ``NewGELUActivation``, ``transformers``' ``PytorchGELUTanh`` and
    timm's ``GELUTanh``). Registered as ``"gelu_tanh"``.

    Shape:
        - Input: :math:`(*)`, where :math:`*` means any number of dimensions.
        - Output: :math:`(*)`, same shape as the input.

    Examples::

        >>> m = GELUTanh()
        >>> m(torch.tensor([-1.0, 0.0, 2.0]))
        tensor([-0.1588,  0.0000,  1.9546])
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.gelu(input, approximate="tanh")


#: name -> torch.nn module class (default hyper-parameters).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "rrelu": nn.RReLU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "hardswish": nn.Hardswish,
    "softplus": nn.Softplus,
    "selu": nn.SELU,
    "celu": nn.CELU,
    "hardtanh": nn.Hardtanh,
    "relu6": nn.ReLU6,
    "identity": nn.Identity,
    "relu2": ReLUSquared,
    "gelu_tanh": GELUTanh,
}

ActFn = Callable[[Tensor, Tensor, bool], Tensor]


def _rrelu(x: Tensor, _w: Tensor, training: bool) -> Tensor:
    if not training:
        # What F.rrelu computes in eval mode, spelled as an op the ONNX exporters translate
        # (the dynamo exporter has no translation for eval-mode rrelu).
        return F.leaky_relu(x, (RRELU_LOWER + RRELU_UPPER) / 2)
    return F.rrelu(x, RRELU_LOWER, RRELU_UPPER, training=True)


_FUNCTIONAL: dict[str, ActFn] = {
    "relu": lambda x, _w, _t: F.relu(x),
    "elu": lambda x, _w, _t: F.elu(x),
    "leaky_relu": lambda x, _w, _t: F.leaky_relu(x, 0.01),
    # F.prelu broadcasts a (C,) weight over dim 1 and a (1,) weight over everything.
    "prelu": lambda x, w, _t: F.prelu(x, w.to(x.dtype)),
    "rrelu": _rrelu,
    "silu": lambda x, _w, _t: F.silu(x),
    "mish": lambda x, _w, _t: F.mish(x),
    "gelu": lambda x, _w, _t: F.gelu(x),
    "tanh": lambda x, _w, _t: torch.tanh(x),
    "sigmoid": lambda x, _w, _t: torch.sigmoid(x),
    "hardswish": lambda x, _w, _t: F.hardswish(x),
    "softplus": lambda x, _w, _t: F.softplus(x),
    "selu": lambda x, _w, _t: F.selu(x),
    "celu": lambda x, _w, _t: F.celu(x),
    "hardtanh": lambda x, _w, _t: F.hardtanh(x),
    "relu6": lambda x, _w, _t: F.relu6(x),
    "identity": lambda x, _w, _t: x,
    "relu2": lambda x, _w, _t: torch.square(F.relu(x)),
    "gelu_tanh": lambda x, _w, _t: F.gelu(x, approximate="tanh"),
}
# The names are declared once, in adact.config (the command line lists them without importing torch).
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES and _FUNCTIONAL.keys() == ACTIVATIONS.keys()

ActLayer = Union[str, type[nn.Module], Callable[..., nn.Module]]


def list_activations() -> list[str]:
    """Names accepted wherever an activation name is expected (``"adact"`` excluded)."""
    return list(ACTIVATIONS)


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"activation name must be a str, got {type(name).__name__}: {name!r}")
    key = name.lower().replace("-", "_")
    if key not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}")
    return key


def activation_functional(name: str) -> ActFn:
    """The functional form ``fn(x, prelu_weight, training)`` of activation ``name``."""
    return _FUNCTIONAL[_check_name(name)]


def activation_name(module: nn.Module) -> str | None:
    """Registry name of a plain activation module (exact class match), or None.

    ``nn.GELU`` is two registry entries: ``"gelu"`` with ``approximate="none"`` and ``"gelu_tanh"``
    with ``approximate="tanh"``.
    """
    if type(module) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    for name, cls in ACTIVATIONS.items():
        if type(module) is cls:
            return name
    return None
