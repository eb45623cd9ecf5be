"""`edgeds eval MODEL --ref REF.gguf --text FILE`: perplexity and KL divergence against a reference."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeds.cli._app import app


@app.command("eval")
def eval_command(
    model: str = typer.Argument(..., help="The GGUF to evaluate (e.g. a quantized file), or a downloaded or added model name."),
    ref: str = typer.Option(..., "--ref", help="The reference GGUF (e.g. the F16 conversion), or a model name."),
    text: Path = typer.Option(..., "--text", help="A UTF-8 text file to score."),
    n_ctx: int = typer.Option(256, "--n-ctx", help="Tokens per chunk; the second half of each is scored."),
    chunks: Optional[int] = typer.Option(None, "--chunks", help="Score at most this many chunks."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads."),
) -> None:
    """Perplexity of MODEL and the KL divergence of its token distributions from REF's."""
    from edgeds.catalog.resolve import resolve_model
    from edgeds.errors import UsageError
    from edgeds.measure.evaluate import evaluate

    try:
        body = text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{text}: cannot read it as UTF-8 text ({err})") from None
    result = evaluate(resolve_model(model, pull=False).path, resolve_model(ref, pull=False).path, body,
                      n_ctx=n_ctx, max_chunks=chunks, n_threads=threads)
    for line in result.lines():
        typer.echo(line)
