"""Swap activation modules for units in place: one unit per call site."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import nn

from adact.surgery.report import Site
from adact.surgery.scan import Scan
from adact.surgery.targets import TargetSpec
from adact.surgery.transformer import sync_fast_path_flag
from adact.surgery.units import CallSites, ResetCallSites, UnitFactory

__all__ = ["convert_modules", "instances", "make_call_sites", "replace"]

Found = OrderedDict[int, tuple[nn.Module, list[str]]]


def instances(model: nn.Module, pred: Callable[[nn.Module], bool]) -> Found:
    """Distinct modules satisfying ``pred``, by ``id``, with every path each is registered at."""
    found: Found = OrderedDict()
    for path, m in model.named_modules(remove_duplicate=False):
        if pred(m):
            found.setdefault(id(m), (m, []))[1].append(path)
    return found


def replace(root: nn.Module, found: Found, new: dict[int, nn.Module]) -> nn.Module:
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
            sync_fast_path_flag(parent, name)
    return result


def make_call_sites(sites: list[nn.Module], callers: list[nn.Module], training: bool,
                    tables: dict[bool, list[int]] | None = None,
                    locations: Sequence[str | None] | None = None) -> CallSites:
    """A :class:`CallSites` whose child ``i`` serves call site ``i`` (caller ``callers[i]``, written at
    ``locations[i]``); per mode, ``tables`` lists the site of each call in call order (default: call
    ``i`` is site ``i``). Each caller resets the dispatcher on entry."""
    n = len(sites)
    tables = tables or {True: list(range(n)), False: list(range(n))}
    where: dict[str, list[int]] = {}
    owners: dict[str, set[int]] = {}
    for i, loc in enumerate(locations or ()):
        if loc is not None:
            where.setdefault(loc, []).append(i)
            owners.setdefault(loc, set()).add(id(callers[i]))
    # One line run by two callers (one module shared by two blocks of a class) is told apart by call order.
    where = {loc: served for loc, served in where.items() if len(owners[loc]) == 1}
    dispatch = CallSites(sites, tables, where).train(training)
    starts: OrderedDict[int, tuple[nn.Module, dict[bool, int]]] = OrderedDict()
    for mode, table in tables.items():
        for pos, i in enumerate(table):
            starts.setdefault(id(callers[i]), (callers[i], {}))[1].setdefault(mode, pos)
    for i, caller in enumerate(callers):
        starts.setdefault(id(caller), (caller, {}))
    for caller, start in starts.values():
        caller.register_forward_pre_hook(ResetCallSites(dispatch, {m: start.get(m, 0) for m in (True, False)}))
    return dispatch


def convert_modules(
    model: nn.Module, spec: TargetSpec, found_calls: Scan, factory: UnitFactory
) -> tuple[nn.Module, list[Site]]:
    """Replace every target module; a module called at ``k > 1`` sites becomes a ``CallSites`` of ``k`` units."""
    found = instances(model, spec.module)
    new: dict[int, nn.Module] = {}
    sites: list[Site] = []
    for key, (m, paths) in found.items():
        callers = found_calls.calls.get(key, [])
        if len(callers) <= 1:
            new[key] = factory(m, m.training)
            sites.append(Site(paths[0], type(m).__name__, "module"))
            continue
        units: list[nn.Module] = [factory(m, m.training) for _ in callers]
        new[key] = make_call_sites(units, callers, m.training, found_calls.tables.get(key),
                                   found_calls.locations.get(key))
        sites += [Site(f"{paths[0]}.{i}" if paths[0] else str(i), type(m).__name__, "call_site") for i in range(len(units))]
    return replace(model, found, new), sites
