"""Every reader of an old on-disk format, in one place.

Run folders written by earlier versions of adact still load (docs/results/ holds some):

* ``reproduce.json`` manifests of format ``adact-reproduce-1`` (flat settings, from before
  ``adact search`` existed): :func:`paper_config_from_flat`;
* AdAct runs finished before the discretization gap was recorded: :func:`result_lacks_gap`
  says so, and :func:`adact.training.gap.add_missing_gap` measures it on best.pt;
* result.json ``best_weights`` recorded before confidences were: read by
  :func:`adact.choice.snapshots_from_record`;
* configs lacking settings added later: :func:`adact.config.config_diff` counts a missing
  setting as its default.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from adact.config import SearchConfig, TrainConfig
from adact.runs.folder import RunFolder

__all__ = ["OLD_MANIFEST_FORMAT", "paper_config_from_flat", "result_lacks_gap"]

#: A reproduce.json with flat settings, written before search existed.
OLD_MANIFEST_FORMAT = "adact-reproduce-1"


def paper_config_from_flat(flat: dict[str, Any]) -> SearchConfig:
    """A paper-preset config from a manifest written before search existed (flat settings)."""
    outer = {"datasets", "seeds", "out", "jobs", "quiet", "baselines", "sync_bn"}
    train = {k: v for k, v in flat.items() if k not in outer and v is not None or k == "test_from_train"}
    train = {k: v for k, v in train.items() if k in {f.name for f in fields(TrainConfig)}}
    return SearchConfig(**{k: v for k, v in flat.items() if k in outer}, train=TrainConfig(**train), preset="paper")


def result_lacks_gap(result: dict[str, Any], out: str | Path) -> bool:
    """Whether a finished AdAct run predates the discretization gap and its best.pt can still give it.

    :func:`train` then measures the gap on best.pt and adds it to result.json, without training.
    """
    return (result.get("status") == "done" and bool(result.get("n_adact_units"))
            and "discretization_gap" not in result and RunFolder(out).best.is_file())
