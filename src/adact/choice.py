"""What each AdAct unit chose and how sure it is: the one definition of a unit's choice.

Every reader of a choice -- ``result.json``, ``choices.json``, the search's records, ``adact
analyze``, the progress line and the figures -- goes through :meth:`adact.AdAct.choice` and
:class:`UnitSnapshot` here, so they all mean the same thing by it.

A unit's *choice* is the argmax of its softmax weights; nothing in the argmax says whether the
mixture was 0.9 / 0.02 / ... or 0.16 / 0.15 / .... :func:`unit_confidence` says it, per unit:

* ``top``: the chosen candidate's softmax weight;
* ``margin``: ``top`` minus the runner-up's weight (how far the choice is from flipping);
* ``entropy``: the normalised entropy :math:`H(p) / \\log K` (0 = one-hot, 1 = uniform);
* ``agreement`` (``granularity="channel"`` only): the share of channels whose own argmax is the
  layer's choice;
* ``weak``: ``margin < WEAK_MARGIN`` (0.05), a choice that a little noise could flip;
* ``prelu_slope``: the unit's learned PReLU slope (the channel mean for a per-channel unit).

A PReLU choice whose slope went negative inside the mixture (:func:`negative_prelu`) needs a
second look: the argmax keeps that slope, and ``max(0, x) + a * min(0, x)`` with ``a < 0`` is a
V-shaped, non-monotonic function, not the PReLU (slope 0.25) that an optimized model is retrained
from. In our runs such choices carry nearly all of the discretization gap (docs/RESULTS.md).

For a per-channel unit the layer's choice, ``top`` and ``margin`` come from the channel-mean
mixture (the choice :func:`adact.optimize` keeps), and ``entropy`` is the mean of the channels'
entropies (how sharp each channel's own mixture is).

What fixing the choices costs (the *discretization gap*) is measured by
:mod:`adact.training.gap`; per unit, :attr:`UnitSnapshot.function_gap` is the mean
``|mixture(x) - chosen(x)|`` over the inputs the unit saw (:mod:`adact.inputs`, recorded with the
snapshot during evaluation).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from adact.errors import UserError
from adact.inputs import InputStats, function_gap
from adact.unit import AdAct

__all__ = [
    "WEAK_MARGIN",
    "UnitConfidence",
    "UnitSnapshot",
    "adact_units",
    "confidence_from_mixture",
    "confidence_from_weights",
    "dominant_activations",
    "model_confidence",
    "model_weights",
    "negative_prelu",
    "normalised_entropy",
    "snapshot",
    "snapshots_from_record",
    "unit_confidence",
    "weights_record",
]

#: A choice whose margin to the runner-up is below this is reported as weak.
WEAK_MARGIN: float = 0.05


def normalised_entropy(p: Tensor) -> Tensor:
    r"""Entropy of the distributions along the last dim, divided by its maximum :math:`\log K`.

    .. math::
        \tilde H(p) = -\frac{1}{\log K} \sum_{k=1}^{K} p_k \log p_k

    0 for a one-hot ``p``, 1 for a uniform one; 0 when :math:`K = 1`. Differentiable (zero
    weights contribute 0, not NaN).

    Args:
        p: probabilities, shape :math:`(*, K)`, summing to 1 along the last dim.

    Shape:
        - Input: :math:`(*, K)`.
        - Output: :math:`(*)`.

    Example::

        >>> normalised_entropy(torch.full((7,), 1 / 7))
        tensor(1.)
    """
    k = p.shape[-1]
    if k < 2:
        return p.new_zeros(p.shape[:-1])
    # log of the clamped p: a weight that is exactly 0 (or underflowed) adds 0 and a finite
    # gradient, where p * log p would give -inf and then NaN through a softmax.
    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(-1) / math.log(k)


@dataclass(frozen=True)
class UnitConfidence:
    """How sure one unit is of its choice (see the module docstring for each field)."""

    path: str
    choice: str
    top: float
    margin: float
    entropy: float
    agreement: float | None  # per-channel units only
    weak: bool
    prelu_slope: float | None = None  # None when PReLU is not a candidate (or not known)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _top_two(p: Tensor) -> tuple[int, float, float]:
    # torch.argmax takes the first maximum: ties go to the earlier candidate, as in AdAct.choice().
    idx = int(torch.argmax(p))
    top = float(p[idx])
    rest = torch.cat([p[:idx], p[idx + 1:]])
    return idx, top, float(rest.max()) if rest.numel() else 0.0


def confidence_from_mixture(mix: Sequence[float] | Tensor, candidates: Sequence[str], path: str = "",
                            channel_mix: Sequence[Sequence[float]] | Tensor | None = None,
                            weak_margin: float = WEAK_MARGIN, prelu_slope: float | None = None) -> UnitConfidence:
    """:class:`UnitConfidence` of one unit from its softmax weights.

    Args:
        mix: the unit's weights, shape ``(K,)`` (the channel mean for a per-channel unit).
        candidates: the K names, in the order of ``mix``.
        path: the unit's module path, recorded as is. Default: ``""``.
        channel_mix: a per-channel unit's weights, ``(C, K)``; gives ``agreement`` and the mean
            per-channel entropy. Default: None (a per-layer unit, or channels not known).
        weak_margin: margins below this are ``weak``. Default: :data:`WEAK_MARGIN`.
        prelu_slope: the unit's learned PReLU slope, recorded as is. Default: None (not known).
    """
    p = torch.as_tensor(mix, dtype=torch.float64)
    if p.dim() != 1 or p.numel() != len(candidates) or p.numel() == 0:
        raise UserError(f"mix must hold one weight per candidate ({len(candidates)}), got shape {tuple(p.shape)}")
    if not (math.isfinite(weak_margin) and 0.0 <= weak_margin <= 1.0):
        raise UserError(f"weak_margin must be in [0, 1], got {weak_margin}")
    if prelu_slope is not None:
        prelu_slope = float(prelu_slope)
    idx, top, second = _top_two(p)
    agreement: float | None = None
    entropy = float(normalised_entropy(p))
    if channel_mix is not None:
        c = torch.as_tensor(channel_mix, dtype=torch.float64)
        if c.dim() != 2 or c.shape[1] != len(candidates):
            raise UserError(f"channel_mix must be (channels, {len(candidates)}), got shape {tuple(c.shape)}")
        agreement = float((c.argmax(-1) == idx).double().mean())
        entropy = float(normalised_entropy(c).mean())
    margin = top - second
    return UnitConfidence(path, candidates[idx], top, margin, entropy, agreement, margin < weak_margin, prelu_slope)


def confidence_from_weights(weights: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-unit confidences, as JSON, of recorded weights: a ``result.json``'s ``best_weights``.

    For runs from before confidences were recorded. ``weights`` needs ``paths``, ``candidates``
    and ``mix`` (see :func:`weights_record`). Exact for per-layer units; a per-channel
    unit's ``mix`` is its channel mean, so its channel agreement is not known (None).
    """
    return [confidence_from_mixture(m, weights["candidates"], path).to_json()
            for path, m in zip(weights["paths"], weights["mix"])]


