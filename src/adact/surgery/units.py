"""The unit factory :func:`adact.adactify` uses for every site, and per-site dispatch."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import torch
from torch import nn

from adact.activations import ACTIVATIONS
from adact.errors import UserError
from adact.surgery.originals import module_original
from adact.unit import AdAct

__all__ = ["CallSites", "ResetCallSites", "UnitFactory", "call_key", "model_device", "share_pool", "user_frame"]


@dataclass
class UnitFactory:
    """Builds the AdAct unit of one site: the pool, the extra :class:`adact.AdAct` arguments, the device.

    Units are built with ``granularity="layer"``; :meth:`per_channel` turns one into a
    per-channel unit once the site's input shape is known.
    """

    candidates: tuple[str, ...]
    unit_kwargs: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    warm: bool = False  # init="original": each unit starts as the activation it replaces

    def __call__(self, original: nn.Module | None, training: bool, call: str | None = None,
                 what: str = "") -> AdAct:
        """The unit of one site; ``original`` is the replaced module, ``call`` the registry name a
        replaced function call computes (:func:`adact.surgery.originals.call_original`), ``what``
        names the site for errors."""
        start = None
        if self.warm:
            start = module_original(original) if original is not None else call
            if start is None:
                label = type(original).__name__ if original is not None else what or "this call"
                raise UserError(
                    f"adactify(init='original'): {label} has no exact equal in the activation registry "
                    f"({', '.join(ACTIVATIONS)}), so a unit cannot start as it; leave such sites out with "
                    f"targets=[...], or use init='mixture'")
        if start == "prelu" and original is not None and original.weight.numel() > 1:
            raise UserError("adactify(init='original'): a PReLU with one slope per channel can start a unit only "
                            "with granularity='channel'; leave it out with targets=[...] or use init='mixture'")
        pool = self.candidates if start is None or start in self.candidates else (*self.candidates, start)
        unit = AdAct(pool, **self.unit_kwargs, **({"original": start} if start else {}))
        if original is not None:
            seed_prelu(unit, original)
        return unit.to(self.device).train(training)

    def per_channel(self, unit: AdAct, num_channels: int, channel_dim: int) -> AdAct:
        start = {"original": unit.original} if unit.original else {}
        new = AdAct(
            unit.candidates, "channel", num_channels, channel_dim=channel_dim, **self.unit_kwargs, **start
        ).to(self.device)
        if unit.prelu_weight is not None and new.prelu_weight is not None:
            with torch.no_grad():
                new.prelu_weight.copy_(unit.prelu_weight.expand(num_channels))
        return new.train(unit.training)


def share_pool(units: Sequence[AdAct], candidates: Sequence[str]) -> None:
    """Give every warm-started unit the same pool: ``candidates``, then every unit's original.

    One pool for the whole model keeps choices, heatmaps and consensus comparable across units
    (a MobileNet's ReLU units can choose Hardswish too). Units are widened in place, before any
    optimizer holds their parameters: new logits start at zero, a seeded PReLU slope is kept,
    and each unit still computes its own original (its gate is 0).
    """
    pool = tuple(dict.fromkeys([*candidates, *(u.original for u in units if u.original is not None)]))
    for unit in units:
        if unit.candidates == pool:
            continue
        slope = None if unit.prelu_weight is None else unit.prelu_weight.detach().clone()
        like = unit.logits
        unit.candidates = pool
        unit.logits = nn.Parameter(like.new_empty(*like.shape[:-1], len(pool)))
        if "prelu" in pool and unit.prelu_weight is None:
            unit.prelu_weight = nn.Parameter(like.new_empty(unit.num_channels or 1))
        unit.reset_parameters()
        if slope is not None and unit.prelu_weight is not None:
            with torch.no_grad():
                unit.prelu_weight.copy_(slope)


def seed_prelu(unit: AdAct, module: nn.Module) -> None:
    """A (possibly pretrained) PReLU's slope seeds the unit's PReLU candidate."""
    if not isinstance(module, nn.PReLU) or unit.prelu_weight is None:
        return
    w = module.weight.detach()
    target = unit.prelu_weight
    if w.numel() in (1, target.numel()):
        with torch.no_grad():
            target.copy_(w.reshape(-1).expand(target.numel()) if w.numel() == 1 else w.reshape(-1))


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


# torch's and this package's frames are not where a call was written (the separator keeps torchvision out).
_SKIPPED = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)


def user_frame() -> FrameType | None:
    """The innermost frame on the stack outside torch and adact.surgery: the code that made the call."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        frame = frame.f_back
    return frame


def call_key() -> str | None:
    """Where the current call was written: ``file:first line:function:bytecode offset`` of the first
    frame outside torch and adact.surgery; the same while ``torch.fx`` traces a forward and when it runs."""
    frame = user_frame()
    if frame is None:
        return None
    code = frame.f_code
    return f"{code.co_filename}:{code.co_firstlineno}:{code.co_name}:{frame.f_lasti}"


class CallSites(nn.Module):
    r"""One module per call site of a module that a ``forward`` calls several times.

    torchvision's ``BasicBlock`` calls ``self.relu`` twice; :func:`adact.adactify` puts a
    ``CallSites`` of two units at ``self.relu``, so the block keeps its class and code and each
    call gets its own unit (children ``"0"``, ``"1"``, ...).

    **Which unit serves a call.** The call's *code location* (the caller's code object and the
    bytecode offset of the call, recorded while ``torch.fx`` traced the caller or while the example
    pass ran) picks the unit, so a call reached in one mode only (``if self.training:``), a call
    through ``seq.forward(x)``, and the recomputation of an activation-checkpointed method get the
    unit of their own line. A location that runs several units (a loop ``torch.fx`` unrolled) serves
    them in turn, counted from the caller's entry. Where the location is unknown (a forward
    rewritten by :class:`adact.surgery.TracedForward`, code compiled by ``torch.compile``), the
    :math:`i`-th call in the current mode after the caller's ``forward`` starts runs child
    ``tables[training][i]``; each caller resets the count through a forward pre-hook
    (:class:`ResetCallSites`).

    Args:
        sites: one module per call site.
        tables: per mode (``True``: training), the child serving each call in call order. Default:
            call ``i`` runs child ``i`` in both modes.
        where: code location -> the children serving the calls written there, in turn.
    """

    def __init__(self, sites: Sequence[nn.Module], tables: dict[bool, list[int]] | None = None,
                 where: dict[str, list[int]] | None = None) -> None:
        super().__init__()
        for i, m in enumerate(sites):
            self.add_module(str(i), m)
        n = len(sites)
        self.tables = tables or {True: list(range(n)), False: list(range(n))}
        self.where: dict[str, list[int]] = dict(where or {})
        self.next_site = 0
        self.turns: dict[str, int] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        n = len(self._modules)
        self.__dict__.setdefault("tables", {True: list(range(n)), False: list(range(n))})
        self.__dict__.setdefault("where", {})
        self.__dict__.setdefault("turns", {})

    def __getitem__(self, i: int) -> nn.Module:
        module = self._modules[str(range(len(self._modules))[i])]
        assert module is not None
        return module

    def __len__(self) -> int:
        return len(self._modules)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        key = None if torch.compiler.is_compiling() else call_key()
        served = self.where.get(key) if key is not None else None
        if served:
            turn = self.turns.get(key, 0)  # type: ignore[arg-type]
            self.turns[key] = turn + 1  # type: ignore[index]
            self.next_site += 1  # keeps the order of calls at unknown locations (if any) in step
            module = self._modules[str(served[turn % len(served)])]
        else:
            table = self.tables[self.training]
            i = self.next_site
            if i >= len(table):
                raise RuntimeError(
                    f"CallSites: called {i + 1} times in {'training' if self.training else 'eval'} mode since its "
                    f"caller's forward started, but adactify found {len(table)} call sites; the caller's calls must "
                    f"not depend on the data"
                )
            self.next_site = i + 1
            module = self._modules[str(table[i])]
        assert module is not None
        return module(*args, **kwargs)


class ResetCallSites:
    """Forward pre-hook of a caller: its calls of ``sites`` start at position ``start`` of the mode's table."""

    def __init__(self, sites: CallSites, start: int | dict[bool, int]) -> None:
        self.sites = sites
        self.start = start if isinstance(start, dict) else {True: start, False: start}

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.sites.next_site = self.start[self.sites.training]
        self.sites.turns.clear()
