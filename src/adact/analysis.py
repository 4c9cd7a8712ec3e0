"""Statistics and tables for the reproduction: Table 1 with seeds, paired differences, choices.

Everything here is pure: it takes run records (what :mod:`adact.reproduce` read from the run
folders) and returns numbers or text. Nothing trains and nothing touches the disk except
:func:`read_weight_history`, which parses a run's metrics.csv.

Accuracy is reported three ways, because the paper's way is optimistic:

* ``best``  -- best test accuracy over the epochs (the paper's Table 1: it evaluates on the test
  set every epoch and keeps the best, i.e. it selects the epoch on the test set);
* ``final`` -- test accuracy after the last epoch (no selection);
* ``val``   -- test accuracy at the epoch with the best validation accuracy (honest selection;
  needs ``--val-fraction``).

Baselines: the paper compares with ReLU everywhere; ``baselines`` names any activations (each
trained everywhere, e.g. all-Mish), and every table gets a column and paired differences for each.
The AdAct runs also bring their choices' confidence and the discretization gap
(:mod:`adact.confidence`).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from adact.confidence import WEAK_MARGIN, negative_prelu

__all__ = [
    "METRICS",
    "MODELS",
    "MODEL_LABELS",
    "PAPER_TABLE1",
    "PairedDiff",
    "RunRecord",
    "Summary",
    "WeightHistory",
    "build_summary",
    "confidence_rows",
    "consensus",
    "fmt_acc",
    "fmt_cell",
    "fmt_diff",
    "fmt_signed",
    "gap_summary",
    "model_label",
    "models_for",
    "paired_diff",
    "paper_key",
    "read_weight_history",
    "render_choices_md",
    "render_gap_md",
    "render_table_csv",
    "render_table_md",
    "render_weights_text",
    "summarize",
]

#: The paper's models; with other baselines the models are :func:`models_for` them.
MODELS: tuple[str, ...] = ("adact", "relu", "optimized")
MODEL_LABELS: dict[str, str] = {"adact": "AdAct", "relu": "ReLU", "optimized": "Optimized", "baseline": "Baseline"}
# How the papers spell the registry's names, for table columns.
_ACT_LABELS: dict[str, str] = {"elu": "ELU", "leaky_relu": "LeakyReLU", "prelu": "PReLU", "rrelu": "RReLU",
                               "silu": "SiLU", "mish": "Mish", "gelu": "GELU", "selu": "SELU", "celu": "CELU",
                               "hardswish": "Hardswish", "tanh": "Tanh", "sigmoid": "Sigmoid", "softplus": "Softplus"}


def model_label(model: str) -> str:
    """Column label of a model: ``AdAct``, ``Optimized``, or a baseline's activation (``Mish``)."""
    return MODEL_LABELS.get(model) or _ACT_LABELS.get(model, model)


def models_for(baselines: Sequence[str] = ("relu",)) -> tuple[str, ...]:
    """The models of a reproduction with these baselines, in table order: AdAct, baselines, Optimized."""
    return ("adact", *baselines, "optimized")

#: metric id -> (result.json key, human title)
METRICS: dict[str, tuple[str, str]] = {
    "best": ("best_test_acc", "best-on-test (the paper's selection, optimistic)"),
    "final": ("final_test_acc", "final epoch (no selection)"),
    "val": ("val_selected_test_acc", "validation-selected epoch (honest selection)"),
}

#: The paper's Table 1 (test accuracy, best epoch on the test set).
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "fmnist": {"adact": 0.921, "relu": 0.918, "optimized": 0.922},
    "cifar10": {"adact": 0.766, "relu": 0.759, "optimized": 0.766},
    "svhn": {"adact": 0.911, "relu": 0.913, "optimized": 0.917},
    "fer2013": {"adact": 0.546, "relu": 0.550, "optimized": 0.565},
}


