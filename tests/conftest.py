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


KillAtStep = Callable[[int], Callable[[], None]]


@pytest.fixture
def kill_at_step(monkeypatch: pytest.MonkeyPatch) -> KillAtStep:
    """``disarm = kill_at_step(n)``: models that training builds raise KeyboardInterrupt at their n-th training step.

    Steps are counted over every model built while armed (so across runs); ``disarm()`` restores
    the real ``build_model``. Simulates a kill -9 between two checkpoints.
    """
    import adact.train

    real = adact.train.build_model
    steps = {"n": 0}

    def arm(n: int) -> Callable[[], None]:
        def build_with_kill(kwargs: dict[str, object]) -> torch.nn.Module:
            model = real(kwargs)

            def hook(module: torch.nn.Module, _inp: object) -> None:
                if module.training:
                    steps["n"] += 1
                    if steps["n"] == n:
                        raise KeyboardInterrupt

            model.register_forward_pre_hook(hook)
            return model

        monkeypatch.setattr(adact.train, "build_model", build_with_kill)
        return lambda: monkeypatch.setattr(adact.train, "build_model", real)

    return arm


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as dead; Linux /proc)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

