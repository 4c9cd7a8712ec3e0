"""Replace activation *function calls* in a module's forward (``F.relu(x)``, ``x.relu_()``) by units.

The module that makes the calls -- and only that module -- is traced by ``torch.fx`` (its
submodules are leaves), once in training and once in eval mode; each call becomes a
``call_module`` of a new unit registered on that module, and the module's ``forward`` becomes
a :class:`TracedForward` running the graph of its current mode. The module keeps its class,
attributes and children.
"""

from __future__ import annotations

import inspect
from types import CodeType
from typing import Any

import torch
from torch import fx, nn
from torch.fx.graph_module import _format_import_block, _forward_from_src, sys_importer

from adact.surgery.originals import call_original
from adact.surgery.report import MissedSite, Site
from adact.surgery.scan import module_graph
from adact.surgery.targets import TargetSpec, function_kind, is_inplace_call
from adact.surgery.units import UnitFactory

__all__ = ["TracedForward", "convert_calls"]


class TracedForward:
    """A module's ``forward`` replaced by its fx graphs, one for training and one for eval mode.

    Stored as the instance attribute ``forward``, so the module keeps its class. The graphs'
    code reads submodules from the module itself, so later surgery (``optimize``) is seen.
    Deep copies and pickling work (the code is regenerated from source, as for
    ``torch.fx.GraphModule``).
    """

    def __init__(self, owner: nn.Module, train_graph: fx.Graph, eval_graph: fx.Graph) -> None:
        self.owner = owner
        # Kept for a later adactify of the same model (not pickled; it then traces the class's forward).
        self.graphs: dict[bool, fx.Graph] | None = {True: train_graph, False: eval_graph}
        self._code: dict[bool, tuple[str, str]] = {}
        for mode, graph in ((True, train_graph), (False, eval_graph)):
            code = graph.python_code(root_module="self")
            self._code[mode] = (_format_import_block(code.globals, sys_importer), code.src)
        self._compile()

    def _compile(self) -> None:
        self._fns = {mode: _forward_from_src(imports + "\n" + src, {}) for mode, (imports, src) in self._code.items()}

    def code(self, training: bool) -> str:
        """The Python source of the graph run in the given mode."""
        return self._code[training][1]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fns[self.owner.training](self.owner, *args, **kwargs)

    # Tools that inspect a forward (torch.export reads __code__, others the signature) see the
    # traced function's, which has the original forward's parameters.
    @property
    def __code__(self) -> CodeType:
        return self._fns[self.owner.training].__code__

    @property
    def __signature__(self) -> inspect.Signature:
        sig = inspect.signature(self._fns[self.owner.training])
        return sig.replace(parameters=list(sig.parameters.values())[1:])  # without self

    def __getstate__(self) -> dict[str, Any]:
        return {"owner": self.owner, "_code": self._code}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.graphs = None
        self._compile()


def _label(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    fn = node.target
    module = getattr(fn, "__module__", None) or "torch"
    name = getattr(fn, "__name__", str(fn))
    prefix = {"torch.nn.functional": "F", "torch._C._nn": "F", "torch._C._VariableFunctions": "torch"}.get(module, module)
    return f"{prefix}.{name}"


def _activation_nodes(graph: fx.Graph, spec: TargetSpec) -> list[tuple[fx.Node, str]]:
    out = []
    for node in graph.nodes:
        if node.op in ("call_function", "call_method"):
            kind = function_kind(node.target, method=node.op == "call_method")
            if spec.call(kind):
                assert kind is not None
                out.append((node, kind))
    return out


def _rewrite(graph: fx.Graph, nodes: list[tuple[fx.Node, str]], names: list[str]) -> None:
    for (node, _), name in zip(nodes, names):
        inp = node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("self"))
        with graph.inserting_before(node):
            new = graph.call_module(name, (inp,))
        inplace = is_inplace_call(node.target, dict(node.kwargs), method=node.op == "call_method")
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        if inplace and isinstance(inp, fx.Node):
            # The call modified its input; the unit does not, so later readers of the input
            # must read the unit's output instead.
            order = {n: i for i, n in enumerate(graph.nodes)}
            inp.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new and order[user] > order[new])
    graph.lint()


def _seed_call_prelu(unit: nn.Module, module: nn.Module, node: fx.Node) -> None:
    """``F.prelu(x, self.weight)``: the module's slope seeds the unit's (the weight itself is then unused)."""
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    target = getattr(unit, "prelu_weight", None)
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr") or target is None:
        return
    w = module.get_parameter(str(weight.target)).detach().reshape(-1)
    if w.numel() in (1, target.numel()):
        with torch.no_grad():
            target.copy_(w.expand(target.numel()) if w.numel() == 1 else w)


def _keep_inplace(graph: fx.Graph, targets: set[str]) -> None:
    """Calls of in-place activation modules (now units, which return a new tensor): later readers of
    the input read the call's output, as they read the modified input before (``self.act(x); return x``)."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        inp = node.args[0] if node.args else None
        if node.op == "call_module" and str(node.target) in targets and isinstance(inp, fx.Node):
            inp.replace_all_uses_with(node, delete_user_cb=lambda user: user is not node and order[user] > order[node])
    graph.lint()


def convert_calls(
    module: nn.Module, path: str, spec: TargetSpec, factory: UnitFactory, inplace: set[str] | None = None
) -> tuple[list[Site], list[MissedSite]]:
    """Give each targeted activation call in ``module.forward`` its own unit; returns the sites.

    ``inplace``: targets of in-place activation modules the forward calls whose input is read later
    (:func:`_keep_inplace`)."""
    graphs = {mode: module_graph(module, training=mode) for mode in (True, False)}
    nodes = {mode: _activation_nodes(g, spec) for mode, g in graphs.items()}
    labels = {mode: [_label(n) for n, _ in found] for mode, found in nodes.items()}
    if labels[True] != labels[False]:
        reason = "its forward calls activations differently in training and eval mode"
        return [], [MissedSite(path, lab, reason) for lab in labels[True]]
    names: list[str] = []
    for _, kind in nodes[True]:
        base, j = f"adact_{kind}", 0
        name = base
        while hasattr(module, name) or name in names:
            j += 1
            name = f"{base}_{j}"
        names.append(name)
    for name, (node, kind) in zip(names, nodes[module.training]):
        call = call_original(node.target, node.args, node.kwargs, method=node.op == "call_method")
        module.add_module(name, factory(None, module.training, call=call, what=_label(node)))
        if kind == "prelu":
            _seed_call_prelu(getattr(module, name), module, node)
    for mode in (True, False):
        _rewrite(graphs[mode], nodes[mode], names)
        _keep_inplace(graphs[mode], inplace or set())
    module.forward = TracedForward(module, graphs[True], graphs[False])  # type: ignore[method-assign]
    prefix = f"{path}." if path else ""
    return [Site(prefix + name, lab, "traced") for name, lab in zip(names, labels[True])], []
