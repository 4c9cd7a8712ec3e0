"""``adact analyze`` of one run folder or checkpoint: its weights, confidence, gap and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from adact.choice import UnitSnapshot, confidence_from_weights, snapshot, snapshots_from_record, weights_record
from adact.dataspec import DatasetSpec
from adact.errors import UserError
from adact.inputs import InputStats
from adact.reporting.figures import plot_choice_trajectories, plot_heatmap, plot_trajectories, plot_weights
from adact.reporting.functions import function_gap_text, plot_functions
from adact.reporting.records import read_weight_history
from adact.reporting.tables import render_confidence_text, render_gap_text, render_weights_text
from adact.runs.folder import RunFolder
from adact.runs.io import read_json
from adact.training.build import load_checkpoint

__all__ = ["analyze_run", "function_figures"]

#: Up to this many units, the figures get one bar group or panel per unit; beyond, a heatmap.
PANELS = 6


def analyze_run(path: str | Path, out: str | Path | None = None) -> tuple[str, list[Path]]:
    """Weight table and figures of one run folder or checkpoint.

    A run folder is read from its best.pt (last.pt when there is no best.pt), matching the
    checkpoint a search takes its choices from. A run folder without checkpoints (a
    published one: ``config.json``, ``metrics.csv``, ``result.json``) is read from the weights
    ``result.json`` recorded at the best epoch. Figures go to ``out`` (default: the run folder).
    Returns the text table and the figure paths.
    """
    path = Path(path)
    if path.is_dir():
        folder = RunFolder(path)
        ckpt = folder.checkpoint()
        if ckpt is None:
            if folder.result.is_file():
                return _analyze_result(path, out)
            raise FileNotFoundError(f"{path} holds no best.pt, last.pt or result.json: not a run folder of "
                                    "`adact train`")
        run_dir = path
    elif path.is_file():
        ckpt, run_dir = path, path.parent
    else:
        raise FileNotFoundError(f"no such run folder or checkpoint: {path}")
    model, meta = load_checkpoint(ckpt)
    units = _checkpoint_units(model, meta)
    w = weights_record(units)
    config = meta["config"]
    head = f"{ckpt} (epoch {meta['epoch']}, dataset {config['dataset']}, activation {config['activation']})"
    if not w["paths"]:
        return head + "\nno AdAct units in this model: nothing to analyze\n", []
    result_path = RunFolder(run_dir).result
    result = read_json(result_path) if result_path.is_file() else {}
    return _analyze(head, w, units, result if isinstance(result, dict) else {}, meta["epoch"], config, run_dir,
                    Path(out) if out is not None else run_dir, f"{ckpt.name}, epoch {meta['epoch']}")


#: The function figure's title, in every run's figure folder.
_FUNCTIONS_TITLE = "{name}: what each AdAct unit learned, over the inputs it sees"


def function_figures(run_dir: str | Path, result: dict[str, Any]) -> tuple[str, list[Path]]:
    """The function figure (``functions.png``/``.svg``) of a finished AdAct run and its per-unit
    ``|mixture - chosen|`` table, from its result's best epoch: what ``adact train`` shows after a run
    (``adact analyze`` draws the figure with the others)."""
    config = result["config"]
    units = snapshots_from_record(result["best_weights"], config.get("granularity", "layer"))
    name = DatasetSpec.parse(config["dataset"]).display
    files = plot_functions([units], _FUNCTIONS_TITLE.format(name=name), Path(run_dir) / "functions",
                           note=f"result.json, best epoch {result['best_epoch']}, seed {config['seed']}")
    return function_gap_text(units), files


def _checkpoint_units(model: Any, ckpt: dict[str, Any]) -> list[UnitSnapshot]:
    """The checkpoint's units, with the inputs recorded at its epoch (none in a checkpoint from before they were)."""
    record = ckpt.get("units")
    best = ckpt.get("best") or {}
    if record is None and best.get("epoch") == ckpt["epoch"]:  # best.pt: the best epoch's record is this epoch's
        record = best.get("weights")
    seen = dict(zip(record["paths"], record["inputs"])) if record and record.get("inputs") else {}
    return snapshot(model, inputs={p: InputStats.from_json(d) for p, d in seen.items() if d is not None})


def _analyze_result(run_dir: Path, out: str | Path | None) -> tuple[str, list[Path]]:
    """:func:`analyze_run` of a run folder without checkpoints, from its result.json."""
    path = RunFolder(run_dir).result
    result = read_json(path)
    if not isinstance(result, dict) or not isinstance(result.get("config"), dict):
        raise UserError(f"{path} is not the result.json of an `adact train` run (no 'config'); nothing to analyze")
    config = result["config"]
    epoch = result.get("best_epoch")
    head = (f"{path} (best epoch {epoch}, dataset {config.get('dataset')}, activation {config.get('activation')}; "
            "no checkpoint in this folder: the weights result.json recorded at the best epoch)")
    if not result.get("n_adact_units"):
        return head + "\nno AdAct units in this model: nothing to analyze\n", []
    w = result.get("best_weights")
    if not isinstance(w, dict) or not all(k in w for k in ("paths", "candidates", "raw", "mix")):
        raise UserError(f"{path} holds no weights of a best epoch (status {result.get('status')!r}); rerun the same "
                         "`adact train` command to finish the run, then analyze it")
    units = snapshots_from_record(w, config.get("granularity", "layer"))
    if not w.get("confidence"):  # runs from before confidences were recorded: the per-layer ones follow from mix
        w = {**w, "confidence": confidence_from_weights(w)}
    return _analyze(head, w, units, result, epoch, config, run_dir, Path(out) if out is not None else run_dir,
                    f"result.json, best epoch {epoch}")


def _analyze(head: str, w: dict[str, Any], units: list[UnitSnapshot], result: dict[str, Any], epoch: int | None,
             config: dict[str, Any], run_dir: Path, fig_dir: Path, source: str) -> tuple[str, list[Path]]:
    """Text and figures of one epoch's AdAct weights ``w`` (see :func:`adact.choice.weights_record`) and ``units``."""
    text = head + "\n" + render_weights_text(w["paths"], w["candidates"], np.array(w["raw"]), np.array(w["mix"]))
    text += render_confidence_text(w.get("confidence") or [])
    text += function_gap_text(units)
    gap = result.get("discretization_gap")
    if gap and gap.get("epoch") == epoch:  # the gap of this very epoch, not another one's
        text += render_gap_text(gap)
    hist, note = None, ""
    metrics = RunFolder(run_dir).metrics
    if metrics.is_file():
        try:
            hist = read_weight_history(metrics)
        except (ValueError, OSError) as e:
            note = f"no weight trajectories: {e}\n"
    name = DatasetSpec.parse(config["dataset"]).display
    note_ckpt = f"{source}, seed {config['seed']}"
    many = len(w["paths"]) > PANELS  # a ResNet's 17 units: heatmaps, not 17 bar groups or panels
    weak = np.array([[c["weak"] for c in w["confidence"]]]) if w.get("confidence") else None
    if many:
        files = plot_heatmap(np.array([w["mix"]]), w["paths"], w["candidates"],
                             f"{name}: AdAct softmax weights per unit", fig_dir / "weights", note=note_ckpt, weak=weak)
    else:
        files = plot_weights(np.array([w["raw"]]), np.array([w["mix"]]), w["candidates"],
                             f"{name}: AdAct weights per layer", fig_dir / "weights", note=note_ckpt, weak=weak)
    files += plot_functions([units], _FUNCTIONS_TITLE.format(name=name), fig_dir / "functions", note=note_ckpt)
    step = "evaluation" if DatasetSpec.parse(str(config.get("dataset", "digits"))).is_text else "epoch"
    if hist is not None and many:
        files += plot_choice_trajectories([hist.mix], [hist.epochs], hist.candidates, hist.paths,
                                          f"{name}: how each unit's choice emerged during training",
                                          fig_dir / "trajectories", note=f"seed {config['seed']}", step=step)
    elif hist is not None:
        files += plot_trajectories([hist.mix], [hist.epochs], hist.candidates,
                                   f"{name}: AdAct softmax weights during training",
                                   fig_dir / "trajectories", note=f"seed {config['seed']}", step=step)
    return text + note, files
