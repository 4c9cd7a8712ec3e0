"""Image folders (``imagefolder:PATH``): torchvision's ``ImageFolder`` layout, decoded once.

Layouts:

* ``PATH/train/<class>/*`` with ``PATH/val/<class>/*`` (or ``PATH/test/``): the given splits;
* ``PATH/<class>/*`` (or ``PATH/train/`` alone): one folder, split stratified later
  (``test_from_train``, the CLI's ``--test-fraction``, default 0.2).

Classes are the sorted subfolder names of the training folder, as in ``ImageFolder``; a class
folder without images is refused. Which files are images -- any format PIL opens, no hidden or
AppleDouble files, no links back into the dataset -- is :mod:`adact.data.listing`'s to say.
Images are grayscale (1 channel) when every file is, else RGB (3 channels; alpha dropped). They
are resized to ``image_size`` x ``image_size`` when given, and must otherwise share one size.

Every file is decoded the same way: EXIF orientation applied, 16-bit and float samples scaled to
8 bits (see :func:`decode_image`), alpha dropped. Images are decoded once into uint8 tensors in
memory when they fit in ``cache_mb`` MiB (the usual case: 50,000 RGB images of 32x32 take 146
MiB); beyond that they stay on disk as a :class:`FileSplit` and are decoded per batch by a
``DataLoader`` with worker processes. Either way every file is decoded once at load (in threads),
so a file that cannot be decoded is found there, and the same files are skipped with a warning
(``on_bad_image="skip"``, the count is in the dataset's ``info``) or stop loading with an error
naming the file (``"error"``), whether the folder is cached or streamed.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adact.config import BAD_IMAGE_POLICIES, train_default
from adact.data.arrays import as_split
from adact.data.listing import Listing, image_extensions
from adact.errors import UserError

__all__ = ["BAD_IMAGE_POLICIES", "BadImageWarning", "FileSplit", "IgnoredFilesWarning", "decode_image",
           "load_imagefolder"]

_CACHE_MB: float = train_default("cache_mb")  # one default for the library and the command line

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class BadImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


class IgnoredFilesWarning(UserWarning):
    """Files of an image folder that are not images PIL opens, or links back into it, were left out."""


@dataclass(repr=False)
class FileSplit:
    """A split left on disk: image files, labels, and the ``(C, H, W)`` every file decodes to."""

    files: list[str]
    y: torch.Tensor
    image_shape: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: np.ndarray | torch.Tensor | Sequence[int]) -> FileSplit:
        idx = np.asarray(indices, dtype=np.int64)
        return FileSplit([self.files[i] for i in idx.tolist()], self.y[torch.as_tensor(idx)].contiguous(),
                         self.image_shape)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        c, h, w = self.image_shape
        try:
            x = decode_image(self.files[i], "L" if c == 1 else "RGB", (h, w))
        except (OSError, ValueError, SyntaxError) as e:
            # Every file decoded when the folder was loaded, so this one changed on disk since.
            raise UserError(f"cannot decode image {self.files[i]} any more ({type(e).__name__}: {e}); it decoded "
                            f"when the dataset was loaded: was it changed or removed since?") from e
        return torch.from_numpy(x), int(self.y[i])

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return f"FileSplit(n={len(self)}, image=({c}, {h}, {w}), on disk)"


def decode_image(path: str | Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image file as uint8 ``(C, H, W)`` in ``mode`` (``"L"`` or ``"RGB"``), resized to ``size``.

    The EXIF orientation is applied (a phone photo stands as it was shot), and samples of more
    than 8 bits are scaled to 0..255 (PIL's own ``convert`` would clip a 16-bit PNG to white):
    16-bit modes (``I;16*``, and ``I`` holding 0..65535) by 255/65535, floats (``F``) in 0..1 by 255;
    ``I`` or ``F`` images outside those ranges raise ``ValueError`` (an undecodable image).
    """
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        # exif_transpose copies even an upright image: call it only for one that is turned
        img = ImageOps.exif_transpose(opened) if _turned(opened) else opened
        img = _eight_bit(img)
        if img.mode == "P" and mode == "RGB":
            img = img.convert("RGBA")  # a palette's transparency goes through RGBA (PIL warns otherwise)
        img = img.convert(mode)
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # PIL antialiases when shrinking
        arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _eight_bit(img: Any) -> Any:
    """``img`` with samples of more than 8 bits scaled to an 8-bit ``L`` image; others as they are."""
    from PIL import Image

    if not (img.mode in ("I", "F") or img.mode.startswith("I;16")):
        return img
    a = np.asarray(img).astype(np.float64)
    top = 1.0 if img.mode == "F" else 65535.0
    if not np.isfinite(a).all() or (a.size and (a.min() < 0 or a.max() > top)):
        raise ValueError(f"mode {img.mode} samples span {a.min():g}..{a.max():g}, outside the 0..{top:g} "
                         f"adact reads as {'a float image' if img.mode == 'F' else '16 bits'}; convert it to 8 bits")
    return Image.fromarray(np.rint(a * (255.0 / top)).astype(np.uint8), "L")


