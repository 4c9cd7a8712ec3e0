"""A run folder: its files, what a finished run's result.json holds, and whether a config may use it.

A run folder holds::

    config.json     the resolved TrainConfig
    data.json       what the run trains on: classes, split sizes, skipped images and a content hash
                    (:func:`adact.data.fingerprint.data_record`)
    metrics.csv     one row per epoch: losses, accuracies, seconds, images/s, every unit's weights
    best.pt         checkpoint of the best epoch by test accuracy (the paper's selection)
    last.pt         checkpoint after the last finished epoch (resume point), with the optimizer state
    last.prev.pt    the checkpoint before it (``keep_checkpoints="all"`` only: resume point if last.pt
                    is damaged)
    result.json     summary: best / final / validation-selected accuracy, chosen activations, their
                    confidence and the discretization gap (AdAct models)
    .adact.lock     held (``fcntl.flock``) while a process writes the folder

:meth:`RunFolder.check` is the one rule for reusing a folder: a folder whose config.json,
result.json or checkpoint records other settings (:func:`adact.config.config_diff`), or whose
data.json or result.json records other data (:func:`adact.data.fingerprint.data_diff`), is never
overwritten nor resumed, because that would silently replace or mix runs (run folders are often
kept without their checkpoints, so a checkpoint's own record cannot be the only check).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from adact.config import TrainConfig, config_diff
from adact.data.fingerprint import data_diff
from adact.errors import UserError
from adact.runs.io import WriteError, read_json

__all__ = ["RESULT_KEYS", "RUN_FILES", "RunFolder", "RunMismatchError", "check_not_foreign", "result_keys"]


def result_keys(metric: str = "acc") -> tuple[str, ...]:
    """result.json keys a finished run of a task with this metric must have (see :mod:`adact.training.task`).

    Without them the run is finished again from last.pt. A result.json that names no metric
    (every run before tasks existed) is an image classifier's: ``acc``.
    """
    return ("status", f"best_test_{metric}", "best_epoch", f"final_test_{metric}", f"val_selected_test_{metric}",
            "epochs_run", "n_params", "n_adact_units", "n_adact_params", "config")


#: result.json keys a finished image-classification run must have.
RESULT_KEYS: tuple[str, ...] = result_keys("acc")


def complete(result: dict[str, Any]) -> bool:
    """Whether a done run's result.json has every key of its task's schema."""
    return all(k in result for k in result_keys(result.get("metric", "acc")))


class RunMismatchError(UserError):
    """A run folder holds a run made with other settings; it is neither resumed nor overwritten."""


class RunFolder:
    """The files of one run folder: the one place their names are spelled, and the one reuse check.

    Example::

        >>> run = RunFolder("runs/x/seed0/adact")
        >>> run.result  # PosixPath('runs/x/seed0/adact/result.json')
    """

    CONFIG = "config.json"
    DATA = "data.json"
    METRICS = "metrics.csv"
    BEST = "best.pt"
    LAST = "last.pt"
    PREV = "last.prev.pt"
    RESULT = "result.json"
    #: What ``restart=True`` discards (figures of `adact analyze` stay).
    FILES: tuple[str, ...] = (CONFIG, DATA, METRICS, BEST, LAST, PREV, RESULT)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / self.CONFIG)
    data = property(lambda self: self.path / self.DATA)
    metrics = property(lambda self: self.path / self.METRICS)
    best = property(lambda self: self.path / self.BEST)
    last = property(lambda self: self.path / self.LAST)
    prev = property(lambda self: self.path / self.PREV)
    result = property(lambda self: self.path / self.RESULT)

    def started(self) -> bool:
        """Whether a run began here (a config or a checkpoint) -- finished or not."""
        return self.last.is_file() or self.config.is_file()

    def checkpoint(self) -> Path | None:
        """best.pt, else last.pt, else None: the checkpoint choices and figures are read from."""
        return next((p for p in (self.best, self.last) if p.is_file()), None)

    def read_result(self) -> dict[str, Any] | None:
        """result.json, or None when there is none (a damaged one raises UserError naming it)."""
        return read_json(self.result) if self.result.is_file() else None

    # --- the one reuse rule -----------------------------------------------------------------

    def mismatch_error(self, diff: list[str], source: str, hint: str = "discard that run") -> RunMismatchError:
        """The error for a folder whose ``source`` file records other settings (``diff``)."""
        return RunMismatchError(f"{self.path} holds a run made with other settings ({'; '.join(diff)}; see its "
                                f"{source}); use another --out folder or the original settings, or rerun with "
                                f"--restart to {hint}")

    def check(self, config: TrainConfig, hint: str = "discard that run",
              data: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Refuse a folder of other settings or other data; return its result.json (None if it has none).

        config.json and the config inside result.json are both compared (published folders keep
        only result.json); so are data.json and result.json's ``data`` with ``data`` (the
        :func:`~adact.data.fingerprint.data_record` of the data at hand; None: not compared, nor
        is a folder made before data was recorded). ``hint`` ends the message (what ``--restart``
        would discard).

        Raises:
            RunMismatchError: a recorded setting differs from ``config``'s, or the recorded data
                from ``data`` (the message says what changed: classes, counts).
        """
        new = asdict(config)
        result = self.read_result()
        result = result if isinstance(result, dict) else None
        saved = read_json(self.config) if self.config.is_file() else None
        for source, old in ((self.CONFIG, saved), (self.RESULT, result.get("config") if result else None)):
            if isinstance(old, dict) and (diff := config_diff(old, new)):
                raise self.mismatch_error(diff, source, hint)
        if data is not None:
            recorded = read_json(self.data) if self.data.is_file() else None
            for source, old in ((self.DATA, recorded), (self.RESULT, result.get("data") if result else None)):
                if isinstance(old, dict) and (diff := data_diff(old, data)):
                    raise RunMismatchError(f"{self.path} holds a run made on other data ({'; '.join(diff)}; see "
                                           f"its {source}); use another --out folder or the original data, or rerun "
                                           f"with --restart to {hint}")
        return result

    def read_data(self) -> dict[str, Any] | None:
        """The run's data record: data.json, else result.json's ``data``; None for a folder made before either."""
        if self.data.is_file():
            record = read_json(self.data)
            return record if isinstance(record, dict) else None
        result = self.read_result()
        record = result.get("data") if isinstance(result, dict) else None
        return record if isinstance(record, dict) else None

    def ended(self, config: TrainConfig, data: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The result of this very run if it ended (done with a complete result.json, or diverged), else None.

        A diverged run is not retried by a search (the same config diverges the same way).

        Raises:
            RunMismatchError: the folder holds a run of other settings or other ``data`` (:meth:`check`).
        """
        result = self.check(config, data=data)
        if result is None:
            return None
        if result.get("status") == "diverged" or (result.get("status") == "done" and complete(result)):
            return result
        return None

    def discard(self) -> None:
        """Remove the run's files (:attr:`FILES`), as ``--restart`` does; figures stay."""
        for name in self.FILES:
            try:
                (self.path / name).unlink(missing_ok=True)
            except OSError as e:
                raise WriteError(e.errno, e.strerror, str(self.path / name)) from None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"


def check_not_foreign(folder: str | Path, ours: bool) -> None:
    """Refuse to write into a non-empty folder that adact did not make: a user's files are never overwritten.

    ``ours`` says whether ``folder`` holds adact's own files (a run's, or a search's settings
    file); a folder that does not exist, or holds nothing, is fine. Names that start with a dot
    are not counted: adact writes none there but its lock and temporaries.

    Raises:
        UserError: ``folder`` holds other files (the message names a few).
    """
    folder = Path(folder)
    if ours or not folder.is_dir():
        return
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if names:
        few = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise UserError(f"--out {folder} holds files adact did not write ({few}); adact would write its own files "
                        f"among them and replace any of the same name (table.md, config.json...): choose a new or "
                        f"empty --out folder")


#: The files of a run folder that ``restart=True`` discards (figures of `adact analyze` stay).
RUN_FILES: tuple[str, ...] = RunFolder.FILES
