"""Model surgery: put AdAct units into any model, read their choices, and fix them.

* :func:`adactify` swaps a model's activation *modules* for :class:`adact.AdAct` units, one
  unit per call site.
* :func:`dominant_activations` reads which activation each unit has chosen.
* :func:`optimize` builds the paper's "Optimized" model: a copy with each unit replaced by a
  plain ``torch.nn`` module of its choice.

Only modules are converted: activations called as functions (``F.relu(x)``, ``torch.relu``)
in a ``forward`` have no module to replace and are left as they are.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Union, overload

import torch
from torch import Tensor, fx, nn

from adact.activations import ACTIVATIONS, DEFAULT_CANDIDATES
from adact.unit import GRANULARITIES, AdAct

__all__ = [
    "DEFAULT_TARGETS",
    "AdactifyReport",
    "adact_units",
    "adactify",
    "dominant_activations",
    "optimize",
]

logger = logging.getLogger(__name__)

#: Activation module types :func:`adactify` replaces by default.
DEFAULT_TARGETS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.PReLU,
    nn.RReLU,
    nn.SiLU,
    nn.Mish,
    nn.GELU,
)

ExampleInputs = Union[Tensor, Sequence[Any]]


@dataclass(frozen=True)
class AdactifyReport:
    """What :func:`adactify` did.

    Attributes:
        n_units: number of distinct AdAct units added.
        n_params: number of parameters they add (``8 * n_units`` with the default pool and
            ``granularity="layer"``).
        sites: module path of each new unit, in call order where a graph was traced, in module
            order otherwise.
        replaced: class name of the module each site had before (same order as ``sites``).
        method: ``"inplace"`` (modules swapped in the model itself) or ``"fx"`` (a
            ``torch.fx.GraphModule`` was built to give shared modules one unit per call).
    """

    n_units: int
    n_params: int
    sites: tuple[str, ...]
    replaced: tuple[str, ...]
    method: str

    def __str__(self) -> str:
        how = "in place" if self.method == "inplace" else "by torch.fx graph rewrite"
        return f"adactify: added {self.n_units} AdAct units ({self.n_params} parameters) {how}"


# --- finding units ------------------------------------------------------------------------


def adact_units(model: nn.Module) -> list[tuple[str, AdAct]]:
    """The model's AdAct units as ``(path, unit)`` pairs, in module order.

    A unit registered under several paths is listed once, under its first path. The root
    module itself, if it is an AdAct unit, has path ``""``.
    """
    return [(path, m) for path, m in model.named_modules() if isinstance(m, AdAct)]


def dominant_activations(model: nn.Module) -> OrderedDict[str, tuple[str, float]]:
    """Each AdAct unit's chosen activation: ``path -> (name, softmax weight)``, in module order.

    The choice is the candidate with the largest softmax weight; ties go to the candidate
    listed first (so a freshly initialised unit, a uniform mixture, reports its first
    candidate with weight ``1/K``). A ``granularity="channel"`` unit reports the winner of
    its channel-mean mixture and that candidate's mean weight.

    Example::

        >>> net = ConvNet(activation="adact")
        >>> dominant_activations(net)
        OrderedDict([('features.0.2', ('relu', 0.142...)), ...])
    """
    out: OrderedDict[str, tuple[str, float]] = OrderedDict()
    for path, unit in adact_units(model):
        name, weight = _layer_choice(unit)
        out[path] = (name, weight)
    return out


def _layer_choice(unit: AdAct) -> tuple[str, float]:
    p = unit.mixture()
    if p.dim() == 2:
        p = p.mean(0)
    # torch.argmax returns the first maximum, so ties resolve in candidate order.
    idx = int(torch.argmax(p))
    return unit.candidates[idx], float(p[idx])


# --- optimize -----------------------------------------------------------------------------


def optimize(model: nn.Module, reinit: bool = False) -> nn.Module:
    """A copy of ``model`` with every AdAct unit replaced by a plain module of its choice.

    This is the paper's "ConvNet-Optimized": each unit becomes the ``torch.nn`` module of
    its dominant activation (see :func:`dominant_activations`) with PyTorch's default
    hyper-parameters -- the same ones the unit's candidates use -- so the copy depends on
    nothing but ``torch`` at run time. ``model`` itself is not modified.

    A ``granularity="channel"`` unit is replaced by the winner of its channel-mean mixture
    (one activation for the whole layer).

    Args:
        model: a model containing AdAct units (e.g. the output of :func:`adactify`).
        reinit: if ``False`` (default), a PReLU winner keeps the unit's learned slope
            (``nn.PReLU(num_parameters=len(slope))`` with the slope copied); if ``True``
            every new module is default-initialised (PReLU slope 0.25, same shape).

    Returns:
        the modified deep copy. A module that was an AdAct unit itself comes back as the new
        plain module.

    Example::

        >>> fixed = optimize(trained_net)
        >>> [type(m).__name__ for m in fixed.activations()]
        ['LeakyReLU', 'Mish', 'Mish', 'Mish']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize expects an nn.Module, got {type(model).__name__}")
    result = copy.deepcopy(model)
    units = _instances(result, lambda m: isinstance(m, AdAct))
    replacement: dict[int, nn.Module] = {}
    for key, (unit, _paths) in units.items():
        assert isinstance(unit, AdAct)
        replacement[key] = _plain_module(unit, reinit)
    return _replace(result, units, replacement)


