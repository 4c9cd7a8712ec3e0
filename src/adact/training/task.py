"""The task seam: what the training loop needs to know about *what* it trains.

The loop (:mod:`adact.training.loop`) is the same for every task: batches in, a loss, an
optimizer step, an evaluation per epoch, the best epoch kept. Everything specific to a task --
its data loaders, its loss, its metric and whether higher is better, how a batch counts toward
the training metric, how a model is evaluated -- comes from one :class:`Task` object, chosen by
:func:`task_for`. Image classification (:class:`ImageClassification`, the paper's) and language
modelling (:class:`LanguageModelling`, ``text:PATH``) are the two.

The names of the metrics in ``metrics.csv`` and ``result.json`` derive from :attr:`Task.metric`
(``test_acc``, ``best_test_acc``, ...), so an image run's files are what they always were.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adact.config import TrainConfig
from adact.data import DataSplits, DeviceLoader
from adact.data.arrays import check_splits, check_trainable
from adact.data.registry import normalization
from adact.data.text import TextData, TokenBatches, TokenBlocks
from adact.errors import UserError
from adact.training import distributed
from adact.training.build import train_subset
from adact.training.evaluate import evaluate

__all__ = ["ImageClassification", "LanguageModelling", "Loaders", "Task", "better", "evaluate_tokens", "task_for"]


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

    def check(self, data: Any, config: TrainConfig) -> None:
        """Raise :class:`~adact.errors.UserError` for data this run cannot train on, before anything is written."""
        ...

    def train_set(self, config: TrainConfig, data: Any) -> Any:
        """What the training loader draws from (a subset of the images, or the training tokens)."""
        ...

    def extras(self, best: float | None) -> dict[str, Any]:
        """Extra result.json entries derived from the best epoch's metric (e.g. a perplexity)."""
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

    def check(self, data: Any, config: TrainConfig) -> None:
        check_splits(data)
        check_trainable(data)

    def train_set(self, config: TrainConfig, data: Any) -> Any:
        return train_subset(config, data)

    def extras(self, best: float | None) -> dict[str, Any]:
        return {}


class LanguageModelling:
    """Next-token prediction on a text file: token ids to logits, cross-entropy, held-out loss (lower is better).

    Batches are nanoGPT's (random windows, :class:`~adact.data.text.TokenBatches`); an "epoch"
    is one evaluation interval of ``eval_interval`` steps. The metric is the mean cross-entropy in
    nats per token over **every** non-overlapping block of the held-out split
    (:class:`~adact.data.text.TokenBlocks`), so it is deterministic; its perplexity is ``exp``.
    """

    metric = "loss"
    higher_is_better = False
    samples = "tokens"

    def loaders(self, config: TrainConfig, data: TextData, train_set: Any, device: torch.device) -> Loaders:
        shard = distributed.shard()  # [distributed] this rank's slice of every (global) batch
        assert config.block_size is not None and config.eval_interval is not None  # resolved for text
        train = TokenBatches(data.train, config.block_size, config.batch_size, config.eval_interval,  # type: ignore[arg-type]
                             config.max_iters, seed=config.seed, device=device, **shard)
        test = TokenBlocks(data.test, config.block_size, config.test_batch_size, device=device, **shard)
        val = (TokenBlocks(data.val, config.block_size, config.test_batch_size, device=device, **shard)
               if data.val is not None else None)
        return Loaders(train, test, val)  # type: ignore[arg-type]

    def loss(self, output: Tensor, target: Tensor, global_batch: int, config: TrainConfig) -> Tensor:
        # (B, T, V) logits, (B, T) targets: every token of a block counts, and DDP's scaling is per block.
        tokens = target.shape[1]
        return distributed.shard_loss(output.flatten(0, 1), target.flatten(), global_batch * tokens,
                                      config.label_smoothing)

    def count(self, output: Tensor, target: Tensor) -> float:
        with torch.no_grad():  # the training loss of this batch, weighted by its blocks (the loop divides by blocks)
            return float(F.cross_entropy(output.detach().flatten(0, 1).float(), target.flatten())) * target.shape[0]

    def evaluate(self, model: nn.Module, loader: Any, bf16: bool) -> tuple[float, float]:
        loss = evaluate_tokens(model, loader, bf16)
        return loss, loss

    def check(self, data: Any, config: TrainConfig) -> None:
        if not isinstance(data, TextData):
            raise UserError(f"{config.dataset}: a language model trains on text, got {type(data).__name__}")
        assert config.block_size is not None  # resolved for text
        data.check(config.block_size)

    def train_set(self, config: TrainConfig, data: Any) -> Any:
        return data.train

    def extras(self, best: float | None) -> dict[str, Any]:
        """result.json's perplexity of the best held-out loss."""
        return {"best_test_ppl": None if best is None else math.exp(best)}


@torch.no_grad()
def evaluate_tokens(model: nn.Module, loader: Any, bf16: bool = False) -> float:
    """Mean cross-entropy per token (nats) of ``model`` over every block of ``loader``, all ranks together."""
    model.eval()
    loss_sum, n = 0.0, 0
    device_type = next(model.parameters()).device.type
    for x, y in loader:  # (B, T) each
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)  # (B, T, V)
        loss_sum += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"))
        n += y.numel()
    if getattr(loader, "world_size", 1) > 1:  # [distributed] each rank saw its slice; the sums cover the split once
        loss_sum, n = distributed.all_sum(loss_sum, n)
    return loss_sum / max(n, 1)


def task_for(config: TrainConfig) -> Task:
    """The task of a run: language modelling for a text file (``text:PATH``), else image classification."""
    return LanguageModelling() if config.is_text else ImageClassification()


def better(task: Task, value: float, than: float | None) -> bool:
    """Whether ``value`` beats ``than`` under the task's direction (anything beats None)."""
    if than is None:
        return True
    return value > than if task.higher_is_better else value < than
