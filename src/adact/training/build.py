"""What a run trains on and with: its data, its device and its model, built from the config alone.

:func:`model_spec` turns a config and its data into a :class:`~adact.config.ModelSpec`,
:func:`build_model` builds it, and :func:`load_checkpoint` rebuilds it from a checkpoint (the
spec travels inside). :func:`load_data` loads a run's dataset once per process: every run of a
search on that dataset shares the same splits.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adact.choice import adact_units
from adact.config import BASELINE, DEVICES, ModelSpec, TrainConfig
from adact.data import DataSplits, load_dataset
from adact.data.text import TextData, load_text
from adact.dataspec import DatasetSpec
from adact.errors import UserError
from adact.gpt import GPT
from adact.model_zoo import (
    check_input,
    check_language_model,
    create_language_model,
    create_model,
    fit_stem_and_head,
    with_activation,
)
from adact.models import ConvNet
from adact.runs.checkpoint import read_checkpoint, read_weights

__all__ = ["build_model", "check_searchable", "load_checkpoint", "load_data", "model_spec", "resolve_device",
           "train_subset"]

_DATA_CACHE: dict[tuple[Any, ...], DataSplits | TextData] = {}


def load_data(config: TrainConfig, quiet: bool = True) -> Any:
    """The dataset of a run, with its splits and options applied (cached per process).

    Images give :class:`~adact.data.DataSplits`; a text file (``text:PATH``) gives
    :class:`~adact.data.text.TextData`, the token ids with nanoGPT's 90/10 split.
    """
    key = config.data_key()
    if key not in _DATA_CACHE and config.is_text:
        spec = DatasetSpec.parse(config.dataset)
        assert config.tokenizer is not None  # resolved by TrainConfig for text
        _DATA_CACHE[key] = load_text(spec.resolve_path(config.data_dir), config.tokenizer,
                                     val_fraction=config.val_fraction, name=config.dataset)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(
            config.dataset, config.data_dir, config.download, val_fraction=config.val_fraction, seed=config.split_seed,
            fer_split=config.fer_split, test_from_train=config.test_from_train, image_size=config.image_size,
            on_bad_image=config.on_bad_image, cache_mb=config.cache_mb, quiet=quiet)
    return _DATA_CACHE[key]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an unavailable explicit choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but CUDA is not available; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' requested but MPS is not available; use --device auto or cpu")
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}; valid: {', '.join(DEVICES)}")
    return torch.device(name)


def model_spec(config: TrainConfig, data: Any) -> ModelSpec:
    """The :class:`~adact.config.ModelSpec` of a run: its config's model for this data."""
    act = config.activation if isinstance(config.activation, str) else tuple(config.activation)
    if config.model == "convnet" and act == BASELINE:
        act = "relu"  # the ConvNet as written
    if config.model == "gpt" and act == BASELINE:
        act = config.gpt_activation or "gelu"  # the GPT as written
    cands = None if config.candidates is None else tuple(config.candidates)
    assert config.model is not None  # resolved by TrainConfig
    start = {"warm_start": config.warm_start, "init_from": config.init_from or ""}
    if isinstance(data, TextData):
        return ModelSpec(model=config.model, in_channels=0, num_classes=data.vocab_size, image_size=(0, 0),
                         activation=act, granularity=config.granularity, fused=config.fused, candidates=cands,
                         block_size=config.block_size or 0, n_layer=config.n_layer or 0, n_head=config.n_head or 0,
                         n_embd=config.n_embd or 0, dropout=config.dropout or 0.0,
                         model_config=config.model_config or "", gpt_activation=config.gpt_activation or "",
                         **start)
    return ModelSpec(model=config.model, in_channels=data.in_channels, num_classes=data.num_classes,
                     image_size=data.image_size, activation=act, granularity=config.granularity,
                     fused=config.fused, pretrained=config.pretrained, channels=tuple(config.channels),
                     kernel_size=config.kernel_size, candidates=cands, **start)


