"""Training with the AdAct paper's protocol: one short loop you can read top to bottom.

Protocol defaults (the paper): AdamW, lr 1e-3, cross-entropy, batch 64 (test 1000), 15 epochs,
test accuracy every epoch, keep the best. Weight decay is AdamW's default 0.01; the paper calls
plain ``AdamW(model.parameters(), lr=1e-3)``, so by default it also decays the AdAct logits
(pulling the mixture towards uniform) and the PReLU slope. ``decay_adact=False`` exempts them.

A run folder holds::

    config.json     the resolved TrainConfig
    metrics.csv     one row per epoch: losses, accuracies, seconds, images/s, every unit's weights
    best.pt         checkpoint of the best epoch by test accuracy (the paper's selection)
    last.pt         checkpoint after the last finished epoch (resume point)
    last.prev.pt    the checkpoint before it (resume point if last.pt is damaged)
    result.json     summary: best / final / validation-selected accuracy, chosen activations, their
                    confidence and the discretization gap (AdAct models, see adact.confidence)
    .adact.lock     held (``fcntl.flock``) while a process writes the folder

Checkpoints are self-describing (model state, optimiser state, config, model kwargs, epoch,
metrics, RNG state): :func:`load_checkpoint` rebuilds the model from the file alone. They hold
only tensors and plain data, and are read with ``torch.load(weights_only=True)``: a file that
holds any other Python object (which unpickling would run as code) is refused.

A folder always recovers on a rerun: a damaged last.pt falls back to last.prev.pt (with a
warning), temporary files of an interrupted write are removed, a second writer is refused
while the first holds the lock, and a folder holding a run with other settings is refused
rather than overwritten (``restart=True``, the CLI's ``--restart``, discards it).
"""

from __future__ import annotations

import csv
import io
import math
import os
import pickle
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adact import distributed, sharpen
from adact.confidence import discretization_gap, model_confidence
from adact.data import DataSplits, DeviceLoader, load_dataset
from adact.data.arrays import check_splits
from adact.data.registry import normalization
from adact.dataspec import DatasetSpec
from adact.defaults import BAD_IMAGE_POLICIES, DEVICES, GRANULARITIES, NORMALIZE, OPTIMIZERS, SCHEDULES
from adact.io import (
    WriteError,
    atomic_save,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    read_json,
    remove_stale_temps,
)
from adact.model_zoo import BASELINE, check_input, create_model, parse_model, with_activation
from adact.models import DEFAULT_CHANNELS, ConvNet
from adact.surgery import adact_units, dominant_activations

__all__ = [
    "CheckpointError",
    "DivergedError",
    "RESULT_KEYS",
    "RUN_FILES",
    "ResumeWarning",
    "RunFolder",
    "TrainConfig",
    "UnsafeCheckpointError",
    "adact_weights",
    "build_model",
    "config_diff",
    "evaluate",
    "load_checkpoint",
    "lr_factor",
    "model_kwargs",
    "read_checkpoint",
    "resolve_device",
    "result_lacks_gap",
    "train",
    "unit_weights",
]

CHECKPOINT_FORMAT = "adact-checkpoint-1"
_CHECKPOINT_KEYS = ("model", "optimizer", "config", "model_kwargs", "epoch", "metrics", "best", "rng")


class RunFolder:
    """The files of one run folder: the one place their names are spelled.

    Example::

        >>> run = RunFolder("runs/x/seed0/adact")
        >>> run.result  # PosixPath('runs/x/seed0/adact/result.json')
    """

    CONFIG = "config.json"
    METRICS = "metrics.csv"
    BEST = "best.pt"
    LAST = "last.pt"
    PREV = "last.prev.pt"
    RESULT = "result.json"
    #: What ``restart=True`` discards (figures of `adact analyze` stay).
    FILES: tuple[str, ...] = (CONFIG, METRICS, BEST, LAST, PREV, RESULT)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / self.CONFIG)
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

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"


