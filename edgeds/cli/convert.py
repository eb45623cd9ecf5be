"""`edgeds convert SRC -o OUT.gguf`: Hugging Face checkpoint → GGUF (the converter lives in edgeds.convert)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.interrupt import interruptible
from edgeds.convert import OUTTYPES  # the package's __init__ is light: no numpy, no converter modules


@app.command("convert")
def convert(
    src: str = typer.Argument(..., help="A local Hugging Face checkpoint folder, or a hub repo id (owner/name)."),
    output: Path = typer.Option(..., "--output", "-o", help="The GGUF file to write."),
    outtype: str = typer.Option("f16", "--outtype", help=f"Tensor type: {', '.join(OUTTYPES)} (norms stay f32)."),
    verify: bool = typer.Option(False, "--verify", help="Load the result in llama.cpp and compare tokenizer ids "
                                "(and logits, when torch and transformers are installed) with the source."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit) for a repo id."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    quant: Optional[str] = typer.Option(None, "--quant", help="Then quantize with llama.cpp: a recipe (moe-q2, moe-q3, "
                                        "moe-q4, ...) or type (Q4_K_M, ...); see `edgeds quantize --list`."),
    merge_lora: Optional[str] = typer.Option(None, "--merge-lora", metavar="ADAPTER", help="Bake a PEFT LoRA adapter "
                                             "(folder or hub repo id) into the weights: W + alpha/r·B·A, in float "
                                             "before --outtype or --quant round it."),
    split_experts: bool = typer.Option(False, "--split-experts", help="With --quant on a MoE model: write llama.cpp split "
                                       "files, the first with every non-expert tensor, the second with the routed experts."),
) -> None:
    """Convert a Hugging Face checkpoint (safetensors: BF16, F16, F32 or FP8) to a GGUF file."""
    from edgeds.convert import convert as run_convert, convert_and_quantize
    from edgeds.errors import UsageError

    if outtype not in OUTTYPES:
        raise UsageError(f"--outtype {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    if quant is None:
        if split_experts:
            raise UsageError("--split-experts applies to quantized output: add --quant TYPE|RECIPE")
        with interruptible("convert"):
            path = run_convert(src, output, outtype, verify=verify, progress=progress, revision=revision,
                               merge_lora=merge_lora)
        typer.echo(str(path))
        return
    with interruptible("convert"):
        paths = convert_and_quantize(src, output, quant, split_experts=split_experts, verify=verify,
                                     progress=progress, revision=revision, merge_lora=merge_lora)
    for path in paths:
        typer.echo(str(path))
