"""``adactify``: put AdAct units at every activation call site of a model, in place."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, overload

from torch import nn

from adact.activations import DEFAULT_CANDIDATES
from adact.errors import UserError
from adact.surgery.functional import TracedForward, convert_calls
from adact.surgery.modules import convert_modules
from adact.surgery.probe import ExampleInputs
from adact.surgery.report import AdactifyReport, MissedSite, Site
from adact.surgery.scan import scan
from adact.surgery.split import apply_probe
from adact.surgery.targets import Targets, resolve_targets
from adact.surgery.transformer import convert_function_activations, disable_transformer_fast_paths
from adact.surgery.units import UnitFactory, model_device, share_pool
from adact.surgery.verify import Verification, build_example_inputs, check, merge_missed
from adact.unit import GRANULARITIES, AdAct

__all__ = ["CONFIG_ATTR", "INITS", "adactify", "undo_on_error"]

logger = logging.getLogger(__name__)

#: Attribute of the converted root holding adactify's settings (read by :func:`adact.save_choices`).
CONFIG_ATTR = "_adactify_config"

#: ``adactify(init=...)``: units start as uniform mixtures (the paper's), or as the activation each replaces.
INITS: tuple[str, ...] = ("mixture", "original")


@overload
def adactify(
    model: nn.Module,
    targets: Targets = ...,
    *,
    example_inputs: ExampleInputs | None = ...,
    candidates: Sequence[str] = ...,
    granularity: str = ...,
    channel_dim: int | None = ...,
    adact_kwargs: dict[str, Any] | None = ...,
    init: str = ...,
    verbose: bool = ...,
    verify: bool = ...,
    return_report: Literal[False] = ...,
) -> nn.Module: ...


@overload
def adactify(
    model: nn.Module,
    targets: Targets = ...,
    *,
    example_inputs: ExampleInputs | None = ...,
    candidates: Sequence[str] = ...,
    granularity: str = ...,
    channel_dim: int | None = ...,
    adact_kwargs: dict[str, Any] | None = ...,
    init: str = ...,
    verbose: bool = ...,
    verify: bool = ...,
    return_report: Literal[True],
) -> tuple[nn.Module, AdactifyReport]: ...


def adactify(
    model: nn.Module,
    targets: Targets = None,
    *,
    example_inputs: ExampleInputs | None = None,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    granularity: str = "layer",
    channel_dim: int | None = None,
    adact_kwargs: dict[str, Any] | None = None,
    init: str = "mixture",
    verbose: bool = False,
    verify: bool = True,
    return_report: bool = False,
) -> nn.Module | tuple[nn.Module, AdactifyReport]:
    r"""Put an AdAct unit at every activation call site of ``model``, in place.

    **What is converted.** Activation *modules* -- torch's (``nn.ReLU``, ``nn.GELU``,
    ``nn.Hardswish``, ``nn.ReLU6``, ``nn.SELU``, ...), Hugging Face transformers' (``GELUActivation``,
    ``NewGELUActivation``, ``SiLUActivation``, ...) and timm's (``timm.layers.activations*``),
    recognised by class without importing those libraries -- and activation *function calls*
    in a ``forward`` (``F.relu(x)``, ``torch.relu``, ``x.relu()``, ``x.relu_()``, ``F.gelu``,
    ``F.silu``, ``torch.celu``, ``F.rrelu``, ``F.prelu``, ...), including the ``activation`` of
    ``nn.TransformerEncoderLayer`` / ``DecoderLayer`` given as a name, a function or a
    ``functools.partial`` of one (another callable is listed in ``report.missed``). Gates (``Sigmoid``, ``Hardsigmoid``) and ``Tanh`` are
    converted only when named in ``targets``.

    **One unit per call site, and the model stays what it was.** Each module's own ``forward``
    is traced by ``torch.fx`` with its submodules as leaves (never the whole model), to count
    its calls:

    * a module called once is swapped for a unit at its path;
    * a module called at :math:`k > 1` sites (torchvision's ``BasicBlock`` calls ``self.relu``
      twice), counting the sites of training and of eval mode, becomes a
      :class:`adact.surgery.CallSites` of :math:`k` units (paths ``"layer1.0.relu.0"``,
      ``"layer1.0.relu.1"``), each call served by the unit of its *code location*, so a call
      behind ``if self.training:`` keeps its unit in both modes and activation checkpointing
      recomputes with the original units;
    * an in-place activation module whose input is read after the call (``self.act(x); return x``)
      keeps that meaning: its caller's forward becomes its fx graph, reading the unit's output;
    * a module whose ``forward`` calls activation functions gets one unit per call (paths
      ``"<module>.adact_relu"``, ``"<module>.adact_relu_1"``, ...) and its ``forward`` becomes
      that module's fx graph (:class:`adact.surgery.TracedForward`), traced in both training and
      eval mode so ``self.training`` branches keep switching. Other Python control flow in *that*
      forward is fixed at trace time; the report lists these modules (``report.traced``).

    The returned model is ``model`` itself (unless ``model`` is itself an activation), with its
    class, methods and attribute paths; no ``torch.fx.GraphModule`` is ever returned.
    A module ``torch.fx`` cannot trace keeps its forward: module swapping still converts what
    it holds; an example pass in each mode (``example_inputs``, else inputs adactify builds, see
    ``verify``) counts its calls, giving each code location its own unit -- a location called a number of
    times that differs between two example batches (an expert loop) keeps one unit, listed in
    ``report.shared`` -- and its function calls are listed in ``report.missed`` with the reason.
    Without any example pass a ``UserWarning`` says one call per module was assumed. Unknown modules named like activations
    (``MyGELU``) are not converted; a ``UserWarning`` names them (pass ``targets=[MyGELU]``).

    Each unit starts from the AdAct defaults: the replaced activation's hyper-parameters (e.g.
    a LeakyReLU's slope, GELU's approximation) are not carried over, except a PReLU's learned
    slope, which seeds the unit's PReLU slope. Units are put on the device of the model's
    parameters. A ``nn.TransformerEncoderLayer``'s fused inference fast path, which would
    silently apply the native ReLU/GELU, is switched off for converted layers.

    Args:
        model: the model to convert.
        targets: what to convert: activation kinds by name (``"relu"``, ``"gelu"``, ``"sigmoid"``,
            ``"tanh"``, ...; see :data:`adact.surgery.KNOWN_KINDS`), matching modules and function
            calls, and/or ``nn.Module`` subclasses, matched with ``isinstance``. One name or class,
            or an iterable. Default: :data:`adact.surgery.DEFAULT_TARGETS` (all but gates and tanh).
        example_inputs: a tensor, or a sequence of positional arguments, for one forward pass
            through the converted model. Needed for ``granularity="channel"`` (to read each
            site's channel count) and to count calls inside modules ``torch.fx`` cannot trace.
            The pass runs under ``torch.no_grad()`` in the model's current mode; buffers (e.g.
            batch-norm statistics) and the RNG state are restored afterwards. Default: ``None``.
        candidates: the units' activation pool. Default: the paper's seven.
        granularity: ``"layer"`` (one mixture per unit, the paper) or ``"channel"`` (one per
            channel). Default: ``"layer"``.
        channel_dim: for ``granularity="channel"``, where the channels are: ``1`` (``(N, C, *)``
            feature maps) or ``-1`` (``(N, L, E)`` token sequences). Default ``None``: dim 1 for
            inputs with 2, 4 or more dims; a 3-D input, which may be either, raises ``ValueError``.
        adact_kwargs: further :class:`adact.AdAct` arguments (``init``, ``fused``, ...).
        init: ``"mixture"`` (the paper's: every unit starts as a uniform mixture) or ``"original"``
            (warm start, for pretrained models: each unit starts as the activation it replaces,
            exactly, through a gate that starts closed; see :class:`adact.AdAct`). The original is
            added to the unit's pool where the pool lacks it (GELU, its tanh form, Hardswish,
            ReLU6, ...). A site whose activation has no exact registry equal (``nn.LeakyReLU(0.2)``,
            QuickGELU) is an error naming it. Default: ``"mixture"``.
        verbose: print the :class:`AdactifyReport`. Default: ``False``.
        verify: after converting, run the model once per mode (training, eval) on ``example_inputs``
            -- or on inputs built for common model types (Hugging Face token or pixel models, timm and
            torchvision image models, a first ``Linear``; see
            :func:`adact.surgery.verify.build_example_inputs`) -- recording every activation call:
            targeted activations that still run natively go to ``report.missed`` (with their code
            location), units never called to ``report.dead``, and a ``UserWarning`` summarises both
            unless ``return_report=True``. ``report.verification`` says what was verified, or that
            nothing was. Default: ``True``.
        return_report: return ``(model, report)`` instead of the model. Default: ``False``.

    Returns:
        the converted model, and the :class:`AdactifyReport` if ``return_report=True``.

    Raises:
        ValueError: invalid arguments; channel counts cannot be inferred; calls of one module
            that the example pass cannot tell apart.
        TypeError: ``model`` is not a module, or ``targets`` holds something else than names and
            module classes.

    Example::

        >>> net, report = adactify(torchvision.models.resnet18(), return_report=True)
        >>> report.n_units, report.n_params, type(net).__name__
        (17, 136, 'ResNet')
        >>> conv = adactify(ConvNet(activation="relu"), example_inputs=torch.randn(1, 3, 32, 32))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"adactify expects an nn.Module, got {type(model).__name__}")
    spec = resolve_targets(targets)
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    if channel_dim not in (None, 1, -1):
        raise UserError(f"channel_dim must be None, 1 or -1, got {channel_dim!r}")
    unit_kwargs = dict(adact_kwargs or {})
    clash = {"candidates", "granularity", "num_channels", "channel_dim"} & unit_kwargs.keys()
    if clash:
        raise UserError(
            f"adact_kwargs must not set {sorted(clash)}; pass candidates/granularity/channel_dim to "
            f"adactify (num_channels is inferred)"
        )
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    if "original" in unit_kwargs:
        raise UserError("adact_kwargs must not set 'original'; pass init='original' to adactify, which finds each "
                        "site's own")
    AdAct(candidates, **unit_kwargs)  # validates candidates and kwargs before any surgery
    if granularity == "channel" and example_inputs is None:
        raise UserError(
            'granularity="channel" needs example_inputs to infer the number of channels at each site'
        )
    factory = UnitFactory(tuple(candidates), unit_kwargs, model_device(model), warm=init == "original")

    found = scan(model, spec)
    missed: list[MissedSite] = list(found.missed)
    traced: list[str] = []
    shared: list[str] = []
    with undo_on_error(model):
        root, sites = convert_modules(model, spec, found, factory)
        layer_sites, layer_missed = convert_function_activations(root, spec, factory)
        sites += layer_sites
        missed += layer_missed
        for path, module in found.functional:
            new, miss = convert_calls(module, path, spec, factory, found.inplace.get(id(module)))
            sites += new
            missed += miss
            if new or isinstance(module.__dict__.get("forward"), TracedForward):
                traced.append(path)
        if example_inputs is not None:
            sites, shared = apply_probe(root, example_inputs, sites, factory, granularity, channel_dim,
                                         found.seen)
        elif verify and found.unchecked:  # the inputs verification would use count the calls too
            for inputs, _ in build_example_inputs(root):
                try:
                    sites, shared = apply_probe(root, inputs, sites, factory, granularity, channel_dim, found.seen)
                except Exception:  # noqa: BLE001 - built inputs that do not fit the model check nothing
                    continue
                found.unchecked.clear()
                break
    if example_inputs is None:
        unchecked = sorted(set(found.unchecked.values()))
        if unchecked:
            why = "; ".join(f"{p or '<root>'!r}: {r}" for p, r in found.untraced if p in unchecked)
            warnings.warn(
                f"adactify: torch.fx could not trace {why}, so whether their activation modules are "
                f"called at several sites was not checked; each is assumed to have one call site. "
                f"Pass example_inputs=... to check.",
                stacklevel=2,
            )
    if found.lookalikes:
        names = ", ".join(f"{p!r} ({c})" for p, c in found.lookalikes)
        warnings.warn(
            f"adactify: modules that look like activations were not converted: {names}. adactify "
            f"does not know these classes; pass them in targets=[...] to convert them.",
            stacklevel=2,
        )
        missed += [MissedSite(p, c, "unknown activation class (not in targets)") for p, c in found.lookalikes]

    if init == "original":  # one pool for every unit: the candidates and all the originals
        new_units = {id(u): u for u in (root.get_submodule(site.path) for site in sites) if isinstance(u, AdAct)}
        share_pool(list(new_units.values()), candidates)
        pool = next(iter(new_units.values())).candidates if new_units else ()
        if "rrelu" in pool and not set(pool) <= set(DEFAULT_CANDIDATES):
            warnings.warn(
                f"adactify(init='original'): the pool {list(pool)} has RReLU and an activation outside the "
                f"paper's seven; no fused kernel draws RReLU's training noise for such a pool, so these units "
                f"run the reference sum in training (slower, and it saves every candidate's output). Pass "
                f"candidates=[...] without 'rrelu' to keep the fused kernels.",
                stacklevel=2,
            )
    disable_transformer_fast_paths(root)
    root.__dict__[CONFIG_ATTR] = {"targets": spec.names(), "candidates": list(candidates), "init": init}
    ran = check(root, spec, [s.path for s in sites], example_inputs) if verify else Verification(failed=("verify=False",))
    report = _report(root, sites, merge_missed(missed, ran), traced, found.untraced)
    report = dataclasses.replace(report, verified=ran.modes, dead=ran.dead, verification=ran.summary(),
                                 shared=tuple(dict.fromkeys([*shared, *ran.shared])))
    if not return_report:
        _warn_missed(report, {p for p, _ in found.lookalikes})
    logger.info("%s", report)
    if verbose:
        print(report)
    return (root, report) if return_report else root