#: The files of a run folder that ``restart=True`` discards (figures of `adact analyze` stay).
RUN_FILES: tuple[str, ...] = RunFolder.FILES
#: result.json keys a finished run must have; without them the run is finished again from last.pt.
RESULT_KEYS: tuple[str, ...] = ("status", "best_test_acc", "best_epoch", "final_test_acc", "val_selected_test_acc",
                                "epochs_run", "n_params", "n_adact_units", "n_adact_params", "config")


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as config.json and inside checkpoints."""

    dataset: str = "digits"  # a name from adact.data.DATASETS, "npz:PATH" or "imagefolder:PATH"
    data_dir: str = "data"  # root folder of the named datasets
    download: bool = False  # let torchvision download fmnist / cifar10 / svhn
    fer_split: str = "paper"  # fer2013: "paper" (Training split 80/20) or "official"
    test_from_train: float | None = None  # carve the test set from train (fraction), e.g. 0.2 for FER npz
    val_fraction: float = 0.0  # fraction of train held out for validation-based model selection
    split_seed: int = 0  # seed of the fixed data splits (not the training seed)
    image_size: int | None = None  # resize images to image_size x image_size (None: as stored)
    normalize: str = "paper"  # "paper" (mean = std = 0.5) or "imagenet"
    on_bad_image: str = "skip"  # image folders: "skip" undecodable files (counted) or stop with an "error"
    cache_mb: float = 4096.0  # image folders: decode into memory up to this many MiB, else stream from disk
    model: str = "convnet"  # "convnet" (the paper's), "torchvision:NAME", "timm:NAME", "file.py:factory", "pkg.mod:f"
    pretrained: bool = False  # torchvision/timm weights, only if already on disk (nothing is downloaded)
    activation: str | list[str] = "adact"  # "adact", "baseline", a registry name (convnet), or one name per site
    granularity: str = "layer"  # AdAct logits per "layer" (paper) or per "channel"
    channels: list[int] = field(default_factory=lambda: list(DEFAULT_CHANNELS))  # conv widths (ours)
    kernel_size: int = 3  # conv kernel (ours; the paper's table is missing)
    epochs: int = 15  # passes over the training set
    batch_size: int = 64  # training images per step
    test_batch_size: int = 1000  # images per evaluation batch
    optimizer: str = "adamw"  # "adamw" (the paper's) or "sgd" (momentum 0.9, Nesterov)
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01  # AdamW's decoupled weight decay (torch default), or SGD's L2 penalty
    schedule: str = "none"  # "none" (constant lr, the paper's) or "cosine" (to 0 at the last step)
    warmup_epochs: float = 0.0  # linear warm-up from 0 over this many epochs (per step)
    label_smoothing: float = 0.0  # cross-entropy label smoothing (the paper: none)
    decay_adact: bool = True  # also decay AdAct logits and PReLU slopes (plain AdamW does)
    hflip: bool = False  # random horizontal flips (off: the paper uses no augmentation)
    crop_padding: int = 0  # random-crop padding in pixels (0 = off)
    seed: int = 0  # seeds init, shuffling, RReLU noise
    device: str = "auto"  # auto | cpu | cuda | mps
    bf16: bool = False  # bf16 autocast for forward passes
    compile: bool = False  # torch.compile the model
    fused: bool = True  # AdAct's fused kernel (False: the reference sum)
    max_train_samples: int | None = None  # subsample the training set (smoke tests only)
    # Sharpening (adact.sharpen; off by default, the paper has none). Settings older configs lack
    # count as these defaults (config_diff), so adding one never orphans a run folder.
    temperature_schedule: list[float] | None = None  # [T0, T1]: AdAct softmax temperature annealed T0 -> T1
    entropy_weight: float = 0.0  # lambda: lambda * mean normalised entropy of the mixtures joins the loss
    adact_lr_mult: float = 1.0  # learning rate of the AdAct logits relative to lr

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.test_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {self.batch_size}, {self.test_batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; valid: {', '.join(DEVICES)}")
        for name, value, valid in (("granularity", self.granularity, GRANULARITIES),
                                   ("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                   ("normalize", self.normalize, NORMALIZE),
                                   ("on_bad_image", self.on_bad_image, BAD_IMAGE_POLICIES)):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        self.dataset = str(DatasetSpec.parse(self.dataset))  # one spelling of a dataset everywhere
        kind, _ = parse_model(self.model)
        if kind == "convnet":
            self.model = "convnet"
        elif isinstance(self.activation, str) and self.activation not in ("adact", BASELINE):
            raise ValueError(f"--model {self.model} trains 'adact', 'baseline' or one activation per AdAct site, "
                             f"not {self.activation!r}")
        self.channels = [int(c) for c in self.channels]
        if self.temperature_schedule is not None:
            self.temperature_schedule = sharpen.parse_temperature_schedule(self.temperature_schedule)
        if not (math.isfinite(self.entropy_weight) and self.entropy_weight >= 0):
            raise ValueError(f"entropy_weight must be finite and >= 0, got {self.entropy_weight}")
        if not (math.isfinite(self.adact_lr_mult) and self.adact_lr_mult > 0):
            raise ValueError(f"adact_lr_mult must be finite and > 0, got {self.adact_lr_mult}")
        acts = [self.activation] if isinstance(self.activation, str) else list(self.activation)
        sharpening = {"temperature_schedule": self.temperature_schedule is not None,
                      "entropy_weight": self.entropy_weight != 0.0, "adact_lr_mult": self.adact_lr_mult != 1.0}
        if "adact" not in acts and any(sharpening.values()):
            # A typo-level mistake (sharpening a ReLU run) would otherwise train the plain model silently.
            given = ", ".join(k for k, v in sharpening.items() if v)
            raise ValueError(f"{given} sharpen AdAct mixtures, but activation {self.activation!r} has no AdAct "
                             f"unit; use activation 'adact' or drop {given}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def load_data(self, quiet: bool = False) -> DataSplits:
        """This run's dataset, with its splits and image options applied."""
        return load_dataset(self.dataset, self.data_dir, self.download, val_fraction=self.val_fraction,
                            seed=self.split_seed, fer_split=self.fer_split, test_from_train=self.test_from_train,
                            image_size=self.image_size, on_bad_image=self.on_bad_image, cache_mb=self.cache_mb,
                            quiet=quiet)


