"""Print the tables of docs/RESULTS.md from the run folders, so that no number there is copied by hand.

Usage (from the repository root)::

    python docs/results/tables.py docs/results/table1-fmnist docs/results/table1-cifar10 \
        docs/results/table1-fer --sharp docs/results/table1-cifar10-sharp \
        --gap-runs docs/results/gap-cifar10/seed0 docs/results/gap-cifar10/seed1

Each positional folder is an ``adact reproduce`` output folder (one dataset each here). ``--sharp``
names a folder trained with a sharpening option; it is compared with the positional folder of the
same dataset, paired by seed. Every interval is a 95% paired t interval over the seeds both sides
have; ``n`` says how many.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adact.dataspec import DatasetSpec
from adact.paper import PAPER_TABLE1
from adact.reporting.records import RunRecord, collect
from adact.reporting.stats import build_summary, consensus, gap_summary, paired_diff
from adact.reporting.tables import fmt_cell, fmt_diff, fmt_signed, model_label
from adact.runs.io import read_json

NAMES = {"fmnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "fer2013": "FER2013", "svhn": "SVHN"}
SELECTIONS = {"best": "best-on-test", "val": "validation-selected", "final": "final epoch"}


def _name(ds: str) -> str:
    return NAMES.get(DatasetSpec.parse(ds).paper_key or "", ds)


Loaded = tuple[Any, list[RunRecord], dict[str, Any], str]  # settings, runs, summary, folder


def load(folder: str) -> Loaded:
    """Read a reproduce folder once: its settings, run records and summary (and the folder)."""
    cfg, records = collect(folder)
    return cfg, records, build_summary(records, cfg.datasets, cfg.baselines or ["relu"]), folder


def accuracy_table(loaded: Sequence[Loaded]) -> str:
    """Per dataset and selection: every model's mean ± sd, the paper's row first."""
    models = ["adact", "relu", "mish", "optimized"]
    head = ["Dataset", "Selection"] + [model_label(m) for m in models]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for cfg, _, summary, _ in loaded:
        for ds, entry in summary.items():
            paper = PAPER_TABLE1.get(DatasetSpec.parse(ds).paper_key or "")
            if paper:
                lines.append(f"| {_name(ds)} | **paper** (best-on-test, one run) | "
                             + " | ".join(f"{paper[m]:.3f}" if m in paper else "—" for m in models) + " |")
            for metric in ("best", "val", "final"):
                cells = [fmt_cell(entry["models"][m][metric]) if m in entry["models"] else "not run" for m in models]
                first = "" if paper else _name(ds)
                lines.append(f"| {first} | ours, {SELECTIONS[metric]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(loaded: Sequence[Loaded]) -> str:
    """Best-on-test / validation-selected accuracy of every run."""
    models = ["adact", "relu", "mish", "optimized"]
    head = ["Dataset", "seed"] + [model_label(m) for m in models]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for cfg, records, _, _ in loaded:
        for ds in cfg.datasets:
            for i, seed in enumerate(cfg.seeds):
                cells = []
                for m in models:
                    r = next((r for r in records if r.dataset == ds and r.seed == seed and r.model == m), None)
                    if r is None or r.status != "done":
                        cells.append(r.status if r else "—")
                    else:
                        cells.append(f"{r.value('best'):.4f} / {r.value('val'):.4f}")
                lines.append(f"| {_name(ds) if i == 0 else ''} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(loaded: Sequence[Loaded], metric: str) -> str:
    """Paired differences of AdAct and Optimized to each baseline, and Optimized − AdAct."""
    pairs = [("optimized", "relu"), ("optimized", "mish"), ("adact", "relu"), ("adact", "mish"),
             ("mish", "relu"), ("optimized", "adact")]
    head = ["Dataset"] + [f"{model_label(a)} − {model_label(b)}" for a, b in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for cfg, records, _, _ in loaded:
        for ds in cfg.datasets:
            vals = {m: {r.seed: v for r in records if r.dataset == ds and r.model == m
                        and (v := r.value(metric)) is not None} for m in ("adact", "relu", "mish", "optimized")}
            lines.append(f"| {_name(ds)} | " + " | ".join(fmt_diff(paired_diff(vals[a], vals[b]).to_json())
                                                         for a, b in pairs) + " |")
    return "\n".join(lines)


def _confidence_rows(ds_name: str, adact: list[RunRecord], label: str = "") -> list[str]:
    done = [r for r in adact if r.choices and r.mix is not None and r.confidence]
    if not done:
        return [f"| {ds_name} | {label}— | no finished AdAct run | | | | | |"]
    n_layers = len(done[0].choices or [])
    cons = consensus(np.array([r.mix for r in done]), done[0].candidates or [])
    rows = []
    for i in range(n_layers):
        top = np.array([r.confidence[i]["top"] for r in done])  # type: ignore[index]
        margin = np.array([r.confidence[i]["margin"] for r in done])  # type: ignore[index]
        entropy = np.array([r.confidence[i]["entropy"] for r in done])  # type: ignore[index]
        weak = sum(bool(r.confidence[i]["weak"]) for r in done)  # type: ignore[index]
        seeds = ", ".join((r.choices or [])[i] for r in done)
        rows.append(f"| {ds_name if i == 0 else ''} | {label}{i + 1} | {cons[i][0]} ({cons[i][1]}/{cons[i][2]}) | "
                    f"{seeds} | {top.mean():.3f} | {margin.mean():.3f} (min {margin.min():.3f}) | "
                    f"{weak}/{len(done)} | {entropy.mean():.3f} |")
    return rows


def _labelled(loaded: Sequence[Loaded], sharp: Loaded | None, plain: str, sharpened: str) -> list[tuple[Loaded, str]]:
    return [*((f, plain) for f in loaded), *([(sharp, sharpened)] if sharp else [])]


def confidence_table(loaded: Sequence[Loaded], sharp: Loaded | None = None) -> str:
    head = ["Dataset", "layer", "most common choice", "choice per seed", "top weight", "margin, mean (min)",
            "weak", "entropy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for (cfg, records, _, _), label in _labelled(loaded, sharp, "", ", sharpened"):
        for ds in cfg.datasets:
            lines += _confidence_rows(f"{_name(ds)}{label}", [r for r in records if r.dataset == ds
                                                              and r.model == "adact"])
    return "\n".join(lines)


def gap_run(folder: str) -> RunRecord:
    """An ``adact train`` AdAct run folder kept for its discretization gap (a seed retrained for it)."""
    r = read_json(Path(folder) / "result.json")
    if not isinstance(r, dict) or not r.get("discretization_gap"):
        raise ValueError(f"{folder}: result.json has no discretization gap")
    return RunRecord(r["dataset"], "", int(r["seed"]), "adact", "done", path=folder, result=r,
                     choices=r["best_weights"]["choices"], confidence=r["best_weights"].get("confidence"))


def _per_seed_gaps(adact: Sequence[RunRecord]) -> str:
    gaps = {r.seed: g for r in adact if (g := r.gap()) is not None}
    return ", ".join(f"{s}: {fmt_signed(g['argmax_acc'] - g['mixture_acc'])}" for s, g in sorted(gaps.items())) or "—"


def gap_table(loaded: Sequence[Loaded], sharp: Loaded | None = None, gap_runs: Sequence[RunRecord] = ()) -> str:
    """Mixture and argmax accuracy per folder; with ``gap_runs``, also each dataset's gaps with the
    seeds retrained for it added (those have no Optimized run of the same training)."""
    head = ["Dataset", "mixture (AdAct)", "argmax, no retraining", "argmax − mixture", "Optimized − argmax",
            "gap per seed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for (_, records, summary, _), label in _labelled(loaded, sharp, "", ", sharpened"):
        for ds, entry in summary.items():
            g = entry["gap"]
            adact = [r for r in records if r.dataset == ds and r.model == "adact" and r.gap()]
            lines.append(f"| {_name(ds)}{label} | {fmt_cell(g['mixture'])} | {fmt_cell(g['argmax'])} | "
                         f"{fmt_diff(g['argmax_minus_mixture'])} | {fmt_diff(g['optimized_minus_argmax'])} | "
                         f"{_per_seed_gaps(adact)} |")
            have = {r.seed for r in adact}
            more = [r for r in gap_runs if r.dataset == ds and r.seed not in have] if not label else []
            if more:
                both = gap_summary([*adact, *more], {})
                lines.append(f"| {_name(ds)}, with seeds {', '.join(str(r.seed) for r in more)} retrained for the "
                             f"gap | {fmt_cell(both['mixture'])} | {fmt_cell(both['argmax'])} | "
                             f"{fmt_diff(both['argmax_minus_mixture'])} | — | {_per_seed_gaps([*adact, *more])} |")
    return "\n".join(lines)


def _slopes(r: RunRecord) -> list[float | None]:
    """Each unit's learned PReLU slope at the best epoch (the run's recorded confidences)."""
    return [c.get("prelu_slope") for c in r.confidence or []]


def _choices_with_slopes(r: RunRecord) -> str:
    """Choices of a run, each PReLU with the learned slope it keeps in the argmax model."""
    slopes = _slopes(r) or [None] * len(r.choices or [])
    return ", ".join(f"{c} ({fmt_signed(s, 2)})" if c == "prelu" and s is not None else c
                     for c, s in zip(r.choices or [], slopes))


def slope_table(loaded: Sequence[Loaded], sharp: Loaded | None = None, gap_runs: Sequence[RunRecord] = ()) -> str:
    """Per dataset and layer: the range of the PReLU slope learned inside the mixture, and how often it is negative."""
    groups: list[tuple[str, list[RunRecord]]] = []
    for (cfg, records, _, _), label in _labelled(loaded, sharp, "", ", sharpened"):
        for ds in cfg.datasets:
            runs = [r for r in records if r.dataset == ds and r.model == "adact"]
            if not label:
                runs += [r for r in gap_runs if r.dataset == ds]
            groups.append((f"{_name(ds)}{label}", runs))
    n_layers = max((len(_slopes(r)) for _, runs in groups for r in runs), default=0)
    head = ["Dataset", "runs"] + [f"layer {i + 1}" for i in range(n_layers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for name, runs in groups:
        known = [sl for r in runs if len(sl := _slopes(r)) == n_layers and all(x is not None for x in sl)]
        if not known:
            lines.append(f"| {name} | 0 | " + " | ".join(["—"] * n_layers) + " |")
            continue
        cells = []
        for i in range(n_layers):
            v = [float(sl[i]) for sl in known]  # type: ignore[arg-type]
            cells.append(f"{fmt_signed(min(v), 2)} to {fmt_signed(max(v), 2)} ({sum(x < 0 for x in v)}/{len(v)} < 0)")
        lines.append(f"| {name} | {len(known)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gap_detail_table(loaded: Sequence[Loaded], sharp: Loaded | None = None,
                     gap_runs: Sequence[RunRecord] = ()) -> str:
    """Every AdAct run with a gap: its choices (a PReLU with its learned slope), mixture, argmax, gap."""
    lines = ["| Dataset | run | seed | choices at the best epoch (PReLU: learned slope) | mixture | argmax | gap |",
             "|---|---|---|---|---|---|---|"]
    runs = [(r, label) for (_, records, _, _), label in _labelled(loaded, sharp, "reproduce", "sharpened")
            for r in records if r.model == "adact"]
    runs += [(r, "retrained for the gap") for r in gap_runs]
    for r, label in runs:
        if (g := r.gap()) is not None:
            lines.append(f"| {_name(r.dataset)} | {label} | {r.seed} | {_choices_with_slopes(r)} | "
                         f"{g['mixture_acc']:.4f} | {g['argmax_acc']:.4f} | "
                         f"{fmt_signed(g['argmax_acc'] - g['mixture_acc'])} |")
    return "\n".join(lines)


def sharpening_table(plain: Loaded, sharp: Loaded) -> str:
    """The sharpened AdAct and its Optimized model against the plain ones, paired by seed."""
    prec, (cfg, srec, _, _) = plain[1], sharp
    lines = ["| Dataset | selection | model | plain | sharpened | sharpened − plain |", "|---|---|---|---|---|---|"]
    for ds in cfg.datasets:
        for metric in ("best", "val"):
            for m in ("adact", "optimized"):
                a = {r.seed: v for r in srec if r.dataset == ds and r.model == m and (v := r.value(metric)) is not None}
                b = {r.seed: v for r in prec if r.dataset == ds and r.model == m and (v := r.value(metric)) is not None
                     and r.seed in a}
                mean = lambda d: f"{np.mean(list(d.values())):.4f} (n={len(d)})" if d else "—"  # noqa: E731
                lines.append(f"| {_name(ds)} | {SELECTIONS[metric]} | {model_label(m)} | {mean(b)} | {mean(a)} | "
                             f"{fmt_diff(paired_diff(a, b).to_json())} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="adact reproduce output folders")
    p.add_argument("--sharp", help="a sharpened run folder, compared with the positional folder of its dataset")
    p.add_argument("--gap-runs", nargs="+", default=[], metavar="RUN",
                   help="adact train AdAct run folders that retrained a seed whose published run kept no checkpoint, "
                        "for its discretization gap")
    args = p.parse_args(argv)
    for f in [*args.folders, *([args.sharp] if args.sharp else []), *args.gap_runs]:
        if not Path(f).is_dir():
            p.error(f"{f} is not a folder")
    loaded = [load(f) for f in args.folders]  # each folder is read once
    sharp = load(args.sharp) if args.sharp else None
    extra = [gap_run(f) for f in args.gap_runs]
    out = ["## Accuracy", accuracy_table(loaded), "## Per seed (best-on-test / validation-selected)",
           per_seed_table(loaded)]
    for metric in ("best", "val"):
        out += [f"## Paired differences, {SELECTIONS[metric]}", paired_table(loaded, metric)]
    out += ["## Confidence", confidence_table(loaded, sharp), "## Discretization gap", gap_table(loaded, sharp, extra),
            "## Discretization gap per run", gap_detail_table(loaded, sharp, extra),
            "## PReLU slope inside the mixture", slope_table(loaded, sharp, extra)]
    if sharp:
        plain = next((f for f in loaded if set(f[0].datasets) & set(sharp[0].datasets)), None)
        if plain:
            out += ["## Sharpening", sharpening_table(plain, sharp)]
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
