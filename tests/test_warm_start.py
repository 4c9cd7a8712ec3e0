"""Warm start: units that start as the activation they replace (``adactify(init="original")``, ``--warm-start``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adact
from adact import AdAct
from adact.activations import ACTIVATIONS, activation_functional
from adact.choice import adact_units
from adact.config import TrainConfig
from adact.errors import UserError
from adact.surgery.originals import call_original, module_original
from adact.training.build import build_model, load_checkpoint, model_spec
from adact.training.loop import train

POOL = ("relu", "elu", "leaky_relu", "prelu", "silu", "mish", "gelu", "relu2", "hardswish", "gelu_tanh")


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("original", ["relu", "silu", "gelu", "gelu_tanh", "hardswish", "relu2", "prelu", "elu"])
def test_a_warm_unit_is_its_original_at_step_0(original: str, fused: bool) -> None:
    u = AdAct(POOL, original=original, fused=fused)
    x = torch.randn(4, 8, 5, 5) * 4
    want = activation_functional(original)(x, torch.tensor([0.25]), False)
    torch.testing.assert_close(u(x), want, rtol=1e-6, atol=1e-6)
    assert u.choice() == (original, 1.0)
    assert u.mixture()[list(POOL).index(original)] == 1.0 and u.mixture().sum() == 1.0


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_the_gate_learns_from_step_0_and_the_logits_once_it_opens(fused: bool) -> None:
    torch.manual_seed(0)
    u = AdAct(POOL, original="relu", fused=fused)
    x, dy = torch.randn(2, 8, 6, 6) * 3, torch.randn(2, 8, 6, 6)
    (u(x) * dy).sum().backward()
    with torch.no_grad():  # d loss / d g = <dy, mixture(x) - original(x)>, the LoRA-like zero-init branch
        mixture = adact.adact_reference(x, torch.zeros(len(POOL)), torch.tensor([0.25]), POOL, False)
        want = float((dy * (mixture - F.relu(x))).sum())
    assert u.gate.grad is not None and u.gate.grad.item() == pytest.approx(want, rel=1e-4)
    assert torch.count_nonzero(u.logits.grad) == 0  # g = 0: the softmax branch has no weight yet
    with torch.no_grad():
        u.gate.fill_(0.5)
    u.zero_grad()
    (u(x) * dy).sum().backward()
    assert torch.count_nonzero(u.logits.grad) > 0


def test_gated_weights_fused_equal_reference_values_and_gradients() -> None:
    torch.manual_seed(1)
    a = AdAct(POOL, original="gelu", fused=True)
    with torch.no_grad():
        a.gate.fill_(0.3)
        a.logits.normal_()
    b = copy.deepcopy(a)
    b.fused = False
    x = torch.randn(3, 4, 7, 7) * 3
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa), b(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)
    # the effective weights: (1 - g) onehot + g softmax(w)
    want = 0.3 * torch.softmax(a.logits.detach(), -1)
    want[list(POOL).index("gelu")] += 0.7
    torch.testing.assert_close(a.mixture(), want)


def test_per_channel_warm_units_and_errors() -> None:
    u = AdAct(("relu", "silu"), "channel", 6, original="silu")
    assert u.gate.shape == (6,)
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(u(x), F.silu(x))
    with pytest.raises(UserError, match="must be one of the candidates"):
        AdAct(("relu", "silu"), original="gelu")


def test_the_choice_moves_where_the_original_is_worse() -> None:
    """ReLU cannot be SiLU; a unit that starts as ReLU and is fitted to SiLU leaves it."""
    torch.manual_seed(0)
    x = torch.linspace(-4, 4, 512)
    u = AdAct(("relu", "elu", "leaky_relu", "silu", "mish", "gelu"), original="relu")
    opt = torch.optim.Adam(u.parameters(), lr=0.05)
    first = None
    for _ in range(200):
        loss = F.mse_loss(u(x), F.silu(x))
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert u.choice()[0] == "silu" and u.choice()[1] > 0.9
    assert float(loss) < first / 100


def test_a_warm_network_leaves_relu_where_relu_cannot_fit() -> None:
    """Linear -> ReLU -> Linear with one hidden unit cannot draw SiLU's dip below zero; its warm
    unit starts as ReLU, trains with the weights around it, and ends on a smooth candidate."""
    torch.manual_seed(0)
    x = torch.linspace(-5, 5, 400).unsqueeze(1)
    y = F.silu(x)

    def fit(net: nn.Module) -> float:
        opt = torch.optim.Adam(net.parameters(), lr=0.03)
        for _ in range(400):
            loss = F.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    torch.manual_seed(1)
    plain = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1))
    warm = adact.adactify(copy.deepcopy(plain), init="original", candidates=["relu", "silu", "mish", "gelu"])
    relu_loss, warm_loss = fit(plain), fit(warm)
    (_, unit), = adact_units(warm)
    assert unit.choice()[0] != "relu" and float(unit.gate.detach().clamp(0, 1)) > 0.5
    assert warm_loss < relu_loss / 10


def test_originals_are_exact_registry_equals_only() -> None:
    assert module_original(nn.GELU()) == "gelu" and module_original(nn.GELU(approximate="tanh")) == "gelu_tanh"
    assert module_original(nn.LeakyReLU()) == "leaky_relu" and module_original(nn.LeakyReLU(0.2)) is None
    assert module_original(nn.ELU(alpha=2.0)) is None and module_original(nn.Hardswish()) == "hardswish"
    assert call_original(F.gelu, (None,), {"approximate": "tanh"}) == "gelu_tanh"
    assert call_original(F.leaky_relu, (None, 0.2), {}) is None
    assert call_original(F.leaky_relu, (None,), {"negative_slope": 0.01}) == "leaky_relu"
    assert call_original("relu", (None,), {}, method=True) == "relu"
    for name, cls in ACTIVATIONS.items():  # every registry module is its own original
        if name != "prelu":
            assert module_original(cls()) == name


def _same_outputs(original: nn.Module, x: torch.Tensor, tol: float = 1e-5) -> adact.AdactifyReport:
    original.eval()
    with torch.no_grad():
        want = original(x)
    warm, report = adact.adactify(copy.deepcopy(original), init="original", return_report=True)
    with torch.no_grad():
        got = warm.eval()(x)
    want, got = (getattr(t, "logits", getattr(t, "last_hidden_state", t)) for t in (want, got))
    assert report.n_units > 0 and len(report.originals) == len(report.sites)
    assert (got - want).abs().max().item() <= tol
    assert all(u.original is not None and u.choice()[1] == 1.0 for _, u in adact_units(warm))
    return report


def test_torchvision_models_are_unchanged_at_step_0() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    report = _same_outputs(torchvision.models.resnet18(num_classes=10), x, 0.0)
    assert set(report.originals) == {"relu"} and report.added == ()
    report = _same_outputs(torchvision.models.mobilenet_v3_small(num_classes=10), x, 0.0)
    assert set(report.originals) == {"relu", "hardswish"} and report.added == ("hardswish",)
    assert "added to the pool: hardswish" in str(report)


def test_timm_vit_is_unchanged_at_step_0() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4)
    report = _same_outputs(vit, torch.randn(2, 3, 32, 32))
    assert set(report.originals) == {"gelu"} and report.n_units == 12


def test_transformers_bert_and_gpt2_are_unchanged_at_step_0() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 16))
    bert = transformers.BertModel(transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                                                          intermediate_size=128, vocab_size=100))
    assert set(_same_outputs(bert, ids).originals) == {"gelu"}
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100,
                                                                 n_positions=32, bos_token_id=None, eos_token_id=None))
    report = _same_outputs(gpt2, ids)
    assert set(report.originals) == {"gelu_tanh"} and report.added == ("gelu_tanh",)


def test_a_site_with_no_exact_equal_is_named() -> None:
    with pytest.raises(UserError, match="LeakyReLU has no exact equal"):
        adact.adactify(nn.Sequential(nn.Linear(3, 3), nn.LeakyReLU(0.2)), init="original")
    with pytest.raises(UserError, match="unknown init"):
        adact.adactify(nn.Sequential(nn.ReLU()), init="warm")


def test_optimize_save_and_apply_choices_of_warm_units(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 2))
    warm = adact.adactify(copy.deepcopy(net), init="original")
    fixed = adact.optimize(warm)
    assert type(fixed[1]).__name__ == "GELUTanh"  # untouched gate: the choice is the original
    adact.save_choices(warm, tmp_path / "c.json")
    site = json.loads((tmp_path / "c.json").read_text())["sites"][0]
    assert site["original"] == "gelu_tanh" and site["gate"] == [0.0] and "gelu_tanh" in site["candidates"]
    applied = adact.apply_choices(copy.deepcopy(net), tmp_path / "c.json")
    x = torch.randn(5, 4)
    torch.testing.assert_close(applied(x), net(x))


def test_onnx_export_of_a_warm_unit(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    net = adact.adactify(nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2)), init="original").eval()
    with torch.no_grad():
        net[1].gate.fill_(0.4)
        net[1].logits.normal_()
    x = torch.randn(3, 4)
    path = tmp_path / "warm.onnx"
    torch.onnx.export(net, (x,), dynamo=True).save(str(path))
    (got,) = ort.InferenceSession(str(path)).run(None, {ort.InferenceSession(str(path)).get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), net(x).detach(), rtol=1e-4, atol=1e-5)


def _digits(tmp_path: Path, **kw: object) -> TrainConfig:
    return TrainConfig(dataset="digits", epochs=1, device="cpu", **kw)  # type: ignore[arg-type]


def test_warm_start_and_init_from_in_training(tmp_path: Path) -> None:
    base = train(_digits(tmp_path, activation="relu"), tmp_path / "relu", quiet=True)
    assert base["status"] == "done"
    cfg = _digits(tmp_path, activation="adact", warm_start=True, init_from=str(tmp_path / "relu" / "best.pt"))
    from adact.training.build import load_data

    data = load_data(cfg)
    spec = model_spec(cfg, data)
    warm = build_model(spec).eval()
    plain, _ = load_checkpoint(tmp_path / "relu" / "best.pt")
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():  # the pretrained weights, and units that start as ReLU: the same network
        torch.testing.assert_close(warm(x), plain.eval()(x), rtol=0.0, atol=0.0)
    result = train(cfg, tmp_path / "warm", quiet=True)
    assert result["status"] == "done" and result["n_adact_units"] == 4
    assert "discretization_gap" in result
    rebuilt, _ = load_checkpoint(tmp_path / "warm" / "best.pt")  # from the file alone: init_from is not read again
    assert all(u.original == "relu" for _, u in adact_units(rebuilt))


def test_init_from_mismatch_names_the_keys(tmp_path: Path) -> None:
    torch.save({"features.9.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    cfg = _digits(tmp_path, activation="relu", init_from=str(tmp_path / "bad.pt"))
    with pytest.raises(UserError, match=r"missing \d+ \(features\.0\.0\.weight.*unexpected 1 \(features\.9\.weight\)"):
        train(cfg, tmp_path / "run", quiet=True)
    with pytest.raises(FileNotFoundError, match="--init-from"):
        _digits(tmp_path, init_from=str(tmp_path / "none.pt"))


def test_init_from_fits_the_stem_and_head_of_other_data(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    source = torchvision.models.resnet18(num_classes=10)
    torch.save(source.state_dict(), tmp_path / "rgb10.pt")
    from adact.training.build import load_init_weights

    target = torchvision.models.resnet18(num_classes=7)
    target.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    head = target.fc.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"averaged conv1.weight over its 3 input channels.*head fc has 7 outputs"):
        load_init_weights(target, tmp_path / "rgb10.pt")
    torch.testing.assert_close(target.conv1.weight, source.conv1.weight.mean(1, keepdim=True))
    assert torch.equal(target.fc.weight, head) and torch.equal(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
