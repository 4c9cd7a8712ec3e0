"""docs/results/tables.py, which prints docs/RESULTS.md's tables, on two tiny reproductions (plain, sharpened)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from adact.experiments.reproduce import paper_config, reproduce
from adact.runs.io import read_json

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "results" / "tables.py"


def _tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("results_tables", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny(out: Path, **kw: Any) -> None:
    base: dict[str, Any] = {"datasets": ["digits"], "seeds": [0, 1], "epochs": 1, "out": str(out),
                            "max_train_samples": 128, "channels": [4, 8, 8, 8], "device": "cpu", "quiet": True,
                            "fused": False, "jobs": 1, "baselines": ["relu", "mish"], "val_fraction": 0.2}
    base.update(kw)
    reproduce(paper_config(**base), log=lambda _line: None)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tables")
    _tiny(root / "plain")
    _tiny(root / "sharp", temperature_schedule=[1.0, 0.1])
    return root / "plain", root / "sharp"


def _acc(folder: Path, seed: int, model: str, key: str = "best_test_acc") -> float:
    return float(read_json(folder / "digits" / f"seed{seed}" / model / "result.json")[key])


def _row(text: str, section: str, first_cell: str) -> list[str]:
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in section {section!r}:\n{body}")


def test_tables_match_the_run_folders(folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    plain, sharp = folders
    assert _tables().main([str(plain), "--sharp", str(sharp)]) == 0
    text = capsys.readouterr().out
    for section in ("Accuracy", "Per seed (best-on-test / validation-selected)", "Paired differences, best-on-test",
                    "Paired differences, validation-selected", "Confidence", "Discretization gap",
                    "PReLU slope inside the mixture", "Sharpening"):
        assert f"## {section}\n" in text

    # Optimized − Mish, best-on-test: the mean of the two per-seed differences, with an interval.
    diffs = [_acc(plain, s, "optimized") - _acc(plain, s, "mish") for s in (0, 1)]
    cell = _row(text, "Paired differences, best-on-test", "digits")[2]
    assert cell.startswith(f"{sum(diffs) / 2:+.4f}".replace("-", "−")) and "[" in cell and "(n=2)" in cell

    # Every AdAct run has its discretization gap, and the table shows the mean argmax − mixture.
    gaps = [read_json(plain / "digits" / f"seed{s}" / "adact" / "result.json")["discretization_gap"] for s in (0, 1)]
    mean_gap = sum(g["argmax_acc"] - g["mixture_acc"] for g in gaps) / 2
    row = _row(text, "Discretization gap", "digits")
    assert row[3].startswith(f"{mean_gap:+.4f}".replace("-", "−"))
    assert _row(text, "Discretization gap", "digits, sharpened")[1].endswith("(n=2)")

    # Sharpened − plain, paired by seed, for the Optimized model.
    d = [_acc(sharp, s, "optimized") - _acc(plain, s, "optimized") for s in (0, 1)]
    sharpening = text.split("## Sharpening\n", 1)[1]
    line = next(ln for ln in sharpening.splitlines() if "| best-on-test | Optimized |" in ln)
    assert f"{sum(d) / 2:+.4f}".replace("-", "−") in line

    # The learned PReLU slope of every layer: its range over the seeds and how many are negative.
    slopes = [[c["prelu_slope"] for c in read_json(plain / "digits" / f"seed{s}" / "adact" / "result.json")
               ["best_weights"]["confidence"]] for s in (0, 1)]
    row = _row(text, "PReLU slope inside the mixture", "digits")
    assert row[1] == "2" and len(row) == 6
    for i, cell in enumerate(row[2:]):
        lo, hi = min(sl[i] for sl in slopes), max(sl[i] for sl in slopes)
        neg = sum(sl[i] < 0 for sl in slopes)
        assert cell == f"{lo:+.2f} to {hi:+.2f} ({neg}/2 < 0)".replace("-", "−")

    # The confidence table: one row per layer (4) for each folder (2), the sharpened one labelled.
    conf = text.split("## Confidence\n", 1)[1].split("\n## ", 1)[0]
    assert conf.count("digits, sharpened") == 1 and len([ln for ln in conf.splitlines() if "(min 0." in ln]) == 8


def test_tables_refuse_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _tables().main([str(tmp_path / "nowhere")])
    assert "is not a folder" in capsys.readouterr().err


def test_script_runs_as_a_program(folders: tuple[Path, Path]) -> None:
    import subprocess

    out = subprocess.run([sys.executable, str(SCRIPT), str(folders[0])], capture_output=True, text=True, check=True)
    assert "## Accuracy" in out.stdout and "## Sharpening" not in out.stdout


def test_gap_runs_fill_seeds_without_a_gap(folders: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A published folder whose seed 0 kept no gap, plus that seed retrained for it (--gap-runs)."""
    import json
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(folders[0], plain)
    result = plain / "digits" / "seed0" / "adact" / "result.json"
    r = read_json(result)
    del r["discretization_gap"]
    result.write_text(json.dumps(r))
    rerun = folders[0] / "digits" / "seed0" / "adact"  # stands in for an `adact train` run of seed 0
    assert _tables().main([str(plain), "--gap-runs", str(rerun)]) == 0
    text = capsys.readouterr().out
    row = _row(text, "Discretization gap", "digits, with seeds 0 retrained for the gap")
    assert row[1].endswith("(n=2)") and row[4] == "—"
    assert _row(text, "Discretization gap", "digits")[1].endswith("(n=1)")
    detail = text.split("## Discretization gap per run\n", 1)[1]
    assert "| digits | retrained for the gap | 0 |" in detail and "| digits | reproduce | 1 |" in detail
    with pytest.raises(ValueError, match="no discretization gap"):
        _tables().main([str(plain), "--gap-runs", str(plain / "digits" / "seed0" / "adact")])