def _plain_module(unit: AdAct, reinit: bool) -> nn.Module:
    name, _ = _layer_choice(unit)
    slope = unit.prelu_weight.detach()
    if name == "prelu":
        # Keep the slope's shape either way so optimized models share one state_dict layout.
        new: nn.Module = nn.PReLU(num_parameters=slope.numel()).to(device=slope.device, dtype=slope.dtype)
        if not reinit:
            with torch.no_grad():
                new.weight.copy_(slope)
    else:
        new = ACTIVATIONS[name]().to(device=slope.device)
    # RReLU's behaviour depends on the mode, so keep the unit's.
    return new.train(unit.training)


# --- adactify -----------------------------------------------------------------------------


@overload
def adactify(
    model: nn.Module,
    targets: Iterable[type[nn.Module]] | type[nn.Module] | None = ...,
    *,
    example_inputs: ExampleInputs | None = ...,
    candidates: Sequence[str] = ...,
    granularity: str = ...,
    adact_kwargs: dict[str, Any] | None = ...,
    verbose: bool = ...,
    return_report: Literal[False] = ...,
) -> nn.Module: ...


@overload
def adactify(
    model: nn.Module,
    targets: Iterable[type[nn.Module]] | type[nn.Module] | None = ...,
    *,
    example_inputs: ExampleInputs | None = ...,
    candidates: Sequence[str] = ...,
    granularity: str = ...,
    adact_kwargs: dict[str, Any] | None = ...,
    verbose: bool = ...,
    return_report: Literal[True],
) -> tuple[nn.Module, AdactifyReport]: ...


