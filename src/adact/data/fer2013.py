"""FER2013 from Kaggle's ``fer2013.csv`` or from the common image-folder export.

Kaggle needs a login, so nothing here downloads; a missing copy gets an error that says
where to obtain it and where to put it. This module returns the *official* splits
(train = Training, test = PublicTest + PrivateTest, or the folders train/ and test/); the
paper's protocol (train on 80% of Training, evaluate on the other 20%) is carved from them
by :func:`adact.data.load_dataset`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from adact.data.arrays import RawSplits, as_split
from adact.errors import UserError

__all__ = ["EMOTIONS", "find_fer2013", "read_fer2013_csv", "read_fer2013_folders", "load_fer2013"]

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""FER2013 class names; the index is the csv's ``emotion`` label."""

_SIDE = 48
_USAGES = ("Training", "PublicTest", "PrivateTest")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
KAGGLE_CSV_URL = "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data"
KAGGLE_FOLDERS_URL = "https://www.kaggle.com/datasets/msambare/fer2013"


def _has_emotion_dirs(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and p.name.lower() in EMOTIONS for p in folder.iterdir())


def find_fer2013(root: Path) -> tuple[str, Path] | None:
    """Locate FER2013 under ``root``: ``("csv", file)``, ``("folders", dir)`` or None.

    Looked for, in order: ``root/fer2013.csv``, ``root/fer2013/fer2013.csv``, then a folder
    holding ``train/<emotion>/`` and ``test/<emotion>/``: ``root`` itself or ``root/fer2013``.
    """
    for csv_path in (root / "fer2013.csv", root / "fer2013" / "fer2013.csv"):
        if csv_path.is_file():
            return "csv", csv_path
    for folder in (root, root / "fer2013"):
        if _has_emotion_dirs(folder / "train") and _has_emotion_dirs(folder / "test"):
            return "folders", folder
    return None


def _missing_message(root: Path, download: bool) -> str:
    lead = ("--download cannot fetch FER2013: it is only distributed through Kaggle, which needs a login. "
            if download else "")
    return (f"{lead}FER2013 not found under data root '{root}'. Download fer2013.csv (inside fer2013.tar.gz) "
            f"from Kaggle's 'challenges-in-representation-learning-facial-expression-recognition-challenge' "
            f"({KAGGLE_CSV_URL}) and put it at '{root / 'fer2013.csv'}' or '{root / 'fer2013' / 'fer2013.csv'}'; "
            f"or unpack the image-folder version ({KAGGLE_FOLDERS_URL}) so that "
            f"'{root / 'fer2013' / 'train'}/<emotion>/*.png|jpg' and '{root / 'fer2013' / 'test'}/<emotion>/...' "
            f"exist, with emotion folders {', '.join(EMOTIONS)}.")


