"""Figures in the style of the paper's Figures 1-4, plus weight trajectories over epochs.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` (Agg canvas), never through
pyplot, so nothing depends on a display or on global pyplot state (safe in worker processes
and tests). Every activation has one fixed colour in every figure (:data:`ACT_COLORS`), so a
reader can compare datasets at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from adact.activations import ACTIVATIONS
from adact.errors import UserError
from adact.reporting.stats import consensus
from adact.runs.io import atomic_write, make_dir

__all__ = ["ACT_COLORS", "ACT_LINESTYLES", "act_color", "plot_choice_trajectories", "plot_heatmap",
           "plot_trajectories", "plot_weights", "save_figure"]

# The paper's seven candidates get the most distinct colours (tab10 order); other registry names
# follow. Keyed by registry name so a colour never depends on the candidate order of a model.
# No black or grey: the function figures draw the seeds' mixtures in those (GELU and squared
# ReLU, the language models' candidates, are indigo and teal).
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#393b79", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#00a6a6", "#dbdb8d",
]
ACT_COLORS: dict[str, str] = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(ACTIVATIONS)}


#: Near-twins (leaky_relu ~ relu, silu ~ mish) get dashed lines so one does not hide the other.
ACT_LINESTYLES: dict[str, str] = {"leaky_relu": "--", "silu": "--", "rrelu": "-."}


def act_color(name: str) -> str:
    return ACT_COLORS.get(name, "#333333")


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``stem.<fmt>`` for each format through a temporary file and a rename (never half a file).

    The same figure gives the same bytes every time (no date, fixed SVG ids), so re-rendering a
    published results folder changes a figure's file only when the figure changed.
    """
    stem = Path(stem)
    make_dir(stem.parent)
    written = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        meta = {"Date": None} if fmt in ("svg", "pdf") else None
        with matplotlib.rc_context({"svg.hashsalt": "adact"}):
            atomic_write(path, lambda f, fmt=fmt, meta=meta: fig.savefig(f, format=fmt, dpi=150, bbox_inches="tight",
                                                                        metadata=meta))
        written.append(path)
    return written


def _layer_labels(n: int, choices: Sequence[str] | None) -> list[str]:
    if choices is None:
        return [f"layer {i + 1}" for i in range(n)]
    return [f"layer {i + 1}\n→ {c}" for i, c in enumerate(choices)]


def _consensus_labels(mix: np.ndarray, candidates: Sequence[str], weak: np.ndarray | None = None) -> list[str]:
    if mix.shape[0] == 1:
        labels = [c for c, _, _ in consensus(mix, candidates)]
    else:
        labels = [f"{c} ({k}/{n})" for c, k, n in consensus(mix, candidates)]
    if weak is None:
        return labels
    n_seeds = weak.shape[0]
    for i, k in enumerate(weak.sum(0).tolist()):
        if k:  # the layer's choice is weak (margin < 0.05) in k seeds
            labels[i] += "\n(weak)" if n_seeds == 1 else f"\nweak in {k}/{n_seeds}"
    return labels


def _bars(ax: Axes, values: np.ndarray, candidates: Sequence[str], labels: Sequence[str],
          baseline: float = 0.0) -> None:
    """Grouped bars: one group per layer, one bar per candidate; mean, ±1 sd, a dot per seed.

    Bars start at ``baseline``: for softmax weights that is the uniform 1/K, so a bar shows how
    far training moved a candidate away from the start (differences of 0.001 are visible).
    """
    n_seeds, n_layers, k = values.shape
    width = 0.8 / k
    x = np.arange(n_layers)
    for j, name in enumerate(candidates):
        pos = x - 0.4 + width * (j + 0.5)
        mean = values[:, :, j].mean(0)
        err = values[:, :, j].std(0, ddof=1) if n_seeds > 1 else None
        ax.bar(pos, mean - baseline, width * 0.92, bottom=baseline, color=act_color(name),
               label=name, yerr=err, error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "#222222"}, zorder=2)
        if n_seeds > 1:
            jitter = np.linspace(-width * 0.2, width * 0.2, n_seeds)
            for s in range(n_seeds):
                ax.scatter(pos + jitter[s], values[s, :, j], s=6, color="#111111", zorder=3,
                           linewidths=0)
    ax.set_xticks(x, labels)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)