def _turned(img: Any) -> bool:
    """Whether the EXIF orientation (read from the header) turns or flips the image."""
    return img.getexif().get(0x0112, 1) != 1


def _oriented_size(img: Any) -> tuple[int, int]:
    """``(height, width)`` after the EXIF orientation, read from the header alone."""
    swapped = img.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap the axes
    return (img.width, img.height) if swapped else (img.height, img.width)


def _left_out(root: Path, listing: Listing) -> None:
    """One warning for the files that are not images PIL opens, one for the links not followed."""
    if listing.ignored:
        warnings.warn(f"{root}: ignored {len(listing.ignored)} file(s) that are not images PIL opens, by extension "
                      f"(e.g. {', '.join(listing.ignored[:3])})", IgnoredFilesWarning, stacklevel=4)
    if listing.links:
        warnings.warn(f"{root}: did not follow {len(listing.links)} link(s) that lead back into the dataset, which "
                      f"would count its images twice (e.g. {', '.join(listing.links[:3])})", IgnoredFilesWarning,
                      stacklevel=4)


def _refuse_empty(folder: Path, classes: list[str], labels: list[int], what: str) -> None:
    """A class without training images cannot be learned, and would look like one in every table."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts.tolist()) if n == 0]
    if empty:
        raise UserError(f"{folder}: the class folder(s) {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} "
                        f"{what}; add images or remove the folder(s)")


def _layout(root: Path) -> tuple[Path, Path | None]:
    if (root / "train").is_dir():
        test = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
        return root / "train", test
    return root, None


def _bad(path: Path, error: BaseException, policy: str, bad: list[str]) -> None:
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
    if policy == "error":
        raise UserError(f"cannot decode image {path} ({reason}); fix or remove it, or pass --on-bad-image skip")
    warnings.warn(f"skipped image {path}: cannot decode it ({reason})", BadImageWarning, stacklevel=4)
    bad.append(str(path))


def _scan(files: list[tuple[Path, int]], policy: str, bad: list[str]) -> list[tuple[Path, int, str, tuple[int, int]]]:
    """Read every file's header (mode, size): cheap, and it catches files that are not images at all."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for path, label in files:
        try:
            with Image.open(path) as img:
                out.append((path, label, img.mode, _oriented_size(img)))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            _bad(path, e, policy, bad)
    return out


def _progress(total: int, desc: str, quiet: bool) -> Any:
    if quiet or not sys.stderr.isatty():  # as in training: bars only on a terminal
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


Item = tuple[Path, int, str, tuple[int, int]]  # a scanned file: path, label, mode, (height, width)


def _decode_each(items: list[Item], mode: str, size: tuple[int, int] | None, policy: str, bad: list[str],
                 desc: str, quiet: bool, keep: bool) -> tuple[list[Item], list[np.ndarray]]:
    """Decode every file (in threads; PIL decodes without the GIL): the files that decode, and their
    arrays when ``keep``. One pass for both storages, so a cached and a streamed folder skip (or stop
    on) exactly the same files."""
    def one(item: Item) -> np.ndarray | BaseException:
        try:
            return decode_image(item[0], mode, size)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for truncated or damaged data
            return e

    good: list[Item] = []
    arrays: list[np.ndarray] = []
    bar = _progress(len(items), desc, quiet)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(items), 256):  # in chunks: a queue of every file's future would be large
            chunk = items[start:start + 256]
            for item, result in zip(chunk, pool.map(one, chunk)):
                if isinstance(result, BaseException):
                    _bad(item[0], result, policy, bad)
                else:
                    good.append(item)
                    if keep:
                        arrays.append(result)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return good, arrays


