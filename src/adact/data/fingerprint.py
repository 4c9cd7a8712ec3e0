"""What a run's data is: a small record (classes, counts, a content hash) that run folders keep and compare.

:func:`data_record` describes loaded data (:class:`~adact.data.DataSplits` or
:class:`~adact.data.text.TextData`) by its class names, the size of each split, the images that
were skipped, and one hash of everything a run trains and is evaluated on:

* images held in memory (every named dataset, ``npz:``, image folders within ``--cache-mb``):
  the bytes of every split's images and labels, so the record follows the pixels, not the files;
* images streamed from disk (:class:`~adact.data.imagefolder.FileSplit`): each file's path
  (relative to the dataset folder), size, modification time and label, so no file is read;
* text: the token ids of every split and the vocabulary.

The split settings are in the hash through the splits themselves (a different ``--val-fraction``
or split seed gives other splits). :func:`data_diff` says what changed between two records, in
words (``classes 3 -> 4 (added runs)``, ``train 48 -> 60 images``), for the one-line refusal of
:meth:`adact.runs.folder.RunFolder.check`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

from adact.data.arrays import ArrayDataset
from adact.data.imagefolder import FileSplit
from adact.data.text import TextData

__all__ = ["DATA_FORMAT", "data_diff", "data_record"]

DATA_FORMAT = "adact-data-1"
_SPLITS = ("train", "val", "test")
#: At most this many skipped files are named in a record (the count is always exact).
_NAMED = 20


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().reshape(-1) if t.numel() else b"")


def _hash_files(h: Any, split: FileSplit, source: str) -> None:
    h.update(f"files{len(split)}{split.image_shape}".encode())
    for path, label in zip(split.files, split.y.tolist()):
        full = os.path.abspath(path)
        st = os.stat(full)
        rel = os.path.relpath(full, source) if source else full
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode("utf-8", "surrogateescape"))


def _split_hash(split: Any, source: str) -> str:
    h = hashlib.sha256()
    if split is None:
        h.update(b"none")
    elif isinstance(split, FileSplit):
        _hash_files(h, split, source)
    elif isinstance(split, ArrayDataset):
        _hash_tensor(h, split.x)
        _hash_tensor(h, split.y)
    elif isinstance(split, torch.Tensor):  # token ids
        _hash_tensor(h, split)
    else:  # pragma: no cover - every loader returns one of the above
        raise TypeError(f"cannot fingerprint a split of type {type(split).__name__}")
    return h.hexdigest()


def data_record(data: Any) -> dict[str, Any]:
    """The record of ``data`` (computed once per loaded object, then kept in ``data.info``).

    Returns a JSON-ready dict: ``format``, ``classes`` (image data) or ``vocab_size`` (text),
    ``counts`` per split (images, or tokens), ``skipped_images`` with up to 20
    ``skipped_image_files``, and ``fingerprint``, a SHA-256 of the classes and every split.
    """
    info = data.info
    cached = info.get("record")
    if isinstance(cached, dict):
        return cached
    source = str(info.get("source") or "")
    splits = {k: getattr(data, k) for k in _SPLITS}
    hashes = {k: _split_hash(v, source) for k, v in splits.items()}
    h = hashlib.sha256()
    if isinstance(data, TextData):
        described: dict[str, Any] = {"vocab_size": data.vocab_size}
        h.update(repr(data.vocab).encode("utf-8", "surrogateescape"))
    else:
        described = {"classes": list(data.classes)}
        h.update(repr(list(data.classes)).encode("utf-8", "surrogateescape"))
    for k in _SPLITS:
        h.update(f"{k}:{hashes[k]}\n".encode())
    bad = [str(f) for f in info.get("bad_image_files") or []]
    record = {
        "format": DATA_FORMAT,
        **described,
        "counts": {k: 0 if v is None else len(v) for k, v in splits.items()},
        "skipped_images": int(info.get("bad_images") or 0),
        "skipped_image_files": bad[:_NAMED],
        "fingerprint": h.hexdigest(),
    }
    info["record"] = record
    return record


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def data_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two data records, in words; empty when they describe the same data.

    A record of another format (or none) is not compared: there is nothing to tell.
    """
    if not isinstance(old, dict) or old.get("format") != DATA_FORMAT or old.get("fingerprint") == new["fingerprint"]:
        return []
    said: list[str] = []
    if "classes" in new and old.get("classes") != new["classes"]:
        before, after = list(old.get("classes") or []), new["classes"]
        added = [c for c in after if c not in before]
        removed = [c for c in before if c not in after]
        parts = [f"added {_few(added)}" if added else "", f"removed {_few(removed)}" if removed else ""]
        detail = "; ".join(p for p in parts if p) or "renumbered"
        said.append(f"classes {len(before)} -> {len(after)} ({detail})")
    if "vocab_size" in new and old.get("vocab_size") != new["vocab_size"]:
        said.append(f"vocabulary {old.get('vocab_size')} -> {new['vocab_size']} symbols")
    unit = "tokens" if "vocab_size" in new else "images"
    old_counts = old.get("counts") or {}
    for k in _SPLITS:
        if old_counts.get(k) != new["counts"][k]:
            said.append(f"{k} {old_counts.get(k)} -> {new['counts'][k]} {unit}")
    return said or [f"the same classes and counts, other {unit} (contents or files changed)"]