def build_model(spec: ModelSpec, *, load_init: bool = True) -> nn.Module:
    """The model of ``spec``: the paper's ConvNet, the GPT, or a named model, in its run's variant.

    With ``spec.warm_start`` or ``spec.init_from`` the model is built as written, given the
    ``init_from`` weights (unless ``load_init`` is False: a checkpoint being rebuilt holds them
    all), and then converted (:func:`_converted`).

    Raises:
        UserError: settings the model cannot take (a kernel wider than the images, a model that
            cannot take the data's images), or ``init_from`` weights that do not fit it.
    """
    act = spec.activation if isinstance(spec.activation, str) else list(spec.activation)
    unit_kwargs: dict[str, Any] = {"granularity": spec.granularity, "fused": spec.fused}
    if spec.candidates is not None:
        unit_kwargs["candidates"] = list(spec.candidates)
    if spec.warm_start or spec.init_from:
        return _converted(spec, act, load_init)
    if spec.is_convnet:
        return ConvNet(in_channels=spec.in_channels, num_classes=spec.num_classes, image_size=spec.image_size,
                       activation=act, channels=list(spec.channels), kernel_size=spec.kernel_size,
                       adact_kwargs=unit_kwargs)
    if spec.model == "gpt":
        return GPT(spec.num_classes, block_size=spec.block_size, n_layer=spec.n_layer, n_head=spec.n_head,
                   n_embd=spec.n_embd, dropout=spec.dropout, activation=act, adact_kwargs=unit_kwargs)
    if spec.is_language_model:
        model = create_language_model(spec.model, vocab_size=spec.num_classes, block_size=spec.block_size,
                                      model_config=spec.model_config)
        # (B, T) token ids; per-feature units find their features in the last dim of (B, T, features).
        example = torch.zeros(2, spec.block_size, dtype=torch.long)
        model = with_activation(model, act, granularity=spec.granularity, fused=spec.fused, example_inputs=example,
                                candidates=spec.candidates, channel_dim=-1 if spec.granularity == "channel" else None)
        check_language_model(model, spec.model, spec.block_size, spec.num_classes)
        return model
    model = create_model(spec.model, num_classes=spec.num_classes, in_channels=spec.in_channels,
                         pretrained=spec.pretrained)
    example = torch.zeros(2, spec.in_channels, *spec.image_size) if spec.granularity == "channel" else None
    model = with_activation(model, act, granularity=spec.granularity, fused=spec.fused, example_inputs=example,
                            candidates=spec.candidates)
    check_input(model, spec.model, spec.in_channels, spec.image_size, spec.num_classes)
    return model


def check_searchable(model: nn.Module, spec: ModelSpec) -> None:
    """Refuse an AdAct run of a model in which ``adactify`` found no activation: there is nothing to search.

    (Its AdAct, baseline and optimized models would be one model trained three times.)

    Raises:
        UserError: ``spec`` asks for AdAct units and ``model`` has none.
    """
    if spec.activation == "adact" and not adact_units(model):
        raise UserError(f"--model {spec.model} has no activation to search: adactify found 0 activation sites (no "
                        f"activation module such as nn.ReLU, nor a call such as F.relu or torch.tanh, in its "
                        f"forward pass); give a model with activations")


def _as_written(spec: ModelSpec) -> nn.Module:
    """The model of ``spec`` with its own activations: what ``--init-from`` weights and a warm start start from."""
    if spec.is_convnet:
        return ConvNet(in_channels=spec.in_channels, num_classes=spec.num_classes, image_size=spec.image_size,
                       activation="relu", channels=list(spec.channels), kernel_size=spec.kernel_size)
    if spec.model == "gpt":
        return GPT(spec.num_classes, block_size=spec.block_size, n_layer=spec.n_layer, n_head=spec.n_head,
                   n_embd=spec.n_embd, dropout=spec.dropout, activation=spec.gpt_activation or "gelu")
    if spec.is_language_model:
        return create_language_model(spec.model, vocab_size=spec.num_classes, block_size=spec.block_size,
                                     model_config=spec.model_config)
    return create_model(spec.model, num_classes=spec.num_classes, in_channels=spec.in_channels,
                        pretrained=spec.pretrained)


