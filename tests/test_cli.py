"""The `adact` command line: help, one-line errors with exit status 2, train and analyze."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adact.cli import main

TINY = ["--channels", "4", "8", "8", "8", "--max-train-samples", "128", "--epochs", "2", "--reference",
        "--device", "cpu", "--quiet"]


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adact: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv", [["--help"], ["reproduce", "--help"], ["train", "--help"], ["analyze", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: adact")
    expected = {"--help": "reproduce", "reproduce": "--val-fraction", "train": "--activation", "analyze": "PATH"}
    assert expected[argv[0]] in out


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "--datasets", "mnist"], "unknown dataset 'mnist'"),
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["train", "--activation", "swish"], "unknown activation 'swish'"),
    (["train", "--activation", "relu", "elu"], "--activation got 2 names but the net has 4 blocks"),
    (["train", "--activation", "relu", "elu", "--channels", "8", "8", "8"], "net has 3 blocks"),
    (["train", "--epochs", "-3"], "argument --epochs: must be >= 1, got -3"),
    (["reproduce", "--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["reproduce", "--seeds", "x"], "argument --seeds: expected an integer"),
    (["reproduce", "--val-fraction", "1.5"], "argument --val-fraction: must be in [0, 1)"),
    (["reproduce", "--jobs", "0"], "argument --jobs: must be >= 1, got 0"),
    (["analyze", "/nonexistent/run"], "no such run folder, checkpoint or reproduce folder"),
    (["reproduce", "--datasets", "npz:/nonexistent/fmnist.npz"], "npz file not found"),
    (["train", "--dataset", "npz:/nonexistent/x.npz"], "npz file not found"),
    (["train", "--weight-decay", "-1"], "weight_decay must be >= 0"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert message in _error(capsys, argv)


def test_analyze_rejects_a_folder_that_is_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "not a run folder" in _error(capsys, ["analyze", str(tmp_path)])
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    assert "adact: error:" in _error(capsys, ["analyze", str(tmp_path / "best.pt")])


def test_console_script_exit_status() -> None:
    exe = Path(sys.executable).with_name("adact")
    if not exe.exists():
        found = shutil.which("adact")
        if found is None:
            pytest.skip("console script not installed (pip install -e .)")
        exe = Path(found)
    proc = subprocess.run([str(exe), "train", "--activation", "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("adact: error: argument --activation: unknown activation 'nope'")


def test_train_then_analyze_run_folder_and_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "best test acc" in out and "dominant activations" in out and (run / "result.json").is_file()

    assert main(["analyze", str(run)]) == 0
    text = capsys.readouterr().out
    assert "raw weights (logits)" in text and "softmax weights" in text and "best.pt" in text
    softmax_rows = text.split("softmax weights")[1].splitlines()[2:6]
    assert len(softmax_rows) == 4 and all(row.count("*") == 1 for row in softmax_rows)
    for name in ("weights.png", "weights.svg", "trajectories.png", "trajectories.svg"):
        assert (run / name).stat().st_size > 0

    figs = tmp_path / "figs"
    assert main(["analyze", str(run / "last.pt"), "--out", str(figs)]) == 0
    assert "last.pt" in capsys.readouterr().out
    assert (figs / "weights.png").read_bytes()[:4] == b"\x89PNG" and (figs / "trajectories.png").is_file()


def test_train_fixed_activations_and_divergence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "relu"
    assert main(["train", "--out", str(run), "--activation", "elu", "mish", "silu", "relu", *TINY]) == 0
    capsys.readouterr()
    assert main(["analyze", str(run)]) == 0
    assert "no AdAct units" in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path / "nan"), "--lr", "1e30", "--activation", "relu", *TINY]) == 1
    assert "diverged" in capsys.readouterr().err


def test_reproduce_and_analyze_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    argv = ["reproduce", "--out", str(out), "--seeds", "0", "--jobs", "1", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Table 1 -- best-on-test" in printed and "(n=1, CI n/a)" in printed
    (out / "report.md").unlink()
    assert main(["analyze", str(out)]) == 0
    assert "Table 1" in capsys.readouterr().out and (out / "report.md").is_file()
    assert "a reproduce folder is re-rendered in place" in _error(capsys, ["analyze", str(out), "--out", "x"])
