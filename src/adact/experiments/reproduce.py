"""The paper's experiment: the ``paper`` preset of :mod:`adact.experiments.search`.

Per dataset and seed (same seed for all three models):

1. train ConvNet-AdAct;
2. read each layer's dominant activation from the AdAct run's **best checkpoint** (best.pt, the
   epoch with the best test accuracy). The paper reads "the trained model" and reports its best
   epoch, so the checkpoint whose accuracy is reported is the one whose choices we use; the
   final model's choices are in its result.json (``dominant``) for comparison;
3. train ConvNet-ReLU and ConvNet-Optimized (block i uses choice i) from scratch.

``baselines`` (``--baselines relu mish``) trains one model per name with that activation in every
block, in place of the single ReLU baseline; the tables get a column and paired differences for
each. The sharpening options (:mod:`adact.training.sharpen`) apply to the AdAct runs only.

Layout of the output folder::

    OUT/reproduce.json                          settings of the latest invocation
    OUT/<dataset>/seed<k>/<adact|relu|optimized|BASELINE>/   one run folder each
    OUT/table1.md, table1.csv, choices.md, choices.json, results.json, report.md
    OUT/figures/<dataset>_weights.{png,svg}, <dataset>_trajectories.{png,svg}

The running, resuming and locking are :func:`adact.experiments.search.search`'s; the files are
written by :func:`adact.reporting.render.render`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from adact.config import PAPER, SearchConfig, TrainConfig
from adact.errors import UserError
from adact.experiments.search import search

__all__ = ["paper_config", "reproduce"]


def paper_config(datasets: Sequence[str] = ("digits",), seeds: Sequence[int] = (0, 1, 2), out: str = PAPER.out,
                 jobs: int | None = None, quiet: bool = False, train: TrainConfig | None = None,
                 baselines: Sequence[str] = ("relu",), sync_bn: bool = False, **train_settings: Any) -> SearchConfig:
    """The paper's preset: the ConvNet, ReLU as the baseline, choices from the best test epoch.

    ``train_settings`` are :class:`~adact.config.TrainConfig` fields (e.g. ``epochs=2``, or the
    sharpening ``entropy_weight=0.1``, which the AdAct runs alone get); the defaults are the
    paper's protocol. ``baselines`` replaces ReLU by one-activation-everywhere models (issue 14);
    ``sync_bn`` synchronises BatchNorm under torchrun. The defaults run offline on digits.
    """
    base = train if train is not None else TrainConfig()
    return SearchConfig(datasets=list(datasets), seeds=list(seeds), out=out, jobs=jobs, quiet=quiet,
                        train=replace(base, **train_settings), preset="paper", baselines=list(baselines),
                        sync_bn=sync_bn)


def reproduce(cfg: SearchConfig, log: Callable[[str], None] = print, *, restart: bool = False) -> dict[str, Any]:
    """Run (or resume) the paper's experiment into ``cfg.out``; see :func:`adact.experiments.search.search`."""
    if cfg.preset != "paper":
        raise UserError("reproduce() runs the paper preset; build its config with paper_config()")
    return search(cfg, log, restart=restart)
