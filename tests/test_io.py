"""Atomic writes: the old file or the new one, never half; ordinary permissions."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from adact.runs.io import (
    LOCK_NAME,
    FolderLockedError,
    WriteError,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    make_dir,
    read_json,
    remove_stale_temps,
)


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


def test_failed_write_is_a_write_error_naming_the_file(tmp_path: Path) -> None:
    def broken(f: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError) as info:
        atomic_write(tmp_path / "x.bin", broken)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists() and not list(tmp_path.iterdir())


def test_a_file_in_the_way_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(WriteError, match="exists and is not a folder") as info:
        make_dir(tmp_path / "f")
    assert info.value.filename == str(tmp_path / "f")
    with pytest.raises(WriteError) as info:
        atomic_write_text(tmp_path / "f" / "a.txt", "y")
    assert info.value.errno == errno.EEXIST and info.value.filename == str(tmp_path / "f")
    with pytest.raises(WriteError) as info:
        make_dir(tmp_path / "f" / "sub" / "run")
    assert info.value.errno == errno.ENOTDIR


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text('{"a": 1,,}')
    with pytest.raises(ValueError, match=r"r.json is not valid JSON \(Expecting"):
        read_json(tmp_path / "r.json")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="b.json is not valid JSON"):
        read_json(tmp_path / "b.json")


def test_only_our_stale_temp_files_are_removed(tmp_path: Path) -> None:
    ours = [".last.pt.abc_1234.tmp", ".metrics.csv.zz9y8x7w.tmp", ".result.json.00000000.tmp"]
    others = [".last.pt.ABCDEFGH.tmp", ".x.tmp", "last.pt.abcdefgh.tmp", ".data.abcdefgh.tmp.bak", "notes.txt"]
    for name in ours + others:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
    assert remove_stale_temps(tmp_path / "missing") == []


def test_folder_lock_records_the_pid_and_is_released(tmp_path: Path) -> None:
    with folder_lock(tmp_path / "run") as folder:
        assert (folder / LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(FolderLockedError, match=f"process {os.getpid()}") as info:
            with folder_lock(tmp_path / "run"):
                pass
        assert info.value.pid == os.getpid()
    with folder_lock(tmp_path / "run"):  # released: free again
        pass


def test_errors_cross_process_boundaries(tmp_path: Path) -> None:
    import pickle

    locked = pickle.loads(pickle.dumps(FolderLockedError(tmp_path, 42)))
    assert locked.pid == 42 and str(locked) == str(FolderLockedError(tmp_path, 42))
    write = pickle.loads(pickle.dumps(WriteError(errno.ENOSPC, "No space left on device", str(tmp_path))))
    assert (write.errno, write.filename) == (errno.ENOSPC, str(tmp_path))
