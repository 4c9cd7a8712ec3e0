"""``adact search``: the paper's pipeline on any model and dataset -- AdAct -> choices -> Optimized and baseline.

Per dataset and seed (the same seed for all three models):

1. train the model with AdAct units at every activation (the paper's ConvNet-AdAct, or any
   model through :func:`adact.adactify`);
2. read each unit's dominant activation at the AdAct run's selected epoch: the best epoch by
   validation metric when ``--val-fraction`` is given (the honest selection), else the best by
   test metric (the paper's); the best is the highest accuracy, or the lowest loss of a language model;
3. train from scratch the optimized model (each unit fixed to its choice, :func:`adact.optimize`)
   and the **baseline**: the model as written, with its own activations; ``--baselines relu mish``
   adds, per name, the model with that one activation everywhere (issue 14), each a table column
   with paired differences.

The sharpening options of :class:`~adact.config.TrainConfig` (temperature schedule, entropy
penalty, AdAct learning-rate multiple; :mod:`adact.training.sharpen`) apply to the AdAct runs only. Under
``torchrun`` (:mod:`adact.training.distributed`) every rank trains every run together, one run at a time,
and rank 0 alone writes; ``--jobs`` instead trains separate runs side by side (one GPU each, round
robin, on CUDA), so the two are refused together.

``adact reproduce`` is the paper's preset of this pipeline (:data:`adact.config.PAPER`): the ConvNet, ReLU as
the baseline, choices from the best test epoch, the paper's numbers beside ours, and its file
names (``table1.md``, ``reproduce.json``).

Layout of the output folder::

    OUT/search.json (reproduce.json)                settings of the latest invocation
    OUT/<dataset>/seed<k>/<adact|baseline|optimized|NAME>/   one run folder each (adact.runs.folder)
    OUT/<dataset>/seed<k>/choices.json              the seed's choices, for adact.apply_choices
    OUT/table.md, table.csv, choices.md, choices.json, results.json, report.md
    OUT/figures/<dataset>_weights.{png,svg}, <dataset>_trajectories.{png,svg}

The runs are planned by :mod:`adact.experiments.plan` and trained in worker processes
(:mod:`adact.experiments.workers`). Everything is resumable: finished runs are skipped (adact.runs.folder.RunFolder.check compares configs), an
interrupted run resumes from its last.pt, a diverged run is not retried (same config, same
outcome), and the summary files are re-rendered from the run folders each time
(:func:`adact.reporting.render.render`, also ``adact analyze OUT``). While it runs, ``OUT`` is locked
against a second writer (see :func:`adact.runs.io.folder_lock`), and the worker processes die with
the main process, even when it is killed with ``kill -9``.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from adact.choice import adact_units
from adact.config import SearchConfig, TrainConfig
from adact.data.fingerprint import data_record
from adact.dataspec import DatasetSpec
from adact.experiments.plan import (
    PlannedRun,
    check_existing_runs,
    check_models,
    optimized_run,
    plan,
    resolved_jobs,
    train_config,
    validate,
)
from adact.experiments.workers import RunTask, best_outcome, run_task, worker_pool
from adact.reporting.metric import Metric
from adact.reporting.records import run_weights
from adact.reporting.render import render
from adact.reporting.tables import fmt_acc, model_label
from adact.runs.folder import RunFolder, check_not_foreign
from adact.runs.io import atomic_write_json, atomic_write_text, folder_lock, remove_stale_temps
from adact.runs.manifest import is_search_dir, write_manifest
from adact.runs.migrate import result_lacks_gap
from adact.surgery import save_choices
from adact.training import distributed
from adact.training.build import load_checkpoint, load_data, resolve_device

__all__ = ["CHOICES_FILE", "no_choices", "search"]

#: Each seed's choices for :func:`adact.apply_choices`, in ``OUT/<dataset>/seed<k>/``.
CHOICES_FILE = "choices.json"

Log = Callable[[str], None]


def search(cfg: SearchConfig, log: Log = print, *, restart: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole experiment into ``cfg.out`` and write all summary files.

    Returns the content of results.json. Raises UserError / FileNotFoundError for unusable
    settings, missing or unusable data, or an unavailable device before anything is written.
    ``restart=True`` trains every run from scratch, discarding what ``cfg.out`` held. A
    ``cfg.out`` holding files adact did not write is refused (they are never overwritten). While it
    runs, ``cfg.out`` is locked: a second search into it raises
    :class:`adact.runs.io.FolderLockedError`.
    """
    validate(cfg)
    out = Path(cfg.out)
    check_not_foreign(out, is_search_dir(out))
    runs = plan(cfg)
    if not restart:
        check_existing_runs(runs)
    t0 = time.perf_counter()
    # Load every dataset up front: a missing file fails now, not after hours of other runs, and
    # with --download the files are fetched once, before worker processes look for them.
    records: dict[str, dict[str, Any]] = {}
    for ds in cfg.datasets:
        data = load_data(train_config(cfg, ds, cfg.seeds[0], "adact"), cfg.quiet)
        check_models(cfg, data, ds)
        records[ds] = data_record(data)
        log(f"{ds}: {data}")
        if data.info.get("bad_images"):
            log(f"{ds}: skipped {data.info['bad_images']} image(s) that cannot be decoded (see the warnings)")
    if not distributed.env().is_writer:  # [distributed] a rank > 0 of torchrun trains each run with rank 0, writes nothing
        _run_all(cfg, runs, lambda _line: None, restart)
        return {}
    with folder_lock(out):
        if not restart:
            check_existing_runs(runs, records)  # again, now that no other writer can change the folder, and the data
        remove_stale_temps(out)
        remove_stale_temps(out / "figures")
        write_manifest(cfg)
        _run_all(cfg, runs, log, restart)
        results = render(out)
        results["wall_s_this_invocation"] = time.perf_counter() - t0
        results["failure"] = no_choices(results["runs"])
        atomic_write_json(out / "results.json", results)
    log("")
    log(results["table_text"])
    for problem in results["problems"]:
        log(f"warning: {problem}")
    log(f"Wrote {out / 'report.md'} ({results['wall_s_this_invocation']:.0f} s)")
    if results["failure"]:
        log(f"FAILED: {results['failure']}")
    return results


