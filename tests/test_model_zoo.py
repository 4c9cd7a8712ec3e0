"""Models by name, their variants (adact / baseline / optimized), and the training options."""

from __future__ import annotations

import builtins
import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from adact.config import ModelSpec, TrainConfig, parse_model
from adact.data import load_dataset
from adact.model_zoo import check_input, create_model, with_activation
from adact.surgery import adact_units
from adact.training.build import build_model, model_spec
from adact.training.loop import lr_factor, train


def test_parse_model() -> None:
    assert parse_model("ConvNet") == ("convnet", "convnet")
    assert parse_model("torchvision:resnet18") == ("torchvision", "resnet18")
    assert parse_model("TIMM:resnet18") == ("timm", "resnet18")
    assert parse_model("models/mine.py:build") == ("code", "models/mine.py:build")
    assert parse_model("pkg.module:factory") == ("code", "pkg.module:factory")
    for bad in ("resnet18", "torchvision:", "x.py:not-a-name"):
        with pytest.raises(ValueError):
            parse_model(bad)


def test_stem_and_head_follow_the_data() -> None:
    net = create_model("torchvision:resnet18", num_classes=7, in_channels=1)
    assert net.conv1.in_channels == 1 and net.fc.out_features == 7
    check_input(net, "torchvision:resnet18", 1, (16, 16), 7)


def test_user_factory_gets_what_it_accepts(tmp_path: Path) -> None:
    (tmp_path / "only_classes.py").write_text(
        "from torch import nn\n"
        "def build(num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(4, num_classes))\n"
        "def nothing():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(4, 1000))\n")
    net = create_model(f"{tmp_path / 'only_classes.py'}:build", num_classes=5, in_channels=2)
    assert net[0].in_channels == 2 and net[-1].out_features == 5  # the stem is adapted, the head asked for
    net = create_model(f"{tmp_path / 'only_classes.py'}:nothing", num_classes=5, in_channels=3)
    assert net[-1].out_features == 5  # the last Linear was resized
    with pytest.raises(ValueError, match="no callable 'missing'"):
        create_model(f"{tmp_path / 'only_classes.py'}:missing", num_classes=5, in_channels=3)
    with pytest.raises(FileNotFoundError, match="no file"):
        create_model("nowhere.py:build", num_classes=5, in_channels=3)


_BROKEN = {
    "syntax.py": ("def build(num_classes:\n    return None\n", "SyntaxError", "while importing"),
    "raises.py": ("from torch import nn\n\n\ndef build(num_classes):\n    width = {}['width']\n"
                  "    return nn.Linear(2, 2)\n",
                  "KeyError: 'width'", "while calling build(num_classes=5)"),
    "imports.py": ("import no_such_dependency_xyz\n", "ModuleNotFoundError: No module named 'no_such_dependency_xyz'",
                   "while importing"),
}


