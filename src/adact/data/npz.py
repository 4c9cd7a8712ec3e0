"""User data in a NumPy ``.npz`` archive (``load_dataset("npz:PATH")``).

Required arrays: ``x_train``, ``y_train``, ``x_test``, ``y_test``. Images are uint8, either
``(N, H, W)`` (grayscale) or channels-last ``(N, H, W, C)``; labels are integers in
``0..num_classes-1``. An optional ``classes`` array of strings names the labels (and fixes
``num_classes``); without it the classes are ``"0".."K-1"`` with ``K = max label + 1``, and a label
in that range that no training image has (a gap) is refused: it would be a class without images.
Other arrays in the archive are ignored. Nothing is unpickled: the archive is read with
``allow_pickle=False``, so store ``classes`` as a string array (``np.array(names, dtype=str)``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from adact.data.arrays import MAX_CLASSES, RawSplits, as_split
from adact.errors import UserError

__all__ = ["NPZ_KEYS", "load_npz"]

NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")


def _images(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise UserError(f"'{path}': {key} has dtype {arr.dtype}, but images must be uint8 (0..255); "
                         f"convert them first, e.g. np.clip(x * 255, 0, 255).round().astype(np.uint8) for "
                         f"floats in [0, 1]")
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        if arr.shape[-1] > 4 and arr.shape[1] <= 4:
            raise UserError(f"'{path}': {key} has shape {arr.shape}, which looks channels-first; images must be "
                             f"channels-last (N, H, W, C): use x.transpose(0, 2, 3, 1)")
        return arr.transpose(0, 3, 1, 2)
    raise UserError(f"'{path}': {key} has shape {arr.shape}; expected (N, H, W) or (N, H, W, C)")


def _labels(arr: np.ndarray, key: str, n: int, path: Path) -> np.ndarray:
    if arr.dtype.kind not in "iu":
        raise UserError(f"'{path}': {key} has dtype {arr.dtype}; labels must be integers")
    if arr.ndim != 1:
        raise UserError(f"'{path}': {key} has shape {arr.shape}; labels must be 1-D (N,)")
    if len(arr) != n:
        raise UserError(f"'{path}': {key} has {len(arr)} labels but x_{key[2:]} has {n} images")
    return arr.astype(np.int64)


def load_npz(path: Path) -> RawSplits:
    """Read and validate an ``.npz`` dataset archive; returns its train and test splits."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"cannot read '{path}' as a NumPy .npz archive ({e})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(f"'{path}' is a single .npy array, not an .npz archive with {', '.join(NPZ_KEYS)}")
    with archive:
        found = list(archive.files)
        missing = [k for k in NPZ_KEYS if k not in found]
        if missing:
            raise UserError(f"'{path}' lacks required array(s) {', '.join(missing)}; found "
                             f"{', '.join(found) or 'none'}. An npz dataset needs {', '.join(NPZ_KEYS)} "
                             f"(and optionally classes)")
        try:
            arrays = {k: archive[k] for k in (*NPZ_KEYS, *(["classes"] if "classes" in found else []))}
        except ValueError as e:
            raise UserError(f"'{path}': an array is stored as pickled Python objects, which adact does not load "
                             f"({e}); save class names as a string array, np.array(names, dtype=str)") from None
    x_train = _images(arrays["x_train"], "x_train", path)
    x_test = _images(arrays["x_test"], "x_test", path)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"'{path}': x_train images are (C, H, W) = {x_train.shape[1:]} but x_test images are "
                         f"{x_test.shape[1:]}; both splits need one image shape")
    if len(x_train) == 0:
        raise UserError(f"'{path}': x_train is empty")
    y_train = _labels(arrays["y_train"], "y_train", len(x_train), path)
    y_test = _labels(arrays["y_test"], "y_test", len(x_test), path)
    if len(x_test) == 0:
        raise UserError(f"'{path}': x_test is empty; a run is evaluated on the test split after every epoch")
    all_y = np.concatenate([y_train, y_test])
    if all_y.min() < 0:
        raise UserError(f"'{path}': labels must be >= 0, found {int(all_y.min())}")
    if all_y.max() >= MAX_CLASSES:
        # Checked before anything is sized by the label: K = max label + 1 class names would be built.
        raise UserError(f"'{path}': label {int(all_y.max())} would mean {int(all_y.max()) + 1:,} classes; adact "
                         f"supports at most {MAX_CLASSES:,}. Labels must be 0..K-1")
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1:
            raise UserError(f"'{path}': classes has shape {names.shape}; expected a 1-D array of names")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
        if all_y.max() >= len(classes):
            raise UserError(f"'{path}': label {int(all_y.max())} is out of range for {len(classes)} classes "
                             f"(labels must lie in 0..{len(classes) - 1})")
    else:
        k = int(all_y.max()) + 1
        gaps = np.setdiff1d(np.arange(k), y_train)
        if len(gaps):
            shown = ", ".join(str(g) for g in gaps[:10].tolist()) + (", ..." if len(gaps) > 10 else "")
            raise UserError(f"'{path}': no training image has label {shown}; without a classes array the classes are "
                            f"0..{k - 1} (the largest label + 1), so {'that class' if len(gaps) == 1 else 'those'} "
                            f"would have no images. Number the labels 0..K-1 without gaps, or name every class in a "
                            f"classes array to keep them")
        classes = [str(i) for i in range(k)]
    info: dict[str, object] = {"source": str(path.resolve()), "format": "npz",
                               "protocol": "the archive's x_train/x_test"}
    return as_split(x_train, y_train), as_split(x_test, y_test), classes, info
