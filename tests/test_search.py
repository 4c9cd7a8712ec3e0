"""`adact search` end to end on tiny image folders: torchvision, timm and a user's model file; resume."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import adact.experiments.workers
from adact.cli import main
from adact.experiments.plan import resolved_jobs, validate
from adact.runs.io import read_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ("cat", "dog", "fox")


def write_image_folder(root: Path, *, per_class: dict[str, int], size: int = 16, corrupt: bool = True,
                       gray: bool = False) -> Path:
    """``root/<split>/<class>/*``: PNG and JPEG images whose brightness encodes the class, one corrupt file."""
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = 40 + 80 * c
                shape = (size, size) if gray else (size, size, 3)
                pixels = np.clip(base + rng.integers(-30, 30, shape), 0, 255).astype(np.uint8)
                img = Image.fromarray(pixels, "L" if gray else "RGB")
                if i % 2:
                    img.save(folder / f"{i}.jpg", quality=95)
                else:
                    img.save(folder / f"{i}.png")
    if corrupt:
        first = next(iter(per_class))
        (root / first / CLASSES[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


USER_MODEL = '''
import torch
from torch import nn
import torch.nn.functional as F


class Tiny(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = F.relu(self.conv2(x))  # a function call: adactify traces it
        return self.head(x.mean((2, 3)))


def build(num_classes=10, in_channels=3):
    return Tiny(num_classes, in_channels)
'''


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images") / "pets", per_class={"train": 8, "val": 4})


def _search(out: Path, folder: Path, model: str, *extra: str) -> int:
    return main(["search", "--model", model, "--dataset", f"imagefolder:{folder}", "--image-size", "32",
                 "--epochs", "1", "--seeds", "0", "--out", str(out), "--quiet", "--jobs", "1",
                 "--batch-size", "8", *extra])


def _check_outputs(out: Path, baseline_units: int | None = None) -> dict[str, object]:
    for name in ("table.md", "table.csv", "choices.md", "choices.json", "report.md", "results.json", "search.json"):
        assert (out / name).is_file(), name
    results = read_json(out / "results.json")
    slug = "imagefolder-pets"
    for model in ("adact", "baseline", "optimized"):
        assert read_json(out / slug / "seed0" / model / "result.json")["status"] == "done"
    choices = read_json(out / "choices.json")
    ds = next(iter(choices))
    per_seed = choices[ds]["per_seed"]["0"]
    assert per_seed["choices"] and len(per_seed["choices"]) == len(per_seed["paths"])
    # The optimized run trained exactly the AdAct run's choices, and has no AdAct units left.
    opt = read_json(out / slug / "seed0" / "optimized" / "result.json")
    assert opt["config"]["activation"] == per_seed["choices"] and opt["n_adact_units"] == 0
    base = read_json(out / slug / "seed0" / "baseline" / "result.json")
    assert base["config"]["activation"] == "baseline" and base["n_adact_units"] == 0
    table = (out / "table.md").read_text()
    assert "AdAct − Baseline" in table and "paper" not in table.split("\n## ")[1].splitlines()[2]
    png = out / "figures" / f"{slug}_weights.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    report = (out / "report.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", report):
        assert (out / link).exists(), link
    return results


def _rerun_is_resumed(out: Path, folder: Path, model: str, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str], *extra: str) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(adact.experiments.workers, "train", no_training)
        assert _search(out, folder, model, *extra) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 3


def test_search_torchvision_resnet18_on_an_image_folder(folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert _search(tmp_path / "out", folder, "torchvision:resnet18") == 0
    captured = capsys.readouterr()
    assert re.search(r"adact: warning: skipped image \S+broken.png: cannot decode it", captured.err)
    results = _check_outputs(tmp_path / "out")
    choices = read_json(tmp_path / "out" / "choices.json")
    assert choices[next(iter(choices))]["n_adact_units"] == 17  # resnet18: stem + 2 per BasicBlock x 8
    info = results["runs"][0]
    assert info["status"] == "done"
    # The bad image was skipped and counted; the split is the folder's own train/ and val/.
    assert "train=24" in captured.out and "test=12" in captured.out
    assert "skipped 1 image(s) that cannot be decoded" in captured.out
    _rerun_is_resumed(tmp_path / "out", folder, "torchvision:resnet18", monkeypatch, capsys)


def test_search_timm_resnet18(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    assert _search(tmp_path / "out", folder, "timm:resnet18") == 0
    _check_outputs(tmp_path / "out")
    _rerun_is_resumed(tmp_path / "out", folder, "timm:resnet18", monkeypatch, capsys)


def test_search_user_model_file(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mymodel.py").write_text(USER_MODEL)
    monkeypatch.chdir(tmp_path)
    assert _search(tmp_path / "out", folder, "mymodel.py:build", "--val-fraction", "0.25") == 0
    _check_outputs(tmp_path / "out")
    paths = read_json(tmp_path / "out" / "choices.json")
    entry = paths[next(iter(paths))]["per_seed"]["0"]
    assert entry["paths"] == ["act", "adact_relu"]  # the GELU module and the F.relu call
    assert "validation-selected epoch" in (tmp_path / "out" / "report.md").read_text()
    # The seed's choices file builds the optimized model in another program with adact.apply_choices.
    import adact

    spec = importlib.util.spec_from_file_location("mymodel_again", tmp_path / "mymodel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    final = adact.apply_choices(module.build(num_classes=3, in_channels=3),
                                tmp_path / "out" / "imagefolder-pets" / "seed0" / "choices.json")
    names = {"relu": "ReLU", "elu": "ELU", "leaky_relu": "LeakyReLU", "prelu": "PReLU", "rrelu": "RReLU",
             "silu": "SiLU", "mish": "Mish"}
    plain = [type(m).__name__.replace("Exportable", "") for m in final.modules() if type(m).__name__.replace(
        "Exportable", "") in names.values()]
    assert plain == [names[c] for c in entry["choices"]]
    _rerun_is_resumed(tmp_path / "out", folder, "mymodel.py:build", monkeypatch, capsys, "--val-fraction", "0.25")


def test_many_units_get_a_heatmap_and_a_row_per_unit(folder: Path, tmp_path: Path) -> None:
    from adact.reporting.figures import plot_heatmap

    rng = np.random.default_rng(0)
    mix = rng.dirichlet(np.ones(7), size=(2, 50))
    files = plot_heatmap(mix, [f"layer{i}.act" for i in range(50)], ["relu", "elu", "leaky_relu", "prelu", "rrelu",
                                                                      "silu", "mish"], "50 units", tmp_path / "h")
    png = next(f for f in files if f.suffix == ".png")
    from matplotlib.image import imread

    h, w = imread(png).shape[:2]
    assert h > w  # one row per unit: taller than wide, not 50 bar groups side by side


def test_search_errors_are_one_line(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "--model", "torchvision:nosuchnet", "--dataset", f"imagefolder:{folder}",
                 "--epochs", "1", "--seeds", "0", "--out", str(tmp_path / "o")]) == 2
    assert "torchvision has no model 'nosuchnet'" in capsys.readouterr().err
    assert main(["search", "--model", "timm:resnet18", "--pretrained", "--dataset", f"imagefolder:{folder}",
                 "--epochs", "1", "--seeds", "0", "--out", str(tmp_path / "o2")]) == 2
    assert "adact: error: --pretrained" in capsys.readouterr().err
    assert main(["search", "--dataset", "imagefolder:/nowhere", "--out", str(tmp_path / "o3")]) == 2
    assert "imagefolder folder not found" in capsys.readouterr().err
    assert main(["search", "--model", "torchvision:resnet18", "--pretrained", "--dataset", f"imagefolder:{folder}",
                 "--out", str(tmp_path / "o4")]) == 2
    assert "not at hand" in capsys.readouterr().err
    assert not (tmp_path / "o4").exists()


def test_train_takes_a_model_and_the_training_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--model", "torchvision:resnet18", "--dataset", "digits", "--epochs", "1",
                 "--max-train-samples", "32", "--batch-size", "16", "--optimizer", "sgd", "--lr", "0.01",
                 "--schedule", "cosine", "--warmup-epochs", "0.5", "--label-smoothing", "0.1",
                 "--normalize", "imagenet", "--image-size", "24", "--out", str(run), "--quiet"]) == 0
    config = read_json(run / "config.json")
    assert (config["model"], config["optimizer"], config["schedule"], config["image_size"]) == (
        "torchvision:resnet18", "sgd", "cosine", 24)
    assert read_json(run / "result.json")["n_adact_units"] == 17
    assert main(["analyze", str(run)]) == 0
    assert "layer1.0.relu.0" in capsys.readouterr().out
    assert main(["train", "--model", "torchvision:resnet18", "--activation", "relu", "--dataset", "digits",
                 "--out", str(tmp_path / "r2")]) == 2
    assert "trains 'adact', 'baseline' or one activation per AdAct site" in capsys.readouterr().err


def test_search_extra_baselines_sharpening_gap_and_confidence(folder: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14 on search: --baselines adds one-activation models beside the model as written, the
    sharpening reaches the AdAct run only, and the report has the gap table and the confidences."""
    (tmp_path / "mymodel.py").write_text(USER_MODEL)
    out = tmp_path / "out"
    assert _search(out, folder, f"{tmp_path / 'mymodel.py'}:build", "--baselines", "mish",
                   "--entropy-weight", "0.1", "--adact-lr-mult", "2") == 0
    seed0 = out / "imagefolder-pets" / "seed0"
    assert sorted(p.name for p in seed0.iterdir() if p.is_dir()) == ["adact", "baseline", "mish", "optimized"]
    mish = read_json(seed0 / "mish" / "result.json")
    # A named model takes one activation per site: Mish at both of the user model's sites.
    assert mish["status"] == "done" and mish["config"]["activation"] == ["mish", "mish"] and mish["n_adact_units"] == 0
    assert (mish["config"]["entropy_weight"], mish["config"]["adact_lr_mult"]) == (0.0, 1.0)
    adact_result = read_json(seed0 / "adact" / "result.json")
    assert (adact_result["config"]["entropy_weight"], adact_result["config"]["adact_lr_mult"]) == (0.1, 2.0)
    assert "discretization_gap" in adact_result
    table = (out / "table.md").read_text()
    assert "AdAct − Baseline [95% CI]" in table and "Optimized − Mish [95% CI]" in table
    assert "Discretization gap" in table
    results = read_json(out / "results.json")
    e = results["summary"][next(iter(results["summary"]))]
    assert list(e["models"]) == ["adact", "baseline", "mish", "optimized"] and e["gap"]["mixture"]["n"] == 1
    assert "margin" in (out / "choices.md").read_text()
    report = (out / "report.md").read_text()
    assert "entropy penalty λ = 0.1" in report and "Mish everywhere" in report
    assert read_json(out / "search.json")["config"]["baselines"] == ["baseline", "mish"]


def test_search_jobs_and_torchrun_do_not_mix(monkeypatch: pytest.MonkeyPatch) -> None:
    from adact.config import SearchConfig, TrainConfig

    cfg = SearchConfig(datasets=["digits"], seeds=[0, 1], train=TrainConfig(device="cpu"), baselines=["relu"])
    assert cfg.baselines == ["baseline", "relu"]  # the model as written stays search's first baseline
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert resolved_jobs(cfg) == 1
    cfg.jobs = 2
    with pytest.raises(ValueError, match="use one or the other"):
        validate(cfg)
