"""`edgeds quantize IN.gguf OUT.gguf TYPE|RECIPE`: llama.cpp quantization with edgeds recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.interrupt import interruptible


@app.command("quantize")
def quantize(
    src: Optional[Path] = typer.Argument(None, help="The GGUF to quantize (F16/BF16/F32, or --allow-requantize); with "
                                         "--dry-run also a registry id, planned on its tensor table without downloading it."),
    out: Optional[Path] = typer.Argument(None, help="The GGUF to write."),
    quant: Optional[str] = typer.Argument(None, help="A recipe (moe-q2, moe-q3, moe-q4, ...) or llama.cpp type (Q4_K_M, Q8_0, ...)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print each tensor's type and the resulting size; write nothing."),
    imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="An importance matrix (needed by IQ1/IQ2/IQ3_XXS types): a GGUF from "
                                         "edgeds imatrix or llama-imatrix, a legacy .dat, or REPO:FILE on the hub."),
    layout: str = typer.Option("auto", "--layout", help="auto (expert-offload layout for MoE files), plain (llama.cpp's order)."),
    split_experts: bool = typer.Option(False, "--split-experts", help="MoE: write NAME-00001-of-00002.gguf (hot tensors) "
                                       "and NAME-00002-of-00002.gguf (routed experts)."),
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="Quantize a file that is already quantized "
                                          "(llama.cpp refuses by default: the result carries the rounding of both)."),
    list_recipes: bool = typer.Option(False, "--list", help="List the recipes and llama.cpp types (no IN.gguf needed)."),
) -> None:
    """Quantize a GGUF with llama.cpp's quantizer, following a recipe or a llama.cpp type."""
    from edgeds.convert import quantize as q
    from edgeds.convert.recipes import FTYPES, RECIPES
    from edgeds.errors import UsageError

    if list_recipes:
        for name, r in RECIPES.items():
            typer.echo(f"{name:10s} {r.description}")
        typer.echo("llama.cpp types: " + " ".join(FTYPES))
        return
    if dry_run and quant is None and out is not None:
        quant, out = str(out), None
    if src is None or quant is None or (out is None and not dry_run):
        raise UsageError("usage: edgeds quantize IN.gguf OUT.gguf TYPE|RECIPE (or IN.gguf TYPE --dry-run)")
    if layout not in ("auto", "plain"):
        raise UsageError(f"--layout {layout!r}: use auto or plain")
    if dry_run:
        with interruptible("quantize --dry-run"):
            if src.is_file():
                plan = q.plan_quantization(src, quant, allow_requantize=allow_requantize)
            else:  # a registry id: planned on its header-only tensor table, nothing downloaded
                from edgeds.convert.synthetic import plan_registry_quantization

                plan = plan_registry_quantization(str(src), quant)
        for t in plan.tensors:
            shape = "x".join(str(d) for d in t.shape)
            typer.echo(f"{t.name:40s} {shape:>20s} {t.old_type:>6s} -> {t.new_type:<7s} {t.new_bytes / 2**20:10.2f} MiB")
        typer.echo(f"total: {plan.total_bytes / 2**30:.3f} GiB ({plan.total_bytes} bytes of tensors) with {plan.recipe.name}")
        return
    with interruptible("quantize"):
        path = q.quantize_file(src, out, quant, imatrix=imatrix, layout=layout, split_experts=split_experts,
                               allow_requantize=allow_requantize)
    for p in path:
        typer.echo(str(p))