def load_imagefolder(root: Path, *, image_size: int | None = None, on_bad_image: str = "skip",
                     cache_mb: float = _CACHE_MB, quiet: bool = False) -> tuple[Any, Any, list[str], dict[str, object]]:
    """Read an image folder; returns ``(train, test or None, classes, info)``.

    Splits are :class:`~adact.data.ArrayDataset` when every image fits in ``cache_mb`` MiB as
    uint8, else (and always when ``cache_mb`` is 0) :class:`FileSplit`. ``test`` is None for a
    single folder (the caller carves it).

    Raises:
        ValueError: no classes or no images, a training class folder without images, a test
            folder with classes the training folder lacks, images of different sizes without
            ``image_size``, or (``on_bad_image="error"``) an image that cannot be decoded -- the
            message names the file.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise UserError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}")
    train_dir, test_dir = _layout(root)
    listing = Listing(root)
    per_class = listing.classes(train_dir)
    classes = list(per_class)
    if not classes:
        raise UserError(f"{train_dir} holds no class subfolders; an image folder is <class>/<image> "
                         f"(or train/<class>/ and val/<class>/)")
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[tuple[Path, int]]] = {"train": [(p, index[c]) for c, ps in per_class.items() for p in ps]}
    if test_dir is not None:
        test_classes = listing.classes(test_dir)
        extra = [c for c in test_classes if c not in index]
        if extra:
            raise UserError(f"{test_dir} has classes the training folder {train_dir} lacks: {', '.join(extra[:5])}")
        splits["test"] = [(p, index[c]) for c, ps in test_classes.items() for p in ps]
    _left_out(root, listing)
    _refuse_empty(train_dir, classes, [lab for _, lab in splits["train"]], "holds no images")
    bad: list[str] = []
    scanned = {k: _scan(v, on_bad_image, bad) for k, v in splits.items()}
    if not scanned["train"]:
        raise UserError(f"{train_dir} holds no readable images (files PIL opens: "
                        f"{', '.join(sorted(image_extensions()))})")
    everything = [it for v in scanned.values() for it in v]
    mode = "L" if all(m in _GRAY_MODES for _, _, m, _ in everything) else "RGB"
    if image_size is not None:
        size: tuple[int, int] | None = (image_size, image_size)
    else:
        sizes = {s for _, _, _, s in everything}
        if len(sizes) > 1:
            (a, sa), (b, sb) = [(next(str(p) for p, _, _, s in everything if s == z), z) for z in sorted(sizes)[:2]]
            raise UserError(f"images in {root} have different sizes ({a} is {sa[1]}x{sa[0]}, {b} is "
                             f"{sb[1]}x{sb[0]}); pass --image-size S to resize them all to SxS")
        size = None
    c = 1 if mode == "L" else 3
    h, w = size if size is not None else everything[0][3]
    nbytes = len(everything) * c * h * w
    cached = cache_mb > 0 and nbytes <= cache_mb * 2**20  # 0: always stream
    out: dict[str, Any] = {}
    for k, items in scanned.items():
        verb = "decoding" if cached else "checking"
        good, arrays = _decode_each(items, mode, size, on_bad_image, bad, f"{verb} {root.name}/{k}", quiet, cached)
        labels = np.asarray([lab for _, lab, _, _ in good], dtype=np.int64)
        if k == "train":
            _refuse_empty(train_dir, classes, labels.tolist(), "holds no image that decodes")
        if cached:
            out[k] = as_split(np.stack(arrays) if arrays else np.zeros((0, c, h, w), dtype=np.uint8), labels)
        else:
            out[k] = FileSplit([str(p) for p, _, _, _ in good], torch.from_numpy(labels), (c, h, w))
    info: dict[str, object] = {
        "source": str(root.resolve()), "format": "imagefolder",
        "protocol": f"{train_dir.name}/ and {test_dir.name}/" if test_dir is not None else "one folder",
        "mode": mode, "resized_to": list(size) if size is not None else None,
        "storage": (f"decoded once into memory ({nbytes / 2**20:.1f} MiB <= {cache_mb:g} MiB)" if cached else
                    f"streamed from disk ({nbytes / 2**20:.1f} MiB > {cache_mb:g} MiB)"),
        "bad_images": len(bad), "bad_image_files": bad[:20],
        "ignored_files": len(listing.ignored), "links_not_followed": len(listing.links),
    }
    return out["train"], out.get("test"), classes, info

