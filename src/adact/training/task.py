"""The task seam: what the training loop needs to know about *what* it trains.

The loop (:mod:`adact.training.loop`) is the same for every task: batches in, a loss, an
optimizer step, an evaluation per epoch, the best epoch kept. Everything specific to a task --
its data loaders, its loss, its metric and whether higher is better, how a batch counts toward
the training metric, how a model is evaluated -- comes from one :class:`Task` object, chosen by
:func:`task_for`. Image classification (:class:`ImageClassification`, the paper's) is the only
task today; a second one (language modelling) plugs in here without editing the loop.

The names of the metrics in ``metrics.csv`` and ``result.json`` derive from :attr:`Task.metric`
(``test_acc``, ``best_test_acc``, ...), so an image run's files are what they always were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from adact.config import TrainConfig
from adact.data import DataSplits, DeviceLoader
from adact.data.registry import normalization
from adact.training import distributed
from adact.training.evaluate import evaluate

__all__ = ["ImageClassification", "Loaders", "Task", "better", "task_for"]


@dataclass
class Loaders:
    """A run's loaders: the training batches (shuffled, augmented), the test set and the optional validation set."""

    train: DeviceLoader
    test: DeviceLoader
    val: DeviceLoader | None


class Task(Protocol):
    """What the training loop asks of a task."""

    #: The metric's short name: ``acc`` gives the columns ``train_acc``, ``test_acc``, ``best_test_acc``, ...
    metric: str
    #: Whether a larger metric is better (accuracy) or a smaller one (a loss).
    higher_is_better: bool
    #: What a sample is called in throughput columns (``images_per_s``).
    samples: str

    def loaders(self, config: TrainConfig, data: DataSplits, train_set: Any, device: torch.device) -> Loaders:
        """The run's loaders on ``device``, this rank's slice of each batch under torchrun."""
        ...

    def loss(self, output: Tensor, target: Tensor, global_batch: int, config: TrainConfig) -> Tensor:
        """This rank's part of the global batch's mean loss, scaled for DDP (see :func:`distributed.shard_loss`)."""
        ...

    def count(self, output: Tensor, target: Tensor) -> float:
        """This batch's contribution to the training metric's numerator (e.g. correct predictions)."""
        ...

    def evaluate(self, model: nn.Module, loader: DeviceLoader, bf16: bool) -> tuple[float, float]:
        """``(mean loss, metric)`` of ``model`` over ``loader``, over all ranks."""
        ...


class ImageClassification:
    """The paper's task: images to class logits, cross-entropy, accuracy (higher is better)."""

    metric = "acc"
    higher_is_better = True
    samples = "images"

    def loaders(self, config: TrainConfig, data: DataSplits, train_set: Any, device: torch.device) -> Loaders:
        shard = distributed.shard()  # [distributed] this rank's slice of every (global) batch
        mean, std = normalization(config.normalize, data.in_channels)
        common = {"mean": mean, "std": std, "device": device, **shard}
        train = DeviceLoader(train_set, config.batch_size, shuffle=True, seed=config.seed, hflip=config.hflip,
                             crop_padding=config.crop_padding, **common)
        test = DeviceLoader(data.test, config.test_batch_size, **common)
        val = DeviceLoader(data.val, config.test_batch_size, **common) if data.val is not None else None
        return Loaders(train, test, val)

    def loss(self, output: Tensor, target: Tensor, global_batch: int, config: TrainConfig) -> Tensor:
        # [distributed] shard_loss is F.cross_entropy(output.float(), target) in one process.
        return distributed.shard_loss(output, target, global_batch, config.label_smoothing)

    def count(self, output: Tensor, target: Tensor) -> float:
        return int((output.argmax(1) == target).sum())  # output: (B, num_classes)

    def evaluate(self, model: nn.Module, loader: DeviceLoader, bf16: bool) -> tuple[float, float]:
        return evaluate(model, loader, bf16)


def task_for(config: TrainConfig) -> Task:
    """The task of a run (image classification for every dataset adact reads today)."""
    return ImageClassification()


def better(task: Task, value: float, than: float | None) -> bool:
    """Whether ``value`` beats ``than`` under the task's direction (anything beats None)."""
    if than is None:
        return True
    return value > than if task.higher_is_better else value < than
