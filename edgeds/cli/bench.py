"""`edgeds bench MODEL`: pp/tg tokens per second, llama.cpp's raw loop next to the Engine."""

from __future__ import annotations

from typing import Optional

import typer

from edgeds.cli._app import app


@app.command("bench")
def bench(
    model: str = typer.Argument(..., help="A GGUF file or a downloaded registry id[:QUANT]."),
    n_prompt: int = typer.Option(512, "--n-prompt", "-p", min=1, help="Prompt tokens (pp test)."),
    n_gen: int = typer.Option(128, "--n-gen", "-n", min=1, help="Generated tokens (tg test)."),
    reps: int = typer.Option(5, "--repetitions", "-r", min=1, help="Repetitions of each test."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", min=1, help="Threads (default: physical cores)."),
    raw_only: bool = typer.Option(False, "--raw-only", help="Only llama.cpp's raw loop, not the Engine."),
) -> None:
    """Benchmark like llama-bench: llama.cpp's raw decode loop and the edgeds Engine, same run."""
    from edgeds.loader import fetch_model
    from edgeds.measure.bench import format_table, run_bench

    resolved = fetch_model(model, pull="ask")
    result = run_bench(resolved.path, n_prompt=n_prompt, n_gen=n_gen, reps=reps, threads=threads,
                       engine=not raw_only)
    typer.echo(format_table(result))
