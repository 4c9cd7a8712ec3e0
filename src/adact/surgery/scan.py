"""Find every activation call site by tracing each module's own ``forward`` with ``torch.fx``.

Each module is traced *shallowly*: its submodules are leaves, so the trace shows which
submodules its ``forward`` calls (and how often) and which activation functions it calls
itself. A module ``torch.fx`` cannot trace affects only its own sites, which are reported.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Union

from torch import fx, nn

from adact.surgery.report import MissedSite
from adact.surgery.targets import TargetSpec, function_kind, looks_like_activation, module_kind, source_activation_calls
from adact.surgery.units import CallSites, call_key
from adact.unit import AdAct

__all__ = ["LOCATION", "Scan", "TRANSFORMER_LAYERS", "is_torch_builtin", "module_graph", "scan", "shallow_trace"]

#: fx node meta key: the code location of a traced module call.
LOCATION = "adact_location"

#: torch.nn layers whose ``activation`` may be a function (``activation="gelu"``).
TRANSFORMER_LAYERS: tuple[type[nn.Module], ...] = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


class _ShallowTracer(fx.Tracer):
    """Traces the root's own forward: every submodule call is a leaf ``call_module`` node, which
    records where the call is written (``node.meta[LOCATION]``, see :func:`adact.surgery.units.call_key`)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            out.node.meta[LOCATION] = call_key()
        return out


def shallow_trace(module: nn.Module, training: bool | None = None) -> fx.Graph:
    """``module.forward`` as an fx graph (submodules as leaves), in the given mode; raises if untraceable."""
    mode = module.training
    if training is not None:
        module.training = training  # only this module: its children are leaves
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warnings concern the trace, not the user
            return _ShallowTracer().trace(module)
    finally:
        module.training = mode


def module_graph(module: nn.Module, training: bool | None = None) -> fx.Graph:
    """The graph of ``module``'s forward: a copy of the one an earlier adactify installed, else a new trace."""
    traced = module.__dict__.get("forward")
    graphs = getattr(traced, "graphs", None)
    if isinstance(graphs, dict):
        graph = fx.Graph()
        out = graph.graph_copy(graphs[module.training if training is None else training], {})
        graph.output(out)
        return graph
    return shallow_trace(module, training)


def is_torch_builtin(m: nn.Module) -> bool:
    """torch.nn's own modules (and Sequentials that keep its forward): their calls are known without a trace."""
    if isinstance(m, nn.Sequential):
        return type(m).forward is nn.Sequential.forward  # e.g. torchvision's Conv2dNormActivation
    return type(m).__module__.startswith(("torch.nn.", "torch.ao.nn."))


@dataclass
class Scan:
    """What the shallow traces found.

    Attributes:
        calls: ``id(target module) -> caller of each call site``, training mode's call order first,
            then the sites reached only in eval mode.
        tables: ``id(target module) -> {training: site of each call}``, where the two modes' calls differ.
        locations: ``id(target module) -> code location of each call site`` (None: unknown).
        inplace: ``id(caller) -> targets of its calls of in-place activation modules whose input is read
            after the call`` (the rewrite keeps that read seeing the activation's output).
        unchecked: ``id(target module) -> path`` of its owner, whose forward could not be traced.
        functional: ``(path, module)`` of traced modules whose forward calls targeted functions.
        missed: sites found in source code but not converted.
        untraced: ``(path, reason)`` of relevant modules torch.fx could not trace.
        lookalikes: ``(path, class name)`` of unknown modules named like activations.
        seen: ids of modules whose calls the traces account for (traced forwards, torch.nn's own).
    """

    calls: dict[int, list[nn.Module]] = field(default_factory=dict)
    tables: dict[int, dict[bool, list[int]]] = field(default_factory=dict)
    locations: dict[int, list[str | None]] = field(default_factory=dict)
    inplace: dict[int, set[str]] = field(default_factory=dict)
    unchecked: dict[int, str] = field(default_factory=dict)
    functional: list[tuple[str, nn.Module]] = field(default_factory=list)
    missed: list[MissedSite] = field(default_factory=list)
    untraced: list[tuple[str, str]] = field(default_factory=list)
    lookalikes: list[tuple[str, str]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)


def _reason(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg}"[:200]


Slot = tuple[nn.Module, tuple[int, str, int], Union[str, None]]  # caller, slot key, code location


