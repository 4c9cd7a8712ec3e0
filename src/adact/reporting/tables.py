"""Text of the reports: Table 1 and its relatives in Markdown, CSV and fixed width; choices; confidence; gap.

Pure functions of the summaries (:mod:`adact.reporting.stats`) and records; nothing here reads
or writes files. Each summary entry names its metric (:class:`~adact.reporting.metric.Metric`):
an accuracy table reads as it always did; a loss table says that lower is better, which sign of
a difference is good, and the perplexity exp(loss) of each mean.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from adact.choice import WEAK_MARGIN, UnitConfidence, negative_prelu
from adact.config import models_for
from adact.paper import DEFAULT_CANDIDATES, TABLE1_MODELS
from adact.reporting.functions import function_gap_md
from adact.reporting.metric import SELECTIONS, Metric, gap_metric, metric_of_summary
from adact.reporting.records import RunRecord
from adact.reporting.stats import consensus

__all__ = [
    "MODEL_LABELS",
    "confidence_rows",
    "fmt_acc",
    "fmt_cell",
    "fmt_diff",
    "fmt_signed",
    "model_label",
    "render_choices_md",
    "render_confidence_text",
    "render_gap_md",
    "render_gap_text",
    "render_table_csv",
    "render_table_md",
    "render_weights_text",
]


MODEL_LABELS: dict[str, str] = {"adact": "AdAct", "relu": "ReLU", "optimized": "Optimized", "baseline": "Baseline"}


# How the papers spell the registry's names, for table columns.
_ACT_LABELS: dict[str, str] = {"elu": "ELU", "leaky_relu": "LeakyReLU", "prelu": "PReLU", "rrelu": "RReLU",
                               "silu": "SiLU", "mish": "Mish", "gelu": "GELU", "selu": "SELU", "celu": "CELU",
                               "hardswish": "Hardswish", "tanh": "Tanh", "sigmoid": "Sigmoid", "softplus": "Softplus",
                               "relu2": "ReLU²", "relu6": "ReLU6", "hardtanh": "Hardtanh",
                               "gelu_tanh": "GELU (tanh)"}


def model_label(model: str) -> str:
    """Column label of a model: ``AdAct``, ``Optimized``, or a baseline's activation (``Mish``)."""
    return MODEL_LABELS.get(model) or _ACT_LABELS.get(model, model)


