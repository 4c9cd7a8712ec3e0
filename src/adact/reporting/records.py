"""Reading a search or reproduction folder back: one :class:`RunRecord` per run.

:func:`collect` reads the manifest (:mod:`adact.runs.manifest`) and every run folder; an AdAct
run's choices come from its selected epoch's recorded weights (result.json, else best.pt) as
:class:`~adact.choice.UnitSnapshot` s. Nothing here raises for a damaged run folder: the record
says ``damaged`` and what is missing. :func:`read_weight_history` parses a run's metrics.csv.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adact.choice import UnitSnapshot, model_weights, snapshots_from_record
from adact.config import SearchConfig
from adact.dataspec import DatasetSpec
from adact.errors import UserError
from adact.reporting.metric import Metric
from adact.runs.folder import RESULT_KEYS, RunFolder, result_keys
from adact.runs.io import read_json
from adact.runs.manifest import load_manifest
from adact.training.build import load_checkpoint

__all__ = ["RunRecord", "WeightHistory", "checkpoint_weights", "collect", "read_weight_history",
           "run_weights"]


@dataclass
class RunRecord:
    """One training run of the reproduction, as found on disk.

    ``status`` is ``done``, ``diverged`` (NaN/inf loss; ``message`` says when), ``skipped``
    (an Optimized run whose AdAct run did not finish), ``incomplete`` (interrupted: no
    result.json yet) or ``missing`` (never started).
    """

    dataset: str
    slug: str
    seed: int
    model: str
    status: str
    message: str = ""
    path: str = ""  # run folder, relative to the reproduction's output folder
    result: dict[str, Any] | None = None
    choices: list[str] | None = None  # AdAct runs: chosen activation per layer (best checkpoint)
    choice_weights: list[float] | None = None  # softmax weight of each choice
    layer_paths: list[str] | None = None
    candidates: list[str] | None = None
    raw: list[list[float]] | None = None  # AdAct runs: (layers, candidates) logits, best checkpoint
    mix: list[list[float]] | None = None  # AdAct runs: (layers, candidates) softmax weights
    confidence: list[dict[str, Any]] | None = None  # AdAct runs: UnitConfidence per layer, best checkpoint
    units: list[UnitSnapshot] | None = None  # AdAct runs: the units themselves (their recorded inputs included)

    def set_units(self, units: list[UnitSnapshot] | None, recorded: list[dict[str, Any]] | None = None) -> None:
        """Fill the choice fields from the AdAct run's :class:`~adact.choice.UnitSnapshot` s (None clears them).

        ``recorded`` is the confidence list as the run recorded it: kept as is (older runs lack
        later fields), so a re-rendered report is byte-identical to the first one.
        """
        if units is None:
            self.choices = self.choice_weights = self.layer_paths = self.candidates = self.raw = self.mix = None
            self.confidence = self.units = None
            return
        self.units = list(units)
        self.choices, self.choice_weights = [u.choice for u in units], [u.weight for u in units]
        self.layer_paths = [u.path for u in units]
        self.candidates = list(units[0].candidates) if units else []
        self.raw, self.mix = [list(u.raw) for u in units], [list(u.mix) for u in units]
        if recorded is not None:
            self.confidence = recorded
        elif all(u.confidence is not None for u in units):
            self.confidence = [u.confidence.to_json() for u in units]  # type: ignore[union-attr]
        else:
            self.confidence = None

    @property
    def metric(self) -> Metric | None:
        """The metric of the run's result.json (accuracy for one that names none); None without a result."""
        return None if self.result is None else Metric.of(self.result)

    @property
    def higher_is_better(self) -> bool | None:
        """The direction of :attr:`metric`; None without a result."""
        m = self.metric
        return None if m is None else m.higher_is_better

    def value(self, selection: str) -> float | None:
        """The run's metric under ``selection`` (``best``, ``final``, ``val``); None unless the run is done.

        The key is the run's own metric's (``best_test_acc``, ``best_test_loss``, ...).
        """
        if self.status != "done" or self.result is None:
            return None
        v = self.result.get(Metric.of(self.result).key(selection))
        return None if v is None else float(v)

    def to_json(self) -> dict[str, Any]:
        r = self.result or {}
        m = Metric.of(r)
        # An image run keeps exactly the keys it always had (results.json of a re-render is unchanged);
        # another task's run names its metric and carries that metric's keys instead.
        named = () if m.is_acc else ("metric", "higher_is_better") + (("best_test_ppl",) if m.is_loss else ())
        keep = (*named, m.key("best"), "best_epoch", m.key("final"), m.key("val"), "val_best_epoch",
                "epochs_run", "n_params", "n_adact_units", "n_adact_params", "wall_s", "activation")
        return {
            "dataset": self.dataset, "slug": self.slug, "seed": self.seed, "model": self.model,
            "status": self.status, "message": self.message, "path": self.path,
            **{k: r.get(k) for k in keep},
            "choices": self.choices, "choice_weights": self.choice_weights, "layer_paths": self.layer_paths,
            "candidates": self.candidates, "raw": self.raw, "mix": self.mix, "confidence": self.confidence,
            "discretization_gap": r.get("discretization_gap"),
        }

    def gap(self) -> dict[str, Any] | None:
        """The discretization gap of a finished AdAct run (None for older runs and other models)."""
        if self.status != "done" or self.result is None:
            return None
        return self.result.get("discretization_gap")


