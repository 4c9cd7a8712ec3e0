"""Worker processes of a search: one training run each, dying with the main process.

:func:`worker_pool` starts spawned workers with a fixed number of torch threads each;
:func:`run_task` trains one :class:`RunTask` in one. On Linux a worker gets ``SIGKILL`` when the
main process dies (even by ``kill -9``), elsewhere a watchdog thread polls the parent, so a
killed search leaves no orphans; every file is written atomically, so the next run resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from adact.config import TrainConfig
from adact.data.imagefolder import BadImageWarning
from adact.experiments.plan import PlannedRun
from adact.reporting.metric import Metric
from adact.runs.io import one_line_warnings
from adact.training import distributed
from adact.training.build import load_data
from adact.training.loop import DivergedError, train

__all__ = ["RunTask", "best_outcome", "run_task", "worker_pool"]


@dataclass(frozen=True)
class RunTask:
    """One training run, picklable for a worker process (a :class:`~adact.experiments.plan.PlannedRun` as plain data)."""

    dataset: str
    seed: int
    model: str
    run_dir: str
    config: dict[str, Any]
    quiet: bool
    restart: bool = False
    sync_bn: bool = False

    @classmethod
    def of(cls, run: PlannedRun, quiet: bool, restart: bool = False, sync_bn: bool = False) -> RunTask:
        return cls(run.dataset, run.seed, run.model, str(run.folder.path), run.config_json(), quiet, restart, sync_bn)


def run_task(task: RunTask) -> dict[str, Any]:
    """Train one run; a divergence is an outcome, not an error, so the other runs go on."""
    config = TrainConfig.from_dict(task.config)
    t0 = time.perf_counter()
    try:
        result = train(config, task.run_dir, data=load_data(config), quiet=task.quiet, restart=task.restart,
                       sync_bn=task.sync_bn)
    except DivergedError as e:
        return {"status": "diverged", "message": str(e), "seconds": time.perf_counter() - t0}
    return {"status": "done", "message": "", "seconds": time.perf_counter() - t0, **best_outcome(result)}


def best_outcome(result: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's outcome its progress line reads: the best test value under the run's own metric.

    An image run's is ``{"best_test_acc": ...}``, as it always was; another task's also names its
    metric and direction (``{"metric": "loss", "higher_is_better": False, "best_test_loss": ...}``).
    """
    metric = Metric.of(result)
    named = {} if metric.is_acc else {"metric": metric.name, "higher_is_better": metric.higher_is_better}
    return {**named, metric.key("best"): result.get(metric.key("best"))}


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
