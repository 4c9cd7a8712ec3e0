"""Fashion-MNIST, CIFAR-10 and SVHN read through torchvision's dataset classes.

torchvision owns the file names, the MD5 checksums and the download; we only take its
``.data`` / ``.targets`` arrays as a whole (never iterating samples) and turn torchvision's
terse "Dataset not found" into a message that names the files it wanted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from adact.data.arrays import ArrayDataset, RawSplits, as_split
from adact.errors import UserError

__all__ = ["DatasetFilesError", "load_cifar10", "load_fmnist", "load_svhn"]


class DatasetFilesError(UserError, RuntimeError):
    """torchvision's files of a dataset are missing, corrupted, or could not be downloaded.

    A ``RuntimeError`` too, as torchvision's own error is.
    """


def _fmnist_expected(root: Path) -> tuple[Path, list[str], str]:
    folder = root / "FashionMNIST" / "raw"
    files = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte"]
    hint = ("torchvision reads the uncompressed files; if only the .gz archives are there, "
            "--download verifies their checksums and extracts them without going online")
    return folder, files, hint


def _cifar10_expected(root: Path) -> tuple[Path, list[str], str]:
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    hint = ("these are the contents of cifar-10-python.tar.gz; if that archive is in the root, "
            "--download verifies and extracts it without going online")
    return root / "cifar-10-batches-py", files, hint


def _svhn_expected(root: Path) -> tuple[Path, list[str], str]:
    return root, ["train_32x32.mat", "test_32x32.mat"], "these are SVHN's cropped-digit (Format 2) files"


def _not_found(title: str, root: Path, expected: tuple[Path, list[str], str], download: bool,
               cause: BaseException) -> DatasetFilesError:
    folder, files, hint = expected
    missing = [f for f in files if not (folder / f).is_file()]
    if len(missing) == len(files):
        problem = "none of them is there"
    elif missing:
        problem = f"missing {', '.join(missing)}"
    else:
        problem = "all files are present but torchvision's MD5 check rejected at least one (corrupted or altered)"
    if download:
        action = (f"The download did not succeed ({type(cause).__name__}: {cause}); on an offline machine, "
                  f"copy the files there by hand")
    else:
        action = "Pass --download (download=True) to fetch and verify them, or copy them there by hand"
    return DatasetFilesError(f"{title} not found under data root '{root}': expected {', '.join(files)} in "
                        f"'{folder}' ({problem}). {action}; {hint}.")


def _construct(cls: Any, title: str, root: Path, download: bool,
               expected: tuple[Path, list[str], str], **kwargs: Any) -> Any:
    try:
        return cls(root=str(root), download=download, **kwargs)
    except RuntimeError as e:
        # torchvision signals absent/corrupt files and failed downloads with plain RuntimeErrors.
        msg = str(e)
        if "not found" in msg or "corrupted" in msg or "Error downloading" in msg or download:
            raise _not_found(title, root, expected, download, e) from None
        raise
    except OSError as e:  # URLError and friends from an attempted download
        if download:
            raise _not_found(title, root, expected, download, e) from None
        raise


def load_fmnist(root: Path, download: bool) -> RawSplits:
    from torchvision.datasets import FashionMNIST  # deferred: importing torchvision is slow

    expected = _fmnist_expected(root)
    splits = []
    for train in (True, False):
        ds = _construct(FashionMNIST, "Fashion-MNIST", root, download, expected, train=train)
        # .data is already a uint8 (N, 28, 28) tensor; add the channel axis.
        splits.append(ArrayDataset(ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)))
    info = {"source": str(expected[0]), "loader": "torchvision.datasets.FashionMNIST",
            "protocol": "official train/test"}
    return splits[0], splits[1], list(FashionMNIST.classes), info


def load_cifar10(root: Path, download: bool) -> RawSplits:
    from torchvision.datasets import CIFAR10

    expected = _cifar10_expected(root)
    splits, classes = [], []
    for train in (True, False):
        ds = _construct(CIFAR10, "CIFAR-10", root, download, expected, train=train)
        # .data is channels-last (N, 32, 32, 3) uint8 numpy; targets a list of ints.
        splits.append(as_split(ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets, dtype=np.int64)))
        classes = list(ds.classes)
    info = {"source": str(expected[0]), "loader": "torchvision.datasets.CIFAR10",
            "protocol": "official train/test"}
    return splits[0], splits[1], classes, info


def load_svhn(root: Path, download: bool) -> RawSplits:
    from torchvision.datasets import SVHN

    expected = _svhn_expected(root)
    splits = []
    for split in ("train", "test"):
        ds = _construct(SVHN, "SVHN", root, download, expected, split=split)
        # .data is already (N, 3, 32, 32) uint8 and .labels int64 with digit 0 mapped from 10 to 0.
        splits.append(as_split(ds.data, ds.labels))
    info = {"source": str(root), "loader": "torchvision.datasets.SVHN",
            "protocol": "official train/test (the 'extra' set is not used)"}
    return splits[0], splits[1], [str(d) for d in range(10)], info