def paper_key(dataset: str) -> str | None:
    """The paper's Table 1 row for a dataset argument, or None.

    ``npz:PATH`` maps to a row when the file's stem names one (``npz:data/fer2013.npz``), so a
    user-supplied copy of a paper dataset is still compared with the paper.
    """
    from adact.dataspec import DatasetSpec

    return DatasetSpec.parse(dataset).paper_key


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

    def value(self, metric: str) -> float | None:
        """The run's accuracy under ``metric`` (a key of METRICS); None unless the run is done."""
        if self.status != "done" or self.result is None:
            return None
        v = self.result.get(METRICS[metric][0])
        return None if v is None else float(v)

    def to_json(self) -> dict[str, Any]:
        r = self.result or {}
        keep = ("best_test_acc", "best_epoch", "final_test_acc", "val_selected_test_acc", "val_best_epoch",
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
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
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
    """Per dataset: per model and metric a :class:`Summary`, paired differences to each baseline, statuses.

    ``baselines`` are the run folders compared with: ``("relu",)`` for the paper, ``("baseline",
    ...)`` for ``adact search`` (the model as written, then any one-activation baselines).
    ``diffs[model][baseline][metric]`` is the paired difference model − baseline for AdAct and
    Optimized; ``gap`` summarises the AdAct runs' discretization gaps (:func:`gap_summary`).
    ``paper`` puts the paper's Table 1 values beside datasets that have them (``show_paper``
    records the choice for the renderers). Returns plain JSON-able dicts (``Summary``/``PairedDiff``
    already converted).
    """
    out: dict[str, Any] = {}
    for ds in datasets:
        recs = [r for r in records if r.dataset == ds]
        entry: dict[str, Any] = {"slug": recs[0].slug if recs else ds, "paper_key": paper_key(ds),
                                 "baselines": list(baselines), "models": {}, "diffs": {}, "status": {}}
        per_model: dict[str, dict[str, dict[int, float]]] = {}
        for m in models_for(baselines):
            mrecs = [r for r in recs if r.model == m]
            entry["status"][m] = dict(Counter(r.status for r in mrecs))
            per_model[m] = {}
            entry["models"][m] = {}
            for metric in METRICS:
                vals = {r.seed: v for r in mrecs if (v := r.value(metric)) is not None}
                per_model[m][metric] = vals
                entry["models"][m][metric] = summarize(vals).to_json()
        for m in ("adact", "optimized"):
            entry["diffs"][m] = {b: {metric: paired_diff(per_model[m][metric], per_model[b][metric]).to_json()
                                     for metric in METRICS} for b in baselines}
        entry["gap"] = gap_summary([r for r in recs if r.model == "adact"], per_model["optimized"]["best"])
        entry["show_paper"] = paper
        paper_row = PAPER_TABLE1.get(entry["paper_key"] or "") if paper else None
        entry["paper"] = dict(paper_row) if paper_row else None
        out[ds] = entry
    return out


def gap_summary(adact: Sequence[RunRecord], optimized_best: dict[int, float]) -> dict[str, Any]:
    """Mixture and argmax accuracy over seeds, argmax − mixture, and Optimized (retrained) − argmax."""
    gaps = {r.seed: g for r in adact if (g := r.gap()) is not None}
    mixture = {s: float(g["mixture_acc"]) for s, g in gaps.items()}
    argmax = {s: float(g["argmax_acc"]) for s, g in gaps.items()}
    return {"mixture": summarize(mixture).to_json(), "argmax": summarize(argmax).to_json(),
            "argmax_minus_mixture": paired_diff(argmax, mixture).to_json(),
            "optimized_minus_argmax": paired_diff(optimized_best, argmax).to_json()}


# --- text ----------------------------------------------------------------------------------


def fmt_acc(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_signed(x: float, digits: int = 4) -> str:
    """``x`` with its sign and a typographic minus, ``digits`` decimals."""
    return f"{x:+.{digits}f}".replace("-", "−")


def fmt_cell(s: dict[str, Any], status: dict[str, int] | None = None) -> str:
    """A :class:`Summary` (as JSON) as ``mean ± sd (n=k)``, with non-finished runs of ``status`` noted."""
    bad = {k: v for k, v in (status or {}).items() if k not in ("done",)}
    note = ", ".join(f"{v} {k}" for k, v in sorted(bad.items()))
    if s["n"] == 0:
        return note or "—"
    cell = fmt_acc(s["mean"]) + (f" ± {s['std']:.4f}" if s["std"] is not None else "") + f" (n={s['n']})"
    return cell + (f"; {note}" if note else "")


def fmt_diff(d: dict[str, Any]) -> str:
    """A :class:`PairedDiff` (as JSON) as ``mean [low, high] (n=k)``."""
    if d["n"] == 0:
        return "—"
    if d["ci_low"] is None:
        return f"{fmt_signed(d['mean'])} (n=1, CI n/a)"
    return f"{fmt_signed(d['mean'])} [{fmt_signed(d['ci_low'])}, {fmt_signed(d['ci_high'])}] (n={d['n']})"


def _baselines(summary: dict[str, Any]) -> list[str]:
    first = next(iter(summary.values()), {})
    return list(first.get("baselines", ["relu"]))


def _show_paper(summary: dict[str, Any]) -> bool:
    first = next(iter(summary.values()), {})
    return bool(first.get("show_paper", True))


def render_table_md(summary: dict[str, Any], metric: str = "best") -> str:
    """A Markdown Table 1 for ``metric``: mean ± std over seeds, paired differences to each baseline.

    The best-on-test table also shows the paper's value beside each model the paper has (its
    numbers are best-on-test, so they sit only beside the comparable column), unless the summary
    was built with ``paper=False`` (``adact search``: another model than the paper's).
    """
    with_paper = metric == "best" and _show_paper(summary)
    baselines = _baselines(summary)
    models = models_for(baselines)
    head = ["Dataset"]
    for m in models:
        head += [model_label(m)] + (["paper"] if with_paper and m in MODELS else [])
    head += [f"{model_label(m)} − {model_label(b)} [95% CI]" for b in baselines for m in ("adact", "optimized")]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for ds, e in summary.items():
        row = [f"`{ds}`"]
        for m in models:
            row.append(fmt_cell(e["models"][m][metric], e["status"][m]))
            if with_paper and m in MODELS:
                row.append(fmt_acc(e["paper"][m], 3) if e["paper"] else "—")
        row += [fmt_diff(e["diffs"][m][b][metric]) for b in baselines for m in ("adact", "optimized")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def render_gap_md(summary: dict[str, Any]) -> str:
    """A Markdown table of the discretization gap: AdAct's mixture vs its argmax, and vs Optimized.

    Per dataset: the AdAct model's test accuracy at its best epoch (the mixture), the same model
    with every unit fixed to its argmax and no retraining (BatchNorm statistics recomputed), the
    paired difference, and how much retraining from scratch (Optimized) adds over the argmax.
    """
    head = ["Dataset", "mixture (AdAct, best epoch)", "argmax, no retraining", "argmax − mixture [95% CI]",
            "Optimized (retrained) − argmax [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for ds, e in summary.items():
        g = e["gap"]
        lines.append(f"| `{ds}` | {fmt_cell(g['mixture'], {})} | {fmt_cell(g['argmax'], {})} | "
                     f"{fmt_diff(g['argmax_minus_mixture'])} | {fmt_diff(g['optimized_minus_argmax'])} |")
    return "\n".join(lines) + "\n"


def render_table_csv(summary: dict[str, Any]) -> str:
    """Table 1 as CSV: one row per dataset and metric, columns per model and per difference."""
    baselines = _baselines(summary)
    models = models_for(baselines)
    cols = ["dataset", "metric"]
    for m in models:
        cols += [f"{m}_mean", f"{m}_std", f"{m}_n", f"{m}_not_done", f"paper_{m}"]
    diff_keys = [(m, b, f"{m}_minus_{b}") for b in baselines for m in ("adact", "optimized")]
    for _, _, key in diff_keys:
        cols += [f"{key}_mean", f"{key}_ci_low", f"{key}_ci_high", f"{key}_n"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for ds, e in summary.items():
        for metric in METRICS:
            row: dict[str, Any] = {"dataset": ds, "metric": METRICS[metric][0]}
            for m in models:
                s = e["models"][m][metric]
                row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"] = s["mean"], s["std"], s["n"]
                row[f"{m}_not_done"] = sum(v for k, v in e["status"][m].items() if k != "done")
                # The paper's numbers are best-on-test; repeating them beside other metrics would invite
                # a comparison they do not support.
                row[f"paper_{m}"] = e["paper"].get(m) if e["paper"] and metric == "best" else None
            for m, b, key in diff_keys:
                d = e["diffs"][m][b][metric]
                row[f"{key}_mean"], row[f"{key}_n"] = d["mean"], d["n"]
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = d["ci_low"], d["ci_high"]
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def _choice_cell(choice: str, weight: float, conf: dict[str, Any] | None) -> str:
    if conf is None:
        return f"{choice} ({weight:.3f})"
    agree = f"; agree {conf['agreement']:.2f}" if conf.get("agreement") is not None else ""
    slope = f"; slope {conf['prelu_slope']:+.2f}" if choice == "prelu" and conf.get("prelu_slope") is not None else ""
    return (f"{choice} ({weight:.3f}; margin {conf['margin']:.3f}{agree}{slope})" + (" **weak**" if conf["weak"] else "")
            + (" **negative slope**" if negative_prelu(conf) else ""))


def confidence_rows(records: Sequence[RunRecord], n_layers: int) -> list[str]:
    """Markdown rows under a choices table: per layer, weak choices k/n and the mean entropy."""
    confs = [r.confidence for r in records if r.confidence and len(r.confidence) == n_layers]
    if not confs:
        return []
    weak = [sum(bool(c[i]["weak"]) for c in confs) for i in range(n_layers)]
    entropy = [float(np.mean([c[i]["entropy"] for c in confs])) for i in range(n_layers)]
    margin = [float(np.mean([c[i]["margin"] for c in confs])) for i in range(n_layers)]
    n = len(confs)
    return ["| **weak choices** | " + " | ".join(f"{k}/{n}" for k in weak) + " |",
            "| mean margin | " + " | ".join(f"{m:.3f}" for m in margin) + " |",
            "| mean entropy | " + " | ".join(f"{h:.3f}" for h in entropy) + " |"]


def render_choices_md(records: Sequence[RunRecord], datasets: Sequence[str],
                      baselines: Sequence[str] = ("relu",), selection: str = "best checkpoint") -> str:
    """Per dataset: chosen activation per layer per seed with its confidence, the consensus, parameter counts.

    ``selection`` names where the choices were read (the AdAct run's best checkpoint, or its
    validation-selected epoch in ``adact search``).
    """
    parts: list[str] = []
    for ds in datasets:
        recs = sorted((r for r in records if r.dataset == ds), key=lambda r: (r.seed, r.model))
        adact = [r for r in recs if r.model == "adact"]
        parts.append(f"## `{ds}`\n")
        n_layers = max((len(r.choices) for r in adact if r.choices), default=0)
        if n_layers == 0:
            parts.append("No finished AdAct run: no choices.\n")
        else:
            paths = next((r.layer_paths for r in adact if r.layer_paths), None) or []
            if n_layers > 8:  # many units: one row per unit reads better than 50 columns
                parts.append(_choices_by_unit(adact, paths, n_layers) + "\n")
                parts.append(f"Cells: chosen activation (its softmax weight), read from the AdAct run's {selection}.\n")
                parts.append(_params_md(recs, baselines))
                continue
            head = ["seed"] + [f"layer {i + 1}" for i in range(n_layers)]
            lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
            for r in adact:
                if r.choices:
                    confs: list[dict[str, Any] | None] = list(r.confidence or [None] * len(r.choices))
                    cells = [_choice_cell(c, w, k) for c, w, k in zip(r.choices, r.choice_weights or [], confs)]
                else:
                    cells = [f"{r.status}: {r.message}" if r.message else r.status] + [""] * (n_layers - 1)
                lines.append(f"| {r.seed} | " + " | ".join(cells) + " |")
            done = [r for r in adact if r.choices and r.mix is not None and r.candidates]
            if done:
                cons = consensus(np.array([r.mix for r in done]), done[0].candidates or [])
                lines.append("| **most common** | " + " | ".join(f"{c} ({k}/{n})" for c, k, n in cons) + " |")
            lines += confidence_rows(adact, n_layers)
            parts.append("\n".join(lines) + "\n")
            parts.append("Cells: chosen activation (its softmax weight; margin to the runner-up; for per-channel units "
                         f"the share of channels that agree), read from the AdAct run's {selection}. **weak**: "
                         f"margin < {WEAK_MARGIN:g}, a choice a little noise could flip. Entropy: normalised, "
                         "0 = one-hot, 1 = uniform. PReLU choices show their learned slope; **negative slope**: "
                         "the argmax keeps it, and PReLU with a negative slope is V-shaped, a different function "
                         "from the PReLU (slope 0.25) that the optimized model is retrained from, so expect a large "
                         "discretization gap.\n")
        parts.append(_params_md(recs, baselines))
    return "\n".join(parts)


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


def _choices_by_unit(adact: Sequence[RunRecord], paths: Sequence[str], n_layers: int) -> str:
    done = [r for r in adact if r.choices]
    head = ["#", "unit"] + [f"seed {r.seed}" for r in done] + (["most common"] if done else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    cons = consensus(np.array([r.mix for r in done]), done[0].candidates or []) if done and all(
        r.mix is not None for r in done) else []
    for i in range(n_layers):
        # A weak choice (margin < WEAK_MARGIN) is marked here too; the full confidence is in choices.json.
        cells = [f"{(r.choices or [])[i]} ({(r.choice_weights or [0.0] * n_layers)[i]:.3f})"
                 + (" **weak**" if r.confidence and i < len(r.confidence) and r.confidence[i]["weak"] else "")
                 for r in done]
        extra = [f"{cons[i][0]} ({cons[i][1]}/{cons[i][2]})"] if cons else []
        lines.append(f"| {i + 1} | `{paths[i] if i < len(paths) else '?'}` | " + " | ".join(cells + extra) + " |")
    return "\n".join(lines)


def _params_md(recs: Sequence[RunRecord], baselines: Sequence[str] = ("relu",)) -> str:
    rows = ["| model | parameters | AdAct units | AdAct parameters |", "|---|---|---|---|"]
    seen = False
    for m in models_for(baselines):
        r = next((x for x in recs if x.model == m and x.result), None)
        if r is None or r.result is None:
            continue
        seen = True
        res = r.result
        rows.append(f"| {model_label(m)} | {res['n_params']:,} | {res['n_adact_units']} | {res['n_adact_params']} |")
    if not seen:
        return "No parameter counts (no run has a result yet).\n"
    note = ("\nAdAct overhead: N_AdAct = 8 · n_AdAct (7 mixture logits + 1 PReLU slope per unit, per channel with "
            "`--granularity channel`). ConvNet-Optimized uses plain activations; if it picks PReLU for a layer "
            "that layer adds one slope parameter.\n")
    if baselines[0] != "relu":  # adact search: the baseline is the model as written, maybe not the ConvNet
        note = note.replace("ConvNet-Optimized uses", "The optimized model uses")
    return "\n".join(rows) + "\n" + note


# --- weight histories ----------------------------------------------------------------------


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
            raise ValueError(f"{path} line {line} is cut short or not numeric (a damaged metrics.csv)") from None
    return WeightHistory(epochs, paths, cands, np.array(mix), np.array(raw))


def render_weights_text(paths: Sequence[str], candidates: Sequence[str], raw: np.ndarray, mix: np.ndarray) -> str:
    """Per-layer raw and softmax weights as a fixed-width table; ``*`` marks each layer's choice."""
    width = max(8, *(len(c) + 1 for c in candidates))
    head = f"{'layer':<8}{'unit':<16}" + "".join(f"{c:>{width}}" for c in candidates) + "   dominant"
    lines = []
    for kind, arr in (("raw weights (logits)", raw), ("softmax weights", mix)):
        lines += [kind, head]
        for i, p in enumerate(paths):
            top = int(np.argmax(mix[i]))  # the choice is the softmax argmax, marked in both blocks
            cells = "".join(f"{(f'{v:.4f}' + ('*' if j == top else ' ')):>{width}}" for j, v in enumerate(arr[i]))
            lines.append(f"{f'{i + 1}':<8}{p:<16}{cells}   {candidates[top]}")
        lines.append("")
    return "\n".join(lines)
