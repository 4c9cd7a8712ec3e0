"""Shared test setup: tiny run settings, the digits fixture, failure injection, lock holders and orphan checks."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import adact.runs.io
from adact.data import DataSplits


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``adact ARGV``; it must fail as a user error: exit status 2 and one ``adact: error:`` line."""
    from adact.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adact: error: ") and "\n" not in err and "Traceback" not in err
    return err


def spy_on_backends(monkeypatch: pytest.MonkeyPatch, spied: tuple[object, ...]) -> list[str]:
    """Log which fused backends run: ``"fwd:NAME"``/``"bwd:NAME"`` for each of ``spied`` and
    ``"reference"`` for the reference sum, in the order they ran (a list the caller may clear)."""
    from adact.fused import backends

    log: list[str] = []
    for backend in spied:
        for method, tag in (("forward", "fwd"), ("backward", "bwd")):
            real = getattr(backend, method)

            def spy(*args: object, _real: Callable[..., object] = real, _tag: str = f"{tag}:{backend.name}") -> object:  # type: ignore[attr-defined]
                log.append(_tag)
                return _real(*args)

            monkeypatch.setattr(backend, method, spy)
    real_ref = backends.REFERENCE.forward
    monkeypatch.setattr(backends.REFERENCE, "forward", lambda *a: log.append("reference") or real_ref(*a))
    return log


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: tiny runs are latency-bound, and spare threads only spin on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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

        monkeypatch.setattr(adact.runs.io.os, "fsync", fsync)

    return arm


KillAtStep = Callable[[int], Callable[[], None]]


@pytest.fixture
def kill_at_step(monkeypatch: pytest.MonkeyPatch) -> KillAtStep:
    """``disarm = kill_at_step(n)``: models that training builds raise KeyboardInterrupt at their n-th training step.

    Steps are counted over every model built while armed (so across runs); ``disarm()`` restores
    the real ``build_model``. Simulates a kill -9 between two checkpoints.
    """
    import adact.training.loop

    real = adact.training.loop.build_model
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

        monkeypatch.setattr(adact.training.loop, "build_model", build_with_kill)
        return lambda: monkeypatch.setattr(adact.training.loop, "build_model", real)

    return arm


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as dead; Linux /proc)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False



# --- shared settings and fixtures --------------------------------------------------------------

#: The tiny ConvNet runs of the training tests: 256 digits in batches of 64 (4 steps per epoch),
#: small widths, the reference sum (no kernel build): about a second per epoch.
TINY: dict[str, object] = {"dataset": "digits", "channels": [4, 8, 8, 8], "max_train_samples": 256, "device": "cpu",
                           "fused": False}


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    """The bundled digits dataset, loaded once for the whole session."""
    from adact.data import load_dataset

    return load_dataset("digits")


@contextlib.contextmanager
def lock_holder(folder: Path) -> Iterator[int]:
    """Another process holding ``folder``'s lock (:func:`adact.runs.io.folder_lock`) while the block runs; yields its PID."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from adact.runs.io import folder_lock\n"
        "with folder_lock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n"), str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def wait_until_dead(pids: list[int], timeout: float = 30.0) -> bool:
    """Poll until none of ``pids`` runs (True), or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(pid_alive(p) for p in pids)


def kill_orphans(pids: list[int]) -> None:
    """SIGKILL whichever of ``pids`` still runs: a failed test must not leave orphans behind."""
    for p in pids:
        if pid_alive(p):
            os.kill(p, signal.SIGKILL)


def served_units(model: torch.nn.Module, *args: object, training: bool, backward: bool = False) -> list[str]:
    """Paths of the AdAct units that serve the calls of one forward pass (and its backward), in order."""
    from adact.unit import AdAct

    log: list[str] = []
    hooks = [u.register_forward_hook(lambda m, a, o, p=p: log.append(p))
             for p, u in model.named_modules() if isinstance(u, AdAct)]
    try:
        model.train(training)
        out = model(*args)
        if backward:
            out.float().sum().backward()
    finally:
        for h in hooks:
            h.remove()
    return log