def adactify(
    model: nn.Module,
    targets: Iterable[type[nn.Module]] | type[nn.Module] | None = None,
    *,
    example_inputs: ExampleInputs | None = None,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    granularity: str = "layer",
    adact_kwargs: dict[str, Any] | None = None,
    verbose: bool = False,
    return_report: bool = False,
) -> nn.Module | tuple[nn.Module, AdactifyReport]:
    r"""Replace a model's activation modules with AdAct units, one unit per call site.

    **Call sites.** A module instance called at several places of a ``forward`` (torchvision's
    ``BasicBlock`` calls ``self.relu`` twice) gets one unit *per call*, never one shared
    unit. Sharing is found by tracing the model with ``torch.fx``:

    * no instance is called twice: the modules are swapped **in place** and the same
      ``model`` object is returned, with its class and attribute paths unchanged (ConvNet's
      units sit at ``"features.0.2"``, ...);
    * some instance is called ``k > 1`` times: a new ``torch.fx.GraphModule`` is returned in
      which call ``i > 0`` uses a new unit at ``"<path>_<i>"`` (``"layer1.0.relu"`` and
      ``"layer1.0.relu_1"``). It reuses the input's other layers (shared, not copied), so
      use the return value and drop the input. As always with ``torch.fx``, Python-level
      branches (e.g. on ``self.training``) are fixed to the path taken while tracing.
    * the model cannot be traced (data-dependent control flow): with ``example_inputs``, one
      forward pass counts the calls of each module; a module called more than once raises
      ``ValueError``. Without ``example_inputs`` sharing cannot be checked; each module is
      assumed to have one call site and a ``UserWarning`` says so (not for ``torch.nn``'s own
      modules, which call each activation once).

    Modules inside ``torch.nn`` containers that ``torch.fx`` treats as leaves (e.g.
    ``nn.TransformerEncoderLayer(..., activation=nn.GELU())``) are swapped in place. Such a
    layer's fused inference fast path, which would silently apply the native ReLU/GELU, is
    switched off (``activation_relu_or_gelu = 0``, and ``use_nested_tensor = False`` on an
    enclosing ``nn.TransformerEncoder``).

    Each unit starts from the AdAct defaults: the replaced module's hyper-parameters (e.g. a
    LeakyReLU's slope) are not carried over, except a PReLU's learned slope, which seeds the
    unit's PReLU slope when the shapes allow it. Units are put on the device of the model's
    parameters. Functional activations (``F.relu(x)`` in a ``forward``) are not converted.

    Args:
        model: the model to convert.
        targets: module types to replace (``isinstance`` match), or one type. Default:
            :data:`DEFAULT_TARGETS` (ReLU, LeakyReLU, ELU, PReLU, RReLU, SiLU, Mish, GELU).
        example_inputs: a tensor, or a sequence of positional arguments, for one forward
            pass. Needed for ``granularity="channel"`` (to read each site's channel count,
            dim 1) and to check sharing in models ``torch.fx`` cannot trace. The pass runs
            under ``torch.no_grad()`` in the model's current mode; buffers (e.g. batch-norm
            statistics) and the RNG state are restored afterwards. Default: ``None``.
        candidates: the units' activation pool. Default: the paper's seven.
        granularity: ``"layer"`` (one mixture per unit, the paper) or ``"channel"`` (one per
            channel of dim 1, as in :class:`adact.AdAct`; for ``(N, L, E)`` sequence
            activations dim 1 is not the feature dim, so use ``"layer"``). Default: ``"layer"``.
        adact_kwargs: further :class:`adact.AdAct` arguments (``init``, ``fused``, ...).
        verbose: print the :class:`AdactifyReport`. Default: ``False``.
        return_report: return ``(model, report)`` instead of the model. Default: ``False``.

    Returns:
        the converted model (see above for when it is a new object), and the
        :class:`AdactifyReport` if ``return_report=True``.

    Raises:
        ValueError: a module is called at several sites that cannot be told apart; channel
            counts are needed but cannot be inferred; invalid arguments.

    Example::

        >>> net, report = adactify(torchvision.models.resnet18(), return_report=True)
        >>> report.n_units, report.n_params
        (17, 136)
        >>> conv = adactify(ConvNet(activation="relu"), example_inputs=torch.randn(1, 3, 32, 32))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"adactify expects an nn.Module, got {type(model).__name__}")
    target_types = _check_targets(targets)
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    unit_kwargs = dict(adact_kwargs or {})
    clash = {"candidates", "granularity", "num_channels"} & unit_kwargs.keys()
    if clash:
        raise ValueError(
            f"adact_kwargs must not set {sorted(clash)}; pass candidates/granularity to adactify "
            f"(num_channels is inferred)"
        )
    AdAct(candidates, **unit_kwargs)  # validates candidates and kwargs before any surgery
    if granularity == "channel" and example_inputs is None:
        raise ValueError(
            'granularity="channel" needs example_inputs to infer the number of channels (dim 1) '
            "at each site"
        )

    def is_target(m: nn.Module) -> bool:
        return isinstance(m, target_types) and not isinstance(m, AdAct)

    found = _instances(model, is_target)
    if not found:
        report = AdactifyReport(0, 0, (), (), "inplace")
        return _finish(model, report, verbose, return_report)

    gm, trace_error = _try_trace(model)
    graph_calls = _graph_calls(gm, found) if gm is not None else {}
    probe = _probe(model, found, example_inputs) if example_inputs is not None else None
    device = _model_device(model)

    def channels(module: nn.Module, path: str, shapes: Sequence[torch.Size | None]) -> int | None:
        if granularity != "channel":
            return None
        assert probe is not None  # checked on entry
        if not shapes or shapes[0] is None or len(shapes[0]) < 2:
            got = "it was not called" if not shapes else f"its input had shape {shapes[0]}"
            raise ValueError(
                f"cannot infer the channel count of the {type(module).__name__} at {path!r} from "
                f'example_inputs ({got}); granularity="channel" needs an (N, C, *) input there'
            )
        return int(shapes[0][1])

    def make_unit(module: nn.Module, path: str, shapes: Sequence[torch.Size | None]) -> AdAct:
        unit = AdAct(candidates, granularity, channels(module, path, shapes), **unit_kwargs)
        _seed_prelu(unit, module)
        return unit.to(device).train(module.training)

    shared = {key: nodes for key, nodes in graph_calls.items() if len(nodes) > 1}
    if gm is None or not shared:
        # Without a usable graph, the probe is our only evidence of sharing.
        if probe is not None:
            for key, (module, paths) in found.items():
                if len(probe[key]) > 1:
                    raise _shared_error(model, module, paths[0], len(probe[key]), trace_error)
        elif gm is None and not fx.Tracer().is_leaf_module(model, ""):
            # torch.nn's own modules (e.g. nn.TransformerEncoderLayer) call each activation
            # once; torch.fx trusts them the same way when they are leaves of a graph.
            warnings.warn(
                f"adactify: torch.fx could not trace {type(model).__name__} ({trace_error}), so "
                f"whether an activation module is called at several sites was not checked; each "
                f"is assumed to have one call site. Pass example_inputs=... to check.",
                stacklevel=2,
            )
        units = {
            key: make_unit(m, paths[0], probe[key] if probe is not None else ())
            for key, (m, paths) in found.items()
        }
        result = _replace(model, found, units)
        sites = [(paths[0], found[key][0], units[key]) for key, (_, paths) in found.items()]
        method = "inplace"
    else:
        assert gm is not None
        sites = _rewrite_graph(gm, graph_calls, found, probe, make_unit)
        # What is left was not in the graph: inside torch.nn leaf modules (called once there).
        rest = _instances(gm, is_target)
        if probe is not None:
            for key, (module, paths) in rest.items():
                if len(probe.get(key, ())) > 1:
                    raise _shared_error(model, module, paths[0], len(probe[key]), None)
        units = {
            key: make_unit(m, paths[0], probe.get(key, []) if probe is not None else [])
            for key, (m, paths) in rest.items()
        }
        result = _replace(gm, rest, units)
        sites += [(paths[0], rest[key][0], units[key]) for key, (_, paths) in rest.items()]
        method = "fx"

    _disable_transformer_fast_paths(result)
    distinct = {id(u): u for _, _, u in sites}
    report = AdactifyReport(
        n_units=len(distinct),
        n_params=sum(p.numel() for u in distinct.values() for p in u.parameters()),
        sites=tuple(path for path, _, _ in sites),
        replaced=tuple(type(orig).__name__ for _, orig, _ in sites),
        method=method,
    )
    return _finish(result, report, verbose, return_report)


def _finish(
    model: nn.Module, report: AdactifyReport, verbose: bool, return_report: bool
) -> nn.Module | tuple[nn.Module, AdactifyReport]:
    logger.info("%s", report)
    if verbose:
        print(report)
    return (model, report) if return_report else model


def _check_targets(
    targets: Iterable[type[nn.Module]] | type[nn.Module] | None,
) -> tuple[type[nn.Module], ...]:
    if targets is None:
        return DEFAULT_TARGETS
    items = (targets,) if isinstance(targets, type) else tuple(targets)
    for t in items:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"targets must be nn.Module subclasses, got {t!r}")
        if issubclass(t, AdAct):
            raise ValueError("targets must not include AdAct: its units are never replaced")
    if not items:
        raise ValueError("targets is empty; pass None for the default activation types")
    return items


def _shared_error(
    model: nn.Module, module: nn.Module, path: str, n_calls: int, trace_error: str | None
) -> ValueError:
    why = (
        f"torch.fx could not trace {type(model).__name__} ({trace_error}) to tell the call sites apart"
        if trace_error
        else "its call sites are hidden inside a module that torch.fx does not trace"
    )
    where = repr(path) if path else "the root"
    return ValueError(
        f"adactify: the {type(module).__name__} module at {where} is called {n_calls} times in one "
        f"forward pass, and {why}. One shared AdAct unit would tie those sites to one choice. "
        f"Give each call site its own module (e.g. self.act1 = nn.ReLU(); self.act2 = nn.ReLU()), "
        f"or make the model traceable by torch.fx."
    )


def _instances(
    model: nn.Module, pred: Callable[[nn.Module], bool]
) -> OrderedDict[int, tuple[nn.Module, list[str]]]:
    """Distinct modules satisfying ``pred``, by ``id``, with every path each is registered at."""
    found: OrderedDict[int, tuple[nn.Module, list[str]]] = OrderedDict()
    for path, m in model.named_modules(remove_duplicate=False):
        if pred(m):
            found.setdefault(id(m), (m, []))[1].append(path)
    return found


def _replace(
    root: nn.Module, found: OrderedDict[int, tuple[nn.Module, list[str]]], new: dict[int, nn.Module]
) -> nn.Module:
    """Put ``new[id(m)]`` at every path of every found module; returns the (new) root."""
    result = root
    for key, (_, paths) in found.items():
        for path in paths:
            if path == "":
                result = new[key]
                continue
            parent_path, _, name = path.rpartition(".")
            parent = root.get_submodule(parent_path)
            setattr(parent, name, new[key])
            _sync_fast_path_flag(parent, name)
    return result


def _sync_fast_path_flag(parent: nn.Module, name: str) -> None:
    # nn.TransformerEncoderLayer caches "is the activation ReLU/GELU" at construction and its
    # eval fast path then runs the native op, ignoring self.activation: keep the cache true.
    if name == "activation" and hasattr(parent, "activation_relu_or_gelu"):
        act = getattr(parent, name)
        flag = 1 if isinstance(act, nn.ReLU) else 2 if isinstance(act, nn.GELU) else 0
        parent.activation_relu_or_gelu = flag


def _disable_transformer_fast_paths(model: nn.Module) -> None:
    # An encoder decides at construction whether to pack inputs into nested tensors for the
    # layers' fast path; AdAct layers never take that path, so packing must be off.
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder) and any(
            not getattr(layer, "activation_relu_or_gelu", 1) for layer in m.layers
        ):
            m.use_nested_tensor = False


def _seed_prelu(unit: AdAct, module: nn.Module) -> None:
    # A (possibly pretrained) PReLU keeps its slope as the unit's PReLU candidate's slope.
    if not isinstance(module, nn.PReLU) or "prelu" not in unit.candidates:
        return
    w = module.weight.detach()
    target = unit.prelu_weight
    if w.numel() in (1, target.numel()):
        with torch.no_grad():
            target.copy_(w.reshape(-1).expand(target.numel()) if w.numel() == 1 else w.reshape(-1))


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


# --- torch.fx -----------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """The default tracer, with AdAct units (already converted) kept as opaque leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, AdAct) or super().is_leaf_module(m, module_qualified_name)


