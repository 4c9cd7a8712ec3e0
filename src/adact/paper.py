"""The AdAct paper's constants: its candidate pool, its ConvNet's widths and its Table 1.

"Learning to optimize activation function choice through adaptive activation modules" (ICLR
2024 Tiny Papers). Imports nothing, so the command line, the configs and the reports can all
quote the paper without waiting for torch.
"""

from __future__ import annotations

__all__ = ["DEFAULT_CANDIDATES", "DEFAULT_CHANNELS", "PAPER_TABLE1", "TABLE1_MODELS"]

#: The paper's pool, in the paper's order.
DEFAULT_CANDIDATES: tuple[str, ...] = ("relu", "elu", "leaky_relu", "prelu", "rrelu", "silu", "mish")

DEFAULT_CHANNELS: tuple[int, ...] = (32, 64, 128, 256)
"""The ConvNet's conv widths: our assumption, the paper's layer table is missing."""

#: The models of the paper's Table 1, in its column order.
TABLE1_MODELS: tuple[str, ...] = ("adact", "relu", "optimized")

#: The paper's Table 1 (test accuracy, best epoch on the test set).
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "fmnist": {"adact": 0.921, "relu": 0.918, "optimized": 0.922},
    "cifar10": {"adact": 0.766, "relu": 0.759, "optimized": 0.766},
    "svhn": {"adact": 0.911, "relu": 0.913, "optimized": 0.917},
    "fer2013": {"adact": 0.546, "relu": 0.550, "optimized": 0.565},
}
