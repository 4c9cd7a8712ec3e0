"""Figure files: the same figure gives the same bytes, so re-rendered published folders only change when a figure did."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adact.activations import ACTIVATIONS
from adact.reporting.figures import ACT_COLORS, plot_weights

CANDS = ["relu", "elu", "leaky_relu", "prelu", "rrelu", "silu", "mish"]


def _weights(seed: int, stem: Path) -> list[Path]:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(2, 4, 7))  # (seeds, layers, candidates)
    mix = np.exp(raw) / np.exp(raw).sum(-1, keepdims=True)
    return plot_weights(raw, mix, CANDS, "test", stem)


def test_saved_figures_are_byte_identical_across_renders(tmp_path: Path) -> None:
    a = _weights(0, tmp_path / "a" / "w")
    b = _weights(0, tmp_path / "b" / "w")
    assert sorted(p.suffix for p in a) == [".png", ".svg"]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    svg = next(p for p in a if p.suffix == ".svg").read_bytes()
    assert b"<dc:date>" not in svg
    other = _weights(1, tmp_path / "c" / "w")
    assert next(p for p in other if p.suffix == ".svg").read_bytes() != svg  # another figure, another file


def test_every_registry_name_has_its_own_colour() -> None:
    assert set(ACT_COLORS) == set(ACTIVATIONS)
    assert len(set(ACT_COLORS.values())) == len(ACT_COLORS)
