"""Reports of a lower-is-better metric (a language model's held-out loss) say so; image reports are unchanged.

A language model's result.json names ``"metric": "loss"`` and ``"higher_is_better": false`` and
carries ``best_test_loss`` / ``final_test_loss`` / ``val_selected_test_loss`` (and its gap
``mixture_loss`` / ``argmax_loss``). The end-to-end tests take a tiny real image search and
rewrite its result.json files into that schema, so every file a report reads is a real one.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from adact.config import SearchConfig, TrainConfig
from adact.experiments.search import _describe, search
from adact.experiments.workers import RunTask, best_outcome
from adact.reporting.analyze import analyze_run
from adact.reporting.metric import ACC, LOSS, MIXED, Metric, metric_of_summary
from adact.reporting.records import RunRecord, collect
from adact.reporting.render import rerender
from adact.reporting.stats import build_summary
from adact.reporting.tables import render_gap_md, render_gap_text, render_table_csv, render_table_md
from adact.runs.io import atomic_write_json, read_json

#: Fabricated best-on-test losses per model, seed 0; seed s adds 0.05 s. Optimized < AdAct < Mish < Baseline.
BEST = {"adact": 2.0, "baseline": 2.2, "mish": 2.1, "optimized": 1.9}
TEXT = "text:tiny.txt"


def _losses(model: str, seed: int) -> dict[str, float]:
    best = BEST[model] + 0.05 * seed
    return {"best_test_loss": best, "final_test_loss": best + 0.1, "val_selected_test_loss": best + 0.02}


def _lm_result(model: str, seed: int, epoch: int = 1) -> dict[str, Any]:
    """A language model's result.json fields (the contract of issue 23)."""
    res: dict[str, Any] = {"status": "done", "metric": "loss", "higher_is_better": False, "best_epoch": epoch,
                           "val_best_epoch": epoch, "epochs_run": epoch, "n_params": 5000, "n_adact_units": 0,
                           "n_adact_params": 0, **_losses(model, seed)}
    res["best_test_ppl"] = math.exp(res["best_test_loss"])
    if model == "adact":
        mixture = res["best_test_loss"]
        argmax = mixture + 0.3 + 0.1 * seed
        res["discretization_gap"] = {"metric": "loss", "mixture_loss": mixture, "argmax_loss": argmax,
                                     "gap": argmax - mixture, "bn_batches": 0, "epoch": epoch}
    return res


def _lm_records(dataset: str = TEXT) -> list[RunRecord]:
    return [RunRecord(dataset, "text-tiny", seed, model, "done", result=_lm_result(model, seed))
            for model in ("adact", "baseline", "mish", "optimized") for seed in (0, 1, 2)]


def _image_records() -> list[RunRecord]:
    """Image runs as result.json wrote them before it named a metric (so: accuracy)."""
    recs = []
    for model, acc in {"adact": 0.9, "baseline": 0.88, "mish": 0.91, "optimized": 0.92}.items():
        for seed in (0, 1):
            res: dict[str, Any] = {"best_test_acc": acc + 0.01 * seed, "final_test_acc": acc,
                                   "val_selected_test_acc": None}
            if model == "adact":
                res["discretization_gap"] = {"mixture_acc": acc, "argmax_acc": acc - 0.05, "gap": -0.05}
            recs.append(RunRecord("digits", "digits", seed, model, "done", result=res))
    return recs


def test_metric_of_a_result() -> None:
    assert Metric.of(None) == ACC and Metric.of({"best_test_acc": 0.9}) == ACC  # before the metric was recorded
    assert Metric.of({"metric": "acc", "higher_is_better": True}) == ACC
    assert Metric.of({"metric": "loss", "higher_is_better": False}) == LOSS
    assert LOSS.key("best") == "best_test_loss" and LOSS.key("val") == "val_selected_test_loss"
    assert ACC.key("final") == "final_test_acc"
    assert LOSS.ppl(2.0) == pytest.approx(math.exp(2.0)) and ACC.ppl(0.9) is None
    assert metric_of_summary({}) == ACC
    assert metric_of_summary({"a": {"metric": "acc"}, "b": {"metric": "loss", "higher_is_better": False}}) == MIXED


