"""Issue 27: smaller run folders. best.pt without optimizer state, no last.prev.pt, --keep-checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adact.cli import main
from adact.config import TrainConfig
from adact.data import DataSplits
from adact.runs.io import read_json
from adact.training.build import load_checkpoint
from adact.training.loop import train
from conftest import TINY, KillAtStep

pytestmark = pytest.mark.usefixtures("one_thread")

CHECKPOINTS = ("best.pt", "last.pt", "last.prev.pt")


def _kept(run: Path) -> set[str]:
    return {name for name in CHECKPOINTS if (run / name).exists()}


def test_a_finished_run_keeps_best_pt_without_optimizer_by_default(tmp_path: Path, digits: DataSplits) -> None:
    config = TrainConfig(activation="adact", epochs=2, **TINY)
    assert config.keep_checkpoints == "best"
    result = train(config, tmp_path, data=digits, quiet=True)
    assert _kept(tmp_path) == {"best.pt"}
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert "optimizer" not in best and best["epoch"] == result["best_epoch"]
    model, _ = load_checkpoint(tmp_path / "best.pt")  # evaluation and analysis need only the weights
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())
    assert train(config, tmp_path, data=digits, quiet=True) == result  # still a finished run: not trained again


@pytest.mark.parametrize("keep, kept", [("last", {"last.pt"}), ("all", set(CHECKPOINTS)), ("none", set())])
def test_keep_checkpoints(keep: str, kept: set[str], tmp_path: Path, digits: DataSplits) -> None:
    config = TrainConfig(activation="adact", epochs=2, keep_checkpoints=keep, **TINY)
    result = train(config, tmp_path, data=digits, quiet=True)
    assert _kept(tmp_path) == kept
    if "last.pt" in kept:
        assert "optimizer" in torch.load(tmp_path / "last.pt", weights_only=True)
    # The setting decides what is stored, not what is trained: another value reuses the run.
    assert train(TrainConfig(activation="adact", epochs=2, **TINY), tmp_path, data=digits, quiet=True) == result


def test_resume_after_a_kill_is_exact_without_last_prev(tmp_path: Path, digits: DataSplits,
                                                         kill_at_step: KillAtStep) -> None:
    config = TrainConfig(activation="adact", epochs=3, keep_checkpoints="best", **TINY)
    straight = train(config, tmp_path / "straight", data=digits, quiet=True)
    disarm = kill_at_step(4 * 2 + 2)  # 4 steps per epoch: killed during epoch 3
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed", data=digits, quiet=True)
    disarm()
    assert _kept(tmp_path / "killed") == {"best.pt", "last.pt"}  # no last.prev.pt while training either
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"] == 2
    resumed = train(config, tmp_path / "killed", data=digits, quiet=True)
    for key in ("best_test_acc", "final_test_acc", "best_epoch", "weights", "best_weights", "discretization_gap"):
        assert resumed[key] == straight[key], key
    a = torch.load(tmp_path / "straight" / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_option_and_a_run_folder_without_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["--dataset", "digits", "--channels", "4", "8", "8", "8", "--max-train-samples", "128", "--epochs", "1",
            "--device", "cpu", "--reference", "--quiet"]
    assert main(["train", "--out", str(tmp_path / "run"), "--keep-checkpoints", "none", *tiny]) == 0
    assert _kept(tmp_path / "run") == set() and read_json(tmp_path / "run" / "result.json")["status"] == "done"
    assert read_json(tmp_path / "run" / "config.json")["keep_checkpoints"] == "none"
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "run")]) == 0  # from result.json
    assert "softmax weights" in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path / "x"), "--keep-checkpoints", "some", *tiny]) == 2
    assert "--keep-checkpoints" in capsys.readouterr().err and not (tmp_path / "x").exists()
