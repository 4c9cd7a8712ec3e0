"""adactify finds every activation a real model uses: library classes, function calls, Transformer layers."""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adact.surgery import AdactifyReport, TracedForward, adact_units, adactify
from adact.unit import AdAct


def _stand_in(module: str, name: str) -> type[nn.Module]:
    """A class that looks like ``module.name`` to adactify, without that library."""

    def forward(self: nn.Module, x: Tensor) -> Tensor:
        return F.gelu(x)

    return type(name, (nn.Module,), {"forward": forward, "__module__": module})


# --- library classes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name", "converted"),
    [
        ("transformers.activations", "GELUActivation", True),
        ("transformers.activations", "NewGELUActivation", True),
        ("transformers.activations", "FastGELUActivation", True),
        ("transformers.activations", "QuickGELUActivation", True),
        ("transformers.activations", "SiLUActivation", True),
        ("transformers.activations", "ReLUSquaredActivation", True),
        ("timm.layers.activations", "GELU", True),
        ("timm.layers.activations", "Swish", True),
        ("timm.layers.activations_me", "HardSwishMe", True),
        ("timm.models.layers.activations", "Mish", True),  # older timm layout
        ("timm.layers.activations", "Sigmoid", False),  # a gate: only when asked
        ("timm.layers.activations", "Tanh", False),
    ],
)
def test_library_activation_classes_by_name(module: str, name: str, converted: bool) -> None:
    cls = _stand_in(module, name)
    model = nn.Sequential(nn.Linear(4, 4), cls(), nn.Linear(4, 4))
    net, report = adactify(model, return_report=True)
    assert isinstance(net[1], AdAct) is converted
    assert report.replaced == ((name,) if converted else ())


def test_torch_activations_beyond_the_pool_and_gates_on_request() -> None:
    acts = [nn.Hardswish(), nn.ReLU6(), nn.SELU(), nn.CELU(), nn.Softplus(), nn.Sigmoid(), nn.Hardsigmoid(), nn.Tanh()]
    model = nn.Sequential(*acts)
    net, report = adactify(copy.deepcopy(model), return_report=True)
    assert report.replaced == ("Hardswish", "ReLU6", "SELU", "CELU", "Softplus")
    assert [type(m) for m in net[5:]] == [nn.Sigmoid, nn.Hardsigmoid, nn.Tanh]
    net = adactify(copy.deepcopy(model), targets=("sigmoid", "hardsigmoid", "tanh"))
    assert [isinstance(m, AdAct) for m in net] == [False] * 5 + [True] * 3


