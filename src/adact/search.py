"""``adact search``: the paper's pipeline on any model and dataset -- AdAct -> choices -> Optimized and baseline.

Per dataset and seed (the same seed for all three models):

1. train the model with AdAct units at every activation (the paper's ConvNet-AdAct, or any
   model through :func:`adact.adactify`);
2. read each unit's dominant activation at the AdAct run's selected epoch: the best epoch by
   validation accuracy when ``--val-fraction`` is given (the honest selection), else the best by
   test accuracy (the paper's);
3. train from scratch the optimized model (each unit fixed to its choice, :func:`adact.optimize`)
   and the **baseline**: the model as written, with its own activations; ``--baselines relu mish``
   adds, per name, the model with that one activation everywhere (issue 14), each a table column
   with paired differences.

The sharpening options of :class:`~adact.train.TrainConfig` (temperature schedule, entropy
penalty, AdAct learning-rate multiple; :mod:`adact.sharpen`) apply to the AdAct runs only. Under
``torchrun`` (:mod:`adact.distributed`) every rank trains every run together, one run at a time,
and rank 0 alone writes; ``--jobs`` instead trains separate runs side by side (one GPU each, round
robin, on CUDA), so the two are refused together.

``adact reproduce`` is the paper's preset of this pipeline (:data:`PAPER`): the ConvNet, ReLU as
the baseline, choices from the best test epoch, the paper's numbers beside ours, and its file
names (``table1.md``, ``reproduce.json``).

Layout of the output folder::

    OUT/search.json (reproduce.json)                settings of the latest invocation
    OUT/<dataset>/seed<k>/<adact|baseline|optimized|NAME>/   one adact.train run folder each
    OUT/<dataset>/seed<k>/choices.json              the seed's choices, for adact.apply_choices
    OUT/table.md, table.csv, choices.md, choices.json, results.json, report.md
    OUT/figures/<dataset>_weights.{png,svg}, <dataset>_trajectories.{png,svg}

Everything is resumable: finished runs are skipped (adact.train compares configs), an
interrupted run resumes from its last.pt, a diverged run is not retried (same config, same
outcome), and the summary files are re-rendered from the run folders each time
(:func:`adact.report.render`, also ``adact analyze OUT``). While it runs, ``OUT`` is locked
against a second writer (see :func:`adact.io.folder_lock`), and the worker processes die with
the main process, even when it is killed with ``kill -9``.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from adact import distributed
from adact.activations import ACTIVATIONS
from adact.analysis import RunRecord, fmt_acc, model_label, models_for
from adact.confidence import confidence_from_weights
from adact.data import DataSplits
from adact.data.imagefolder import BadImageWarning
from adact.dataspec import DatasetSpec
from adact.io import (
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    one_line_warnings,
    read_json,
    remove_stale_temps,
)
from adact.model_zoo import BASELINE
from adact.surgery import adact_units, save_choices
from adact.train import (
    RESULT_KEYS,
    DivergedError,
    RunFolder,
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
    "CHOICES_FILE",
    "MANIFEST_FORMAT",
    "PAPER",
    "PRESETS",
    "SEARCH",
    "Preset",
    "SearchConfig",
    "checkpoint_weights",
    "collect",
    "is_search_dir",
    "load_data",
    "load_manifest",
    "run_weights",
    "search",
    "worker_pool",
]

MANIFEST_FORMAT = "adact-search-1"
#: Each seed's choices for :func:`adact.apply_choices`, in ``OUT/<dataset>/seed<k>/``.
CHOICES_FILE = "choices.json"
_OLD_MANIFEST_FORMAT = "adact-reproduce-1"  # flat settings, written before search existed

Log = Callable[[str], None]


@dataclass(frozen=True)
class Preset:
    """What distinguishes ``adact reproduce`` from ``adact search``: names, the baseline, the selection."""

    name: str
    baseline: str  # the baseline's run folder name and activation
    manifest: str  # the settings file in the output folder
    table: str  # stem of the table files
    title: str  # of the report
    command: str  # the command that writes such a folder
    val_choices: bool  # choices from the validation-selected epoch when there is a validation split

    @property
    def models(self) -> tuple[str, str, str]:
        """The models with the preset's default baseline (a config's are :attr:`SearchConfig.models`)."""
        return ("adact", self.baseline, "optimized")


SEARCH = Preset("search", BASELINE, "search.json", "table", "AdAct search report", "adact search", True)
PAPER = Preset("paper", "relu", "reproduce.json", "table1", "AdAct reproduction report", "adact reproduce", False)
PRESETS: dict[str, Preset] = {p.name: p for p in (SEARCH, PAPER)}


def load_data(config: TrainConfig, quiet: bool = True) -> DataSplits:
    """The dataset of a run (cached per process: every run of a dataset uses the same splits).

    torchvision reports missing or corrupt files as RuntimeError; they are user errors here,
    so they become ValueError (the CLI prints those as one line, not a traceback).
    """
    key = (config.dataset, config.data_dir, config.val_fraction, config.split_seed, config.fer_split,
           config.test_from_train, config.image_size, config.on_bad_image, config.cache_mb)
    if key not in _DATA_CACHE:
        try:
            _DATA_CACHE[key] = config.load_data(quiet)
        except RuntimeError as e:
            raise ValueError(f"cannot load dataset {config.dataset!r} from {config.data_dir!r}: {e}") from e
    return _DATA_CACHE[key]


_DATA_CACHE: dict[tuple[Any, ...], DataSplits] = {}


@dataclass
class SearchConfig:
    """Settings of ``adact search`` / ``adact reproduce``.

    ``train`` holds every training setting; each run's :class:`~adact.train.TrainConfig` is it
    with the dataset, seed and activation replaced (:meth:`train_config`). ``baselines`` are the
    run folders compared with (None: the preset's, ``["baseline"]`` for search, ``["relu"]`` for
    the paper); search always keeps the model as written first. ``sync_bn`` synchronises
    BatchNorm over the ranks under torchrun.
    """

    datasets: list[str] = field(default_factory=lambda: ["digits"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out: str = "runs/search"
    jobs: int | None = None  # parallel training processes; None = auto (see resolved_jobs)
    quiet: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "search"  # a key of PRESETS
    baselines: list[str] | None = None  # None: the preset's (search: the model as written; paper: relu)
    sync_bn: bool = False  # under torchrun: BatchNorm over the global batch (adact.distributed)

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):  # read back from a manifest
            self.train = TrainConfig.from_dict(self.train)
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        self.datasets = [str(DatasetSpec.parse(d)) for d in self.datasets]
        if self.baselines is None:  # also a manifest from before baselines existed
            self.baselines = [self.spec.baseline]
        self.baselines = list(self.baselines)
        if self.preset == "search" and BASELINE not in self.baselines:
            # search compares with the model as written first; --baselines adds to it.
            self.baselines = [BASELINE, *self.baselines]

    @property
    def models(self) -> tuple[str, ...]:
        """The models of each dataset and seed: AdAct, the baselines, Optimized."""
        return models_for(self.baselines or [])

    @property
    def spec(self) -> Preset:
        return PRESETS[self.preset]

    def validate(self) -> None:
        """Raise ValueError / FileNotFoundError for settings that cannot work, before any training."""
        if not self.datasets:
            raise ValueError("no datasets given")
        slugs: dict[str, str] = {}
        for ds in self.datasets:
            spec = DatasetSpec.parse(ds)
            spec.check(self.train.data_dir)
            if spec.slug in slugs:
                raise ValueError(f"datasets {slugs[spec.slug]!r} and {ds!r} would share the folder {spec.slug!r}; "
                                 f"rename one of them")
            slugs[spec.slug] = ds
        if not self.seeds:
            raise ValueError("no seeds given")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if self.jobs is not None and self.jobs > 1 and distributed.env().enabled:  # [distributed]
            raise ValueError("--jobs runs separate trainings side by side, torchrun spreads one training over "
                             "several processes: use one or the other (under torchrun, leave --jobs out)")
        self._check_baselines()
        if self.train.max_train_samples is not None and self.train.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1, got {self.train.max_train_samples}")
        if self.preset == "paper" and self.train.model != "convnet":
            raise ValueError("adact reproduce trains the paper's ConvNet; use adact search for --model")
        self.train_config(self.datasets[0], self.seeds[0], "adact")  # TrainConfig checks the rest
        resolve_device(self.train.device)  # an unavailable device fails here, before the output folder is made

    def _check_baselines(self) -> None:
        valid = ACTIVATIONS if self.preset == "paper" else (BASELINE, *ACTIVATIONS)
        if not self.baselines:
            raise ValueError(f"give at least one baseline activation (the paper's is relu); "
                             f"valid: {', '.join(valid)}")
        for b in self.baselines:
            if b not in valid:
                raise ValueError(f"unknown baseline activation {b!r}; valid: {', '.join(valid)}")
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"baselines must be distinct, got {self.baselines}")

    def train_config(self, dataset: str, seed: int, activation: str | list[str]) -> TrainConfig:
        if isinstance(activation, str) and activation in ACTIVATIONS and self.train.model != "convnet":
            # A one-activation baseline of a named model: that activation at every AdAct site, as
            # the per-site list such a model takes (the ConvNet takes the name itself).
            activation = [activation] * _site_count(self.train.model)
        if activation == "adact":
            return replace(self.train, dataset=dataset, seed=seed, activation=activation)
        # The other models have no mixtures: without the sharpening settings their configs stay the
        # paper's, shareable with runs made without sharpening.
        return replace(self.train, dataset=dataset, seed=seed, activation=activation, temperature_schedule=None,
                       entropy_weight=0.0, adact_lr_mult=1.0)

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
        runs = (1 + len(self.baselines or [])) * len(self.datasets) * len(self.seeds)
        device = resolve_device(self.train.device)
        if device.type == "cuda":  # [distributed] independent runs side by side, one GPU each
            return max(1, min(torch.cuda.device_count(), runs))
        if device.type != "cpu":
            return 1
        return max(1, min(os.cpu_count() or 1, runs))

    def run_dir(self, dataset: str, seed: int, model: str) -> Path:
        return self.seed_dir(dataset, seed) / model

    def seed_dir(self, dataset: str, seed: int) -> Path:
        return Path(self.out) / DatasetSpec.parse(dataset).slug / f"seed{seed}"


@functools.lru_cache(maxsize=None)
def _site_count(model: str) -> int:
    """How many AdAct sites (activation calls) ``adactify`` finds in a named model.

    The count depends on the model's structure only, so it is taken once, on a randomly
    initialised copy with 10 classes and 3 input channels (the first conv and the head adapt).
    """
    from adact.model_zoo import create_model, with_activation

    return len(adact_units(with_activation(create_model(model, num_classes=10, in_channels=3, pretrained=False),
                                           "adact")))


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
    # The main process loaded the same data first and already named every undecodable image.
    warnings.filterwarnings("ignore", category=BadImageWarning)
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
    path = RunFolder(run_dir).result
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


def run_weights(run_dir: Path, validation: bool = False) -> dict[str, Any]:
    """The selected epoch's choices and weights of a finished run: from result.json, else best.pt.

    ``validation`` picks the epoch with the best validation accuracy when the run had a
    validation split; otherwise (and by default) the epoch with the best test accuracy.
    result.json is enough, so published run folders need not ship their checkpoints.
    """
    run = RunFolder(run_dir)
    if run.result.is_file():
        result = read_json(run.result)
        if validation and result.get("val_best_weights"):
            return result["val_best_weights"]
        if result.get("best_weights"):
            return result["best_weights"]
    return checkpoint_weights(run.best)


def _optimized_task(cfg: SearchConfig, dataset: str, seed: int, restart: bool = False) -> _Task | None:
    adact_dir = cfg.run_dir(dataset, seed, "adact")
    res_path = RunFolder(adact_dir).result
    if not res_path.is_file() or read_json(res_path).get("status") != "done":
        return None  # AdAct diverged: no trustworthy choices, the Optimized run is skipped (noted in the report)
    weights = run_weights(adact_dir, cfg.spec.val_choices)
    choices = weights["choices"]
    if cfg.preset == "search":
        _write_seed_choices(cfg.seed_dir(dataset, seed) / CHOICES_FILE, RunFolder(adact_dir), weights)
    config = cfg.train_config(dataset, seed, choices)
    return _Task(dataset, seed, "optimized", str(cfg.run_dir(dataset, seed, "optimized")), asdict(config), cfg.quiet,
                 restart, cfg.sync_bn)


def _write_seed_choices(path: Path, run: RunFolder, weights: dict[str, Any]) -> None:
    """The seed's choices as an :func:`adact.save_choices` file, for :func:`adact.apply_choices` elsewhere.

    The AdAct model is rebuilt from its checkpoint and its logits set to the selected epoch's,
    so the file holds exactly the choices the optimized run trains. Skipped (the choices are in
    choices.json either way) when the run folder kept no checkpoint.
    """
    ckpt = run.checkpoint()
    if ckpt is None:
        return
    model, _ = load_checkpoint(ckpt)
    units = adact_units(model)
    if [p for p, _ in units] != list(weights["paths"]):
        return  # not the model these weights came from: write nothing rather than something wrong
    with torch.no_grad():
        for (_, unit), raw in zip(units, weights["raw"]):
            # Per-channel units were summarised by their channel mean; the file then holds that layer choice.
            unit.logits.copy_(torch.tensor(raw, dtype=unit.logits.dtype).expand_as(unit.logits))
    with tempfile.TemporaryDirectory() as tmp:  # save_choices writes in place; the run folder gets it atomically
        save_choices(model, Path(tmp) / CHOICES_FILE)
        atomic_write_text(path, (Path(tmp) / CHOICES_FILE).read_text(encoding="utf-8"))


def _describe(task: _Task, outcome: dict[str, Any]) -> str:
    what = f"{DatasetSpec.parse(task.dataset).display} seed {task.seed} {model_label(task.model)}"
    if outcome.get("skipped"):
        return f"{what}: already {outcome['status']}, skipped" + (f" ({outcome['message']})" if outcome["message"] else "")
    if outcome["status"] == "diverged":
        return f"{what}: DIVERGED -- {outcome['message']}"
    acc = outcome.get("best_test_acc")
    return f"{what}: done, best test acc {fmt_acc(acc)} ({outcome['seconds']:.0f} s)"


def _run_all(cfg: SearchConfig, log: Log, restart: bool = False) -> None:
    """Run every AdAct and baseline run, and each Optimized run once its AdAct run has ended.

    ``restart`` trains every run from scratch, discarding what its folder held.
    """
    first: list[_Task] = []
    for ds in cfg.datasets:
        for seed in cfg.seeds:
            for model in cfg.models[:-1]:  # AdAct and the baselines; Optimized waits for AdAct
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
    gpus = torch.cuda.device_count() if resolve_device(cfg.train.device).type == "cuda" else 0  # [distributed]
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
            log(f"== {DatasetSpec.parse(task.dataset).display} seed {task.seed} {model_label(task.model)} -> {task.run_dir}")
        outcome = _run_task(task)
    log(_describe(task, outcome))


def _check_existing_runs(cfg: SearchConfig) -> None:
    """Refuse, before touching anything, an output folder whose runs were made with other settings.

    A run's settings are in its config.json, and in its result.json for run folders kept
    without the rest (as published results are).
    """
    for ds in cfg.datasets:
        for seed in cfg.seeds:
            for model in cfg.models[:-1]:
                run = RunFolder(cfg.run_dir(ds, seed, model))
                new = asdict(cfg.train_config(ds, seed, model))
                for name in (run.CONFIG, run.RESULT):
                    if not (run.path / name).is_file():
                        continue
                    saved = read_json(run.path / name)
                    old = saved.get("config") if name == run.RESULT and isinstance(saved, dict) else saved
                    if isinstance(old, dict) and (diff := config_diff(old, new)):
                        raise ValueError(f"{run.path} holds a run made with other settings ({'; '.join(diff)}; see its "
                                         f"{name}); use another --out folder or the original settings, or rerun "
                                         f"with --restart to discard every run in it")


def _check_models(cfg: SearchConfig, data: DataSplits, dataset: str) -> None:
    """Build each dataset's model once on the CPU: impossible settings (a kernel wider than the
    images) fail before anything is written, not in a worker hours later."""
    build_model(model_kwargs(cfg.train_config(dataset, cfg.seeds[0], "adact"), data))


def search(cfg: SearchConfig, log: Log = print, *, restart: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole experiment into ``cfg.out`` and write all summary files.

    Returns the content of results.json. Raises ValueError / FileNotFoundError for unusable
    settings, missing or unusable data, or an unavailable device before anything is written.
    ``restart=True`` trains every run from scratch, discarding what ``cfg.out`` held. While it
    runs, ``cfg.out`` is locked: a second search into it raises
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
        data = load_data(cfg.train_config(ds, cfg.seeds[0], "adact"), cfg.quiet)
        _check_models(cfg, data, ds)
        log(f"{ds}: {data}")
        if data.info.get("bad_images"):
            log(f"{ds}: skipped {data.info['bad_images']} image(s) that cannot be decoded (see the warnings)")
    if not distributed.env().is_writer:  # [distributed] a rank > 0 of torchrun trains each run with rank 0, writes nothing
        _run_all(cfg, lambda _line: None, restart)
        return {}
    with folder_lock(out):
        if not restart:
            _check_existing_runs(cfg)  # again, now that no other writer can change the folder
        remove_stale_temps(out)
        remove_stale_temps(out / "figures")
        atomic_write_json(out / cfg.spec.manifest, {"format": MANIFEST_FORMAT, "config": asdict(cfg)})
        _run_all(cfg, log, restart)
        from adact.report import render  # deferred: the report reads this module's folders

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


def is_search_dir(path: str | Path) -> bool:
    """Whether ``path`` is an output folder of ``adact search`` or ``adact reproduce``."""
    return any((Path(path) / p.manifest).is_file() for p in PRESETS.values())


def _paper_config_from_flat(flat: dict[str, Any]) -> SearchConfig:
    """A paper-preset config from a manifest written before search existed (flat settings)."""
    outer = {"datasets", "seeds", "out", "jobs", "quiet", "baselines", "sync_bn"}
    train = {k: v for k, v in flat.items() if k not in outer and v is not None or k == "test_from_train"}
    train = {k: v for k, v in train.items() if k in {f.name for f in fields(TrainConfig)}}
    return SearchConfig(**{k: v for k, v in flat.items() if k in outer}, train=TrainConfig(**train), preset="paper")


def load_manifest(out: Path) -> SearchConfig:
    """The settings of an output folder, from its ``search.json`` or ``reproduce.json``."""
    path = next((out / p.manifest for p in PRESETS.values() if (out / p.manifest).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{out} is not an `adact reproduce` output folder, nor an `adact search` one (no "
                                f"{' or '.join(p.manifest for p in PRESETS.values())})")
    m = read_json(path)
    if not isinstance(m, dict) or m.get("format") not in (MANIFEST_FORMAT, _OLD_MANIFEST_FORMAT):
        found = m.get("format") if isinstance(m, dict) else None
        raise ValueError(f"{path} has an unknown format {found!r}; expected {MANIFEST_FORMAT!r}")
    if not isinstance(m.get("config"), dict):
        raise ValueError(f"{path} lacks its settings ('config'); rerun the command to rewrite it")
    try:
        if m["format"] == _OLD_MANIFEST_FORMAT:
            cfg = _paper_config_from_flat(m["config"])
        else:
            known = {f.name for f in fields(SearchConfig)}
            cfg = SearchConfig(**{k: v for k, v in m["config"].items() if k in known})
    except TypeError as e:
        raise ValueError(f"{path} holds settings adact cannot read ({e})") from None
    cfg.out = str(out)  # the folder may have moved since it was written
    return cfg


def _read_result(rec: RunRecord, run: Path) -> None:
    """Fill ``rec`` from the run's result.json; a damaged one makes the record ``damaged``."""
    path = RunFolder(run).result
    try:
        result = read_json(path)
    except (ValueError, OSError) as e:
        rec.status, rec.message = "damaged", f"{e}"
        return
    missing = [k for k in RESULT_KEYS if k not in result] if isinstance(result, dict) else list(RESULT_KEYS)
    if missing or result["status"] not in ("done", "diverged"):
        what = f"lacks {', '.join(missing)}" if missing else f"has an unknown status {result['status']!r}"
        rec.status = "damaged"
        rec.message = f"{path} {what}; rerun the same command to finish it again"
        return
    rec.result = result
    rec.status, rec.message = result["status"], result.get("message", "")


