"""Real architectures from their configs (torchvision, timm, transformers): what adactify reports is what runs.

Each model is checked with a count of activation calls made here, independently of adactify's own
verification: the converted model runs one unit call per activation call of the original and
no targeted activation natively, calls every unit, takes a training step, and ``optimize`` of
one-hot units computes what the units compute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from adact.surgery import DEFAULT_TARGETS, adact_units, adactify, optimize
from adact.surgery.targets import module_kind
from adact.unit import AdAct

pytestmark = pytest.mark.slow

_FUNCTION_KINDS = {k for k in DEFAULT_TARGETS}


class _Count(TorchFunctionMode):
    """Counts targeted activation calls made natively, and unit calls (by unit), in one pass."""

    def __init__(self) -> None:
        super().__init__()
        self.native: list[str] = []
        self.units: dict[int, int] = {}
        self.depth = 0  # inside a unit or an activation module: its own calls are not counted

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "").rstrip("_")
        if self.depth == 0 and name in _FUNCTION_KINDS:
            self.native.append(name)
        return func(*args, **(kwargs or {}))

    def pre(self, m: nn.Module, args: Any) -> None:
        if isinstance(m, AdAct):
            self.units[id(m)] = self.units.get(id(m), 0) + 1
        elif self.depth == 0 and module_kind(m) in _FUNCTION_KINDS:
            self.native.append(type(m).__name__)
        self.depth += isinstance(m, AdAct) or module_kind(m) is not None

    def post(self, m: nn.Module, args: Any, out: Any) -> None:
        self.depth -= isinstance(m, AdAct) or module_kind(m) is not None


def _counted(model: nn.Module, inputs: dict[str, Any], grad: bool = False) -> tuple[_Count, Any]:
    count = _Count()
    hooks = [nn.modules.module.register_module_forward_pre_hook(count.pre),
             nn.modules.module.register_module_forward_hook(count.post)]
    try:
        with count, torch.set_grad_enabled(grad):
            out = model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return count, out


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return _first(out[0])


def _torchvision(name: str, **kwargs: Any) -> Callable[[], tuple[nn.Module, dict[str, Any]]]:
    def build() -> tuple[nn.Module, dict[str, Any]]:
        torchvision = pytest.importorskip("torchvision")
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
        return model, {"x": torch.randn(2, 3, 64, 64)}
    return build


def _timm(name: str, size: int = 64, **kwargs: Any) -> Callable[[], tuple[nn.Module, dict[str, Any]]]:
    def build() -> tuple[nn.Module, dict[str, Any]]:
        timm = pytest.importorskip("timm")
        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        return model, {"x": torch.randn(2, 3, size, size)}
    return build


def _hf(config: str, model: str, **kwargs: Any) -> Callable[[], tuple[nn.Module, dict[str, Any]]]:
    def build() -> tuple[nn.Module, dict[str, Any]]:
        transformers = pytest.importorskip("transformers")
        small = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 32, **kwargs}
        cfg = getattr(transformers, config)(**small)
        net = getattr(transformers, model)(cfg)
        ids = torch.randint(0, 64, (2, 8))
        inputs: dict[str, Any] = {"input_ids": ids}
        if getattr(cfg, "is_encoder_decoder", False):
            inputs["decoder_input_ids"] = ids
        return net, inputs
    return build


MODELS: dict[str, Callable[[], tuple[nn.Module, dict[str, Any]]]] = {
    "torchvision:resnet18": _torchvision("resnet18"),
    "torchvision:mobilenet_v2": _torchvision("mobilenet_v2", width_mult=0.25),
    "torchvision:mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
    "torchvision:efficientnet_b0": _torchvision("efficientnet_b0"),
    "torchvision:shufflenet_v2_x0_5": _torchvision("shufflenet_v2_x0_5"),
    "torchvision:squeezenet1_1": _torchvision("squeezenet1_1"),
    "torchvision:mnasnet0_5": _torchvision("mnasnet0_5"),
    "torchvision:regnet_y_400mf": _torchvision("regnet_y_400mf"),
    "torchvision:googlenet": _torchvision("googlenet", aux_logits=False, init_weights=False),
    "timm:resnet10t": _timm("resnet10t"),
    "timm:mobilenetv3_small_050": _timm("mobilenetv3_small_050"),
    "timm:convnext_atto": _timm("convnext_atto"),
    "timm:vit_tiny": _timm("vit_tiny_patch16_224", 32, img_size=32, patch_size=8, depth=2),
    "timm:ghostnet_050": _timm("ghostnet_050"),
    "timm:regnetx_002": _timm("regnetx_002"),
    "timm:hrnet_w18_small": _timm("hrnet_w18_small"),
    "timm:lcnet_050": _timm("lcnet_050"),
    "timm:mobilevit_xxs": _timm("mobilevit_xxs"),
    "timm:tinynet_e": _timm("tinynet_e"),
    "timm:edgenext_xx_small": _timm("edgenext_xx_small"),
    "timm:semnasnet_050": _timm("semnasnet_050"),
    "transformers:bert": _hf("BertConfig", "BertModel"),
    "transformers:gpt2": _hf("GPT2Config", "GPT2LMHeadModel", n_embd=16, n_layer=2, n_head=2),
    "transformers:llama": _hf("LlamaConfig", "LlamaForCausalLM", num_key_value_heads=1),
    "transformers:mistral": _hf("MistralConfig", "MistralForCausalLM", num_key_value_heads=1),
    "transformers:qwen2": _hf("Qwen2Config", "Qwen2ForCausalLM", num_key_value_heads=1),
    "transformers:gemma": _hf("GemmaConfig", "GemmaForCausalLM", num_key_value_heads=1, head_dim=8),
    "transformers:phi": _hf("PhiConfig", "PhiForCausalLM"),
    "transformers:opt": _hf("OPTConfig", "OPTForCausalLM", ffn_dim=32, word_embed_proj_dim=16),
    "transformers:gpt_neo": _hf("GPTNeoConfig", "GPTNeoForCausalLM", attention_types=[[["global"], 2]]),
    "transformers:t5": _hf("T5Config", "T5ForConditionalGeneration", d_model=16, d_ff=32, num_layers=2,
                           num_heads=2, d_kv=8),
    "transformers:bart": _hf("BartConfig", "BartModel", d_model=16, encoder_layers=1, decoder_layers=1,
                             encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                             decoder_ffn_dim=32),
    "transformers:electra": _hf("ElectraConfig", "ElectraModel", embedding_size=16),
    "transformers:distilbert": _hf("DistilBertConfig", "DistilBertModel", dim=16, n_layers=2, n_heads=2,
                                   hidden_dim=32),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_what_adactify_reports_is_what_runs(name: str, one_thread: None) -> None:
    model, inputs = MODELS[name]()
    original, _ = _counted(model.train(), inputs)
    assert original.native, "the original model runs activations"
    example = inputs["x"] if "x" in inputs else inputs["input_ids"]
    args = (example,) if "decoder_input_ids" not in inputs else (inputs["input_ids"], None, inputs["decoder_input_ids"])
    net, report = adactify(model, example_inputs=args, return_report=True, adact_kwargs={"fused": False})
    assert report.verified == ("train", "eval") and not report.dead and not report.shared
    assert not [m for m in report.missed if "seen by running" in m.reason], report
    # The independent count: one unit call per activation call, none native, every unit called.
    count, out = _counted(net.train(), inputs, grad=True)
    units = {id(u) for _, u in adact_units(net)}
    assert count.native == [] and set(count.units) == units
    assert sum(count.units.values()) == len(original.native)
    _first(out).float().square().mean().backward()
    assert all(u.logits.grad is not None and torch.isfinite(u.logits.grad).all() for _, u in adact_units(net))
    # optimize() of one-hot units is the model the units compute.
    pool = ["relu", "silu", "elu", "mish", "leaky_relu"]
    with torch.no_grad():
        for i, (_, u) in enumerate(adact_units(net)):
            u.logits.zero_()
            u.logits[..., u.candidates.index(pool[i % len(pool)])] = 100.0
    fixed = optimize(net).eval()
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(_first(fixed(**inputs)), _first(net(**inputs)), rtol=1e-4, atol=1e-5)


def test_the_sweep_spans_30_architectures_across_three_libraries() -> None:
    libraries = {name.split(":")[0] for name in MODELS}
    assert len(MODELS) >= 30 and libraries == {"torchvision", "timm", "transformers"}
