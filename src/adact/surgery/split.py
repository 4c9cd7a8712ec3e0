"""After the example pass: one unit per call site the shallow traces could not see, and per-channel units.

A unit the example pass saw called several times from a forward ``torch.fx`` could not trace
gets one unit per *code location* of those calls (a :class:`adact.surgery.CallSites` dispatching
by location). A location run several times in one call of its caller -- a loop, such as
Mixtral's eager expert loop -- keeps one unit for all its calls, reported as shared: which
expert is the i-th in a batch depends on the data, so no unit may depend on it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from adact.errors import UserError
from adact.surgery.modules import instances, make_call_sites, replace
from adact.surgery.probe import ExampleInputs, UnitCall, probe
from adact.surgery.report import Site
from adact.surgery.units import UnitFactory
from adact.unit import AdAct

__all__ = ["apply_probe"]

_OTHER_MODE = 1 << 30  # numbers the other mode's calls of a caller apart from its own mode's


def apply_probe(
    root: nn.Module,
    example_inputs: ExampleInputs | Mapping[str, Any],
    sites: list[Site],
    factory: UnitFactory,
    granularity: str,
    channel_dim: int | None,
    traced: set[int],
) -> tuple[list[Site], list[str]]:
    """Split units the example pass saw called at several places by forwards not in ``traced`` (ids of
    the modules whose calls the shallow traces counted); make channel units.

    Returns:
        the sites, and the paths of units shared by the calls of a loop.
    """
    own = probe(root, example_inputs)
    try:  # the other mode's calls too: a call behind `if self.training:` is a site of its own
        other = probe(root, example_inputs, training=not root.training)
    except Exception:  # noqa: BLE001 - inputs that fit one mode only (a batch of one in training): that mode decides
        other = {}
    # Training mode's calls first, then eval mode's (numbered apart), as the shallow traces order sites.
    first, then = (own, other) if root.training else (other, own)
    calls = {key: [*first.get(key, []), *(dataclasses.replace(c, invocation=c.invocation + _OTHER_MODE)
                                          for c in then.get(key, []))] for key in {*own, *other}}
    try:
        again = probe(root, _another_batch(root, example_inputs))
    except Exception:  # noqa: BLE001 - a model the second batch does not fit: the example alone decides
        again = {}
    units = instances(root, lambda m: isinstance(m, AdAct))
    shapes: dict[int, Any] = {}
    new: dict[int, nn.Module] = {}
    shared: list[str] = []
    by_path = {s.path: s for s in sites}
    for key, (unit, paths) in units.items():
        seen = calls.get(key, [])
        shapes[key] = next((c.shape for c in (*own.get(key, []), *seen)), None)
        if paths[0] not in by_path or any(c.caller is None for c in seen) or all(id(c.caller) in traced for c in seen):
            continue  # a unit the model had before, one served by CallSites, or only called where the traces counted
        firsts, looped = _call_sites(seen, again.get(key, []), paths[0])
        if len(firsts) <= 1:
            if looped:
                shared.append(paths[0])
            continue
        # Several call sites the shallow traces could not see: one unit per call site.
        clones: list[nn.Module] = [unit] + [copy.deepcopy(unit) for _ in firsts[1:]]
        new[key] = make_call_sites(clones, [c.caller for c in firsts], unit.training,  # type: ignore[misc]
                                   locations=[c.location for c in firsts])
        old = by_path.pop(paths[0])
        for i, (clone, c) in enumerate(zip(clones, firsts)):
            by_path[f"{paths[0]}.{i}"] = Site(f"{paths[0]}.{i}", old.replaced, "call_site")
            shapes[id(clone)] = c.shape
            if c.location in looped:
                shared.append(f"{paths[0]}.{i}")
    if new:
        replace(root, OrderedDict((k, units[k]) for k in new), new)
    if granularity == "channel":
        swap: dict[int, nn.Module] = {}
        layer_units = instances(root, lambda m: isinstance(m, AdAct) and m.granularity == "layer")
        for key, (unit, paths) in layer_units.items():
            if paths[0] not in by_path:
                continue  # a unit the model had before adactify
            assert isinstance(unit, AdAct)
            shape = shapes.get(key)
            dim = _channel_dim(shape, channel_dim, paths[0])
            assert shape is not None
            swap[key] = factory.per_channel(unit, int(shape[dim]), dim)
        replace(root, layer_units, {k: swap.get(k, u) for k, (u, _) in layer_units.items()})
    return list(by_path.values()), shared


def _another_batch(root: nn.Module, inputs: ExampleInputs | Mapping[str, Any]) -> Any:
    """A second example batch of the same shapes and unlike values -- constant where the example
    varies, random (token ids within the config's vocabulary) where it is constant -- so that call
    counts that depend on the data (how many experts a batch reaches) differ between the two."""
    gen = torch.Generator().manual_seed(1)
    vocab = getattr(getattr(root, "config", None), "vocab_size", None)

    def other(x: Any) -> Any:
        if not isinstance(x, Tensor) or x.dtype == torch.bool or x.numel() == 0:
            return x
        if bool((x != x.flatten()[0]).any()):
            return torch.zeros_like(x)
        if x.is_floating_point():
            return torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        high = vocab if isinstance(vocab, int) else 2
        return torch.randint(0, high, x.shape, generator=gen, dtype=x.dtype).to(x.device)

    if isinstance(inputs, Mapping):
        return {k: other(v) for k, v in inputs.items()}
    if isinstance(inputs, Tensor):
        return other(inputs)
    return [other(v) for v in inputs]


def _call_sites(seen: list[UnitCall], again: list[UnitCall], path: str) -> tuple[list[UnitCall], set[str | None]]:
    """One call per call site of a unit, and the locations whose calls share one unit.

    A location called the same number of times in every call of its caller, in both example
    batches, is as many call sites (a loop over a fixed list of branches, as in HRNet), served in
    turn; one whose count differs (an expert loop) is one site whose unit is shared.
    """
    if not seen:
        return [], set()
    invocations: OrderedDict[tuple[int, int], list[UnitCall]] = OrderedDict()
    for c in seen:
        invocations.setdefault((id(c.caller), c.invocation), []).append(c)
    if any(c.location is None for c in seen):  # no code location: call order must be stable
        per_caller: dict[int, set[int]] = {}
        for (caller, _), v in invocations.items():
            per_caller.setdefault(caller, set()).add(len(v))
        if any(len(counts) > 1 for counts in per_caller.values()):
            raise UserError(
                f"adactify: the unit at {path!r} is called a different number of times in different calls of "
                f"its caller, so its call sites cannot be told apart. Give each call site its own module."
            )
        firsts: list[UnitCall] = []
        done: set[int] = set()
        for (caller, _), v in invocations.items():
            if caller not in done:
                done.add(caller)
                firsts += v
        return firsts, set()
    counts: dict[str | None, set[int]] = {}  # per location: its number of calls in each call of its caller
    for calls in (seen, again):
        per_call: dict[tuple[int, int], Counter[str | None]] = {}
        for c in calls:
            per_call.setdefault((id(c.caller), c.invocation), Counter())[c.location] += 1
        used: dict[tuple[int, bool], set[str | None]] = {}  # per caller and mode: the locations it calls
        for (caller, inv), counter in per_call.items():
            used.setdefault((caller, inv >= _OTHER_MODE), set()).update(counter)
        for (caller, inv), counter in per_call.items():
            for loc in used[(caller, inv >= _OTHER_MODE)]:
                counts.setdefault(loc, set()).add(counter.get(loc, 0))
    varying = {loc for loc, n in counts.items() if len(n) > 1 and max(n) > 1}
    first = next(iter(invocations.values()))
    sites: list[UnitCall] = []
    for loc in dict.fromkeys(c.location for c in seen):
        at = [c for c in first if c.location == loc] or [next(c for c in seen if c.location == loc)]
        sites += at[:1] if loc in varying else at
    return sites, varying


def _channel_dim(shape: Any, channel_dim: int | None, path: str) -> int:
    if shape is None or len(shape) < 2:
        got = "it was not called" if shape is None else f"its input had shape {tuple(shape)}"
        raise UserError(
            f"cannot infer the channel count of the site {path!r} from example_inputs ({got}); "
            f'granularity="channel" needs an input with a channel dim there'
        )
    if channel_dim is not None:
        return channel_dim
    if len(shape) == 3:
        raise UserError(
            f'granularity="channel" at {path!r}: its input has shape {tuple(shape)}, where dim 1 is '
            f"the channels of an (N, C, L) feature map but the positions of an (N, L, E) token "
            f"sequence. Pass channel_dim=1 for the first or channel_dim=-1 for the second."
        )
    return 1

