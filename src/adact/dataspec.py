"""``DatasetSpec``: the one parser of a dataset argument (``digits``, ``npz:PATH``, ``imagefolder:PATH``, ``text:PATH``).

Every place that needs to know what a dataset argument means -- the CLI, :func:`adact.data.load_dataset`,
run-folder names, figure titles, the paper's Table 1 lookup -- asks a :class:`DatasetSpec`, so a prefix
is parsed once, case-insensitively, and nowhere else. Imports nothing heavy (``adact --help`` uses it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from adact.errors import UserError
from adact.paper import PAPER_TABLE1

__all__ = ["DATASETS", "DATASET_HELP", "DatasetSpec", "printable"]

DATASETS: tuple[str, ...] = ("fmnist", "cifar10", "svhn", "fer2013", "digits")
"""Named datasets; any ``.npz`` file is also accepted as ``"npz:PATH"``, a folder as ``"imagefolder:PATH"``."""

DATASET_HELP = (f"{', '.join(DATASETS)}, npz:PATH (arrays x_train, y_train, x_test, y_test), imagefolder:PATH "
                f"(PATH/train/<class>/* and PATH/val/ or test/, or one folder of class subfolders) or text:PATH "
                f"(a UTF-8 text file: language modelling)")

_PREFIXES = ("npz", "imagefolder", "text")
_FILE_KINDS = ("npz", "text")  # prefixes that name a file (the others name a folder)


def printable(text: str) -> str:
    r"""``text`` for display: a path's undecodable bytes as ``\xNN`` escapes.

    A path with bytes that are not UTF-8 (a folder named ``b"d\xffata"``) reaches Python as a
    string with lone surrogates (``os.fsdecode``), which matplotlib cannot draw and a UTF-8 file
    cannot hold; here it reads ``d\xffata``. Other text comes back unchanged.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes: show their code points
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset argument.

    Attributes:
        kind: ``"named"`` (one of :data:`DATASETS`), ``"npz"``, ``"imagefolder"`` or ``"text"``.
        value: the name (lower case) or the path as given.
    """

    kind: str
    value: str

    @classmethod
    def parse(cls, text: str) -> DatasetSpec:
        """Parse ``text``; prefixes and names are case-insensitive. Raises ValueError for anything else."""
        if not isinstance(text, str):
            raise UserError(f"a dataset must be given as a string, got {type(text).__name__}")
        key = text.strip()
        prefix, sep, rest = key.partition(":")
        if sep and prefix.lower() in _PREFIXES:
            if not rest:
                raise UserError(f"{prefix.lower()}: needs a path, e.g. '{prefix.lower()}:data/mine'")
            return cls(prefix.lower(), rest)
        if key.lower() in DATASETS:
            return cls("named", key.lower())
        raise UserError(f"unknown dataset {text!r}; valid: {DATASET_HELP}")

    def __str__(self) -> str:
        return self.value if self.kind == "named" else f"{self.kind}:{self.value}"

    @property
    def stem(self) -> str:
        """The name, or the file/folder name of a path (``npz:data/fer2013.npz`` -> ``fer2013``)."""
        if self.kind == "named":
            return self.value
        path = Path(self.value.rstrip("/\\"))
        return (path.stem if self.kind in _FILE_KINDS else path.name) or "data"

    @property
    def slug(self) -> str:
        """Folder name of this dataset's runs: the name, ``npz-<stem>`` or ``imagefolder-<folder>``."""
        if self.kind == "named":
            return self.value
        return f"{self.kind}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", self.stem)

    @property
    def display(self) -> str:
        """A short label for titles: ``npz:fer2013``, ``imagefolder:pets``, ``digits``."""
        return self.value if self.kind == "named" else printable(f"{self.kind}:{self.stem}")

    @property
    def is_text(self) -> bool:
        """A text file (``text:PATH``): a language-modelling dataset, not images."""
        return self.kind == "text"

    @property
    def paper_key(self) -> str | None:
        """The paper's Table 1 row this dataset is a copy of (by name or file stem), else None."""
        name = self.stem.lower()
        return name if name in PAPER_TABLE1 else None

    def resolve_path(self, data_dir: str | Path) -> Path:
        """The file or folder of an ``npz:`` / ``imagefolder:`` spec: as given, else under ``data_dir``.

        Raises:
            FileNotFoundError: neither exists (the message lists both paths tried).
        """
        if self.kind == "named":
            raise UserError(f"{self} is a named dataset, not a path")
        path = Path(self.value).expanduser()
        is_file = self.kind in _FILE_KINDS
        found = path.is_file() if is_file else path.is_dir()
        tried = [str(path)]
        if not found and not path.is_absolute():
            under = Path(data_dir).expanduser() / path
            if under.is_file() if is_file else under.is_dir():
                return under
            tried.append(str(under))
        if found:
            return path
        what = {"npz": "an .npz with arrays x_train, y_train, x_test, y_test", "text": "a UTF-8 text file",
                "imagefolder": "a folder of class subfolders (or train/ and val/ or test/ holding them)"}[self.kind]
        raise FileNotFoundError(f"{self.kind} {'file' if is_file else 'folder'} not found: tried "
                                f"{' and '.join(repr(t) for t in tried)}. Pass {what} as '{self.kind}:PATH'")

    def check(self, data_dir: str | Path) -> None:
        """Raise FileNotFoundError now for a missing ``npz:`` / ``text:`` file or ``imagefolder:`` folder."""
        if self.kind != "named":
            self.resolve_path(data_dir)

    def check_out(self, out: str | Path, data_dir: str | Path) -> None:
        """Refuse an output folder inside an ``imagefolder:`` dataset: its files would be read as images.

        (A rerun would find the output folder as one more class, or its figures as images of one.)

        Raises:
            UserError: ``out`` is the dataset folder or lies inside it.
        """
        if self.kind != "imagefolder":
            return
        try:
            root = self.resolve_path(data_dir).resolve()
        except FileNotFoundError:
            return  # reported where the data is loaded
        where = Path(out).expanduser().resolve()
        if where == root or root in where.parents:
            raise UserError(f"--out {out} is inside the dataset folder {root}: adact would read its own files as "
                            f"data on the next run (a folder of them as one more class); choose an --out folder "
                            f"outside {root}")