def plot_weights(raw: np.ndarray, mix: np.ndarray, candidates: Sequence[str], title: str,
                 stem: str | Path, note: str = "", weak: np.ndarray | None = None) -> list[Path]:
    """The paper's Figures 1-4 for one dataset: raw weights (top) and softmax weights (bottom).

    Args:
        raw, mix: ``(seeds, layers, candidates)`` logits and softmax weights.
        candidates: names along the last axis.
        title: figure title (e.g. the dataset).
        stem: output path without suffix; writes ``stem.png`` and ``stem.svg``.
        note: a line under the title (e.g. which checkpoint the weights come from).
        weak: ``(seeds, layers)`` booleans, True where a seed's choice is weak (see
            :mod:`adact.choice`); such layers are labelled "weak". Default: None (no marks).
    """
    raw, mix = np.asarray(raw, dtype=float), np.asarray(mix, dtype=float)
    if raw.ndim != 3 or raw.shape != mix.shape or raw.shape[2] != len(candidates):
        raise UserError(f"raw and mix must both be (seeds, layers, {len(candidates)}); got {raw.shape}, {mix.shape}")
    if weak is not None:
        weak = np.asarray(weak, dtype=bool)
        if weak.shape != raw.shape[:2]:
            raise UserError(f"weak must be (seeds, layers) = {raw.shape[:2]}, got {weak.shape}")
    n_seeds, n_layers, k = raw.shape
    fig = Figure(figsize=(max(7.0, 1.9 * n_layers + 2.5), 7.2), layout="constrained")
    ax_raw, ax_mix = fig.subplots(2, 1)
    _bars(ax_raw, raw, candidates, _layer_labels(n_layers, None))
    ax_raw.axhline(0.0, color="#444444", linewidth=0.8)
    ax_raw.set_ylabel("raw weight (logit)")
    ax_raw.set_title("Raw weights", loc="left", fontsize=10)
    uniform = 1.0 / k
    _bars(ax_mix, mix, candidates, _layer_labels(n_layers, _consensus_labels(mix, candidates, weak)), baseline=uniform)
    ax_mix.axhline(uniform, color="#444444", linewidth=0.8, linestyle="--", label=f"uniform 1/{k}", zorder=1)
    lo, hi = min(float(mix.min()), uniform), max(float(mix.max()), uniform)
    pad = max(hi - lo, 1e-3) * 0.12
    ax_mix.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax_mix.set_ylabel("softmax weight")
    ax_mix.set_title(f"Softmax weights (bars start at the uniform 1/{k}; → the layer's chosen activation)",
                     loc="left", fontsize=10)
    spread = "bars: mean, whiskers: ± sd, dots: single seeds" if n_seeds > 1 else "one run"
    fig.suptitle(f"{title}\n" + (f"{note}; " if note else "") + spread, fontsize=11)
    handles, labels = ax_mix.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(k + 1, 8), frameon=False, fontsize=9)
    return save_figure(fig, stem)


