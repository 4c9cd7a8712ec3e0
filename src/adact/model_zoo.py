"""Models by name: ``convnet``, ``torchvision:NAME``, ``timm:NAME``, ``transformers:NAME``, ``path/file.py:factory``, ``pkg.mod:factory``.

:func:`create_model` builds the model as written (its own activations), with the classifier
sized to ``num_classes`` and the stem to ``in_channels``; :func:`with_activation` then makes
the variant a run trains: AdAct units at every activation (:func:`adact.adactify`), the model as
written (``"baseline"``), or each unit fixed to a chosen activation (:func:`adact.optimize`).
:func:`check_input` runs one forward pass so a model that cannot take the data's images fails
with a clear message before training. Language models: :func:`create_language_model` builds a
Hugging Face causal LM from its config (random weights) as a :class:`CausalLM` that maps token ids
to logits, and :func:`check_language_model` is its one forward pass.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adact.choice import adact_units
from adact.config import BASELINE, parse_model, parse_model_config
from adact.errors import UserCodeError, UserError
from adact.surgery import adactify, optimize

__all__ = ["REPORT_ATTR", "CausalLM", "adactify_summary", "check_input", "check_language_model",
           "create_language_model", "create_model", "fit_stem_and_head", "with_activation"]

#: Attribute of a model :func:`with_activation` converted: its :class:`adact.surgery.AdactifyReport`.
REPORT_ATTR = "_adactify_report"

def _torchvision(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise UserError(f"torchvision has no model {name!r}; see torchvision.models.list_models()") from None
    if not pretrained:
        return builder(weights=None, num_classes=num_classes)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not file.is_file():
        raise UserError(f"--pretrained: the weights of torchvision:{name} are not at hand (expected {file}); "
                         f"adact does not download them: fetch {weights.url} to that path, or drop --pretrained")
    return builder(weights=weights)  # with ImageNet's 1000 classes; the head is replaced below


def _timm(name: str, num_classes: int, in_channels: int, pretrained: bool) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserError(f"--model timm:{name} needs timm, which is not installed: pip install 'adact[timm]'") from None
    if not timm.is_model(name):
        raise UserError(f"timm has no model {name!r}; see timm.list_models()")
    try:
        with _hub_offline(pretrained):
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels)
    except Exception as e:  # noqa: BLE001 -- hub errors have many types; none is the user's bug to trace
        if not pretrained:
            raise
        raise UserError(f"--pretrained: cannot load the weights of timm:{name} ({e}); drop --pretrained, or put "
                         f"them in the Hugging Face cache first") from None


@contextlib.contextmanager
def _hub_offline(active: bool) -> Iterator[None]:
    """Weights from the local Hugging Face cache only: adact never downloads (and never waits on a network)."""
    if not active:
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _import_factory(spec: str) -> Any:
    target, _, factory = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--model {spec}: no file {path}")
        mod_name = f"adact_user_model_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise UserError(f"--model {spec}: cannot import {path}")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module  # spawned workers import it again from the path
            try:
                with _user_code(spec, f"importing {path}", origin=str(path.resolve().parent)):
                    loader_spec.loader.exec_module(module)
            except UserError:
                del sys.modules[mod_name]  # half a module: the next try runs the file again
                raise
    else:
        try:
            with _user_code(spec, f"importing {target}", missing=target):
                module = importlib.import_module(target)
        except ModuleNotFoundError as e:  # the module itself is not on the path (not one it imports)
            raise UserError(f"--model {spec}: cannot import module {target!r} ({e}); {_path_hint(target)}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise UserError(f"--model {spec}: {target} has no callable {factory!r}")
    return fn


@contextlib.contextmanager
def _user_code(spec: str, what: str, missing: str | None = None, origin: str | None = None) -> Iterator[None]:
    """An exception from the user's model code is their error: :class:`UserCodeError` with their frames.

    ``missing``: a module being imported; its own absence stays a ``ModuleNotFoundError`` for the caller.
    ``origin``: the folder of the user's code, where their frames start.
    """
    try:
        yield
    except UserError:
        raise
    except ModuleNotFoundError as e:
        if missing is not None and e.name is not None and (missing == e.name or missing.startswith(e.name + ".")):
            raise
        raise _user_code_error(spec, what, e, origin) from e
    except Exception as e:  # noqa: BLE001 -- anything the user's code raises is theirs to fix
        raise _user_code_error(spec, what, e, origin) from e


def _user_code_error(spec: str, what: str, e: Exception, origin: str | None) -> UserCodeError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return UserCodeError.wrap(f"--model {spec}: your code raised {type(e).__name__}{': ' + first if first else ''} "
                              f"while {what} (its traceback is above); fix it there", e, origin)


def _folder_of(obj: Any) -> str | None:
    """The folder of the file that defines ``obj`` (a function or class), if it has one."""
    try:
        return os.path.dirname(os.path.realpath(inspect.getfile(obj)))
    except (TypeError, OSError):
        return None


def _path_hint(target: str) -> str:
    """Where Python looks for ``pkg.mod``, and how to point it at the user's folder."""
    top = target.split(".")[0]
    here = Path.cwd()
    if (here / top).is_dir() or (here / f"{top}.py").is_file():
        return (f"{top} is in the current folder {here}, which the adact command does not search: run "
                f"PYTHONPATH={here} adact ... (or python -m adact ...)")
    return (f"Python looks for it on sys.path; add the folder that holds {top}/ (or {top}.py) to PYTHONPATH, "
            f"e.g. PYTHONPATH=/path/to/that/folder adact ..., or give the file: --model path/to/{top}.py:factory")