def test_records_read_the_runs_own_metric() -> None:
    rec = RunRecord(TEXT, "text-tiny", 1, "adact", "done", result=_lm_result("adact", 1))
    assert rec.metric == LOSS and rec.higher_is_better is False
    assert rec.value("best") == pytest.approx(2.05) and rec.value("final") == pytest.approx(2.15)
    assert rec.value("val") == pytest.approx(2.07)
    out = rec.to_json()
    assert out["best_test_loss"] == pytest.approx(2.05) and out["val_selected_test_loss"] == pytest.approx(2.07)
    assert out["metric"] == "loss" and out["higher_is_better"] is False
    assert out["best_test_ppl"] == pytest.approx(math.exp(2.05))
    assert not any(k.endswith("_acc") for k in out)
    img = _image_records()[0].to_json()  # an image run keeps exactly its old keys
    assert "metric" not in img and "higher_is_better" not in img and img["best_test_acc"] == pytest.approx(0.9)
    assert RunRecord(TEXT, "t", 0, "adact", "missing").metric is None


def test_summary_of_losses_is_of_the_losses() -> None:
    e = build_summary(_lm_records(), [TEXT], baselines=["baseline", "mish"], paper=False)[TEXT]
    assert e["metric"] == "loss" and e["higher_is_better"] is False
    assert e["models"]["adact"]["best"]["mean"] == pytest.approx(2.05)
    assert e["models"]["baseline"]["final"]["mean"] == pytest.approx(2.35)
    assert e["models"]["optimized"]["val"]["mean"] == pytest.approx(1.97)
    # Model − baseline, not flipped: AdAct's loss is 0.2 lower, so the difference is −0.2.
    d = e["diffs"]["adact"]["baseline"]["best"]
    assert d["mean"] == pytest.approx(-0.2) and d["n"] == 3
    assert e["diffs"]["optimized"]["mish"]["final"]["mean"] == pytest.approx(-0.2)
    g = e["gap"]  # read from mixture_loss / argmax_loss
    assert g["mixture"]["mean"] == pytest.approx(2.05) and g["argmax"]["mean"] == pytest.approx(2.45)
    assert g["argmax_minus_mixture"]["mean"] == pytest.approx(0.4)
    assert g["optimized_minus_argmax"]["mean"] == pytest.approx(1.95 - 2.45)
    # A dataset none of whose runs has ended yet is labelled by its kind.
    empty = build_summary([], [TEXT, "digits"], baselines=["baseline"], paper=False)
    assert empty[TEXT]["metric"] == "loss" and empty["digits"]["metric"] == "acc"


