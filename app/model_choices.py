"""What the model switcher offers: models opened recently, models added with `edgeds add`, and
registry quants already downloaded.

Recently opened models are kept in `recent-models.json` in the data dir, newest first; files
are kept by their absolute path and left out once they are gone. Nothing here downloads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeds.errors import EdgedsError
from edgeds.paths import data_dir

RECENT_FILE = "recent-models.json"
MAX_RECENT = 10


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the switcher: the spec it loads and a note on where it comes from."""

    spec: str
    note: str


def recent_path() -> Path:
    return data_dir() / RECENT_FILE


def _canonical(spec: str) -> str:
    """A file spec as its absolute path (so it opens from any directory); a registry id as is."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.is_file() else spec


def recent_models(path: Path | None = None) -> list[str]:
    """Specs opened before, newest first; a file that is gone, or an unreadable list, is left out."""
    try:
        specs = json.loads((path or recent_path()).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(specs, list):
        return []
    return [s for s in specs if isinstance(s, str) and (not s.endswith(".gguf") or Path(s).is_file())]


def remember_model(spec: str, path: Path | None = None) -> None:
    """Put `spec` first among the recent models (best effort: a read-only data dir is no error)."""
    path = path or recent_path()
    spec = _canonical(spec)
    specs = [spec, *(s for s in recent_models(path) if s != spec)][:MAX_RECENT]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(specs, indent=1))
    except OSError:
        pass


def _gb(paths: list[Path]) -> str:
    return f"{sum(p.stat().st_size for p in paths) / 1e9:.2f} GB"


def downloaded_models() -> list[ModelChoice]:
    """Models added with `edgeds add`, then registry quants whose every file is in the hub
    cache, as `id:QUANT` with their size on disk."""
    from edgeds.catalog import local
    from edgeds.catalog.hub import cached_parts
    from edgeds.catalog.registry import load_registry

    added = [ModelChoice(model.label, f"added · {_gb(model.parts)}") for model in local.listing()]
    try:
        registry = load_registry()
    except EdgedsError:
        return added
    cached = ((f"{entry.id}:{name}", cached_parts(source)) for entry in registry for name, source in entry.quants.items())
    return added + [ModelChoice(spec, f"downloaded · {_gb(parts)}") for spec, parts in cached
                    if parts and spec not in {c.spec for c in added}]


def model_choices(recent_file: Path | None = None) -> list[ModelChoice]:
    """Recent models first, then the added and downloaded ones not among them."""
    recent = recent_models(recent_file)
    choices = [ModelChoice(spec, f"recent · {Path(spec).parent}" if Path(spec).is_absolute() else "recent")
               for spec in recent]
    return choices + [c for c in downloaded_models() if c.spec not in recent]
