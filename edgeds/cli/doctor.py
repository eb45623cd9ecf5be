"""`edgeds doctor` (this machine and what of the registry fits it) and `edgeds fit MODEL`."""

from __future__ import annotations

from typing import Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.table import echo_table, gib


def _ctx(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 else str(n)


def _budget(hw, ram: float | None, vram: float | None) -> tuple[int, int]:
    """Free RAM and VRAM in bytes: what --ram/--vram pretend, else what this machine has."""
    return (int(ram * (1 << 30)) if ram is not None else hw.ram_available,
            int(vram * (1 << 30)) if vram is not None else hw.vram_free)


@app.command("doctor")
def doctor(
    ram: Optional[float] = typer.Option(None, "--ram", help="Pretend this much free RAM (GiB)."),
    vram: Optional[float] = typer.Option(None, "--vram", help="Pretend this much free VRAM (GiB)."),
) -> None:
    """This machine (CPU, RAM, llama.cpp backends, GPUs) and, per registry quant, how it fits."""
    from edgeds.machine import fit
    from edgeds.machine.hardware import detect

    hw = detect()
    typer.echo(f"CPU        {hw.cpu}: {hw.physical_cores} physical cores, {hw.logical_cores} threads")
    typer.echo(f"RAM        {gib(hw.ram_total)} total, {gib(hw.ram_available)} available")
    typer.echo(f"llama.cpp  GPU offload {'supported' if hw.gpu_offload else 'not built in (CPU build)'}")
    for d in hw.devices:
        mem = f", {gib(d.free_bytes)} free of {gib(d.total_bytes)}" if d.total_bytes else ""
        typer.echo(f"  device   {d.name} ({d.kind}): {d.description}{mem}")
    for h in hw.gpu_hints:
        typer.echo(f"  {h.source}: {h.name}, {gib(h.free_bytes)} free of {gib(h.total_bytes)}"
                   + ("" if hw.gpu_offload else " (this llama.cpp build cannot use it)"))
    ram_b, vram_b = _budget(hw, ram, vram)
    typer.echo(f"\nFit with {gib(ram_b)} RAM and {gib(vram_b)} VRAM free (f16 KV cache; max context shown):")
    rows = []
    for model, result in fit.registry_verdicts(ram=ram_b, vram=vram_b):
        needs = gib(result.estimate.total) + ("" if result.mode != fit.NO else " at 1k")
        if result.mode in (fit.EXPERTS_OFFLOADED, fit.PARTIAL):
            needs += f" ({gib(result.gpu_bytes)} GPU)"
        rows.append((model.label, f"{model.weights / 1e9:.1f} GB", result.mode,
                     _ctx(result.max_ctx) if result.max_ctx else "-", needs))
    echo_table(("MODEL", "SIZE", "FITS", "MAX CTX", "NEEDS AT MAX CTX"), rows)


@app.command("fit")
def fit_cmd(
    model: str = typer.Argument(..., help="A registry id[:QUANT] (no download needed) or a GGUF file."),
    ctx: Optional[int] = typer.Option(None, "--n-ctx", "--ctx", min=256, help="Context length (default: the model's)."),
    ram: Optional[float] = typer.Option(None, "--ram", help="Pretend this much free RAM (GiB)."),
    vram: Optional[float] = typer.Option(None, "--vram", help="Pretend this much free VRAM (GiB)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Size a registry model as `edgeds quantize` "
                                         "would write it with this recipe or type (moe-iq1, Q4_K_M, ...)."),
) -> None:
    """Memory a model needs at a context length, whether and how it fits, its placement plan and
    its predicted decode speed."""
    from edgeds.machine import fit
    from edgeds.machine.hardware import detect

    footprint = _footprint(model, recipe)
    n_ctx = ctx or footprint.context_limit
    e = footprint.estimate(n_ctx)
    typer.echo(f"{footprint.label} at context {n_ctx}:")
    typer.echo(f"  weights   {gib(e.weights)}" + (f" (routed experts {gib(e.expert_weights)})" if e.expert_weights else ""))
    typer.echo(f"  KV cache  {gib(e.kv_cache)} ({footprint.geometry.kv_bytes_per_token() / 1024:.1f} KiB/token, f16)")
    typer.echo(f"  compute   {gib(e.compute + e.output)}")
    typer.echo(f"  overhead  {gib(e.overhead)}")
    typer.echo(f"  total     {gib(e.total)}")
    ram_b, vram_b = _budget(detect(), ram, vram)
    result = fit.verdict(footprint, ram=ram_b, vram=vram_b, n_ctx=n_ctx)
    if result.mode == fit.NO:
        typer.echo(f"does not fit in {gib(ram_b)} RAM + {gib(vram_b)} VRAM free, even at 1k context")
        raise typer.Exit(1)
    typer.echo(f"fits: {result.mode}, up to {_ctx(result.max_ctx)} context here "
               f"({gib(ram_b)} RAM, {gib(vram_b)} VRAM free)")
    if footprint.table is not None:
        typer.echo(f"plan: {footprint.placement(vram=vram_b, n_ctx=min(n_ctx, result.max_ctx)).explanation}")


def _footprint(model: str, recipe: str | None):
    """The model as `edgeds fit` sizes it: as it is, or (a registry model) under a recipe."""
    from edgeds.machine import fit

    if recipe is None:
        return fit.footprint(model)
    from edgeds.catalog.resolve import find
    from edgeds.convert.recipes import get_recipe

    chosen = get_recipe(recipe)
    entry, source = find(model)
    return fit.Footprint.from_registry(entry, source, type_for=chosen.main_type, label=f"{entry.id} as {chosen.name}")
