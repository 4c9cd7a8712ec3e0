"""How sure is a choice, and what does fixing it cost? Confidence per unit and the discretization gap.

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

The *discretization gap* (:func:`discretization_gap`) is the accuracy lost by keeping only the
argmax: the trained mixture model against the same model with every unit replaced by its choice
(:func:`adact.optimize`, learned PReLU slopes kept), with no retraining; only the BatchNorm
statistics are recomputed on training batches (:func:`recompute_batchnorm`), because the
activations they normalise changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from adact.surgery import adact_units, optimize
from adact.unit import AdAct

__all__ = [
    "BN_BATCHES",
    "WEAK_MARGIN",
    "GapResult",
    "UnitConfidence",
    "confidence_from_mixture",
    "confidence_from_weights",
    "discretization_gap",
    "model_confidence",
    "negative_prelu",
    "normalised_entropy",
    "recompute_batchnorm",
    "render_confidence_text",
    "render_gap_text",
    "unit_confidence",
]

#: A choice whose margin to the runner-up is below this is reported as weak.
WEAK_MARGIN: float = 0.05
#: Training batches :func:`discretization_gap` uses to recompute BatchNorm statistics by default.
BN_BATCHES: int = 100


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
    # torch.argmax takes the first maximum: ties go to the earlier candidate, as in dominant().
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
        raise ValueError(f"mix must hold one weight per candidate ({len(candidates)}), got shape {tuple(p.shape)}")
    if not (math.isfinite(weak_margin) and 0.0 <= weak_margin <= 1.0):
        raise ValueError(f"weak_margin must be in [0, 1], got {weak_margin}")
    if prelu_slope is not None:
        prelu_slope = float(prelu_slope)
    idx, top, second = _top_two(p)
    agreement: float | None = None
    entropy = float(normalised_entropy(p))
    if channel_mix is not None:
        c = torch.as_tensor(channel_mix, dtype=torch.float64)
        if c.dim() != 2 or c.shape[1] != len(candidates):
            raise ValueError(f"channel_mix must be (channels, {len(candidates)}), got shape {tuple(c.shape)}")
        agreement = float((c.argmax(-1) == idx).double().mean())
        entropy = float(normalised_entropy(c).mean())
    margin = top - second
    return UnitConfidence(path, candidates[idx], top, margin, entropy, agreement, margin < weak_margin, prelu_slope)


def confidence_from_weights(weights: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-unit confidences, as JSON, of recorded weights: a ``result.json``'s ``best_weights``.

    For runs from before confidences were recorded. ``weights`` needs ``paths``, ``candidates``
    and ``mix`` (see :func:`adact.train.adact_weights`). Exact for per-layer units; a per-channel
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


def render_confidence_text(confidence: Sequence[UnitConfidence | dict[str, Any]],
                           weak_margin: float = WEAK_MARGIN) -> str:
    """A fixed-width table of per-unit confidences (``adact analyze``).

    ``WEAK`` marks weak choices, ``NEG-SLOPE`` PReLU choices with a negative learned slope
    (:func:`negative_prelu`); ``slope`` is shown for PReLU choices only.
    """
    rows = [c.to_json() if isinstance(c, UnitConfidence) else dict(c) for c in confidence]
    if not rows:
        return ""
    lines = [f"confidence of each choice (weak: margin to the runner-up < {weak_margin:g}; entropy 0 = one-hot, "
             f"1 = uniform)",
             f"{'layer':<8}{'unit':<16}{'choice':>12}{'top':>9}{'margin':>9}{'entropy':>9}{'agree':>8}{'slope':>8}"]
    for i, c in enumerate(rows):
        agree = "—" if c.get("agreement") is None else f"{c['agreement']:.2f}"
        slope = f"{c['prelu_slope']:+.2f}" if c["choice"] == "prelu" and c.get("prelu_slope") is not None else "—"
        lines.append(f"{i + 1:<8}{c['path']:<16}{c['choice']:>12}{c['top']:>9.4f}{c['margin']:>9.4f}"
                     f"{c['entropy']:>9.4f}{agree:>8}{slope:>8}" + ("   WEAK" if c["weak"] else "")
                     + ("   NEG-SLOPE" if negative_prelu(c) else ""))
    if any(negative_prelu(c) for c in rows):
        lines.append("NEG-SLOPE: PReLU whose slope was learned negative inside the mixture; alone it is V-shaped, "
                     "so the argmax model is a different function (expect a large discretization gap)")
    return "\n".join(lines) + "\n\n"


def render_gap_text(gap: GapResult | dict[str, Any]) -> str:
    """One paragraph on the discretization gap of a run (``adact analyze``)."""
    g = gap.to_json() if isinstance(gap, GapResult) else gap
    return (f"discretization gap: mixture {g['mixture_acc']:.4f}, argmax (no retraining, BatchNorm recomputed on "
            f"{g['bn_batches']} training batches) {g['argmax_acc']:.4f}, argmax - mixture {g['gap']:+.4f}\n")


# --- the discretization gap ---------------------------------------------------------------------


@dataclass(frozen=True)
class GapResult:
    """Test accuracy of the mixture model, of its argmax model, and their difference."""

    mixture_acc: float
    argmax_acc: float
    gap: float  # argmax_acc - mixture_acc: negative when fixing the choices costs accuracy
    bn_batches: int  # training batches the argmax model's BatchNorm statistics came from

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], max_batches: int = BN_BATCHES,
                        bf16: bool = False) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` by their average over batches.

    The statistics are reset and re-estimated as a plain (cumulative) average over up to
    ``max_batches`` batches of inputs, with only the BatchNorm layers in training mode: every
    other module (e.g. RReLU, dropout) computes as it does at evaluation. ``model`` is left in
    eval mode; its parameters are not touched.

    Args:
        model: the model whose BatchNorm layers are re-estimated, in place.
        batches: ``(x, y)`` pairs, e.g. a training :class:`adact.data.DeviceLoader`.
        max_batches: use at most this many batches. Default: :data:`BN_BATCHES`.
        bf16: run the forward passes under bfloat16 autocast. Default: False.

    Returns:
        the number of batches used (0 when ``model`` has no BatchNorm layer or ``batches`` is empty).
    """
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
        raise ValueError(f"max_batches must be a positive int, got {max_batches!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    model.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average, every batch weighs the same
        m.train()
    device_type = next(model.parameters()).device.type
    used = 0
    try:
        for x, _ in batches:
            if used == max_batches:
                break
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                model(x)
            used += 1
    finally:
        for m, mom in zip(norms, saved):
            m.momentum = mom
        model.eval()
    return used


def discretization_gap(model: nn.Module, train_batches: Iterable[tuple[Tensor, Tensor]],
                       test_batches: Iterable[tuple[Tensor, Tensor]], bn_batches: int = BN_BATCHES,
                       bf16: bool = False) -> GapResult:
    """Test accuracy of ``model`` against its argmax model, with no retraining.

    The argmax model is :func:`adact.optimize` of a copy of ``model``: every AdAct unit becomes
    the plain module of its choice (a PReLU keeps its learned slope; a per-channel unit gets its
    layer's choice, as in ConvNet-Optimized). Its BatchNorm statistics are then recomputed on
    ``bn_batches`` training batches (:func:`recompute_batchnorm`). ``model`` itself is not changed
    (it is evaluated in eval mode and left in it).

    Args:
        model: a trained model with AdAct units.
        train_batches: ``(x, y)`` training batches for the BatchNorm statistics.
        test_batches: ``(x, y)`` batches to measure accuracy on; iterated twice.
        bn_batches: training batches used for the statistics. Default: :data:`BN_BATCHES`.
        bf16: evaluate under bfloat16 autocast. Default: False.

    Returns:
        a :class:`GapResult`; ``gap = argmax_acc - mixture_acc``.

    Example::

        >>> r = discretization_gap(trained_net, train_loader, test_loader)
        >>> r.mixture_acc, r.argmax_acc, r.gap
        (0.913, 0.871, -0.042)
    """
    if not adact_units(model):
        raise ValueError("discretization_gap needs a model with AdAct units; this one has none")
    from adact.train import evaluate  # train imports this module

    _, mixture_acc = evaluate(model, test_batches, bf16)  # type: ignore[arg-type]
    fixed = optimize(model)
    used = recompute_batchnorm(fixed, train_batches, bn_batches, bf16)
    _, argmax_acc = evaluate(fixed, test_batches, bf16)  # type: ignore[arg-type]
    return GapResult(mixture_acc, argmax_acc, argmax_acc - mixture_acc, used)
