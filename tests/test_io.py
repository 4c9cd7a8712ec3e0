"""Atomic writes: the old file or the new one, never half; ordinary permissions."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from adact.io import atomic_write, atomic_write_json, atomic_write_text, read_json


def test_text_and_json_round_trip(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a" / "b.txt", "hello\n")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello\n"
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2.5, None]})
    assert read_json(tmp_path / "c.json") == {"x": [1, 2.5, None]}


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f: object) -> None:
        f.write(b"half")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_mode_is_what_open_gives(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "m.txt", "x")
    (tmp_path / "plain.txt").write_text("x")
    # mkstemp's 0600 would hide results from other users; the mode must match a plain open().
    mode = stat.S_IMODE((tmp_path / "m.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
