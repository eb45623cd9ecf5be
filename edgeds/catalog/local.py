"""Models added by hand: `edgeds add FILE.gguf --as ID[:QUANT]` (what `ollama create` does).

The file is hard-linked into the edgeds data dir as `models/ID/QUANT/FILE.gguf`: no copy and no
extra space, and the link stays valid when the original is moved or deleted. Where a hard link
cannot be made (the file is on another filesystem) a symbolic link is made instead, and then the
original must stay where it is. Every part of a split GGUF goes along. Model resolution looks
here first, so an added `r1-distill-qwen-7b:Q4_K_M` is used instead of a download, with the
registry's defaults for that id; an id the registry does not know names the file wherever a path
would. `edgeds rm ID[:QUANT]` removes the links (never the original file).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgeds.errors import EdgedsError, UsageError
from edgeds.paths import data_dir

DEFAULT_QUANT = "default"  # the QUANT folder of an id the registry does not know, added without one
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_QUANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class LocalModel:
    """An added model: its name and the link to its (first) GGUF file."""

    id: str
    quant: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.id}:{self.quant}"

    @property
    def parts(self) -> list[Path]:
        return sorted(self.path.parent.glob("*.gguf"))


def models_dir() -> Path:
    return data_dir() / "models"


def find(model_id: str, quant: str | None, default_quant: str | None = None) -> LocalModel | None:
    """The added model `model_id:quant` (quant names compare case-insensitively). Without a
    quant: the registry's default quant, else the one quant added for that id. A name that could
    not have been added (`..`, a path) is never one: `rm` deletes what this finds."""
    if not _ID.match(model_id) or (quant is not None and not _QUANT.match(quant)):
        return None
    folder = models_dir() / model_id
    if not folder.is_dir():
        return None
    quants = {q.name.upper(): q for q in folder.iterdir() if q.is_dir() and any(q.glob("*.gguf"))}
    wanted = quant or default_quant
    if wanted is None and len(quants) == 1:
        wanted = next(iter(quants))
    found = quants.get((wanted or DEFAULT_QUANT).upper())
    if found is None:
        return None
    return LocalModel(model_id, found.name, sorted(found.glob("*.gguf"))[0])


def listing() -> list[LocalModel]:
    """Every added model, by name."""
    root = models_dir()
    if not root.is_dir():
        return []
    found = (find(folder.name, quant.name) for folder in sorted(root.iterdir()) if folder.is_dir()
             for quant in sorted(folder.iterdir()) if quant.is_dir())
    return [m for m in found if m is not None]


def add(parts: list[Path], model_id: str, quant: str) -> tuple[LocalModel, str]:
    """Link the GGUF `parts` (all parts of a split file, first part first) as `model_id:quant`.

    Returns the added model and how it was linked ("hard link" or "symlink").

    Raises:
        UsageError: a bad name. EdgedsError: the name is taken, or the file cannot be linked.
    """
    if not _ID.match(model_id):
        raise UsageError(f"--as {model_id!r}: ids are lowercase letters, digits, '.', '_' and '-'")
    if not _QUANT.match(quant):
        raise UsageError(f"--as {model_id}:{quant}: a quant name is letters, digits, '.', '_' and '-'")
    taken = find(model_id, quant)
    if taken is not None:
        raise EdgedsError(f"{taken.label} is already added ({taken.path}): `edgeds rm {taken.label}` first")
    folder = models_dir() / model_id / quant
    folder.mkdir(parents=True, exist_ok=True)
    how = "hard link"
    try:
        for part in parts:
            target = folder / part.name
            try:
                os.link(part, target)
            except OSError:
                os.symlink(part.resolve(), target)
                how = "symlink"
    except OSError as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise EdgedsError(f"{parts[0]}: cannot link it into {folder} ({err.strerror})") from None
    return LocalModel(model_id, quant, folder / parts[0].name), how


def remove(model: LocalModel) -> None:
    """Delete an added model's links (the original file stays)."""
    shutil.rmtree(model.path.parent)
    try:
        model.path.parent.parent.rmdir()  # the id's folder, once its last quant is gone
    except OSError:
        pass
