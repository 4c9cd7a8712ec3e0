"""Model surgery: put AdAct units into any model, read their choices, and fix them.

* :func:`adactify` puts an :class:`adact.AdAct` unit at every activation call site of a model
  (activation modules, including transformers' and timm's classes, and activation function
  calls through ``torch.fx``), in place; :class:`AdactifyReport` says what it did and missed.
* :func:`dominant_activations` reads which activation each unit has chosen (owned by :mod:`adact.choice`,
  re-exported here).
* :func:`optimize` builds the paper's "Optimized" model: a copy with each unit replaced by a
  plain ``torch.nn`` module of its choice.
* :func:`save_choices` / :func:`apply_choices` carry the choices to a fresh model in another program.

Modules: :mod:`~adact.surgery.targets` (what is an activation), :mod:`~adact.surgery.scan`
(shallow fx traces), :mod:`~adact.surgery.modules` (module swapping),
:mod:`~adact.surgery.functional` (function calls), :mod:`~adact.surgery.transformer`,
:mod:`~adact.surgery.probe` and :mod:`~adact.surgery.split` (the example pass),
:mod:`~adact.surgery.verify` (what runs, checked by running), :mod:`~adact.surgery.core`
(``adactify``), :mod:`~adact.surgery.choices`, :mod:`~adact.surgery.choicefile` (reading a
choices file, checked in full).
"""

from adact.choice import adact_units, dominant_activations
from adact.surgery.choicefile import ChoicesFileError
from adact.surgery.choices import ExportableRReLU, apply_choices, optimize, save_choices
from adact.surgery.core import adactify
from adact.surgery.functional import TracedForward
from adact.surgery.report import AdactifyReport, MissedSite, Site
from adact.surgery.targets import DEFAULT_TARGETS, GATE_KINDS, KNOWN_KINDS
from adact.surgery.units import CallSites

__all__ = [
    "DEFAULT_TARGETS",
    "GATE_KINDS",
    "KNOWN_KINDS",
    "AdactifyReport",
    "CallSites",
    "ChoicesFileError",
    "ExportableRReLU",
    "MissedSite",
    "Site",
    "TracedForward",
    "adact_units",
    "adactify",
    "apply_choices",
    "dominant_activations",
    "optimize",
    "save_choices",
]
