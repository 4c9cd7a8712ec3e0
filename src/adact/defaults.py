"""Names and defaults that the command line needs before torch is imported.

``adact --help`` must not wait for torch (about 2 s), so the option choices live here, in a
module that imports nothing heavy. The modules that own them re-export them
(:data:`adact.data.DATASETS`, :data:`adact.models.DEFAULT_CHANNELS`, ...);
:data:`ACTIVATION_NAMES` mirrors the registry of :mod:`adact.activations`, and a test keeps the
two equal.
"""

from __future__ import annotations

__all__ = ["ACTIVATION_NAMES", "BAD_IMAGE_POLICIES", "DATASETS", "DEFAULT_CHANNELS", "DEVICES", "FER_SPLITS",
           "GRANULARITIES", "NORMALIZE", "OPTIMIZERS", "SCHEDULES"]

DATASETS: tuple[str, ...] = ("fmnist", "cifar10", "svhn", "fer2013", "digits")
"""Named datasets; any ``.npz`` file is also accepted as ``"npz:PATH"``."""

FER_SPLITS: tuple[str, ...] = ("paper", "official")

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")

GRANULARITIES: tuple[str, ...] = ("layer", "channel")
"""AdAct logits per layer (the paper's) or per channel; :data:`adact.unit.GRANULARITIES` mirrors it."""

NORMALIZE: tuple[str, ...] = ("paper", "imagenet")
"""``--normalize``: mean = std = 0.5 (the paper's), or ImageNet's per-channel statistics."""

OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
SCHEDULES: tuple[str, ...] = ("none", "cosine")
BAD_IMAGE_POLICIES: tuple[str, ...] = ("skip", "error")

DEFAULT_CHANNELS: tuple[int, ...] = (32, 64, 128, 256)
"""The ConvNet's conv widths: our assumption, the paper's layer table is missing."""

ACTIVATION_NAMES: tuple[str, ...] = (
    "relu", "elu", "leaky_relu", "prelu", "rrelu", "silu", "mish", "gelu", "tanh", "sigmoid", "hardswish",
    "softplus", "selu", "celu", "hardtanh", "relu6", "identity",
)
"""``adact.list_activations()``, in registry order."""