def unit_confidence(unit: AdAct, path: str = "", weak_margin: float = WEAK_MARGIN) -> UnitConfidence:
    """:class:`UnitConfidence` of an :class:`adact.AdAct` unit at its current temperature.

    Example::

        >>> c = unit_confidence(AdAct())      # a fresh unit is a uniform mixture
        >>> c.choice, c.margin, round(c.entropy, 6), c.weak, c.prelu_slope
        ('relu', 0.0, 1.0, True, 0.25)
    """
    if not isinstance(unit, AdAct):
        raise TypeError(f"unit_confidence expects an AdAct unit, got {type(unit).__name__}")
    p = unit.mixture()
    slope = None if unit.prelu_weight is None else float(unit.prelu_weight.detach().float().mean())
    if p.dim() == 2:
        return confidence_from_mixture(p.mean(0), unit.candidates, path, p, weak_margin, slope)
    return confidence_from_mixture(p, unit.candidates, path, None, weak_margin, slope)


def negative_prelu(confidence: UnitConfidence | dict[str, Any]) -> bool:
    """True for a PReLU choice whose learned slope is negative (see the module docstring).

    Accepts a :class:`UnitConfidence` or its JSON form; one recorded before slopes were
    (no ``prelu_slope``) is never flagged.
    """
    c = confidence.to_json() if isinstance(confidence, UnitConfidence) else confidence
    slope = c.get("prelu_slope")
    return c.get("choice") == "prelu" and slope is not None and slope < 0.0


def model_confidence(model: nn.Module, weak_margin: float = WEAK_MARGIN) -> list[UnitConfidence]:
    """:func:`unit_confidence` of every AdAct unit of ``model``, in module order."""
    return [unit_confidence(u, p, weak_margin) for p, u in adact_units(model)]


# --- the units of a model and their snapshots ----------------------------------------------------


def adact_units(model: nn.Module) -> list[tuple[str, AdAct]]:
    """The model's AdAct units as ``(path, unit)`` pairs, in module order.

    A unit registered under several paths is listed once, under its first path. The root
    module itself, if it is an AdAct unit, has path ``""``.
    """
    return [(path, m) for path, m in model.named_modules() if isinstance(m, AdAct)]


def dominant_activations(model: nn.Module) -> OrderedDict[str, tuple[str, float]]:
    """Each AdAct unit's choice (:meth:`adact.AdAct.choice`): ``path -> (name, softmax weight)``, in module order.

    Example::

        >>> net = ConvNet(activation="adact")
        >>> dominant_activations(net)
        OrderedDict([('features.0.2', ('relu', 0.142...)), ...])
    """
    return OrderedDict((path, unit.choice()) for path, unit in adact_units(model))


