"""The summary of a search or reproduction folder: tables, choices, figures and the report.

:func:`render` reads every run folder of an ``adact search`` / ``adact reproduce`` output folder
(through :func:`adact.reporting.records.collect`) and (re)writes the table (``table.md``/``.csv``, or the
paper preset's ``table1.*``), ``choices.md``/``.json``, the figures, ``report.md`` and
``results.json``; ``adact analyze OUT`` calls it without training
(:func:`adact.reporting.analyze.analyze_run` does the same for one run folder or checkpoint).

Beside the tables of the test metric (one column and paired differences per baseline), the
report holds issue 14's discretization-gap table (the AdAct model against its own argmax), the
confidence of each choice (weak choices are marked in choices.md and the figures) and a line on
sharpening. The metric's words come from the summary (:func:`~adact.reporting.metric.metric_of_summary`):
accuracy reads as it always did, a loss says that lower is better.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adact.choice import WEAK_MARGIN, negative_prelu
from adact.config import SearchConfig
from adact.dataspec import DatasetSpec, printable
from adact.errors import UserError
from adact.paper import DEFAULT_CHANNELS, PAPER_TABLE1
from adact.reporting.analyze import PANELS
from adact.reporting.figures import plot_choice_trajectories, plot_heatmap, plot_trajectories, plot_weights
from adact.reporting.functions import plot_functions
from adact.reporting.metric import SELECTIONS, Metric, metric_of_summary
from adact.reporting.records import RunRecord, WeightHistory, collect, read_weight_history
from adact.reporting.stats import build_summary
from adact.reporting.tables import (
    fmt_acc,
    model_label,
    render_choices_md,
    render_gap_md,
    render_table_csv,
    render_table_md,
)
from adact.runs.folder import RunFolder
from adact.runs.io import atomic_write_json, atomic_write_text, folder_lock, remove_stale_temps
from adact.runs.manifest import load_manifest

__all__ = ["render", "rerender"]


def _histories(records: list[RunRecord], out: Path) -> tuple[dict[str, WeightHistory], list[str]]:
    """The weight history of every finished AdAct run (by run path), and what could not be read."""
    hists: dict[str, WeightHistory] = {}
    problems: list[str] = []
    for r in records:
        if r.model != "adact" or r.status != "done" or not r.mix:
            continue
        path = RunFolder(out / r.path).metrics
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


def _figures(cfg: SearchConfig, records: list[RunRecord], hists: dict[str, WeightHistory],
             out: Path) -> dict[str, dict[str, list[str]]]:
    figs: dict[str, dict[str, list[str]]] = {}
    for ds in cfg.datasets:
        spec = DatasetSpec.parse(ds)
        slug, name = spec.slug, spec.display
        runs = [r for r in records if r.dataset == ds and r.model == "adact" and r.status == "done" and r.mix]
        if not runs:
            continue
        cands = runs[0].candidates or []
        n = len(runs)
        seeds = ", ".join(str(r.seed) for r in runs)
        entry: dict[str, list[str]] = {}
        note = f"{_selection(cfg)} of seed{'s' if n > 1 else ''} {seeds}"
        if cfg.preset == "paper":  # the paper's figures: bars per layer
            paths = plot_weights(np.array([r.raw for r in runs]), np.array([r.mix for r in runs]), cands,
                                 f"{name}: AdAct weights per layer", out / "figures" / f"{slug}_weights", note=note,
                                 weak=_weak_flags(runs))
        else:  # any number of units: one heatmap row per unit
            paths = plot_heatmap(np.array([r.mix for r in runs]), runs[0].layer_paths or [], cands,
                                 f"{name}: AdAct softmax weights per unit", out / "figures" / f"{slug}_weights",
                                 note=note, weak=_weak_flags(runs))
        entry["weights"] = [str(p.relative_to(out)) for p in paths]
        paths = plot_functions([r.units or [] for r in runs], f"{name}: what each AdAct unit learned, over the inputs "
                               "it sees", out / "figures" / f"{slug}_functions", note=note,
                               labels=[f"seed {r.seed}" for r in runs])
        entry["functions"] = [str(p.relative_to(out)) for p in paths]
        found = [hists[r.path] for r in runs if r.path in hists]
        step = "evaluation" if cfg.train.is_text else "epoch"
        if found:
            if cfg.preset == "paper" or len(found[0].paths) <= PANELS:
                paths = plot_trajectories([h.mix for h in found], [h.epochs for h in found], found[0].candidates,
                                          f"{name}: AdAct softmax weights during training",
                                          out / "figures" / f"{slug}_trajectories",
                                          unit_names=None if cfg.preset == "paper" else found[0].paths, step=step)
            else:  # a panel per unit is unreadable (and slow to draw) for a ResNet's 17 or 50 units
                paths = plot_choice_trajectories([h.mix for h in found], [h.epochs for h in found],
                                                 found[0].candidates, found[0].paths,
                                                 f"{name}: how each unit's choice emerged during training",
                                                 out / "figures" / f"{slug}_trajectories", step=step)
            entry["trajectories"] = [str(p.relative_to(out)) for p in paths]
        figs[ds] = entry
    return figs


def _weak_flags(runs: list[RunRecord]) -> np.ndarray | None:
    """``(seeds, layers)`` weak flags of the runs, or None when a run has no confidences."""
    if not all(r.confidence and r.mix and len(r.confidence) == len(r.mix) for r in runs):
        return None
    return np.array([[bool(c["weak"]) for c in r.confidence or []] for r in runs])


def rerender(out: str | Path) -> dict[str, Any]:
    """:func:`render` for ``adact analyze OUT``: under the folder's lock, after removing stale temp files."""
    out = Path(out)
    load_manifest(out)  # not an output folder: fail before the lock file is made
    with folder_lock(out):
        remove_stale_temps(out)
        remove_stale_temps(out / "figures")
        return render(out)


