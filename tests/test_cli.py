"""The `adact` command line: help, one-line errors with exit status 2, train and analyze."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import cli_error, kill_orphans, wait_until_dead

from adact.cli import main
from adact.errors import UserError

TINY = ["--channels", "4", "8", "8", "8", "--max-train-samples", "128", "--epochs", "2", "--reference",
        "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("argv", [["--help"], ["reproduce", "--help"], ["train", "--help"], ["analyze", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: adact")
    expected = {"--help": "reproduce", "reproduce": "--baselines", "train": "--activation", "analyze": "PATH"}
    assert expected[argv[0]] in out
    if argv[0] in ("reproduce", "train"):
        assert "--temperature-schedule" in out and "--entropy-weight" in out and "--adact-lr-mult" in out


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
    (["train", "--temperature-schedule", "1"], "argument --temperature-schedule: expected T0:T1"),
    (["reproduce", "--temperature-schedule", "1:0"], "two temperatures > 0"),
    (["train", "--entropy-weight", "-0.1"], "argument --entropy-weight: must be a finite number >= 0"),
    (["train", "--adact-lr-mult", "0"], "argument --adact-lr-mult: must be > 0"),
    (["reproduce", "--baselines", "swish"], "unknown activation 'swish'"),
    (["reproduce", "--baselines", "adact"], "unknown baseline activation 'adact'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert message in cli_error(capsys, argv)


def test_analyze_rejects_a_folder_that_is_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "not a run folder" in cli_error(capsys, ["analyze", str(tmp_path)])
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    assert "adact: error:" in cli_error(capsys, ["analyze", str(tmp_path / "best.pt")])


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
    assert main(["train", "--out", str(run), "--keep-checkpoints", "all", *TINY]) == 0  # last.pt is analyzed too
    out = capsys.readouterr().out
    assert "best test acc" in out and "dominant activations" in out and (run / "result.json").is_file()

    assert "discretization gap: mixture" in out and "confidence of each choice" in out

    assert main(["analyze", str(run)]) == 0
    text = text_best = capsys.readouterr().out
    assert "raw weights (logits)" in text and "softmax weights" in text and "best.pt" in text
    conf_rows = text.split("confidence of each choice")[1].splitlines()[2:6]
    assert len(conf_rows) == 4 and all(row.split()[1].startswith("features.") for row in conf_rows)
    assert "discretization gap: mixture" in text  # best.pt is the epoch the gap was measured on
    softmax_rows = text.split("softmax weights")[1].splitlines()[2:6]
    assert len(softmax_rows) == 4 and all(row.count("*") == 1 for row in softmax_rows)
    for name in ("weights.png", "weights.svg", "trajectories.png", "trajectories.svg"):
        assert (run / name).stat().st_size > 0

    figs = tmp_path / "figs"
    assert main(["analyze", str(run / "last.pt"), "--out", str(figs)]) == 0
    text = capsys.readouterr().out
    assert "last.pt" in text and "confidence of each choice" in text
    assert (figs / "weights.png").read_bytes()[:4] == b"\x89PNG" and (figs / "trajectories.png").is_file()

    # A published run folder keeps no checkpoint: analyze reads the best epoch's weights from result.json.
    published = tmp_path / "published"
    published.mkdir()
    for name in ("config.json", "metrics.csv", "result.json"):
        shutil.copy(run / name, published / name)
    assert main(["analyze", str(published)]) == 0
    from_json = capsys.readouterr().out
    assert "result.json (best epoch" in from_json and "no checkpoint in this folder" in from_json
    # the same epoch as best.pt, so the same table, confidences and gap
    table = [t.split("raw weights (logits)")[1].split("figure:")[0] for t in (from_json, text_best)]
    assert table[0] == table[1] and "discretization gap: mixture" in table[0]
    assert (published / "weights.png").read_bytes()[:4] == b"\x89PNG" and (published / "trajectories.png").is_file()
    (published / "result.json").write_text('{"status": "done"}')
    assert "is not the result.json of an `adact train` run" in cli_error(capsys, ["analyze", str(published)])


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
    assert "Discretization gap" in printed and "layer choices are weak" in printed
    (out / "report.md").unlink()
    assert main(["analyze", str(out)]) == 0
    assert "Table 1" in capsys.readouterr().out and (out / "report.md").is_file()
    assert "a reproduce folder is re-rendered in place" in cli_error(capsys, ["analyze", str(out), "--out", "x"])
    # Each choice's confidence records the learned PReLU slope; a PReLU choice whose slope went
    # negative is flagged in the printed summary and in choices.md.
    result_path = next(out.glob("*/seed0/adact/result.json"))
    result = json.loads(result_path.read_text())
    confs = result["best_weights"]["confidence"]
    assert all(isinstance(c["prelu_slope"], float) for c in confs)
    result["best_weights"]["choices"][0] = confs[0]["choice"] = "prelu"
    confs[0]["prelu_slope"] = -0.3
    result_path.write_text(json.dumps(result))
    assert main(["analyze", str(out)]) == 0
    assert "1 of 4 layer choices are PReLU with a negative learned slope" in capsys.readouterr().out
    row = next(line for line in (out / "choices.md").read_text().splitlines() if line.startswith("| 0 |"))
    assert row.split(" | ")[1].startswith("prelu (") and "slope -0.30)" in row and "**negative slope**" in row


# --- the issue-10 edges: every row is one line (or a recovery), never a traceback --------------


def test_version_and_help_do_not_import_torch() -> None:
    code = ("import sys\n"
            "from adact.cli import main\n"
            "assert main(['--help']) == 0\n"
            "try:\n"
            "    main(['--version'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('torch loaded:', 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch loaded: False" in proc.stdout
    from adact import __version__

    assert f"adact {__version__}" in proc.stdout


def test_sharpening_and_baseline_options_reach_the_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import adact.experiments.reproduce

    run = tmp_path / "sharp"
    assert main(["train", "--out", str(run), "--temperature-schedule", "2:0.5", "--entropy-weight", "0.2",
                 "--adact-lr-mult", "0.5", *TINY]) == 0
    capsys.readouterr()
    config = json.loads((run / "config.json").read_text())
    assert (config["temperature_schedule"], config["entropy_weight"], config["adact_lr_mult"]) == ([2.0, 0.5], 0.2, 0.5)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(adact.experiments.reproduce, "reproduce",
                        lambda cfg, restart=False: {"failure": None, **seen.setdefault("cfg", {"cfg": cfg})})
    assert main(["reproduce", "--baselines", "relu", "Mish", "relu", "--temperature-schedule", "1:0.1"]) == 0
    cfg = seen["cfg"]["cfg"]
    assert cfg.baselines == ["relu", "mish"] and cfg.train.temperature_schedule == [1.0, 0.1]


def _digits_npz(path: Path, **override: Any) -> Path:
    from adact.data import load_dataset

    d = load_dataset("digits")
    arrays = {"x_train": d.train.x[:, 0].numpy(), "y_train": d.train.y.numpy(),
              "x_test": d.test.x[:, 0].numpy(), "y_test": d.test.y.numpy()}
    np.savez(path, **{**arrays, **override})
    return path


def test_bad_data_fails_before_any_file_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    y = _digits_npz(tmp_path / "ok.npz")
    with np.load(y) as z:
        y_train = z["y_train"].copy()
        x_test = z["x_test"]
    y_train[0] = 10**9
    huge = _digits_npz(tmp_path / "huge.npz", y_train=y_train)
    empty = _digits_npz(tmp_path / "empty.npz", x_test=x_test[:0], y_test=np.zeros(0, dtype=np.int64))
    out = tmp_path / "out"
    assert "label 1000000000 would mean 1,000,000,001 classes" in cli_error(
        capsys, ["train", "--dataset", f"npz:{huge}", "--out", str(out), *TINY])
    assert "x_test is empty" in cli_error(capsys, ["train", "--dataset", f"npz:{empty}", "--out", str(out), *TINY])
    assert "kernel_size 99 is larger than the 16x16 input images" in cli_error(
        capsys, ["train", "--kernel-size", "99", "--out", str(out), *TINY])
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_reproduce_on_a_missing_device_leaves_nothing_behind(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    argv = ["reproduce", "--out", str(out), "--seeds", "0", *TINY]
    argv[argv.index("cpu")] = "cuda"
    assert "CUDA is not available" in cli_error(capsys, argv)
    assert not out.exists()


def test_unwritable_out_folders_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    err = cli_error(capsys, ["train", "--out", str(a_file), *TINY])
    assert err == f"adact: error: cannot write {a_file}: exists and is not a folder; a file is in the way; " \
                  f"choose another --out folder, or move the file"
    err = cli_error(capsys, ["train", "--out", str(a_file / "run"), *TINY])
    assert f"cannot write {a_file / 'run'}: Not a directory; a part of the path is a file" in err
    err = cli_error(capsys, ["train", "--out", "/proc/adact-test", *TINY])
    assert "cannot write /proc/adact-test" in err and "only the kernel makes files under /proc" in err
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("err, hint", [
    (errno.ENOSPC, "No space left on device; the disk is full; free some space"),
    (errno.EROFS, "Read-only file system; the file system is read-only; choose an --out folder on a writable"),
    (errno.EACCES, "Permission denied; choose an --out folder you may write to"),
])
def test_failed_writes_are_one_line_and_leave_no_half_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           fail_writes: Any, err: int, hint: str) -> None:
    run = tmp_path / "run"
    fail_writes(lambda name: name == "metrics.csv", err)
    message = cli_error(capsys, ["train", "--out", str(run), *TINY])
    assert message == f"adact: error: cannot write {run / 'metrics.csv'}: {hint}" + message.split(hint, 1)[1]
    assert not (run / "metrics.csv").exists() and not list(run.glob(".*.tmp"))
    fail_writes(lambda name: False)
    assert main(["train", "--out", str(run), *TINY]) == 0  # the rerun finishes the run


def test_second_writer_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adact.runs.io import folder_lock

    with folder_lock(tmp_path):  # held by this process, through another open file: flock refuses it too
        err = cli_error(capsys, ["train", "--out", str(tmp_path), *TINY])
    assert f"{tmp_path} is being written by process {os.getpid()}" in err


def test_analyze_refuses_a_checkpoint_with_a_payload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    marker = tmp_path / "payload-ran"
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["best"]["note"] = _Touch(marker)
    torch.save(ckpt, run / "best.pt")
    capsys.readouterr()
    assert "best.pt was refused: it holds the Python object" in cli_error(capsys, ["analyze", str(run)])
    assert "best.pt was refused" in cli_error(capsys, ["analyze", str(run / "best.pt")])
    assert not marker.exists()


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_resume_from_a_truncated_last_pt_warns_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--keep-checkpoints", "all", *TINY]) == 0  # with last.prev.pt
    (run / "result.json").unlink()
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:100])
    capsys.readouterr()
    assert main(["train", "--out", str(run), *TINY]) == 0
    captured = capsys.readouterr()
    assert "adact: warning: " in captured.err and "resuming from last.prev.pt (epoch 1)" in captured.err
    assert "resumed from epoch 1 of 2" in captured.out and "Traceback" not in captured.err
    (run / "result.json").unlink()
    (run / "last.pt").write_bytes(b"")
    (run / "last.prev.pt").write_bytes(b"")
    err = cli_error(capsys, ["train", "--out", str(run), *TINY])
    assert "cannot resume the run in" in err and "--restart" in err
    assert main(["train", "--out", str(run), "--restart", *TINY]) == 0


def test_damaged_json_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "reproduce.json").write_text('{"format": "adact-reproduce-1", "config": {')
    err = cli_error(capsys, ["analyze", str(rep)])
    assert f"{rep / 'reproduce.json'} is not valid JSON" in err


def test_progress_bars_only_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--out", str(tmp_path / "run"), *[a for a in TINY if a != "--quiet"]]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "it/s" not in captured.err  # stderr is not a terminal here
    assert [line.split(":")[0] for line in captured.out.splitlines() if line.startswith("epoch")] == \
        ["epoch  1", "epoch  2"]


def _children(pid: int) -> dict[int, str]:
    """Child processes of ``pid`` with their command lines (Linux /proc)."""
    kids = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_kill_9_of_reproduce_takes_its_workers_along(tmp_path: Path) -> None:
    import signal
    import time

    workers: list[int] = []

    argv = ["reproduce", "--out", str(tmp_path / "rep"), "--seeds", "0", "--jobs", "2",
            *[a for a in TINY if a not in ("--epochs", "2")], "--epochs", "500"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    parent = subprocess.Popen([sys.executable, "-m", "adact", *argv], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.5)
            workers = [p for p, cmd in _children(parent.pid).items() if "spawn_main" in cmd]
        assert len(workers) == 2, "reproduce did not start two workers"
        # Kill mid-training, not mid-import: a worker still importing torch (slow on a loaded
        # machine) only notices its dead parent when its initializer runs, which can take longer
        # than the 30 s below. Each training run writes its config.json first.
        def started() -> int:
            return len(list((tmp_path / "rep").glob("*/seed0/*/config.json")))

        while started() < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert started() == 2, "the two runs did not start"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_until_dead(workers), "a worker outlived `kill -9` of adact reproduce"
    finally:
        parent.kill()
        parent.wait()
        kill_orphans(workers)


@pytest.mark.parametrize("exc", [KeyError("sites"), RuntimeError("shape mismatch"), ValueError("not a UserError")])
def test_a_bug_keeps_its_traceback_and_says_how_to_report_it(exc: Exception, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import adact.info

    def broken() -> int:
        raise exc

    monkeypatch.setattr(adact.info, "main", broken)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and f"{type(exc).__name__}: " in err
    assert "adact: internal error: this is a bug in adact" in err and "`adact info`" in err
    assert "adact: error:" not in err


@pytest.mark.parametrize("exc", [UserError("that file is not a run folder"),
                                 FileNotFoundError(errno.ENOENT, "No such file or directory", "nowhere.npz")])
def test_user_errors_and_os_errors_are_one_line(exc: Exception, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import adact.info

    def refused() -> int:
        raise exc

    monkeypatch.setattr(adact.info, "main", refused)
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adact: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_every_adact_error_class_is_an_adact_error() -> None:
    from adact.errors import AdactError
    from adact.runs.checkpoint import CheckpointError, UnsafeCheckpointError
    from adact.runs.folder import RunMismatchError
    from adact.runs.io import FolderLockedError, WriteError
    from adact.training.loop import DivergedError

    for cls in (CheckpointError, UnsafeCheckpointError, RunMismatchError, FolderLockedError):
        assert issubclass(cls, UserError), cls
    assert issubclass(WriteError, AdactError) and issubclass(WriteError, OSError)
    assert issubclass(DivergedError, AdactError) and issubclass(FolderLockedError, RuntimeError)


@pytest.mark.parametrize("command", ["train", "search", "reproduce"])
def test_option_defaults_are_the_configs(command: str) -> None:
    """One declaration of every setting: with no options, each command's settings are the config defaults."""
    from dataclasses import asdict

    from adact.cli import _train_config, build_parser
    from adact.config import PAPER, SEARCH, SearchConfig, TrainConfig

    argv = [command] + (["--dataset", "digits"] if command == "search" else [])
    args = build_parser().parse_args(argv)
    fixed = {"dataset": "digits", "seed": 0, "activation": "adact"}
    assert asdict(_train_config(args, **fixed)) == asdict(TrainConfig(**fixed))
    if command != "train":
        assert args.seeds == SearchConfig().seeds and args.jobs == SearchConfig().jobs
        assert args.out == (PAPER.out if command == "reproduce" else SEARCH.out)
