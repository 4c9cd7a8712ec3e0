"""The training loop's guarantees: resume == uninterrupted, atomic files, NaN guard, rebuildable checkpoints."""

from __future__ import annotations

import csv
import errno
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

import adact.runs.checkpoint
import adact.runs.io
from adact.config import TrainConfig
from adact.data import DataSplits, DeviceLoader, load_dataset
from adact.runs.io import read_json
from adact.training.build import load_checkpoint
from adact.training.evaluate import evaluate
from adact.training.loop import DivergedError, train
from conftest import TINY, lock_holder

STEPS_PER_EPOCH = 4
TIMING = ("seconds", "images_per_s")


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _state(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run / name, map_location="cpu", weights_only=True)["model"]


def _assert_same_run(a: Path, b: Path) -> None:
    assert _rows(a) == _rows(b)
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ra, rb = read_json(a / "result.json"), read_json(b / "result.json")
    for k in ("best_test_acc", "best_epoch", "final_test_acc", "dominant", "weights"):
        assert ra[k] == rb[k], k


def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path, digits: DataSplits,
                                                     kill_at_step: Any) -> None:
    # AdAct: RReLU noise needs the RNG state. Both runs keep last.pt, the final state compared.
    config = TrainConfig(activation="adact", epochs=3, seed=5, keep_checkpoints="all", **TINY)
    train(config, tmp_path / "straight", data=digits, quiet=True)

    disarm = kill_at_step(STEPS_PER_EPOCH + 2)  # the 2nd step of epoch 2
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(config, killed, data=digits, quiet=True)
    assert not (killed / "result.json").exists()
    assert torch.load(killed / "last.pt", weights_only=True)["epoch"] == 1
    assert len(_rows(killed)) == 1

    disarm()
    result = train(config, killed, data=digits, quiet=True)
    assert result["status"] == "done" and result["epochs_run"] == 3
    _assert_same_run(tmp_path / "straight", killed)


def test_same_seed_same_run_on_cpu(tmp_path: Path, digits: DataSplits) -> None:
    config = TrainConfig(activation="adact", epochs=2, seed=3, keep_checkpoints="all", **TINY)
    train(config, tmp_path / "a", data=digits, quiet=True)
    train(config, tmp_path / "b", data=digits, quiet=True)
    _assert_same_run(tmp_path / "a", tmp_path / "b")
    other = train(TrainConfig(activation="adact", epochs=2, seed=4, **TINY), tmp_path / "c", data=digits, quiet=True)
    assert other["weights"] != read_json(tmp_path / "a" / "result.json")["weights"]


def test_finished_run_is_skipped_and_other_config_refused(tmp_path: Path, digits: DataSplits) -> None:
    config = TrainConfig(activation="relu", epochs=1, **TINY)
    first = train(config, tmp_path, data=digits, quiet=True)
    stamp = (tmp_path / "best.pt").stat().st_mtime_ns
    again = train(config, tmp_path, data=digits, quiet=True)
    assert again == first
    assert (tmp_path / "best.pt").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings .*epochs 1 -> 2; lr 0.001 -> 0.002"):
        train(TrainConfig(activation="relu", epochs=2, lr=2e-3, **TINY), tmp_path, data=digits, quiet=True)