def test_unknown_lookalike_is_named_in_a_warning() -> None:
    class MyGELU(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x * torch.sigmoid(1.702 * x)

    model = nn.Sequential(nn.Linear(2, 2), MyGELU())
    with pytest.warns(UserWarning, match=r"'1' \(MyGELU\).*targets="):
        _, report = adactify(model, return_report=True)
    assert [(m.path, m.what) for m in report.missed] == [("1", "MyGELU")]
    net = adactify(model, targets=[MyGELU])
    assert isinstance(net[1], AdAct)


# --- function calls -------------------------------------------------------------------------------


class _Functional(nn.Module):
    """Every spelling of a functional activation, an in-place one, and a training branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc1(x))
        h = F.gelu(h) + F.silu(h) + F.mish(h) + F.elu(h) + F.leaky_relu(h) + F.hardswish(h)
        h.relu_()  # in place: later reads of h must see the unit's output
        if self.training:
            h = h * 2.0
        return torch.relu(self.fc2(h)) + x.relu() + torch.tanh(x)

    def helper(self) -> str:
        return "kept"


def test_function_calls_get_one_unit_each_and_module_keeps_class() -> None:
    model = _Functional()
    net, report = adactify(model, return_report=True)
    assert net is model and type(net) is _Functional and net.helper() == "kept"
    assert report.replaced == (
        "F.relu", "F.gelu", "F.silu", "F.mish", "F.elu", "F.leaky_relu", "F.hardswish", "Tensor.relu_",
        "torch.relu", "Tensor.relu",
    )  # fmt: skip
    assert report.n_units == 10 and report.traced == ("",)
    assert isinstance(net.forward, TracedForward)
    assert "torch.tanh(x)" in net.forward.code(True)  # tanh only when asked

    # Units pinned to the replaced functions reproduce the original model, in both modes.
    reference = _copy_weights(model)
    names = ["relu", "gelu", "silu", "mish", "elu", "leaky_relu", "hardswish", "relu", "relu", "relu"]
    x = torch.randn(3, 4)
    pinned = adactify(_copy_weights(reference), candidates=("relu", "gelu", "silu", "mish", "elu", "leaky_relu", "hardswish"))
    with torch.no_grad():
        for (_, unit), name in zip(adact_units(pinned), names):
            unit.logits.fill_(-100.0)
            unit.logits[unit.candidates.index(name)] = 100.0
    for mode in (True, False):  # the training branch switches with the mode
        pinned.train(mode), reference.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(pinned(x), reference(x), rtol=1e-4, atol=1e-5)
    pinned.train()
    pinned(x).sum().backward()


def _copy_weights(model: nn.Module) -> nn.Module:
    twin = type(model)()
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if "adact" not in k})
    return twin


def test_only_the_calling_module_is_traced() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: Tensor) -> Tensor:
            return F.relu(self.fc(x))

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 0:  # data-dependent: torch.fx cannot trace this forward
                return self.block(x)
            return -self.block(x)

    net, report = adactify(Outer(), return_report=True)
    assert report.sites == ("block.adact_relu",) and report.traced == ("block",)
    assert not isinstance(net.__dict__.get("forward"), TracedForward)
    x = torch.ones(2, 4)
    assert net(x).shape == (2, 4) and net(-x).shape == (2, 4)


def test_untraceable_function_calls_are_reported_missed() -> None:
    class DataDependent(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 0:
                return F.gelu(x)
            return torch.relu(x)

    net = nn.Sequential(nn.Linear(2, 2), DataDependent())
    _, report = adactify(copy.deepcopy(net), return_report=True, verify=False)
    assert report.n_units == 0 and report.verified == ()
    assert [(m.path, m.what) for m in report.missed] == [("1", "gelu call"), ("1", "relu call")]
    assert all("could not trace DataDependent.forward" in m.reason for m in report.missed)
    assert report.untraced[0][0] == "1"
    assert "missed gelu call at '1'" in str(report) and "nothing verified" in str(report)
    # Running the model confirms the branch it takes, with its line; the other stays the scan's guess.
    x = torch.tensor([[10.0, 10.0]])
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    _, report = adactify(net, return_report=True, example_inputs=x)
    assert report.verified == ("train", "eval")
    ran = {m.what: m for m in report.missed}
    assert set(ran) == {"F.gelu", "relu call"}
    assert ran["F.gelu"].path == "1" and ran["F.gelu"].count == 2 and "test_surgery_sites.py" in ran["F.gelu"].reason


def test_mlp_calling_f_relu() -> None:
    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))

        def forward(self, x: Tensor) -> Tensor:
            for layer in self.layers:
                x = F.relu(layer(x))
            return x

    net, report = adactify(MLP(), return_report=True)
    assert report.sites == ("adact_relu", "adact_relu_1", "adact_relu_2")
    net(torch.randn(2, 8)).sum().backward()
    copy.deepcopy(net)(torch.randn(2, 8))


# --- nn.TransformerEncoderLayer / DecoderLayer -------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "gelu", F.gelu, nn.ReLU(), nn.GELU()])
def test_transformer_layers_activation_any_spelling(activation: object) -> None:
    enc = nn.TransformerEncoderLayer(16, 2, 32, activation=activation, batch_first=True)  # type: ignore[arg-type]
    dec = nn.TransformerDecoderLayer(16, 2, 32, activation=activation, batch_first=True)  # type: ignore[arg-type]
    for layer in (enc, dec):
        net, report = adactify(layer, return_report=True)
        assert report.sites == ("activation",) and isinstance(net.activation, AdAct)
        assert getattr(net, "activation_relu_or_gelu", 0) == 0  # the fast path is off
    x = torch.randn(2, 5, 16)
    enc(x).sum().backward()
    dec(x, x).sum().backward()
    assert enc.activation.logits.grad is not None and dec.activation.logits.grad is not None
    enc.eval()
    with torch.no_grad():
        _pin(enc.activation, "mish")
        ref = copy.deepcopy(enc)
        ref.activation = nn.Mish()
        torch.testing.assert_close(enc(x), ref(x))  # eval + no_grad really runs the unit


def _pin(unit: nn.Module, name: str) -> None:
    assert isinstance(unit, AdAct)
    unit.logits.fill_(-100.0)
    unit.logits[unit.candidates.index(name)] = 100.0


# --- channel granularity on tokens ----------------------------------------------------------------


def test_channel_granularity_on_tokens_needs_channel_dim() -> None:
    layer = nn.Sequential(nn.Linear(6, 6), nn.GELU())
    x = torch.randn(2, 5, 6)
    with pytest.raises(ValueError, match=r"shape \(2, 5, 6\).*channel_dim=-1"):
        adactify(layer, example_inputs=x, granularity="channel")
    assert isinstance(layer[1], nn.GELU)  # nothing was changed before the error
    net = adactify(layer, example_inputs=x, granularity="channel", channel_dim=-1)
    unit = net[1]
    assert isinstance(unit, AdAct) and unit.num_channels == 6 and unit.channel_dim == -1
    assert net(torch.randn(3, 11, 6)).shape == (3, 11, 6)  # any sequence length
    conv = adactify(nn.Sequential(nn.Conv1d(3, 4, 1), nn.ReLU()), example_inputs=torch.randn(2, 3, 7),
                    granularity="channel", channel_dim=1)  # fmt: skip
    assert conv[1].num_channels == 4


# --- real libraries (skipped when absent) ------------------------------------------------------


def _quiet_adactify(model: nn.Module) -> tuple[nn.Module, AdactifyReport]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no look-alike or unchecked-sharing warning is due
        return adactify(model, return_report=True)


def test_transformers_bert_gpt2_llama_tiny_configs() -> None:
    transformers = pytest.importorskip("transformers")
    small = {"vocab_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    models = {
        "GELUActivation": transformers.BertModel(transformers.BertConfig(hidden_size=16, intermediate_size=24, **small)),
        "NewGELUActivation": transformers.GPT2Model(transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64)),
        "SiLUActivation": transformers.LlamaForCausalLM(
            transformers.LlamaConfig(hidden_size=16, intermediate_size=24, num_key_value_heads=2, **small)
        ),
    }
    for cls_name, model in models.items():
        kind = type(model)
        net, report = _quiet_adactify(model)
        assert type(net) is kind and report.n_units == 2, (kind, report)  # one per layer's MLP
        assert set(report.replaced) <= {cls_name, "SiLU"}
        out = net(torch.randint(0, 64, (2, 5)))
        (out.logits if hasattr(out, "logits") else out.last_hidden_state).sum().backward()
        assert all(u.logits.grad is not None for _, u in adact_units(net))


def test_timm_convnext_atto() -> None:
    timm = pytest.importorskip("timm")
    net, report = _quiet_adactify(timm.create_model("convnext_atto", pretrained=False, num_classes=10))
    assert report.n_units == 12 and set(report.replaced) == {"GELU"}  # depths (2, 2, 6, 2)
    net(torch.randn(1, 3, 32, 32)).sum().backward()


def test_torchvision_mobilenet_v3_hardswish_sites_and_gates_left() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v3_small(weights=None)
    counts = Counter(type(m).__name__ for m in model.modules())
    net, report = _quiet_adactify(model)
    assert Counter(report.replaced) == {"Hardswish": counts["Hardswish"], "ReLU": counts["ReLU"]}
    assert counts["Hardswish"] == 19
    assert sum(isinstance(m, nn.Hardsigmoid) for m in net.modules()) == counts["Hardsigmoid"] > 0


# --- the converted model still works with torch's tools ----------------------------------------


class _SharedAndFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.act(self.fc(self.act(x))))


def test_converted_model_pickles_copies_compiles_and_exports() -> None:
    import io
    import pickle

    net = adactify(_SharedAndFunctional()).eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        expected = net(x)
        for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
            torch.testing.assert_close(twin(x), expected)
            assert twin.forward.owner is twin  # the copy runs its own units
        buf = io.BytesIO()
        torch.save(net, buf)
        buf.seek(0)
        torch.testing.assert_close(torch.load(buf, weights_only=False)(x), expected)
        torch.testing.assert_close(torch.compile(net)(x), expected)
        program = torch.export.export(net, (x,))
        torch.testing.assert_close(program.module()(x), expected)


def test_unit_channel_dim_last() -> None:
    from adact.reference import adact_reference

    unit = AdAct(granularity="channel", num_channels=5, channel_dim=-1, init="normal", init_scale=1.0).eval()
    x = torch.randn(2, 3, 5)
    ref = adact_reference(x.transpose(1, 2), unit.logits, unit.prelu_weight).transpose(1, 2)
    torch.testing.assert_close(unit(x), ref)
    with pytest.raises(ValueError, match=r"expects input of shape \(\*, 5\)"):
        unit(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="channel_dim must be 1"):
        AdAct(granularity="channel", num_channels=5, channel_dim=2)


def test_sequential_subclass_with_own_forward_is_traced() -> None:
    class Twice(nn.Sequential):
        def forward(self, x: Tensor) -> Tensor:
            return self[1](self[0](self[1](x)))

    net, report = adactify(Twice(nn.Linear(3, 3), nn.SiLU()), return_report=True)
    assert report.sites == ("1.0", "1.1")
    plain = adactify(nn.Sequential(nn.Linear(3, 3), nn.SiLU()))
    assert isinstance(plain[1], AdAct)
