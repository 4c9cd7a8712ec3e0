"""What a model is: ``--model`` specs, and :class:`ModelSpec`, everything a run's model is rebuilt from.

Part of the floor (standard library only, like :mod:`adact.config`, which re-exports these
names): ``adact --help`` reads it. The language models' shape defaults live here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adact.errors import UserError
from adact.paper import DEFAULT_CHANNELS

__all__ = ["GPT_DEFAULTS", "LM_CANDIDATES", "ModelSpec", "is_language_model", "parse_model", "parse_model_config"]

LM_CANDIDATES: tuple[str, ...] = ("gelu", "relu", "relu2", "silu", "mish", "elu", "leaky_relu")
"""The AdAct pool of a language model by default: GPT-2's GELU, ReLU, Primer's squared ReLU, SiLU
(Llama's gate), Mish, ELU and LeakyReLU. The paper's pool was chosen for ConvNets; PReLU and RReLU
(which GPTs do not use) make way for GELU and squared ReLU, the two a GPT's MLP is debated between."""

GPT_DEFAULTS: dict[str, Any] = {"n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0, "gpt_activation": "gelu"}
"""``--model gpt``'s shape when left unset: nanoGPT's CPU configuration, GELU MLPs as GPT-2."""


# --- models --------------------------------------------------------------------------------


def parse_model(spec: str) -> tuple[str, str]:
    """``(kind, name)``: kind is ``convnet``, ``gpt``, ``torchvision``, ``timm``, ``transformers`` or ``code``.

    ``code`` is a user factory (``path/to/file.py:factory``, ``package.module:factory``);
    ``transformers:NAME`` is a Hugging Face causal language model of model type NAME (``gpt2``,
    ``llama``, ...) built from its config with random weights.

    Raises:
        UserError: an empty name or a spec of no known form.
    """
    text = spec.strip()
    if text.lower() in ("convnet", "gpt"):
        return text.lower(), text.lower()
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() in ("torchvision", "timm", "transformers"):
        if not rest:
            raise UserError(f"--model {spec!r} needs a model name, e.g. {prefix.lower()}:resnet18")
        return prefix.lower(), rest
    head, sep, factory = text.rpartition(":")
    if sep and head and factory.isidentifier():
        return "code", text
    raise UserError(f"unknown model {spec!r}; valid: convnet, gpt, torchvision:NAME, timm:NAME, transformers:NAME, "
                    f"path/to/file.py:factory or package.module:factory")


def is_language_model(model: str) -> bool:
    """Whether a ``--model`` spec is a language model (``gpt``, ``transformers:NAME``): it trains on text."""
    return parse_model(model)[0] in ("gpt", "transformers")


def parse_model_config(text: str | None) -> dict[str, Any]:
    """``--model-config "n_layer=4,n_embd=128,tie_word_embeddings=false"`` as a dict of typed values.

    Values are read as int, then float, then ``true``/``false``/``none``, else kept as strings.

    Raises:
        UserError: an item that is not ``key=value``, or a key given twice.
    """
    out: dict[str, Any] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key.isidentifier() or not raw:
            raise UserError(f"--model-config: expected key=value items separated by commas (e.g. n_layer=4,n_embd=128), "
                            f"got {item!r}")
        if key in out:
            raise UserError(f"--model-config: {key!r} is given twice")
        out[key] = _typed(raw)
    return out


def _typed(raw: str) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(raw.lower(), raw)


@dataclass(frozen=True)
class ModelSpec:
    """Everything a run's model is rebuilt from: stored in every checkpoint, so a file rebuilds its model.

    Attributes:
        model: ``"convnet"``, ``"gpt"`` or a ``--model`` spec (``torchvision:resnet18``, ...).
        in_channels, num_classes, image_size: what the data asks of the model. A language model
            has ``num_classes`` = the vocabulary size (its outputs), and no images: 0 and (0, 0).
        activation: ``"adact"``, an activation name (ConvNet, GPT), or one name per AdAct site; the
            ConvNet "as written" is ``"relu"``, the GPT's its ``gpt_activation``, another named
            model's is ``"baseline"``.
        granularity: AdAct logits per ``"layer"`` or per ``"channel"``.
        fused: AdAct units use the fused kernel.
        pretrained: named models: start from their torchvision/timm weights.
        channels, kernel_size: the ConvNet's widths and kernel (ignored by other models).
        candidates: the AdAct units' pool (None: the paper's seven).
        block_size, n_layer, n_head, n_embd, dropout: language models: the context length, and
            the GPT's shape (``block_size`` also bounds a ``transformers:`` model's inputs).
        model_config: ``transformers:NAME``: the ``--model-config`` text its config is built with.
        gpt_activation: ``gpt``: its MLPs' activation as written (what a warm start starts from).
        warm_start: AdAct units start as the activation they replace (``adactify(init="original")``).
        init_from: weights loaded into the model as written before it is converted (``--init-from``).

    On disk (:meth:`to_json`) it keeps the two shapes checkpoints always had: the ConvNet's
    constructor arguments, or ``{"model": SPEC, ...}`` for a named model; the settings added
    since are written only where they are not their defaults, so older files read the same.
    """

    model: str
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    activation: str | tuple[str, ...]
    granularity: str = "layer"
    fused: bool = True
    pretrained: bool = False
    channels: tuple[int, ...] = DEFAULT_CHANNELS
    kernel_size: int = 3
    candidates: tuple[str, ...] | None = None
    block_size: int = 0
    n_layer: int = 0
    n_head: int = 0
    n_embd: int = 0
    dropout: float = 0.0
    model_config: str = ""
    gpt_activation: str = ""
    warm_start: bool = False
    init_from: str = ""

    @property
    def is_convnet(self) -> bool:
        return self.model == "convnet"

    @property
    def is_language_model(self) -> bool:
        return is_language_model(self.model)

    def _extras(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.candidates is not None:
            out["candidates"] = list(self.candidates)
        if self.is_language_model:
            out.update(block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                       dropout=self.dropout, model_config=self.model_config)
            if self.gpt_activation:
                out["gpt_activation"] = self.gpt_activation
        if self.warm_start:
            out["warm_start"] = True
        if self.init_from:
            out["init_from"] = self.init_from
        return out

    def to_json(self) -> dict[str, Any]:
        act: Any = self.activation if isinstance(self.activation, str) else list(self.activation)
        if not self.is_convnet:
            return {"model": self.model, "in_channels": self.in_channels, "num_classes": self.num_classes,
                    "image_size": list(self.image_size), "activation": act, "granularity": self.granularity,
                    "fused": self.fused, "pretrained": self.pretrained, **self._extras()}
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "image_size": list(self.image_size),
                "activation": act, "channels": list(self.channels), "kernel_size": self.kernel_size,
                "adact_kwargs": {"granularity": self.granularity, "fused": self.fused}, **self._extras()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelSpec:
        """Read either shape of :meth:`to_json` (a checkpoint's ``model_kwargs``)."""
        act = d["activation"]
        cands = d.get("candidates")
        common = {"in_channels": int(d["in_channels"]), "num_classes": int(d["num_classes"]),
                  "image_size": (int(d["image_size"][0]), int(d["image_size"][1])),
                  "activation": act if isinstance(act, str) else tuple(act),
                  "candidates": None if cands is None else tuple(cands),
                  "warm_start": bool(d.get("warm_start", False)), "init_from": str(d.get("init_from", ""))}
        if "model" in d:
            lm = {k: int(d.get(k, 0)) for k in ("block_size", "n_layer", "n_head", "n_embd")}
            return cls(model=d["model"], granularity=d.get("granularity", "layer"), fused=d.get("fused", True),
                       pretrained=bool(d.get("pretrained", False)), dropout=float(d.get("dropout", 0.0)),
                       model_config=str(d.get("model_config", "")), gpt_activation=str(d.get("gpt_activation", "")),
                       **lm, **common)
        adact_kwargs = d.get("adact_kwargs") or {}
        return cls(model="convnet", granularity=adact_kwargs.get("granularity", "layer"),
                   fused=adact_kwargs.get("fused", True), channels=tuple(int(c) for c in d["channels"]),
                   kernel_size=int(d.get("kernel_size", 3)), **common)
