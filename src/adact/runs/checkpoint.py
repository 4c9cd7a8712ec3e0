"""Checkpoints: self-describing, read safely, written so that a killed run always resumes.

A checkpoint holds the model state, the run's config, its :class:`~adact.config.ModelSpec`
(``model_kwargs``), the epoch, the metrics so far, the best epoch's record and the RNG state, so
the model rebuilds from the file alone (:func:`adact.training.build.load_checkpoint`); last.pt,
the resume point, also holds the optimizer state (best.pt does not: evaluation and analysis do
not need it, and it is twice the model's size under AdamW). It holds only tensors and plain data
and is read with ``torch.load(weights_only=True)``: a file that holds any other Python object
(which unpickling would run as code) is refused.

A folder always recovers on a rerun: last.pt is replaced atomically, never missing nor half
written, so a run killed at any point (``kill -9`` included) resumes from its last epoch. With
``keep_checkpoints="all"`` the one before it is kept as last.prev.pt, and a last.pt damaged
afterwards (a copy cut short) falls back to it (with a :class:`ResumeWarning`). Once a run is
done, :func:`prune` keeps what ``keep_checkpoints`` asks for.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adact.config import ModelSpec, TrainConfig, config_diff
from adact.errors import UserError
from adact.runs.folder import RunFolder
from adact.runs.io import atomic_save, atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "ResumeWarning",
    "UnsafeCheckpointError",
    "best_checkpoint",
    "make_checkpoint",
    "prune",
    "read_checkpoint",
    "read_weights",
    "resume_point",
    "save_last",
]

CHECKPOINT_FORMAT = "adact-checkpoint-1"
_CHECKPOINT_KEYS = ("model", "config", "model_kwargs", "epoch", "metrics", "best", "rng")
#: What a finished run keeps of best.pt, last.pt and last.prev.pt, per ``keep_checkpoints``.
_KEPT: dict[str, tuple[str, ...]] = {"best": (RunFolder.BEST,), "last": (RunFolder.LAST,),
                                     "all": (RunFolder.BEST, RunFolder.LAST, RunFolder.PREV), "none": ()}


class CheckpointError(UserError):
    """A checkpoint file cannot be used: truncated, empty, not a torch file, or not adact's."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds Python objects that unpickling would run as code; it is never loaded."""


class ResumeWarning(UserWarning):
    """A run resumed from an older checkpoint because the newest one is damaged."""


def make_checkpoint(model: nn.Module, opt: torch.optim.Optimizer, config: TrainConfig, spec: ModelSpec,
                    epoch: int, metrics: list[dict[str, Any]], best: dict[str, Any],
                    units: dict[str, Any] | None = None) -> dict[str, Any]:
    """A self-describing checkpoint: everything a resume or an analysis needs, in plain data and tensors.

    ``units``: this epoch's AdAct units as :func:`adact.choice.weights_record` writes them, their
    recorded inputs included (what ``adact analyze`` of the checkpoint draws the functions over).
    """
    return {
        **({"units": units} if units is not None else {}),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "config": asdict(config),
        "model_kwargs": spec.to_json(),  # the model rebuilds from the file alone
        "epoch": epoch,  # epochs finished
        "metrics": metrics,
        "best": best,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "format": CHECKPOINT_FORMAT,
    }


def best_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """best.pt's content: the checkpoint without its optimizer state (weights, spec, record, RNG)."""
    return {k: v for k, v in ckpt.items() if k != "optimizer"}


