"""The paper's experiment end to end: AdAct -> choices -> ReLU and Optimized, per dataset and seed.

Per dataset and seed (same seed for all three models):

1. train ConvNet-AdAct;
2. read each layer's dominant activation from the AdAct run's **best checkpoint** (best.pt, the
   epoch with the best test accuracy). The paper reads "the trained model" and reports its best
   epoch, so the checkpoint whose accuracy is reported is the one whose choices we use; the
   final model's choices are in its result.json (``dominant``) for comparison;
3. train ConvNet-ReLU and ConvNet-Optimized (block i uses choice i) from scratch.

``baselines`` (``--baselines relu mish``) trains one model per name with that activation in every
block, in place of the single ReLU baseline; the tables get a column and paired differences for
each. The sharpening options (:mod:`adact.sharpen`) apply to the AdAct runs only.

Layout of the output folder::

    OUT/reproduce.json                          settings of the latest invocation
    OUT/<dataset>/seed<k>/<adact|relu|optimized|BASELINE>/   one adact.train run folder each
    OUT/table1.md, table1.csv, choices.md, choices.json, results.json, report.md
    OUT/figures/<dataset>_weights.{png,svg}, <dataset>_trajectories.{png,svg}

Everything is resumable: finished runs are skipped (adact.train compares configs), an
interrupted run resumes from its last.pt, a diverged run is not retried (same config, same
outcome), and the summary files are re-rendered from the run folders each time
(:func:`render`, also ``adact analyze OUT``). While it runs, ``OUT`` is locked against a
second ``adact reproduce`` (see :func:`adact.io.folder_lock`), and the worker processes die
with the main process, even when it is killed with ``kill -9``.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adact.analysis import (
    METRICS,
    PAPER_TABLE1,
    RunRecord,
    WeightHistory,
    build_summary,
    fmt_acc,
    model_label,
    models_for,
    read_weight_history,
    render_choices_md,
    render_gap_md,
    render_table_csv,
    render_table_md,
    render_weights_text,
)
from adact import distributed
from adact.activations import ACTIVATIONS
from adact.confidence import WEAK_MARGIN, confidence_from_mixture, render_confidence_text, render_gap_text
from adact.data import DATASETS, DataSplits, load_dataset
from adact.data.npz import resolve_npz_path
from adact.io import (
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    one_line_warnings,
    read_json,
    remove_stale_temps,
)
from adact.plots import plot_trajectories, plot_weights
from adact.train import (
    RESULT_KEYS,
    DivergedError,
    TrainConfig,
    adact_weights,
    build_model,
    config_diff,
    load_checkpoint,
    model_kwargs,
    resolve_device,
    result_lacks_gap,
    train,
)

__all__ = [
    "ReproduceConfig",
    "analyze_run",
    "check_dataset",
    "checkpoint_weights",
    "run_weights",
    "collect",
    "dataset_slug",
    "is_reproduce_dir",
    "load_data",
    "render",
    "reproduce",
    "rerender",
    "worker_pool",
]

MANIFEST = "reproduce.json"
MANIFEST_FORMAT = "adact-reproduce-1"

Log = Callable[[str], None]


def dataset_slug(dataset: str) -> str:
    """Folder name of a dataset argument: the name, or ``npz-<file stem>`` for ``npz:PATH``."""
    if dataset.lower().startswith("npz:"):
        stem = Path(dataset[4:]).stem or "data"
        return "npz-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)
    return dataset.lower()


def display_name(dataset: str) -> str:
    """A short label for figures: ``npz:../data/fer2013.npz`` -> ``npz:fer2013``."""
    if dataset.lower().startswith("npz:"):
        return f"npz:{Path(dataset[4:]).stem}"
    return dataset


def check_dataset(dataset: str, data_dir: str | Path) -> None:
    """Raise ValueError for an unknown name and FileNotFoundError for a missing ``npz:`` file."""
    if dataset.lower().startswith("npz:"):
        resolve_npz_path(dataset[4:], Path(data_dir))  # raises with the paths it tried
    elif dataset.lower() not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}, npz:PATH")


def load_data(config: TrainConfig) -> DataSplits:
    """The dataset of a run (cached per process: every run of a dataset uses the same splits).

    torchvision reports missing or corrupt files as RuntimeError; they are user errors here,
    so they become ValueError (the CLI prints those as one line, not a traceback).
    """
    key = (config.dataset, config.data_dir, config.val_fraction, config.split_seed, config.fer_split,
           config.test_from_train)
    if key not in _DATA_CACHE:
        try:
            _DATA_CACHE[key] = load_dataset(config.dataset, config.data_dir, config.download,
                                            val_fraction=config.val_fraction, seed=config.split_seed,
                                            fer_split=config.fer_split, test_from_train=config.test_from_train)
        except RuntimeError as e:
            raise ValueError(f"cannot load dataset {config.dataset!r} from {config.data_dir!r}: {e}") from e
    return _DATA_CACHE[key]


_DATA_CACHE: dict[tuple[Any, ...], DataSplits] = {}


@dataclass
class ReproduceConfig:
    """Settings of ``adact reproduce``; the defaults run offline on digits."""

    datasets: list[str] = field(default_factory=lambda: ["digits"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out: str = "runs/reproduce"
    epochs: int = 15  # the paper's
    data_dir: str = "data"
    download: bool = False
    val_fraction: float = 0.0
    jobs: int | None = None  # parallel training processes; None = auto (see resolved_jobs)
    device: str = "auto"
    quiet: bool = False
    granularity: str = "layer"
    fer_split: str = "paper"
    test_from_train: float | None = None
    max_train_samples: int | None = None
    bf16: bool = False
    compile: bool = False
    channels: list[int] | None = None  # None: the ConvNet default (32, 64, 128, 256)
    kernel_size: int = 3
    fused: bool = True  # AdAct's fused kernel (False: the reference sum)
    baselines: list[str] = field(default_factory=lambda: ["relu"])  # one activation everywhere, per name
    temperature_schedule: list[float] | None = None  # AdAct runs only, see adact.sharpen
    entropy_weight: float = 0.0  # AdAct runs only
    adact_lr_mult: float = 1.0  # AdAct runs only
    sync_bn: bool = False  # under torchrun: BatchNorm over the global batch (adact.distributed)

    @property
    def models(self) -> tuple[str, ...]:
        """The models of each dataset and seed: AdAct, the baselines, Optimized."""
        return models_for(self.baselines)

    def validate(self) -> None:
        """Raise ValueError / FileNotFoundError for settings that cannot work, before any training."""
        if not self.datasets:
            raise ValueError("no datasets given")
        slugs: dict[str, str] = {}
        for ds in self.datasets:
            check_dataset(ds, self.data_dir)
            slug = dataset_slug(ds)
            if slug in slugs:
                raise ValueError(f"datasets {slugs[slug]!r} and {ds!r} would share the folder {slug!r}; "
                                 f"rename one of the files")
            slugs[slug] = ds
        if not self.seeds:
            raise ValueError("no seeds given")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if self.jobs is not None and self.jobs > 1 and distributed.env().enabled:  # [distributed]
            raise ValueError("--jobs runs separate trainings side by side, torchrun spreads one training over "
                             "several processes: use one or the other (under torchrun, leave --jobs out)")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1, got {self.max_train_samples}")
        if not self.baselines:
            raise ValueError(f"give at least one baseline activation (the paper's is relu); "
                             f"valid: {', '.join(ACTIVATIONS)}")
        for b in self.baselines:
            if b not in ACTIVATIONS:
                raise ValueError(f"unknown baseline activation {b!r}; valid: {', '.join(ACTIVATIONS)}")
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"baselines must be distinct, got {self.baselines}")
        self.train_config(self.datasets[0], self.seeds[0], "adact")  # TrainConfig checks the rest
        resolve_device(self.device)  # an unavailable device fails here, before the output folder is made

    def train_config(self, dataset: str, seed: int, activation: str | list[str]) -> TrainConfig:
        extra: dict[str, Any] = {} if self.channels is None else {"channels": list(self.channels)}
        if activation == "adact":  # the other models have no mixtures: their configs stay shareable
            extra.update(temperature_schedule=self.temperature_schedule, entropy_weight=self.entropy_weight,
                         adact_lr_mult=self.adact_lr_mult)
        return TrainConfig(
            dataset=dataset, data_dir=self.data_dir, download=self.download, fer_split=self.fer_split,
            test_from_train=self.test_from_train, val_fraction=self.val_fraction, activation=activation,
            granularity=self.granularity, kernel_size=self.kernel_size, epochs=self.epochs, seed=seed,
            device=self.device, bf16=self.bf16, compile=self.compile, fused=self.fused,
            max_train_samples=self.max_train_samples, **extra,
        )

    def resolved_jobs(self) -> int:
        """``jobs``, or by default: one process per CPU core on a CPU, one per GPU on CUDA.

        The paper's ConvNet is small, so on a CPU separate single-threaded runs use the cores far
        better than one run with several threads (and degrade less when the cores are shared).
        There are only ``(1 + baselines) * datasets * seeds`` runs free to start at once (Optimized
        waits for AdAct), so more processes would sit idle. Under torchrun every rank trains every
        run together, so there is one job. Worker ``i`` trains on ``cuda:(i mod GPUs)``.
        """
        if distributed.env().enabled:  # [distributed]
            return 1
        if self.jobs is not None:
            return self.jobs
        runs = (1 + len(self.baselines)) * len(self.datasets) * len(self.seeds)
        device = resolve_device(self.device)
        if device.type == "cuda":  # [distributed] independent runs side by side, one GPU each
            return max(1, min(torch.cuda.device_count(), runs))
        if device.type != "cpu":
            return 1
        return max(1, min(os.cpu_count() or 1, runs))

    def run_dir(self, dataset: str, seed: int, model: str) -> Path:
        return Path(self.out) / dataset_slug(dataset) / f"seed{seed}" / model


# --- running -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    """One training run, picklable for a worker process."""

    dataset: str
    seed: int
    model: str
    run_dir: str
    config: dict[str, Any]
    quiet: bool
    restart: bool = False
    sync_bn: bool = False


def _run_task(task: _Task) -> dict[str, Any]:
    """Train one run; a divergence is an outcome, not an error, so the other runs go on."""
    config = TrainConfig.from_dict(task.config)
    t0 = time.perf_counter()
    try:
        result = train(config, task.run_dir, data=load_data(config), quiet=task.quiet, restart=task.restart,
                       sync_bn=task.sync_bn)
    except DivergedError as e:
        return {"status": "diverged", "message": str(e), "seconds": time.perf_counter() - t0}
    return {"status": "done", "message": "", "seconds": time.perf_counter() - t0,
            "best_test_acc": result["best_test_acc"]}


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """End this process when ``parent`` ends, so a killed ``adact reproduce`` leaves no orphans.

    On Linux the kernel does it (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); elsewhere a daemon
    thread polls the parent's PID. Either way, a parent that died before this call is caught
    by comparing ``getppid()``. Work in progress is safe to lose: every file is written
    atomically, and the next run resumes from the last checkpoint.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="adact-parent-watchdog", daemon=True).start()