def fmt_acc(x: float | None, digits: int = 4) -> str:
    """A metric value (accuracy, loss, ...) with ``digits`` decimals; ``—`` for None."""
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
    mixed = metric_of_summary(summary).is_mixed  # datasets of different tasks: each row names its metric
    baselines = _baselines(summary)
    models = models_for(baselines)
    head = ["Dataset"]
    for m in models:
        head += [model_label(m)] + (["paper"] if with_paper and m in TABLE1_MODELS else [])
    head += [f"{model_label(m)} − {model_label(b)} [95% CI]" for b in baselines for m in ("adact", "optimized")]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for ds, e in summary.items():
        row = [f"`{ds}`" + (f" ({Metric.of(e).described})" if mixed else "")]
        for m in models:
            row.append(fmt_cell(e["models"][m][metric], e["status"][m]))
            if with_paper and m in TABLE1_MODELS:
                row.append(fmt_acc(e["paper"][m], 3) if e["paper"] else "—")
        row += [fmt_diff(e["diffs"][m][b][metric]) for b in baselines for m in ("adact", "optimized")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n" + _metric_notes(summary, metric, models)


def _metric_notes(summary: dict[str, Any], selection: str, models: Sequence[str]) -> str:
    """Under a table of a metric other than accuracy: which sign is good, and each mean's perplexity.

    Empty for accuracy, so an image table is what it always was. Perplexity is exp of the mean
    loss over seeds (not the mean of the seeds' perplexities).
    """
    notes = dict.fromkeys(Metric.of(e).direction_note for e in summary.values())
    lines = ["\n" + n for n in notes if n]
    for ds, e in summary.items():
        metric = Metric.of(e)
        ppl = [(m, metric.ppl(e["models"][m][selection]["mean"])) for m in models]
        if metric.is_loss and any(p is not None for _, p in ppl):
            cells = ", ".join(f"{model_label(m)} {fmt_acc(p, 2)}" for m, p in ppl)
            lines.append(f"\nPerplexity exp(mean loss), `{ds}`: {cells}.\n")
    return "".join(lines)


def render_gap_md(summary: dict[str, Any]) -> str:
    """A Markdown table of the discretization gap: AdAct's mixture vs its argmax, and vs Optimized.

    Per dataset: the AdAct model's test accuracy at its best epoch (the mixture), the same model
    with every unit fixed to its argmax and no retraining (BatchNorm statistics recomputed), the
    paired difference, and how much retraining from scratch (Optimized) adds over the argmax.
    """
    head = ["Dataset", "mixture (AdAct, best epoch)", "argmax, no retraining", "argmax − mixture [95% CI]",
            "Optimized (retrained) − argmax [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    mixed = metric_of_summary(summary).is_mixed
    for ds, e in summary.items():
        g = e["gap"]
        name = f"`{ds}`" + (f" ({Metric.of(e).described})" if mixed else "")
        lines.append(f"| {name} | {fmt_cell(g['mixture'], {})} | {fmt_cell(g['argmax'], {})} | "
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
        for metric in SELECTIONS:
            # The row's metric is the dataset's key (best_test_acc, best_test_loss, ...): it says what the numbers are.
            row: dict[str, Any] = {"dataset": ds, "metric": Metric.of(e).key(metric)}
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
                parts += [t for t in [_function_gaps(adact)] if t]
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
            prelu = any("prelu" in (r.candidates or []) for r in adact)
            parts.append("Cells: chosen activation (its softmax weight; margin to the runner-up; for per-channel units "
                         f"the share of channels that agree), read from the AdAct run's {selection}. **weak**: "
                         f"margin < {WEAK_MARGIN:g}, a choice a little noise could flip. Entropy: normalised, "
                         "0 = one-hot, 1 = uniform."
                         + (" PReLU choices show their learned slope; **negative slope**: "
                            "the argmax keeps it, and PReLU with a negative slope is V-shaped, a different function "
                            "from the PReLU (slope 0.25) that the optimized model is retrained from, so expect a large "
                            "discretization gap." if prelu else "") + "\n")
            parts += [t for t in [_function_gaps(adact)] if t]
        parts.append(_params_md(recs, baselines))
    return "\n".join(parts)


def _function_gaps(adact: Sequence[RunRecord]) -> str:
    """choices.md's per-unit ``|mixture - chosen|`` of the finished AdAct runs, linking their function figure."""
    runs = [(f"seed {r.seed}", r.units) for r in adact if r.units]
    return function_gap_md(runs, f"figures/{adact[0].slug}_functions.png") if runs else ""


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
    adact = next((x for x in recs if x.model == "adact" and x.candidates), None)
    pool = list(adact.candidates or []) if adact is not None else []
    if not pool or pool == list(DEFAULT_CANDIDATES):
        note = ("\nAdAct overhead: N_AdAct = 8 · n_AdAct (7 mixture logits + 1 PReLU slope per unit, per channel with "
                "`--granularity channel`). ConvNet-Optimized uses plain activations; if it picks PReLU for a layer "
                "that layer adds one slope parameter.\n")
    else:
        slope = " + 1 PReLU slope" if "prelu" in pool else ""
        per = len(pool) + (1 if "prelu" in pool else 0)
        note = (f"\nAdAct overhead: N_AdAct = {per} · n_AdAct ({len(pool)} mixture logits{slope} per unit, per channel "
                f"with `--granularity channel`; pool: {', '.join(pool)}). ConvNet-Optimized uses plain activations.\n")
    if baselines[0] != "relu":  # adact search: the baseline is the model as written, maybe not the ConvNet
        note = note.replace("ConvNet-Optimized uses", "The optimized model uses")
    return "\n".join(rows) + "\n" + note


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


def render_confidence_text(confidence: Sequence[UnitConfidence | dict[str, Any]],
                           weak_margin: float = WEAK_MARGIN) -> str:
    """A fixed-width table of per-unit confidences (``adact analyze``).

    ``WEAK`` marks weak choices, ``NEG-SLOPE`` PReLU choices with a negative learned slope
    (:func:`negative_prelu`); ``slope`` is shown for PReLU choices only.
    """
    rows = [c.to_json() if isinstance(c, UnitConfidence) else dict(c) for c in confidence]
    if not rows:
        return ""
    lines = [f"confidence of each choice (weak: margin to the runner-up < {weak_margin:g}; entropy 0 = one-hot, "
             f"1 = uniform)",
             f"{'layer':<8}{'unit':<16}{'choice':>12}{'top':>9}{'margin':>9}{'entropy':>9}{'agree':>8}{'slope':>8}"]
    for i, c in enumerate(rows):
        agree = "—" if c.get("agreement") is None else f"{c['agreement']:.2f}"
        slope = f"{c['prelu_slope']:+.2f}" if c["choice"] == "prelu" and c.get("prelu_slope") is not None else "—"
        lines.append(f"{i + 1:<8}{c['path']:<16}{c['choice']:>12}{c['top']:>9.4f}{c['margin']:>9.4f}"
                     f"{c['entropy']:>9.4f}{agree:>8}{slope:>8}" + ("   WEAK" if c["weak"] else "")
                     + ("   NEG-SLOPE" if negative_prelu(c) else ""))
    if any(negative_prelu(c) for c in rows):
        lines.append("NEG-SLOPE: PReLU whose slope was learned negative inside the mixture; alone it is V-shaped, "
                     "so the argmax model is a different function (expect a large discretization gap)")
    return "\n".join(lines) + "\n\n"


def render_gap_text(gap: Any) -> str:
    """One paragraph on the discretization gap of a run (``adact analyze``), from its :class:`~adact.training.gap.GapResult`."""
    g = gap if isinstance(gap, dict) else gap.to_json()  # a GapResult or its JSON
    m = gap_metric(g)
    if m == "acc":  # an image run's line, word for word as before
        return (f"discretization gap: mixture {g['mixture_acc']:.4f}, argmax (no retraining, BatchNorm recomputed on "
                f"{g['bn_batches']} training batches) {g['argmax_acc']:.4f}, argmax - mixture {g['gap']:+.4f}\n")
    bn = f", BatchNorm recomputed on {g['bn_batches']} training batches" if g.get("bn_batches") else ""
    lower = m == "loss" or g.get("higher_is_better") is False
    sign = "positive: the argmax model is worse" if lower else "negative: the argmax model is worse"
    return (f"discretization gap in test {m} ({'lower' if lower else 'higher'} is better): mixture "
            f"{g[f'mixture_{m}']:.4f}, argmax (no retraining{bn}) {g[f'argmax_{m}']:.4f}, argmax - mixture "
            f"{g['gap']:+.4f} ({sign})\n")