def scan(model: nn.Module, spec: TargetSpec) -> Scan:
    """Shallow-trace every module of ``model`` that may call an activation, in training and in eval mode."""
    out = Scan()
    seen: set[int] = set()
    slots: dict[bool, dict[int, list[Slot]]] = {True: {}, False: {}}
    inlined: set[int] = set()  # builtin Sequentials whose children a traced forward calls itself (seq.forward(x))
    as_module: set[int] = set()  # modules some traced forward calls
    for path, m in model.named_modules():
        if id(m) in seen:
            continue
        seen.add(id(m))
        if spec.module(m) or isinstance(m, (AdAct, CallSites)) or module_kind(m) is not None:
            continue  # an activation itself: replaced whole, or deliberately left alone
        if looks_like_activation(m):
            if not spec.module(m):
                out.lookalikes.append((path, type(m).__name__))
            continue
        children = OrderedDict((name, c) for name, c in m._modules.items() if c is not None)
        if type(m).forward is nn.Module.forward or isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            continue  # namespaces without a forward: their owners' forwards make the calls
        if is_torch_builtin(m):
            out.seen.add(id(m))
            # torch.nn's modules call each child at most once (Sequential: once per position).
            for name, c in children.items():
                if spec.module(c):
                    for mode in (True, False):
                        slots[mode].setdefault(id(c), []).append((m, (id(m), f"builtin:{name}", 0), None))
            if not isinstance(m, (*TRANSFORMER_LAYERS, nn.Sequential)):
                calls = [k for k in source_activation_calls(type(m).forward, m) if spec.call(k)]
                for kind in calls:
                    out.missed.append(
                        MissedSite(path, f"{kind} call", f"inside torch.nn.{type(m).__name__}, which is not traced")
                    )
            continue
        try:
            graphs = {mode: module_graph(m, training=mode) for mode in (True, False)}
        except Exception as e:  # noqa: BLE001 - any failure means "no graph", reported below
            reason = _reason(e)
            owned = [c for c in m.modules() if spec.module(c)]
            calls = [k for k in source_activation_calls(type(m).forward, m) if spec.call(k)]
            if owned or calls:
                out.untraced.append((path, reason))
            for c in owned:
                out.unchecked.setdefault(id(c), path)  # checked below unless a traced forward calls it
            for kind in calls:
                out.missed.append(
                    MissedSite(path, f"{kind} call", f"torch.fx could not trace {type(m).__name__}.forward ({reason})")
                )
            continue
        out.seen.add(id(m))
        has_calls = False
        for mode, graph in graphs.items():
            order = {n: i for i, n in enumerate(graph.nodes)}
            turns: dict[tuple[int, str | None], int] = {}
            for node in graph.nodes:
                if node.op == "call_module":
                    target = str(node.target)
                    sub = m.get_submodule(target)
                    as_module.add(id(sub))
                    for prefix in _prefixes(target):
                        if is_torch_builtin(owner := m.get_submodule(prefix)) and isinstance(owner, nn.Sequential):
                            inlined.add(id(owner))
                    if not spec.module(sub):
                        continue
                    loc = node.meta.get(LOCATION)
                    turn = turns[(id(sub), loc)] = turns.get((id(sub), loc), -1) + 1
                    slots[mode].setdefault(id(sub), []).append((m, (id(m), loc or f"#{order[node]}", turn), loc))
                    inp = node.args[0] if node.args else None
                    if getattr(sub, "inplace", False) is True and isinstance(inp, fx.Node) and any(
                        order[u] > order[node] for u in inp.users
                    ):
                        out.inplace.setdefault(id(m), set()).add(target)
                elif node.op in ("call_function", "call_method"):
                    has_calls |= spec.call(function_kind(node.target, method=node.op == "call_method"))
        if has_calls or id(m) in out.inplace:
            out.functional.append((path, m))
    _merge_modes(out, slots, inlined - as_module)
    # A module some traced forward calls is accounted for, even below an untraceable ancestor.
    out.unchecked = {k: p for k, p in out.unchecked.items() if k not in out.calls}
    return out


def _prefixes(target: str) -> list[str]:
    parts = target.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _merge_modes(out: Scan, slots: dict[bool, dict[int, list[Slot]]], inlined: set[int]) -> None:
    """One call site per slot reached in either mode; per-mode tables where the modes differ.

    A builtin Sequential never called as a module but whose children a traced forward calls
    (``seq.forward(x)``, timm's HRNet) contributes no call site of its own.
    """
    for key in dict.fromkeys([*slots[True], *slots[False]]):
        per_mode = {mode: [s for s in slots[mode].get(key, []) if id(s[0]) not in inlined] for mode in (True, False)}
        union: dict[tuple[int, str, int], Slot] = {}
        for mode in (True, False):
            for slot in per_mode[mode]:
                union.setdefault(slot[1], slot)
        if not union:
            continue
        index = {k: i for i, k in enumerate(union)}
        out.calls[key] = [s[0] for s in union.values()]
        out.locations[key] = [s[2] for s in union.values()]
        tables = {mode: [index[s[1]] for s in per_mode[mode]] for mode in (True, False)}
        if tables[True] != tables[False]:
            out.tables[key] = tables
