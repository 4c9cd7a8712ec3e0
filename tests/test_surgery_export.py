"""ONNX export of adactified and optimized models matches PyTorch (onnxruntime, eval mode)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adact.surgery import ExportableRReLU, adact_units, adactify, apply_choices, dominant_activations, optimize, save_choices

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
torchvision = pytest.importorskip("torchvision")


def _random_mixtures(model: nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for _, u in adact_units(model):
            u.logits.normal_(0.0, 1.0)
            if u.prelu_weight is not None:
                u.prelu_weight.uniform_(0.0, 0.5)


def _onnx_matches(model: nn.Module, x: Tensor, dynamo: bool) -> None:
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
            assert program is not None
            program.save(buf)
        else:
            torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"])
    proto = onnx.load_from_string(buf.getvalue())
    assert len(proto.graph.input) == 1  # the input is used, not folded into a constant
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


class _Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, activation="gelu", batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.silu(self.encoder(x)))


def _resnet() -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=10)


@pytest.mark.parametrize("dynamo", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_adactified_resnet_exports(dynamo: bool, fused: bool) -> None:
    net = adactify(_resnet(), adact_kwargs={"fused": fused})
    _random_mixtures(net)
    _onnx_matches(net, torch.randn(1, 3, 32, 32), dynamo)


@pytest.mark.parametrize("dynamo", [True, False])
def test_adactified_transformer_exports(dynamo: bool) -> None:
    net, report = adactify(_Transformer(), return_report=True)
    assert report.n_units == 3  # two layers' F.gelu and the head's F.silu
    _random_mixtures(net)
    _onnx_matches(net, torch.randn(2, 5, 16), dynamo)


@pytest.mark.parametrize("dynamo", [True, False])
def test_optimized_models_with_rrelu_export(dynamo: bool) -> None:
    for model, x in ((_resnet(), torch.randn(1, 3, 32, 32)), (_Transformer(), torch.randn(2, 5, 16))):
        net = adactify(model)
        units = adact_units(net)
        with torch.no_grad():  # RReLU at every other site, PReLU at the rest
            for i, (_, u) in enumerate(units):
                u.logits.zero_()
                u.logits[u.candidates.index("rrelu" if i % 2 == 0 else "prelu")] = 5.0
        fixed = optimize(net)
        assert any(isinstance(m, ExportableRReLU) for m in fixed.modules())
        _onnx_matches(fixed, x, dynamo)


def test_exportable_rrelu_is_rrelu() -> None:
    m, ref = ExportableRReLU(), nn.RReLU()
    x = torch.randn(1000)
    torch.testing.assert_close(m.eval()(x), ref.eval()(x))
    torch.testing.assert_close(m.eval()(x), F.leaky_relu(x, (1 / 8 + 1 / 3) / 2))
    torch.manual_seed(0)
    a = m.train()(x)
    torch.manual_seed(0)
    torch.testing.assert_close(a, ref.train()(x))


def test_readme_workflow_transformers_bert(tmp_path: pytest.TempPathFactory) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24
    )
    torch.manual_seed(0)
    model = adactify(transformers.BertModel(config))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(3):  # "train"
        opt.zero_grad()
        model(torch.randint(0, 64, (2, 6))).last_hidden_state.square().mean().backward()
        opt.step()
    path = tmp_path / "choices.json"  # type: ignore[operator]
    save_choices(model, path)

    final = apply_choices(transformers.BertModel(config), path).eval()
    assert [type(m).__name__ for _, m in adact_units(final)] == []
    chosen = [final.get_submodule(p) for p in (f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(2))]
    assert [type(m) for m in chosen] == [type(optimize(model).get_submodule(p)) for p in dominant_activations(model)]

    class LastHidden(nn.Module):
        def __init__(self, bert: nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: Tensor) -> Tensor:
            return self.bert(ids).last_hidden_state

    ids = torch.randint(0, 64, (1, 6))
    wrapped = LastHidden(final).eval()
    with torch.no_grad():
        expected = wrapped(ids).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, (ids,), dynamo=True, verbose=False)
    buf = io.BytesIO()
    program.save(buf)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: ids.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
