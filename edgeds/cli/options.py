"""Shared Typer option definitions for the commands that load a model (run, chat, batch, serve)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeds.errors import UsageError

MOE_OFFLOAD_HELP = (
    "Where the routed experts of a MoE model go: auto (fill the GPU, the rest of the experts in CPU RAM), "
    "all (every layer's experts in CPU RAM), none (plain layer offload), or N (experts of the first N layers "
    "in CPU RAM, like llama.cpp's --n-cpu-moe)."
)


# `--moe-offload auto|all|none|N`, for run, chat, batch and serve; the value goes to edgeds.loader.open_engine.
MoeOffload = typer.Option("auto", "--moe-offload", help=MOE_OFFLOAD_HELP, metavar="auto|all|none|N")


def read_grammar(path: Path | None) -> str | None:
    """The text of a `--grammar FILE` (GBNF), or a usage error naming the file."""
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"{path}: cannot read the grammar ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: the grammar is not UTF-8 text (byte {err.start})") from None
