"""In-memory splits (:class:`ArrayDataset`, :class:`DataSplits`) and seeded stratified carving."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from adact.errors import UserError

__all__ = ["MAX_CLASSES", "ArrayDataset", "DataSplits", "RawSplits", "as_split", "check_splits", "check_trainable",
           "stratified_split"]

MAX_CLASSES = 100_000
"""The most classes a dataset may have: a stray label of 10**9 is a mistake, not a 10**9-way
classifier, and must not allocate memory for one."""


@dataclass(repr=False)
class ArrayDataset:
    """One split held in memory: ``x`` uint8 ``(N, C, H, W)`` and ``y`` int64 ``(N,)``.

    Keeping whole splits as uint8 tensors (4x smaller than float32) lets
    :class:`~adact.data.DeviceLoader` put them on the accelerator once and batch by indexing,
    with no per-sample Python or PIL work.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise TypeError(f"ArrayDataset needs torch tensors, got x={type(self.x).__name__}, "
                            f"y={type(self.y).__name__}; convert with torch.from_numpy")
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise UserError(f"ArrayDataset.x must be a uint8 tensor of shape (N, C, H, W); got "
                             f"{self.x.dtype} with shape {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.dim() != 1:
            raise UserError(f"ArrayDataset.y must be an int64 tensor of shape (N,); got "
                             f"{self.y.dtype} with shape {tuple(self.y.shape)}")
        if len(self.x) != len(self.y):
            raise UserError(f"ArrayDataset has {len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: np.ndarray | torch.Tensor | Sequence[int]) -> ArrayDataset:
        """A new split holding the samples at ``indices`` (copied, in the given order)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ArrayDataset(self.x[idx].contiguous(), self.y[idx].contiguous())

    def class_counts(self, num_classes: int | None = None) -> list[int]:
        """Number of samples per label ``0..num_classes-1``."""
        n = num_classes if num_classes is not None else (int(self.y.max()) + 1 if len(self) else 0)
        return torch.bincount(self.y, minlength=n).tolist()

    def __repr__(self) -> str:
        c, h, w = self.x.shape[1:]
        return f"ArrayDataset(n={len(self)}, image=({c}, {h}, {w}), dtype=uint8)"


@dataclass(repr=False)
class DataSplits:
    """A named dataset: train / test (/ optional validation) splits plus provenance.

    ``info`` records where the data came from and how it was split (source path, protocol,
    seed, counts, notes) so that a run's results can be traced back to its exact data.
    """

    name: str
    train: Any  # ArrayDataset, or adact.data.imagefolder.FileSplit for images streamed from disk
    test: Any
    val: Any | None
    classes: list[str]
    info: dict[str, object] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return int(self.train.image_shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.image_shape[1]), int(self.train.image_shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        val = len(self.val) if self.val is not None else 0
        return (f"DataSplits(name={self.name!r}, train={len(self.train)}, val={val}, test={len(self.test)}, "
                f"image=({self.in_channels}, {self.image_size[0]}, {self.image_size[1]}), "
                f"classes={self.num_classes})")


def check_splits(data: DataSplits) -> None:
    """Raise ValueError unless ``data`` can be trained and evaluated on.

    Checks: non-empty train and test splits, between 1 and :data:`MAX_CLASSES` classes, and
    every label in ``0..num_classes-1``. What a classifier needs besides is :func:`check_trainable`'s.
    """
    if len(data.train) == 0:
        raise UserError(f"{data.name}: the training split is empty")
    if len(data.test) == 0:
        raise UserError(f"{data.name}: the test split is empty; a run is evaluated on it after every epoch")
    if not 1 <= data.num_classes <= MAX_CLASSES:
        raise UserError(f"{data.name}: {data.num_classes} classes; adact supports 1 to {MAX_CLASSES:,}")
    for split_name, split in (("train", data.train), ("test", data.test), ("val", data.val)):
        if split is None or len(split) == 0:
            continue
        lo, hi = int(split.y.min()), int(split.y.max())
        if lo < 0 or hi >= data.num_classes:
            raise UserError(f"{data.name}: {split_name} labels span {lo}..{hi}, outside the "
                             f"{data.num_classes} classes 0..{data.num_classes - 1}")


def check_trainable(data: DataSplits) -> None:
    """Raise :class:`~adact.errors.UserError` unless a classifier can learn ``data`` (after :func:`check_splits`).

    Refused: one class (the cross-entropy is 0 from the first step, no gradient reaches any unit,
    and the "choices" would be the initial mixture's), and classes without training images
    (a class the model never sees cannot be learned).
    """
    if data.num_classes == 1:
        raise UserError(f"{data.name}: one class ({data.classes[0]!r}); a classifier needs at least 2 classes, "
                        f"with one there is nothing to learn and nothing to search")
    counts = torch.bincount(data.train.y, minlength=data.num_classes).tolist()
    empty = [name for name, n in zip(data.classes, counts) if n == 0]
    if empty:
        few = ", ".join(repr(c) for c in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise UserError(f"{data.name}: {len(empty)} of {data.num_classes} classes have no training images ({few}); "
                        f"a class the model never sees cannot be learned: remove it (its folder, or its name "
                        f"and labels) or add training images")


RawSplits = tuple[ArrayDataset, ArrayDataset, list[str], dict[str, object]]
"""What each source loader returns: train, test, class names, provenance info."""


def as_split(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> ArrayDataset:
    """Wrap uint8 ``(N, C, H, W)`` images and integer labels, copying only when needed."""
    xt = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x.contiguous()
    yt = torch.from_numpy(np.asarray(y).astype(np.int64, copy=False)) if isinstance(y, np.ndarray) \
        else y.to(torch.int64)
    return ArrayDataset(xt, yt.contiguous())


def stratified_split(labels: np.ndarray | torch.Tensor, fraction: float, seed: int,
                     *, what: str = "holdout") -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into ``(keep, holdout)`` with ``holdout`` ~ ``fraction`` of each class.

    This is scikit-learn's ``train_test_split(..., test_size=fraction, stratify=labels,
    random_state=seed)``, the usual way an "80/20 stratified split" is made, so a split here
    can be reproduced outside adact. The holdout has ``ceil(fraction * N)`` samples. Both index
    arrays are returned sorted so the splits keep the source order.

    Raises:
        ValueError: ``fraction`` is not in (0, 1), or some class is too small to be split.
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"{what} fraction must be in (0, 1), got {fraction}")
    from sklearn.model_selection import train_test_split  # deferred: sklearn import is slow

    y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    idx = np.arange(len(y))
    try:
        keep, hold = train_test_split(idx, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as e:
        counts = np.bincount(y) if len(y) else np.zeros(0, dtype=np.int64)
        raise UserError(f"cannot carve a stratified {what} of {fraction:g} from {len(y)} samples with "
                         f"class counts {counts.tolist()}: every class needs at least 2 samples and the "
                         f"{what} at least one per class; use a larger fraction or more data "
                         f"(scikit-learn said: {e})") from None
    return np.sort(keep), np.sort(hold)
