"""Shared pytest fixtures for the adact test-suite (keep minimal)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same RNG state, so random inputs are reproducible."""
    torch.manual_seed(0)
