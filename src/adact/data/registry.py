"""``load_dataset``: every supported dataset by name, with the split options applied uniformly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from adact.config import FER_SPLITS, NORMALIZE, train_default
from adact.data.arrays import ArrayDataset, DataSplits, RawSplits, check_splits, stratified_split
from adact.dataspec import DATASETS, DatasetSpec
from adact.errors import UserError

__all__ = ["DATASETS", "FER_SPLITS", "NORMALIZATION", "load_dataset", "resize_split"]

_CACHE_MB: float = train_default("cache_mb")  # one default for the library and the command line

PAPER_FER_TEST_FRACTION = 0.2
#: Test fraction carved from a single image folder when ``test_from_train`` is not given.
DEFAULT_FOLDER_TEST_FRACTION = 0.2

#: ``--normalize``: per-channel (mean, std) of ``(x / 255 - mean) / std``. "paper" maps pixels to [-1, 1].
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "paper": ((0.5,), (0.5,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# The names are declared once, in adact.config (the command line lists them without importing torch).
assert tuple(NORMALIZATION) == NORMALIZE


def normalization(name: str, channels: int) -> tuple[list[float], list[float]]:
    """``(mean, std)`` per channel; ImageNet's statistics on grayscale images are their channel means."""
    if name not in NORMALIZATION:
        raise UserError(f"unknown normalization {name!r}; valid: {', '.join(NORMALIZATION)}")
    mean, std = NORMALIZATION[name]
    if len(mean) == channels:
        return list(mean), list(std)
    return [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels


def resize_split(ds: ArrayDataset, size: int, chunk: int = 4096) -> ArrayDataset:
    """``ds`` with every image resized to ``size`` x ``size`` (bilinear, antialiased), still uint8."""
    import torch.nn.functional as F

    if ds.image_shape[1:] == (size, size):
        return ds
    parts = []
    for i in range(0, len(ds), chunk):  # in chunks: a float copy of a whole split can be large
        x = F.interpolate(ds.x[i:i + chunk].float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        parts.append(x.round_().clamp_(0, 255).to(torch.uint8))
    x = torch.cat(parts) if parts else torch.zeros((0, ds.image_shape[0], size, size), dtype=torch.uint8)
    return ArrayDataset(x, ds.y)

def _raw_loader(name: str, root: Path, download: bool) -> Callable[[], RawSplits]:
    if name == "fmnist":
        from adact.data.torchvision_sets import load_fmnist
        return lambda: load_fmnist(root, download)
    if name == "cifar10":
        from adact.data.torchvision_sets import load_cifar10
        return lambda: load_cifar10(root, download)
    if name == "svhn":
        from adact.data.torchvision_sets import load_svhn
        return lambda: load_svhn(root, download)
    if name == "fer2013":
        from adact.data.fer2013 import load_fer2013
        return lambda: load_fer2013(root, download)
    if name == "digits":
        from adact.data.digits import load_digits
        return load_digits
    raise AssertionError(name)  # callers validate the name first


def _check_fraction(value: float | None, what: str) -> None:
    if value is not None and not 0.0 < float(value) < 1.0:
        raise UserError(f"{what} must be in (0, 1), got {value}")


def load_dataset(name: str, root: str | Path = "data", download: bool = False, *, val_fraction: float = 0.0,
                 seed: int = 0, fer_split: str = "paper", test_from_train: float | None = None,
                 image_size: int | None = None, on_bad_image: str = "skip", cache_mb: float = _CACHE_MB,
                 quiet: bool = False) -> DataSplits:
    r"""Load a dataset's splits into memory as uint8 tensors.

    Args:
        name: one of :data:`DATASETS`, ``"npz:PATH"`` or ``"imagefolder:PATH"`` (parsed by
            :class:`adact.dataspec.DatasetSpec`, case-insensitively):

            - ``"fmnist"``, ``"cifar10"``, ``"svhn"``: through torchvision's FashionMNIST / CIFAR10 /
              SVHN classes, from their usual places under ``root`` (``FashionMNIST/raw/``,
              ``cifar-10-batches-py/``, ``train_32x32.mat`` + ``test_32x32.mat``), official splits.
            - ``"fer2013"``: Kaggle's ``fer2013.csv`` at ``root/fer2013.csv`` or
              ``root/fer2013/fer2013.csv``, or the image-folder export ``root[/fer2013]/train/<emotion>/``
              and ``test/<emotion>/`` (classes: angry, disgust, fear, happy, sad, surprise, neutral).
              48x48 grayscale. Split by ``fer_split``.
            - ``"digits"``: scikit-learn's bundled 8x8 digits (1,797 images), scaled to 0..255 and
              resized to 16x16; fixed stratified 80/20 split (seed 0): 1,437 train / 360 test. Needs
              no files: the offline default.
            - ``"npz:PATH"``: arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (uint8 images
              ``(N, H, W)`` or ``(N, H, W, C)``, integer labels) and optional ``classes``; a relative
              PATH not found from the working directory is also tried under ``root``. See
              :mod:`adact.data.npz`.
            - ``"imagefolder:PATH"``: ``PATH/train/<class>/*`` and ``PATH/val/`` (or ``test/``), or one
              folder of class subfolders, split stratified by ``test_from_train`` (default 0.2). See
              :mod:`adact.data.imagefolder`.
        root: data folder (the CLI's ``--data-dir``). Default: ``"data"``.
        download: let torchvision fetch fmnist / cifar10 / svhn when they are not already there
            with matching checksums (a no-op when they are). FER2013 cannot be downloaded (Kaggle
            login); a missing copy raises an error that says where to get it. Default: False.
        val_fraction: hold out this stratified fraction of the (final) training split as ``val``;
            0 means no validation split. Default: 0.0.
        seed: seed of every carved split (FER paper protocol, ``test_from_train``, ``val``); the
            same seed always gives the same split. A carve is scikit-learn's
            ``train_test_split(test_size=fraction, stratify=labels, random_state=seed)``, so it can be
            reproduced outside adact. Default: 0.
        fer_split: FER2013 only. ``"paper"``: the paper's protocol, train on a stratified 80% of
            the 28,709 Training images and evaluate on the other 20% (5,742); PublicTest and
            PrivateTest are unused. ``"official"``: train = Training, test = PublicTest +
            PrivateTest (image folders: train/ and test/). Default: ``"paper"``.
        test_from_train: replace the test split by a stratified holdout of this fraction of the
            training split (the source's test split is then unused; ``info`` says so). Works for
            every dataset; e.g. ``load_dataset("npz:fer2013.npz", test_from_train=0.2)`` applies the
            paper's FER protocol to an npz holding the official splits. For ``"fer2013"`` with
            ``fer_split="paper"`` it overrides the 0.2. Default: None (keep the source's test split).
        image_size: resize every image to ``image_size`` x ``image_size`` (bilinear, antialiased).
            Default: None (keep the source's size).
        on_bad_image: image folders: ``"skip"`` an image that cannot be decoded (with a warning; the
            count is in ``info["bad_images"]``) or stop with an ``"error"`` naming it. Default: "skip".
        cache_mb: image folders: decode once into memory when the uint8 images take at most this many
            MiB, else stream them from disk; 0 always streams. Default: ``TrainConfig.cache_mb`` (4096).
        quiet: no progress bar while decoding an image folder. Default: False.

    Returns:
        :class:`DataSplits` with ``info`` recording source, protocol, seed and counts.

    Raises:
        ValueError: unknown name, bad option value, or malformed data (message says which).
        FileNotFoundError: FER2013 or the npz file is missing (message says where to put it).
        DatasetFilesError: torchvision's files are missing, corrupted, or could not be downloaded.

    Example::

        >>> data = load_dataset("fer2013", "data")  # paper protocol: 22,967 train / 5,742 test
        >>> data.in_channels, data.image_size, data.num_classes
        (1, (48, 48), 7)
    """
    spec = DatasetSpec.parse(name)
    if fer_split not in FER_SPLITS:
        raise UserError(f"fer_split must be one of {', '.join(FER_SPLITS)}, got {fer_split!r}")
    _check_fraction(test_from_train, "test_from_train")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if image_size is not None and image_size < 1:
        raise UserError(f"image_size must be >= 1, got {image_size}")
    root = Path(root).expanduser()
    key = spec.value if spec.kind == "named" else spec.kind
    carve = test_from_train

    if spec.kind == "npz":
        from adact.data.npz import load_npz

        train, test, classes, info = load_npz(spec.resolve_path(root))
    elif spec.kind == "imagefolder":
        from adact.data.imagefolder import load_imagefolder

        train, test, classes, info = load_imagefolder(spec.resolve_path(root), image_size=image_size,
                                                      on_bad_image=on_bad_image, cache_mb=cache_mb, quiet=quiet)
        if test is None:
            carve = DEFAULT_FOLDER_TEST_FRACTION if test_from_train is None else test_from_train
            test = train.subset([])
    else:
        train, test, classes, info = _raw_loader(spec.value, root, download)()
    display = spec.display
    if image_size is not None and spec.kind != "imagefolder":  # image folders resize while decoding
        train, test = resize_split(train, image_size), resize_split(test, image_size)

    info = dict(info)
    notes = list(info.pop("notes", []))  # type: ignore[call-overload]
    if key == "fer2013":
        if fer_split == "official":
            if test_from_train is not None:
                raise UserError("fer_split='official' keeps the official test set, so it cannot be combined with "
                                 "test_from_train; use fer_split='paper' (optionally with test_from_train) instead")
            info["protocol"] = f"official: train = Training, test = {info.get('official_test')}"
        else:
            carve = PAPER_FER_TEST_FRACTION if test_from_train is None else test_from_train
            info["protocol"] = f"paper: stratified {1 - carve:.0%}/{carve:.0%} split of Training, seed {seed}"
        info.pop("official_test", None)

    if carve is not None:
        keep, hold = stratified_split(train.y, float(carve), seed, what="test split")
        notes.append(f"test = stratified {carve:g} of the source's training split (seed {seed})"
                     + (f"; the source's test split ({len(test)} images) is unused" if len(test) else ""))
        if key != "fer2013":
            info["protocol"] = f"test carved from train: stratified {1 - carve:.0%}/{carve:.0%} split, seed {seed}"
        info["unused_source_test"] = len(test)
        train, test = train.subset(keep), train.subset(hold)

    val: Any = None
    if val_fraction > 0:
        keep, hold = stratified_split(train.y, float(val_fraction), seed,
                                      what="validation split")
        train, val = train.subset(keep), train.subset(hold)
        notes.append(f"val = stratified {val_fraction:g} of the training split (seed {seed})")

    info.update(seed=seed, counts={"train": len(train), "val": len(val) if val is not None else 0,
                                   "test": len(test)}, notes=notes)
    splits = DataSplits(name=display, train=train, test=test, val=val, classes=classes, info=info)
    check_splits(splits)
    return splits