def no_choices(runs: list[dict[str, Any]]) -> str | None:
    """Why a search gave no result (no AdAct run finished, so nothing was chosen), or None when one did.

    ``runs`` are results.json's. The command line then exits non-zero, so ``adact search ... &&``
    does not go on to use choices that do not exist.
    """
    adact = [r for r in runs if r["model"] == "adact"]
    if any(r["status"] == "done" for r in adact):
        return None
    states = sorted({r["status"] for r in adact})
    return (f"no AdAct run finished ({len(adact)} {'/'.join(states)}), so nothing was chosen and no optimized "
            f"model was trained; see the run folders' result.json (a diverged run: try a lower --lr)")


def _previous(task: RunTask) -> dict[str, Any] | None:
    """The outcome of an earlier identical run that ended (done or diverged): skipped, not trained again."""
    if task.restart:
        return None
    run = RunFolder(task.run_dir)
    config = TrainConfig.from_dict(task.config)
    prev = run.ended(config, data_record(load_data(config)))  # loaded once per process: a lookup
    if prev is None or result_lacks_gap(prev, run.path):
        return None  # a run finished before gaps were recorded: train() measures it on best.pt, no training
    return {"status": prev["status"], "message": prev.get("message", ""), "skipped": True, "seconds": 0.0,
            **best_outcome(prev)}


def _run_all(cfg: SearchConfig, runs: list[PlannedRun], log: Log, restart: bool = False) -> None:
    """Run every AdAct and baseline run, and each Optimized run once its AdAct run has ended.

    ``restart`` trains every run from scratch, discarding what its folder held.
    """
    first = [RunTask.of(run, cfg.quiet, restart, cfg.sync_bn) for run in runs]
    start = _previous

    def note_skip(ds: str, seed: int) -> None:
        log(f"{ds} seed {seed} Optimized: skipped -- the AdAct run did not finish (see its result.json)")

    jobs = resolved_jobs(cfg)
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
        pending: dict[cf.Future[dict[str, Any]], RunTask] = {}

        def submit(task: RunTask) -> None:
            done = start(task)
            if done is not None:
                log(_describe(task, done))
                after(task)
            else:
                # Workers always train quietly: interleaved progress bars from N processes are unreadable.
                pending[pool.submit(run_task, replace(task, quiet=True))] = task

        def after(task: RunTask) -> None:
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


def _run_logged(task: RunTask, start: Callable[[RunTask], dict[str, Any] | None], log: Log) -> None:
    outcome = start(task)
    if outcome is None:
        if not task.quiet:
            log(f"== {DatasetSpec.parse(task.dataset).display} seed {task.seed} {model_label(task.model)} -> {task.run_dir}")
        outcome = run_task(task)
    log(_describe(task, outcome))


def _optimized_task(cfg: SearchConfig, dataset: str, seed: int, restart: bool = False) -> RunTask | None:
    """The Optimized run of a dataset and seed, with the AdAct run's choices; None if AdAct did not finish."""
    adact = RunFolder(cfg.run_dir(dataset, seed, "adact"))
    result = adact.read_result()
    if result is None or result.get("status") != "done":
        return None  # AdAct diverged: no trustworthy choices, the Optimized run is skipped (noted in the report)
    weights = run_weights(adact.path, cfg.spec.val_choices)
    if cfg.preset == "search":
        _write_seed_choices(cfg.seed_dir(dataset, seed) / CHOICES_FILE, adact, weights)
    return RunTask.of(optimized_run(cfg, dataset, seed, weights["choices"]), cfg.quiet, restart, cfg.sync_bn)


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


def _describe(task: RunTask, outcome: dict[str, Any]) -> str:
    what = f"{DatasetSpec.parse(task.dataset).display} seed {task.seed} {model_label(task.model)}"
    if outcome.get("skipped"):
        return f"{what}: already {outcome['status']}, skipped" + (f" ({outcome['message']})" if outcome["message"] else "")
    if outcome["status"] == "diverged":
        return f"{what}: DIVERGED -- {outcome['message']}"
    metric = Metric.of(outcome)  # an outcome names its metric as result.json does (none: accuracy)
    return f"{what}: done, {metric.progress} {fmt_acc(outcome.get(metric.key('best')))} ({outcome['seconds']:.0f} s)"
