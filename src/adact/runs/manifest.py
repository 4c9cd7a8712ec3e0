"""The settings file of a search or reproduce output folder (``search.json`` / ``reproduce.json``).

Written at the start of every invocation, read back by ``adact analyze`` and every report, so
the folder describes itself.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from adact.config import PRESETS, SearchConfig
from adact.errors import UserError
from adact.runs.io import atomic_write_json, read_json
from adact.runs.migrate import OLD_MANIFEST_FORMAT, paper_config_from_flat

__all__ = ["MANIFEST_FORMAT", "is_search_dir", "load_manifest", "write_manifest"]

MANIFEST_FORMAT = "adact-search-1"


def write_manifest(cfg: SearchConfig) -> None:
    """Write ``cfg`` into its output folder as the preset's manifest file."""
    atomic_write_json(Path(cfg.out) / cfg.spec.manifest, {"format": MANIFEST_FORMAT, "config": cfg.to_json()})


def is_search_dir(path: str | Path) -> bool:
    """Whether ``path`` is an output folder of ``adact search`` or ``adact reproduce``."""
    return any((Path(path) / p.manifest).is_file() for p in PRESETS.values())


def load_manifest(out: Path) -> SearchConfig:
    """The settings of an output folder, from its ``search.json`` or ``reproduce.json``."""
    path = next((out / p.manifest for p in PRESETS.values() if (out / p.manifest).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{out} is not an `adact reproduce` output folder, nor an `adact search` one (no "
                                f"{' or '.join(p.manifest for p in PRESETS.values())})")
    m = read_json(path)
    if not isinstance(m, dict) or m.get("format") not in (MANIFEST_FORMAT, OLD_MANIFEST_FORMAT):
        found = m.get("format") if isinstance(m, dict) else None
        raise UserError(f"{path} has an unknown format {found!r}; expected {MANIFEST_FORMAT!r}")
    if not isinstance(m.get("config"), dict):
        raise UserError(f"{path} lacks its settings ('config'); rerun the command to rewrite it")
    try:
        if m["format"] == OLD_MANIFEST_FORMAT:
            cfg = paper_config_from_flat(m["config"])
        else:
            known = {f.name for f in fields(SearchConfig)}
            cfg = SearchConfig(**{k: v for k, v in m["config"].items() if k in known})
    except TypeError as e:
        raise UserError(f"{path} holds settings adact cannot read ({e})") from None
    cfg.out = str(out)  # the folder may have moved since it was written
    return cfg