def _try_trace(model: nn.Module) -> tuple[fx.GraphModule | None, str | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warnings concern the trace, not the user
            graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any failure means "no graph", reported upstream
        msg = str(e).splitlines()[0] if str(e) else ""
        return None, f"{type(e).__name__}: {msg}"[:200]
    return fx.GraphModule(model, graph, class_name=type(model).__name__), None


def _graph_calls(
    gm: fx.GraphModule, found: OrderedDict[int, tuple[nn.Module, list[str]]]
) -> OrderedDict[int, list[fx.Node]]:
    """``id(module) -> call_module nodes calling it``, in graph (= call) order."""
    calls: OrderedDict[int, list[fx.Node]] = OrderedDict()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            key = id(gm.get_submodule(node.target))
            if key in found:
                calls.setdefault(key, []).append(node)
    return calls


def _rewrite_graph(
    gm: fx.GraphModule,
    graph_calls: OrderedDict[int, list[fx.Node]],
    found: OrderedDict[int, tuple[nn.Module, list[str]]],
    probe: dict[int, list[torch.Size | None]] | None,
    make_unit: Callable[[nn.Module, str, Sequence[torch.Size | None]], AdAct],
) -> list[tuple[str, nn.Module, AdAct]]:
    """Give every call_module node of a found module its own unit; returns the sites."""
    # Map nodes to modules first: rewriting the first call of a module changes what its path holds.
    owner = {node: key for key, nodes in graph_calls.items() for node in nodes}
    sites: list[tuple[str, nn.Module, AdAct]] = []
    for node in list(gm.graph.nodes):
        if node not in owner:
            continue
        original = found[owner[node]][0]
        nodes = graph_calls[owner[node]]
        shapes = probe.get(owner[node], []) if probe is not None else []
        if probe is not None and len(shapes) != len(nodes):
            raise ValueError(
                f"adactify: the {type(original).__name__} at {node.target!r} appears {len(nodes)} "
                f"times in the torch.fx graph but was called {len(shapes)} times with "
                f"example_inputs; the traced graph does not match the model's forward"
            )
        i = nodes.index(node)
        parent_path, _, name = str(node.target).rpartition(".")
        parent = gm.get_submodule(parent_path)
        if i == 0:
            new_name = name  # the first call keeps the original path
        else:
            j = i
            while hasattr(parent, f"{name}_{j}"):
                j += 1
            new_name = f"{name}_{j}"
        path = f"{parent_path}.{new_name}" if parent_path else new_name
        unit = make_unit(original, path, shapes[i : i + 1])
        parent.add_module(new_name, unit)
        node.target = path
        sites.append((path, original, unit))
    gm.graph.lint()
    gm.recompile()
    return sites


# --- probing with example inputs ------------------------------------------------------------


def _probe(
    model: nn.Module,
    found: OrderedDict[int, tuple[nn.Module, list[str]]],
    example_inputs: ExampleInputs,
) -> dict[int, list[torch.Size | None]]:
    """Run one forward pass; ``id(module) -> input shape of each call`` (None if not a tensor)."""
    args = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    calls: dict[int, list[torch.Size | None]] = {key: [] for key in found}

    def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0] if inputs else None
        calls[id(module)].append(x.shape if isinstance(x, Tensor) else None)

    handles = [m.register_forward_pre_hook(hook) for m, _ in found.values()]
    try:
        with _no_side_effects(model, args), _fast_paths_off(model), torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return calls


@contextmanager
def _no_side_effects(model: nn.Module, args: tuple[Any, ...]) -> Iterator[None]:
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


@contextmanager
def _fast_paths_off(model: nn.Module) -> Iterator[None]:
    # An eval-mode TransformerEncoderLayer under no_grad skips its activation module entirely;
    # the probe must see the calls the converted model will make.
    layers = [m for m in model.modules() if getattr(m, "activation_relu_or_gelu", 0)]
    flags = [m.activation_relu_or_gelu for m in layers]
    for m in layers:
        m.activation_relu_or_gelu = 0
    try:
        yield
    finally:
        for m, f in zip(layers, flags):
            m.activation_relu_or_gelu = f
