"""Shared pytest fixtures for the adact test-suite (keep minimal)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import adact.io


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same RNG state, so random inputs are reproducible."""
    torch.manual_seed(0)


FailWrites = Callable[..., None]


@pytest.fixture
def fail_writes(monkeypatch: pytest.MonkeyPatch) -> FailWrites:
    """``fail_writes(when, err=ENOSPC)``: atomic writes of files whose final name satisfies ``when`` fail.

    The data has been written to the temporary file when its ``fsync`` fails, as on a real
    full disk (where write or fsync report it). ``err`` picks the errno (ENOSPC, EROFS, ...).
    """
    real = os.fsync

    def arm(when: Callable[[str], bool], err: int = errno.ENOSPC) -> None:
        def fsync(fd: int) -> None:
            temp = Path(os.readlink(f"/proc/self/fd/{fd}")).name  # ".<final name>.<8 chars>.tmp"
            if temp.startswith(".") and temp.endswith(".tmp") and when(temp[1:].rsplit(".", 2)[0]):
                raise OSError(err, os.strerror(err))
            real(fd)

        monkeypatch.setattr(adact.io.os, "fsync", fsync)

    return arm