#: Settings that change how data is held, not what is trained: a run resumes across them.
_NEUTRAL_KEYS = frozenset({"cache_mb"})
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig) if not callable(f.default_factory)}


class DivergedError(RuntimeError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: truncated, empty, not a torch file, or not adact's."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds Python objects that unpickling would run as code; it is never loaded."""


class ResumeWarning(UserWarning):
    """A run resumed from an older checkpoint because the newest one is damaged."""


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key old -> new"`` for every setting of ``new`` that ``old`` has with another value.

    A setting ``old`` lacks counts as its default (it was saved before the setting existed, so
    that is what the run was trained with), so such a run folder still matches a config that
    leaves it at the default.
    """
    return [f"{k} {old.get(k, _DEFAULTS.get(k))!r} -> {new[k]!r}" for k in new
            if k not in _NEUTRAL_KEYS and old.get(k, _DEFAULTS.get(k)) != new[k]]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an unavailable explicit choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available; use --device auto or cpu")
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; valid: {', '.join(DEVICES)}")
    return torch.device(name)


def model_kwargs(config: TrainConfig, data: DataSplits) -> dict[str, Any]:
    """The model's constructor arguments; stored in checkpoints so a model rebuilds from the file."""
    if config.model != "convnet":
        return {"model": config.model, "in_channels": data.in_channels, "num_classes": data.num_classes,
                "image_size": list(data.image_size), "activation": config.activation,
                "granularity": config.granularity, "fused": config.fused, "pretrained": config.pretrained}
    return {
        "in_channels": data.in_channels,
        "num_classes": data.num_classes,
        "image_size": list(data.image_size),
        "activation": "relu" if config.activation == BASELINE else config.activation,  # the ConvNet as written
        "channels": list(config.channels),
        "kernel_size": config.kernel_size,
        "adact_kwargs": {"granularity": config.granularity, "fused": config.fused},
    }


def build_model(kwargs: dict[str, Any]) -> nn.Module:
    """The model of :func:`model_kwargs`: the paper's ConvNet, or a named model in its run's variant."""
    kw = dict(kwargs)
    kw["image_size"] = tuple(kw["image_size"])
    spec = kw.pop("model", "convnet")
    if spec == "convnet":
        return ConvNet(**kw)
    model = create_model(spec, num_classes=kw["num_classes"], in_channels=kw["in_channels"],
                         pretrained=kw["pretrained"])
    example = torch.zeros(2, kw["in_channels"], *kw["image_size"]) if kw["granularity"] == "channel" else None
    model = with_activation(model, kw["activation"], granularity=kw["granularity"], fused=kw["fused"],
                            example_inputs=example)
    check_input(model, spec, kw["in_channels"], kw["image_size"], kw["num_classes"])
    return model


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    return sharpen.param_groups(model, config.weight_decay, config.decay_adact, config.adact_lr_mult, config.lr)


def adact_weights(model: nn.Module) -> dict[str, Any]:
    """Choices and weights of a model's AdAct units, in layer order.

    Returns ``paths``, ``candidates``, ``choices``, ``choice_weights``, ``raw`` / ``mix``
    (``layers x candidates``; channel means for per-channel units) and ``confidence`` (one
    :class:`adact.confidence.UnitConfidence` dict per unit). Choices come from
    :func:`adact.surgery.dominant_activations`.
    """
    units = adact_units(model)
    dom = dominant_activations(model)
    raw, mix = [], []
    for _, unit in units:
        r, m = unit.raw_weights(), unit.mixture()
        if m.dim() == 2:
            r, m = r.mean(0), m.mean(0)
        raw.append(r.tolist())
        mix.append(m.tolist())
    return {"paths": [p for p, _ in units], "candidates": list(units[0][1].candidates) if units else [],
            "choices": [n for n, _ in dom.values()], "choice_weights": [w for _, w in dom.values()],
            "raw": raw, "mix": mix, "confidence": [c.to_json() for c in model_confidence(model)]}


def unit_weights(model: nn.Module) -> dict[str, float]:
    """Flat ``{"mix/<path>/<name>": softmax weight, "raw/<path>/<name>": logit}`` for every unit.

    Per-channel units report the channel mean of each.
    """
    out: dict[str, float] = {}
    for path, unit in adact_units(model):
        mix, raw = unit.mixture(), unit.raw_weights()
        if mix.dim() == 2:
            mix, raw = mix.mean(0), raw.mean(0)
        for name, m, r in zip(unit.candidates, mix.tolist(), raw.tolist()):
            out[f"mix/{path}/{name}"] = m
            out[f"raw/{path}/{name}"] = r
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, bf16: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader``."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    device_type = next(model.parameters()).device.type
    for x, y in loader:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += y.numel()
    if getattr(loader, "world_size", 1) > 1:  # [distributed] each rank saw its slice; the sums cover the set once
        loss_sum, correct, n = distributed.all_sum(loss_sum, correct, n)
    return loss_sum / max(n, 1), correct / max(n, 1)


def _write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _checkpoint(model: nn.Module, opt: torch.optim.Optimizer, config: TrainConfig, mkw: dict[str, Any],
                epoch: int, metrics: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "config": asdict(config),
        "model_kwargs": mkw,
        "epoch": epoch,  # epochs finished
        "metrics": metrics,
        "best": best,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "format": CHECKPOINT_FORMAT,
    }


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
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
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
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an adact checkpoint (missing format tag {CHECKPOINT_FORMAT!r})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a complete adact checkpoint (missing {', '.join(missing)})")
    return ckpt


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint from the file alone; returns ``(model, checkpoint)``.

    The file is read with :func:`read_checkpoint`, so a checkpoint holding code is refused
    (:class:`UnsafeCheckpointError`) without running it.
    """
    ckpt = read_checkpoint(path, map_location)
    # The file holds every weight: a named model is rebuilt without its pretrained ones (which may be gone).
    kwargs = {**ckpt["model_kwargs"], "pretrained": False} if "model" in ckpt["model_kwargs"] else ckpt["model_kwargs"]
    model = build_model(kwargs)
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def _summary(config: TrainConfig, metrics: list[dict[str, Any]], model: nn.Module, status: str,
             message: str, wall_s: float, selected: dict[str, Any]) -> dict[str, Any]:
    best = max(metrics, key=lambda r: r["test_acc"]) if metrics else None
    has_val = bool(metrics) and metrics[0].get("val_acc") is not None
    val_best = max(metrics, key=lambda r: r["val_acc"]) if has_val else None
    units = adact_units(model)
    return {
        "status": status,  # "done" or "diverged"
        "message": message,
        "dataset": config.dataset,
        "activation": config.activation,
        "seed": config.seed,
        "epochs_run": len(metrics),
        "best_test_acc": best["test_acc"] if best else None,  # the paper's number (optimistic)
        "best_epoch": best["epoch"] if best else None,
        "final_test_acc": metrics[-1]["test_acc"] if metrics else None,
        "val_selected_test_acc": val_best["test_acc"] if val_best else None,  # honest selection
        "val_best_epoch": val_best["epoch"] if val_best else None,
        "dominant": {k: [n, w] for k, (n, w) in dominant_activations(model).items()},  # last epoch
        "best_weights": selected.get("weights"),  # choices and weights at the best epoch (see adact_weights)
        "val_best_weights": selected.get("val_weights"),  # ... at the best epoch by validation accuracy
        "weights": unit_weights(model),
        "n_adact_units": len(units),
        "n_adact_params": sum(p.numel() for _, u in units for p in u.parameters()),
        "n_params": sum(p.numel() for p in model.parameters()),
        "wall_s": wall_s,
    }


def _check_folder(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The result of this very run if it finished, None if it did not; refuse another run's folder.

    A folder whose config.json or result.json records other settings is never overwritten:
    that would silently replace a finished run (run folders are often kept without their
    checkpoints, so the checkpoints' own check cannot catch it).
    """
    new = asdict(config)
    run = RunFolder(out)
    result = read_json(run.result) if run.result.is_file() else None
    saved = read_json(run.config) if run.config.is_file() else None
    for name, old in ((run.RESULT, result.get("config") if isinstance(result, dict) else None),
                      (run.CONFIG, saved)):
        if isinstance(old, dict) and (diff := config_diff(old, new)):
            raise ValueError(f"{out} holds a run made with other settings ({'; '.join(diff)}; see its {name}); "
                             f"use another --out folder, or rerun with --restart to discard that run")
    if isinstance(result, dict) and result.get("status") == "done" and all(k in result for k in RESULT_KEYS):
        return result
    return None


def _discard_run(out: Path) -> None:
    for name in RUN_FILES:
        try:
            (out / name).unlink(missing_ok=True)
        except OSError as e:
            raise WriteError(e.errno, e.strerror, str(out / name)) from None


def _resume_point(out: Path, config: TrainConfig, device: torch.device) -> dict[str, Any] | None:
    """The newest usable checkpoint of last.pt and last.prev.pt; None when neither exists.

    A damaged last.pt (a copy cut short, a full disk) falls back to last.prev.pt with a
    :class:`ResumeWarning`, losing at most two epochs; the damaged file is removed so it never
    becomes the fallback itself.
    """
    last, prev = RunFolder(out).last, RunFolder(out).prev
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
            raise ValueError(f"{out} holds a run made with other settings ({'; '.join(diff)}; see its {path.name}); "
                             f"use another --out folder, or rerun with --restart to discard that run")
        if problems:
            warnings.warn(f"{problems[0]}; resuming from {path.name} (epoch {ckpt['epoch']}) instead",
                          ResumeWarning, stacklevel=3)
            last.unlink(missing_ok=True)
        return ckpt
    if problems:
        raise CheckpointError(f"cannot resume the run in {out}: {'; '.join(problems)}. To start it over, rerun "
                              f"with --restart (or delete {last.name} and {prev.name})")
    return None


def _save_last(ckpt: dict[str, Any], out: Path) -> None:
    """Write last.pt, keeping the one before it as last.prev.pt (the fallback of a damaged last.pt).

    last.pt is replaced atomically and is never missing: the old one is first hard-linked
    (copied where links are not supported) to last.prev.pt.
    """
    last, prev = RunFolder(out).last, RunFolder(out).prev
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


def _train_set(config: TrainConfig, data: DataSplits) -> Any:
    train_set = data.train
    if config.max_train_samples is not None and config.max_train_samples < len(train_set):
        g = torch.Generator().manual_seed(config.split_seed)
        keep = torch.randperm(len(train_set), generator=g)[: config.max_train_samples].sort().values
        train_set = train_set.subset(keep)
    return train_set


def train(config: TrainConfig, out_dir: str | Path, *, data: DataSplits | None = None,
          quiet: bool = False, restart: bool = False, sync_bn: bool = False) -> dict[str, Any]:
    """Train one model with ``config`` into ``out_dir``; resumable, returns the result summary.

    A finished run (result.json with status "done") is returned without training (an AdAct run
    finished before the discretization gap was recorded gets it measured on its best.pt). An
    interrupted one resumes from last.pt (or last.prev.pt, if last.pt is damaged) and ends
    with the same numbers as an uninterrupted run on CPU. A NaN/inf loss stops the run, keeps
    the last good checkpoint, writes result.json with status "diverged" and raises
    :class:`DivergedError`.

    Everything is checked before the folder is touched: the device, the data (non-empty
    splits, labels within the classes) and the model (e.g. kernel size vs image size). The
    folder is then locked for the whole run (a second writer gets an error naming this
    process), and a folder holding a run with other settings is refused. ``restart=True``
    discards the folder's run files (:data:`RUN_FILES`) and trains from scratch.

    Under ``torchrun`` every rank calls this with the same arguments (see
    :mod:`adact.distributed`): rank 0 alone locks and writes the folder, every rank resumes
    from its checkpoint, and ``sync_bn`` synchronises BatchNorm over the ranks (a no-op in one
    process, whose BatchNorm already sees the whole batch).
    """
    out = Path(out_dir)
    if not restart and out.is_dir() and (prev := _check_folder(out, config)) is not None:
        if not result_lacks_gap(prev, out):
            return prev
    device = distributed.setup(resolve_device(config.device))  # [distributed] cuda:LOCAL_RANK, NCCL / gloo
    if data is None:
        data = config.load_data(quiet)
    check_splits(data)
    train_set = _train_set(config, data)
    torch.manual_seed(config.seed)
    mkw = model_kwargs(config, data)
    model = build_model(mkw).to(device)  # raises for impossible settings, before anything is written
    if sync_bn:  # [distributed]
        model = distributed.convert_sync_bn(model, device)
    with distributed.as_writer(folder_lock(out)):  # [distributed] only rank 0 locks and prepares the folder
        prev = None
        if distributed.writer():
            remove_stale_temps(out)
            if restart:
                _discard_run(out)
            else:
                prev = _check_folder(out, config)  # finished (maybe while we prepared)
        prev = distributed.broadcast_object(prev)  # [distributed] every rank takes rank 0's branch
        if prev is not None:
            if result_lacks_gap(prev, out):
                return _add_gap(config, out, prev, train_set, data, device)
            return prev
        return _run(config, out, data, train_set, model, mkw, device, quiet, sync_bn)


def result_lacks_gap(result: dict[str, Any], out: str | Path) -> bool:
    """Whether a finished AdAct run predates the discretization gap and its best.pt can still give it.

    :func:`train` then measures the gap on best.pt and adds it to result.json, without training.
    """
    return (result.get("status") == "done" and bool(result.get("n_adact_units"))
            and "discretization_gap" not in result and RunFolder(out).best.is_file())


def _norm(config: TrainConfig, data: DataSplits, device: torch.device) -> dict[str, Any]:
    """The DeviceLoader arguments every loader of a run shares: its normalization and device."""
    mean, std = normalization(config.normalize, data.in_channels)
    return {"mean": mean, "std": std, "device": device}


def _loaders(config: TrainConfig, data: DataSplits, train_set: Any,
             device: torch.device) -> tuple[DeviceLoader, DeviceLoader]:
    shard = distributed.shard()  # [distributed] this rank's slice of every (global) batch
    norm = _norm(config, data, device)
    train_loader = DeviceLoader(train_set, config.batch_size, shuffle=True, seed=config.seed,
                                hflip=config.hflip, crop_padding=config.crop_padding, **norm, **shard)
    return train_loader, DeviceLoader(data.test, config.test_batch_size, **norm, **shard)


def _add_gap(config: TrainConfig, out: Path, result: dict[str, Any], train_set: Any, data: DataSplits,
             device: torch.device) -> dict[str, Any]:
    """Measure the gap of a run that finished before gaps were recorded, and add it to its result.json.

    Its best-epoch confidences are added too where they are missing (a per-channel unit's need
    the checkpoint's per-channel weights).
    """
    train_loader, test_loader = _loaders(config, data, train_set, device)
    model, ckpt = load_checkpoint(RunFolder(out).best, device)
    mkw = ckpt["model_kwargs"]
    result = dict(result)
    if isinstance(result.get("best_weights"), dict) and "confidence" not in result["best_weights"]:
        result["best_weights"] = {**result["best_weights"],
                                  "confidence": [c.to_json() for c in model_confidence(model)]}
    result["discretization_gap"] = _best_epoch_gap(out, mkw, device, train_loader, test_loader, config.bf16)
    if distributed.writer():  # [distributed] every rank measured (evaluate all-reduces); one writes
        atomic_write_json(RunFolder(out).result, result)
    return result


def _run(config: TrainConfig, out: Path, data: DataSplits, train_set: Any, model: nn.Module, mkw: dict[str, Any],
         device: torch.device, quiet: bool, sync_bn: bool = False) -> dict[str, Any]:
    result_path = out / RunFolder.RESULT
    write = distributed.writer()  # [distributed] rank 0 writes files and prints; a single process always
    quiet = quiet or not write
    shard = distributed.shard()  # [distributed] this rank's slice of every (global) batch
    opt = _optimizer(model, config)
    # Each group's own peak lr (the AdAct logits' may be scaled by adact_lr_mult), taken before a
    # checkpoint's state is loaded: the warm-up/cosine factor multiplies these every step.
    base_lrs = [float(g["lr"]) for g in opt.param_groups]
    train_loader, test_loader = _loaders(config, data, train_set, device)
    val_loader = (DeviceLoader(data.val, config.test_batch_size, **_norm(config, data, device), **shard)
                  if data.val is not None else None)

    metrics: list[dict[str, Any]] = []
    best: dict[str, Any] = {"test_acc": -1.0, "epoch": 0}
    start_epoch = 0
    ckpt = _resume_point(out, config, device)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        metrics, best, start_epoch = ckpt["metrics"], ckpt["best"], ckpt["epoch"]
        torch.set_rng_state(ckpt["rng"])
        if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        if write:
            print(f"{out}: resumed from epoch {start_epoch} of {config.epochs}", flush=True)
    if write:
        atomic_write_json(RunFolder(out).config, asdict(config))

    step_model = torch.compile(model) if config.compile else model
    step_model = distributed.wrap(step_model, device)  # [distributed] DDP; unchanged in one process
    has_units = bool(adact_units(model))
    steps = len(train_loader)
    schedule = (sharpen.TemperatureSchedule(*config.temperature_schedule, total_steps=config.epochs * steps)
                if config.temperature_schedule and has_units else None)
    wall0 = time.perf_counter() - sum(r["seconds"] for r in metrics)
    status, message = "done", ""
    for epoch in range(start_epoch + 1, config.epochs + 1):
        model.train()
        train_loader.set_epoch(epoch)
        distributed.seed_epoch(config.seed, epoch)  # [distributed] per-rank RReLU noise, resumable
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        step = (epoch - 1) * steps  # the schedules are functions of the step, so a resumed run needs no state
        label = f"{DatasetSpec.parse(config.dataset).display} {_act_label(config)}"
        bar = _progress(len(train_loader), f"{label} ep {epoch}/{config.epochs}", quiet)
        for x, y in train_loader:
            if schedule is not None:
                sharpen.set_temperature(model, schedule(step))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                logits = step_model(x)  # (B, num_classes)
            # [distributed] shard_loss is F.cross_entropy(logits.float(), y) in one process; on N ranks
            # it is scaled so DDP's average is the global batch's gradient, and global_mean (the
            # global batch's loss) is NaN on every rank if it is on any, so all ranks stop together.
            # The entropy penalty depends only on the (replicated) logits: the same on every rank.
            ce = distributed.shard_loss(logits, y, train_loader.global_batch, config.label_smoothing)
            batch_loss = distributed.global_mean(ce)
            loss = ce + config.entropy_weight * sharpen.mixture_entropy(model) if config.entropy_weight else ce
            if not (torch.isfinite(batch_loss) and torch.isfinite(loss)):
                status = "diverged"
                kept = (f"kept the checkpoint of epoch {epoch - 1}" if epoch > 1
                        else "no checkpoint kept (it diverged before finishing an epoch)")
                message = f"loss became {batch_loss.item()} in epoch {epoch}; {kept}"
                break
            factor = lr_factor(config, step, steps)
            for group, base_lr in zip(opt.param_groups, base_lrs):
                group["lr"] = base_lr * factor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += batch_loss.item() * train_loader.global_batch  # cross-entropy only, as without a penalty
            correct += int((logits.argmax(1) == y).sum())
            seen += train_loader.global_batch
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(_postfix(model, seen, time.perf_counter() - t0), refresh=False)
        if bar is not None:
            bar.close()
        if status == "diverged":
            break
        seconds = time.perf_counter() - t0
        correct = int(distributed.all_sum(correct)[0])  # [distributed] this rank counted its slices only
        distributed.sync_buffers(model)  # [distributed] every rank evaluates rank 0's (the saved) model
        eval_model = distributed.unwrap(step_model)  # [distributed] no DDP hooks: ranks differ in batch counts
        test_loss, test_acc = evaluate(eval_model, test_loader, config.bf16)
        val_loss, val_acc = evaluate(eval_model, val_loader, config.bf16) if val_loader else (None, None)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "seconds": seconds,  # training time of this epoch, evaluation excluded
            "images_per_s": seen / seconds,
            **(_sharpness(model) if has_units else {}),
            **unit_weights(model),
        }
        metrics.append(row)
        if not quiet:
            val = f" val {val_acc:.4f}" if val_acc is not None else ""
            print(f"epoch {epoch:>2}: loss {row['train_loss']:.4f} test {test_acc:.4f}{val} "
                  f"({row['images_per_s']:.0f} img/s)", flush=True)
        improved = test_acc > best["test_acc"]
        if improved:
            # The weights of the best epoch travel in result.json too, so the choices can be read
            # (and ConvNet-Optimized built) from a run folder whose checkpoints were not kept.
            best = {**best, "test_acc": test_acc, "epoch": epoch, "weights": adact_weights(model)}
        if val_acc is not None and val_acc > best.get("val_acc", -1.0):
            # The honest selection: the weights of the epoch the validation split picks.
            best = {**best, "val_acc": val_acc, "val_epoch": epoch, "val_weights": adact_weights(model)}
        ckpt = _checkpoint(model, opt, config, mkw, epoch, metrics, best)
        if improved and write:
            atomic_save(ckpt, RunFolder(out).best)
        # last.pt is the resume point, so it is written after metrics and best are consistent.
        if write:
            _write_metrics_csv(RunFolder(out).metrics, metrics)
            _save_last(ckpt, out)

    result = _summary(config, metrics, model, status, message, time.perf_counter() - wall0, best)
    if status == "done" and has_units:
        distributed.barrier()  # [distributed] rank 0's last best.pt is on disk before any rank reads it
        result["discretization_gap"] = _best_epoch_gap(out, mkw, device, train_loader, test_loader, config.bf16)
    result["config"] = asdict(config)
    result["processes"] = shard["world_size"]  # [distributed] how it ran, not what it is: not in config
    result["sync_bn"] = sync_bn and shard["world_size"] > 1
    if write:
        atomic_write_json(result_path, result)
    distributed.barrier()  # [distributed] the next run (reproduce) reads result.json on every rank
    if status == "diverged":
        raise DivergedError(f"{out}: {message}")
    return result


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The multiple of ``config.lr`` at optimizer step ``step`` (0-based): warm-up, then the schedule.

    Warm-up rises linearly over ``warmup_epochs`` (reaching 1 at its last step); ``cosine`` then
    falls to 0 at the end of the last epoch. With the defaults it is always 1 (the paper's).
    """
    total = config.epochs * steps_per_epoch
    warm = round(config.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    return 1.0


def _sharpness(model: nn.Module) -> dict[str, float]:
    """metrics.csv columns of an AdAct model: its softmax temperature and mean normalised entropy."""
    with torch.no_grad():
        entropy = float(sharpen.mixture_entropy(model))
    return {"temperature": float(adact_units(model)[0][1].temperature), "mixture_entropy": entropy}


def _best_epoch_gap(out: Path, mkw: dict[str, Any], device: torch.device, train_loader: DeviceLoader,
                    test_loader: DeviceLoader, bf16: bool) -> dict[str, Any]:
    """The discretization gap of the best epoch's model (best.pt), for result.json."""
    model = build_model(mkw).to(device)
    ckpt = read_checkpoint(RunFolder(out).best, device)
    model.load_state_dict(ckpt["model"])
    train_loader.set_epoch(0)  # training used epochs 1..E: a fixed order of its own, for every rerun
    gap = discretization_gap(model, train_loader, test_loader, bf16=bf16).to_json()
    gap["epoch"] = ckpt["epoch"]
    return gap


def _act_label(config: TrainConfig) -> str:
    a = config.activation
    return a if isinstance(a, str) else "optimized"


def _progress(total: int, desc: str, quiet: bool) -> Any:
    # A bar redraws one line; in a redirected log it becomes one very long line per epoch,
    # and the per-epoch summary line already says everything.
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _postfix(model: nn.Module, seen: int, seconds: float) -> str:
    chosen = [u.dominant() for _, u in adact_units(model)]
    short = " ".join(c if isinstance(c, str) else "per-ch" for c in chosen)
    return f"{seen / max(seconds, 1e-9):.0f} img/s" + (f" | {short}" if short else "")

