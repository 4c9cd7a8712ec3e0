"""Data parallelism under torchrun (CPU, gloo): same run as one process, one writer, no hangs.

The multi-process tests start real processes (torchrun, or ranks started by hand with the
variables torchrun sets) with timeouts, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import adact
import adact.training.distributed as ddp
from adact.cli import build_parser
from adact.config import TrainConfig
from adact.data import DeviceLoader, load_dataset
from adact.data.arrays import ArrayDataset
from adact.experiments.plan import resolved_jobs, validate
from adact.experiments.reproduce import paper_config
from adact.runs.io import read_json
from adact.training.loop import train

SRC = str(Path(adact.__file__).resolve().parent.parent)
LIMIT_S = 240  # one multi-process run; digits for 2 epochs takes ~20 s on 2 shared cores
TIMING = ("seconds", "images_per_s")
TINY_ARGS = ["--channels", "8", "16", "16", "16", "--quiet", "--device", "cpu"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "adact", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=LIMIT_S)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, argv: list[str], cwd: Path, prelude: str = "") -> subprocess.Popen[str]:
    """One rank started by hand, as torchrun would (no agent that kills the others on a failure)."""
    code = f"import sys\n{prelude}\nfrom adact.cli import main\nsys.exit(main({argv!r}))\n"
    env = _env(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), ADACT_DIST_TIMEOUT="60")
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen[str]], timeout: float = LIMIT_S) -> list[tuple[int, str, str]]:
    out = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            so, se = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, so, se))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _mix(run: Path) -> dict[str, float]:
    return {k: v for k, v in read_json(run / "result.json")["weights"].items() if k.startswith("mix/")}


def _assert_close_runs(a: Path, b: Path) -> None:
    ra, rb = _rows(a), _rows(b)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb]
    for x, y in zip(ra, rb):
        assert abs(float(x["test_acc"]) - float(y["test_acc"])) <= 0.01, (x["test_acc"], y["test_acc"])
    ma, mb = _mix(a), _mix(b)
    assert ma.keys() == mb.keys() and ma
    assert max(abs(ma[k] - mb[k]) for k in ma) < 1e-3


# --- one process: the pieces -----------------------------------------------------------------


def test_shards_cover_every_global_batch_once_with_the_same_augmentation() -> None:
    g = torch.Generator().manual_seed(0)
    ds = ArrayDataset(torch.randint(0, 256, (37, 1, 6, 6), dtype=torch.uint8, generator=g), torch.arange(37) % 10)
    kw: dict[str, Any] = {"shuffle": True, "seed": 3, "hflip": True, "crop_padding": 2}
    whole = DeviceLoader(ds, 8, **kw)
    whole.set_epoch(4)
    parts = [DeviceLoader(ds, 8, rank=r, world_size=3, **kw) for r in range(3)]
    for p in parts:
        p.set_epoch(4)
    for (x, y), *shards in zip(whole, *parts):
        assert torch.equal(torch.cat([s[0] for s in shards]), x)  # same samples, same flips and crops
        assert torch.equal(torch.cat([s[1] for s in shards]), y)
        sizes = [len(s[1]) for s in shards]
        assert max(sizes) - min(sizes) <= 1
        assert all(p.global_batch == len(y) for p in parts)
    assert len(parts[0]) == len(whole) == 5  # 37 = 4 x 8 + 5: the short last batch is split 2/2/1


def test_bad_rank_is_refused() -> None:
    ds = load_dataset("digits").test
    with pytest.raises(ValueError, match="rank must be in"):
        DeviceLoader(ds, 8, rank=2, world_size=2)


def test_environment_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert ddp.env() == ddp.DistEnv() and not ddp.env().enabled and ddp.env().is_writer
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ddp.env() == ddp.DistEnv(4, 3, 1) and ddp.env().enabled and not ddp.env().is_writer
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="inconsistent torchrun environment"):
        ddp.env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        ddp.env()
    monkeypatch.setenv("ADACT_DIST_TIMEOUT", "0")
    with pytest.raises(ValueError, match="ADACT_DIST_TIMEOUT"):
        ddp.timeout()


def test_single_process_is_untouched() -> None:
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    assert torch.equal(ddp.shard_loss(logits, y, 5), F.cross_entropy(logits, y))
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    assert ddp.wrap(model, torch.device("cpu")) is model
    assert ddp.convert_sync_bn(model, torch.device("cpu")) is model
    assert ddp.all_sum(1.5, 2) == (1.5, 2) and ddp.writer() and ddp.shard() == {"rank": 0, "world_size": 1}


def test_jobs_place_runs_round_robin_and_do_not_mix_with_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [ddp.job_device_index(i, 3) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert resolved_jobs(paper_config(epochs=1, device="cpu")) == 1
    with pytest.raises(ValueError, match="use one or the other"):
        validate(paper_config(epochs=1, device="cpu", jobs=2))


def test_lost_peer_is_one_readable_line_and_other_errors_are_not_one(monkeypatch: pytest.MonkeyPatch) -> None:
    gloo = RuntimeError("[/x/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:4467: "
                        "Connection reset by peer. This is typically caused by a remote worker hanging")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert ddp.peer_failure_message(gloo) is None  # not under torchrun: a bug keeps its traceback
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert ddp.peer_failure_message(gloo) == (
        "rank 1: lost another rank of the torchrun job (Read error [127.0.0.1]:4467: Connection reset by peer); "
        "every rank stops. Rerun the same command to resume from the last checkpoint")
    assert ddp.peer_failure_message(RuntimeError("shape mismatch")) is None


def test_sync_bn_flag_is_parsed() -> None:
    assert build_parser().parse_args(["train", "--sync-bn"]).sync_bn
    assert not build_parser().parse_args(["reproduce"]).sync_bn


# --- several processes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``torchrun --nproc-per-node 2 -m adact train --dataset digits --epochs 2 --sync-bn``."""
    base = tmp_path_factory.mktemp("ddp")
    done = _torchrun(2, ["train", "--dataset", "digits", "--epochs", "2", "--sync-bn", "--device", "cpu",
                         "--keep-checkpoints", "all", "--out", "O2"], base)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1, done.stdout  # rank 1 prints nothing
    return base / "O2"


