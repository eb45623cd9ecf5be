"""`edgeds imatrix MODEL.gguf [--text FILE] -o imatrix.gguf`: an importance matrix through llama.cpp."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.interrupt import interruptible
from edgeds.cli.options import MoeOffload, Threads


@app.command("imatrix")
def imatrix(
    model: Path = typer.Argument(..., help="The GGUF to measure (F16/BF16/F32 for the most faithful matrix)."),
    text: Optional[Path] = typer.Option(None, "--text", help="A UTF-8 calibration text (default: the multilingual "
                                        "prose, code, math and reasoning text that ships with edgeds)."),
    out: Path = typer.Option(Path("imatrix.gguf"), "--output", "-o", help="The GGUF imatrix to write."),
    chunks: Optional[int] = typer.Option(None, "--chunks", min=1, help="Use at most this many chunks of the text."),
    chunk_size: int = typer.Option(512, "--chunk-size", help="Tokens per chunk (each decoded in a fresh context)."),
    threads: Optional[int] = Threads,
    moe_offload: str = MoeOffload,
) -> None:
    """Measure which input columns of every weight matrix matter most (llama-imatrix's importance
    matrix), for `edgeds quantize --imatrix` and llama-quantize's IQ1/IQ2/IQ3 types."""
    from tqdm import tqdm

    from edgeds.errors import UsageError
    from edgeds.measure.imatrix import CALIBRATION, calibration_text, check_output, compute_imatrix

    if text is None:
        body, dataset = calibration_text(), f"edgeds/{CALIBRATION}"
    else:
        try:
            body, dataset = text.read_text(encoding="utf-8"), str(text)
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"{text}: cannot read it as UTF-8 text ({err})") from None
    check_output(out, model)
    bar = tqdm(unit="chunk", desc="imatrix", file=sys.stderr, dynamic_ncols=True, disable=None)

    def on_chunk(chunk) -> None:
        bar.total = chunk.total
        bar.set_postfix_str(f"ppl {chunk.perplexity:.3f}", refresh=False)
        bar.update(1)

    with interruptible("imatrix"):
        try:
            result, ppl = compute_imatrix(model, body, dataset=dataset, chunk_size=chunk_size, max_chunks=chunks,
                                          n_threads=threads, moe_offload=moe_offload, on_chunk=on_chunk,
                                          on_placement=lambda line: bar.write(line, file=sys.stderr))
        finally:
            bar.close()
        result.write(out)
    unseen = result.unseen()
    if unseen:
        typer.echo(f"note: {len(unseen)} expert tensors have experts no chunk was routed to (llama.cpp gives "
                   "those experts a flat importance); a longer --text covers more", err=True)
    typer.echo(f"{out}: {len(result.entries)} weights, {result.chunk_count} chunks of {result.chunk_size} tokens, "
               f"perplexity {ppl:.4f}")