def _warn_missed(report: AdactifyReport, warned: set[str]) -> None:
    """One UserWarning listing what runs natively and which units are dead (look-alikes have their own)."""
    lines = [f"missed {m.what} at {m.path or '<root>'!r}" + (f" ({m.count} calls)" if m.count > 1 else "")
             + f": {m.reason}" for m in report.missed if m.path not in warned]
    lines += [f"dead unit {p!r}: never called while verifying" for p in report.dead]
    if lines:
        more = f"\n  ... ({len(lines) - 10} more)" if len(lines) > 10 else ""
        warnings.warn(f"adactify: {report.verification}" + "".join(f"\n  {x}" for x in lines[:10]) + more
                      + "\nPass return_report=True to read the report instead of this warning.", stacklevel=3)


@contextmanager
def undo_on_error(model: nn.Module) -> Iterator[None]:
    """On an exception, put every module's attributes, children and pre-hooks back as they were.

    What a failed :func:`adactify` or :func:`adact.apply_choices` leaves: the model as it was.
    """
    saved = [
        (m, dict(m.__dict__), dict(m._modules), OrderedDict(m._forward_pre_hooks))
        for m in model.modules()
    ]
    try:
        yield
    except BaseException:
        for m, attrs, children, hooks in saved:
            m.__dict__.clear()
            m.__dict__.update(attrs)  # the original _modules / hook dicts, refilled below
            m._modules.clear()
            m._modules.update(children)
            m._forward_pre_hooks.clear()
            m._forward_pre_hooks.update(hooks)
        raise


def _report(
    root: nn.Module, sites: list[Site], missed: list[MissedSite], traced: list[str], untraced: list[tuple[str, str]]
) -> AdactifyReport:
    order = {path: i for i, (path, _) in enumerate(root.named_modules(remove_duplicate=False))}
    sites = sorted(sites, key=lambda s: order.get(s.path, len(order)))
    site_units = [root.get_submodule(s.path) for s in sites]
    units = {id(u): u for u in site_units}
    originals = tuple(u.original for u in site_units if isinstance(u, AdAct) and u.original is not None)
    config = root.__dict__.get(CONFIG_ATTR) or {}
    pool = set(config.get("candidates", ()))
    return AdactifyReport(
        n_units=len(units),
        n_params=sum(p.numel() for u in units.values() for p in u.parameters()),
        sites=tuple(s.path for s in sites),
        replaced=tuple(s.replaced for s in sites),
        details=tuple(sites),
        missed=tuple(missed),
        traced=tuple(traced),
        untraced=tuple(untraced),
        originals=originals,
        added=tuple(dict.fromkeys(o for o in originals if o not in pool)),
    )