@dataclass(frozen=True)
class UnitSnapshot:
    """One AdAct unit at one moment: its weights, its choice and how sure it is.

    Attributes:
        path: the unit's module path.
        candidates: the pool, in the unit's order.
        raw: the logits :math:`w`, shape ``(K,)`` (the channel mean for a per-channel unit).
        mix: the softmax weights :math:`\\mathrm{softmax}(w / T)`, ``(K,)`` (channel mean likewise).
        choice: :meth:`adact.AdAct.choice`'s name; ``weight``: its softmax weight.
        confidence: :class:`UnitConfidence` of the choice (``prelu_slope`` included); None for a
            per-channel unit read from a record that predates confidences.
        granularity: ``"layer"`` or ``"channel"``.
        inputs: :class:`adact.inputs.InputStats` of the unit's inputs over the epoch's evaluation;
            None when not recorded (runs from before they were, or a unit read off a model).
    """

    path: str
    candidates: tuple[str, ...]
    raw: tuple[float, ...]
    mix: tuple[float, ...]
    choice: str
    weight: float
    confidence: UnitConfidence | None
    granularity: str = "layer"
    inputs: InputStats | None = None

    @property
    def prelu_slope(self) -> float | None:
        return None if self.confidence is None else self.confidence.prelu_slope

    @property
    def function_gap(self) -> float | None:
        """Mean ``|mixture(x) - chosen(x)|`` over the recorded inputs (:func:`adact.inputs.function_gap`); None without them."""
        if self.inputs is None:
            return None
        return function_gap(self.candidates, self.mix, self.prelu_slope, self.choice, self.inputs)

    @classmethod
    def of(cls, path: str, unit: AdAct, weak_margin: float = WEAK_MARGIN,
           inputs: InputStats | None = None) -> UnitSnapshot:
        raw, mix = unit.raw_weights(), unit.mixture()
        if mix.dim() == 2:
            raw, mix = raw.mean(0), mix.mean(0)
        choice, weight = unit.choice()
        return cls(path, tuple(unit.candidates), tuple(raw.tolist()), tuple(mix.tolist()), choice, weight,
                   unit_confidence(unit, path, weak_margin), unit.granularity, inputs)


def snapshot(model: nn.Module, weak_margin: float = WEAK_MARGIN,
             inputs: dict[str, InputStats] | None = None) -> list[UnitSnapshot]:
    """:class:`UnitSnapshot` of every AdAct unit of ``model``, in module order.

    ``inputs``: per unit path, its recorded inputs (:class:`adact.inputs.InputRecorder`'s ``stats()``).
    """
    inputs = inputs or {}
    return [UnitSnapshot.of(path, unit, weak_margin, inputs.get(path)) for path, unit in adact_units(model)]


def weights_record(snapshots: Sequence[UnitSnapshot]) -> dict[str, Any]:
    """The snapshots as the table a run records (``result.json``'s ``best_weights``, a search's records).

    Keys: ``paths``, ``candidates``, ``choices``, ``choice_weights``, ``raw`` / ``mix`` (units x
    candidates) and ``confidence`` (one :class:`UnitConfidence` dict per unit): the format run
    folders have always had, so every published one still reads. Snapshots whose confidence is
    not known (read back from an old record) leave ``confidence`` out, as such records had it,
    rather than a list that no longer lines up with the units. ``inputs`` (one
    :class:`adact.inputs.InputStats` dict, or None, per unit) is there when any unit's inputs were recorded.
    """
    record: dict[str, Any] = {
        "paths": [s.path for s in snapshots], "candidates": list(snapshots[0].candidates) if snapshots else [],
        "choices": [s.choice for s in snapshots], "choice_weights": [s.weight for s in snapshots],
        "raw": [list(s.raw) for s in snapshots], "mix": [list(s.mix) for s in snapshots]}
    if all(s.confidence is not None for s in snapshots):
        record["confidence"] = [s.confidence.to_json() for s in snapshots]  # type: ignore[union-attr]
    if any(s.inputs is not None for s in snapshots):
        record["inputs"] = [None if s.inputs is None else s.inputs.to_json() for s in snapshots]
    return record


def snapshots_from_record(record: dict[str, Any], granularity: str = "layer") -> list[UnitSnapshot]:
    """Read :func:`weights_record`'s table back, also one recorded before confidences were.

    A record without ``confidence`` gets it computed from its weights where that is exact: for
    per-layer units. A per-channel unit's recorded ``mix`` is its channel mean, which does not
    give its channel agreement nor its channels' entropy, so its confidence stays None.
    """
    recorded = record.get("confidence")
    inputs = record.get("inputs") or [None] * len(record["paths"])
    units = []
    for i, (path, raw, mix) in enumerate(zip(record["paths"], record["raw"], record["mix"])):
        conf: UnitConfidence | None = None
        if recorded:
            conf = UnitConfidence(**recorded[i])
        elif granularity == "layer":
            conf = confidence_from_mixture(mix, record["candidates"], path)
        seen = None if inputs[i] is None else InputStats.from_json(inputs[i])
        units.append(UnitSnapshot(path, tuple(record["candidates"]), tuple(raw), tuple(mix), record["choices"][i],
                                  float(record["choice_weights"][i]), conf, granularity, seen))
    return units


def model_weights(model: nn.Module) -> dict[str, Any]:
    """:func:`weights_record` of ``model``'s units now (what a run records for its best epoch)."""
    return weights_record(snapshot(model))
