"""Check a converted model by running it: every activation call is recorded and compared with the units.

:func:`adact.adactify` decides what to convert from a static view (module attributes, shallow
``torch.fx`` traces, a source scan). :func:`verify` runs the converted model on example inputs,
in training and in eval mode, under a :class:`torch.overrides.TorchFunctionMode` that sees every
activation *function* call (``F.silu``, ``torch.relu``, ``x.relu()``, ...) and global module
hooks that see every *module* call, registered in the model or not. Calls made inside a unit or
inside an activation module belong to it and are not counted again. What still runs natively is
listed as missed (path, code location and count); a unit no pass called is dead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from adact.surgery.probe import ExampleInputs, call_args, modes_restored, no_side_effects
from adact.surgery.report import MissedSite
from adact.surgery.targets import TargetSpec, module_kind
from adact.surgery.transformer import fast_paths_off
from adact.surgery.units import CallSites, call_key, user_frame
from adact.unit import AdAct

__all__ = ["Verification", "build_example_inputs", "call_location", "check", "merge_missed", "verify"]

# Activation functions as torch's function dispatch names them (F.gelu is torch._C._nn.gelu, a
# Tensor method arrives as the method descriptor): every spelling of every kind, in-place forms too.
_KIND_OF_NAME = {
    "relu": "relu", "relu6": "relu6", "leaky_relu": "leaky_relu", "elu": "elu", "selu": "selu",
    "celu": "celu", "gelu": "gelu", "silu": "silu", "mish": "mish", "hardswish": "hardswish",
    "softplus": "softplus", "rrelu": "rrelu", "prelu": "prelu", "sigmoid": "sigmoid",
    "hardsigmoid": "hardsigmoid", "tanh": "tanh",
}
_PREFIX = {id(F): "F", id(torch): "torch", id(torch._C._nn): "F", id(torch.Tensor): "Tensor"}


def _function_table() -> dict[Callable[..., Any], tuple[str, str]]:
    table: dict[Callable[..., Any], tuple[str, str]] = {}
    for name, kind in _KIND_OF_NAME.items():
        for owner in (torch.Tensor, torch._C._nn, torch, F):  # later owners name the call (F over torch)
            for spelling in (name, name + "_"):
                fn = getattr(owner, spelling, None)
                if fn is not None:
                    try:
                        table[fn] = (kind, f"{_PREFIX[id(owner)]}.{spelling}")
                    except TypeError:  # unhashable
                        continue
    return table


_FUNCTIONS = _function_table()


def call_location() -> str:
    """``file:line (function)`` of the first frame outside torch and adact.surgery: where a call was written."""
    frame = user_frame()
    if frame is None:
        return "<unknown>"
    parts = frame.f_code.co_filename.replace("\\", "/").split("/")
    return f"{'/'.join(parts[-2:])}:{frame.f_lineno} ({frame.f_code.co_name})"


@dataclass(frozen=True)
class Verification:
    """What running the converted model showed.

    Attributes:
        inputs: where the inputs came from (``"example_inputs"``, or what was built); ``""`` if none.
        modes: the modes a pass ran in (``"train"``, ``"eval"``); empty: nothing was verified.
        missed: targeted activations that ran natively, with path, code location and count.
        dead: paths of new units no pass called.
        shared: paths of units one code location called several times in one call of its caller (a loop).
        failed: ``"<mode> mode: <error>"`` of passes that raised (that mode was not verified).
        n_units: number of new units checked.
    """

    inputs: str = ""
    modes: tuple[str, ...] = ()
    missed: tuple[MissedSite, ...] = ()
    dead: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    n_units: int = 0

    def summary(self) -> str:
        """One line: what was verified and what it found."""
        if not self.modes:
            why = "; ".join(self.failed) or "no example_inputs, and adactify builds none for this model"
            return f"nothing verified by running ({why}); pass example_inputs=... to check every call"
        head = f"verified by running {self.inputs} in {' and '.join(self.modes)} mode"
        if self.failed:
            head += f" ({'; '.join(self.failed)})"
        if not self.missed and not self.dead:
            return f"{head}: all {self.n_units} units called, no targeted activation runs natively"
        parts = []
        if self.missed:
            n = sum(m.count for m in self.missed)
            parts.append(f"{n} native activation call(s) at {len(self.missed)} place(s) were not converted (missed)")
        if self.dead:
            parts.append(f"{len(self.dead)} of {self.n_units} units are never called (dead): "
                         f"{', '.join(repr(d) for d in self.dead[:5])}{', ...' if len(self.dead) > 5 else ''}")
        return f"{head}: " + "; ".join(parts)


@dataclass
class _Recorder:
    spec: TargetSpec
    paths: dict[int, str]
    stack: list[nn.Module] = field(default_factory=list)
    inside: int = 0  # depth of units / activation modules on the stack: their own calls are theirs
    called: set[int] = field(default_factory=set)
    invocations: dict[int, int] = field(default_factory=dict)
    at: dict[tuple[int, int, int, str | None], int] = field(default_factory=dict)
    native: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def _where(self, m: nn.Module | None) -> str:
        if m is None:
            return ""
        if id(m) in self.paths:
            return self.paths[id(m)]
        owner = next((s for s in reversed(self.stack) if id(s) in self.paths), None)
        at = self.paths[id(owner)] if owner is not None else ""
        return f"{at} ({type(m).__name__} built during forward)" if at else f"({type(m).__name__} built during forward)"

    def _owns_its_calls(self, module: nn.Module) -> bool:
        return isinstance(module, AdAct) or module_kind(module) is not None or self.spec.module(module)

    def pre(self, module: nn.Module, args: Any) -> None:
        if isinstance(module, AdAct):
            self.called.add(id(module))
            caller = next((s for s in reversed(self.stack) if not isinstance(s, CallSites)), None)
            key = (id(module), id(caller), self.invocations.get(id(caller), 0), call_key())
            self.at[key] = self.at.get(key, 0) + 1
        elif self.inside == 0 and self.spec.module(module):
            key = (self._where(module), f"{type(module).__name__} module", call_location())
            self.native[key] = self.native.get(key, 0) + 1
        self.invocations[id(module)] = self.invocations.get(id(module), 0) + 1
        self.inside += self._owns_its_calls(module)
        self.stack.append(module)

    def post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
            self.inside -= self._owns_its_calls(module)

    def function(self, what: str) -> None:
        key = (self._where(self.stack[-1] if self.stack else None), what, call_location())
        self.native[key] = self.native.get(key, 0) + 1


class _Calls(TorchFunctionMode):
    def __init__(self, rec: _Recorder) -> None:
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        try:
            found = _FUNCTIONS.get(func)
        except TypeError:
            found = None
        if found is not None and self.rec.inside == 0 and self.rec.spec.call(found[0]):
            self.rec.function(found[1])
        return func(*args, **(kwargs or {}))


def _run(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], rec: _Recorder) -> None:
    hooks = nn.modules.module
    with ExitStack() as stack:
        pre = hooks.register_module_forward_pre_hook(rec.pre)
        stack.callback(pre.remove)
        post = hooks.register_module_forward_hook(rec.post)
        stack.callback(post.remove)
        stack.enter_context(torch.no_grad())
        stack.enter_context(_Calls(rec))
        model(*args, **kwargs)


def verify(model: nn.Module, spec: TargetSpec, units: dict[int, str], inputs: ExampleInputs | Mapping[str, Any],
           source: str, strict: bool) -> Verification:
    """Run ``model`` on ``inputs`` in its mode and then the other one, recording every activation call.

    Args:
        units: ``id(unit) -> path`` of the units to check for calls.
        source: says where ``inputs`` came from, for the summary.
        strict: re-raise an error of the pass in the model's own mode (the user's inputs); else report it.
    """
    args, kwargs = call_args(inputs)
    paths: dict[int, str] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), path)
    rec = _Recorder(spec, paths)
    modes: list[str] = []
    failed: list[str] = []
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
    with modes_restored(model), no_side_effects(model, tensors), fast_paths_off(model):
        for training in (model.training, not model.training):
            name = "train" if training else "eval"
            model.train(training)
            rec.stack.clear()
            rec.inside = 0
            try:
                _run(model, args, kwargs, rec)
            except Exception as e:  # noqa: BLE001 - a pass that fails verifies nothing, and says why
                if strict and not modes and not failed:
                    raise
                failed.append(f"{name} mode: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160])
                continue
            modes.append(name)
    missed = tuple(
        MissedSite(path, what, f"runs natively (seen by running, at {where})", count=n)
        for (path, what, where), n in rec.native.items()
    )
    dead = tuple(p for k, p in units.items() if k not in rec.called) if modes else ()
    looped = {key[0] for key, n in rec.at.items() if n > 1}
    shared = tuple(p for k, p in units.items() if k in looped)
    return Verification(source if modes else "", tuple(modes), missed if modes else (), dead, shared, tuple(failed),
                        len(units))


Built = tuple[Union[Mapping[str, Any], tuple[Any, ...]], str]


def build_example_inputs(model: nn.Module) -> list[Built]:
    """Inputs to try, in order, for a verification pass of common model types, each with its description.

    Hugging Face models taking ``input_ids`` get 2 x 8 token ids (and the same as
    ``decoder_input_ids`` for encoder-decoders); models taking ``pixel_values`` get a
    2 x C x S x S batch from their config; timm models a batch of their
    ``pretrained_cfg["input_size"]``; other image models (the first layer a ``Conv2d``) a
    2 x C x S x S batch, S the model's ``image_size`` attribute, else 64 and then 224; models whose
    first layer is a ``Linear`` a 2 x in_features batch. Empty for other models.
    """
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)

    def images(c: int, h: int, w: int) -> Built:
        return (torch.randn(2, c, h, w, generator=gen).to(device),), f"a 2 x {c} x {h} x {w} batch"

    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    if config is not None and main == "input_ids" and isinstance(getattr(config, "vocab_size", None), int):
        ids = torch.randint(0, config.vocab_size, (2, 8), generator=gen).to(device)
        kwargs: dict[str, Any] = {"input_ids": ids}
        if getattr(config, "is_encoder_decoder", False):
            kwargs["decoder_input_ids"] = ids
        return [(kwargs, "2 x 8 token ids")]
    if config is not None and main == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else int(size[0])
        c = int(getattr(config, "num_channels", 3))
        (x,), what = images(c, size, size)
        return [({"pixel_values": x}, what)]
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and len(cfg.get("input_size", ())) == 3:
        return [images(*(int(v) for v in cfg["input_size"]))]
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if isinstance(first, nn.Conv2d):
        size = getattr(model, "image_size", None)
        sizes = (size,) if isinstance(size, int) else (64, 224)  # small first: it is one pass per mode
        return [images(first.in_channels, s, s) for s in sizes]
    if isinstance(first, nn.Linear):
        return [((torch.randn(2, first.in_features, generator=gen).to(device),), f"a 2 x {first.in_features} batch")]
    return []


def check(root: nn.Module, spec: TargetSpec, unit_paths: list[str], example_inputs: ExampleInputs | None) -> Verification:
    """:func:`verify` on ``example_inputs``, or on inputs :func:`build_example_inputs` makes; else nothing verified."""
    units: dict[int, str] = {}
    for path in unit_paths:
        units.setdefault(id(root.get_submodule(path)), path)
    if example_inputs is not None:
        return verify(root, spec, units, example_inputs, "example_inputs", strict=True)
    result = Verification(n_units=len(units))
    for inputs, what in build_example_inputs(root):
        result = verify(root, spec, units, inputs, f"{what} (built by adactify)", strict=False)
        if result.modes:
            break
    return result


def merge_missed(static: list[MissedSite], found: Verification) -> list[MissedSite]:
    """The static scan's misses and the verified ones; a scan guess that running confirmed is listed once."""
    def kind(what: str) -> str:
        return what.rpartition(".")[2].removesuffix(" call").removesuffix(" module").rstrip("_").lower()

    seen = {(m.path, kind(m.what)) for m in found.missed}
    return [m for m in static if (m.path, kind(m.what)) not in seen] + list(found.missed)
