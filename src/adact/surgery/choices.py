"""Fixing and moving the units' choices: ``optimize``, ``save_choices`` and ``apply_choices``.

What a unit chose is :meth:`adact.AdAct.choice` (read for a whole model by :mod:`adact.choice`).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adact.activations import ACTIVATIONS
from adact.choice import adact_units
from adact.surgery.choicefile import CHOICES_FORMAT, ChoicesFile, read_choices
from adact.surgery.core import CONFIG_ATTR, adactify, undo_on_error
from adact.surgery.modules import instances, replace
from adact.surgery.probe import ExampleInputs, probe
from adact.unit import AdAct

__all__ = [
    "CHOICES_FORMAT",
    "ExportableRReLU",
    "apply_choices",
    "optimize",
    "save_choices",
]

class ExportableRReLU(nn.RReLU):
    r""":class:`torch.nn.RReLU`, with its eval mode written as the LeakyReLU it is.

    In training mode it is ``nn.RReLU`` (a random slope :math:`\sim U(\text{lower}, \text{upper})`
    per element). In eval mode ``nn.RReLU`` computes LeakyReLU with slope
    :math:`(\text{lower} + \text{upper}) / 2`; this class calls ``F.leaky_relu`` with that slope,
    the same numbers, because the ONNX exporters translate LeakyReLU but not eval-mode RReLU.
    An exported model (always eval mode) therefore applies LeakyReLU with slope
    :math:`(1/8 + 1/3) / 2 = 11/48` at an RReLU site. :func:`optimize` builds these.
    """

    def forward(self, input: Tensor) -> Tensor:
        if self.training:
            return super().forward(input)
        return F.leaky_relu(input, (self.lower + self.upper) / 2, self.inplace)


def _plain(name: str, slope: Tensor | None, device: torch.device, training: bool) -> nn.Module:
    """The plain module of activation ``name`` (a PReLU with ``slope``'s values if given)."""
    if name == "prelu":
        n = 1 if slope is None else slope.numel()
        new: nn.Module = nn.PReLU(num_parameters=n)
        if slope is not None:
            with torch.no_grad():
                new.weight.copy_(slope.reshape(-1).to(new.weight.dtype))
    elif name == "rrelu":
        new = ExportableRReLU()
    else:
        new = ACTIVATIONS[name]()
    # RReLU's behaviour depends on the mode, so keep the unit's.
    return new.to(device).train(training)


def _plain_module(unit: AdAct, reinit: bool) -> nn.Module:
    name, _ = unit.choice()
    slope = unit.prelu_weight.detach() if unit.prelu_weight is not None else None
    if name == "prelu" and reinit and slope is not None:
        # Keep the slope's shape so optimized models share one state_dict layout.
        slope = torch.full_like(slope, 0.25)
    new = _plain(name, slope, unit.logits.device, unit.training)
    if name == "prelu" and slope is not None:
        new.to(slope.dtype)
    return new


def optimize(model: nn.Module, reinit: bool = False) -> nn.Module:
    """A copy of ``model`` with every AdAct unit replaced by a plain module of its choice.

    This is the paper's "ConvNet-Optimized": each unit becomes the ``torch.nn`` module of
    its dominant activation (see :func:`dominant_activations`) with PyTorch's default
    hyper-parameters -- the same ones the unit's candidates use. An RReLU choice becomes
    :class:`ExportableRReLU` (``nn.RReLU`` that exports to ONNX as the LeakyReLU it is in eval
    mode). ``model`` itself is not modified. Works for any pool (with or without PReLU, with
    ``"gelu"``, ``"hardswish"``, ...).

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
    units = instances(result, lambda m: isinstance(m, AdAct))
    replacement: dict[int, nn.Module] = {}
    for key, (unit, _paths) in units.items():
        assert isinstance(unit, AdAct)
        replacement[key] = _plain_module(unit, reinit)
    return replace(result, units, replacement)


# --- choices that travel ------------------------------------------------------------------


def save_choices(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write each AdAct unit's choice to a JSON file, for :func:`apply_choices`.

    One entry per unit, in module order: its path, its choice and that choice's softmax weight,
    all softmax weights (channel means for ``granularity="channel"``, and the per-channel
    weights), the granularity and channel count, and the PReLU slope. The file also keeps the
    ``targets`` and ``candidates`` that :func:`adactify` was given, so that
    :func:`apply_choices` can rebuild the same sites.

    Args:
        model: a model with AdAct units (e.g. adactified and trained).
        path: the JSON file to write.
    """
    sites: list[dict[str, Any]] = []
    for site, unit in adact_units(model):
        choice, weight = unit.choice()
        mixture = unit.mixture()
        sites.append(
            {
                "path": site,
                "choice": choice,
                "weight": weight,
                "weights": unit.weights_dict(),
                "granularity": unit.granularity,
                "num_channels": unit.num_channels,
                "channel_dim": unit.channel_dim if unit.num_channels is not None else None,
                "channel_weights": mixture.tolist() if mixture.dim() == 2 else None,
                "channel_choices": unit.dominant() if mixture.dim() == 2 else None,
                "prelu_weight": None if unit.prelu_weight is None else unit.prelu_weight.detach().float().tolist(),
                "temperature": float(unit.temperature),  # the weights above are softmax(logits / temperature)
                # Warm start: the activation the unit started as, and how far it moved (the gate g):
                # the weights above are then (1 - g) onehot(original) + g softmax(logits / temperature).
                "original": unit.original,
                "gate": None if unit.gate is None else unit.gate.detach().clamp(0, 1).float().tolist(),
                "candidates": list(unit.candidates),
            }
        )
    config = model.__dict__.get(CONFIG_ATTR)
    data = {"format": CHOICES_FORMAT, "adactify": config, "sites": sites}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _resolve_names(file: ChoicesFile, names: Sequence[str]) -> list[str | type[nn.Module]]:
    out: list[str | type[nn.Module]] = []
    for name in names:
        if ":" not in name:
            out.append(name)
            continue
        module, _, qualname = name.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise file.error(
                f"cannot import the target class {name!r} saved with the choices ({e}); pass targets=... to "
                f"apply_choices"
            ) from e
        out.append(obj)
    return out


def apply_choices(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    targets: Any = None,
    strict: bool = True,
    example_inputs: ExampleInputs | None = None,
) -> nn.Module:
    """Turn an unconverted model into the optimized one, from a :func:`save_choices` file.

    ``model`` must have the architecture of the model the choices were saved from, before
    :func:`adactify` (e.g. a fresh ``torchvision.models.resnet18()``, or ``ConvNet(activation=
    "relu")`` for a ``ConvNet(activation="adact")``). It is adactified with the saved
    ``targets`` and ``candidates`` -- which rebuilds the same sites -- and every site then gets
    the plain module of its saved choice (a PReLU with the saved slope), as :func:`optimize`
    would give. Search once, then build the final model in a separate program.

    All or nothing: the whole file is checked first (format, every site's keys and types, the
    names against the registry, each PReLU slope against the site's channel count), then the
    model's sites against the saved ones; on any fault the model is left exactly as it was.

    Args:
        model: the unconverted model; converted in place (and returned).
        path: a file written by :func:`save_choices`.
        targets: overrides the saved targets (needed when they name classes that cannot be imported).
        strict: refuse a choice that is not among the site's recorded candidates (a hand-edited
            file). Default: ``True``.
        example_inputs: a tensor, or a sequence of positional arguments, for one forward pass
            (as :func:`adactify`'s): each per-channel PReLU slope is then checked against the
            channel count the site really sees. Default: ``None`` (checked against the file only).

    Returns:
        the converted model.

    Raises:
        ValueError: (:class:`adact.surgery.choicefile.ChoicesFileError`) the file is not a whole
            choices file, or the model's sites differ from the saved ones; the message names the
            file, the site and what is wrong.
    """
    file = read_choices(path, strict=strict)
    if targets is None and file.targets:
        targets = _resolve_names(file, file.targets)
    kwargs = {"candidates": list(file.candidates)} if file.candidates else {}
    with undo_on_error(model):
        converted = adactify(model, targets, example_inputs=example_inputs, **kwargs)
        units = adact_units(converted)
        saved = [s.path for s in file.sites]
        have = [p for p, _ in units]
        if saved != have:
            missing = [p for p in saved if p not in have][:5]
            extra = [p for p in have if p not in saved][:5]
            order = "" if missing or extra else "; the same sites in another order"
            raise file.error(
                f"the model's {len(have)} sites do not match the {len(saved)} saved ones (saved but not found: "
                f"{missing}; found but not saved: {extra}{order}); is it the same architecture?"
            )
        if example_inputs is not None:
            _check_channels(file, converted, units, example_inputs)
        found = instances(converted, lambda m: isinstance(m, AdAct))
        new: dict[int, nn.Module] = {}
        for (_, unit), site in zip(units, file.sites):
            slope = None if site.prelu_weight is None else torch.tensor(site.prelu_weight)
            new[id(unit)] = _plain(site.choice, slope, unit.logits.device, unit.training)
        return replace(converted, found, new)


def _check_channels(
    file: ChoicesFile, model: nn.Module, units: list[tuple[str, AdAct]], example_inputs: ExampleInputs
) -> None:
    """Each per-channel PReLU slope against the channels its site sees in one forward pass."""
    calls = probe(model, example_inputs)
    for (path, unit), site in zip(units, file.sites):
        if site.choice != "prelu" or site.prelu_weight is None or len(site.prelu_weight) == 1:
            continue
        seen = calls.get(id(unit), [])
        shape = seen[0].shape if seen else None
        dim = site.channel_dim if site.channel_dim is not None else 1
        if shape is None or len(shape) < 2:
            raise file.error(f"the saved PReLU has {len(site.prelu_weight)} slopes, but example_inputs "
                             f"{'never reach the site' if not seen else 'give it no channel dim'}", path)
        if shape[dim] != len(site.prelu_weight):
            raise file.error(f"the saved PReLU has {len(site.prelu_weight)} slopes, but the site's input has "
                             f"shape {tuple(shape)}: {shape[dim]} channels in dim {dim}", path)
