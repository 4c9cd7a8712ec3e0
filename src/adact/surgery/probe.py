"""One forward pass with ``example_inputs`` through the converted model: who calls each unit, with what shape."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import Tensor, nn

from adact.surgery.transformer import fast_paths_off
from adact.surgery.units import CallSites, call_key
from adact.unit import AdAct

__all__ = ["ExampleInputs", "UnitCall", "call_args", "modes_restored", "no_side_effects", "probe"]

ExampleInputs = Union[Tensor, Sequence[Any]]


@dataclass
class UnitCall:
    """One call of a unit: its caller, which call of the caller it was, the input shape, and where
    the call is written (:func:`adact.surgery.units.call_key`)."""

    caller: nn.Module | None
    invocation: int
    shape: torch.Size | None
    location: str | None = None


@dataclass
class _Recorder:
    stack: list[nn.Module] = field(default_factory=list)
    invocations: dict[int, int] = field(default_factory=dict)
    calls: dict[int, list[UnitCall]] = field(default_factory=dict)

    def pre(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if isinstance(module, AdAct):
            # A unit inside CallSites is called by the dispatcher, which counts calls itself.
            caller = self.stack[-1] if self.stack else None
            caller = None if isinstance(caller, CallSites) else caller
            x = inputs[0] if inputs else None
            inv = self.invocations.get(id(caller), 0) if caller is not None else 0
            shape = x.shape if isinstance(x, Tensor) else None
            self.calls.setdefault(id(module), []).append(UnitCall(caller, inv, shape, call_key()))
        self.invocations[id(module)] = self.invocations.get(id(module), 0) + 1
        self.stack.append(module)

    def post(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if self.stack and self.stack[-1] is module:
            self.stack.pop()


def call_args(example_inputs: ExampleInputs | Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``model(*args, **kwargs)`` for example inputs: a mapping is keyword arguments, a tensor one
    argument, anything else a sequence of arguments."""
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    return ((example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)), {}


def probe(model: nn.Module, example_inputs: ExampleInputs | Mapping[str, Any],
          training: bool | None = None) -> dict[int, list[UnitCall]]:
    """Run one forward pass (a mapping: keyword arguments), in the model's mode or in ``training``
    mode; ``id(unit) -> its calls``. Buffers, RNG streams and modes are restored."""
    args, kwargs = call_args(example_inputs)
    rec = _Recorder()
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(rec.pre))
        handles.append(m.register_forward_hook(rec.post))
    try:
        with no_side_effects(model, [*args, *kwargs.values()]), fast_paths_off(model), torch.no_grad(), \
                modes_restored(model):
            if training is not None:
                model.train(training)
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return rec.calls


@contextmanager
def modes_restored(model: nn.Module) -> Iterator[None]:
    """Put back each module's own mode (a model may mix them) after a pass in another mode."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


@contextmanager
def no_side_effects(model: nn.Module, args: Sequence[Any]) -> Iterator[None]:
    """Restore buffers (batch-norm statistics) and the RNG streams the pass may consume."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    cuda = sorted({a.device.index or 0 for a in args if isinstance(a, Tensor) and a.is_cuda})
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)
