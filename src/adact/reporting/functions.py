"""What each unit computes: its learned function over the inputs it sees, and how far its choice is from it.

A unit's seven weights do not say what it computes: with a negative PReLU slope inside the
mixture, the mixture and its argmax are different shapes, and only a picture of both shows the
discretization gap. :func:`plot_functions` draws, per unit, the learned mixture
:math:`\\sum_k \\mathrm{softmax}(w / T)_k f_k(x)` (learned PReLU slope and temperature included)
over the range its inputs cover, the chosen candidate alone, the other candidates faintly, and
under it the histogram of its inputs (:mod:`adact.inputs`); across seeds, one line per seed.
Units whose inputs were not recorded (runs from before they were) are drawn over
:data:`adact.inputs.DEFAULT_RANGE` and say so. :func:`function_gap_text` and
:func:`function_gap_md` give the number beside the picture: the mean
:math:`|\\text{mixture}(x) - \\text{chosen}(x)|` over each unit's recorded inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from adact.choice import UnitSnapshot
from adact.errors import UserError
from adact.inputs import DEFAULT_RANGE, unit_curves
from adact.reporting.figures import act_color, save_figure

__all__ = ["function_gap_md", "function_gap_text", "plot_functions"]

#: Points per curve.
_POINTS = 241
#: Lines for the seeds' mixtures: black, then greys, distinct from every candidate's colour.
_SEED_COLORS = ("#000000", "#404040", "#6e6e6e", "#929292", "#b4b4b4")


def _span(units: Sequence[UnitSnapshot]) -> tuple[float, float, bool]:
    """The x range of one unit across seeds (the union of their recorded ranges, padded), and whether any was recorded."""
    ranges = [u.inputs.range for u in units if u.inputs is not None]
    if not ranges:
        return DEFAULT_RANGE[0], DEFAULT_RANGE[1], False
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad, True


def plot_functions(runs: Sequence[Sequence[UnitSnapshot]], title: str, stem: str | Path, note: str = "",
                   labels: Sequence[str] | None = None) -> list[Path]:
    """Each unit's learned function over its inputs: one panel per unit, one line per seed.

    Per panel (top): every seed's mixture (solid, black and greys), its chosen candidate alone
    (dashed, in the candidate's colour) and, faintly, every candidate of the first seed; (below)
    the histogram of the unit's recorded inputs per seed, over the central 99.8% of them. The panel
    title gives the unit, its (most common) choice and the mean ``|mixture - chosen|`` over its
    inputs (the mean over seeds).
    Panels wrap in rows of up to 4 (a ConvNet's or a small GPT's units), 5 (up to 25 units) or 6.

    Args:
        runs: per seed, the units' :class:`~adact.choice.UnitSnapshot` s (the same paths in each).
        title: figure title; ``note``: a line under it.
        stem: output path without suffix; writes ``stem.png`` and ``stem.svg``.
        labels: per seed, its legend label (default: none for one run, else ``run 1``, ``run 2``, ...).
    """
    if not runs or not runs[0]:
        raise UserError("plot_functions needs at least one run with AdAct units")
    n = len(runs[0])
    if any(len(r) != n for r in runs):
        raise UserError(f"every run must have the same {n} units, got {[len(r) for r in runs]}")
    if labels is None:
        labels = [""] if len(runs) == 1 else [f"run {s + 1}" for s in range(len(runs))]
    cols = n if n <= 4 else (5 if n <= 25 else 6)
    rows = -(-n // cols)
    fig = Figure(figsize=(max(7.5, 2.9 * cols), 1.3 + 2.9 * rows), layout="constrained")
    outer = fig.add_gridspec(rows, cols)
    unrecorded = 0
    for i in range(n):
        units = [r[i] for r in runs]
        inner = outer[i // cols, i % cols].subgridspec(2, 1, height_ratios=(3, 1), hspace=0.0)
        ax = fig.add_subplot(inner[0])
        ax_h = fig.add_subplot(inner[1], sharex=ax)
        lo, hi, recorded = _span(units)
        unrecorded += not recorded
        x = torch.linspace(lo, hi, _POINTS, dtype=torch.float64)
        xs = x.numpy()
        first = units[0]
        _, each = unit_curves(first.candidates, first.mix, first.prelu_slope, x)
        for name, y in zip(first.candidates, each.numpy()):
            ax.plot(xs, y, color=act_color(name), alpha=0.3, linewidth=0.8, zorder=1)
        for s, u in enumerate(units):
            mixture, each = unit_curves(u.candidates, u.mix, u.prelu_slope, x)
            chosen = each[list(u.candidates).index(u.choice)].numpy()
            ax.plot(xs, chosen, color=act_color(u.choice), linestyle="--", linewidth=1.4, zorder=2)
            ax.plot(xs, mixture.numpy(), color=_SEED_COLORS[s % len(_SEED_COLORS)], linewidth=1.6, zorder=3)
            if u.inputs is not None:
                edges = np.array(u.inputs.edges)
                ax_h.stairs(np.array(u.inputs.hist) / np.diff(edges), edges, fill=len(units) == 1,
                            color=_SEED_COLORS[s % len(_SEED_COLORS)], alpha=0.35 if len(units) == 1 else 0.8,
                            linewidth=0.8)
        if not recorded:
            ax_h.text(0.5, 0.5, "inputs not recorded", transform=ax_h.transAxes, ha="center", va="center",
                      fontsize=7, color="#666666")
        ax.set_xlim(lo, hi)
        ax.grid(alpha=0.3)
        ax.tick_params(labelbottom=False, labelsize=7)
        ax_h.tick_params(labelsize=7)
        ax_h.set_yticks([])
        ax.set_title(_panel_title(i, units), fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("f(x)", fontsize=8)
            ax_h.set_ylabel("inputs", fontsize=8)
    names = list(dict.fromkeys(c for r in runs for u in r for c in u.candidates))
    handles = [Line2D([], [], color=_SEED_COLORS[s % len(_SEED_COLORS)], linewidth=1.6, label=f"mixture, {lab}" if lab else "mixture")
               for s, lab in enumerate(labels)]
    handles += [Line2D([], [], color="#444444", linestyle="--", linewidth=1.4, label="chosen (its colour)")]
    handles += [Line2D([], [], color=act_color(c), alpha=0.5, linewidth=1.2, label=c) for c in names]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False, fontsize=8)
    what = ("x: the range of the unit's inputs at evaluation (0.1%–99.9% quantiles); below: their histogram"
            if unrecorded < n else "")
    if unrecorded:
        what += ("; " if what else "") + (f"{unrecorded} of {n} units' inputs were not recorded (a run from before "
                                          f"they were): drawn over [{DEFAULT_RANGE[0]:g}, {DEFAULT_RANGE[1]:g}]")
    fig.suptitle(f"{title}\n" + (f"{note}; " if note else "") + what, fontsize=10)
    return save_figure(fig, stem)


def _panel_title(i: int, units: Sequence[UnitSnapshot]) -> str:
    path = units[0].path or "(root)"
    if len(path) > 30:  # deep module paths: keep the end, which names the site
        path = "…" + path[-29:]
    choices = [u.choice for u in units]
    top = max(dict.fromkeys(choices), key=choices.count)  # the most common choice; ties: the first seed's
    chosen = top if len(units) == 1 else f"{top} {choices.count(top)}/{len(units)}"
    gaps = [g for g in (u.function_gap for u in units) if g is not None]
    gap = f", |mix − chosen| {np.mean(gaps):.3g}" if gaps else ""
    return f"{i + 1}. {path}\n→ {chosen}{gap}"


def function_gap_text(units: Sequence[UnitSnapshot]) -> str:
    """A fixed-width table (``adact analyze``): per unit, its choice and the mean ``|mixture - chosen|`` over its inputs."""
    if not units:
        return ""
    if all(u.inputs is None for u in units):
        return ("learned function vs its choice: inputs not recorded in this run (a run from before they were); "
                f"the function figure is drawn over [{DEFAULT_RANGE[0]:g}, {DEFAULT_RANGE[1]:g}]\n\n")
    lines = ["learned function vs its choice over the unit's recorded inputs (mean |mixture - chosen|, in the "
             "units of the output; inputs: 0.1%, 50%, 99.9% quantiles)",
             f"{'layer':<8}{'unit':<16}{'choice':>12}{'|mix-chosen|':>14}{'q0.1%':>9}{'median':>9}{'q99.9%':>9}"]
    for i, u in enumerate(units):
        if u.inputs is None:
            lines.append(f"{i + 1:<8}{u.path:<16}{u.choice:>12}{'—':>14}")
            continue
        q = u.inputs
        lines.append(f"{i + 1:<8}{u.path:<16}{u.choice:>12}{u.function_gap:>14.4f}{q.quantile(0.001):>9.3f}"
                     f"{q.quantile(0.5):>9.3f}{q.quantile(0.999):>9.3f}")
    return "\n".join(lines) + "\n\n"


def function_gap_md(runs: Sequence[tuple[str, Sequence[UnitSnapshot]]], figure: str | None = None) -> str:
    """choices.md's table of the mean ``|mixture - chosen|`` per unit (rows) and seed (columns), with the mean.

    ``runs``: ``(label, units)`` per seed. ``figure``: the function figure's path, linked under the table.
    Empty when no run recorded its inputs.
    """
    runs = [(lab, u) for lab, u in runs if u]
    if not runs or all(x.inputs is None for _, units in runs for x in units):
        return ""
    n = max(len(u) for _, u in runs)
    head = ["#", "unit"] + [lab for lab, _ in runs] + ["mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for i in range(n):
        gaps = [units[i].function_gap if i < len(units) else None for _, units in runs]
        known = [g for g in gaps if g is not None]
        path = next((units[i].path for _, units in runs if i < len(units)), "?")
        cells = ["—" if g is None else f"{g:.4f}" for g in gaps] + [f"{np.mean(known):.4f}" if known else "—"]
        lines.append(f"| {i + 1} | `{path}` | " + " | ".join(cells) + " |")
    link = f" The figure [{Path(figure).name}]({figure}) draws each function over its inputs." if figure else ""
    return ("Mean |mixture(x) − chosen(x)| over each unit's recorded inputs (the test set at the selected epoch; "
            "in the units of the unit's output, learned PReLU slope kept): how far the chosen activation is from the "
            "function the unit learned, where its inputs lie; — where inputs were not recorded." + link + "\n\n"
            + "\n".join(lines) + "\n")