def read_fer2013_csv(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read ``fer2013.csv`` into ``{usage: (images uint8 (N, 48, 48), labels int64 (N,))}``.

    Raises:
        ValueError: a required column is missing, or a row has a bad label, usage or pixel list.
    """
    rows: dict[str, tuple[list[np.ndarray], list[int]]] = {u: ([], []) for u in _USAGES}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise UserError(f"'{path}' is empty; expected Kaggle's fer2013.csv with columns emotion, pixels, Usage")
        # Some re-exports (icml_face_data.csv) pad the names with spaces.
        names = [h.strip() for h in header]
        missing = [c for c in ("emotion", "pixels", "Usage") if c not in names]
        if missing:
            raise UserError(f"'{path}' lacks column(s) {', '.join(missing)}; found {', '.join(names)}. "
                             f"Expected Kaggle's fer2013.csv with columns emotion, pixels, Usage")
        ie, ip, iu = names.index("emotion"), names.index("pixels"), names.index("Usage")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            where = f"'{path}' line {line}"
            try:
                label = int(row[ie])
                usage = row[iu].strip()
                pixels = np.fromstring(row[ip], dtype=np.int64, sep=" ")
            except (ValueError, IndexError):
                raise UserError(f"{where}: cannot parse the row (expected an integer emotion, "
                                 f"space-separated integer pixels and a Usage)") from None
            if usage not in rows:
                raise UserError(f"{where}: Usage '{usage}' is not one of {', '.join(_USAGES)}")
            if not 0 <= label < len(EMOTIONS):
                raise UserError(f"{where}: emotion {label} is outside 0..{len(EMOTIONS) - 1}")
            if pixels.size != _SIDE * _SIDE:
                raise UserError(f"{where}: expected {_SIDE * _SIDE} pixel values ({_SIDE}x{_SIDE}), "
                                 f"got {pixels.size}")
            if pixels.min() < 0 or pixels.max() > 255:
                raise UserError(f"{where}: pixel values must lie in 0..255")
            rows[usage][0].append(pixels.astype(np.uint8).reshape(_SIDE, _SIDE))
            rows[usage][1].append(label)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for usage, (images, labels) in rows.items():
        x = np.stack(images) if images else np.zeros((0, _SIDE, _SIDE), dtype=np.uint8)
        out[usage] = x, np.asarray(labels, dtype=np.int64)
    return out


def _read_class_folders(split_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image  # deferred: only the image-folder layout needs it

    by_name = {}
    for sub in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if sub.name.lower() not in EMOTIONS:
            raise UserError(f"unexpected folder '{sub}': FER2013 class folders must be named "
                             f"{', '.join(EMOTIONS)}")
        by_name[sub.name.lower()] = sub
    images: list[np.ndarray] = []
    labels: list[int] = []
    files: list[str] = []
    size: tuple[int, int] | None = None
    for label, emotion in enumerate(EMOTIONS):
        if emotion not in by_name:
            continue
        for file in sorted(p for p in by_name[emotion].iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
            try:
                with Image.open(file) as im:
                    arr = np.asarray(im.convert("L"), dtype=np.uint8)
            except OSError as e:
                raise UserError(f"cannot read image '{file}': {e}") from None
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise UserError(f"image '{file}' is {arr.shape[1]}x{arr.shape[0]} but earlier images in "
                                 f"'{split_dir}' are {size[1]}x{size[0]}; all images must have one size")
            images.append(arr)
            labels.append(label)
            files.append(str(file.relative_to(split_dir)))
    if not images:
        raise UserError(f"no .png/.jpg images found in the class folders of '{split_dir}'")
    return np.stack(images), np.asarray(labels, dtype=np.int64), files


def read_fer2013_folders(folder: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Read ``folder/train/<emotion>/*`` and ``folder/test/<emotion>/*`` as grayscale uint8 arrays.

    Files are read in sorted order per class, classes in :data:`EMOTIONS` order.
    """
    xtr, ytr, _ = _read_class_folders(folder / "train")
    xte, yte, _ = _read_class_folders(folder / "test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise UserError(f"train images in '{folder}' are {xtr.shape[1:]} but test images are {xte.shape[1:]}")
    return (xtr, ytr), (xte, yte)


def load_fer2013(root: Path, download: bool) -> RawSplits:
    """The official FER2013 train/test splits found under ``root`` (see :func:`find_fer2013`)."""
    found = find_fer2013(root)
    if found is None:
        raise FileNotFoundError(_missing_message(root, download))
    kind, path = found
    if kind == "csv":
        parts = read_fer2013_csv(path)
        xtr, ytr = parts["Training"]
        # PublicTest then PrivateTest: the 7,178-image test set of the image-folder version.
        xte = np.concatenate([parts["PublicTest"][0], parts["PrivateTest"][0]])
        yte = np.concatenate([parts["PublicTest"][1], parts["PrivateTest"][1]])
        counts = {u: len(parts[u][1]) for u in _USAGES}
        info: dict[str, object] = {"source": str(path), "format": "fer2013.csv", "usage_counts": counts,
                                   "official_test": "PublicTest + PrivateTest"}
    else:
        (xtr, ytr), (xte, yte) = read_fer2013_folders(path)
        info = {"source": str(path), "format": "image folders train/<emotion>, test/<emotion>",
                "official_test": "test/"}
    if len(ytr) == 0:
        raise UserError(f"FER2013 at '{path}' has no training images")
    return as_split(xtr[:, None], ytr), as_split(xte[:, None], yte), list(EMOTIONS), info
