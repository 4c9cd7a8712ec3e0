"""Statistics and tables: paired t intervals, summaries, Table 1 rendering, weight histories."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from adact.choice import confidence_from_mixture
from adact.config import models_for
from adact.paper import PAPER_TABLE1
from adact.reporting.records import RunRecord, read_weight_history
from adact.reporting.stats import build_summary, consensus, paired_diff, summarize
from adact.reporting.tables import (
    model_label,
    render_choices_md,
    render_gap_md,
    render_table_csv,
    render_table_md,
    render_weights_text,
)


def test_paired_interval_matches_scipy_paired_t_test() -> None:
    a = {0: 0.921, 1: 0.917, 2: 0.925, 3: 0.919}
    b = {0: 0.918, 1: 0.916, 2: 0.920, 3: 0.919}
    d = paired_diff(a, b)
    expected = stats.ttest_rel(list(a.values()), list(b.values())).confidence_interval(0.95)
    assert d.n == 4 and d.seeds == [0, 1, 2, 3]
    assert d.mean == pytest.approx(0.00225)
    assert d.ci_low == pytest.approx(expected.low) and d.ci_high == pytest.approx(expected.high)
    # By hand: diffs 0.003, 0.001, 0.005, 0.000 -> sd 0.0022174, t(0.975, 3) = 3.182446
    assert d.ci_high - d.mean == pytest.approx(3.182446 * 0.0022173558 / 2, rel=1e-5)


def test_paired_interval_pairs_by_seed_and_handles_small_n() -> None:
    one = paired_diff({0: 0.9, 1: 0.8}, {1: 0.7, 5: 0.1})  # only seed 1 is in both
    assert one.n == 1 and one.mean == pytest.approx(0.1) and one.ci_low is None and one.ci_high is None
    none = paired_diff({0: 0.9}, {1: 0.9})
    assert none.n == 0 and none.mean is None
    same = paired_diff({0: 0.9, 1: 0.8}, {0: 0.8, 1: 0.7})  # constant difference: zero-width interval
    assert same.ci_low == pytest.approx(0.1) and same.ci_high == pytest.approx(0.1)
    with pytest.raises(ValueError, match="confidence"):
        paired_diff({0: 1.0}, {0: 1.0}, confidence=1.5)


def test_summarize_uses_sample_sd() -> None:
    s = summarize({0: 0.5, 1: 0.7, 2: 0.9})
    assert s.n == 3 and s.mean == pytest.approx(0.7) and s.std == pytest.approx(0.2)
    assert summarize({3: 0.4}).std is None
    assert summarize({}).mean is None


def test_paper_rows() -> None:
    from adact.dataspec import DatasetSpec

    def paper_key(d: str) -> str | None:
        return DatasetSpec.parse(d).paper_key

    assert paper_key("fmnist") == "fmnist"
    assert paper_key("npz:/some/where/FER2013.npz") == "fer2013"
    assert paper_key("npz:mine.npz") is None and paper_key("digits") is None
    assert PAPER_TABLE1["fer2013"] == {"adact": 0.546, "relu": 0.550, "optimized": 0.565}


def _records() -> list[RunRecord]:
    acc = {("fmnist", "adact"): [0.92, 0.93], ("fmnist", "relu"): [0.91, 0.915], ("fmnist", "optimized"): [0.925]}
    recs = []
    for (ds, model), values in acc.items():
        for seed, v in enumerate(values):
            recs.append(RunRecord(ds, ds, seed, model, "done", result={
                "best_test_acc": v, "final_test_acc": v - 0.01, "val_selected_test_acc": None,
                "n_params": 1000 + 28 * (model == "adact"), "n_adact_units": 4 * (model == "adact"),
                "n_adact_params": 32 * (model == "adact")}))
    recs.append(RunRecord("fmnist", "fmnist", 1, "optimized", "diverged", "loss became nan in epoch 3"))
    return recs


def test_table1_markdown_and_csv() -> None:
    summary = build_summary(_records(), ["fmnist"])
    e = summary["fmnist"]
    assert e["models"]["adact"]["best"]["mean"] == pytest.approx(0.925)
    assert e["status"]["optimized"] == {"done": 1, "diverged": 1}
    assert e["diffs"]["adact"]["relu"]["best"]["n"] == 2 and e["diffs"]["optimized"]["relu"]["best"]["n"] == 1

    md = render_table_md(summary, "best")
    row = next(line for line in md.splitlines() if line.startswith("| `fmnist`"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0.9250 ± 0.0071 (n=2)" and cells[2] == "0.921"
    assert cells[5] == "0.9250 (n=1); 1 diverged" and cells[6] == "0.922"
    assert cells[8] == "+0.0150 (n=1, CI n/a)"  # seed 0 only: 0.925 - 0.910
    assert cells[7].startswith("+0.0125 [")
    assert "paper" not in render_table_md(summary, "final")

    rows = list(csv.DictReader(io.StringIO(render_table_csv(summary))))
    assert [r["metric"] for r in rows] == ["best_test_acc", "final_test_acc", "val_selected_test_acc"]
    best = rows[0]
    assert float(best["adact_mean"]) == pytest.approx(0.925) and best["paper_adact"] == "0.921"
    assert best["optimized_not_done"] == "1"
    low, high = float(best["adact_minus_relu_ci_low"]), float(best["adact_minus_relu_ci_high"])
    assert low < float(best["adact_minus_relu_mean"]) < high
    assert rows[1]["paper_adact"] == "" and rows[2]["adact_n"] == "0"


def test_choices_and_consensus() -> None:
    cands = ["relu", "elu", "mish"]
    mix = np.array([
        [[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]],
        [[0.2, 0.5, 0.3], [0.1, 0.3, 0.6]],
        [[0.6, 0.2, 0.2], [0.3, 0.4, 0.3]],
    ])
    assert consensus(mix, cands) == [("relu", 2, 3), ("mish", 2, 3)]
    # Seeds 0 and 1 split 1:1 on layer 1 (relu vs elu); elu has the larger mean weight (0.40 vs 0.35).
    assert consensus(mix[:2], cands)[0] == ("elu", 1, 2)
    recs = []
    for seed in range(3):
        picks = [cands[i] for i in mix[seed].argmax(-1)]
        recs.append(RunRecord("digits", "digits", seed, "adact", "done", choices=picks,
                              choice_weights=mix[seed].max(-1).tolist(), candidates=cands, mix=mix[seed].tolist(),
                              result={"n_params": 1028, "n_adact_units": 2, "n_adact_params": 16}))
    md = render_choices_md(recs, ["digits"])
    assert "| 0 | relu (0.500) | mish (0.600) |" in md  # records without confidences: as before
    assert "| **most common** | relu (2/3) | mish (2/3) |" in md
    assert "| AdAct | 1,028 | 2 | 16 |" in md
    for r in recs:
        r.confidence = [confidence_from_mixture(m, cands).to_json() for m in r.mix or []]
    md = render_choices_md(recs, ["digits"])
    assert "| 0 | relu (0.500; margin 0.200) | mish (0.600; margin 0.400) |" in md
    # seed 2, layer 2: 0.4 vs 0.3 is not weak; a margin under 0.05 would be marked
    assert "| 2 | relu (0.600; margin 0.400) | elu (0.400; margin 0.100) |" in md
    assert "| **weak choices** | 0/3 | 0/3 |" in md and "| mean margin | 0.267 | 0.267 |" in md
    recs[0].confidence[0] = confidence_from_mixture([0.34, 0.33, 0.33], cands).to_json()
    assert "relu (0.500; margin 0.010) **weak**" in render_choices_md(recs, ["digits"])
    assert "| **weak choices** | 1/3 | 0/3 |" in render_choices_md(recs, ["digits"])
    # A PReLU choice shows its learned slope; a negative one is marked (its argmax is V-shaped).
    pre = ["relu", "prelu", "mish"]
    recs[1].choices, recs[1].candidates = ["prelu", "mish"], pre
    recs[1].confidence = [confidence_from_mixture(recs[1].mix[0], pre, prelu_slope=-0.41).to_json(),
                          confidence_from_mixture(recs[1].mix[1], pre, prelu_slope=-0.41).to_json()]
    md = render_choices_md(recs, ["digits"])
    assert "| 1 | prelu (0.500; margin 0.200; slope -0.41) **negative slope** | mish (0.600; margin 0.300) |" in md
    recs[1].confidence[0]["prelu_slope"] = 0.3
    assert "prelu (0.500; margin 0.200; slope +0.30) |" in render_choices_md(recs, ["digits"])


def _baseline_records() -> list[RunRecord]:
    acc = {"adact": [0.90, 0.92, 0.91], "relu": [0.88, 0.89, 0.90], "mish": [0.91, 0.93, 0.915],
           "optimized": [0.905, 0.915, 0.92]}
    gaps = [(0.90, 0.85), (0.92, 0.80), (0.91, 0.88)]
    recs = []
    for model, values in acc.items():
        for seed, v in enumerate(values):
            res: dict[str, Any] = {"best_test_acc": v, "final_test_acc": v, "val_selected_test_acc": None}
            if model == "adact":
                mix, arg = gaps[seed]
                res["discretization_gap"] = {"mixture_acc": mix, "argmax_acc": arg, "gap": arg - mix}
            recs.append(RunRecord("cifar10", "cifar10", seed, model, "done", result=res))
    return recs


def test_baselines_get_columns_and_paired_differences() -> None:
    summary = build_summary(_baseline_records(), ["cifar10"], baselines=["relu", "mish"])
    e = summary["cifar10"]
    assert list(e["models"]) == ["adact", "relu", "mish", "optimized"] == list(models_for(["relu", "mish"]))
    assert e["diffs"]["optimized"]["mish"]["best"]["mean"] == pytest.approx((-0.005 - 0.015 + 0.005) / 3)
    assert e["diffs"]["adact"]["relu"]["best"]["mean"] == pytest.approx(0.02)
    md = render_table_md(summary, "best")
    head = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert head == ["Dataset", "AdAct", "paper", "ReLU", "paper", "Mish", "Optimized", "paper",
                    "AdAct − ReLU [95% CI]", "Optimized − ReLU [95% CI]", "AdAct − Mish [95% CI]",
                    "Optimized − Mish [95% CI]"]
    row = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    assert row[5] == "0.9183 ± 0.0104 (n=3)" and row[2] == "0.766"  # the paper has no Mish column
    assert row[11].startswith("−0.0050 [")
    rows = list(csv.DictReader(io.StringIO(render_table_csv(summary))))
    assert float(rows[0]["optimized_minus_mish_mean"]) == pytest.approx(-0.005)
    assert rows[0]["paper_mish"] == "" and float(rows[0]["mish_mean"]) == pytest.approx(0.9183333)
    assert model_label("leaky_relu") == "LeakyReLU" and model_label("optimized") == "Optimized"


def test_gap_summary_and_table() -> None:
    e = build_summary(_baseline_records(), ["cifar10"], baselines=["relu", "mish"])["cifar10"]
    g = e["gap"]
    assert g["mixture"]["mean"] == pytest.approx(0.91)
    assert g["argmax"]["mean"] == pytest.approx((0.85 + 0.80 + 0.88) / 3)
    assert g["argmax_minus_mixture"]["mean"] == pytest.approx(-0.0666667) and g["argmax_minus_mixture"]["n"] == 3
    # Optimized (retrained) vs the free argmax model: 0.905 - 0.85, 0.915 - 0.80, 0.92 - 0.88
    assert g["optimized_minus_argmax"]["mean"] == pytest.approx((0.055 + 0.115 + 0.04) / 3)
    md = render_gap_md({"cifar10": e})
    row = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    assert row[1] == "0.9100 ± 0.0100 (n=3)" and row[3].startswith("−0.0667 [") and row[4].startswith("+0.0700 [")
    empty = build_summary(_records(), ["fmnist"])["fmnist"]["gap"]  # runs from before the gap was recorded
    assert empty["mixture"]["n"] == 0
    assert "| `fmnist` | — | — | — | — |" in render_gap_md({"fmnist": {"gap": empty}})


def test_weight_history_and_text(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    cols = ["epoch", "test_acc"] + [f"{k}/features.{i}.2/{c}" for i in (0, 1) for k in ("mix", "raw")
                                    for c in ("relu", "mish")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerow([1, 0.5, 0.6, 0.4, 0.2, -0.2, 0.3, 0.7, -0.4, 0.4])
        w.writerow([2, 0.6, 0.7, 0.3, 0.4, -0.4, 0.2, 0.8, -0.7, 0.7])
    h = read_weight_history(path)
    assert h is not None
    assert h.epochs == [1, 2] and h.paths == ["features.0.2", "features.1.2"] and h.candidates == ["relu", "mish"]
    assert h.mix.shape == (2, 2, 2) and h.mix[1, 1, 1] == pytest.approx(0.8) and h.raw[0, 1, 0] == pytest.approx(-0.4)
    text = render_weights_text(h.paths, h.candidates, h.raw[-1], h.mix[-1])
    assert "softmax weights" in text and "raw weights" in text
    layer2 = [line for line in text.splitlines() if line.startswith("2 ")]
    assert len(layer2) == 2 and all(line.rstrip().endswith("mish") for line in layer2)
    assert "0.8000*" in layer2[1] and "0.7000*" in layer2[0]  # softmax row and raw row; * marks the choice
    plain = tmp_path / "plain.csv"
    plain.write_text("epoch,test_acc\n1,0.5\n")
    assert read_weight_history(plain) is None


def test_weight_figure_labels_mark_weak_choices() -> None:
    from adact.reporting.figures import _consensus_labels

    mix = np.array([[[0.5, 0.3, 0.2], [0.34, 0.33, 0.33]], [[0.6, 0.2, 0.2], [0.2, 0.2, 0.6]]])
    weak = np.array([[False, True], [False, False]])
    assert _consensus_labels(mix, ["relu", "elu", "mish"], weak) == ["relu (2/2)", "mish (1/2)\nweak in 1/2"]
    assert _consensus_labels(mix[:1], ["relu", "elu", "mish"], weak[:1]) == ["relu", "relu\n(weak)"]
    # a 1:1 tie goes to the larger mean weight
    assert _consensus_labels(mix, ["relu", "elu", "mish"]) == ["relu (2/2)", "mish (1/2)"]


def test_heatmap_labels_mark_weak_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.axes import Axes

    from adact.reporting import figures as plots

    labels: list[str] = []
    real = Axes.set_yticks

    def spy(self: Axes, ticks: object, tick_labels: object = None, **kw: object) -> object:
        labels.extend(tick_labels or [])
        return real(self, ticks, tick_labels, **kw)

    monkeypatch.setattr(Axes, "set_yticks", spy)
    mix = np.array([[[0.5, 0.3, 0.2], [0.34, 0.33, 0.33]], [[0.6, 0.2, 0.2], [0.36, 0.32, 0.32]]])
    weak = np.array([[False, True], [False, True]])
    files = plots.plot_heatmap(mix, ["a", "b"], ["relu", "elu", "mish"], "t", tmp_path / "h", weak=weak)
    assert all(f.exists() for f in files)
    assert labels == ["a → relu (2/2)", "b → relu (2/2), weak 2/2"]
    with pytest.raises(ValueError, match="weak must be"):
        plots.plot_heatmap(mix, ["a", "b"], ["relu", "elu", "mish"], "t", tmp_path / "h", weak=weak[:, :1])
