"""How the CLI prints sizes and tables."""

from __future__ import annotations

from typing import Sequence

import typer


def gb(n: int) -> str:
    """Decimal gigabytes (file and download sizes, as the hub shows them)."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def gib(n: int) -> str:
    """Binary gibibytes (memory, as llama.cpp and the OS report it)."""
    return f"{n / (1 << 30):.1f} GiB"


def echo_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "") -> None:
    """Left-aligned columns, as wide as their widest cell."""
    table = [tuple(header)] + [tuple(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        typer.echo(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