def _converted(spec: ModelSpec, act: str | list[str], load_init: bool) -> nn.Module:
    """Build as written, load ``init_from``, then make the run's variant with :func:`with_activation`.

    A one-name variant of the ConvNet or the GPT (``"mish"``, the GPT's ``"relu"``) is that name
    at every site; ``"adact"`` units start as the activation each replaces with ``warm_start``.
    """
    model = _as_written(spec)
    if load_init and spec.init_from:
        load_init_weights(model, spec.init_from)
    if spec.is_language_model:
        example = torch.zeros(2, spec.block_size, dtype=torch.long)
    else:
        example = torch.zeros(2, spec.in_channels, *spec.image_size)
    base = {"relu"} if spec.is_convnet else {spec.gpt_activation or "gelu"} if spec.model == "gpt" else set()
    if isinstance(act, str) and act in base:
        act = BASELINE
    if isinstance(act, str) and act not in ("adact", BASELINE):
        # Only the ConvNet and the GPT take one name (a named model's baselines come as per-site
        # lists, see adact.experiments.plan): one activation per block.
        act = [act] * (len(spec.channels) if spec.is_convnet else spec.n_layer)
    model = with_activation(model, act, granularity=spec.granularity, fused=spec.fused, example_inputs=example,
                            candidates=spec.candidates, init="original" if spec.warm_start else "mixture",
                            channel_dim=-1 if spec.is_language_model and spec.granularity == "channel" else None)
    if spec.is_language_model:
        check_language_model(model, spec.model, spec.block_size, spec.num_classes)
    elif not spec.is_convnet:
        check_input(model, spec.model, spec.in_channels, spec.image_size, spec.num_classes)
    return model


def load_init_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict, or the weights of an adact checkpoint, into ``model`` (``--init-from``).

    The file is read with ``weights_only=True`` (a file carrying code is refused, see
    :func:`adact.runs.checkpoint.read_checkpoint`).

    Raises:
        UserError: a file that holds no state dict, or one whose keys or shapes do not fit ``model``
            (the message names the missing and unexpected keys).
    """
    data = read_weights(path)
    state = data["model"] if isinstance(data, dict) and isinstance(data.get("model"), dict) else data
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--init-from {path}: not a state dict or an adact checkpoint (a dict of tensors, or one "
                        f"with the tensors under 'model')")
    own = model.state_dict()
    state, said = fit_stem_and_head(model, dict(state))
    if said:
        warnings.warn(f"--init-from {path}: " + "; ".join(said), stacklevel=2)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        parts = [f"missing {len(missing)} ({few(missing)})" if missing else "",
                 f"unexpected {len(unexpected)} ({few(unexpected)})" if unexpected else "",
                 f"other shapes: {few(shapes)}" if shapes else ""]
        raise UserError(f"--init-from {path}: its weights do not fit the model as written: "
                        + "; ".join(p for p in parts if p)
                        + ". It must come from the same architecture before adactify (a baseline run's "
                          "best.pt, or the model's own state_dict)")
    model.load_state_dict(state)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint from the file alone; returns ``(model, checkpoint)``.

    The file is read with :func:`read_checkpoint`, so a checkpoint holding code is refused
    (:class:`UnsafeCheckpointError`) without running it.
    """
    ckpt = read_checkpoint(path, map_location)
    # The file holds every weight: a named model is rebuilt without its pretrained ones (which may be gone).
    model = build_model(replace(ModelSpec.from_json(ckpt["model_kwargs"]), pretrained=False), load_init=False)
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def train_subset(config: TrainConfig, data: Any) -> Any:
    """The training split, subsampled to ``max_train_samples`` (a fixed subset per ``split_seed``)."""
    train_set = data.train
    if isinstance(data, TextData):
        return train_set  # token ids: a text run's budget is max_iters, never a subset
    if config.max_train_samples is not None and config.max_train_samples < len(train_set):
        g = torch.Generator().manual_seed(config.split_seed)
        keep = torch.randperm(len(train_set), generator=g)[: config.max_train_samples].sort().values
        train_set = train_set.subset(keep)
    return train_set