def render(out: str | Path) -> dict[str, Any]:
    """(Re)write the table (.md/.csv), choices.md/.json, figures, report.md and results.json from the runs.

    Every run folder is read, and every text composed, before the first file is written, so a
    damaged run folder cannot leave table1.md rewritten and report.md not: it is reported in
    ``problems`` (and in report.md) instead.
    """
    out = Path(out)
    cfg, records = collect(out)
    hists, problems = _histories(records, out)
    problems = [f"{r.path}: {r.message}" for r in records if r.status == "damaged"] + problems
    preset, paper = cfg.spec, cfg.preset == "paper"
    summary = build_summary(records, cfg.datasets, cfg.baselines, paper)
    metric = metric_of_summary(summary)
    tables = {m: render_table_md(summary, m) for m in SELECTIONS}
    tables["gap"] = render_gap_md(summary)
    choices = _choices_json(cfg, records)
    val_hint = "" if cfg.train.val_fraction > 0 else _no_val_hint(cfg)
    described = metric.described[0].upper() + metric.described[1:]
    title = "Table 1" if paper else described
    heading = f"Table 1: {metric.described}" if paper else described
    budget = (f"{cfg.train.max_iters} steps ({cfg.train.epochs} evaluations)" if cfg.train.is_text
              else f"{cfg.train.epochs} epochs")
    table1_md = (f"# {heading} over seeds {cfg.seeds}, {budget}\n\n"
                 + "".join(f"## {metric.selection_title(m).capitalize()}\n\n{tables[m]}\n"
                           + (val_hint if m == "val" else "") for m in SELECTIONS)
                 + f"## {_GAP_TITLE}\n\n{tables['gap']}\n{_gap_notes(cfg, metric)}\n"
                 + _table_notes(cfg, metric))
    choices_md = ("# Chosen activations per layer\n\n"
                  + render_choices_md(records, cfg.datasets, cfg.baselines, _selection(cfg)))
    table_text = printable(f"{title} -- " + metric.selection_title("best") + "\n" + tables["best"] + "\n"
                           + _GAP_TITLE + "\n" + tables["gap"] + _weak_lines(records) + _status_lines(records))

    figures = _figures(cfg, records, hists, out)
    # Text files are for reading: a path's undecodable bytes are written as \xNN escapes (JSON escapes its own).
    atomic_write_text(out / f"{preset.table}.md", printable(table1_md))
    atomic_write_text(out / f"{preset.table}.csv", printable(render_table_csv(summary)))
    atomic_write_text(out / "choices.md", printable(choices_md))
    atomic_write_json(out / "choices.json", choices)
    atomic_write_text(out / "report.md", printable(_report(cfg, records, tables, choices_md, figures, problems, metric)))
    results = {
        "format": "adact-results-2",  # 2: diffs per baseline (diffs[model][baseline][metric]), gap, confidence
        "settings": asdict(cfg),
        "environment": {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "paper_table1": PAPER_TABLE1 if paper else None,
        "summary": summary,
        "choices": choices,
        "runs": [r.to_json() for r in records],
        "figures": figures,
        "problems": problems,
        "data": _data_records(cfg),
        "files": [f"{preset.table}.md", f"{preset.table}.csv", "choices.md", "choices.json", "report.md",
                  "results.json"],
        "table_text": table_text,
    }
    atomic_write_json(out / "results.json", results)
    return results


def _data_records(cfg: SearchConfig) -> dict[str, Any]:
    """Per dataset, what its runs trained on (classes, counts, skipped images and their files, the
    content hash; :func:`adact.data.fingerprint.data_record`), from the first run folder that has it."""
    def record(ds: str) -> dict[str, Any] | None:
        for seed in cfg.seeds:
            for model in cfg.models:
                try:
                    found = RunFolder(cfg.run_dir(ds, seed, model)).read_data()
                except UserError:  # a damaged data.json: the run's own record reports it
                    continue
                if found is not None:
                    return found
        return None

    return {ds: rec for ds in cfg.datasets if (rec := record(ds)) is not None}


def _no_val_hint(cfg: SearchConfig) -> str:
    return (f"No validation split in these runs, so this table is empty: run `{cfg.spec.command}` again with "
            "`--val-fraction 0.1` (into a new `--out` folder) to fill it.\n\n")


def _selection(cfg: SearchConfig) -> str:
    """Which epoch the choices come from, in words."""
    if cfg.spec.val_choices and cfg.train.val_fraction > 0:
        return "validation-selected epoch"
    return "best checkpoint"


def _choices_json(cfg: SearchConfig, records: list[RunRecord]) -> dict[str, Any]:
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


_PAPER_NOTES = """\
Cells: mean ± sample sd over seeds (n = finished runs); runs that diverged, were skipped or are
incomplete are counted beside the cell and left out of the mean. Differences are paired by seed:
mean of (model − baseline) with a 95% paired t interval (n = 1: no interval). "paper" is the paper's
Table 1, which is best-on-test.

Best-on-test picks the epoch by its test accuracy, so it is optimistic: the test set is used for
model selection. Final-epoch uses no selection; validation-selected picks the epoch on a held-out
part of the training set (`--val-fraction`) and is the honest estimate.
"""


def _table_notes(cfg: SearchConfig, metric: Metric) -> str:
    notes = _PAPER_NOTES
    if not metric.is_acc:  # "best" is the lowest value of a loss; the sign that is good follows the direction
        best = ("each run's best test evaluation (the highest accuracy, the lowest loss)" if metric.is_mixed
                else f"the evaluation with the {metric.extreme} test {metric.noun}")
        notes = notes.replace("Best-on-test picks the epoch by its test accuracy, so it is optimistic",
                              f"Best-on-test picks {best}, so it is optimistic") + "\n" + metric.direction_note
    if cfg.preset == "paper":
        return notes
    return notes.replace('"paper" is the paper\'s\nTable 1, which is best-on-test.', "Baseline is the model as written.")


_GAP_TITLE = "Discretization gap: the AdAct model against its own argmax"

_GAP_NOTES = """\
Mixture: the AdAct model's best-on-test accuracy. Argmax: that same checkpoint with every unit
replaced by its chosen activation (learned PReLU slopes kept), no retraining, BatchNorm statistics
recomputed on training batches. A gap near 0 means the choices carry what the mixture learned; a
large negative one means the mixture is not the model we keep. Optimized − argmax is what
retraining from scratch (the paper's Optimized) adds over the free argmax model. Runs trained
before the gap was recorded have none and are not counted.
"""


# Kept so that "(the paper's Optimized)" sits on one line: _gap_notes replaces it for adact search.
_LOSS_GAP_NOTES = """\
Mixture: the AdAct model's best-on-test held-out loss (nats/token; lower is better). Argmax: that
same checkpoint with every unit replaced by its chosen activation (learned PReLU slopes kept), no
retraining. Differences are in loss units: a gap near 0 means the choices carry what the mixture
learned; a large positive one (the argmax model's loss is higher, so it is worse) means the
mixture is not the model we keep. Optimized − argmax is what retraining from scratch
(the paper's Optimized) changes over the free argmax model: negative means retraining lowered
the loss. Runs trained before the gap was recorded have none and are not counted.
"""


def _gap_notes(cfg: SearchConfig, metric: Metric) -> str:
    notes = _LOSS_GAP_NOTES if metric.is_loss else _GAP_NOTES
    if metric.is_mixed:
        notes += ("For a loss the signs read the other way: a positive argmax − mixture means the argmax model is "
                  "worse.\n")
    return notes if cfg.preset == "paper" else notes.replace("(the paper's Optimized)", "(the optimized model)")


def _weak_lines(records: list[RunRecord]) -> str:
    """One line per dataset with weak choices: how many of its layer choices have margin < WEAK_MARGIN."""
    lines = []
    for ds in dict.fromkeys(r.dataset for r in records):
        confs = [c for r in records if r.dataset == ds and r.model == "adact" and r.confidence for c in r.confidence]
        weak = sum(bool(c["weak"]) for c in confs)
        neg = sum(negative_prelu(c) for c in confs)
        if confs:
            lines.append(f"{ds}: {weak} of {len(confs)} layer choices are weak (margin to the runner-up < "
                         f"{WEAK_MARGIN:g}); see choices.md\n")
        if neg:
            lines.append(f"{ds}: {neg} of {len(confs)} layer choices are PReLU with a negative learned slope "
                         f"(V-shaped at the argmax, where the discretization gap comes from); see choices.md\n")
    return "".join(lines)


def _status_lines(records: list[RunRecord]) -> str:
    bad = [r for r in records if r.status != "done"]
    return "".join(f"  {r.dataset} seed {r.seed} {model_label(r.model)}: {r.status}"
                   + (f" -- {r.message}" if r.message else "") + "\n" for r in bad)


def _sharpening_line(cfg: SearchConfig) -> str:
    t = cfg.train
    parts = []
    if t.temperature_schedule:
        t0, t1 = t.temperature_schedule
        parts.append(f"softmax temperature annealed {t0:g} → {t1:g}")
    if t.entropy_weight:
        parts.append(f"entropy penalty λ = {t.entropy_weight:g}")
    if t.adact_lr_mult != 1.0:
        parts.append(f"AdAct logits at {t.adact_lr_mult:g} × the learning rate")
    start = ""
    if t.init_from:
        start += f" Every model started from the weights in `{t.init_from}` (`--init-from`)."
    if t.warm_start:
        start += (" Warm start: each AdAct unit started as the activation it replaces, through a gate that starts "
                  "closed (`--warm-start`); its weights are the gated ones, and the activations that were added "
                  "to the pool are in choices.json.")
    if not parts:
        return "Sharpening: none (the paper's AdAct)." + start
    return "Sharpening of the AdAct runs (not in the paper): " + "; ".join(parts) + "." + start


def _text_head(cfg: SearchConfig) -> list[str]:
    """The settings lines of a language-model search: the model's shape, the budget in steps, the schedule."""
    t = cfg.train
    shape = (f"{t.n_layer} layers, {t.n_head} heads, {t.n_embd}-dim embeddings, dropout {t.dropout:g}, "
             f"MLP activation as written `{t.gpt_activation}`" if t.model == "gpt"
             else f"config `{t.model_config or 'default'}`")
    pool = ", ".join(t.candidates or [])
    return [f"Model `{t.model}` ({shape}); datasets {', '.join(f'`{d}`' for d in cfg.datasets)} ({t.tokenizer} "
            f"tokens, blocks of {t.block_size}); seeds {cfg.seeds}; {t.max_iters} steps, the held-out loss "
            f"evaluated every {t.eval_interval}; AdAct granularity `{t.granularity}`, pool {pool}; validation "
            f"fraction {t.val_fraction}.",
            "",
            f"Training: {t.optimizer} (betas {tuple(t.betas or (0.9, 0.999))}), lr {t.lr:g} with {t.warmup_iters} "
            f"warm-up steps and {t.schedule} decay to {t.min_lr:g}, weight decay {t.weight_decay:g}"
            + (" on 2-D weights only" if t.decay_1d is False else "")
            + (f", gradient norm clipped at {t.grad_clip:g}" if t.grad_clip else "")
            + f", batch {t.batch_size} blocks" + (", bf16" if t.bf16 else "") + "."]


def _report(cfg: SearchConfig, records: list[RunRecord], tables: dict[str, str], choices_md: str,
            figures: dict[str, dict[str, list[str]]], problems: list[str], metric: Metric) -> str:
    t, paper, table, noun = cfg.train, cfg.preset == "paper", cfg.spec.table, metric.noun
    if paper:
        head = [
            "# AdAct reproduction report",
            "",
            f"Datasets: {', '.join(f'`{d}`' for d in cfg.datasets)}; seeds {cfg.seeds}; {t.epochs} epochs; "
            f"AdAct granularity `{t.granularity}`; channels "
            f"{t.channels if list(t.channels) != list(DEFAULT_CHANNELS) else 'default (32, 64, 128, 256)'}; "
            f"validation fraction {t.val_fraction}"
            + (f"; training subsampled to {t.max_train_samples} images" if t.max_train_samples else "") + ".",
            "",
            "Protocol (the paper's): per dataset and seed, train ConvNet-AdAct; read each layer's dominant "
            "activation (largest softmax weight) from its best checkpoint; train "
            + ", ".join(f"ConvNet-{model_label(b)}" for b in cfg.baselines) + " (one activation everywhere) and "
            "ConvNet-Optimized (layer i uses choice i) from scratch with the same seed. AdamW, lr 1e-3, "
            f"batch 64, test {noun} after every epoch.",
        ]
    else:
        head = [
            f"# {cfg.spec.title}",
            "",
            *(_text_head(cfg) if t.is_text else [
                f"Model `{t.model}`{' (pretrained)' if t.pretrained else ''}; datasets "
                f"{', '.join(f'`{d}`' for d in cfg.datasets)}; seeds {cfg.seeds}; {t.epochs} epochs"
                + (f"; images resized to {t.image_size}x{t.image_size}" if t.image_size else "")
                + f"; AdAct granularity `{t.granularity}`; validation fraction {t.val_fraction}"
                + (f"; training subsampled to {t.max_train_samples} images" if t.max_train_samples else "") + ".",
                "",
                f"Training: {t.optimizer}, lr {t.lr:g}, weight decay {t.weight_decay:g}, schedule {t.schedule}"
                + (f" after {t.warmup_epochs:g} warm-up epochs" if t.warmup_epochs else "")
                + f", label smoothing {t.label_smoothing:g}, batch {t.batch_size}, normalization {t.normalize}"
                + (", bf16" if t.bf16 else "") + "."]),
            "",
            "Protocol: per dataset and seed, train the model with an AdAct unit at every activation "
            f"(`adactify`); read each unit's dominant activation (largest softmax weight) at its {_selection(cfg)}; "
            "then train from scratch, with the same seed, the optimized model (each unit fixed to its choice) "
            "and the baseline (the model as written, with its own activations)"
            + "".join(f", {model_label(b)} everywhere" for b in cfg.baselines[1:]) + ".",
        ]
    lines = head + [
        "",
        _sharpening_line(cfg),
        "",
        f"Files: [{table}.md]({table}.md), [{table}.csv]({table}.csv), [choices.md](choices.md), "
        "[choices.json](choices.json), [results.json](results.json).",
        "",
        f"## Table 1: best-on-test {noun} (the paper's number)" if paper else f"## Best-on-test {noun}"
        + (f" (the {metric.extreme} test {metric.name} over the evaluations; {metric.unit})" if metric.unit else ""),
        "",
        tables["best"],
        "This selection uses the test set to pick the epoch and is optimistic; the two tables below do not.",
        "",
        f"## Final-epoch {noun}",
        "",
        tables["final"],
        f"## Validation-selected {noun}",
        "",
    ]
    if t.val_fraction > 0:
        lines += [tables["val"]]
    else:
        lines += [_no_val_hint(cfg).strip(), ""]
    lines += [f"## {_GAP_TITLE}", "", tables["gap"], _gap_notes(cfg, metric)]
    lines += ["## Chosen activations", ""]
    lines += [("\n" + choices_md.split("\n", 2)[2]).replace("\n## ", "\n### ").strip(), ""]
    lines += ["## Figures", "",
              "Per dataset, the AdAct weights of each layer at the best checkpoint (raw logits and softmax "
              "weights, as in the paper's Figures 1-4; every activation has the same colour in every figure), "
              "and the softmax weights over the epochs." if paper else
              f"Per dataset, the softmax weights of every unit at the {_selection(cfg)} (one heatmap row per unit, "
              "mean over seeds; the box marks the most common choice), and the softmax weights over the epochs.",
              "", "The functions figure draws each unit's learned mixture (one line per seed) over the range of its "
              "inputs, its chosen activation dashed, the other candidates faintly, and the histogram of its inputs "
              "below; its number is the mean |mixture − chosen| over those inputs (see choices.md).", ""]
    if not figures:
        lines += ["No finished AdAct run, so no figures.", ""]
    for ds, entry in figures.items():
        lines += [f"### `{ds}`", ""]
        for kind, caption in (("weights", "weights per layer"), ("functions", "learned functions over their inputs"),
                              ("trajectories", "softmax weights over epochs")):
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
        m = Metric.of(res)
        best = fmt_acc(res.get(m.key("best")))
        if (ppl := res.get("best_test_ppl", m.ppl(res.get(m.key("best"))))) is not None:
            best += f" (ppl {ppl:.2f})"
        lines.append(f"| `{r.dataset}` | {r.seed} | {model_label(r.model)} | {r.status} | "
                     f"{best} | {fmt_acc(res.get(m.key('final')))} | "
                     f"{'—' if gap is None else format(gap['gap'], '+.4f').replace('-', '−')} | "
                     f"{res.get('epochs_run', '—')} | {wall} | [{r.path}]({r.path}) |")
    if not metric.is_acc:
        lines += ["", "Best, final: each run's " + ("test metric (its dataset's: accuracy, or a loss in nats/token "
                  "with its perplexity)" if metric.is_mixed else f"{metric.described}; best is the "
                  f"{metric.extreme} over the evaluations")
                  + (", with its perplexity exp(loss)." if metric.is_loss else ".")]
    notes = [r for r in records if r.status != "done"]
    if notes:
        lines += ["", "### Runs that did not finish", ""]
        lines += [f"- `{r.dataset}` seed {r.seed} {model_label(r.model)}: **{r.status}**"
                  + (f" — {r.message}" if r.message else "") for r in notes]
    if problems:
        lines += ["", "### Damaged or missing files", ""] + [f"- {p}" for p in problems]
    reproducible = ("- On a CPU a run is bit-reproducible for a fixed number of torch threads; `--jobs` sets "
                    "cores // jobs threads per run, so changing it changes float rounding and the last digits.")
    if paper:
        lines += ["", "## Notes", "",
                  f"- Choices come from the AdAct run's best checkpoint (the epoch whose {noun} Table 1 "
                  "reports); the final model's choices are in each run's result.json (`dominant`).",
                  reproducible,
                  "- The ConvNet's layer sizes are not in the paper's text; ours are an assumption "
                  "(see `adact.models`).",
                  "- The paper has no `digits` row: it is scikit-learn's bundled 8x8 digits upsampled to 16x16, "
                  "the offline smoke test of this pipeline.", ""]
    else:
        lines += ["", "## Notes", "",
                  f"- Choices come from the AdAct run's {_selection(cfg)}; the final model's choices are in each "
                  "run's result.json (`dominant`).",
                  reproducible, ""]
    return "\n".join(lines)
