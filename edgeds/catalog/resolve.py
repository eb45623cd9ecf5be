"""Model resolution: from what a user typed (a path or `id[:QUANT]`) to a local GGUF file.

Every command resolves its model here: an existing path is used as is; a registry id is looked
up in the hub cache (all parts of a split GGUF must be there) and, if missing, pulled when the
caller allows it (or, with pull="ask", when the user says yes on a terminal).
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgeds.errors import ModelNotFound
from edgeds.catalog.registry import Registry, RegistryEntry, load_registry, split_spec


@dataclass(frozen=True)
class ResolvedModel:
    path: Path                   # the GGUF to load (the first part of a split GGUF)
    entry: RegistryEntry | None  # None for a plain file
    quant: str | None


def _human(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _ask(question: str) -> bool:
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    sys.stderr.write(question + " [Y/n] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("", "y", "yes")


def resolve_model(
    spec: str | Path,
    *,
    pull: bool | Literal["ask"] = "ask",
    registry: Registry | None = None,
    progress: bool = True,
) -> ResolvedModel:
    """Resolve `spec` to a local GGUF.

    Raises:
        ModelNotFound: neither a file nor a registry id (close ids are suggested), or a registry
            model that is not downloaded and may not be pulled (names `edgeds pull ID:QUANT`).
        HubError: the pull failed.
    """
    from edgeds.catalog import hub

    path = Path(spec).expanduser()
    if path.is_file():
        return ResolvedModel(path, None, None)
    registry = registry or load_registry()
    model_id, quant = split_spec(str(spec))
    entry = registry.get(model_id)
    if entry is None:
        if path.suffix == ".gguf" or "/" in str(spec):
            raise ModelNotFound(f"{spec}: no such file")
        close = difflib.get_close_matches(model_id, [e.id for e in registry], n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `edgeds list` shows the registry"
        raise ModelNotFound(f"{spec}: not a file and not a registry model{hint}")
    source = entry.quant(quant)
    parts = hub.cached_parts(source)
    if parts is None:
        label = f"{entry.id}:{source.quant}"
        wanted = pull is True or (pull == "ask" and _ask(
            f"{label} is not downloaded. Download {_human(source.size)} from {source.repo}?"))
        if not wanted:
            raise ModelNotFound(f"{label} is not downloaded: run `edgeds pull {label}`")
        parts = hub.pull(source, progress=progress)
    return ResolvedModel(parts[0], entry, source.quant)
