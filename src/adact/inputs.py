"""What each AdAct unit sees: statistics of its inputs, and its learned function over them.

A unit's weights say which candidates it mixes, not where its inputs lie: two candidates that
differ only for :math:`x < -3` are the same function for a layer whose inputs stay in
:math:`[-1, 2]`. :class:`InputRecorder` records, during an evaluation, each unit's input
distribution (all channels together) as an :class:`InputStats`: the exact count, min, max, mean
and standard deviation, and quantiles and a fixed-bin histogram of a subsample (every element of a
batch up to :data:`SAMPLE_PER_BATCH`, a uniform draw beyond, :data:`MAX_SAMPLE` per unit in all).
Training never records: the hooks exist only inside ``with InputRecorder(...)``.

:func:`unit_curves` evaluates a unit's mixture :math:`\\sum_k p_k f_k(x)` (its weights at its
temperature, its learned PReLU slope) and each candidate :math:`f_k(x)` from the registry, and
:func:`function_gap` is the mean :math:`|\\text{mixture}(x) - \\text{chosen}(x)|` over a unit's
recorded inputs: the discretization gap of one unit, in the units of its output. Both take what
a run records (:class:`adact.choice.UnitSnapshot`), so they work on published run folders too.
For a per-channel unit the record holds the channel means of the weights and of the PReLU slope,
so its curve is the function of those means (exact unless the channels' PReLU weights and
slopes differ together).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from adact.activations import activation_functional

__all__ = [
    "BINS",
    "DEFAULT_RANGE",
    "MAX_SAMPLE",
    "QUANTILES",
    "SAMPLE_PER_BATCH",
    "InputRecorder",
    "InputStats",
    "function_gap",
    "unit_curves",
]

#: Quantiles recorded per unit (of the subsample).
QUANTILES: tuple[float, ...] = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)
#: Histogram bins, spread evenly over the 0.1% to 99.9% quantiles of the subsample.
BINS: int = 48
#: Values kept per unit and evaluation batch: all of a smaller batch, a uniform draw of a larger one.
SAMPLE_PER_BATCH: int = 4096
#: Values kept per unit in all; past it, the kept ones are thinned by 2 (and so is the per-batch draw).
MAX_SAMPLE: int = 1 << 16
#: The x range drawn for a unit whose inputs were not recorded (a run from before they were).
DEFAULT_RANGE: tuple[float, float] = (-4.0, 4.0)


@dataclass(frozen=True)
class InputStats:
    """The distribution of one unit's inputs over an evaluation (all channels together).

    Attributes:
        count: elements seen (exact); ``min``, ``max``, ``mean``, ``std``: exact over them.
        sampled: elements in the subsample the quantiles and the histogram come from.
        quantiles: the values at :data:`QUANTILES`, in that order.
        edges: ``BINS + 1`` bin edges from the 0.1% to the 99.9% quantile.
        hist: the share of the subsample in each bin; ``below`` and ``above``: the shares outside.
    """

    count: int
    min: float
    max: float
    mean: float
    std: float
    sampled: int
    quantiles: tuple[float, ...]
    edges: tuple[float, ...]
    hist: tuple[float, ...]
    below: float
    above: float

    def to_json(self) -> dict[str, Any]:
        # Lists, as JSON reads them back: a result in memory equals the one read from result.json.
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InputStats:
        return cls(int(d["count"]), float(d["min"]), float(d["max"]), float(d["mean"]), float(d["std"]),
                   int(d["sampled"]), tuple(d["quantiles"]), tuple(d["edges"]), tuple(d["hist"]),
                   float(d["below"]), float(d["above"]))

    @property
    def range(self) -> tuple[float, float]:
        """The histogram's range: where 99.8% of the inputs lie."""
        return self.edges[0], self.edges[-1]

    def quantile(self, q: float) -> float:
        """The recorded quantile ``q`` (one of :data:`QUANTILES`)."""
        return self.quantiles[QUANTILES.index(q)]

    @classmethod
    def of(cls, sample: Tensor, count: int, lo: float, hi: float, total: float, total_sq: float) -> InputStats:
        """Statistics from a subsample (1-D) and the exact count, min, max, sum and sum of squares."""
        s = sample.detach().flatten().double().cpu()
        qs = torch.quantile(s, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
        a, b = qs[0], qs[-1]
        if not b > a:  # one value (or nearly): a unit-wide window around it
            a, b = a - 0.5, b + 0.5
        edges = torch.linspace(a, b, BINS + 1, dtype=torch.float64)
        hist = torch.histogram(s, edges).hist / s.numel()
        mean = total / count
        var = max(total_sq / count - mean * mean, 0.0)
        return cls(count, lo, hi, mean, math.sqrt(var), s.numel(), tuple(qs), tuple(edges.tolist()),
                   tuple(hist.tolist()), float((s < a).double().mean()), float((s > b).double().mean()))


class _Unit:
    """The running record of one unit: exact moments and extremes, and the subsample."""

    def __init__(self) -> None:
        self.samples: list[Tensor] = []
        self.kept = 0
        self.per_batch = SAMPLE_PER_BATCH
        self.count = 0
        self.moments: Tensor | None = None  # (sum, sum of squares), float64, on the input's device
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None
        self.generator: torch.Generator | None = None

    def add(self, x: Tensor) -> None:
        flat = x.detach().reshape(-1)
        if flat.numel() == 0:
            return
        # Everything stays on the input's device: no synchronisation per batch.
        lo, hi = torch.aminmax(flat)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        # Per batch in float32 (no copy of a float32 input; torch's reductions sum pairwise), across batches in float64.
        f32 = flat.float()
        m = torch.stack([f32.sum(), torch.dot(f32, f32)]).double()
        self.moments = m if self.moments is None else self.moments + m
        self.count += flat.numel()
        if flat.numel() > self.per_batch:
            if self.generator is None or self.generator.device != flat.device:
                # A generator of its own: recording never moves the global RNG (a resumed run stays exact).
                self.generator = torch.Generator(device=flat.device).manual_seed(0)
            idx = torch.randint(flat.numel(), (self.per_batch,), generator=self.generator, device=flat.device)
            flat = flat[idx]
        self.samples.append(flat.float())
        self.kept += flat.numel()
        if self.kept > MAX_SAMPLE:
            self.samples = [s[::2] for s in self.samples]
            self.kept = sum(s.numel() for s in self.samples)
            self.per_batch = max(1, self.per_batch // 2)

    def stats(self) -> InputStats | None:
        if not self.count or self.moments is None or self.lo is None or self.hi is None:
            return None
        total, total_sq = self.moments.tolist()
        return InputStats.of(torch.cat(self.samples), self.count, float(self.lo), float(self.hi), total, total_sq)


class InputRecorder:
    """Record the inputs of AdAct units while a model evaluates: a context manager.

    Inside ``with``, a forward pre-hook on each unit adds its input to the unit's record; on
    leaving, the hooks are removed, so training never pays for them. :meth:`stats` gives the
    result per unit path (units that saw no input are left out).

    Args:
        units: ``(path, unit)`` pairs, e.g. :func:`adact.choice.adact_units` of the model.

    Example::

        >>> with InputRecorder(adact_units(model)) as rec:
        ...     evaluate(model, test_loader)
        >>> rec.stats()["features.0.2"].quantile(0.5)
    """

    def __init__(self, units: Sequence[tuple[str, nn.Module]]) -> None:
        self._units = list(units)
        self._records = {path: _Unit() for path, _ in self._units}
        self._handles: list[Any] = []

    def __enter__(self) -> InputRecorder:
        for path, unit in self._units:
            self._handles.append(unit.register_forward_pre_hook(self._hook(self._records[path])))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @staticmethod
    def _hook(record: _Unit) -> Any:
        # Outside any compiled graph: a compiled model calls it eagerly (evaluation only).
        @torch.compiler.disable
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], Tensor):
                record.add(args[0])
        return hook

    def stats(self) -> dict[str, InputStats]:
        """``path -> InputStats`` of every unit that saw an input."""
        out = {}
        for path, record in self._records.items():
            s = record.stats()
            if s is not None:
                out[path] = s
        return out