def _read_choices(rec: RunRecord, run: Path, validation: bool) -> None:
    """The AdAct run's choices (result.json, else best.pt); a run without them becomes ``damaged``."""
    try:
        w = run_weights(run, validation)
        rec.choices, rec.choice_weights = list(w["choices"]), list(w["choice_weights"])
        rec.layer_paths, rec.candidates, rec.raw, rec.mix = w["paths"], w["candidates"], w["raw"], w["mix"]
        rec.confidence = w.get("confidence")
        granularity = ((rec.result or {}).get("config") or {}).get("granularity", "layer")
        if rec.confidence is None and granularity == "layer":
            # Runs from before confidences were recorded: a per-layer unit's is exact from its weights
            # (a per-channel unit's needs each channel's, which only its checkpoint has).
            rec.confidence = confidence_from_weights(w)
    except (OSError, ValueError, KeyError, TypeError) as e:  # no best.pt, a refused or damaged one
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        rec.status, rec.result = "damaged", None
        rec.message = f"no chosen activations in {run} ({detail})"
        rec.choices = rec.choice_weights = rec.layer_paths = rec.candidates = rec.raw = rec.mix = None
        rec.confidence = None


def collect(out: str | Path) -> tuple[SearchConfig, list[RunRecord]]:
    """Read every run of a search or reproduction output folder into :class:`RunRecord` s.

    Nothing here raises for a damaged run folder: a result.json that cannot be parsed or lacks
    fields, or an AdAct run whose choices cannot be read, gives a record with status
    ``damaged`` and a message saying what is missing.
    """
    out = Path(out)
    cfg = load_manifest(out)
    records: list[RunRecord] = []
    for ds in cfg.datasets:
        for seed in cfg.seeds:
            adact_status = None
            for model in cfg.models:
                d = cfg.run_dir(ds, seed, model)
                rec = RunRecord(ds, DatasetSpec.parse(ds).slug, seed, model, "missing", path=str(d.relative_to(out)))
                if RunFolder(d).result.is_file():
                    _read_result(rec, d)
                elif RunFolder(d).started():
                    rec.status, rec.message = "incomplete", "interrupted; rerun the same command to resume it"
                if model == "adact":
                    if rec.status == "done":
                        _read_choices(rec, d, cfg.spec.val_choices and cfg.train.val_fraction > 0)
                    adact_status = rec.status
                elif model == "optimized" and rec.status == "missing" and adact_status in ("diverged", "damaged"):
                    rec.status = "skipped"
                    rec.message = f"the AdAct run is {adact_status}, so there are no choices to train it with"
                records.append(rec)
    return cfg, records