@pytest.mark.parametrize("name", list(_BROKEN))
def test_errors_in_the_users_model_file_are_theirs(name: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from adact.cli import main
    from adact.errors import UserCodeError

    source, error, when = _BROKEN[name]
    (tmp_path / name).write_text(source)
    spec = f"{tmp_path / name}:build"
    with pytest.raises(UserCodeError, match=rf"your code raised {re.escape(error)}.* {re.escape(when)}") as caught:
        create_model(spec, num_classes=5, in_channels=3)
    frames = caught.value.frames
    assert str(tmp_path / name) in frames and "model_zoo.py" not in frames and "importlib" not in frames
    # the command line: the user's frames, then one line, exit status 2 (not adact's traceback, not 1)
    assert main(["train", "--model", spec, "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1].startswith(f"adact: error: --model {spec}: your code raised")
    assert f'File "{tmp_path / name}"' in err and "adact/model_zoo.py" not in err and "internal error" not in err


def test_an_error_in_the_users_forward_is_theirs(tmp_path: Path) -> None:
    from adact.errors import UserCodeError

    (tmp_path / "fwd.py").write_text(
        "from torch import nn\n\n\nclass Net(nn.Module):\n    def __init__(self, num_classes):\n"
        "        super().__init__()\n        self.fc = nn.Linear(3, num_classes)\n\n"
        "    def forward(self, x):\n        return self.fc(x.mean((2, 3))) + self.offsets['bias']\n\n\n"
        "def build(num_classes):\n    return Net(num_classes)\n")
    spec = f"{tmp_path / 'fwd.py'}:build"
    net = create_model(spec, num_classes=2, in_channels=3)
    with pytest.raises(UserCodeError, match=r"AttributeError: 'Net' object has no attribute 'offsets' while running"
                                            r" the model on 2 blank images") as caught:
        check_input(net, spec, 3, (8, 8), 2)
    frames = caught.value.frames.splitlines()
    assert frames[0] == "Traceback (most recent call last):" and frames[1].startswith(f'  File "{tmp_path / "fwd.py"}"')


def test_a_package_not_on_the_path_gets_a_pythonpath_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mypkg_i27").mkdir()
    (tmp_path / "mypkg_i27" / "__init__.py").write_text("")
    (tmp_path / "mypkg_i27" / "nets.py").write_text("from torch import nn\n\n\ndef build():\n"
                                                    "    return nn.Linear(4, 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    with pytest.raises(ValueError, match=r"cannot import module 'mypkg_i27.nets' .*in the current folder .*PYTHONPATH"):
        create_model("mypkg_i27.nets:build", num_classes=2, in_channels=3)
    monkeypatch.chdir(tmp_path / "mypkg_i27")
    with pytest.raises(ValueError, match=r"add the folder that holds mypkg_i27/ \(or mypkg_i27.py\) to PYTHONPATH"):
        create_model("mypkg_i27.nets:build", num_classes=2, in_channels=3)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(create_model("mypkg_i27.nets:build", num_classes=2, in_channels=3), nn.Module)


def test_too_small_images_are_a_clear_error() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 7), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ValueError, match=r"cannot run on 3x4x4 images .*--image-size"):
        check_input(net, "mine.py:f", 3, (4, 4), 3)


def test_timm_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_timm(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "timm":
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ValueError, match=r"needs timm, which is not installed: pip install 'adact\[timm\]'"):
        create_model("timm:resnet18", num_classes=3, in_channels=3)


def test_variants_share_the_initialisation_and_the_optimized_one_uses_the_choices() -> None:
    torch.manual_seed(0)
    base = with_activation(create_model("torchvision:resnet18", num_classes=3, in_channels=3), "baseline")
    torch.manual_seed(0)
    ada = with_activation(create_model("torchvision:resnet18", num_classes=3, in_channels=3), "adact")
    units = adact_units(ada)
    assert len(units) == 17
    assert torch.equal(base.conv1.weight, ada.conv1.weight)
    choices = ["mish", "elu"] * 8 + ["prelu"]
    torch.manual_seed(0)
    opt = with_activation(create_model("torchvision:resnet18", num_classes=3, in_channels=3), choices)
    assert not adact_units(opt) and torch.equal(opt.conv1.weight, base.conv1.weight)
    kinds = [type(m).__name__ for m in opt.modules() if type(m).__name__ in ("Mish", "ELU", "PReLU")]
    assert kinds.count("Mish") == 8 and kinds.count("ELU") == 8 and kinds.count("PReLU") == 1
    prelu = next(m for m in opt.modules() if isinstance(m, nn.PReLU))
    assert float(prelu.weight.detach()) == 0.25  # from scratch: the default slope
    with pytest.raises(ValueError, match="3 chosen activations for a model with 17"):
        with_activation(create_model("torchvision:resnet18", num_classes=3, in_channels=3), ["relu"] * 3)


def test_lr_schedule() -> None:
    cfg = TrainConfig(epochs=4, warmup_epochs=1, schedule="cosine")
    f = [lr_factor(cfg, s, 10) for s in range(40)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert f[10] == pytest.approx(1.0) and f[-1] < 0.01 and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert {lr_factor(TrainConfig(), s, 10) for s in range(150)} == {1.0}  # the paper: constant


def test_training_options_are_recorded_and_used(tmp_path: Path) -> None:
    data = load_dataset("digits")
    cfg = TrainConfig(model="torchvision:resnet18", activation="adact", epochs=1, optimizer="sgd", lr=0.05,
                      weight_decay=5e-4, schedule="cosine", warmup_epochs=0.5, label_smoothing=0.1,
                      normalize="imagenet", max_train_samples=64, batch_size=32, device="cpu", keep_checkpoints="last")
    result = train(cfg, tmp_path / "run", data=data, quiet=True)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    for key in ("optimizer", "lr", "weight_decay", "schedule", "warmup_epochs", "label_smoothing", "normalize",
                "model", "bf16"):
        assert saved[key] == getattr(cfg, key), key
    assert result["n_adact_units"] == 17
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["momentum"] == 0.9
    # The checkpoint rebuilds the adactified resnet from the file alone.
    model = build_model(ModelSpec.from_json(ckpt["model_kwargs"]))
    model.load_state_dict(ckpt["model"])
    with pytest.raises(ValueError, match="unknown optimizer"):
        replace(cfg, optimizer="adam")
    with pytest.raises(ValueError, match="trains 'adact', 'baseline' or one activation per AdAct site"):
        replace(cfg, activation="relu")
    assert model_spec(replace(cfg, model="convnet", activation="baseline"), data).activation == "relu"


def test_train_prints_what_adactify_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "half_used.py").write_text(
        "import torch\n"
        "import torch.nn.functional as F\n"
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes):\n"
        "        super().__init__()\n"
        "        self.conv, self.act, self.spare = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.GELU()\n"
        "        self.head = nn.Linear(4, num_classes)\n"
        "    def forward(self, x):\n"
        "        x = self.act(self.conv(x))\n"
        "        if x.sum() > -1e9:  # untraceable\n"
        "            x = F.silu(x)\n"
        "        return self.head(x.mean((2, 3)))\n"
        "def build(num_classes):\n"
        "    return Net(num_classes)\n")
    cfg = TrainConfig(model=f"{tmp_path / 'half_used.py'}:build", activation="adact", epochs=1, max_train_samples=32,
                      batch_size=32, device="cpu", fused=False)
    train(cfg, tmp_path / "run", data=load_dataset("digits"), quiet=True)
    out = capsys.readouterr().out
    assert "adactify: 2 units; verified by running" in out
    assert "missed F.silu at '<root>'" in out and "half_used.py:12 (forward)" in out
    assert "dead unit 'spare'" in out