def _worker_init(threads: int, parent: int, counter: Any = None, gpus: int = 0) -> None:
    _die_with_parent(parent)
    one_line_warnings()
    torch.set_num_threads(threads)
    if counter is not None and gpus > 0:  # [distributed] worker i -> cuda:(i mod gpus); "cuda" means it
        with counter.get_lock():
            worker = counter.value
            counter.value += 1
        torch.cuda.set_device(distributed.job_device_index(worker, gpus))


def worker_pool(jobs: int, threads: int, gpus: int = 0) -> cf.ProcessPoolExecutor:
    """``jobs`` spawned worker processes with ``threads`` torch threads each, which die with this process.

    With ``gpus > 0`` the workers take the GPUs round-robin (worker ``i`` makes ``cuda:(i mod
    gpus)`` its current device), so independent runs train side by side, one per GPU.

    The workers are started by this (the main) thread: Linux sends the parent-death signal
    when the *thread* that forked a child ends, so they must not come from a helper thread.
    """
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0) if gpus > 0 else None
    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                                  initializer=_worker_init, initargs=(threads, os.getpid(), counter, gpus))
    return pool


def _previous(run_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The result.json of an earlier identical run that ended (done or diverged), else None."""
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    prev = read_json(path)
    if not isinstance(prev, dict) or config_diff(prev.get("config") or {}, asdict(config)):
        return None
    if result_lacks_gap(prev, run_dir):
        return None  # finished before gaps were recorded: train() measures it on best.pt, no training
    if prev.get("status") == "diverged" or (prev.get("status") == "done" and all(k in prev for k in RESULT_KEYS)):
        return prev
    return None


def checkpoint_weights(path: str | Path) -> dict[str, Any]:
    """Choices and weights of a checkpoint's AdAct units (see :func:`adact.train.adact_weights`)."""
    model, _ = load_checkpoint(path)
    return adact_weights(model)


def run_weights(run_dir: Path) -> dict[str, Any]:
    """The best epoch's choices and weights of a finished run: from result.json, else best.pt.

    result.json is enough, so published run folders need not ship their checkpoints.
    """
    res_path = run_dir / "result.json"
    if res_path.is_file():
        best = read_json(res_path).get("best_weights")
        if best:
            return best
    return checkpoint_weights(run_dir / "best.pt")


def _optimized_task(cfg: ReproduceConfig, dataset: str, seed: int, restart: bool = False) -> _Task | None:
    adact_dir = cfg.run_dir(dataset, seed, "adact")
    res_path = adact_dir / "result.json"
    if not res_path.is_file() or read_json(res_path).get("status") != "done":
        return None  # AdAct diverged: no trustworthy choices, the Optimized run is skipped (noted in the report)
    choices = run_weights(adact_dir)["choices"]
    config = cfg.train_config(dataset, seed, choices)
    return _Task(dataset, seed, "optimized", str(cfg.run_dir(dataset, seed, "optimized")), asdict(config), cfg.quiet,
                 restart, cfg.sync_bn)


def _describe(task: _Task, outcome: dict[str, Any]) -> str:
    what = f"{task.dataset} seed {task.seed} {model_label(task.model)}"
    if outcome.get("skipped"):
        return f"{what}: already {outcome['status']}, skipped" + (f" ({outcome['message']})" if outcome["message"] else "")
    if outcome["status"] == "diverged":
        return f"{what}: DIVERGED -- {outcome['message']}"
    acc = outcome.get("best_test_acc")
    return f"{what}: done, best test acc {fmt_acc(acc)} ({outcome['seconds']:.0f} s)"


def _run_all(cfg: ReproduceConfig, log: Log, restart: bool = False) -> None:
    """Run every AdAct and baseline run, and each Optimized run once its AdAct run has ended.

    ``restart`` trains every run from scratch, discarding what its folder held.
    """
    first: list[_Task] = []
    for ds in cfg.datasets:
        for seed in cfg.seeds:
            for model in ("adact", *cfg.baselines):
                c = cfg.train_config(ds, seed, model)
                first.append(_Task(ds, seed, model, str(cfg.run_dir(ds, seed, model)), asdict(c), cfg.quiet,
                                   restart, cfg.sync_bn))

    def start(task: _Task) -> dict[str, Any] | None:
        if task.restart:
            return None
        prev = _previous(Path(task.run_dir), TrainConfig.from_dict(task.config))
        if prev is not None:  # also diverged ones: the same config would diverge the same way
            return {"status": prev["status"], "message": prev.get("message", ""), "skipped": True,
                    "best_test_acc": prev.get("best_test_acc"), "seconds": 0.0}
        return None

    def note_skip(ds: str, seed: int) -> None:
        log(f"{ds} seed {seed} Optimized: skipped -- the AdAct run did not finish (see its result.json)")

    jobs = cfg.resolved_jobs()
    if jobs == 1:
        for ds in cfg.datasets:
            for seed in cfg.seeds:
                for task in [t for t in first if t.dataset == ds and t.seed == seed]:
                    _run_logged(task, start, log)
                opt = _optimized_task(cfg, ds, seed, restart)
                if opt is None:
                    note_skip(ds, seed)
                else:
                    _run_logged(opt, start, log)
        return

    threads = max(1, (os.cpu_count() or 1) // jobs)
    gpus = torch.cuda.device_count() if resolve_device(cfg.device).type == "cuda" else 0  # [distributed]
    on = f" on {min(gpus, jobs)} GPU{'s' if min(gpus, jobs) > 1 else ''}" if gpus else ""
    log(f"training in {jobs} processes{on} with {threads} thread{'s' if threads > 1 else ''} each; an Optimized "
        f"run starts when its AdAct run ends")
    with worker_pool(jobs, threads, gpus) as pool:
        pending: dict[cf.Future[dict[str, Any]], _Task] = {}

        def submit(task: _Task) -> None:
            done = start(task)
            if done is not None:
                log(_describe(task, done))
                after(task)
            else:
                # Workers always train quietly: interleaved progress bars from N processes are unreadable.
                pending[pool.submit(_run_task, replace(task, quiet=True))] = task

        def after(task: _Task) -> None:
            if task.model != "adact":
                return
            opt = _optimized_task(cfg, task.dataset, task.seed, restart)
            if opt is None:
                note_skip(task.dataset, task.seed)
            else:
                submit(opt)

        # AdAct runs go in first so that Optimized runs can start while baseline runs are still queued.
        for task in sorted(first, key=lambda t: t.model != "adact"):
            submit(task)
        while pending:
            finished, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                task = pending.pop(fut)
                try:
                    outcome = fut.result()
                except BaseException:
                    for f in pending:
                        f.cancel()
                    raise
                log(_describe(task, outcome))
                after(task)


def _run_logged(task: _Task, start: Callable[[_Task], dict[str, Any] | None], log: Log) -> None:
    outcome = start(task)
    if outcome is None:
        if not task.quiet:
            log(f"== {task.dataset} seed {task.seed} {model_label(task.model)} -> {task.run_dir}")
        outcome = _run_task(task)
    log(_describe(task, outcome))


def _check_existing_runs(cfg: ReproduceConfig) -> None:
    """Refuse, before touching anything, an output folder whose runs were made with other settings.

    A run's settings are in its config.json, and in its result.json for run folders kept
    without the rest (as published results are).
    """
    for ds in cfg.datasets:
        for seed in cfg.seeds:
            for model in ("adact", *cfg.baselines):
                run = cfg.run_dir(ds, seed, model)
                new = asdict(cfg.train_config(ds, seed, model))
                for name in ("config.json", "result.json"):
                    if not (run / name).is_file():
                        continue
                    saved = read_json(run / name)
                    old = saved.get("config") if name == "result.json" and isinstance(saved, dict) else saved
                    if isinstance(old, dict) and (diff := config_diff(old, new)):
                        raise ValueError(f"{run} holds a run made with other settings ({'; '.join(diff)}; see its "
                                         f"{name}); use another --out folder or the original settings, or rerun "
                                         f"with --restart to discard every run in it")


def _check_models(cfg: ReproduceConfig, data: DataSplits, dataset: str) -> None:
    """Build each dataset's model once on the CPU: impossible settings (a kernel wider than the
    images) fail before anything is written, not in a worker hours later."""
    build_model(model_kwargs(cfg.train_config(dataset, cfg.seeds[0], "adact"), data))


def reproduce(cfg: ReproduceConfig, log: Log = print, *, restart: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole experiment into ``cfg.out`` and write all summary files.

    Returns the content of results.json. Raises ValueError / FileNotFoundError for unusable
    settings, missing or unusable data, or an unavailable device before anything is written.
    ``restart=True`` trains every run from scratch, discarding what ``cfg.out`` held. While it
    runs, ``cfg.out`` is locked: a second reproduce into it raises
    :class:`adact.io.FolderLockedError`.
    """
    cfg.validate()
    if not restart:
        _check_existing_runs(cfg)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    # Load every dataset up front: a missing file fails now, not after hours of other runs, and
    # with --download the files are fetched once, before worker processes look for them.
    for ds in cfg.datasets:
        data = load_data(cfg.train_config(ds, cfg.seeds[0], "adact"))
        _check_models(cfg, data, ds)
        log(f"{ds}: {data}")
    if not distributed.env().is_writer:  # [distributed] a rank > 0 of torchrun trains each run with rank 0, writes nothing
        _run_all(cfg, lambda _line: None, restart)
        return {}
    with folder_lock(out):
        if not restart:
            _check_existing_runs(cfg)  # again, now that no other writer can change the folder
        remove_stale_temps(out)
        remove_stale_temps(out / "figures")
        atomic_write_json(out / MANIFEST, {"format": MANIFEST_FORMAT, "config": asdict(cfg)})
        _run_all(cfg, log, restart)
        results = render(out)
        results["wall_s_this_invocation"] = time.perf_counter() - t0
        atomic_write_json(out / "results.json", results)
    log("")
    log(results["table_text"])
    for problem in results["problems"]:
        log(f"warning: {problem}")
    log(f"Wrote {out / 'report.md'} ({results['wall_s_this_invocation']:.0f} s)")
    return results


# --- reading the run folders back -------------------------------------------------------------


def is_reproduce_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _load_manifest(out: Path) -> ReproduceConfig:
    path = out / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{out} is not an `adact reproduce` output folder (no {MANIFEST})")
    m = read_json(path)
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        raise ValueError(f"{path} has an unknown format {found!r}; expected {MANIFEST_FORMAT!r}")
    if not isinstance(m.get("config"), dict):
        raise ValueError(f"{path} lacks its settings ('config'); rerun `adact reproduce` to rewrite it")
    known = {f.name for f in fields(ReproduceConfig)}
    try:
        cfg = ReproduceConfig(**{k: v for k, v in m["config"].items() if k in known})
    except TypeError as e:
        raise ValueError(f"{path} holds settings adact cannot read ({e})") from None
    cfg.out = str(out)  # the folder may have moved since it was written
    return cfg


def _read_result(rec: RunRecord, run: Path) -> None:
    """Fill ``rec`` from the run's result.json; a damaged one makes the record ``damaged``."""
    path = run / "result.json"
    try:
        result = read_json(path)
    except (ValueError, OSError) as e:
        rec.status, rec.message = "damaged", f"{e}"
        return
    missing = [k for k in RESULT_KEYS if k not in result] if isinstance(result, dict) else list(RESULT_KEYS)
    if missing or result["status"] not in ("done", "diverged"):
        what = f"lacks {', '.join(missing)}" if missing else f"has an unknown status {result['status']!r}"
        rec.status = "damaged"
        rec.message = f"{path} {what}; rerun `adact reproduce` with the same settings to finish it again"
        return
    rec.result = result
    rec.status, rec.message = result["status"], result.get("message", "")


def _read_choices(rec: RunRecord, run: Path) -> None:
    """The AdAct run's choices (result.json, else best.pt); a run without them becomes ``damaged``."""
    try:
        w = run_weights(run)
        rec.choices, rec.choice_weights = list(w["choices"]), list(w["choice_weights"])
        rec.layer_paths, rec.candidates, rec.raw, rec.mix = w["paths"], w["candidates"], w["raw"], w["mix"]
        rec.confidence = w.get("confidence")
        granularity = ((rec.result or {}).get("config") or {}).get("granularity", "layer")
        if rec.confidence is None and granularity == "layer":
            # Runs from before confidences were recorded: a per-layer unit's is exact from its weights
            # (a per-channel unit's needs each channel's, which only its checkpoint has).
            rec.confidence = [confidence_from_mixture(m, w["candidates"], p).to_json()
                              for p, m in zip(w["paths"], w["mix"])]
    except (OSError, ValueError, KeyError, TypeError) as e:  # no best.pt, a refused or damaged one
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        rec.status, rec.result = "damaged", None
        rec.message = f"no chosen activations in {run} ({detail})"
        rec.choices = rec.choice_weights = rec.layer_paths = rec.candidates = rec.raw = rec.mix = None
        rec.confidence = None


def collect(out: str | Path) -> tuple[ReproduceConfig, list[RunRecord]]:
    """Read every run of a reproduction's output folder into :class:`RunRecord` s.

    Nothing here raises for a damaged run folder: a result.json that cannot be parsed or lacks
    fields, or an AdAct run whose choices cannot be read, gives a record with status
    ``damaged`` and a message saying what is missing.
    """
    out = Path(out)
    cfg = _load_manifest(out)
    records: list[RunRecord] = []
    for ds in cfg.datasets:
        for seed in cfg.seeds:
            adact_status = None
            for model in cfg.models:
                d = cfg.run_dir(ds, seed, model)
                rec = RunRecord(ds, dataset_slug(ds), seed, model, "missing", path=str(d.relative_to(out)))
                if (d / "result.json").is_file():
                    _read_result(rec, d)
                elif (d / "last.pt").is_file() or (d / "config.json").is_file():
                    rec.status, rec.message = "incomplete", "interrupted; rerun the same command to resume it"
                if model == "adact":
                    if rec.status == "done":
                        _read_choices(rec, d)
                    adact_status = rec.status
                elif model == "optimized" and rec.status == "missing" and adact_status in ("diverged", "damaged"):
                    rec.status = "skipped"
                    rec.message = f"the AdAct run is {adact_status}, so there are no choices to train it with"
                records.append(rec)
    return cfg, records


def _histories(records: list[RunRecord], out: Path) -> tuple[dict[str, WeightHistory], list[str]]:
    """The weight history of every finished AdAct run (by run path), and what could not be read."""
    hists: dict[str, WeightHistory] = {}
    problems: list[str] = []
    for r in records:
        if r.model != "adact" or r.status != "done" or not r.mix:
            continue
        path = out / r.path / "metrics.csv"
        if not path.is_file():
            problems.append(f"{path} is missing: no weight trajectories for {r.dataset} seed {r.seed}")
            continue
        try:
            h = read_weight_history(path)
        except (ValueError, OSError) as e:
            problems.append(f"{e}: no weight trajectories for {r.dataset} seed {r.seed}")
            continue
        if h is not None:
            hists[r.path] = h
    return hists, problems


def _weak_flags(runs: list[RunRecord]) -> np.ndarray | None:
    """``(seeds, layers)`` weak flags of the runs, or None when a run has no confidences."""
    if not all(r.confidence and r.mix and len(r.confidence) == len(r.mix) for r in runs):
        return None
    return np.array([[bool(c["weak"]) for c in r.confidence or []] for r in runs])


def _figures(cfg: ReproduceConfig, records: list[RunRecord], hists: dict[str, WeightHistory],
             out: Path) -> dict[str, dict[str, list[str]]]:
    figs: dict[str, dict[str, list[str]]] = {}
    for ds in cfg.datasets:
        slug = dataset_slug(ds)
        runs = [r for r in records if r.dataset == ds and r.model == "adact" and r.status == "done" and r.mix]
        if not runs:
            continue
        cands = runs[0].candidates or []
        n = len(runs)
        seeds = ", ".join(str(r.seed) for r in runs)
        entry: dict[str, list[str]] = {}
        paths = plot_weights(np.array([r.raw for r in runs]), np.array([r.mix for r in runs]), cands,
                             f"{display_name(ds)}: AdAct weights per layer", out / "figures" / f"{slug}_weights",
                             note=f"best checkpoint of seed{'s' if n > 1 else ''} {seeds}", weak=_weak_flags(runs))
        entry["weights"] = [str(p.relative_to(out)) for p in paths]
        found = [hists[r.path] for r in runs if r.path in hists]
        if found:
            paths = plot_trajectories([h.mix for h in found], [h.epochs for h in found], found[0].candidates,
                                      f"{display_name(ds)}: AdAct softmax weights during training",
                                      out / "figures" / f"{slug}_trajectories")
            entry["trajectories"] = [str(p.relative_to(out)) for p in paths]
        figs[ds] = entry
    return figs


def rerender(out: str | Path) -> dict[str, Any]:
    """:func:`render` for ``adact analyze OUT``: under the folder's lock, after removing stale temp files."""
    out = Path(out)
    _load_manifest(out)  # not a reproduce folder: fail before the lock file is made
    with folder_lock(out):
        remove_stale_temps(out)
        remove_stale_temps(out / "figures")
        return render(out)


def render(out: str | Path) -> dict[str, Any]:
    """(Re)write table1.md/.csv, choices.md/.json, figures, report.md and results.json from the runs.

    Every run folder is read, and every text composed, before the first file is written, so a
    damaged run folder cannot leave table1.md rewritten and report.md not: it is reported in
    ``problems`` (and in report.md) instead.
    """
    out = Path(out)
    cfg, records = collect(out)
    hists, problems = _histories(records, out)
    problems = [f"{r.path}: {r.message}" for r in records if r.status == "damaged"] + problems
    summary = build_summary(records, cfg.datasets, cfg.baselines)
    tables = {m: render_table_md(summary, m) for m in METRICS}
    tables["gap"] = render_gap_md(summary)
    choices = _choices_json(cfg, records)
    val_hint = "" if cfg.val_fraction > 0 else _NO_VAL_HINT
    table1_md = (f"# Table 1: test accuracy over seeds {cfg.seeds}, {cfg.epochs} epochs\n\n"
                 + "".join(f"## {METRICS[m][1].capitalize()}\n\n{tables[m]}\n" + (val_hint if m == "val" else "")
                           for m in METRICS)
                 + f"## {_GAP_TITLE}\n\n{tables['gap']}\n{_GAP_NOTES}\n"
                 + _TABLE_NOTES)
    choices_md = "# Chosen activations per layer\n\n" + render_choices_md(records, cfg.datasets, cfg.baselines)
    table_text = ("Table 1 -- " + METRICS["best"][1] + "\n" + tables["best"] + "\n" + _GAP_TITLE + "\n"
                  + tables["gap"] + _weak_lines(records) + _status_lines(records))

    figures = _figures(cfg, records, hists, out)
    atomic_write_text(out / "table1.md", table1_md)
    atomic_write_text(out / "table1.csv", render_table_csv(summary))
    atomic_write_text(out / "choices.md", choices_md)
    atomic_write_json(out / "choices.json", choices)
    atomic_write_text(out / "report.md", _report(cfg, records, tables, choices_md, figures, problems))
    results = {
        "format": "adact-results-2",  # 2: diffs per baseline (diffs[model][baseline][metric]), gap, confidence
        "settings": asdict(cfg),
        "environment": {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "paper_table1": PAPER_TABLE1,
        "summary": summary,
        "choices": choices,
        "runs": [r.to_json() for r in records],
        "figures": figures,
        "problems": problems,
        "files": ["table1.md", "table1.csv", "choices.md", "choices.json", "report.md", "results.json"],
        "table_text": table_text,
    }
    atomic_write_json(out / "results.json", results)
    return results


_GAP_TITLE = "Discretization gap: the AdAct model against its own argmax"

_GAP_NOTES = """\
Mixture: the AdAct model's best-on-test accuracy. Argmax: that same checkpoint with every unit
replaced by its chosen activation (learned PReLU slopes kept), no retraining, BatchNorm statistics
recomputed on training batches. A gap near 0 means the choices carry what the mixture learned; a
large negative one means the mixture is not the model we keep. Optimized − argmax is what
retraining from scratch (the paper's Optimized) adds over the free argmax model. Runs trained
before the gap was recorded have none and are not counted.
"""


def _weak_lines(records: list[RunRecord]) -> str:
    """One line per dataset with weak choices: how many of its layer choices have margin < WEAK_MARGIN."""
    lines = []
    for ds in dict.fromkeys(r.dataset for r in records):
        confs = [c for r in records if r.dataset == ds and r.model == "adact" and r.confidence for c in r.confidence]
        weak = sum(bool(c["weak"]) for c in confs)
        if confs:
            lines.append(f"{ds}: {weak} of {len(confs)} layer choices are weak (margin to the runner-up < "
                         f"{WEAK_MARGIN:g}); see choices.md\n")
    return "".join(lines)


_NO_VAL_HINT = ("No validation split in these runs, so this table is empty: run `adact reproduce` again with "
                "`--val-fraction 0.1` (into a new `--out` folder) to fill it.\n\n")


def _choices_json(cfg: ReproduceConfig, records: list[RunRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ds in cfg.datasets:
        recs = [r for r in records if r.dataset == ds]
        params = {r.model: (r.result or {}).get("n_params") for r in recs if r.result}
        adact = next((r.result for r in recs if r.model == "adact" and r.result), None)
        out[ds] = {
            "per_seed": {str(r.seed): {"status": r.status, "choices": r.choices, "weights": r.choice_weights,
                                       "paths": r.layer_paths, "confidence": r.confidence,
                                       "discretization_gap": r.gap()}
                         for r in recs if r.model == "adact"},
            "n_adact_units": adact["n_adact_units"] if adact else None,
            "n_adact_params": adact["n_adact_params"] if adact else None,  # 8 * units for per-layer units
            "n_params": params,
        }
    return out


_TABLE_NOTES = """\
Cells: mean ± sample sd over seeds (n = finished runs); runs that diverged, were skipped or are
incomplete are counted beside the cell and left out of the mean. Differences are paired by seed:
mean of (model − baseline) with a 95% paired t interval (n = 1: no interval). "paper" is the paper's
Table 1, which is best-on-test.

Best-on-test picks the epoch by its test accuracy, so it is optimistic: the test set is used for
model selection. Final-epoch uses no selection; validation-selected picks the epoch on a held-out
part of the training set (`--val-fraction`) and is the honest estimate.
"""


def _status_lines(records: list[RunRecord]) -> str:
    bad = [r for r in records if r.status != "done"]
    return "".join(f"  {r.dataset} seed {r.seed} {model_label(r.model)}: {r.status}"
                   + (f" -- {r.message}" if r.message else "") + "\n" for r in bad)


def _sharpening_line(cfg: ReproduceConfig) -> str:
    parts = []
    if cfg.temperature_schedule:
        t0, t1 = cfg.temperature_schedule
        parts.append(f"softmax temperature annealed {t0:g} → {t1:g}")
    if cfg.entropy_weight:
        parts.append(f"entropy penalty λ = {cfg.entropy_weight:g}")
    if cfg.adact_lr_mult != 1.0:
        parts.append(f"AdAct logits at {cfg.adact_lr_mult:g} × the learning rate")
    if not parts:
        return "Sharpening: none (the paper's AdAct)."
    return "Sharpening of the AdAct runs (not in the paper): " + "; ".join(parts) + "."


def _report(cfg: ReproduceConfig, records: list[RunRecord], tables: dict[str, str], choices_md: str,
            figures: dict[str, dict[str, list[str]]], problems: list[str]) -> str:
    lines = [
        "# AdAct reproduction report",
        "",
        f"Datasets: {', '.join(f'`{d}`' for d in cfg.datasets)}; seeds {cfg.seeds}; {cfg.epochs} epochs; "
        f"AdAct granularity `{cfg.granularity}`; channels {cfg.channels or 'default (32, 64, 128, 256)'}; "
        f"validation fraction {cfg.val_fraction}"
        + (f"; training subsampled to {cfg.max_train_samples} images" if cfg.max_train_samples else "") + ".",
        "",
        "Protocol (the paper's): per dataset and seed, train ConvNet-AdAct; read each layer's dominant "
        "activation (largest softmax weight) from its best checkpoint; train "
        + ", ".join(f"ConvNet-{model_label(b)}" for b in cfg.baselines) + " (one activation everywhere) and "
        "ConvNet-Optimized (layer i uses choice i) from scratch with the same seed. AdamW, lr 1e-3, "
        "batch 64, test accuracy after every epoch.",
        "",
        _sharpening_line(cfg),
        "",
        "Files: [table1.md](table1.md), [table1.csv](table1.csv), [choices.md](choices.md), "
        "[choices.json](choices.json), [results.json](results.json).",
        "",
        "## Table 1: best-on-test accuracy (the paper's number)",
        "",
        tables["best"],
        "This selection uses the test set to pick the epoch and is optimistic; the two tables below do not.",
        "",
        "## Final-epoch accuracy",
        "",
        tables["final"],
        "## Validation-selected accuracy",
        "",
    ]
    if cfg.val_fraction > 0:
        lines += [tables["val"]]
    else:
        lines += [_NO_VAL_HINT.strip(), ""]
    lines += [f"## {_GAP_TITLE}", "", tables["gap"], _GAP_NOTES]
    lines += ["## Chosen activations", ""]
    lines += [("\n" + choices_md.split("\n", 2)[2]).replace("\n## ", "\n### ").strip(), ""]
    lines += ["## Figures", "",
              "Per dataset, the AdAct weights of each layer at the best checkpoint (raw logits and softmax "
              "weights, as in the paper's Figures 1-4; every activation has the same colour in every figure), "
              "and the softmax weights over the epochs.", ""]
    if not figures:
        lines += ["No finished AdAct run, so no figures.", ""]
    for ds, entry in figures.items():
        lines += [f"### `{ds}`", ""]
        for kind, caption in (("weights", "weights per layer"), ("trajectories", "softmax weights over epochs")):
            if kind in entry:
                png = entry[kind][0]
                svg = next((p for p in entry[kind] if p.endswith(".svg")), None)
                lines += [f"![{ds} {caption}]({png})", ""]
                if svg:
                    lines += [f"({caption}: [SVG]({svg}))", ""]
    lines += ["## Runs", "",
              "| dataset | seed | model | status | best | final | argmax − mixture | epochs | time (s) | folder |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        res = r.result or {}
        wall = f"{res['wall_s']:.0f}" if res.get("wall_s") is not None else "—"
        gap = r.gap()
        lines.append(f"| `{r.dataset}` | {r.seed} | {model_label(r.model)} | {r.status} | "
                     f"{fmt_acc(res.get('best_test_acc'))} | {fmt_acc(res.get('final_test_acc'))} | "
                     f"{'—' if gap is None else format(gap['gap'], '+.4f').replace('-', '−')} | "
                     f"{res.get('epochs_run', '—')} | {wall} | [{r.path}]({r.path}) |")
    notes = [r for r in records if r.status != "done"]
    if notes:
        lines += ["", "### Runs that did not finish", ""]
        lines += [f"- `{r.dataset}` seed {r.seed} {model_label(r.model)}: **{r.status}**"
                  + (f" — {r.message}" if r.message else "") for r in notes]
    if problems:
        lines += ["", "### Damaged or missing files", ""] + [f"- {p}" for p in problems]
    lines += ["", "## Notes", "",
              "- Choices come from the AdAct run's best checkpoint (the epoch whose accuracy Table 1 "
              "reports); the final model's choices are in each run's result.json (`dominant`).",
              "- On a CPU a run is bit-reproducible for a fixed number of torch threads; `--jobs` sets "
              "cores // jobs threads per run, so changing it changes float rounding and the last digits.",
              "- The ConvNet's layer sizes are not in the paper's text; ours are an assumption "
              "(see `adact.models`).",
              "- The paper has no `digits` row: it is scikit-learn's bundled 8x8 digits upsampled to 16x16, "
              "the offline smoke test of this pipeline.", ""]
    return "\n".join(lines)


# --- one run or checkpoint -------------------------------------------------------------------


def analyze_run(path: str | Path, out: str | Path | None = None) -> tuple[str, list[Path]]:
    """Weight table and figures of one run folder or checkpoint.

    A run folder is read from its best.pt (last.pt when there is no best.pt), matching the
    checkpoint :func:`reproduce` takes its choices from. Figures go to ``out`` (default: the
    run folder). Returns the text table and the figure paths.
    """
    path = Path(path)
    if path.is_dir():
        ckpt = next((path / n for n in ("best.pt", "last.pt") if (path / n).is_file()), None)
        if ckpt is None:
            raise FileNotFoundError(f"{path} holds no best.pt or last.pt: not a run folder of `adact train`")
        run_dir = path
    elif path.is_file():
        ckpt, run_dir = path, path.parent
    else:
        raise FileNotFoundError(f"no such run folder or checkpoint: {path}")
    model, meta = load_checkpoint(ckpt)
    w = adact_weights(model)
    config = meta["config"]
    head = f"{ckpt} (epoch {meta['epoch']}, dataset {config['dataset']}, activation {config['activation']})"
    if not w["paths"]:
        return head + "\nno AdAct units in this model: nothing to analyze\n", []
    text = head + "\n" + render_weights_text(w["paths"], w["candidates"], np.array(w["raw"]), np.array(w["mix"]))
    text += render_confidence_text(w["confidence"])
    result = read_json(run_dir / "result.json") if (run_dir / "result.json").is_file() else {}
    gap = result.get("discretization_gap") if isinstance(result, dict) else None
    if gap and gap.get("epoch") == meta["epoch"]:
        text += render_gap_text(gap)
    hist, note = None, ""
    if (run_dir / "metrics.csv").is_file():
        try:
            hist = read_weight_history(run_dir / "metrics.csv")
        except (ValueError, OSError) as e:
            note = f"no weight trajectories: {e}\n"
    fig_dir = Path(out) if out is not None else run_dir
    title = f"{display_name(config['dataset'])}: AdAct weights per layer"
    weak = np.array([[c["weak"] for c in w["confidence"]]])
    files = plot_weights(np.array([w["raw"]]), np.array([w["mix"]]), w["candidates"], title,
                         fig_dir / "weights", note=f"{ckpt.name}, epoch {meta['epoch']}, seed {config['seed']}",
                         weak=weak)
    if hist is not None:
        files += plot_trajectories([hist.mix], [hist.epochs], hist.candidates,
                                   f"{display_name(config['dataset'])}: AdAct softmax weights during training",
                                   fig_dir / "trajectories", note=f"seed {config['seed']}")
    return text + note, files