def _call_factory(fn: Any, spec: str, num_classes: int, in_channels: int) -> nn.Module:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
              if k in params or takes_any}
    call = f"calling {getattr(fn, '__name__', 'the factory')}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    with _user_code(spec, call, origin=_folder_of(fn)):
        model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _first(model: nn.Module, kind: type[nn.Module], last: bool = False) -> tuple[str, nn.Module] | None:
    found = [(n, m) for n, m in model.named_modules() if type(m) is kind]
    if not found:
        return None
    return found[-1] if last else found[0]


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)


def _mean_over_inputs(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Pretrained conv filters for another number of input channels: their mean over the old ones."""
    return weight.mean(1, keepdim=True).expand_as(like).clone()


def _adapt(model: nn.Module, num_classes: int, in_channels: int) -> nn.Module:
    """Resize the first conv's inputs and the last linear layer's outputs where they differ."""
    stem = _first(model, nn.Conv2d)
    if stem is not None and stem[1].in_channels != in_channels and stem[1].groups == 1:
        path, conv = stem
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                        conv.padding, conv.dilation, 1, conv.bias is not None, conv.padding_mode)
        with torch.no_grad():  # keep pretrained filters: their mean over the old input channels
            new.weight.copy_(_mean_over_inputs(conv.weight, new.weight))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)  # type: ignore[union-attr]
        _set(model, path, new)
    head = _first(model, nn.Linear, last=True)
    if head is not None and head[1].out_features != num_classes:
        path, lin = head
        _set(model, path, nn.Linear(lin.in_features, num_classes, bias=lin.bias is not None))
    return model


def fit_stem_and_head(model: nn.Module, state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Fit a state dict from other data to ``model`` the way :func:`create_model` fits pretrained weights.

    The stem (the first ``nn.Conv2d``) gets the file's filters averaged over their input channels
    when the two differ in input channels only; the head (the last ``nn.Linear``) keeps the
    model's own fresh weights when the two differ in outputs (classes). Returns the fitted dict and
    one sentence per change, for a warning; any other difference is left for the caller to refuse.
    """
    own = model.state_dict()
    said: list[str] = []
    stem = _first(model, nn.Conv2d)
    key = f"{stem[0]}.weight" if stem is not None else ""
    w = state.get(key)
    if isinstance(w, torch.Tensor) and w.dim() == 4 and key in own and w.shape[1] != own[key].shape[1] \
            and w.shape[0] == own[key].shape[0] and w.shape[2:] == own[key].shape[2:]:
        state[key] = _mean_over_inputs(w, own[key])
        said.append(f"averaged {key} over its {w.shape[1]} input channels ({own[key].shape[1]} here)")
    head = _first(model, nn.Linear, last=True)
    keys = [k for k in (f"{head[0]}.weight", f"{head[0]}.bias") if k in state and k in own] if head else []
    if keys and state[keys[0]].shape[0] != own[keys[0]].shape[0]:
        theirs, ours = state[keys[0]].shape[0], own[keys[0]].shape[0]
        for k in keys:
            state[k] = own[k]
        said.append(f"the head {head[0]} has {ours} outputs here and {theirs} in the file: it keeps its own "
                    f"new initialisation")
    return state, said


def create_model(spec: str, *, num_classes: int, in_channels: int, pretrained: bool = False) -> nn.Module:
    """The model named by ``spec``, as written, for ``in_channels`` inputs and ``num_classes`` outputs.

    ``torchvision:NAME`` and ``timm:NAME`` are built with random weights unless ``pretrained``
    (then the weights must already be on disk: nothing is downloaded). A user factory is called
    with ``num_classes`` and ``in_channels`` where its signature accepts them. Afterwards the
    first ``nn.Conv2d`` and the last ``nn.Linear`` are replaced where their sizes differ.

    Raises:
        ValueError: an unknown spec, a missing optional library, or weights not at hand.
        FileNotFoundError: a factory file that does not exist.
    """
    kind, name = parse_model(spec)
    if kind == "convnet":
        raise UserError("create_model builds named models; the paper's ConvNet is adact.ConvNet")
    if kind == "torchvision":
        model = _torchvision(name, num_classes, pretrained)
    elif kind == "timm":
        model = _timm(name, num_classes, in_channels, pretrained)
    else:
        model = _call_factory(_import_factory(name), spec, num_classes, in_channels)
    return _adapt(model, num_classes, in_channels)


def with_activation(model: nn.Module, activation: str | Sequence[str], *, granularity: str = "layer",
                    fused: bool = True, example_inputs: torch.Tensor | None = None,
                    candidates: Sequence[str] | None = None, channel_dim: int | None = None,
                    init: str = "mixture") -> nn.Module:
    """The variant of ``model`` a run trains.

    Args:
        model: the model as written (from :func:`create_model`).
        activation: ``"adact"`` (an AdAct unit at every activation call site), ``"baseline"``
            (unchanged), or one activation name per AdAct site, in module order: the optimized
            model, each site fixed to its choice with default hyper-parameters (a PReLU slope starts
            at 0.25, as when training from scratch).
        granularity, fused: passed to each AdAct unit.
        example_inputs: a batch for :func:`adact.adactify` to count calls in untraceable modules
            (needed for ``granularity="channel"``).
        candidates: the units' pool (None: the paper's seven).
        channel_dim: per-channel units of 3-D inputs: ``-1`` for ``(N, L, features)`` token sequences.
        init: ``"original"``: AdAct units start as the activation each replaces (warm start);
            ``"mixture"``: as uniform mixtures (the paper's).
    """
    if activation == BASELINE:
        return model
    if isinstance(activation, str) and activation != "adact":
        raise UserError(f"activation {activation!r}: a named model takes 'adact', 'baseline' or one activation "
                         f"name per AdAct site")
    kwargs: dict[str, Any] = {"granularity": granularity, "adact_kwargs": {"fused": fused}, "init": init}
    if example_inputs is not None:
        kwargs["example_inputs"] = example_inputs
    if candidates is not None:
        kwargs["candidates"] = list(candidates)
    if channel_dim is not None:
        kwargs["channel_dim"] = channel_dim
    converted, report = adactify(model, return_report=True, **kwargs)
    if activation == "adact":
        converted.__dict__[REPORT_ATTR] = report
        return converted
    units = adact_units(converted)
    choices = list(activation)
    if len(choices) != len(units):
        raise UserError(f"{len(choices)} chosen activations for a model with {len(units)} AdAct sites; the choices "
                         f"must come from the same model")
    with torch.no_grad():
        for (path, unit), choice in zip(units, choices):
            if choice not in unit.candidates:
                raise UserError(f"site {path}: {choice!r} is not one of its candidates {list(unit.candidates)}")
            # Make the choice the unit's dominant activation; optimize() then swaps in that plain module.
            unit.logits.zero_()
            unit.logits[..., list(unit.candidates).index(choice)] = 1.0
    return optimize(converted, reinit=True)


def adactify_summary(model: nn.Module) -> list[str]:
    """What running the model showed :func:`adact.adactify`: its summary line, then one line per activation
    that runs natively and per unit never called; [] for a model :func:`with_activation` did not convert."""
    report = model.__dict__.get(REPORT_ATTR)
    if report is None:
        return []
    lines = [f"adactify: {report.n_units} units; {report.verification}"]
    lines += [f"  missed {m.what} at {m.path or '<root>'!r}: {m.reason}" for m in report.missed]
    lines += [f"  dead unit {p!r}: never called while verifying" for p in report.dead]
    return lines


def check_input(model: nn.Module, spec: str, in_channels: int, image_size: tuple[int, int], num_classes: int) -> None:
    """One forward pass of two blank images in eval mode; a model that cannot take them is a clear error."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # A shape error gets the --image-size hint; anything else the user's own forward raises is theirs.
    theirs = _user_code(spec, "running the model on 2 blank images", origin=_folder_of(type(model))) \
        if parse_model(spec)[0] == "code" else contextlib.nullcontext()
    try:
        with theirs:
            try:
                with torch.no_grad():
                    out = model(torch.zeros(2, in_channels, *image_size, device=device))
            except (RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"model {spec} cannot run on {in_channels}x{image_size[0]}x{image_size[1]} images "
                                f"({first}); resize them with --image-size S (e.g. 32, or 224 for ImageNet "
                                f"models)") from None
    finally:
        model.train(was_training)
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
        raise UserError(f"model {spec} returns {shape} for 2 images, not (2, {num_classes}) logits; its factory "
                         f"should take num_classes or end in an nn.Linear adact can resize")


class CausalLM(nn.Module):
    r"""A Hugging Face causal language model as a plain module: token ids in, next-token logits out.

    The training loop, :func:`adact.adactify` and ONNX export all see ``forward(idx) -> logits``;
    the wrapped model keeps its own attribute paths under ``lm`` (``lm.transformer.h.0.mlp.act``).

    Args:
        lm: a ``transformers`` ``*ForCausalLM`` model.

    Shape:
        - Input: :math:`(B, T)` int64 token ids.
        - Output: :math:`(B, T, V)` logits.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=idx, use_cache=False).logits


