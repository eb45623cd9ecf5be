"""From what a user typed (a path or a registry id) to a loaded Engine.

Every front end (run, chat, batch, serve) opens its model here, so model resolution,
registry defaults and the placement plan are decided in one place.
"""

from __future__ import annotations

from pathlib import Path

from edgeds.errors import ModelNotFound
from edgeds.runtime import Engine


def open_engine(
    spec: str | Path,
    *,
    n_ctx: int | None = None,
    n_threads: int | None = None,
) -> Engine:
    """Load the model `spec` names.

    Raises:
        ModelNotFound: `spec` is not a file.
        ModelLoadError: llama.cpp could not load it.
    """
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelNotFound(f"{spec}: no such model file")
    return Engine(path, n_ctx=n_ctx, n_threads=n_threads)
