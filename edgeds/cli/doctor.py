"""`edgeds doctor` (this machine and what of the registry fits it) and `edgeds fit MODEL`."""

from __future__ import annotations

from typing import Optional

import typer

from edgeds.cli._app import app


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _ctx(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 else str(n)


@app.command("doctor")
def doctor(
    ram: Optional[float] = typer.Option(None, "--ram", help="Pretend this much free RAM (GiB)."),
    vram: Optional[float] = typer.Option(None, "--vram", help="Pretend this much free VRAM (GiB)."),
) -> None:
    """This machine (CPU, RAM, llama.cpp backends, GPUs) and, per registry quant, how it fits."""
    from edgeds.machine import fit
    from edgeds.machine.hardware import detect
    from edgeds.catalog.registry import load_registry

    hw = detect()
    typer.echo(f"CPU        {hw.cpu}: {hw.physical_cores} physical cores, {hw.logical_cores} threads")
    typer.echo(f"RAM        {_gib(hw.ram_total)} total, {_gib(hw.ram_available)} available")
    typer.echo(f"llama.cpp  GPU offload {'supported' if hw.gpu_offload else 'not built in (CPU build)'}")
    for d in hw.devices:
        mem = f", {_gib(d.free_bytes)} free of {_gib(d.total_bytes)}" if d.total_bytes else ""
        typer.echo(f"  device   {d.name} ({d.kind}): {d.description}{mem}")
    for h in hw.gpu_hints:
        typer.echo(f"  {h.source}: {h.name}, {_gib(h.free_bytes)} free of {_gib(h.total_bytes)}"
                   + ("" if hw.gpu_offload else " (this llama.cpp build cannot use it)"))
    ram_b = int(ram * (1 << 30)) if ram is not None else hw.ram_available
    vram_b = int(vram * (1 << 30)) if vram is not None else hw.vram_free
    typer.echo(f"\nFit with {_gib(ram_b)} RAM and {_gib(vram_b)} VRAM free (f16 KV cache; max context shown):")
    rows = [("MODEL", "SIZE", "FITS", "MAX CTX", "NEEDS AT MAX CTX")]
    for entry in load_registry():
        geom = fit.Geometry.from_shape(entry.shape)
        for source in entry.quants.values():
            result = fit.plan(lambda n, e=entry, s=source: fit.estimate_registry(e, s, n), geom,
                              entry.context_length, ram=ram_b, vram=vram_b)
            needs = (f"{_gib(result.estimate.total)}" if result.mode != fit.NO
                     else f"{_gib(result.estimate.total)} at 1k")
            if result.mode in (fit.EXPERTS_OFFLOADED, fit.PARTIAL):
                needs += f" ({_gib(result.gpu_bytes)} GPU)"
            rows.append((f"{entry.id}:{source.quant}", f"{source.size / 1e9:.1f} GB", result.mode,
                         _ctx(result.max_ctx) if result.max_ctx else "-", needs))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


@app.command("fit")
def fit_cmd(
    model: str = typer.Argument(..., help="A registry id[:QUANT] (no download needed) or a GGUF file."),
    ctx: Optional[int] = typer.Option(None, "--ctx", min=256, help="Context length (default: the model's)."),
    ram: Optional[float] = typer.Option(None, "--ram", help="Pretend this much free RAM (GiB)."),
    vram: Optional[float] = typer.Option(None, "--vram", help="Pretend this much free VRAM (GiB)."),
) -> None:
    """Memory a model needs at a context length, and whether and how it fits here."""
    from pathlib import Path

    from edgeds.machine import fit
    from edgeds.errors import ModelNotFound
    from edgeds.machine.hardware import detect
    from edgeds.catalog.registry import load_registry, split_spec

    if Path(model).expanduser().is_file():
        from edgeds.catalog.gguf import read_gguf

        info = read_gguf(Path(model).expanduser())
        geom = fit.Geometry.from_gguf(info)
        limit = info.context_length or 4096
        est_at = lambda n: fit.estimate_gguf(info, n)  # noqa: E731
        label = str(model)
    else:
        model_id, quant = split_spec(model)
        entry = load_registry().get(model_id)
        if entry is None:
            raise ModelNotFound(f"{model}: not a file and not a registry model (`edgeds list` shows them)")
        source = entry.quant(quant)
        geom = fit.Geometry.from_shape(entry.shape)
        limit = entry.context_length
        est_at = lambda n: fit.estimate_registry(entry, source, n)  # noqa: E731
        label = f"{entry.id}:{source.quant}"
    n_ctx = ctx or limit
    e = est_at(n_ctx)
    typer.echo(f"{label} at context {n_ctx}:")
    typer.echo(f"  weights   {_gib(e.weights)}" + (f" (routed experts {_gib(e.expert_weights)})" if e.expert_weights else ""))
    typer.echo(f"  KV cache  {_gib(e.kv_cache)} ({geom.kv_bytes_per_token() / 1024:.1f} KiB/token, f16)")
    typer.echo(f"  compute   {_gib(e.compute + e.output)}")
    typer.echo(f"  overhead  {_gib(e.overhead)}")
    typer.echo(f"  total     {_gib(e.total)}")
    hw = detect()
    ram_b = int(ram * (1 << 30)) if ram is not None else hw.ram_available
    vram_b = int(vram * (1 << 30)) if vram is not None else hw.vram_free
    result = fit.plan(est_at, geom, n_ctx, ram=ram_b, vram=vram_b)
    if result.mode == fit.NO:
        typer.echo(f"does not fit in {_gib(ram_b)} RAM + {_gib(vram_b)} VRAM free, even at 1k context")
        raise typer.Exit(1)
    typer.echo(f"fits: {result.mode}, up to {_ctx(result.max_ctx)} context here "
               f"({_gib(ram_b)} RAM, {_gib(vram_b)} VRAM free)")