def test_nan_loss_stops_with_epoch_and_keeps_last_good_checkpoint(tmp_path: Path, digits: DataSplits,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real_ce = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def ce(logits: torch.Tensor, y: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = real_ce(logits, y, *args, **kwargs)
        if kwargs.get("reduction", "mean") == "mean":  # training steps; evaluation sums
            calls["n"] += 1
            if calls["n"] > STEPS_PER_EPOCH + 1:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", ce)
    with pytest.raises(DivergedError, match="epoch 2"):
        train(TrainConfig(activation="adact", epochs=3, **TINY), tmp_path, data=digits, quiet=True)
    result = read_json(tmp_path / "result.json")
    assert result["status"] == "diverged"
    assert "in epoch 2" in result["message"] and "epoch 1" in result["message"]
    assert result["epochs_run"] == 1
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / name, weights_only=True)
        assert ckpt["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(_rows(tmp_path)) == 1


def test_huge_learning_rate_diverges_in_first_epoch(tmp_path: Path, digits: DataSplits) -> None:
    with pytest.raises(DivergedError, match="epoch 1"):
        train(TrainConfig(activation="relu", epochs=2, lr=1e30, **TINY), tmp_path, data=digits, quiet=True)
    result = read_json(tmp_path / "result.json")
    assert result["status"] == "diverged" and "no checkpoint kept" in result["message"]
    assert not (tmp_path / "last.pt").exists()


def test_full_disk_keeps_the_old_checkpoint_and_leaves_no_temp(tmp_path: Path, digits: DataSplits,
                                                                fail_writes: Any) -> None:
    config = TrainConfig(activation="relu", epochs=2, **TINY)
    writes = {"n": 0}

    def second_last_pt(name: str) -> bool:
        writes["n"] += name == "last.pt"
        return name == "last.pt" and writes["n"] == 2

    fail_writes(second_last_pt)
    with pytest.raises(OSError) as info:
        train(config, tmp_path, data=digits, quiet=True)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "last.pt")
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1  # the old file, intact
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
    fail_writes(lambda name: False)
    assert train(config, tmp_path, data=digits, quiet=True)["epochs_run"] == 2


def test_load_checkpoint_rebuilds_the_model(tmp_path: Path, digits: DataSplits) -> None:
    config = TrainConfig(activation=["elu", "mish", "adact", "relu"], epochs=2, **TINY)
    result = train(config, tmp_path, data=digits, quiet=True)
    model, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["epoch"] == result["best_epoch"]
    loader = DeviceLoader(digits.test, 1000)
    _, acc = evaluate(model, loader)
    assert acc == result["best_test_acc"]
    assert [type(m).__name__ for m in model.activations()] == ["ELU", "Mish", "AdAct", "ReLU"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable adact checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"x": 1}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not an adact checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_validation_split_is_reported(tmp_path: Path) -> None:
    data = load_dataset("digits", val_fraction=0.2)
    result = train(TrainConfig(activation="relu", epochs=2, val_fraction=0.2, **TINY), tmp_path, data=data, quiet=True)
    rows = _rows(tmp_path)
    assert all(r["val_acc"] not in ("", None) for r in rows)
    best_val = max(rows, key=lambda r: float(r["val_acc"]))
    assert result["val_best_epoch"] == int(best_val["epoch"])
    assert result["val_selected_test_acc"] == pytest.approx(float(best_val["test_acc"]))


class _Payload:
    """Unpickling this runs ``Path(marker).touch()``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _plant_payload(path: Path, marker: Path) -> None:
    """Overwrite a checkpoint with one whose pickle carries a payload, keeping everything else."""
    ckpt = torch.load(path, weights_only=True)
    ckpt["metrics"].append({"note": _Payload(marker)})
    torch.save(ckpt, path)


def test_checkpoint_with_a_payload_is_refused_and_never_runs(tmp_path: Path, digits: DataSplits) -> None:
    run = tmp_path / "run"
    config = TrainConfig(activation="relu", epochs=2, keep_checkpoints="all", **TINY)
    train(config, run, data=digits, quiet=True)
    marker = tmp_path / "payload-ran"
    _plant_payload(run / "best.pt", marker)
    with pytest.raises(adact.runs.checkpoint.UnsafeCheckpointError, match=r"best.pt was refused: it holds the Python "
                                                                r"object \S+, which loading would run"):
        load_checkpoint(run / "best.pt")
    assert not marker.exists()

    # On resume: a folder with an unfinished run whose last.pt carries the payload.
    (run / "result.json").unlink()
    _plant_payload(run / "last.pt", marker)
    with pytest.raises(adact.runs.checkpoint.UnsafeCheckpointError, match="last.pt was refused.*--restart"):
        train(config, run, data=digits, quiet=True)
    assert not marker.exists()


def _interrupted_run(path: Path, digits: DataSplits, epochs: int = 3) -> TrainConfig:
    """A run folder that finished ``epochs`` epochs of a longer run: last.pt and last.prev.pt exist."""
    config = TrainConfig(activation="relu", epochs=epochs, keep_checkpoints="all", **TINY)
    train(config, path, data=digits, quiet=True)
    (path / "result.json").unlink()
    return config


def test_truncated_last_pt_falls_back_to_the_previous_one(tmp_path: Path, digits: DataSplits,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = _interrupted_run(tmp_path / "run", digits)
    run = tmp_path / "run"
    assert torch.load(run / "last.prev.pt", weights_only=True)["epoch"] == 2
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.warns(adact.runs.checkpoint.ResumeWarning, match=r"last.pt is not a readable adact checkpoint \(truncated.*"
                                                       r"resuming from last.prev.pt \(epoch 2\)"):
        result = train(config, run, data=digits, quiet=True)
    assert "resumed from epoch 2 of 3" in capsys.readouterr().out
    assert result["epochs_run"] == 3 and len(_rows(run)) == 3
    train(config, tmp_path / "clean", data=digits, quiet=True)
    _assert_same_run(tmp_path / "clean", run)


def test_no_usable_checkpoint_names_the_file_and_restart(tmp_path: Path, digits: DataSplits) -> None:
    config = _interrupted_run(tmp_path, digits, epochs=2)
    (tmp_path / "last.pt").write_bytes(b"")
    (tmp_path / "last.prev.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(adact.runs.checkpoint.CheckpointError, match=r"cannot resume the run in .*last.pt is not a readable "
                                                          r".*last.prev.pt is not a readable.*--restart"):
        train(config, tmp_path, data=digits, quiet=True)
    result = train(config, tmp_path, data=digits, quiet=True, restart=True)
    assert result["status"] == "done" and result["epochs_run"] == 2


def test_stale_temp_files_are_removed_on_the_next_run(tmp_path: Path, digits: DataSplits) -> None:
    config = TrainConfig(activation="relu", epochs=1, **TINY)
    tmp_path.mkdir(exist_ok=True)
    stale = [tmp_path / ".best.pt.k3j_x9q2.tmp", tmp_path / ".metrics.csv.abcdefgh.tmp",
             tmp_path / ".result.json.0a1b2c3d.tmp", tmp_path / ".last.prev.pt.hardlink.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    mine = [tmp_path / ".notes.tmp", tmp_path / "keep.tmp", tmp_path / ".x.toolongname.tmp"]
    for p in mine:
        p.write_text("not ours")
    adact.runs.io.atomic_write_json(tmp_path / "config.json", asdict(config))  # a killed run's folder
    train(config, tmp_path, data=digits, quiet=True)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in mine)


def test_second_writer_is_refused_with_the_holders_pid(tmp_path: Path, digits: DataSplits) -> None:
    with lock_holder(tmp_path) as pid:
        with pytest.raises(adact.runs.io.FolderLockedError, match=f"being written by process {pid}"):
            train(TrainConfig(activation="relu", epochs=1, **TINY), tmp_path, data=digits, quiet=True)
        assert not (tmp_path / "config.json").exists()
    # The kernel released the lock with the process: the folder is usable at once.
    assert train(TrainConfig(activation="relu", epochs=1, **TINY), tmp_path, data=digits, quiet=True)["epochs_run"] == 1


def test_finished_run_without_checkpoints_is_not_overwritten(tmp_path: Path, digits: DataSplits) -> None:
    config = TrainConfig(activation="relu", epochs=1, **TINY)
    first = train(config, tmp_path, data=digits, quiet=True)
    for name in ("best.pt", "last.pt", "last.prev.pt", "config.json"):
        (tmp_path / name).unlink(missing_ok=True)  # as published run folders are kept
    with pytest.raises(ValueError, match=r"other settings \(lr 0.001 -> 0.002; see its result.json\).*--restart"):
        train(TrainConfig(activation="relu", epochs=1, lr=2e-3, **TINY), tmp_path, data=digits, quiet=True)
    assert read_json(tmp_path / "result.json") == first
    redone = train(TrainConfig(activation="relu", epochs=1, lr=2e-3, **TINY), tmp_path, data=digits, quiet=True,
                   restart=True)
    assert redone["config"]["lr"] == 2e-3


def test_result_json_without_its_fields_is_finished_again(tmp_path: Path, digits: DataSplits) -> None:
    config = TrainConfig(activation="relu", epochs=1, **TINY)
    first = train(config, tmp_path, data=digits, quiet=True)
    broken = {k: v for k, v in first.items() if k != "n_params"}
    adact.runs.io.atomic_write_json(tmp_path / "result.json", broken)
    again = train(config, tmp_path, data=digits, quiet=True)
    assert again["n_params"] == first["n_params"] and again["best_test_acc"] == first["best_test_acc"]
    (tmp_path / "result.json").write_text('{"status": "done", ')
    with pytest.raises(ValueError, match=r"result.json is not valid JSON"):
        train(config, tmp_path, data=digits, quiet=True)


def test_unusable_inputs_fail_before_the_folder_is_made(tmp_path: Path, digits: DataSplits) -> None:
    out = tmp_path / "never"
    empty_test = DataSplits("digits", digits.train, digits.test.subset([]), None, digits.classes)
    with pytest.raises(ValueError, match="the test split is empty"):
        train(TrainConfig(activation="relu", epochs=1, **TINY), out, data=empty_test, quiet=True)
    with pytest.raises(ValueError, match="kernel_size 99"):
        train(TrainConfig(activation="relu", epochs=1, kernel_size=99, **TINY), out, data=digits, quiet=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train(TrainConfig(activation="relu", epochs=1, **{**TINY, "device": "cuda"}), out, data=digits)
    assert not out.exists()


def test_a_second_task_plugs_into_the_loop(tmp_path: Path, digits: DataSplits, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop takes metric, direction, loss and evaluation from the task: a lower-is-better task works unedited."""
    import adact.training.loop
    from adact.training.task import ImageClassification

    class ErrorRate(ImageClassification):
        metric = "err"
        higher_is_better = False

        def count(self, output: torch.Tensor, target: torch.Tensor) -> float:
            return int((output.argmax(1) != target).sum())

        def evaluate(self, model: torch.nn.Module, loader: object, bf16: bool) -> tuple[float, float]:
            loss, acc = super().evaluate(model, loader, bf16)  # type: ignore[arg-type]
            return loss, 1.0 - acc

    monkeypatch.setattr(adact.training.loop, "task_for", lambda config: ErrorRate())
    config = TrainConfig(activation="adact", epochs=3, val_fraction=0.2, **TINY)
    data = load_dataset("digits", val_fraction=0.2)
    result = train(config, tmp_path, data=data, quiet=True)
    rows = _rows(tmp_path)
    errs = [float(r["test_err"]) for r in rows]
    assert "test_acc" not in rows[0] and "train_err" in rows[0] and "val_err" in rows[0]
    assert result["metric"] == "err" and result["higher_is_better"] is False
    assert result["best_test_err"] == min(errs) and result["best_epoch"] == 1 + errs.index(min(errs))
    vals = [float(r["val_err"]) for r in rows]
    assert result["val_best_epoch"] == 1 + vals.index(min(vals))
    assert result["final_test_err"] == errs[-1]

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(adact.training.loop, "_run", no_training)
    assert train(config, tmp_path, data=data, quiet=True) == result  # finished: its schema is the task's
