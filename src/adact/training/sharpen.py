"""Sharpening the mixtures while they train: a temperature schedule, an entropy penalty, a logit learning rate.

The paper trains the logits like any weight and reads the argmax at the end, so a mixture may
end far from one-hot and the kept argmax model differs from the trained one (see
the discretization gap, :mod:`adact.training.gap`). Three standard remedies from one-shot architecture search, all off by
default:

* :class:`TemperatureSchedule`: the softmax temperature :math:`T` of every unit
  (:meth:`adact.AdAct.set_temperature`) goes from :math:`T_0` to :math:`T_1` over training;
  :math:`T_1 < 1` ends training on a sharper mixture, closer to the argmax model.
* :func:`mixture_entropy`: :math:`\\lambda` times the mean normalised entropy of the units,
  added to the loss, pushes each mixture towards one candidate.
* :func:`param_groups`: the AdAct logits get their own learning rate, a multiple of the rest's
  (DARTS trains its architecture weights with a separate, smaller one).

All three act only through the logits the softmax sees, :math:`w / T`, which both the fused
kernel and the reference sum take as input, so autograd handles them identically on both paths.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from adact.choice import adact_units, normalised_entropy
from adact.config import check_positive
from adact.errors import UserError
from adact.reference import mixture_weights
from adact.unit import AdAct

__all__ = [
    "TemperatureSchedule",
    "mixture_entropy",
    "param_groups",
    "set_temperature",
]


class TemperatureSchedule:
    r"""Softmax temperature annealed geometrically from :math:`T_0` to :math:`T_1` over ``total_steps``.

    .. math::
        T(s) = T_0 \left(\frac{T_1}{T_0}\right)^{s / (S - 1)}, \qquad s = 0, \dots, S - 1

    so the first step trains at :math:`T_0` and the last at :math:`T_1`. Geometric, not linear:
    :math:`T` scales the logits, so each step multiplies their sharpness by the same factor
    (1 -> 0.1 passes 0.5 at a third of training, not near the end). Steps past the end stay at
    :math:`T_1`. A pure function of the step, so a resumed run gets the same temperatures.

    Args:
        t0: temperature at the first step (> 0).
        t1: temperature at the last step (> 0).
        total_steps: number of training steps :math:`S` (>= 1).

    Example::

        >>> sched = TemperatureSchedule(1.0, 0.1, total_steps=1000)
        >>> sched(0), sched(999)
        (1.0, 0.1)
    """

    def __init__(self, t0: float, t1: float, total_steps: int) -> None:
        self.t0 = check_positive("t0", t0)
        self.t1 = check_positive("t1", t1)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise UserError(f"total_steps must be a positive int, got {total_steps!r}")
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < 0:
            raise UserError(f"step must be >= 0, got {step}")
        if self.total_steps == 1:
            return self.t1
        frac = min(step, self.total_steps - 1) / (self.total_steps - 1)
        return self.t0 * (self.t1 / self.t0) ** frac

    def __repr__(self) -> str:
        return f"TemperatureSchedule(t0={self.t0:g}, t1={self.t1:g}, total_steps={self.total_steps})"


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the softmax temperature of every AdAct unit of ``model``; returns how many units there are."""
    units = adact_units(model)
    for _, unit in units:
        unit.set_temperature(temperature)
    return len(units)


def mixture_entropy(model: nn.Module) -> Tensor:
    r"""Mean normalised entropy of the mixtures of ``model``'s AdAct units, differentiable.

    .. math::
        \bar H = \frac{1}{n} \sum_{u=1}^{n} \tilde H\big(\mathrm{softmax}(w_u / T_u)\big)

    with :math:`\tilde H` from :func:`adact.choice.normalised_entropy` (0 = one-hot,
    1 = uniform); a per-channel unit contributes the mean over its channels, so every unit weighs
    the same. Add :math:`\lambda \bar H` to the loss to sharpen the mixtures.

    Returns:
        a float32 (or float64 for float64 logits) scalar; 0 for a model without AdAct units.

    Example::

        >>> loss = F.cross_entropy(model(x), y) + 0.01 * mixture_entropy(model)
    """
    units = adact_units(model)
    if not units:
        return torch.zeros(())
    terms = [normalised_entropy(mixture_weights(u.scaled_logits())).mean() for _, u in units]
    return torch.stack(terms).mean()


def param_groups(model: nn.Module, weight_decay: float, decay_adact: bool = True,
                 adact_lr_mult: float = 1.0, lr: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups: weight decay for AdAct parameters, learning rate for AdAct logits.

    With ``adact_lr_mult == 1`` the groups are the historical ones (one group, or decayed and
    AdAct parameters when ``decay_adact`` is False), so existing optimizer checkpoints resume.
    Otherwise the AdAct logits get a group of their own with learning rate ``lr * adact_lr_mult``
    (AdamW's decoupled decay is ``lr * weight_decay`` per step, so it scales with it too). The
    PReLU slope of a unit is an ordinary weight of its activation and keeps ``lr``.

    Args:
        model: the model to optimise.
        weight_decay: the decay of ordinary parameters.
        decay_adact: also decay AdAct logits and PReLU slopes. Default: True (plain AdamW).
        adact_lr_mult: learning rate of the AdAct logits relative to ``lr`` (> 0). Default: 1.0.
        lr: the base learning rate; needed when ``adact_lr_mult != 1``. Default: None.
    """
    mult = check_positive("adact_lr_mult", adact_lr_mult)
    params = list(model.parameters())
    units = [m for m in model.modules() if isinstance(m, AdAct)]
    if mult == 1.0:
        if decay_adact:
            return [{"params": params, "weight_decay": weight_decay}]
        adact_ids = {id(p) for m in units for p in m.parameters()}
        return [{"params": [p for p in params if id(p) not in adact_ids], "weight_decay": weight_decay},
                {"params": [p for p in params if id(p) in adact_ids], "weight_decay": 0.0}]
    if lr is None:
        raise UserError("param_groups needs the base lr when adact_lr_mult != 1")
    lr = check_positive("lr", lr)
    logit_ids = {id(m.logits) for m in units}
    slope_ids = {id(m.prelu_weight) for m in units if m.prelu_weight is not None}
    adact_decay = weight_decay if decay_adact else 0.0
    groups = [
        {"params": [p for p in params if id(p) not in logit_ids | slope_ids], "weight_decay": weight_decay, "lr": lr},
        {"params": [p for p in params if id(p) in slope_ids], "weight_decay": adact_decay, "lr": lr},
        {"params": [p for p in params if id(p) in logit_ids], "weight_decay": adact_decay, "lr": lr * mult},
    ]
    return [g for g in groups if g["params"]]
