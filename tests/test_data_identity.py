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


# --- Deliver 2: what is not a search is refused before any training -----------------------------

NO_ACTIVATION = '''
from torch import nn


def build(num_classes=10, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the search should have been refused")

    monkeypatch.setattr(adact.experiments.workers, "train", refuse)


@pytest.mark.usefixtures("no_training")
def test_a_model_without_activations_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "linear.py").write_text(NO_ACTIVATION)
    folder = write_image_folder(tmp_path / "pets", per_class={"train": 2, "val": 1}, corrupt=False)
    err = cli_error(capsys, _search(tmp_path / "out", folder, "--model", f"{tmp_path / 'linear.py'}:build"))
    assert "has no activation to search: adactify found 0 activation sites" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("no_training")
def test_one_class_and_classes_without_training_images_are_refused(tmp_path: Path, digits: DataSplits,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    one = tmp_path / "one"
    for split in ("train", "val"):
        shutil.copytree(write_image_folder(tmp_path / "src", per_class={split: 2}, corrupt=False) / split / "cat",
                        one / split / "cat")
    err = cli_error(capsys, _search(tmp_path / "out", one))
    assert "one class ('cat'); a classifier needs at least 2 classes" in err and not (tmp_path / "out").exists()

    x, y = digits.train.x[:40, 0].numpy(), digits.train.y[:40].numpy() % 2  # labels 0 and 1 only
    np.savez(tmp_path / "gap.npz", x_train=x, y_train=y, x_test=x[:4], y_test=np.array([0, 1, 2, 0]),
             classes=np.array(["zero", "one", "two"]))
    err = cli_error(capsys, ["train", "--dataset", f"npz:{tmp_path / 'gap.npz'}", "--out", str(tmp_path / "r")])
    assert "1 of 3 classes have no training images ('two')" in err and not (tmp_path / "r").exists()


def test_a_search_in_which_no_adact_run_finished_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    real_train, real_ce = adact.experiments.workers.train, torch.nn.functional.cross_entropy

    def diverging(config: TrainConfig, out: object, **kwargs: object) -> object:
        if config.activation != "adact":
            return real_train(config, out, **kwargs)
        with monkeypatch.context() as m:
            m.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real_ce(*a, **k) * float("nan"))
            return real_train(config, out, **kwargs)

    monkeypatch.setattr(adact.experiments.workers, "train", diverging)
    argv = ["search", "--dataset", "digits", "--channels", "4", "4", "4", "4", "--epochs", "1", "--seeds", "0",
            "--out", str(tmp_path / "out"), "--quiet", "--jobs", "1", "--max-train-samples", "64", "--reference",
            "--device", "cpu"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "adact: search failed: no AdAct run finished (1 diverged)" in captured.err
    assert "FAILED: no AdAct run finished" in captured.out
    assert read_json(tmp_path / "out" / "results.json")["failure"].startswith("no AdAct run finished")
    assert main(argv) == 1  # a rerun skips the diverged run and fails the same way


# --- Deliver 5: a user's files in --out, skipped images in results.json ---------------------------


@pytest.mark.usefixtures("no_training")
def test_a_folder_adact_did_not_make_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_image_folder(tmp_path / "pets", per_class={"train": 2, "val": 1}, corrupt=False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "table.md").write_text("my notes")
    (mine / ".hidden").write_text("not counted")
    err = cli_error(capsys, _search(mine, folder))
    assert f"--out {mine} holds files adact did not write (table.md)" in err
    assert sorted(p.name for p in mine.iterdir()) == [".hidden", "table.md"]
    assert (mine / "table.md").read_text() == "my notes"
    err = cli_error(capsys, ["train", "--out", str(mine), "--epochs", "1"])
    assert "holds files adact did not write (table.md)" in err and not (mine / "config.json").exists()


def test_skipped_images_are_in_results_json(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "pets", per_class={"train": 2, "val": 1})  # with one broken file
    assert main(_search(tmp_path / "out", folder)) == 0
    data = read_json(tmp_path / "out" / "results.json")["data"][f"imagefolder:{folder}"]
    assert data["skipped_images"] == 1 and data["skipped_image_files"] == [str(folder / "train" / "cat" / "broken.png")]
    assert data["classes"] == ["cat", "dog", "fox"] and data["counts"] == {"train": 6, "val": 0, "test": 3}