def plot_heatmap(mix: np.ndarray, paths: Sequence[str], candidates: Sequence[str], title: str, stem: str | Path,
                 note: str = "", weak: np.ndarray | None = None) -> list[Path]:
    """Softmax weights of every unit as a heatmap: one row per unit, one column per candidate.

    Readable for any number of units (a ResNet-50 has 49), where bar groups are not. Cells show
    the mean over seeds; a black box marks each unit's most common choice, and the row label
    names it.

    Args:
        mix: ``(seeds, units, candidates)`` softmax weights.
        paths: the units' module paths (row labels).
        candidates, title, stem, note, weak: as in :func:`plot_weights` (``weak``: ``(seeds, units)``);
            a unit whose choice is weak in some seed gets "weak" (or "weak k/n") in its label.
    """
    mix = np.asarray(mix, dtype=float)
    if mix.ndim != 3 or mix.shape[2] != len(candidates):
        raise UserError(f"mix must be (seeds, units, {len(candidates)}); got {mix.shape}")
    n_seeds, n_units, k = mix.shape
    if weak is not None:
        weak = np.asarray(weak, dtype=bool)
        if weak.shape != mix.shape[:2]:
            raise UserError(f"weak must be (seeds, units) = {mix.shape[:2]}, got {weak.shape}")
    mean = mix.mean(0)
    chosen = consensus(mix, candidates)
    labels = [f"{p or '(root)'} → {c}" + (f" ({m}/{n})" if n > 1 else "")
              for p, (c, m, n) in zip(list(paths) + [f"unit {i + 1}" for i in range(len(paths), n_units)], chosen)]
    if weak is not None:
        for i, count in enumerate(weak.sum(0).tolist()):
            if count:  # margin to the runner-up < 0.05 in `count` seeds
                labels[i] += ", weak" if n_seeds == 1 else f", weak {count}/{n_seeds}"
    fig = Figure(figsize=(2.2 + 0.75 * k + 0.07 * max(len(x) for x in labels), 1.6 + 0.28 * n_units),
                 layout="constrained")
    ax = fig.subplots()
    # Centred on the uniform 1/k: above it (warm) the unit prefers a candidate, below (cool) it avoids it.
    from matplotlib.colors import TwoSlopeNorm

    norm = TwoSlopeNorm(vcenter=1.0 / k, vmin=min(float(mean.min()), 1.0 / k - 1e-6),
                        vmax=max(float(mean.max()), 1.0 / k + 1e-6))
    im = ax.imshow(mean, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
    ax.set_xticks(range(k), list(candidates), rotation=30, ha="right")
    ax.set_yticks(range(n_units), labels, fontsize=8)
    for i, (c, _, _) in enumerate(chosen):
        j = list(candidates).index(c)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
        if n_units <= 60 and k <= 10:
            dark = abs(float(norm(mean[i, j])) - 0.5) > 0.35  # white text on the darkest cells
            ax.text(j, i, f"{mean[i, j]:.3f}", ha="center", va="center", fontsize=6.5,
                    color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=f"softmax weight (white = uniform 1/{k})", shrink=min(1.0, 8 / max(n_units, 1)) + 0.3)
    spread = f"mean over {n_seeds} seeds" if n_seeds > 1 else "one run"
    fig.suptitle(f"{title}\n" + (f"{note}; " if note else "") + spread, fontsize=11)
    return save_figure(fig, stem)


def _epoch_grid(histories: Sequence[np.ndarray], epochs: Sequence[Sequence[int]]) -> tuple[list[int], np.ndarray]:
    """Every epoch any seed ran, and the histories on that common axis: ``(seeds, epochs, units, k)``.

    Seeds may have run different numbers of epochs (a diverged or interrupted run): their missing
    epochs are NaN.
    """
    all_epochs = sorted({int(e) for es in epochs for e in es})
    n_units, k = histories[0].shape[1:]
    grid = np.full((len(histories), len(all_epochs), n_units, k), np.nan)
    col = {e: i for i, e in enumerate(all_epochs)}
    for s, (h, es) in enumerate(zip(histories, epochs)):
        if h.shape[1:] != (n_units, k):
            raise UserError(f"history {s} has shape {h.shape}, expected (epochs, {n_units}, {k})")
        for row, e in zip(h, es):
            grid[s, col[int(e)]] = row
    return all_epochs, grid


def plot_choice_trajectories(histories: Sequence[np.ndarray], epochs: Sequence[Sequence[int]],
                             candidates: Sequence[str], paths: Sequence[str], title: str, stem: str | Path,
                             note: str = "", step: str = "epoch") -> list[Path]:
    """For many units: how each unit's final choice emerged -- its softmax weight per epoch, as a heatmap.

    One row per unit (labelled with its final consensus choice), one column per epoch; the colour
    is the mean over seeds of that choice's softmax weight (white = uniform 1/K). One image
    instead of one panel per unit, so 50 units stay readable and cheap to draw.

    Args:
        histories, epochs, candidates: as in :func:`plot_trajectories`.
        paths: the units' module paths (row labels).
        title, stem, note: as in :func:`plot_weights`.
    """
    if not histories:
        raise UserError("plot_choice_trajectories needs at least one run's history")
    all_epochs, grid = _epoch_grid(histories, epochs)
    n_units, k = grid.shape[2:]
    with np.errstate(all="ignore"):
        mean = np.nanmean(grid, 0)  # (epochs, units, k)
    last = np.array([h[-1] for h in histories])  # (seeds, units, k): the final epoch
    chosen = consensus(last, candidates)
    idx = [list(candidates).index(c) for c, _, _ in chosen]
    values = np.stack([mean[:, u, j] for u, j in enumerate(idx)])  # (units, epochs)
    from matplotlib.colors import TwoSlopeNorm

    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    norm = TwoSlopeNorm(vcenter=1.0 / k, vmin=min(lo, 1.0 / k - 1e-6), vmax=max(hi, 1.0 / k + 1e-6))
    labels = [f"{p or '(root)'} → {c}" for p, (c, _, _) in zip(paths, chosen)]
    fig = Figure(figsize=(3.0 + 0.45 * len(all_epochs) + 0.07 * max(len(x) for x in labels), 1.6 + 0.28 * n_units),
                 layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(values, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
    ax.set_xticks(range(len(all_epochs)), [str(e) for e in all_epochs])
    ax.set_xlabel(step)
    ax.set_yticks(range(n_units), labels, fontsize=8)
    fig.colorbar(im, ax=ax, label=f"softmax weight of the final choice (white = 1/{k})")
    spread = f"mean over {len(histories)} seeds" if len(histories) > 1 else "one run"
    fig.suptitle(f"{title}\n{spread}" + (f"; {note}" if note else ""), fontsize=11)
    return save_figure(fig, stem)


def plot_trajectories(histories: Sequence[np.ndarray], epochs: Sequence[Sequence[int]], candidates: Sequence[str],
                      title: str, stem: str | Path, note: str = "",
                      unit_names: Sequence[str] | None = None, step: str = "epoch") -> list[Path]:
    """Softmax weight of every candidate vs epoch, one panel per layer.

    Args:
        histories: per seed, an ``(epochs, layers, candidates)`` array of softmax weights.
        epochs: per seed, the epoch numbers of the rows.
        candidates: names along the last axis.
        title, stem, note: as in :func:`plot_weights`.
        unit_names: panel titles (default: ``layer 1``, ``layer 2``, ...).
        step: the x axis's name: ``"epoch"``, or ``"evaluation"`` for a text run (one per ``eval_interval`` steps).

    Lines are the mean over seeds, the band spans the seeds' min to max.
    """
    if not histories:
        raise UserError("plot_trajectories needs at least one run's history")
    all_epochs, grid = _epoch_grid(histories, epochs)
    n_layers, k = grid.shape[2:]
    with np.errstate(all="ignore"):
        mean, lo, hi = np.nanmean(grid, 0), np.nanmin(grid, 0), np.nanmax(grid, 0)
    # Up to 6 panels in a row (the paper's ConvNet: one row); a model with many units wraps.
    cols = min(n_layers, 6)
    rows = -(-n_layers // cols)
    fig = Figure(figsize=(max(7.0, 3.0 * cols), 3.8 if rows == 1 else 1.2 + 2.6 * rows), layout="constrained")
    grid_axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    for extra in grid_axes[n_layers:]:
        extra.set_visible(False)
    axes = grid_axes[:n_layers]
    x = np.array(all_epochs)
    marker = "o" if len(x) <= 20 else None
    for layer, ax in enumerate(axes):
        for j, name in enumerate(candidates):
            c = act_color(name)
            ax.plot(x, mean[:, layer, j], color=c, label=name, marker=marker, markersize=3, linewidth=1.4,
                    linestyle=ACT_LINESTYLES.get(name, "-"))
            if len(histories) > 1:
                ax.fill_between(x, lo[:, layer, j], hi[:, layer, j], color=c, alpha=0.12, linewidth=0)
        ax.axhline(1.0 / k, color="#444444", linewidth=0.8, linestyle="--", label=f"uniform 1/{k}")
        ax.set_title(f"layer {layer + 1}" if not unit_names else unit_names[layer], fontsize=10 if rows == 1 else 8)
        ax.set_xlabel(step)
        ax.grid(alpha=0.3)
        if len(x) <= 20:
            ax.set_xticks(x if len(x) <= 10 else x[::2])
    axes[0].set_ylabel("softmax weight")
    spread = f"mean over {len(histories)} seeds, band: min–max" if len(histories) > 1 else "one run"
    fig.suptitle(f"{title}\n{spread}" + (f"; {note}" if note else ""), fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(k + 1, 8), frameon=False, fontsize=9)
    return save_figure(fig, stem)
