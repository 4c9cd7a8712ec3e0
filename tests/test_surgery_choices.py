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
from adact.surgery import (
    ChoicesFileError,
    ExportableRReLU,
    adact_units,
    adactify,
    apply_choices,
    optimize,
    save_choices,
)
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


# --- apply_choices is all or nothing ---------------------------------------------------------

_N_SITES = 4  # _Net's sites: act.0, act.1, adact_gelu, adact_silu


def _edit(data: dict, what: str) -> object:
    """``data`` (a good _Net choices file) damaged one way; returns the JSON value to write."""
    sites = data["sites"]
    if what == "list":
        return [data]
    if what == "no sites":
        del data["sites"]
    elif what == "sites not a list":
        data["sites"] = {"act.0": "relu"}
    elif what == "site a string":
        data["sites"][3] = "act.0"
    elif what == "no choice":
        del sites[3]["choice"]
    elif what == "unknown choice":
        sites[3]["choice"] = "bogus_act"
    elif what == "choice outside the candidates":
        sites[3]["choice"] = "tanh"
    elif what == "slope of the wrong shape":
        sites[3]["choice"], sites[3]["prelu_weight"] = "prelu", [0.1, 0.2, 0.3]
    elif what == "slope not numbers":
        sites[3]["prelu_weight"] = ["a"]
    elif what == "bad num_channels":
        sites[3]["num_channels"] = -2
    elif what == "duplicate site":
        sites[3]["path"] = sites[2]["path"]
    elif what == "unknown candidate":
        data["adactify"]["candidates"] = ["relu", "bogus_act"]
    elif what == "unimportable target":
        data["adactify"]["targets"] = ["relu", "no_such_module_xyz:Act"]
    elif what == "a site too many":
        sites.append(dict(sites[3], path="fc.act"))
    elif what == "other order":
        sites[2], sites[3] = sites[3], sites[2]
    elif what == "other architecture":
        data["sites"] = [dict(sites[0], path="features.1")]
    return data


_BAD = ["list", "no sites", "sites not a list", "site a string", "no choice", "unknown choice",
        "choice outside the candidates", "slope of the wrong shape", "slope not numbers", "bad num_channels",
        "duplicate site", "unknown candidate", "unimportable target", "a site too many", "other order",
        "other architecture"]  # fmt: skip


def _fingerprint(model: nn.Module) -> tuple[list[tuple[str, str]], dict[str, Tensor], list[str]]:
    return ([(n, type(m).__name__) for n, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()}, sorted(model.__dict__))  # fmt: skip


def test_apply_choices_leaves_the_model_unchanged_on_every_bad_file(tmp_path: Path) -> None:
    searched = adactify(_Net())
    _pin(searched, ["mish", "prelu", "rrelu", "elu"])
    good = tmp_path / "good.json"
    save_choices(searched, good)
    torch.manual_seed(1)
    model = _Net()
    x = torch.randn(2, 3, 8, 8)
    before, out = _fingerprint(model), model(x)
    for what in _BAD:
        bad = tmp_path / f"{what.replace(' ', '_')}.json"
        bad.write_text(json.dumps(_edit(json.loads(good.read_text()), what)))
        with pytest.raises(ValueError, match=f"apply_choices: '{bad}'") as caught:
            apply_choices(model, bad)
        assert isinstance(caught.value, ChoicesFileError) and isinstance(caught.value, adact.errors.UserError), what
        if what not in ("list", "no sites", "sites not a list", "unknown candidate", "unimportable target",
                        "a site too many", "other order", "other architecture", "site a string"):
            assert "site 'adact_silu'" in str(caught.value) or "site 'adact_gelu'" in str(caught.value), what
        after = _fingerprint(model)
        assert after[0] == before[0] and after[2] == before[2], what
        assert after[1].keys() == before[1].keys() and all(torch.equal(after[1][k], v) for k, v in before[1].items())
        assert torch.equal(model(x), out), what
    # the model is still whole: the good file converts it, and strict=False applies a choice outside the pool
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(_edit(json.loads(good.read_text()), "choice outside the candidates")))
    final = apply_choices(model, outside, strict=False)
    assert [type(m) for _, m in _sites(final)] == [nn.Mish, nn.PReLU, ExportableRReLU, nn.Tanh]


def test_apply_choices_names_the_fault(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    save_choices(adactify(_Net()), path)
    messages = {}
    for what in ("unknown choice", "choice outside the candidates", "slope of the wrong shape", "other architecture"):
        path.write_text(json.dumps(_edit(json.loads(json.dumps(_saved(tmp_path))), what)))
        with pytest.raises(ValueError) as caught:
            apply_choices(_Net(), path)
        messages[what] = str(caught.value)
    assert "unknown activation 'bogus_act'" in messages["unknown choice"]
    assert "'tanh' is not one of the candidates" in messages["choice outside the candidates"]
    assert "strict=False" in messages["choice outside the candidates"]
    assert "'prelu_weight' has 3 values" in messages["slope of the wrong shape"]
    assert "do not match the 1 saved ones" in messages["other architecture"]
    path.write_bytes(b"\xff\x00 not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        apply_choices(_Net(), path)


def _saved(tmp_path: Path) -> dict:
    save_choices(adactify(_Net()), tmp_path / "fresh.json")
    return json.loads((tmp_path / "fresh.json").read_text())


def test_apply_choices_checks_prelu_slopes_against_the_channels_seen(tmp_path: Path) -> None:
    x = torch.randn(2, 3, 32, 32)
    net = adactify(ConvNet(activation="relu"), candidates=("relu", "prelu"), granularity="channel", example_inputs=x)
    _pin(net, ["prelu", "relu", "relu", "relu"])
    path = tmp_path / "ch.json"
    save_choices(net, path)
    data = json.loads(path.read_text())
    assert len(data["sites"][0]["prelu_weight"]) == 32
    data["sites"][0]["prelu_weight"] = [0.1] * 16
    data["sites"][0]["num_channels"] = 16
    path.write_text(json.dumps(data))
    model = ConvNet(activation="relu", channels=(32, 64, 128, 256))
    before = _fingerprint(model)
    with pytest.raises(ValueError, match=r"16 slopes, but the site's input has shape \(2, 32, 32, 32\)"):
        apply_choices(model, path, example_inputs=x)
    after = _fingerprint(model)
    assert after[0] == before[0] and after[2] == before[2]
    fixed = apply_choices(model, path)  # without example_inputs only the file itself is checked
    assert fixed.activations()[0].weight.shape == (16,)
