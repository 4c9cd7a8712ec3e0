"""Files of a run folder: atomic writes, named parse errors, stale temp files and a writer's lock.

A reader (or a rerun after a kill) sees the old file or the new one, never half of one. A
write that fails (a full disk, a read-only file system) raises :class:`WriteError`, an
``OSError`` that names the file, and leaves no temporary file behind. torch is imported only
by :func:`atomic_save`, so the command line can start without it.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from adact.errors import AdactError, UserError

__all__ = [
    "FolderLockedError",
    "WriteError",
    "atomic_save",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "folder_lock",
    "make_dir",
    "one_line_warnings",
    "read_json",
    "remove_stale_temps",
]

LOCK_NAME = ".adact.lock"

_UMASK = os.umask(0)
os.umask(_UMASK)

# mkstemp names our temporaries ".<final name>.<8 characters>.tmp"; nothing else in a run folder
# looks like that, so a leftover one is ours and dead (see remove_stale_temps).
_TEMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class WriteError(AdactError, OSError):
    """Writing ``filename`` failed (no space, read-only, permission...): ``errno`` says why."""


class FolderLockedError(UserError, RuntimeError):
    """Another process holds the folder's lock; ``pid`` is that process (None if unknown).

    A :class:`~adact.errors.UserError` (wait, stop the other process, or use another folder) and a
    ``RuntimeError``, as it always was.
    """

    def __init__(self, folder: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{folder} is being written by {who} (an adact train or reproduce); wait for it to "
                         f"finish or stop it, or use another --out folder")
        self.folder, self.pid = folder, pid

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt from its fields when it crosses processes
        return (type(self), (self.folder, self.pid))


def _write_error(e: OSError, path: Path) -> WriteError:
    return WriteError(e.errno or errno.EIO, e.strerror or str(e), str(e.filename or path))


def make_dir(path: str | Path) -> Path:
    """``mkdir -p``, raising :class:`WriteError` (naming the path) when it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # mkdir's EEXIST for an existing file says nothing useful
        raise WriteError(errno.EEXIST, "exists and is not a folder", str(e.filename or path)) from None
    except OSError as e:
        raise _write_error(e, path) from None
    return path


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], binary: bool = True) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``.

    Raises:
        WriteError: the folder cannot be made, or a write, flush or rename failed; the old
            file (if any) is untouched and the temporary file is removed.
    """
    path = Path(path)
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(e, path) from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)  # atomic on POSIX within one file system
    except OSError as e:
        _unlink_quietly(tmp)
        raise _write_error(e, path) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through memory, a temporary file and a rename.

    Serialising to memory first means a full disk surfaces as the ``OSError`` of a plain
    ``write`` (torch's own writer reports it as an opaque ``RuntimeError``).
    """
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    atomic_write(path, lambda f: f.write(data))


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a malformed one raises ValueError naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); restore it, or delete it to have it rebuilt") from None


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``folder``.

    Only names of our own pattern (``.<name>.<8 characters>.tmp``) are touched. Call it while
    holding the folder's lock (:func:`folder_lock`): then no writer of ours is still using one.
    Returns the removed paths.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if _TEMP_RE.match(p.name) and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def _lock_holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (made if missing) while the block writes it.

    The lock is ``fcntl.flock`` on ``folder/.adact.lock``, which holds the owner's PID. The
    kernel drops it when the owner exits, even by ``kill -9``, so a stale lock file never
    blocks a rerun. Without ``fcntl`` (not POSIX) the folder is not locked.

    Raises:
        FolderLockedError: another process holds the lock (its PID is in the message).
        WriteError: the folder or the lock file cannot be made.
    """
    folder = make_dir(folder)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield folder
        return
    lock_path = folder / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise _write_error(e, lock_path) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLockedError(folder, _lock_holder(fd)) from None
        pid = str(os.getpid()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, pid, 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock


def one_line_warnings() -> None:
    """Print warnings as ``adact: warning: <message>`` (no file, line or source)."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: IO[str] | None = None, line: str | None = None) -> None:
        print(f"adact: warning: {message}", file=file or sys.stderr, flush=True)

    warnings.showwarning = show