def create_language_model(spec: str, *, vocab_size: int, block_size: int, model_config: str = "") -> CausalLM:
    """``transformers:NAME``: a causal LM of model type NAME built from its config, with random weights.

    The config is ``transformers.AutoConfig.for_model(NAME, **model_config)`` with the data's
    vocabulary size; nothing is downloaded. Sequences of ``block_size`` tokens must fit its
    position table (``--model-config n_positions=64`` for GPT-2, ``max_position_embeddings`` for Llama).

    Raises:
        UserError: transformers missing, an unknown model type, or a config it refuses.
    """
    kind, name = parse_model(spec)
    if kind != "transformers":
        raise UserError(f"create_language_model builds transformers:NAME models, not {spec!r}")
    try:
        import transformers
    except ImportError:
        raise UserError(f"--model {spec} needs transformers, which is not installed: pip install transformers") from None
    settings = parse_model_config(model_config)
    settings["vocab_size"] = vocab_size
    for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
        settings.setdefault(token, None)  # GPT-2's 50256 is outside a character vocabulary; nothing here generates
    try:
        config = transformers.AutoConfig.for_model(name, **settings)
    except ValueError as e:
        if "Unrecognized model identifier" not in str(e):
            raise UserError(f"--model {spec} --model-config {model_config!r}: {_first_line(e)}") from None
        raise UserError(f"--model {spec}: transformers {transformers.__version__} has no model type {name!r}; "
                        f"use a config's model_type, e.g. gpt2, llama, qwen2, gpt_neox") from None
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        positions = getattr(config, key, None)
        if isinstance(positions, int) and positions < block_size:
            raise UserError(f"--model {spec}: its {key} is {positions}, fewer than the {block_size} tokens of a block; "
                            f"give it room (--model-config {key}={block_size}) or use --block-size {positions}")
    try:
        lm = transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"--model {spec} --model-config {model_config!r}: transformers cannot build a causal LM from "
                        f"it ({_first_line(e)})") from None
    return CausalLM(lm)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def check_language_model(model: nn.Module, spec: str, block_size: int, vocab_size: int) -> None:
    """One forward pass of two blocks of ``block_size`` tokens in eval mode; a clear error if it fails."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            out = model(torch.zeros(2, block_size, dtype=torch.long, device=device))
    except (RuntimeError, ValueError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model {spec} cannot run on blocks of {block_size} tokens ({first}); give it room for them "
                        f"(e.g. --model-config n_positions={block_size}) or use a smaller --block-size") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, block_size, vocab_size):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model {spec} returns {shape} for 2 blocks of {block_size} tokens, not "
                        f"(2, {block_size}, {vocab_size}) logits")
