"""Which files of an image folder are its images: one walk, with what it leaves out and why.

* An image is a file whose extension PIL opens (:func:`image_extensions`: ``.png``, ``.jpg``,
  ``.gif``, ``.tif``, ``.webp``, ``.bmp``, ...); other files are left out and counted, so that a
  warning can say how many and which.
* Names starting with a dot are hidden and never read: ``.DS_Store``, ``.git``, macOS's AppleDouble
  ``._photo.jpg`` companions (metadata, not images).
* A link (to a folder or a file) whose target lies inside the dataset, or is the dataset or a
  folder above it, is not followed: it would count images twice (a link to the root would become a
  class holding every image). Links that lead outside the dataset are followed, once each.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Listing", "image_extensions"]


@functools.lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """The file extensions PIL can open, lower case with the dot (``.png``, ``.gif``, ``.tif``, ...)."""
    from PIL import Image

    Image.init()  # registers every plugin, not only the common five
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclass
class Listing:
    """A walk of one dataset folder ``root``: what :meth:`classes` and :meth:`images` left out."""

    root: Path
    ignored: list[str] = field(default_factory=list)  # files PIL does not open, by extension
    links: list[str] = field(default_factory=list)  # links back into the dataset, not followed

    def __post_init__(self) -> None:
        self._real = self.root.resolve()

    def classes(self, folder: Path) -> dict[str, list[Path]]:
        """``folder``'s class subfolders, sorted by name, each with its images (sorted, at any depth)."""
        return {path.name: sorted(self.images(path, {path.resolve()}))
                for path, is_dir in self._entries(folder) if is_dir}

    def images(self, folder: Path, seen: set[Path]) -> list[Path]:
        """Every image under ``folder``; ``seen`` holds the real folders walked (a cycle is walked once)."""
        out: list[Path] = []
        for path, is_dir in self._entries(folder):
            if is_dir:
                real = path.resolve()
                if real not in seen:
                    seen.add(real)
                    out += self.images(path, seen)
            elif path.suffix.lower() in image_extensions():
                out.append(path)
            else:
                self.ignored.append(str(path))
        return out

    def _entries(self, folder: Path) -> list[tuple[Path, bool]]:
        """``(path, is_dir)`` of ``folder``'s visible entries that may be followed, sorted by name."""
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        out = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = folder / entry.name
            if entry.is_symlink():
                target = path.resolve()
                if target == self._real or self._real in target.parents or target in self._real.parents:
                    self.links.append(str(path))
                    continue
            try:
                is_dir = entry.is_dir()
            except OSError:  # a link to where we may not look
                is_dir = False
            if is_dir or entry.is_file():  # a broken link is neither
                out.append((path, is_dir))
        return out
