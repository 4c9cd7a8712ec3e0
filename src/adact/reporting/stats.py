"""Statistics over seeds: mean ± sd per model, paired differences with t intervals, the gap, consensus.

Pure functions of :class:`~adact.reporting.records.RunRecord` s; nothing here reads or writes files.

The test metric (accuracy for images, higher is better; held-out loss per token for language
modelling, lower is better: see :mod:`adact.reporting.metric`) is reported three ways, because
the paper's way is optimistic:

* ``best``  -- best test metric over the evaluations (the paper's Table 1: it evaluates on the
  test set every epoch and keeps the best, i.e. it selects the epoch on the test set);
* ``final`` -- test metric after the last epoch (no selection);
* ``val``   -- test metric at the epoch with the best validation metric (honest selection;
  needs ``--val-fraction``).

Differences are always model − baseline, whatever the direction: for a loss a negative one means
the model is better. Each dataset's entry records its metric so the renderers can say so.

Baselines: the paper compares with ReLU everywhere; ``baselines`` names any activations (each
trained everywhere, e.g. all-Mish), and every summary gets paired differences for each.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from adact.config import models_for
from adact.dataspec import DatasetSpec
from adact.errors import UserError
from adact.paper import PAPER_TABLE1
from adact.reporting.metric import SELECTIONS, Metric, gap_metric
from adact.reporting.records import RunRecord

__all__ = ["PairedDiff", "Summary", "build_summary", "consensus", "dataset_metric", "gap_summary", "paired_diff",
           "summarize"]


@dataclass
class Summary:
    """Mean and sample standard deviation (ddof=1; None for n < 2) of per-seed values."""

    n: int
    mean: float | None
    std: float | None
    values: dict[int, float] = field(default_factory=dict)  # seed -> value

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "values": {str(k): v for k, v in self.values.items()}}


def summarize(values: dict[int, float]) -> Summary:
    xs = np.array(list(values.values()), dtype=float)
    n = len(xs)
    return Summary(n, float(xs.mean()) if n else None, float(xs.std(ddof=1)) if n > 1 else None, dict(values))


@dataclass
class PairedDiff:
    """Mean of per-seed differences ``a - b`` with a paired t confidence interval.

    The interval is ``mean +- t_{(1+conf)/2, n-1} * sd / sqrt(n)``; with one pair it is undefined
    (``ci_low``/``ci_high`` None). Pairing by seed removes the seed-to-seed variance the two
    models share (same data order, same init RNG stream).
    """

    n: int
    mean: float | None
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float = 0.95
    seeds: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "confidence": self.confidence, "seeds": self.seeds}


def paired_diff(a: dict[int, float], b: dict[int, float], confidence: float = 0.95) -> PairedDiff:
    """Paired difference ``a - b`` over the seeds both have (dicts seed -> value)."""
    if not 0.0 < confidence < 1.0:
        raise UserError(f"confidence must be in (0, 1), got {confidence}")
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    n = len(d)
    if n == 0:
        return PairedDiff(0, None, None, None, None, confidence, seeds)
    mean = float(d.mean())
    if n == 1:
        return PairedDiff(1, mean, None, None, None, confidence, seeds)
    sd = float(d.std(ddof=1))
    # Computed by hand rather than stats.t.interval, which returns NaN for a zero spread.
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sd / math.sqrt(n)
    return PairedDiff(n, mean, sd, mean - half, mean + half, confidence, seeds)


def build_summary(records: Sequence[RunRecord], datasets: Sequence[str],
                  baselines: Sequence[str] = ("relu",), paper: bool = True) -> dict[str, Any]:
    """Per dataset: per model and selection (best, final, val) a :class:`Summary`, paired differences to each baseline, statuses.

    ``baselines`` are the run folders compared with: ``("relu",)`` for the paper, ``("baseline",
    ...)`` for ``adact search`` (the model as written, then any one-activation baselines).
    ``diffs[model][baseline][selection]`` is the paired difference model − baseline for AdAct and
    Optimized; ``gap`` summarises the AdAct runs' discretization gaps (:func:`gap_summary`).
    ``paper`` puts the paper's Table 1 values beside datasets that have them (``show_paper``
    records the choice for the renderers). ``metric`` and ``higher_is_better`` name the dataset's
    metric (:func:`dataset_metric`). Returns plain JSON-able dicts (``Summary``/``PairedDiff``
    already converted).
    """
    out: dict[str, Any] = {}
    for ds in datasets:
        recs = [r for r in records if r.dataset == ds]
        entry: dict[str, Any] = {"slug": recs[0].slug if recs else ds, "paper_key": DatasetSpec.parse(ds).paper_key,
                                 "baselines": list(baselines), "models": {}, "diffs": {}, "status": {}}
        metric = dataset_metric(recs, ds)
        entry["metric"], entry["higher_is_better"] = metric.name, metric.higher_is_better
        per_model: dict[str, dict[str, dict[int, float]]] = {}
        for m in models_for(baselines):
            mrecs = [r for r in recs if r.model == m]
            entry["status"][m] = dict(Counter(r.status for r in mrecs))
            per_model[m] = {}
            entry["models"][m] = {}
            for sel in SELECTIONS:
                vals = {r.seed: v for r in mrecs if (v := r.value(sel)) is not None}
                per_model[m][sel] = vals
                entry["models"][m][sel] = summarize(vals).to_json()
        for m in ("adact", "optimized"):
            entry["diffs"][m] = {b: {sel: paired_diff(per_model[m][sel], per_model[b][sel]).to_json()
                                     for sel in SELECTIONS} for b in baselines}
        entry["gap"] = gap_summary([r for r in recs if r.model == "adact"], per_model["optimized"]["best"])
        entry["show_paper"] = paper
        paper_row = PAPER_TABLE1.get(entry["paper_key"] or "") if paper else None
        entry["paper"] = dict(paper_row) if paper_row else None
        out[ds] = entry
    return out


def dataset_metric(records: Sequence[RunRecord], dataset: str) -> Metric:
    """The metric of a dataset's runs: that of the first one with a result.json.

    A search's runs of one dataset share one task, so any of them names it. Before any run has
    ended the dataset's kind decides (text: loss), which only labels an empty table.
    """
    return next((m for r in records if (m := r.metric) is not None), None) or Metric.guess(dataset)


def gap_summary(adact: Sequence[RunRecord], optimized_best: dict[int, float]) -> dict[str, Any]:
    """Mixture and argmax metric over seeds, argmax − mixture, and Optimized (retrained) − argmax.

    Each gap record is read in its own metric (``mixture_acc``, ``mixture_loss``, ...).
    """
    gaps = {r.seed: g for r in adact if (g := r.gap()) is not None}
    mixture = {s: float(g[f"mixture_{gap_metric(g)}"]) for s, g in gaps.items()}
    argmax = {s: float(g[f"argmax_{gap_metric(g)}"]) for s, g in gaps.items()}
    return {"mixture": summarize(mixture).to_json(), "argmax": summarize(argmax).to_json(),
            "argmax_minus_mixture": paired_diff(argmax, mixture).to_json(),
            "optimized_minus_argmax": paired_diff(optimized_best, argmax).to_json()}


def consensus(mix: np.ndarray, candidates: Sequence[str]) -> list[tuple[str, int, int]]:
    """Per layer, the most common per-seed choice as ``(name, seeds choosing it, seeds)``.

    ``mix`` is ``(seeds, layers, candidates)``; a tie between choices goes to the one with the
    larger mean softmax weight, so the figures and choices.md always agree.
    """
    per_seed = np.asarray(mix).argmax(-1)  # (S, L)
    out = []
    for layer in range(per_seed.shape[1]):
        counts = Counter(per_seed[:, layer].tolist())
        top = max(counts.values())
        best = max((k for k, v in counts.items() if v == top), key=lambda k: float(mix[:, layer, k].mean()))
        out.append((candidates[best], top, per_seed.shape[0]))
    return out
