"""Where the converter and quantizer may write, and how they clean up.

Every output is checked before anything is read or written: its folder exists, it is not a folder
itself, and it is none of the inputs (`quantize IN IN`, `convert SRC -o SRC/model.safetensors`).
Temporary files end in `.partial` (never in `.gguf`, so none looks like a finished file) and are
removed on any failure by `discard`, which never raises: a cleanup error must not hide the error
that caused the cleanup (e.g. ENAMETOOLONG, which both hit).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from edgeds.errors import EdgedsError

PARTIAL = ".partial"


def partial(path: Path) -> Path:
    """The temporary name `path` is written under until it is complete."""
    return path.with_name(path.name + PARTIAL)


def check_output(out: Path, inputs: Iterable[Path] = (), error: type[EdgedsError] = EdgedsError) -> None:
    """Refuse an output that cannot or must not be written: a missing folder, an existing folder,
    or one of `inputs` (compared after following links)."""
    try:
        if not out.parent.is_dir():
            raise error(f"{out}: the folder {out.parent} does not exist")
        if out.is_dir():
            raise error(f"{out}: is a folder; give the path of the file to write")
    except OSError as err:  # e.g. a name too long for the file system
        raise error(f"{out}: cannot write there ({err.strerror})") from None
    target = out.resolve()
    for source in inputs:
        if source.exists() and source.resolve() == target:
            raise error(f"{out}: is an input of this run ({source}); write the output somewhere else")


def discard(*paths: Path) -> None:
    """Remove temporary files, ignoring any error."""
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass
