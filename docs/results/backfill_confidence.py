"""Backfill the AdAct result.json of the 2026-11-28 runs (seeds 0-1), which predate confidences and gaps.

Adds ``best_weights.confidence`` from the recorded best-epoch weights (exact for per-layer units)
and a ``discretization_gap_note`` naming the retrained run of the same seed whose gap
docs/RESULTS.md reports. Run once from the repository root: ``PYTHONPATH=src python
docs/results/backfill_confidence.py``; runs that already have a confidence and a gap (or this
note) are left alone.
"""
import json
from pathlib import Path

from adact.choice import confidence_from_weights
from adact.runs.io import atomic_write_json

GAP = {"npz-cifar10": "gap-cifar10", "npz-fmnist": "gap-fmnist", "npz-fer2013": "gap-fer"}
for f in sorted(Path("docs/results").glob("table1-*/*/seed*/adact/result.json")):
    r = json.loads(f.read_text())
    w = r["best_weights"]
    if w.get("confidence") and (r.get("discretization_gap") or r.get("discretization_gap_note")):
        continue
    if r["config"].get("granularity", "layer") != "layer":
        raise ValueError(f"{f}: per-channel units need their checkpoint for a confidence, not only result.json")
    w["confidence"] = confidence_from_weights(w)
    w["confidence_note"] = ("added on 2026-12-02 from this run's recorded best-epoch weights (mix) with "
                            "adact.confidence.confidence_from_mixture, exact for per-layer units; the PReLU slope "
                            "was not recorded by this run")
    gap_dir = f"docs/results/{GAP[f.parts[3]]}/seed{r['seed']}"
    if not Path(gap_dir, "result.json").is_file():
        raise FileNotFoundError(f"{f}: no retrained run {gap_dir}/result.json to point to")
    r["discretization_gap_note"] = ("not measured on this run: it predates the gap and its checkpoint was not kept. "
                                    f"The gap of this seed was measured on a retrained AdAct run with the same seed "
                                    f"and settings: {gap_dir}/result.json (same function and protocol; its RReLU "
                                    "noise draws, and so its weights, differ)")
    atomic_write_json(f, r)
    print("backfilled", f)