def read_weights(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Read any torch file safely (``torch.load(weights_only=True)``): a checkpoint, or a plain state dict.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        UnsafeCheckpointError: the file holds Python objects other than tensors and plain data.
        CheckpointError: the file is truncated, empty or not a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise UnsafeCheckpointError(
                f"{path} was refused: it holds the Python object {found.group(1)}, which loading would run as "
                f"code (adact checkpoints hold only tensors and plain data). Do not load it; delete it unless "
                f"you know who made it and what it runs") from None
        raise CheckpointError(f"{path} is not a readable adact checkpoint (not a torch file)") from None
    except (EOFError, RuntimeError, OSError) as e:  # truncated, empty, or an unreadable zip archive
        reason = str(e).split(". ")[0] or "the file is empty"
        raise CheckpointError(f"{path} is not a readable adact checkpoint (truncated or damaged: "
                              f"{type(e).__name__}: {reason})") from None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read an adact checkpoint's contents safely (``torch.load(weights_only=True)``).

    Raises:
        FileNotFoundError: there is no file at ``path``.
        UnsafeCheckpointError: the file holds Python objects other than tensors and plain data;
            they are not unpickled, so nothing in the file runs.
        CheckpointError: the file is truncated, empty, not a torch file, or not an adact
            checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; expected a best.pt or last.pt written by `adact train`")
    ckpt = read_weights(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an adact checkpoint (missing format tag {CHECKPOINT_FORMAT!r})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a complete adact checkpoint (missing {', '.join(missing)})")
    return ckpt


def resume_point(run: RunFolder, config: TrainConfig, device: torch.device) -> dict[str, Any] | None:
    """The newest usable checkpoint of last.pt and last.prev.pt; None when neither exists.

    A damaged last.pt (a copy cut short, a full disk) falls back to last.prev.pt with a
    :class:`ResumeWarning`, losing at most two epochs; the damaged file is removed so it never
    becomes the fallback itself.
    """
    last, prev = run.last, run.prev
    problems: list[str] = []
    for path in (last, prev):
        if not path.is_file():
            continue
        try:
            ckpt = read_checkpoint(path, device)
        except UnsafeCheckpointError as e:
            raise UnsafeCheckpointError(f"{e}; rerun with --restart to start this run over") from None
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if diff := config_diff(ckpt["config"], asdict(config)):
            raise run.mismatch_error(diff, path.name)
        if "optimizer" not in ckpt:  # a best.pt copied over last.pt: its weights, but no state to train on
            problems.append(f"{path} holds no optimizer state (a best.pt?), so training cannot resume from it")
            continue
        if problems:
            warnings.warn(f"{problems[0]}; resuming from {path.name} (epoch {ckpt['epoch']}) instead",
                          ResumeWarning, stacklevel=3)
            last.unlink(missing_ok=True)
        return ckpt
    if problems:
        raise CheckpointError(f"cannot resume the run in {run.path}: {'; '.join(problems)}. To start it over, rerun "
                              f"with --restart (or delete {last.name} and {prev.name})")
    return None


def save_last(ckpt: dict[str, Any], run: RunFolder, keep_prev: bool = False) -> None:
    """Write last.pt atomically; with ``keep_prev`` keep the one before it as last.prev.pt, else remove that.

    last.pt is replaced atomically and is never missing nor half written, so a run killed at any
    point resumes from it. ``keep_prev`` (``keep_checkpoints="all"``) first hard-links the old
    one (copies it where links are not supported) to last.prev.pt, the fallback of a last.pt
    damaged afterwards; otherwise a last.prev.pt is removed once the new last.pt is written.
    """
    last, prev = run.last, run.prev
    if not keep_prev:
        atomic_save(ckpt, last)
        prev.unlink(missing_ok=True)  # the new last.pt is on disk (fsync'd): the older one is not needed
        return
    if last.is_file():
        link = prev.with_name(f".{prev.name}.hardlink.tmp")  # the temp-file pattern: removed if left behind
        try:
            link.unlink(missing_ok=True)
            os.link(last, link)
            os.replace(link, prev)
        except OSError:
            link.unlink(missing_ok=True)
            atomic_write(prev, lambda f: f.write(last.read_bytes()))
    atomic_save(ckpt, last)


def prune(run: RunFolder, keep: str) -> None:
    """Remove the checkpoints a finished run does not keep (``keep``: a :data:`adact.config.KEEP_CHECKPOINTS` name).

    ``best``: best.pt (model weights and the record, for evaluation, analysis and choices);
    ``last``: last.pt (the final state, optimizer included); ``all``: best.pt, last.pt and
    last.prev.pt; ``none``: neither (result.json keeps every number and the best epoch's weights
    record, so tables, reports and ``adact analyze`` still work). Call it only once result.json
    says the run is done: an unfinished run needs last.pt to resume.
    """
    kept = _KEPT[keep]
    for name in (RunFolder.BEST, RunFolder.LAST, RunFolder.PREV):
        if name not in kept:
            (run.path / name).unlink(missing_ok=True)
