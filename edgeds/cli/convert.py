"""`edgeds convert SRC -o OUT.gguf`: Hugging Face checkpoint → GGUF (the converter lives in edgeds.convert)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeds.cli._app import app

OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # mirrors edgeds.convert.OUTTYPES without importing the converter


@app.command("convert")
def convert(
    src: str = typer.Argument(..., help="A local Hugging Face checkpoint folder, or a hub repo id (owner/name)."),
    output: Path = typer.Option(..., "--output", "-o", help="The GGUF file to write."),
    outtype: str = typer.Option("f16", "--outtype", help=f"Tensor type: {', '.join(OUTTYPES)} (norms stay f32)."),
    verify: bool = typer.Option(False, "--verify", help="Load the result in llama.cpp and compare tokenizer ids "
                                "(and logits, when torch and transformers are installed) with the source."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit) for a repo id."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    # a --quant option (llama.cpp quantization after conversion) goes here; it is applied to the result below
) -> None:
    """Convert a Hugging Face checkpoint (safetensors: BF16, F16, F32 or FP8) to a GGUF file."""
    from edgeds.convert import convert as run_convert
    from edgeds.errors import UsageError

    if outtype not in OUTTYPES:
        raise UsageError(f"--outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    path = run_convert(src, output, outtype, verify=verify, progress=progress, revision=revision)
    typer.echo(str(path))