def test_loss_tables_say_lower_is_better_and_give_perplexity() -> None:
    summary = build_summary(_lm_records(), [TEXT], baselines=["baseline", "mish"], paper=False)
    md = render_table_md(summary, "best")
    assert "accuracy" not in md.lower()
    assert "Lower loss is better: a negative difference (model − baseline) means the model is better" in md
    row = next(line for line in md.splitlines() if line.startswith(f"| `{TEXT}`"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2.0500 ± 0.0500 (n=3)" and cells[5].startswith("−0.2000 [")
    ppl = f"AdAct {math.exp(2.05):.2f}, Baseline {math.exp(2.25):.2f}, Mish {math.exp(2.15):.2f}, " \
          f"Optimized {math.exp(1.95):.2f}"
    assert f"Perplexity exp(mean loss), `{TEXT}`: {ppl}." in md
    rows = list(csv.DictReader(io.StringIO(render_table_csv(summary))))
    assert [r["metric"] for r in rows] == ["best_test_loss", "final_test_loss", "val_selected_test_loss"]
    assert float(rows[0]["adact_minus_baseline_mean"]) == pytest.approx(-0.2)
    gap = render_gap_md(summary)
    assert "2.0500 ± 0.0500 (n=3)" in gap and "+0.4000 [" in gap
    text = render_gap_text(_lm_result("adact", 0)["discretization_gap"])
    assert text == ("discretization gap in test loss (lower is better): mixture 2.0000, argmax (no retraining) "
                    "2.3000, argmax - mixture +0.3000 (positive: the argmax model is worse)\n")


def test_image_tables_are_unchanged() -> None:
    summary = build_summary(_image_records(), ["digits"], baselines=["baseline"], paper=False)
    assert summary["digits"]["metric"] == "acc" and summary["digits"]["higher_is_better"] is True
    md = render_table_md(summary, "best")
    assert md.splitlines()[-1].startswith("| `digits` | 0.9050 ± 0.0071 (n=2) |")  # nothing appended
    assert "better" not in md and "Perplexity" not in md
    gap = {"mixture_acc": 0.9, "argmax_acc": 0.85, "gap": -0.05, "bn_batches": 2, "epoch": 1}
    assert render_gap_text(gap) == ("discretization gap: mixture 0.9000, argmax (no retraining, BatchNorm "
                                    "recomputed on 2 training batches) 0.8500, argmax - mixture -0.0500\n")
    assert render_gap_text({**gap, "metric": "acc"}) == render_gap_text(gap)


def test_mixed_datasets_name_their_metric_per_row() -> None:
    recs = _image_records() + [r for r in _lm_records() if r.model in ("adact", "baseline", "optimized")]
    summary = build_summary(recs, ["digits", TEXT], baselines=["baseline"], paper=False)
    assert summary["digits"]["metric"] == "acc" and summary[TEXT]["metric"] == "loss"
    assert summary["digits"]["models"]["adact"]["best"]["mean"] == pytest.approx(0.905)
    assert summary[TEXT]["models"]["adact"]["best"]["mean"] == pytest.approx(2.05)
    md = render_table_md(summary, "best")
    assert "| `digits` (test accuracy) |" in md
    assert f"| `{TEXT}` (held-out loss (nats/token, lower is better)) |" in md
    assert "Lower loss is better" in md and f"Perplexity exp(mean loss), `{TEXT}`" in md
    assert "Perplexity exp(mean loss), `digits`" not in md


def test_progress_lines_name_the_metric() -> None:
    task = RunTask(TEXT, 0, "adact", "run", {}, quiet=True)
    lm = best_outcome({"metric": "loss", "higher_is_better": False, "best_test_loss": 1.88341})
    assert lm == {"metric": "loss", "higher_is_better": False, "best_test_loss": 1.88341}
    line = _describe(task, {"status": "done", "seconds": 12.0, **lm})
    assert line == "text:tiny seed 0 AdAct: done, best test loss 1.8834 (12 s)"
    img = best_outcome({"metric": "acc", "higher_is_better": True, "best_test_acc": 0.91})
    assert img == {"best_test_acc": 0.91}  # an image outcome is what it always was
    assert _describe(RunTask("digits", 1, "baseline", "run", {}, quiet=True),
                     {"status": "done", "seconds": 3.0, **img}) == "digits seed 1 Baseline: done, best test acc 0.9100 (3 s)"


# ---- end to end: a real (tiny) image search, and the same folder rewritten as a language model's ----


@pytest.fixture(scope="module")
def image_search(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lower") / "image"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = replace(TrainConfig(), epochs=1, max_train_samples=96, channels=[4, 8, 8, 8], device="cpu",
                    fused=False, val_fraction=0.2)
        search(SearchConfig(datasets=["digits"], seeds=[0, 1], out=str(out), jobs=1, quiet=True, train=t,
                            baselines=["mish"]), log=lambda _line: None)
    finally:
        torch.set_num_threads(before)
    return out


def _as_language_model(image: Path, out: Path) -> Path:
    """The image search folder as a language model's: text dataset, loss results and gaps."""
    shutil.copytree(image, out)
    (out / "digits").rename(out / "text-tiny")
    manifest = read_json(out / "search.json")
    manifest["config"]["datasets"], manifest["config"]["out"] = [TEXT], str(out)
    atomic_write_json(out / "search.json", manifest)
    for path in (out / "text-tiny").glob("seed*/*/result.json"):
        old = read_json(path)
        seed, model = int(path.parent.parent.name[4:]), path.parent.name
        lm = _lm_result(model, seed, old["best_epoch"])
        if old.pop("val_selected_test_acc") is None:  # no validation split: none for the language model either
            lm["val_selected_test_loss"] = None
        del old["best_test_acc"], old["final_test_acc"]
        if "discretization_gap" in lm:  # the AdAct run: its gap of the epoch its checkpoint holds
            lm["discretization_gap"]["epoch"] = old["discretization_gap"]["epoch"]
        # The run's own counts and epochs stay; its metric, values and gap become the language model's.
        keep = {k: v for k, v in old.items() if k not in ("metric", "higher_is_better", "discretization_gap")}
        atomic_write_json(path, {**lm, **keep, "config": {**old["config"], "dataset": TEXT}})
    return out


def test_loss_report_says_loss_everywhere(image_search: Path, tmp_path: Path) -> None:
    out = _as_language_model(image_search, tmp_path / "lm")
    results = rerender(out)
    assert results["problems"] == []
    e = results["summary"][TEXT]
    assert e["metric"] == "loss" and e["models"]["optimized"]["best"]["mean"] == pytest.approx(1.925)
    assert e["gap"]["mixture"]["mean"] == pytest.approx(2.025)
    table, report = (out / "table.md").read_text(), (out / "report.md").read_text()
    for text in (table, report, results["table_text"]):
        assert "accuracy" not in text.lower()
    assert table.startswith("# Held-out loss (nats/token, lower is better) over seeds [0, 1], 1 epochs\n")
    assert "## Best-on-test (the evaluation with the lowest test loss, optimistic)" in table
    assert "Best-on-test picks the evaluation with the lowest test loss, so it is optimistic" in table
    assert "Lower loss is better: a negative difference (model − baseline)" in table
    assert "Mixture: the AdAct model's best-on-test held-out loss (nats/token; lower is better)" in table
    assert "a large positive one (the argmax model's loss is higher, so it is worse)" in report
    assert ("## Best-on-test loss (the lowest test loss over the evaluations; nats/token, lower is better)"
            in report)
    assert "## Final-epoch loss" in report and "## Validation-selected loss" in report
    assert "Perplexity exp(mean loss)" in report
    # The per-run table: AdAct seed 1's best and final losses, its perplexity, its gap.
    row = next(line for line in report.splitlines() if line.startswith(f"| `{TEXT}` | 1 | AdAct |"))
    assert f"| 2.0500 (ppl {math.exp(2.05):.2f}) | 2.1500 | +0.4000 |" in row
    assert results["table_text"].startswith("Held-out loss (nats/token, lower is better) -- best-on-test (the "
                                            "evaluation with the lowest test loss, optimistic)\n")
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert rows[0]["metric"] == "best_test_loss" and float(rows[0]["adact_mean"]) == pytest.approx(2.025)
    run = next(r for r in results["runs"] if r["model"] == "adact" and r["seed"] == 0)
    assert run["best_test_loss"] == pytest.approx(2.0) and "best_test_acc" not in run
    # The figures are drawn for the loss folder too (they show weights, which no metric changes).
    for kind in ("weights", "trajectories"):
        assert all((out / p).is_file() for p in results["figures"][TEXT][kind])
    # `adact analyze` of one AdAct run reads its gap in loss units.
    text, files = analyze_run(out / "text-tiny" / "seed0" / "adact", tmp_path / "one")
    assert "discretization gap in test loss (lower is better): mixture 2.0000" in text and files
    _, records = collect(out)
    assert {r.metric for r in records} == {LOSS}


def test_image_report_keeps_its_words_and_bytes(image_search: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(image_search, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*")
              if p.is_file() and p.suffix in (".md", ".csv", ".png", ".svg") and "seed" not in str(p)}
    results = rerender(out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and p.suffix in (".md", ".csv", ".png", ".svg") and "seed" not in str(p)}
    assert before == after and len(before) > 6
    report, table = (out / "report.md").read_text(), (out / "table.md").read_text()
    assert table.startswith("# Test accuracy over seeds [0, 1], 1 epochs\n")
    assert "## Best-on-test accuracy\n" in report and "## Final-epoch accuracy\n" in report
    assert "Best-on-test picks the epoch by its test accuracy, so it is optimistic" in table
    assert "Mixture: the AdAct model's best-on-test accuracy." in report
    assert "lower is better" not in report.lower() and "ppl" not in report and "Perplexity" not in report
    assert results["summary"]["digits"]["metric"] == "acc"
    assert "metric" not in results["runs"][0] and "best_test_acc" in results["runs"][0]
