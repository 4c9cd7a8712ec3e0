"""`adact reproduce` end to end on digits: every output file, rerun skips, resume, divergence, parallel jobs."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import kill_orphans, lock_holder, pid_alive, wait_until_dead

import adact.experiments.plan
import adact.experiments.workers
import adact.runs.io
from adact.activations import DEFAULT_CANDIDATES
from adact.choice import snapshots_from_record
from adact.config import SearchConfig as ReproduceConfig
from adact.experiments.plan import resolved_jobs, validate
from adact.experiments.reproduce import paper_config, reproduce
from adact.reporting.records import checkpoint_weights, collect
from adact.reporting.render import render
from adact.runs.io import read_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny(out: Path, **kw: Any) -> ReproduceConfig:
    """Digits, 128 training images, narrow convs, the reference AdAct: seconds per run."""
    base: dict[str, Any] = {"datasets": ["digits"], "seeds": [0, 1], "epochs": 2, "out": str(out),
                            "max_train_samples": 128, "channels": [4, 8, 8, 8], "device": "cpu",
                            "quiet": True, "fused": False, "jobs": 1}
    base.update(kw)
    return paper_config(**base)


@pytest.fixture(scope="module")
def done_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReproduceConfig, dict[str, Any], list[str]]:
    cfg = tiny(tmp_path_factory.mktemp("reproduce") / "out")
    log: list[str] = []
    results = reproduce(cfg, log=log.append)
    return cfg, results, log


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("*.pt")}


def test_writes_every_file(done_run: tuple[ReproduceConfig, dict[str, Any], list[str]]) -> None:
    cfg, results, log = done_run
    out = Path(cfg.out)
    for seed in (0, 1):
        for model in ("adact", "relu", "optimized"):
            run = out / "digits" / f"seed{seed}" / model
            assert read_json(run / "result.json")["status"] == "done"
            files = {p.name for p in run.iterdir()}
            assert {"config.json", "data.json", "metrics.csv", "best.pt"} <= files
            assert not {"last.pt", "last.prev.pt"} & files  # a finished run keeps best.pt (--keep-checkpoints)

    # table1.md: one row per table, with n=2 in every model cell
    md = (out / "table1.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| `digits`")]
    assert len(rows) == 4  # best, final, validation-selected, discretization gap
    best = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(best) == 9 and all("(n=2)" in best[i] for i in (1, 3, 5)) and best[2] == "—"
    assert re.fullmatch(r"[+−]\d\.\d{4} \[[+−]\d\.\d{4}, [+−]\d\.\d{4}\] \(n=2\)", best[7])

    table = list(csv.DictReader(open(out / "table1.csv", newline="")))
    assert [r["dataset"] for r in table] == ["digits"] * 3
    runs = {(r["seed"], r["model"]): r for r in results["runs"]}
    accs = [runs[(s, "adact")]["best_test_acc"] for s in (0, 1)]
    assert float(table[0]["adact_mean"]) == pytest.approx(sum(accs) / 2)
    assert table[0]["adact_n"] == "2" and table[2]["adact_n"] == "0"  # no validation split

    choices = read_json(out / "choices.json")["digits"]
    for seed in ("0", "1"):
        entry = choices["per_seed"][seed]
        assert len(entry["choices"]) == 4 and set(entry["choices"]) <= set(DEFAULT_CANDIDATES)
        # The Optimized run trained exactly the choices of the AdAct run's best checkpoint.
        opt = read_json(out / "digits" / f"seed{seed}" / "optimized" / "config.json")
        assert opt["activation"] == entry["choices"]
        adact_dir = out / "digits" / f"seed{seed}" / "adact"
        from_ckpt = checkpoint_weights(adact_dir / "best.pt")
        assert from_ckpt["choices"] == entry["choices"]
        # result.json carries the same best-epoch weights, so published runs need no checkpoints.
        from_json = read_json(adact_dir / "result.json")["best_weights"]
        for key in ("paths", "candidates", "choices"):
            assert from_json[key] == from_ckpt[key]
        for key in ("raw", "mix"):
            assert np.allclose(from_json[key], from_ckpt[key], rtol=1e-6, atol=0)
        # Confidence and the gap of each AdAct run travel into choices.json and the gap table.
        assert entry["confidence"] == from_json["confidence"] and len(entry["confidence"]) == 4
        assert [c["choice"] for c in entry["confidence"]] == entry["choices"]
        gap = read_json(adact_dir / "result.json")["discretization_gap"]
        assert entry["discretization_gap"] == gap and gap["mixture_acc"] == runs[(int(seed), "adact")]["best_test_acc"]
    gap_row = [c.strip() for c in rows[3].strip("|").split("|")]
    assert gap_row[1] == best[1] and "(n=2)" in gap_row[2] and "(n=2)" in gap_row[3]  # mixture = AdAct's Table 1
    assert "Discretization gap" in md and "margin" in (out / "choices.md").read_text()
    assert choices["n_adact_units"] == 4 and choices["n_adact_params"] == 8 * 4
    assert choices["n_params"]["adact"] == choices["n_params"]["relu"] + 32
    assert "most common" in (out / "choices.md").read_text()

    # Each unit's |mixture - chosen| over its recorded inputs, per seed, in choices.md (issue 25).
    gaps = (out / "choices.md").read_text().split("Mean |mixture(x) − chosen(x)|")[1]
    for seed in (0, 1):
        units = snapshots_from_record(read_json(out / "digits" / f"seed{seed}" / "adact" / "result.json")["best_weights"])
        rows = [line.split(" | ") for line in gaps.splitlines() if line.startswith("| ") and "`" in line]
        assert [float(r[2 + seed]) for r in rows] == [round(u.function_gap, 4) for u in units]  # type: ignore[arg-type]
    for kind in ("weights", "functions", "trajectories"):
        files = results["figures"]["digits"][kind]
        assert sorted(Path(f).suffix for f in files) == [".png", ".svg"]
        png = out / next(f for f in files if f.endswith(".png"))
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
        assert (out / next(f for f in files if f.endswith(".svg"))).read_text().lstrip().startswith("<?xml")

    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert any(link.endswith("_weights.png") for link in links) and any("trajectories" in link for link in links)
    assert any(link.endswith("_functions.png") for link in links)
    for link in links:
        assert (out / link).exists(), link
    assert json.loads((out / "results.json").read_text())["summary"]["digits"]["models"]["relu"]["best"]["n"] == 2
    assert not list(out.rglob(".*.tmp"))
    assert any(line.startswith("Table 1 -- best-on-test") for line in log)  # printed at the end


def test_baselines_and_sharpening(tmp_path: Path) -> None:
    cfg = tiny(tmp_path / "out", seeds=[0], epochs=1, baselines=["relu", "mish"], temperature_schedule=[1.0, 0.5],
               entropy_weight=0.1, adact_lr_mult=2.0)
    log: list[str] = []
    results = reproduce(cfg, log=log.append)
    out = Path(cfg.out)
    seed0 = out / "digits" / "seed0"
    assert sorted(p.name for p in seed0.iterdir()) == ["adact", "mish", "optimized", "relu"]
    assert read_json(seed0 / "mish" / "config.json")["activation"] == "mish"
    adact_cfg = read_json(seed0 / "adact" / "config.json")
    assert (adact_cfg["temperature_schedule"], adact_cfg["entropy_weight"], adact_cfg["adact_lr_mult"]) == ([1.0, 0.5],
                                                                                                           0.1, 2.0)
    for model in ("relu", "mish", "optimized"):  # no mixtures: these runs keep the paper's settings
        c = read_json(seed0 / model / "config.json")
        assert (c["temperature_schedule"], c["entropy_weight"], c["adact_lr_mult"]) == (None, 0.0, 1.0)
    md = (out / "table1.md").read_text()
    assert "| Mish |" in md and "Optimized − Mish [95% CI]" in md and "AdAct − ReLU [95% CI]" in md
    e = results["summary"]["digits"]
    mish = read_json(seed0 / "mish" / "result.json")["best_test_acc"]
    opt = read_json(seed0 / "optimized" / "result.json")["best_test_acc"]
    assert e["diffs"]["optimized"]["mish"]["best"]["mean"] == pytest.approx(opt - mish)
    table = list(csv.DictReader(open(out / "table1.csv", newline="")))
    assert float(table[0]["optimized_minus_mish_mean"]) == pytest.approx(opt - mish)
    report = (out / "report.md").read_text()
    assert "ConvNet-ReLU, ConvNet-Mish" in report and "temperature annealed 1 → 0.5" in report
    assert any("digits seed 0 Mish: done" in line for line in log)
    # An older manifest without baselines reads as the paper's (ReLU only).
    manifest = read_json(out / "reproduce.json")
    del manifest["config"]["baselines"]
    (out / "reproduce.json").write_text(json.dumps(manifest))
    cfg_back, records = collect(out)
    assert cfg_back.baselines == ["relu"] and {r.model for r in records} == {"adact", "relu", "optimized"}


@pytest.mark.parametrize("baselines, match", [([], "at least one baseline"), (["adact"], "unknown baseline"),
                                              (["relu", "relu"], "distinct")])
def test_bad_baselines_fail_before_training(tmp_path: Path, baselines: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reproduce(tiny(tmp_path / "out", baselines=baselines))
    assert not (tmp_path / "out").exists()


def test_rerun_skips_finished_runs(done_run: tuple[ReproduceConfig, dict[str, Any], list[str]],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, results, _ = done_run
    before = _mtimes(Path(cfg.out))

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(adact.experiments.workers, "train", no_training)
    log: list[str] = []
    again = reproduce(cfg, log=log.append)
    assert _mtimes(Path(cfg.out)) == before
    assert sum("already done, skipped" in line for line in log) == 6
    assert again["summary"] == results["summary"]


def test_killed_run_resumes_and_missing_run_is_redone_identically(
        done_run: tuple[ReproduceConfig, dict[str, Any], list[str]], tmp_path: Path,
        kill_at_step: Any) -> None:
    cfg, results, _ = done_run
    out = tmp_path / "copy"
    shutil.copytree(cfg.out, out)
    seed1 = out / "digits" / "seed1"
    shutil.rmtree(seed1 / "relu")
    shutil.rmtree(seed1 / "optimized")
    untouched = {k: v for k, v in _mtimes(out).items() if "seed0" in k or "adact" in k}
    copy_cfg = replace(cfg, out=str(out))

    disarm = kill_at_step(3)  # 128 images / batch 64: the first step of epoch 2
    with pytest.raises(KeyboardInterrupt):
        reproduce(copy_cfg, log=lambda _: None)
    assert torch.load(seed1 / "relu" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (seed1 / "relu" / "result.json").exists()

    disarm()
    again = reproduce(copy_cfg, log=lambda _: None)
    assert {k: v for k, v in _mtimes(out).items() if k in untouched} == untouched
    old = {(r["seed"], r["model"]): r for r in results["runs"]}
    new = {(r["seed"], r["model"]): r for r in again["runs"]}
    for key in ((1, "relu"), (1, "optimized")):
        for field in ("status", "best_test_acc", "final_test_acc", "best_epoch", "activation"):
            assert new[key][field] == old[key][field], (key, field)
    assert again["summary"] == results["summary"]


def test_diverged_adact_run_is_reported_and_others_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_train, real_ce = adact.experiments.workers.train, torch.nn.functional.cross_entropy

    def flaky_train(config: Any, out: Any, **kwargs: Any) -> Any:
        if config.activation == "adact" and config.seed == 1:
            with monkeypatch.context() as m:
                m.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real_ce(*a, **k) * float("nan"))
                return real_train(config, out, **kwargs)
        return real_train(config, out, **kwargs)

    monkeypatch.setattr(adact.experiments.workers, "train", flaky_train)
    cfg = tiny(tmp_path / "out", epochs=1)
    log: list[str] = []
    results = reproduce(cfg, log=log.append)
    status = {(r["seed"], r["model"]): r["status"] for r in results["runs"]}
    assert status == {(0, "adact"): "done", (0, "relu"): "done", (0, "optimized"): "done",
                      (1, "adact"): "diverged", (1, "relu"): "done", (1, "optimized"): "skipped"}
    assert any("DIVERGED" in line and "epoch 1" in line for line in log)
    assert any("seed 1 Optimized: skipped" in line for line in log)
    row = next(line for line in (tmp_path / "out" / "table1.md").read_text().splitlines() if "`digits`" in line)
    assert "(n=1); 1 diverged" in row and "(n=1); 1 skipped" in row
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**diverged** — " in report and "loss became nan in epoch 1" in report and "**skipped**" in report
    assert "diverged" in (tmp_path / "out" / "choices.md").read_text()

    # A rerun does not retry the diverged run (same config, same outcome) and still reports it.
    monkeypatch.setattr(adact.experiments.workers, "train", real_train)
    log.clear()
    again = reproduce(cfg, log=log.append)
    assert {(r["seed"], r["model"]): r["status"] for r in again["runs"]} == status
    assert any("already diverged, skipped" in line for line in log)


def test_parallel_jobs(tmp_path: Path) -> None:
    results = reproduce(tiny(tmp_path / "out", seeds=[3], epochs=1, jobs=2), log=lambda _: None)
    assert [r["status"] for r in results["runs"]] == ["done"] * 3
    opt = read_json(tmp_path / "out" / "digits" / "seed3" / "optimized" / "config.json")
    assert opt["activation"] == results["choices"]["digits"]["per_seed"]["3"]["choices"]


def test_render_rebuilds_outputs_without_training(done_run: tuple[ReproduceConfig, dict[str, Any], list[str]],
                                                  tmp_path: Path) -> None:
    cfg, _, _ = done_run
    out = tmp_path / "copy"
    shutil.copytree(cfg.out, out)
    table = (out / "table1.md").read_text()
    for name in ("table1.md", "table1.csv", "report.md", "choices.json"):
        (out / name).unlink()
    shutil.rmtree(out / "figures")
    render(out)
    assert (out / "table1.md").read_text() == table
    assert (out / "figures" / "digits_weights.png").is_file() and (out / "report.md").is_file()
    _, records = collect(out)
    assert len(records) == 6 and all(r.status == "done" for r in records)


def test_npz_named_after_a_paper_dataset_gets_its_paper_row(tmp_path: Path) -> None:
    from adact.data import load_dataset

    d = load_dataset("digits")
    np.savez(tmp_path / "fmnist.npz", x_train=d.train.x[:, 0].numpy(), y_train=d.train.y.numpy(),
             x_test=d.test.x[:, 0].numpy(), y_test=d.test.y.numpy())
    spec = f"npz:{tmp_path / 'fmnist.npz'}"
    results = reproduce(tiny(tmp_path / "out", datasets=[spec], seeds=[0], epochs=1), log=lambda _: None)
    assert (tmp_path / "out" / "npz-fmnist" / "seed0" / "optimized" / "result.json").is_file()
    row = next(line for line in (tmp_path / "out" / "table1.md").read_text().splitlines() if "npz:" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "0.921" and cells[4] == "0.918" and cells[6] == "0.922"
    assert results["summary"][spec]["paper_key"] == "fmnist"


def test_default_jobs_use_the_cores_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adact.experiments.plan.os, "cpu_count", lambda: 16)
    assert resolved_jobs(tiny(tmp_path, jobs=None, seeds=[0, 1, 2])) == 6  # 3 AdAct + 3 ReLU runs can start
    assert resolved_jobs(tiny(tmp_path, jobs=None, seeds=list(range(10)))) == 16
    assert resolved_jobs(tiny(tmp_path, jobs=3)) == 3
    monkeypatch.setattr(adact.experiments.plan.os, "cpu_count", lambda: None)
    assert resolved_jobs(tiny(tmp_path, jobs=None)) == 1


def test_bad_settings_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        validate(tiny(tmp_path, datasets=["mnist"]))
    with pytest.raises(FileNotFoundError, match="npz file not found"):
        validate(tiny(tmp_path, datasets=["npz:nowhere/fmnist.npz"]))
    with pytest.raises(ValueError, match="distinct"):
        validate(tiny(tmp_path, seeds=[1, 1]))
    with pytest.raises(ValueError, match="epochs"):
        validate(tiny(tmp_path, epochs=0))
    with pytest.raises(ValueError, match="jobs"):
        validate(tiny(tmp_path, jobs=0))
    with pytest.raises(FileNotFoundError, match="not an `adact reproduce` output folder"):
        render(tmp_path)


def test_other_settings_in_the_same_folder_are_refused(
        done_run: tuple[ReproduceConfig, dict[str, Any], list[str]]) -> None:
    cfg, _, _ = done_run
    manifest = (Path(cfg.out) / "reproduce.json").read_text()
    with pytest.raises(ValueError, match=r"other settings \(epochs 2 -> 3; see its config.json\)"):
        reproduce(replace(cfg, train=replace(cfg.train, epochs=3)), log=lambda _: None)
    assert (Path(cfg.out) / "reproduce.json").read_text() == manifest


def test_published_folder_without_checkpoints_is_not_overwritten(
        done_run: tuple[ReproduceConfig, dict[str, Any], list[str]], tmp_path: Path) -> None:
    cfg, _, _ = done_run
    out = tmp_path / "published"
    shutil.copytree(cfg.out, out, ignore=shutil.ignore_patterns("*.pt", "config.json"))
    results = {p: p.read_bytes() for p in out.rglob("result.json")}
    with pytest.raises(ValueError, match=r"seed0/adact holds a run made with other settings \(epochs 2 -> 3; see its result.json\)"):
        reproduce(tiny(out, epochs=3), log=lambda _: None)
    assert {p: p.read_bytes() for p in out.rglob("result.json")} == results


def test_unavailable_device_or_kernel_fails_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            reproduce(tiny(out, device="cuda"), log=lambda _: None)
        assert not out.exists()
    with pytest.raises(ValueError, match="kernel_size 99 is larger than the 16x16 input images"):
        reproduce(tiny(out, kernel_size=99), log=lambda _: None)
    assert not out.exists()


def test_second_reproduce_into_a_locked_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with lock_holder(out) as pid:
        with pytest.raises(adact.runs.io.FolderLockedError, match=f"being written by process {pid}"):
            reproduce(tiny(out, seeds=[0], epochs=1), log=lambda _: None)
        assert not (out / "reproduce.json").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_workers_die_when_the_main_process_is_killed(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    workers: list[int] = []
    parent = subprocess.Popen([sys.executable, "-c", (
        "import time\n"
        "from adact.experiments.workers import worker_pool\n"
        "if __name__ == '__main__':\n"
        "    pool = worker_pool(2, 1)\n"
        "    futures = [pool.submit(time.sleep, 120) for _ in range(2)]\n"
        "    while len(pool._processes) < 2 or not all(f.running() for f in futures):\n"
        "        time.sleep(0.1)\n"
        "    print(*pool._processes, flush=True)\n"
        "    time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(pid_alive(w) for w in workers)
        os.kill(parent.pid, signal.SIGKILL)  # what `kill -9` of `adact reproduce` does
        parent.wait()
        assert wait_until_dead(workers), "a worker outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()
        kill_orphans(workers)


def test_analyze_reports_damaged_run_folders_and_writes_every_output(
        done_run: tuple[ReproduceConfig, dict[str, Any], list[str]], tmp_path: Path) -> None:
    cfg, _, _ = done_run
    out = tmp_path / "damaged"
    shutil.copytree(cfg.out, out)
    relu = out / "digits" / "seed0" / "relu" / "result.json"
    res = read_json(relu)
    del res["n_params"]
    relu.write_text(json.dumps(res))
    metrics = out / "digits" / "seed1" / "adact" / "metrics.csv"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # cut the last row in half
    (out / "digits" / "seed1" / "optimized" / "result.json").write_text('{"status": "do')
    for name in ("table1.md", "report.md"):
        (out / name).unlink()

    results = render(out)
    problems = "\n".join(results["problems"])
    assert "seed0/relu/result.json lacks n_params" in problems
    assert "seed1/optimized/result.json is not valid JSON" in problems
    assert "seed1/adact/metrics.csv line 3 is cut short" in problems
    status = {(r["seed"], r["model"]): r["status"] for r in results["runs"]}
    assert status[(0, "relu")] == status[(1, "optimized")] == "damaged" and status[(0, "adact")] == "done"
    report = (out / "report.md").read_text()
    assert "lacks n_params" in report and "1 damaged" in (out / "table1.md").read_text()


def test_table1_says_how_to_fill_the_validation_row(done_run: tuple[ReproduceConfig, dict[str, Any], list[str]],
                                                    ) -> None:
    cfg, _, _ = done_run
    md = (Path(cfg.out) / "table1.md").read_text()
    val_section = md.split("## Validation-selected")[1].split("##")[0]
    assert "run `adact reproduce` again with `--val-fraction 0.1`" in val_section


def test_folder_from_before_search_renders_unchanged(done_run: tuple[ReproduceConfig, dict[str, Any], list[str]],
                                                      tmp_path: Path) -> None:
    """Folders written by `adact reproduce` before it became a preset of search (flat settings in
    reproduce.json, format adact-reproduce-1; published results were) still read, and render to
    the same files as the folder with today's manifest."""
    cfg, _, _ = done_run
    out = tmp_path / "old"
    shutil.copytree(cfg.out, out, ignore=shutil.ignore_patterns("figures", "*.pt"))
    t = cfg.train
    flat = {"datasets": cfg.datasets, "seeds": cfg.seeds, "out": "runs/elsewhere", "jobs": cfg.jobs, "quiet": True,
            **{k: getattr(t, k) for k in ("epochs", "data_dir", "download", "val_fraction", "device", "granularity",
                                          "fer_split", "test_from_train", "max_train_samples", "bf16", "compile",
                                          "channels", "kernel_size", "fused")}}
    (out / "reproduce.json").write_text(json.dumps({"format": "adact-reproduce-1", "config": flat}))
    cfg_back, records = collect(out)
    assert (cfg_back.preset, cfg_back.baselines, cfg_back.seeds) == ("paper", ["relu"], cfg.seeds)
    assert cfg_back.train.channels == t.channels and cfg_back.out == str(out)
    render(out)
    for name in ("table1.md", "table1.csv", "choices.md", "choices.json", "report.md"):
        assert (out / name).read_text() == (Path(cfg.out) / name).read_text(), name
