"""adact: learn which activation function each layer of a network should use.

Implements the AdAct unit of "Learning to optimize activation function choice through
adaptive activation modules" (ICLR 2024 Tiny Papers) and the tools around it.
"""

from adact.activations import (
    ACTIVATIONS,
    DEFAULT_CANDIDATES,
    create_act,
    get_act_layer,
    list_activations,
)
from adact import data
from adact.models import ConvNet
from adact.surgery import (
    DEFAULT_TARGETS,
    AdactifyReport,
    adact_units,
    adactify,
    apply_choices,
    dominant_activations,
    optimize,
    save_choices,
)
from adact.unit import AdAct, adact_reference

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_CANDIDATES",
    "DEFAULT_TARGETS",
    "AdAct",
    "AdactifyReport",
    "ConvNet",
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