@dataclass
class WeightHistory:
    """AdAct weights per epoch, parsed from a run's metrics.csv."""

    epochs: list[int]
    paths: list[str]  # unit paths, block order
    candidates: list[str]
    mix: np.ndarray  # (epochs, layers, candidates) softmax weights
    raw: np.ndarray  # (epochs, layers, candidates) logits


def read_weight_history(metrics_csv: str | Path) -> WeightHistory | None:
    """The ``mix/<path>/<cand>`` and ``raw/...`` columns of metrics.csv as arrays; None if it has none.

    Raises:
        ValueError: the file is malformed (a row cut short, a value that is not a number); the
            message names the file and line.
    """
    path = Path(metrics_csv)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    paths: list[str] = []
    cands: list[str] = []
    for key in rows[0]:
        kind, _, rest = (key or "").partition("/")
        if kind != "mix" or "/" not in rest:
            continue
        p, c = rest.rsplit("/", 1)
        if p not in paths:
            paths.append(p)
        if c not in cands:
            cands.append(c)
    if not paths:
        return None
    epochs: list[int] = []
    mix, raw = [], []
    for line, r in enumerate(rows, start=2):
        try:
            epochs.append(int(r["epoch"]))
            mix.append([[float(r[f"mix/{p}/{c}"]) for c in cands] for p in paths])
            raw.append([[float(r[f"raw/{p}/{c}"]) for c in cands] for p in paths])
        except (KeyError, TypeError, ValueError):  # DictReader gives None for the cells of a short row
            raise UserError(f"{path} line {line} is cut short or not numeric (a damaged metrics.csv)") from None
    return WeightHistory(epochs, paths, cands, np.array(mix), np.array(raw))


def checkpoint_weights(path: str | Path) -> dict[str, Any]:
    """Choices and weights of a checkpoint's AdAct units (see :func:`adact.choice.weights_record`)."""
    model, _ = load_checkpoint(path)
    return model_weights(model)


def run_weights(run_dir: Path, validation: bool = False) -> dict[str, Any]:
    """The selected epoch's choices and weights of a finished run: from result.json, else best.pt.

    ``validation`` picks the epoch with the best validation metric (the highest accuracy, the
    lowest loss) when the run had a validation split; otherwise (and by default) the epoch with
    the best test metric.
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


def _read_result(rec: RunRecord, run: Path) -> None:
    """Fill ``rec`` from the run's result.json; a damaged one makes the record ``damaged``."""
    path = RunFolder(run).result
    try:
        result = read_json(path)
    except (ValueError, OSError) as e:
        rec.status, rec.message = "damaged", f"{e}"
        return
    keys = result_keys(result.get("metric", "acc")) if isinstance(result, dict) else RESULT_KEYS
    missing = [k for k in keys if k not in result] if isinstance(result, dict) else list(keys)
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
        granularity = ((rec.result or {}).get("config") or {}).get("granularity", "layer")
        rec.set_units(snapshots_from_record(w, granularity), w.get("confidence"))
    except (OSError, ValueError, KeyError, TypeError) as e:  # no best.pt, a refused or damaged one
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        rec.status, rec.result = "damaged", None
        rec.message = f"no chosen activations in {run} ({detail})"
        rec.set_units(None)


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