def unit_curves(candidates: Sequence[str], mix: Sequence[float], prelu_slope: float | None,
                x: Tensor) -> tuple[Tensor, Tensor]:
    r"""A unit's mixture :math:`\sum_k p_k f_k(x)` and each candidate :math:`f_k(x)` at the points ``x``.

    Candidates compute as in evaluation (RReLU with its mean slope); PReLU with ``prelu_slope``
    (its initial 0.25 when it is not known).

    Args:
        candidates: the K names; ``mix``: their weights :math:`p` (softmax at the unit's temperature).
        prelu_slope: the learned PReLU slope.
        x: points, shape :math:`(n,)`.

    Returns:
        ``(mixture, each)``: shapes :math:`(n,)` and :math:`(K, n)`, float64.
    """
    x = x.double()
    slope = torch.tensor([0.25 if prelu_slope is None else float(prelu_slope)], dtype=torch.float64)
    each = torch.stack([activation_functional(name)(x, slope, False) for name in candidates])
    p = torch.as_tensor(list(mix), dtype=torch.float64)
    return p @ each, each


def function_gap(candidates: Sequence[str], mix: Sequence[float], prelu_slope: float | None, choice: str,
                 inputs: InputStats) -> float:
    r"""Mean :math:`|\text{mixture}(x) - f_{\text{choice}}(x)|` over a unit's recorded inputs.

    The mean is over the histogram (bin centres weighted by their share), so it covers the
    central 99.8% of the inputs. The chosen candidate keeps the learned PReLU slope, as the
    argmax model does.
    """
    edges = torch.tensor(inputs.edges, dtype=torch.float64)
    centres = (edges[1:] + edges[:-1]) / 2
    w = torch.tensor(inputs.hist, dtype=torch.float64)
    mixture, each = unit_curves(candidates, mix, prelu_slope, centres)
    diff = (mixture - each[list(candidates).index(choice)]).abs()
    return float((w * diff).sum() / w.sum().clamp_min(1e-300))
