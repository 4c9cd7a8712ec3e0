"""What :func:`adact.adactify` did: converted sites, missed sites, traced forwards."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AdactifyReport", "MissedSite", "Site"]


@dataclass(frozen=True)
class Site:
    """One converted activation call site.

    Attributes:
        path: module path of the site's AdAct unit.
        replaced: what was there: a class name (``"ReLU"``) or a call (``"F.relu"``, ``"Tensor.relu_"``).
        how: ``"module"`` (module swapped in place), ``"call_site"`` (one unit of a module called at
            several sites, see :class:`adact.surgery.CallSites`), ``"traced"`` (a function call in a
            forward rewritten by ``torch.fx``) or ``"attribute"`` (a Transformer layer's activation
            function).
    """

    path: str
    replaced: str
    how: str


@dataclass(frozen=True)
class MissedSite:
    """An activation that was not converted, and why.

    Attributes:
        path: path of the module that holds or calls it.
        what: its class name or call.
        reason: why it was left as it is.
        count: how many calls a verification pass saw there (1 for what the static scan found).
    """

    path: str
    what: str
    reason: str
    count: int = 1


@dataclass(frozen=True)
class AdactifyReport:
    """What :func:`adact.adactify` did.

    Attributes:
        n_units: number of distinct AdAct units added.
        n_params: number of parameters they add (``8 * n_units`` with the default pool and
            ``granularity="layer"``).
        sites: module path of each new unit, in module order.
        replaced: what each site had before (same order as ``sites``): a class name or a call.
        method: always ``"inplace"``: the model object itself is converted and keeps its class
            (no ``torch.fx.GraphModule`` is returned). Kept for compatibility.
        details: one :class:`Site` per unit (``sites`` and ``replaced`` are read from these).
        missed: activations that look targeted but were not converted, with the reason.
        traced: paths of modules whose ``forward`` now runs a ``torch.fx`` graph (because it
            called activation functions). Those modules keep their class, attributes and
            ``self.training`` branches; other Python control flow in *their own* forward is
            fixed to the path taken while tracing.
        untraced: ``(path, reason)`` of modules ``torch.fx`` could not trace and that matter
            (they hold or call activations).
        originals: warm start (``init="original"``): the registry activation each site's unit
            starts as (same order as ``sites``); empty for the paper's uniform start.
        added: warm start: the originals that were not in the pool and were added to it.
        verified: the modes (``"train"``, ``"eval"``) in which a pass on example inputs checked every
            activation call against the units; empty: nothing was verified (see ``verification``).
        dead: paths of units that no verification pass called.
        shared: paths of units that serve several calls from one code location whose number
            depends on the data (an expert loop), one unit per location.
        verification: one line saying what running the model verified and found.
    """

    n_units: int
    n_params: int
    sites: tuple[str, ...]
    replaced: tuple[str, ...]
    method: str = "inplace"
    details: tuple[Site, ...] = ()
    missed: tuple[MissedSite, ...] = ()
    traced: tuple[str, ...] = ()
    untraced: tuple[tuple[str, str], ...] = field(default=())
    originals: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()
    dead: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    verification: str = "nothing verified by running"

    def __str__(self) -> str:
        lines = [f"adactify: added {self.n_units} AdAct units ({self.n_params} parameters) in place"]
        if self.originals:
            counts = ", ".join(f"{n} x{self.originals.count(n)}" for n in dict.fromkeys(self.originals))
            lines.append(f"  warm start: each unit starts as the activation it replaces ({counts})"
                         + (f"; added to the pool: {', '.join(self.added)}" if self.added else ""))
        if self.traced:
            lines.append(f"  forwards rewritten by torch.fx: {', '.join(p or '<root>' for p in self.traced)}")
        lines.append(f"  {self.verification}")
        for m in self.missed:
            times = f" ({m.count} calls)" if m.count > 1 else ""
            lines.append(f"  missed {m.what} at {m.path or '<root>'!r}{times}: {m.reason}")
        for path in self.dead:
            lines.append(f"  dead unit {path!r}: never called while verifying")
        for path in self.shared:
            lines.append(f"  shared unit {path!r}: serves a data-dependent number of calls from one code location")
        for path, reason in self.untraced:
            lines.append(f"  not traced: {path or '<root>'!r} ({reason})")
        return "\n".join(lines)
