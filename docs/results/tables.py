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

from adact.analysis import (PAPER_TABLE1, RunRecord, build_summary, consensus, model_label, paired_diff,
                            paper_key, summarize)
from adact.io import read_json
from adact.search import collect

NAMES = {"fmnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "fer2013": "FER2013", "svhn": "SVHN"}
SELECTIONS = {"best": "best-on-test", "val": "validation-selected", "final": "final epoch"}


def _name(ds: str) -> str:
    return NAMES.get(paper_key(ds) or "", ds)


def _sign(x: float) -> str:
    return f"{x:+.4f}".replace("-", "−")


def _diff(d: dict[str, Any], digits: int = 4) -> str:
    if d["n"] == 0:
        return "—"
    if d["ci_low"] is None:
        return f"{_sign(d['mean'])} (n=1)"
    return f"{_sign(d['mean'])} [{_sign(d['ci_low'])}, {_sign(d['ci_high'])}] (n={d['n']})"


def _cell(s: dict[str, Any]) -> str:
    if s["n"] == 0:
        return "—"
    sd = f" ± {s['std']:.4f}" if s["std"] is not None else ""
    return f"{s['mean']:.4f}{sd} (n={s['n']})"


def load(folder: str) -> tuple[Any, list[RunRecord], dict[str, Any]]:
    cfg, records = collect(folder)
    return cfg, records, build_summary(records, cfg.datasets, cfg.baselines or ["relu"])


def accuracy_table(folders: Sequence[str]) -> str:
    """Per dataset and selection: every model's mean ± sd, the paper's row first."""
    loaded = [load(f) for f in folders]
    models = ["adact", "relu", "mish", "optimized"]
    head = ["Dataset", "Selection"] + [model_label(m) for m in models]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for cfg, _, summary in loaded:
        for ds, entry in summary.items():
            paper = PAPER_TABLE1.get(paper_key(ds) or "")
            if paper:
                lines.append(f"| {_name(ds)} | **paper** (best-on-test, one run) | "
                             + " | ".join(f"{paper[m]:.3f}" if m in paper else "—" for m in models) + " |")
            for metric in ("best", "val", "final"):
                cells = [_cell(entry["models"][m][metric]) if m in entry["models"] else "not run" for m in models]
                first = "" if paper else _name(ds)
                lines.append(f"| {first} | ours, {SELECTIONS[metric]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(folders: Sequence[str]) -> str:
    """Best-on-test / validation-selected accuracy of every run."""
    models = ["adact", "relu", "mish", "optimized"]
    head = ["Dataset", "seed"] + [model_label(m) for m in models]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for folder in folders:
        cfg, records, _ = load(folder)
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


def paired_table(folders: Sequence[str], metric: str) -> str:
    """Paired differences of AdAct and Optimized to each baseline, and Optimized − AdAct."""
    pairs = [("optimized", "relu"), ("optimized", "mish"), ("adact", "relu"), ("adact", "mish"),
             ("mish", "relu"), ("optimized", "adact")]
    head = ["Dataset"] + [f"{model_label(a)} − {model_label(b)}" for a, b in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for folder in folders:
        cfg, records, _ = load(folder)
        for ds in cfg.datasets:
            vals = {m: {r.seed: v for r in records if r.dataset == ds and r.model == m
                        and (v := r.value(metric)) is not None} for m in ("adact", "relu", "mish", "optimized")}
            lines.append(f"| {_name(ds)} | " + " | ".join(_diff(paired_diff(vals[a], vals[b]).to_json())
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


def confidence_table(folders: Sequence[str], sharp: str | None = None) -> str:
    head = ["Dataset", "layer", "most common choice", "choice per seed", "top weight", "margin, mean (min)",
            "weak", "entropy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for folder in folders:
        cfg, records, _ = load(folder)
        for ds in cfg.datasets:
            lines += _confidence_rows(_name(ds), [r for r in records if r.dataset == ds and r.model == "adact"])
    if sharp:
        cfg, records, _ = load(sharp)
        for ds in cfg.datasets:
            lines += _confidence_rows(f"{_name(ds)}, sharpened", [r for r in records if r.dataset == ds
                                                                  and r.model == "adact"])
    return "\n".join(lines)


def gap_table(folders: Sequence[str], sharp: str | None = None, gap_runs: Sequence[str] = ()) -> str:
    """Mixture and argmax accuracy per folder; with ``gap_runs``, also each dataset's gaps with the
    seeds retrained for it added (those have no Optimized run of the same training)."""
    head = ["Dataset", "mixture (AdAct)", "argmax, no retraining", "argmax − mixture", "Optimized − argmax",
            "gap per seed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    extra = [_gap_run(f) for f in gap_runs]
    for folder, label in [*[(f, "") for f in folders], *([(sharp, ", sharpened")] if sharp else [])]:
        cfg, records, summary = load(folder)
        for ds, entry in summary.items():
            g = entry["gap"]
            gaps = {r.seed: r.gap() for r in records if r.dataset == ds and r.model == "adact" and r.gap()}
            per_seed = ", ".join(f"{s}: {_sign(v['argmax_acc'] - v['mixture_acc'])}"  # type: ignore[index]
                                 for s, v in gaps.items())
            lines.append(f"| {_name(ds)}{label} | {_cell(g['mixture'])} | {_cell(g['argmax'])} | "
                         f"{_diff(g['argmax_minus_mixture'])} | {_diff(g['optimized_minus_argmax'])} | "
                         f"{per_seed or '—'} |")
            more = {int(r["seed"]): r["discretization_gap"] for r in extra if r["dataset"] == ds
                    and int(r["seed"]) not in gaps} if not label else {}
            if more:
                both = {**gaps, **more}
                mix = {s: float(v["mixture_acc"]) for s, v in both.items()}
                arg = {s: float(v["argmax_acc"]) for s, v in both.items()}
                lines.append(f"| {_name(ds)}, with seeds {', '.join(map(str, sorted(more)))} retrained for the gap | "
                             f"{_cell(summarize(mix).to_json())} | {_cell(summarize(arg).to_json())} | "
                             f"{_diff(paired_diff(arg, mix).to_json())} | — | "
                             + ", ".join(f"{s}: {_sign(arg[s] - mix[s])}" for s in sorted(both)) + " |")
    return "\n".join(lines)


def _gap_run(folder: str) -> dict[str, Any]:
    """An ``adact train`` AdAct run folder kept for its discretization gap (a seed retrained for it)."""
    r = read_json(Path(folder) / "result.json")
    if not isinstance(r, dict) or not r.get("discretization_gap"):
        raise ValueError(f"{folder}: result.json has no discretization gap")
    return r


def _choices_with_slopes(run: Path, choices: Sequence[str]) -> str:
    """Choices of a run, each PReLU with the learned slope it keeps in the argmax model (choices.json)."""
    path = run / "choices.json"
    sites = read_json(path)["sites"] if path.is_file() else [{} for _ in choices]
    return ", ".join(f"{c} ({site['prelu_weight'][0]:+.2f})".replace("-", "−") if c == "prelu" and
                     site.get("prelu_weight") else c for c, site in zip(choices, sites))


def gap_detail_table(folders: Sequence[str], sharp: str | None = None, gap_runs: Sequence[str] = ()) -> str:
    """Every AdAct run with a gap: its choices (a PReLU with its learned slope), mixture, argmax, gap."""
    lines = ["| Dataset | run | seed | choices at the best epoch (PReLU: learned slope) | mixture | argmax | gap |",
             "|---|---|---|---|---|---|---|"]

    def row(ds: str, label: str, seed: int, run: Path, choices: Sequence[str], g: dict[str, Any]) -> str:
        return (f"| {_name(ds)} | {label} | {seed} | {_choices_with_slopes(run, choices)} | {g['mixture_acc']:.4f} | "
                f"{g['argmax_acc']:.4f} | {_sign(g['argmax_acc'] - g['mixture_acc'])} |")

    for folder, label in [*[(f, "reproduce") for f in folders], *([(sharp, "sharpened")] if sharp else [])]:
        _, records, _ = load(folder)
        for r in records:
            if r.model == "adact" and (g := r.gap()) is not None:
                lines.append(row(r.dataset, label, r.seed, Path(folder) / r.path, r.choices or [], g))
    for folder in gap_runs:
        r = _gap_run(folder)
        lines.append(row(r["dataset"], "retrained for the gap", int(r["seed"]), Path(folder),
                         r["best_weights"]["choices"], r["discretization_gap"]))
    return "\n".join(lines)


def sharpening_table(plain: str, sharp: str) -> str:
    """The sharpened AdAct and its Optimized model against the plain ones, paired by seed."""
    _, prec, _ = load(plain)
    cfg, srec, _ = load(sharp)
    lines = ["| Dataset | selection | model | plain | sharpened | sharpened − plain |", "|---|---|---|---|---|---|"]
    for ds in cfg.datasets:
        for metric in ("best", "val"):
            for m in ("adact", "optimized"):
                a = {r.seed: v for r in srec if r.dataset == ds and r.model == m and (v := r.value(metric)) is not None}
                b = {r.seed: v for r in prec if r.dataset == ds and r.model == m and (v := r.value(metric)) is not None
                     and r.seed in a}
                mean = lambda d: f"{np.mean(list(d.values())):.4f} (n={len(d)})" if d else "—"  # noqa: E731
                lines.append(f"| {_name(ds)} | {SELECTIONS[metric]} | {model_label(m)} | {mean(b)} | {mean(a)} | "
                             f"{_diff(paired_diff(a, b).to_json())} |")
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
    out = ["## Accuracy", accuracy_table(args.folders), "## Per seed (best-on-test / validation-selected)",
           per_seed_table(args.folders)]
    for metric in ("best", "val"):
        out += [f"## Paired differences, {SELECTIONS[metric]}", paired_table(args.folders, metric)]
    out += ["## Confidence", confidence_table(args.folders, args.sharp), "## Discretization gap",
            gap_table(args.folders, args.sharp, args.gap_runs), "## Discretization gap per run",
            gap_detail_table(args.folders, args.sharp, args.gap_runs)]
    if args.sharp:
        plain = next((f for f in args.folders if set(load(f)[0].datasets) & set(load(args.sharp)[0].datasets)), None)
        if plain:
            out += ["## Sharpening", sharpening_table(plain, args.sharp)]
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
