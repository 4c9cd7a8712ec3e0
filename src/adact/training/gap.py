"""The discretization gap: what keeping only each unit's argmax costs, with no retraining.

The *discretization gap* (:func:`discretization_gap`) is the accuracy lost by keeping only the
argmax: the trained mixture model against the same model with every unit replaced by its choice
(:func:`adact.optimize`, learned PReLU slopes kept), with no retraining; only the BatchNorm
statistics are recomputed on training batches (:func:`recompute_batchnorm`), because the
activations they normalise changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from adact.choice import adact_units, model_confidence
from adact.config import ModelSpec, TrainConfig
from adact.data import DeviceLoader
from adact.errors import UserError
from adact.runs.checkpoint import read_checkpoint
from adact.runs.folder import RunFolder
from adact.runs.io import atomic_write_json
from adact.surgery import optimize
from adact.training import distributed
from adact.training.build import build_model, load_checkpoint
from adact.training.task import ImageClassification, Task, task_for

__all__ = ["BN_BATCHES", "GapResult", "add_missing_gap", "best_epoch_gap", "discretization_gap", "recompute_batchnorm"]

#: Training batches :func:`discretization_gap` uses to recompute BatchNorm statistics by default.
BN_BATCHES: int = 100


@dataclass(frozen=True)
class GapResult:
    """The task's test metric of the mixture model, of its argmax model, and their difference.

    For images the metric is accuracy (``gap < 0``: fixing the choices costs accuracy); for a
    language model it is the held-out loss (``gap > 0``: fixing the choices costs loss).
    """

    mixture: float
    argmax: float
    gap: float  # argmax - mixture
    bn_batches: int  # training batches the argmax model's BatchNorm statistics came from
    metric: str = "acc"

    @property
    def mixture_acc(self) -> float:
        return self.mixture

    @property
    def argmax_acc(self) -> float:
        return self.argmax

    def to_json(self) -> dict[str, Any]:
        """``{"mixture_acc", "argmax_acc", "gap", "bn_batches"}`` (another metric: its name, and ``"metric"``)."""
        m = self.metric
        out = {f"mixture_{m}": self.mixture, f"argmax_{m}": self.argmax, "gap": self.gap, "bn_batches": self.bn_batches}
        if m != "acc":  # image results keep the keys they always had
            out["metric"] = m
        return out


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], max_batches: int = BN_BATCHES,
                        bf16: bool = False) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` by their average over batches.

    The statistics are reset and re-estimated as a plain (cumulative) average over up to
    ``max_batches`` batches of inputs, with only the BatchNorm layers in training mode: every
    other module (e.g. RReLU, dropout) computes as it does at evaluation. ``model`` is left in
    eval mode; its parameters are not touched.

    Args:
        model: the model whose BatchNorm layers are re-estimated, in place.
        batches: ``(x, y)`` pairs, e.g. a training :class:`adact.data.DeviceLoader`.
        max_batches: use at most this many batches. Default: :data:`BN_BATCHES`.
        bf16: run the forward passes under bfloat16 autocast. Default: False.

    Returns:
        the number of batches used (0 when ``model`` has no BatchNorm layer or ``batches`` is empty).
    """
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise UserError(f"max_batches must be a positive int, got {max_batches!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    model.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average, every batch weighs the same
        m.train()
    device_type = next(model.parameters()).device.type
    used = 0
    try:
        for x, _ in batches:
            if used == max_batches:
                break
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                model(x)
            used += 1
    finally:
        for m, mom in zip(norms, saved):
            m.momentum = mom
        model.eval()
    return used


def discretization_gap(model: nn.Module, train_batches: Iterable[tuple[Tensor, Tensor]],
                       test_batches: Iterable[tuple[Tensor, Tensor]], bn_batches: int = BN_BATCHES,
                       bf16: bool = False, task: Task | None = None) -> GapResult:
    """Test accuracy of ``model`` against its argmax model, with no retraining.

    The argmax model is :func:`adact.optimize` of a copy of ``model``: every AdAct unit becomes
    the plain module of its choice (a PReLU keeps its learned slope; a per-channel unit gets its
    layer's choice, as in ConvNet-Optimized). Its BatchNorm statistics are then recomputed on
    ``bn_batches`` training batches (:func:`recompute_batchnorm`). ``model`` itself is not changed
    (it is evaluated in eval mode and left in it).

    Args:
        model: a trained model with AdAct units.
        train_batches: ``(x, y)`` training batches for the BatchNorm statistics.
        test_batches: ``(x, y)`` batches to measure accuracy on; iterated twice.
        bn_batches: training batches used for the statistics. Default: :data:`BN_BATCHES`.
        bf16: evaluate under bfloat16 autocast. Default: False.
        task: whose metric to measure (:mod:`adact.training.task`). Default: image classification.

    Returns:
        a :class:`GapResult`; ``gap = argmax - mixture``.

    Example::

        >>> r = discretization_gap(trained_net, train_loader, test_loader)
        >>> r.mixture_acc, r.argmax_acc, r.gap
        (0.913, 0.871, -0.042)
    """
    if not adact_units(model):
        raise UserError("discretization_gap needs a model with AdAct units; this one has none")
    task = task or ImageClassification()
    _, mixture = task.evaluate(model, test_batches, bf16)  # type: ignore[arg-type]
    fixed = optimize(model)
    used = recompute_batchnorm(fixed, train_batches, bn_batches, bf16)
    _, argmax = task.evaluate(fixed, test_batches, bf16)  # type: ignore[arg-type]
    return GapResult(mixture, argmax, argmax - mixture, used, task.metric)


def best_epoch_gap(run: RunFolder, spec: ModelSpec, device: torch.device, train_loader: DeviceLoader,
                   test_loader: DeviceLoader, bf16: bool, task: Task | None = None) -> dict[str, Any]:
    """The discretization gap of the best epoch's model (best.pt), for result.json."""
    model = build_model(spec, load_init=False).to(device)  # best.pt holds every weight: --init-from is not read
    ckpt = read_checkpoint(run.best, device)
    model.load_state_dict(ckpt["model"])
    return _epoch_gap(model, ckpt["epoch"], train_loader, test_loader, bf16, task)


def _epoch_gap(model: nn.Module, epoch: int, train_loader: DeviceLoader, test_loader: DeviceLoader,
               bf16: bool, task: Task | None = None) -> dict[str, Any]:
    train_loader.set_epoch(0)  # training used epochs 1..E: a fixed order of its own, for every rerun
    gap = discretization_gap(model, train_loader, test_loader, bf16=bf16, task=task).to_json()
    gap["epoch"] = epoch
    return gap


def add_missing_gap(config: TrainConfig, run: RunFolder, result: dict[str, Any], train_set: Any,
                    data: Any, device: torch.device) -> dict[str, Any]:
    """Measure the gap of a run that finished before gaps were recorded (see :mod:`adact.runs.migrate`), and add it.

    Its best-epoch confidences are added too where they are missing (a per-channel unit's need
    the checkpoint's per-channel weights).
    """
    task = task_for(config)
    loaders = task.loaders(config, data, train_set, device)
    model, ckpt = load_checkpoint(run.best, device)  # best.pt, read once for both
    model.to(device)
    result = dict(result)
    if isinstance(result.get("best_weights"), dict) and "confidence" not in result["best_weights"]:
        result["best_weights"] = {**result["best_weights"],
                                  "confidence": [c.to_json() for c in model_confidence(model)]}
    result["discretization_gap"] = _epoch_gap(model, ckpt["epoch"], loaders.train, loaders.test, config.bf16, task)
    if distributed.writer():  # [distributed] every rank measured (evaluate all-reduces); one writes
        atomic_write_json(run.result, result)
    return result
