"""Issue 27: a run folder is reused only for the same data, and a search with nothing to search is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import adact.experiments.workers
from adact.cli import main
from adact.config import TrainConfig
from adact.data import DataSplits
from adact.runs.folder import RunMismatchError
from adact.runs.io import read_json
from adact.training.loop import train
from conftest import TINY, KillAtStep, cli_error
from test_search import write_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def _npz(path: Path, digits: DataSplits, *, classes: int = 10, flip: bool = False) -> Path:
    """An npz of the first digits of ``classes`` classes (``flip``: the same counts, other pixels)."""
    def part(split: object) -> tuple[np.ndarray, np.ndarray]:
        x, y = split.x[:, 0].numpy(), split.y.numpy()  # type: ignore[attr-defined]
        keep = y < classes
        x, y = x[keep][:200], y[keep][:200]
        return (255 - x if flip else x), y

    (xt, yt), (xs, ys) = part(digits.train), part(digits.test)
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return path


def _config(tmp_path: Path, dataset: Path, **kw: object) -> TrainConfig:
    return TrainConfig(**{**TINY, "dataset": f"npz:{dataset}", "max_train_samples": 64, "epochs": 1, **kw})


def _search(out: Path, folder: Path, *extra: str) -> list[str]:
    return ["search", "--dataset", f"imagefolder:{folder}", "--channels", "4", "4", "4", "4", "--epochs", "1",
            "--seeds", "0", "--out", str(out), "--quiet", "--jobs", "1", "--batch-size", "8", "--reference",
            "--device", "cpu", *extra]


def _forget_loaded_data() -> None:
    """As a new process would: the data is loaded again (a process loads a dataset once)."""
    from adact.training import build

    build._DATA_CACHE.clear()


# --- Deliver 1: data identity ---------------------------------------------------------------------


def test_a_finished_run_is_not_reused_for_other_data(tmp_path: Path, digits: DataSplits) -> None:
    data = _npz(tmp_path / "d.npz", digits, classes=4)
    cfg = _config(tmp_path, data)
    first = train(cfg, tmp_path / "run", quiet=True)
    record = read_json(tmp_path / "run" / "data.json")
    assert first["data"] == record and record["classes"] == ["0", "1", "2", "3"]
    assert train(cfg, tmp_path / "run", quiet=True) == first  # the same data: reused
    _npz(data, digits, classes=4, flip=True)  # same classes and counts, other pixels
    _forget_loaded_data()
    with pytest.raises(RunMismatchError, match=r"made on other data \(the same classes and counts, other images "
                                               r".*--restart"):
        train(cfg, tmp_path / "run", quiet=True)
    again = train(cfg, tmp_path / "run", quiet=True, restart=True)
    assert again["data"]["fingerprint"] != record["fingerprint"]


def test_resuming_on_other_data_is_refused_in_one_line(tmp_path: Path, digits: DataSplits,
                                                        kill_at_step: KillAtStep) -> None:
    data = _npz(tmp_path / "d.npz", digits, classes=3)
    cfg = _config(tmp_path, data, epochs=2)
    disarm = kill_at_step(2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", quiet=True)
    disarm()
    assert (tmp_path / "run" / "data.json").is_file() and not (tmp_path / "run" / "result.json").exists()
    _npz(data, digits, classes=4)  # a class added between the kill and the rerun
    _forget_loaded_data()
    with pytest.raises(RunMismatchError) as info:
        train(cfg, tmp_path / "run", quiet=True)
    message = str(info.value)
    assert "made on other data (classes 3 -> 4 (added 3); " in message and "--restart" in message
    assert "\n" not in message


def test_search_rerun_on_a_changed_image_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_image_folder(tmp_path / "pets", per_class={"train": 4, "val": 2}, corrupt=False)
    out = tmp_path / "out"
    assert main(_search(out, folder)) == 0
    shutil.copytree(folder / "train" / "cat", folder / "train" / "hen")  # a fourth class appears
    shutil.copytree(folder / "val" / "cat", folder / "val" / "hen")
    _forget_loaded_data()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a run was trained on other data")

    monkeypatch.setattr(adact.experiments.workers, "train", no_training)
    capsys.readouterr()
    err = cli_error(capsys, _search(out, folder))
    assert "made on other data (classes 3 -> 4 (added hen); train 12 -> 16 images; test 6 -> 8 images" in err
    assert "--restart" in err


def test_out_inside_the_dataset_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_image_folder(tmp_path / "pets", per_class={"all": 4}, corrupt=False) / "all"
    err = cli_error(capsys, _search(folder / "runs", folder))
    assert f"--out {folder / 'runs'} is inside the dataset folder" in err
    assert not (folder / "runs").exists()
    err = cli_error(capsys, ["train", "--dataset", f"imagefolder:{folder}", "--out", str(folder / "r")])
    assert "inside the dataset folder" in err and not (folder / "r").exists()