@pytest.mark.slow
def test_two_ranks_with_sync_bn_match_one_process(two_ranks: Path, tmp_path: Path) -> None:
    one = tmp_path / "O1"
    train(TrainConfig(dataset="digits", epochs=2, device="cpu", keep_checkpoints="all"), one, quiet=True)
    _assert_close_runs(one, two_ranks)
    assert sorted(p.name for p in two_ranks.iterdir()) == sorted(
        [".adact.lock", "best.pt", "config.json", "data.json", "functions.png", "functions.svg", "last.prev.pt",
         "last.pt", "metrics.csv", "result.json"])  # functions.*: `adact train` draws each unit's function (rank 0 alone)
    assert len(_rows(two_ranks)) == 2
    result = read_json(two_ranks / "result.json")
    assert result["status"] == "done" and result["processes"] == 2 and result["sync_bn"] is True


def _interrupt_after_epoch_1(src: Path, dst: Path) -> None:
    """The folder as a run killed during epoch 2 leaves it: last.pt of epoch 1, no result."""
    shutil.copytree(src, dst)
    os.replace(dst / "last.prev.pt", dst / "last.pt")
    (dst / "result.json").unlink()
    assert torch.load(dst / "last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_interrupted_run_resumes_on_two_ranks_exactly_and_on_one_within_tolerance(two_ranks: Path,
                                                                                  tmp_path: Path) -> None:
    same = tmp_path / "same"
    _interrupt_after_epoch_1(two_ranks, same)
    done = _torchrun(2, ["train", "--dataset", "digits", "--epochs", "2", "--sync-bn", "--device", "cpu",
                         "--keep-checkpoints", "all", "--out", str(same)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from epoch 1 of 2" in done.stdout
    assert _rows(same) == _rows(two_ranks)  # every loss, accuracy and weight of every epoch
    assert _mix(same) == _mix(two_ranks)

    fewer = tmp_path / "fewer"
    _interrupt_after_epoch_1(two_ranks, fewer)
    result = train(TrainConfig(dataset="digits", epochs=2, device="cpu", keep_checkpoints="all"), fewer, quiet=True)
    assert result["status"] == "done" and result["processes"] == 1
    _assert_close_runs(fewer, two_ranks)


@pytest.mark.slow
def test_without_random_activations_two_ranks_follow_one_process_to_rounding(tmp_path: Path) -> None:
    """No RReLU noise: with --sync-bn the 2-rank run takes the 1-process steps, up to float rounding."""
    args = ["train", "--dataset", "digits", "--epochs", "2", "--activation", "relu", "--sync-bn",
            "--batch-size", "50", "--keep-checkpoints", "last", "--out", "two", *TINY_ARGS]  # 1437 = 28 x 50 + 37: uneven slices too
    done = _torchrun(2, args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one = tmp_path / "one"
    train(TrainConfig(dataset="digits", epochs=2, activation="relu", batch_size=50, channels=[8, 16, 16, 16],
                      device="cpu", keep_checkpoints="last"), one, quiet=True)
    for a, b in zip(_rows(one), _rows(tmp_path / "two"), strict=True):
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-5
        assert float(a["train_acc"]) == float(b["train_acc"])
        # Evaluation is looser on purpose. A conv bias in front of BatchNorm has a true gradient of
        # zero, so what it gets is rounding noise, which AdamW scales up to steps of size lr: those
        # biases (and the running means that follow them) drift apart between any two runs whose sums
        # round differently, and only eval mode sees it. Measured: test loss 1.04e-3 apart on an
        # AVX2 CPU (AMD EPYC Zen 3), under 1e-3 with AVX-512; the parameters that matter agree below.
        assert abs(float(a["test_loss"]) - float(b["test_loss"])) < 1e-2 * float(a["test_loss"])
        assert abs(float(a["test_acc"]) - float(b["test_acc"])) <= 3 / 360 + 1e-9  # at most three images
    sa = torch.load(one / "last.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    drift = {k for k in sa if k.endswith(".0.bias") or k.endswith(".running_mean")}  # see above
    assert drift and sa.keys() == sb.keys()
    for k in sa.keys() - drift:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.slow
def test_per_rank_batchnorm_finishes_and_learns(tmp_path: Path) -> None:
    done = _torchrun(2, ["train", "--dataset", "digits", "--epochs", "2", "--val-fraction", "0.1",
                         "--out", "run", *TINY_ARGS], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = read_json(tmp_path / "run" / "result.json")
    assert result["status"] == "done" and result["sync_bn"] is False and result["processes"] == 2
    assert result["final_test_acc"] > 0.5 and result["val_selected_test_acc"] is not None
    assert len(_rows(tmp_path / "run")) == 2


@pytest.mark.slow
def test_killed_rank_makes_the_other_exit_with_a_clear_error(tmp_path: Path) -> None:
    port = _free_port()
    argv = ["train", "--dataset", "digits", "--epochs", "50", "--out", "run", *TINY_ARGS]
    procs = [_rank(r, 2, port, argv, tmp_path) for r in range(2)]
    try:
        deadline = time.monotonic() + LIMIT_S
        while not (tmp_path / "run" / "metrics.csv").exists():  # epoch 1 is done: mid-run
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "run did not start"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        (code, _, err), (killed, _, _) = _finish(procs, timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert killed == -signal.SIGKILL
    assert code == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("adact: error:")]
    assert len(lines) == 1 and "lost another rank" in lines[0] and "Rerun the same command" in lines[0], err[-3000:]
    assert "Traceback" not in err
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] >= 1  # the resume point


# Rank 1 alone gets a NaN loss in its 3rd training step.
_NAN_ON_RANK_1 = """
import os, torch, torch.nn.functional as F
if os.environ["RANK"] == "1":
    real, calls = F.cross_entropy, [0]
    def ce(*a, **k):
        out = real(*a, **k)
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] == 3:
                out = out * float("nan")
        return out
    F.cross_entropy = ce
"""


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank_as_diverged(tmp_path: Path) -> None:
    port = _free_port()
    argv = ["train", "--dataset", "digits", "--epochs", "2", "--out", "run", *TINY_ARGS]
    results = _finish([_rank(r, 2, port, argv, tmp_path, _NAN_ON_RANK_1) for r in range(2)])
    for code, _, err in results:
        assert code == 1, err[-3000:]
        assert "training diverged" in err and "in epoch 1" in err
    result = read_json(tmp_path / "run" / "result.json")
    assert result["status"] == "diverged" and result["epochs_run"] == 0
    assert "loss became nan in epoch 1" in result["message"]


@pytest.mark.slow
def test_reproduce_under_torchrun_trains_every_run_on_both_ranks_and_writes_once(tmp_path: Path) -> None:
    done = _torchrun(2, ["reproduce", "--seeds", "0", "--epochs", "1", "--max-train-samples", "256",
                         "--channels", "4", "8", "8", "8", "--quiet", "--device", "cpu", "--out", "R"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Table 1") == 1  # rank 1 prints nothing
    out = tmp_path / "R"
    for model in ("adact", "relu", "optimized"):
        result = read_json(out / "digits" / "seed0" / model / "result.json")
        assert result["status"] == "done" and result["processes"] == 2
        assert len(_rows(out / "digits" / "seed0" / model)) == 1
    assert (out / "results.json").is_file() and (out / "report.md").is_file()
