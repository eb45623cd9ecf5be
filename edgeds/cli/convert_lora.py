"""`edgeds convert-lora ADAPTER -o adapter.gguf`: a PEFT LoRA adapter → llama.cpp's GGUF adapter (edgeds.convert.lora)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.interrupt import interruptible

LORA_OUTTYPES = ("f32", "f16", "bf16")  # edgeds.convert.lora.LORA_OUTTYPES, without importing numpy for --help


@app.command("convert-lora")
def convert_lora(
    adapter: str = typer.Argument(..., help="A PEFT LoRA adapter: a folder with adapter_config.json and "
                                  "adapter_model.safetensors, or a hub repo id (owner/name)."),
    output: Path = typer.Option(..., "--output", "-o", help="The GGUF adapter file to write."),
    base: Optional[str] = typer.Option(None, "--base", help="The base model: a Hugging Face folder or repo id, or "
                                       "its GGUF (default: the adapter config's base_model_name_or_path)."),
    outtype: str = typer.Option("f16", "--outtype", help=f"Tensor type: {', '.join(LORA_OUTTYPES)}."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision of the adapter repo."),
) -> None:
    """Convert a PEFT LoRA adapter to a GGUF adapter for `--lora` (run, chat, batch, serve)."""
    from edgeds.convert.lora import convert_lora as run_convert_lora
    from edgeds.errors import UsageError

    if outtype not in LORA_OUTTYPES:
        raise UsageError(f"--outtype {outtype!r}: choose one of {', '.join(LORA_OUTTYPES)}")
    with interruptible("convert-lora"):
        path = run_convert_lora(adapter, output, base=base, outtype=outtype, revision=revision)
    typer.echo(str(path))
