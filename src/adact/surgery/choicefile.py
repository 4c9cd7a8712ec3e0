"""Reading a :func:`adact.save_choices` file, checked in full before any model is touched.

:func:`read_choices` parses and validates the whole file -- its format, every site's keys and
types, the activation names against the registry, each PReLU slope against the site's channel
count, a choice against the site's recorded candidates -- and returns it as plain values, so that
:func:`adact.apply_choices` converts a model only from a file known to be whole.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from adact.activations import ACTIVATIONS
from adact.errors import UserError

__all__ = ["CHOICES_FORMAT", "ChoicesFile", "ChoicesFileError", "SavedSite", "read_choices"]

#: The ``"format"`` field of a :func:`adact.save_choices` file.
CHOICES_FORMAT = "adact.choices/1"


class ChoicesFileError(UserError):
    """A choices file that cannot be applied: damaged, edited wrongly, or of another model.

    The message names the file, the site (where one is at fault) and what is wrong.
    """


@dataclass(frozen=True)
class SavedSite:
    """One site of a choices file, as :func:`adact.apply_choices` needs it."""

    path: str
    choice: str
    prelu_weight: tuple[float, ...] | None
    num_channels: int | None
    channel_dim: int | None
    candidates: tuple[str, ...] | None


@dataclass(frozen=True)
class ChoicesFile:
    """A validated choices file: ``adactify``'s saved ``targets`` and ``candidates``, and the sites."""

    name: str
    targets: tuple[str, ...] | None
    candidates: tuple[str, ...] | None
    sites: tuple[SavedSite, ...]

    def error(self, what: str, site: str | None = None) -> ChoicesFileError:
        """The one error for this file: ``apply_choices: FILE: site 'PATH': WHAT``."""
        where = f"site {site!r}: " if site is not None else ""
        return ChoicesFileError(f"apply_choices: {self.name}: {where}{what}")


def read_choices(path: str | os.PathLike[str], *, strict: bool = True) -> ChoicesFile:
    """Read and check a :func:`adact.save_choices` file; raises :class:`ChoicesFileError` on any fault.

    Args:
        path: the file.
        strict: refuse a site whose choice is not among its recorded candidates (a hand-edited
            choice the search never weighed). Default: ``True``.

    Returns:
        the file's content, every field checked.

    Raises:
        ChoicesFileError: the file is not JSON, not a choices file, or any field is missing,
            of the wrong type or inconsistent; the message names the file and the site.
        OSError: the file cannot be read.
    """
    name = repr(os.fsdecode(path))
    blank = ChoicesFile(name, None, None, ())
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise blank.error(f"not a JSON file ({e})") from None
    if not isinstance(data, dict) or data.get("format") != CHOICES_FORMAT:
        raise blank.error(f"not an adact choices file (format {CHOICES_FORMAT!r}, written by adact.save_choices)")
    config = data.get("adactify")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise blank.error(f"'adactify' must be an object or null, got {_kind(config)}")
    targets = _names(blank, config.get("targets"), "'adactify.targets'", registry=False)
    candidates = _names(blank, config.get("candidates"), "'adactify.candidates'", registry=True)
    raw_sites = data.get("sites")
    if not isinstance(raw_sites, list):
        raise blank.error(f"'sites' must be a list of sites, got {_kind(raw_sites)}")
    sites: list[SavedSite] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw_sites):
        site = _site(blank, entry, i, strict)
        if site.path in seen:
            raise blank.error("saved twice", site.path)
        seen.add(site.path)
        sites.append(site)
    return ChoicesFile(name, targets, candidates, tuple(sites))


def _site(file: ChoicesFile, entry: Any, index: int, strict: bool) -> SavedSite:
    if not isinstance(entry, dict):
        raise file.error(f"site number {index} must be an object with 'path' and 'choice', got {_kind(entry)}")
    path = entry.get("path")
    if not isinstance(path, str):
        raise file.error(f"site number {index} has no 'path' string (got {_kind(path)})")
    choice = entry.get("choice")
    if not isinstance(choice, str):
        raise file.error(f"'choice' must be an activation name, got {_kind(choice)}", path)
    if choice not in ACTIVATIONS:
        raise file.error(f"unknown activation {choice!r} as 'choice'; valid names: {', '.join(ACTIVATIONS)}", path)
    candidates = _names(file, entry.get("candidates"), "'candidates'", registry=True, site=path)
    if strict and candidates is not None and choice not in candidates:
        raise file.error(
            f"the choice {choice!r} is not one of the candidates the search weighed ({', '.join(candidates)}); "
            f"pass strict=False to apply it anyway", path)
    num_channels = entry.get("num_channels")
    if num_channels is not None and (not isinstance(num_channels, int) or isinstance(num_channels, bool)
                                     or num_channels < 1):
        raise file.error(f"'num_channels' must be a positive integer or null, got {num_channels!r}", path)
    channel_dim = entry.get("channel_dim")
    if channel_dim not in (None, 1, -1) or isinstance(channel_dim, bool):
        raise file.error(f"'channel_dim' must be 1, -1 or null, got {channel_dim!r}", path)
    slope = entry.get("prelu_weight")
    if slope is not None:
        if not isinstance(slope, list) or not slope or not all(_is_number(v) for v in slope):
            raise file.error(f"'prelu_weight' must be a non-empty list of finite numbers or null, got {slope!r:.80}",
                             path)
        want = num_channels or 1
        if len(slope) != want:
            per = f"its {num_channels} channels" if num_channels else "a layer-wide unit (num_channels null)"
            raise file.error(f"'prelu_weight' has {len(slope)} values; {per} need {want}", path)
        slope = tuple(float(v) for v in slope)
    return SavedSite(path, choice, slope, num_channels, channel_dim, candidates)


def _names(file: ChoicesFile, value: Any, field: str, *, registry: bool, site: str | None = None
           ) -> tuple[str, ...] | None:
    """A list of names (activation names when ``registry``), or ``None`` for a missing/null field."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise file.error(f"{field} must be a list of names, got {_kind(value)}", site)
    unknown = [v for v in value if v not in ACTIVATIONS] if registry else []
    if unknown:
        raise file.error(f"{field} has unknown activations {unknown}; valid names: {', '.join(ACTIVATIONS)}", site)
    return tuple(value)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"

