"""optimize for any pool, and choices that travel: save_choices / apply_choices."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import adact
from adact.models import ConvNet
from adact.surgery import ExportableRReLU, adact_units, adactify, apply_choices, optimize, save_choices
from adact.unit import AdAct

torchvision = pytest.importorskip("torchvision")


def _pin(model: nn.Module, names: list[str]) -> None:
    with torch.no_grad():
        for (_, u), name in zip(adact_units(model), names, strict=True):
            u.logits.zero_()
            u.logits[..., u.candidates.index(name)] = 4.0


@pytest.mark.parametrize(
    ("pool", "choices", "types"),
    [
        (("relu", "gelu", "silu"), ["gelu", "silu", "relu", "gelu"], [nn.GELU, nn.SiLU, nn.ReLU, nn.GELU]),
        (("hardswish", "elu"), ["hardswish", "elu", "elu", "hardswish"], [nn.Hardswish, nn.ELU, nn.ELU, nn.Hardswish]),
        (("rrelu", "mish"), ["rrelu", "mish", "rrelu", "mish"], [ExportableRReLU, nn.Mish, ExportableRReLU, nn.Mish]),
    ],
)
def test_optimize_pools_without_prelu(pool: tuple[str, ...], choices: list[str], types: list[type]) -> None:
    net = adactify(ConvNet(activation="relu"), candidates=pool)
    assert all(u.prelu_weight is None for _, u in adact_units(net))
    _pin(net, choices)
    fixed = optimize(net)
    assert [type(m) for m in fixed.activations()] == types
    assert fixed(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_optimize_channel_granularity_custom_pool() -> None:
    x = torch.randn(2, 3, 32, 32)
    net = adactify(ConvNet(activation="relu"), candidates=("gelu", "hardswish", "prelu"), granularity="channel",
                   example_inputs=x)  # fmt: skip
    units = adact_units(net)
    assert [u.num_channels for _, u in units] == [32, 64, 128, 256]
    _pin(net, ["gelu", "prelu", "hardswish", "prelu"])
    with torch.no_grad():
        units[1][1].prelu_weight.copy_(torch.linspace(0, 1, 64))
    fixed = optimize(net)
    assert [type(m) for m in fixed.activations()] == [nn.GELU, nn.PReLU, nn.Hardswish, nn.PReLU]
    torch.testing.assert_close(fixed.activations()[1].weight.detach(), torch.linspace(0, 1, 64))


class _Net(nn.Module):
    """Module activations, a shared one, and function calls: every kind of site."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.conv(x))
        h = self.act(h + F.gelu(h))
        return self.fc(F.silu(h.mean((2, 3))))


def test_save_and_apply_choices_rebuild_the_optimized_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = adactify(_Net())
    choices = ["mish", "prelu", "rrelu", "elu"]
    _pin(net, choices)
    with torch.no_grad():
        net.act[1].prelu_weight.fill_(0.3)
    path = tmp_path / "choices.json"
    adact.save_choices(net, path)

    data = json.loads(path.read_text())
    assert data["adactify"]["candidates"] == list(adact.DEFAULT_CANDIDATES)
    sites = data["sites"]
    assert [s["path"] for s in sites] == ["act.0", "act.1", "adact_gelu", "adact_silu"]
    assert [s["choice"] for s in sites] == choices
    assert sites[1]["prelu_weight"] == pytest.approx([0.3])
    assert sum(sites[0]["weights"].values()) == pytest.approx(1.0)
    assert {s["granularity"] for s in sites} == {"layer"}

    # A separate program: a fresh, unconverted model of the same architecture.
    fresh = _Net()
    fresh.load_state_dict(net.state_dict(), strict=False)
    final = adact.apply_choices(fresh, path)
    expected = optimize(net)
    assert type(final) is _Net
    assert [type(m) for _, m in _sites(final)] == [nn.Mish, nn.PReLU, ExportableRReLU, nn.ELU]
    assert not any(isinstance(m, AdAct) for m in final.modules())
    final.eval(), expected.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(final(x), expected(x))


def _sites(model: nn.Module) -> list[tuple[str, nn.Module]]:
    names = ("act.0", "act.1", "adact_gelu", "adact_silu")
    return [(n, model.get_submodule(n)) for n in names]


def test_apply_choices_resnet_and_convnet(tmp_path: Path) -> None:
    net = adactify(torchvision.models.resnet18(weights=None))
    _pin(net, ["silu", "mish"] * 8 + ["relu"])
    save_choices(net, tmp_path / "r.json")
    final = apply_choices(torchvision.models.resnet18(weights=None), tmp_path / "r.json")
    assert type(final) is torchvision.models.ResNet
    assert [type(m) for m in final.layer1[0].relu] == [nn.Mish, nn.SiLU]  # module order, per call

    conv = ConvNet(activation="adact")  # units built in, no adactify config in the file
    _pin(conv, ["elu", "mish", "relu", "silu"])
    save_choices(conv, tmp_path / "c.json")
    fixed = apply_choices(ConvNet(activation="relu"), tmp_path / "c.json")
    assert [type(m) for m in fixed.activations()] == [nn.ELU, nn.Mish, nn.ReLU, nn.SiLU]


def test_apply_choices_errors(tmp_path: Path) -> None:
    net = adactify(_Net())
    save_choices(net, tmp_path / "n.json")
    with pytest.raises(ValueError, match="do not match the 4 saved ones"):
        apply_choices(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), tmp_path / "n.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an adact choices file"):
        apply_choices(_Net(), tmp_path / "bad.json")


def test_choices_keep_channel_weights(tmp_path: Path) -> None:
    x = torch.randn(2, 3, 32, 32)
    net = adactify(ConvNet(activation="relu"), granularity="channel", example_inputs=x)
    save_choices(net, tmp_path / "ch.json")
    site = json.loads((tmp_path / "ch.json").read_text())["sites"][0]
    assert site["granularity"] == "channel" and site["num_channels"] == 32
    assert len(site["channel_weights"]) == 32 and len(site["channel_choices"]) == 32
    fixed = apply_choices(ConvNet(activation="relu"), tmp_path / "ch.json")
    assert isinstance(fixed.activations()[0], nn.ReLU)  # uniform mixtures: first candidate
    assert copy.deepcopy(fixed)(x).shape == (2, 10)
